//! A client of a TON HTTP API in the toncenter v3 shape: account transactions, wallet
//! information, account states, masterchain info, sending a BOC. Responses are read
//! leniently (numbers may come as strings, unknown fields are ignored) but what decisions
//! rest on (hashes, lts, seqnos) is checked and a response without it is an error.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// Largest response body read (toncenter pages of 1000 transactions stay well below).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// An API endpoint and its key.
#[derive(Clone)]
pub struct TonApi {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for TonApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TonApi")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Sort order of [`TonApi::transactions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Asc,
    Desc,
}

/// `GET /api/v3/transactions` filters for one account.
#[derive(Clone, Copy, Debug)]
pub struct TxQuery {
    pub start_lt: Option<u64>,
    pub end_lt: Option<u64>,
    pub limit: u32,
    pub offset: u32,
    pub sort: Sort,
}

// ---- response shapes (only the fields used) -------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TransactionsResponse {
    #[serde(default)]
    pub transactions: Vec<Transaction>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Transaction {
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub lt: Option<u64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub now: Option<i64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub mc_block_seqno: Option<u64>,
    #[serde(default)]
    pub description: Option<Description>,
    #[serde(default)]
    pub in_msg: Option<Message>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub out_msgs: Vec<Message>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Description {
    #[serde(default)]
    pub aborted: Option<bool>,
    #[serde(default)]
    pub compute_ph: Option<ComputePhase>,
    #[serde(default)]
    pub action: Option<ActionPhase>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ComputePhase {
    #[serde(default)]
    pub skipped: Option<bool>,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub exit_code: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ActionPhase {
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub msgs_created: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub tot_actions: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub skipped_actions: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Message {
    #[serde(default)]
    pub hash: Option<String>,
    /// Normalised hash of an external message (TEP-467).
    #[serde(default)]
    pub hash_norm: Option<String>,
    /// `None` for external inbound messages.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub value: Option<String>,
    #[serde(default)]
    pub bounce: Option<bool>,
    #[serde(default)]
    pub bounced: Option<bool>,
    #[serde(default)]
    pub message_content: Option<MessageContent>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct MessageContent {
    #[serde(default)]
    pub body: Option<String>,
    /// May be null; only a fallback when `body` is missing.
    #[serde(default)]
    pub decoded: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WalletInformation {
    #[serde(default, deserialize_with = "lenient_string")]
    pub balance: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub last_transaction_lt: Option<u64>,
    #[serde(default)]
    pub last_transaction_hash: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub seqno: Option<u64>,
    /// `active`, `uninit`, `frozen`, `nonexist`.
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AccountStatesResponse {
    #[serde(default)]
    pub accounts: Vec<AccountState>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AccountState {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct MasterchainInfo {
    #[serde(default)]
    pub last: Option<Block>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Block {
    #[serde(default, deserialize_with = "lenient_u64")]
    pub seqno: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub gen_utime: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SendMessageResult {
    #[serde(default)]
    pub message_hash: Option<String>,
}

// ---- lenient number parsing ------------------------------------------------------------

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a u64"))),
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{s:?} is not a u64"))),
        Some(other) => Err(D::Error::custom(format!("{other} is not a u64"))),
    }
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not an i64"))),
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{s:?} is not an i64"))),
        Some(other) => Err(D::Error::custom(format!("{other} is not an i64"))),
    }
}

/// A string, or a number kept as its decimal text (values are decimal nanoTON).
fn lenient_string<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A 32-byte hash as the API may spell it (base64, base64url or hex), as lowercase hex:
/// one spelling per transaction, so that `(hash, lt)` keys never differ by encoding.
pub fn normalize_hash(s: &str) -> Option<String> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).ok()?
    } else {
        STANDARD
            .decode(s)
            .or_else(|_| URL_SAFE.decode(s))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
            .ok()?
    };
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

impl TonApi {
    pub fn new(base_url: &str, api_key: Option<String>, timeout: Duration) -> Result<TonApi> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(TonApi {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let mut req = self
            .client
            .get(format!("{}{endpoint}", self.base))
            .query(query);
        if let Some(k) = &self.api_key {
            req = req.header("X-API-Key", k);
        }
        self.finish(endpoint, req).await
    }

    async fn finish<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let api = |detail: String| Error::Api { endpoint, detail };
        let mut resp = req
            .send()
            .await
            .map_err(|e| api(e.without_url().to_string()))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| api(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(api(format!(
                    "response larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(api(format!("HTTP {status}: {text}")));
        }
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            endpoint,
            detail: e.to_string(),
        })
    }

    /// Transactions of `account`, one page.
    pub async fn transactions(&self, account: &str, q: TxQuery) -> Result<Vec<Transaction>> {
        let mut query = vec![
            ("account", account.to_owned()),
            ("limit", q.limit.to_string()),
            ("offset", q.offset.to_string()),
            (
                "sort",
                match q.sort {
                    Sort::Asc => "asc",
                    Sort::Desc => "desc",
                }
                .to_owned(),
            ),
        ];
        if let Some(lt) = q.start_lt {
            query.push(("start_lt", lt.to_string()));
        }
        if let Some(lt) = q.end_lt {
            query.push(("end_lt", lt.to_string()));
        }
        let r: TransactionsResponse = self.get("/api/v3/transactions", &query).await?;
        Ok(r.transactions)
    }

    /// Seqno, status, balance and last transaction of a wallet (from the index, so it is
    /// consistent with [`TonApi::transactions`]).
    pub async fn wallet_information(&self, address: &str) -> Result<WalletInformation> {
        self.get(
            "/api/v3/walletInformation",
            &[("address", address.to_owned()), ("use_v2", "false".into())],
        )
        .await
    }

    /// Status (`active`, `uninit`, `frozen`, `nonexist`) of each of `addresses`, in one call.
    pub async fn account_states(&self, addresses: &[String]) -> Result<Vec<AccountState>> {
        let mut query: Vec<(&str, String)> =
            addresses.iter().map(|a| ("address", a.clone())).collect();
        query.push(("include_boc", "false".into()));
        let r: AccountStatesResponse = self.get("/api/v3/accountStates", &query).await?;
        Ok(r.accounts)
    }

    /// The last indexed masterchain block: its seqno (confirmations) and time (expiry).
    pub async fn masterchain_info(&self) -> Result<Block> {
        let r: MasterchainInfo = self.get("/api/v3/masterchainInfo", &[]).await?;
        let last = r.last.ok_or(Error::BadResponse {
            endpoint: "/api/v3/masterchainInfo",
            detail: "no last block".into(),
        })?;
        if last.seqno.is_none() || last.gen_utime.is_none() {
            return Err(Error::BadResponse {
                endpoint: "/api/v3/masterchainInfo",
                detail: "last block without seqno or gen_utime".into(),
            });
        }
        Ok(last)
    }

    /// Broadcasts an external message.
    pub async fn send_boc(&self, boc: &str) -> Result<SendMessageResult> {
        let endpoint = "/api/v3/message";
        let mut req = self
            .client
            .post(format!("{}{endpoint}", self.base))
            .json(&serde_json::json!({ "boc": boc }));
        if let Some(k) = &self.api_key {
            req = req.header("X-API-Key", k);
        }
        self.finish(endpoint, req).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lenient_shapes() {
        let t: Transaction = serde_json::from_value(serde_json::json!({
            "hash": "abc", "lt": "123", "now": 5, "mc_block_seqno": null,
            "in_msg": {"source": null, "value": 42, "message_content": {"body": "x", "decoded": null}},
            "out_msgs": null, "unknown": {"deep": [1, 2]}
        }))
        .unwrap();
        assert_eq!((t.lt, t.now, t.mc_block_seqno), (Some(123), Some(5), None));
        assert_eq!(t.in_msg.unwrap().value.as_deref(), Some("42"));
        assert!(t.out_msgs.is_empty());
        assert!(serde_json::from_value::<Transaction>(serde_json::json!({"lt": "12x"})).is_err());
        assert!(serde_json::from_value::<Transaction>(serde_json::json!({"lt": -1})).is_err());
    }

    #[test]
    fn hashes_normalise() {
        let h = [0xabu8; 32];
        let hex_form = hex::encode(h);
        assert_eq!(normalize_hash(&STANDARD.encode(h)), Some(hex_form.clone()));
        assert_eq!(normalize_hash(&URL_SAFE.encode(h)), Some(hex_form.clone()));
        assert_eq!(
            normalize_hash(&hex_form.to_uppercase()),
            Some(hex_form.clone())
        );
        assert_eq!(normalize_hash("abc"), None);
        assert_eq!(normalize_hash(&STANDARD.encode([1u8; 31])), None);
    }
}
