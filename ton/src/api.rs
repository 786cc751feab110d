//! A client of a TON HTTP API in the toncenter v3 shape: account transactions, wallet
//! information, account states, masterchain info, sending a BOC. Responses are read
//! leniently (numbers may come as strings, unknown fields are ignored) but what decisions
//! rest on (hashes, lts, seqnos) is checked and a response without it is an error.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::limiter::RateLimiter;

/// Largest response body read (toncenter pages of 1000 transactions stay well below).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// 429 answers retried (each after the limiter's delay) before a call fails.
const MAX_RATE_LIMITED_RETRIES: u32 = 5;

/// An API endpoint and its key. Clones share the HTTP client and the rate limiter.
#[derive(Clone)]
pub struct TonApi {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
    limiter: Option<RateLimiter>,
}

impl std::fmt::Debug for TonApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TonApi")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("limiter", &self.limiter.as_ref().map(RateLimiter::interval))
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
    /// The account's status before and after: `nonexist`, `uninit`, `active`, `frozen`.
    #[serde(default)]
    pub orig_status: Option<String>,
    #[serde(default)]
    pub end_status: Option<String>,
    #[serde(default)]
    pub description: Option<Description>,
    #[serde(default)]
    pub in_msg: Option<Message>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub out_msgs: Vec<Message>,
}

/// An ordinary transaction's phases (toncenter's `TransactionDescr`). A TON node sets
/// `aborted` whenever compute or action did not succeed, including a compute phase
/// skipped because the account has no code (`no_state`): that alone does not say whether
/// the inbound value stayed (see [`Description::value_kept`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Description {
    #[serde(default)]
    pub aborted: Option<bool>,
    /// Credit before storage: the message was not bounceable.
    #[serde(default)]
    pub credit_first: Option<bool>,
    #[serde(default)]
    pub credit_ph: Option<CreditPhase>,
    #[serde(default)]
    pub compute_ph: Option<ComputePhase>,
    #[serde(default)]
    pub action: Option<ActionPhase>,
    /// Present only when the transaction failed on a bounceable message.
    #[serde(default)]
    pub bounce: Option<BouncePhase>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CreditPhase {
    #[serde(default, deserialize_with = "lenient_string")]
    pub credit: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub due_fees_collected: Option<String>,
}

/// Two spellings are in use: the current indexer's `{"skipped": true, "reason":
/// "no_state"}` / `{"skipped": false, "success": ...}` (ton-index-go `ComputePhase`), and
/// older v3 responses' `{"type": "skipped", "skip_reason": "no_state"}` /
/// `{"type": "vm", "success": ...}` (seen in recorded responses, see
/// `tests/fixtures/real/`). Both are read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ComputePhase {
    #[serde(default)]
    pub skipped: Option<bool>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `no_state`, `bad_state`, `no_gas`, `suspended`.
    #[serde(default, alias = "skip_reason")]
    pub reason: Option<String>,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub exit_code: Option<i64>,
}

impl ComputePhase {
    pub fn is_skipped(&self) -> bool {
        self.skipped == Some(true) || self.kind.as_deref() == Some("skipped")
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct BouncePhase {
    /// `ok`, `nofunds`, `negfunds`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

impl Description {
    /// Whether compute or action failed (or was skipped) or the node marked it aborted.
    pub fn failed(&self) -> bool {
        let compute_failed = self
            .compute_ph
            .as_ref()
            .is_some_and(|c| c.is_skipped() || c.success == Some(false));
        let action_failed = self
            .action
            .as_ref()
            .is_some_and(|a| a.success == Some(false));
        self.aborted == Some(true) || compute_failed || action_failed
    }

    /// Whether the inbound message's value stayed on the account, from the chain's rules:
    /// a transaction that did not fail keeps it; a failed one keeps it only when the
    /// message was not bounceable (`bounce` is the message's flag), the credit phase
    /// credited something, and there is no bounce phase (which sends the value back, or
    /// tried to). `Err` says why not.
    pub fn value_kept(&self, bounce: Option<bool>) -> std::result::Result<(), String> {
        if !self.failed() {
            return Ok(());
        }
        let why = || {
            let c = self.compute_ph.as_ref();
            let compute = match c {
                None => "none".to_owned(),
                Some(c) if c.is_skipped() => {
                    format!("skipped ({})", c.reason.as_deref().unwrap_or("?"))
                }
                Some(c) => match c.exit_code {
                    Some(e) => format!("success={:?} exit code {e}", c.success),
                    None => format!("success={:?}", c.success),
                },
            };
            let action = self
                .action
                .as_ref()
                .map_or("none".to_owned(), |a| format!("success={:?}", a.success));
            format!(
                "transaction aborted={:?}, compute {compute}, action {action}",
                self.aborted
            )
        };
        if let Some(b) = &self.bounce {
            return Err(format!(
                "{}; bounce phase {} (the value went back)",
                why(),
                b.kind.as_deref().unwrap_or("?")
            ));
        }
        if bounce != Some(false) {
            return Err(format!("{}; message bounceable={bounce:?}", why()));
        }
        let credited = self
            .credit_ph
            .as_ref()
            .and_then(|c| c.credit.as_deref())
            .and_then(|c| c.parse::<u128>().ok())
            .is_some_and(|c| c > 0);
        if !credited {
            return Err(format!("{}; nothing credited", why()));
        }
        Ok(())
    }
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
    #[serde(default, deserialize_with = "lenient_string")]
    pub balance: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub last_transaction_lt: Option<u64>,
    #[serde(default)]
    pub last_transaction_hash: Option<String>,
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

/// A 429 answer (its body, shortened).
struct RateLimited(String);

/// The `error` of an indexer error body (`{"error": "not a wallet"}`, ton-index-go's
/// `IndexError`), if the body is one.
fn api_error(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IndexError {
        error: String,
    }
    serde_json::from_slice::<IndexError>(body)
        .ok()
        .map(|e| e.error.chars().take(300).collect())
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
            limiter: None,
        })
    }

    /// Paces every call of this API and its clones to `requests_per_sec` (one limiter,
    /// shared by the clones made after this call).
    pub fn with_requests_per_sec(mut self, requests_per_sec: f64) -> TonApi {
        self.limiter = Some(RateLimiter::new(requests_per_sec));
        self
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
    ) -> Result<T> {
        self.call(endpoint, || {
            self.authed(
                self.client
                    .get(format!("{}{endpoint}", self.base))
                    .query(query),
            )
        })
        .await
    }

    /// `req` with the API key, when there is one.
    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => req.header("X-API-Key", k),
            None => req,
        }
    }

    /// `POST` of a JSON body (paced and retried on 429 like [`TonApi::get`]).
    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.call(endpoint, || {
            self.authed(
                self.client
                    .post(format!("{}{endpoint}", self.base))
                    .json(body),
            )
        })
        .await
    }

    /// Sends the request `build` makes once the limiter allows it; a 429 is retried in
    /// the next slot (the server did not act on it), up to [`MAX_RATE_LIMITED_RETRIES`].
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let mut retries = 0;
        loop {
            if let Some(l) = &self.limiter {
                l.acquire().await;
            }
            match self.finish(endpoint, build()).await {
                Err(RateLimited(detail)) => {
                    retries += 1;
                    if retries > MAX_RATE_LIMITED_RETRIES {
                        return Err(Error::Api {
                            endpoint,
                            detail: format!("rate limited {retries} times: {detail}"),
                        });
                    }
                    tracing::debug!(endpoint, retries, "TON API answered 429; retrying");
                    match &self.limiter {
                        Some(l) => l.penalize().await,
                        // Unpaced: still do not hammer it.
                        None => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
                Ok(r) => return r,
            }
        }
    }

    async fn finish<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
    ) -> std::result::Result<Result<T>, RateLimited> {
        let api = |detail: String| Error::Api { endpoint, detail };
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(api(e.without_url().to_string()))),
        };
        let status = resp.status();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Ok(Err(api(format!(
                            "response larger than {MAX_RESPONSE_BYTES} bytes"
                        ))));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(api(e.without_url().to_string()))),
            }
        }
        let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(RateLimited(text()));
        }
        if !status.is_success() {
            return Ok(Err(match api_error(&body) {
                Some(msg) => Error::Status {
                    endpoint,
                    status: status.as_u16(),
                    error: msg,
                },
                None => api(format!("HTTP {status}: {}", text())),
            }));
        }
        Ok(
            serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
                endpoint,
                detail: e.to_string(),
            }),
        )
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
    ///
    /// The indexer answers 409 `{"error": "not a wallet"}` for an account it holds without
    /// wallet code and not `uninit` (ton-index-go `GetV2WalletInformation` /
    /// `WalletInformationFromV3`): e.g. `nonexist` after a bounced first transfer, or
    /// `frozen`. Then the account's state is read from `/accountStates`: an account with
    /// no state yet is an undeployed wallet (no seqno, its balance); anything else (code
    /// that is not a wallet, frozen) is an error naming the status.
    pub async fn wallet_information(&self, address: &str) -> Result<WalletInformation> {
        let endpoint = "/api/v3/walletInformation";
        match self
            .get(
                endpoint,
                &[("address", address.to_owned()), ("use_v2", "false".into())],
            )
            .await
        {
            Err(Error::Status {
                status: 409, error, ..
            }) => {
                let state = self
                    .account_states(&[address.to_owned()])
                    .await?
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                match state.status.as_deref() {
                    None | Some("nonexist") | Some("uninit") => Ok(WalletInformation {
                        balance: Some(state.balance.unwrap_or_else(|| "0".into())),
                        last_transaction_lt: state.last_transaction_lt,
                        last_transaction_hash: state.last_transaction_hash,
                        seqno: None,
                        status: Some(state.status.unwrap_or_else(|| "nonexist".into())),
                    }),
                    Some(other) => Err(Error::BadResponse {
                        endpoint,
                        detail: format!(
                            "{address} is not a wallet ({error:?}; account status {other})"
                        ),
                    }),
                }
            }
            other => other,
        }
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

    /// Broadcasts an external message (a 429 is retried: the server did not take it).
    pub async fn send_boc(&self, boc: &str) -> Result<SendMessageResult> {
        self.post("/api/v3/message", &serde_json::json!({ "boc": boc }))
            .await
    }
}

/// One entry of a get-method's stack as toncenter v3 `runGetMethod` renders it
/// (toncenter/ton-indexer `DecodeStackEntry`): `num` as `"0x…"` (Go's `%#x`, `-0x…` when
/// negative), `cell` and `slice` as a base64 BOC, `tuple`/`list` as an array of entries.
/// A `null` entry cannot be rendered there, so the registry's get-methods never return one.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct StackEntry {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub value: serde_json::Value,
}

impl StackEntry {
    pub fn num(value: i64) -> StackEntry {
        let v = if value < 0 {
            format!("-{:#x}", value.unsigned_abs())
        } else {
            format!("{value:#x}")
        };
        StackEntry {
            kind: "num".into(),
            value: v.into(),
        }
    }

    /// A `num` entry that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        if self.kind != "num" {
            return None;
        }
        let s = self.value.as_str()?;
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let v = match digits.strip_prefix("0x") {
            Some(hex) => i64::from_str_radix(hex, 16).ok()?,
            None => digits.parse::<i64>().ok()?,
        };
        Some(if neg { -v } else { v })
    }

    /// The base64 BOC of a `cell` or `slice` entry.
    pub fn as_boc(&self) -> Option<&str> {
        matches!(self.kind.as_str(), "cell" | "slice")
            .then(|| self.value.as_str())
            .flatten()
    }
}

/// What `POST /api/v3/runGetMethod` answers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct GetMethodResult {
    #[serde(default)]
    pub gas_used: Option<i64>,
    pub exit_code: i64,
    #[serde(default)]
    pub stack: Vec<StackEntry>,
}

impl TonApi {
    /// Runs get-method `method` of `address` on the API's latest state. A non-zero exit
    /// code (the contract threw, or there is no contract: -13 / -14 on an uninit account)
    /// is an error.
    pub async fn run_get_method(
        &self,
        address: &str,
        method: &str,
        stack: &[StackEntry],
    ) -> Result<GetMethodResult> {
        let endpoint = "/api/v3/runGetMethod";
        let body = serde_json::json!({ "address": address, "method": method, "stack": stack });
        let r: GetMethodResult = self.post(endpoint, &body).await?;
        if r.exit_code != 0 {
            return Err(Error::BadResponse {
                endpoint,
                detail: format!("{method} on {address} exited with code {}", r.exit_code),
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn stack_numbers_read_as_toncenter_renders_them() {
        for v in [0i64, 7, 255, -1, -300, i64::MAX] {
            assert_eq!(StackEntry::num(v).as_i64(), Some(v));
        }
        assert_eq!(StackEntry::num(26).value, "0x1a");
        assert_eq!(StackEntry::num(-26).value, "-0x1a");
        let cell = StackEntry { kind: "cell".into(), value: "te6cc".into() };
        assert_eq!((cell.as_i64(), cell.as_boc()), (None, Some("te6cc")));
    }

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
