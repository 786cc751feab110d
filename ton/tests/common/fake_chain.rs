//! A fake TON chain behind a toncenter-v3-shaped HTTP API, holding one wallet v5r1: it
//! accepts `POST /api/v3/message`, checks the external message the way the contract does
//! (destination, state init, wallet id, `valid_until` against the chain's time, seqno),
//! advances the seqno, executes the transfers (skipping the ones told to fail, as the
//! ignore-errors mode does) and lists the resulting transaction in
//! `/api/v3/transactions`. It does not verify signatures: the node sandbox test runs the
//! real contract. Faults on demand: lost broadcasts, failed POSTs, POSTs applied but
//! answered with an error, failing transfers, index lag.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use ton::{Address, TonApi};
use tonlib_core::cell::Cell;
use tonlib_core::message::{CommonMsgInfo, TonMessage, TransferMessage};
use tonlib_core::tlb_types::block::message::{CommonMsgInfo as TlbInfo, Message};
use tonlib_core::tlb_types::tlb::TLB;
use tonlib_core::wallet::versioned::v5::WalletExtMsgBodyV5;
use tonlib_core::TonAddress;

use super::{param, query_pairs, serve};

/// A transfer that left the wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub to: Address,
    pub amount: i64,
    pub bounce: bool,
    pub comment: String,
    pub tx_lt: u64,
}

pub struct ChainState {
    pub wallet: Address,
    pub wallet_id: i32,
    pub seqno: u32,
    pub deployed: bool,
    pub balance: i128,
    /// Chain time (the last masterchain block's), Unix seconds.
    pub now: u32,
    pub mc_seqno: u64,
    pub next_lt: u64,
    /// The wallet's transactions, toncenter v3 shape, ascending lt.
    pub txs: Vec<Value>,
    /// Status of other accounts (default `nonexist`).
    pub accounts: HashMap<Address, &'static str>,
    pub transfers: Vec<Sent>,
    /// The cell hash of every sent internal message's body, in order.
    pub bodies: Vec<Vec<u8>>,
    pub posts: u32,
    pub applied: u32,
    /// Broadcasts are accepted and lost.
    pub drop_messages: bool,
    /// The next N POSTs fail (500) without reaching the chain.
    pub fail_posts: u32,
    /// The next N POSTs are executed but answered with 500 (the reply is lost).
    pub apply_then_fail: u32,
    /// Transfers to these fail in the action phase.
    pub fail_to: HashSet<Address>,
    /// Index lag: the newest transaction is not listed yet.
    pub hide_last_tx: bool,
    /// Why externals were refused, in order.
    pub refused: Vec<String>,
    /// Rate limit: a call less than this after the previous one (test clock) is answered
    /// 429, as toncenter does past its limit (1 request/s without an API key).
    pub min_gap: Option<Duration>,
    pub last_call: Option<tokio::time::Instant>,
    /// Calls answered, and of those answered 429.
    pub calls: u32,
    pub rate_limited: u32,
}

#[derive(Clone)]
pub struct FakeChain {
    pub state: Arc<Mutex<ChainState>>,
    pub api: TonApi,
    pub addr: SocketAddr,
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A cell as toncenter serialises message bodies: a BOC with CRC32C (`te6cck…`).
pub fn boc_with_crc(cell: &Cell) -> String {
    let boc = tonlib_core::cell::BagOfCells::from_root(cell.clone())
        .serialize(true)
        .unwrap();
    b64(&boc)
}

fn tx_hash(lt: u64) -> String {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&lt.to_be_bytes());
    h[31] = 0x7a;
    b64(&h)
}

impl ChainState {
    fn push_tx(&mut self, mut tx: Value) -> u64 {
        let lt = self.next_lt;
        self.next_lt += 10;
        let prev = self
            .txs
            .last()
            .map(|t| t["lt"].as_str().unwrap().to_owned());
        tx["account"] = json!(self.wallet.to_raw().to_uppercase());
        tx["hash"] = json!(tx_hash(lt));
        tx["lt"] = json!(lt.to_string());
        tx["now"] = json!(self.now);
        tx["mc_block_seqno"] = json!(self.mc_seqno);
        tx["prev_trans_lt"] = json!(prev);
        self.txs.push(tx);
        self.mc_seqno += 1;
        lt
    }

    /// An incoming non-bounceable transfer of `amount` (funding the wallet), as the real
    /// chain executes it (phases as `@ton/sandbox` shows, see `fixtures/sandbox/`): on an
    /// undeployed wallet the compute phase is skipped (`no_state`) and the transaction is
    /// aborted, but the value is credited first and stays.
    pub fn fund(&mut self, amount: i128) {
        let orig = self.status();
        self.balance += amount;
        let end = self.status();
        let description = if self.deployed {
            json!({
                "type": "ord", "aborted": false, "destroyed": false, "credit_first": true,
                "storage_ph": {"storage_fees_collected": "0", "status_change": "unchanged"},
                "credit_ph": {"credit": amount.to_string()},
                "compute_ph": {"skipped": false, "success": true, "exit_code": 0},
                "action": {"success": true, "valid": true, "no_funds": false, "result_code": 0, "tot_actions": 0, "msgs_created": 0, "skipped_actions": 0}
            })
        } else {
            json!({
                "type": "ord", "aborted": true, "destroyed": false, "credit_first": true,
                "storage_ph": {"storage_fees_collected": "0", "status_change": "unchanged"},
                "credit_ph": {"credit": amount.to_string()},
                "compute_ph": {"skipped": true, "reason": "no_state"}
            })
        };
        let tx = json!({
            "orig_status": orig,
            "end_status": end,
            "in_msg": {
                "source": format!("0:{}", "EE".repeat(32)),
                "destination": self.wallet.to_raw().to_uppercase(),
                "value": amount.to_string(),
                "bounce": false,
                "bounced": false,
                "message_content": {"body": "te6cckEBAQEAAgAAAEysuc0=", "decoded": null}
            },
            "out_msgs": [],
            "description": description
        });
        self.push_tx(tx);
    }

    /// A client's deposit: `amount` non-bounceable with text comment `comment` (the body
    /// as toncenter serves it: a BOC with CRC32C). Returns its lt.
    pub fn deposit(&mut self, from: Address, amount: i128, comment: &str) -> u64 {
        let lt = self.next_lt;
        self.fund(amount);
        let tx = self.txs.last_mut().unwrap();
        tx["in_msg"]["source"] = json!(from.to_raw().to_uppercase());
        tx["in_msg"]["message_content"] = json!({
            "body": boc_with_crc(&ton::comment_cell(comment).unwrap()),
            "decoded": {"type": "text_comment", "comment": comment}
        });
        lt
    }

    /// A bounceable transfer to the wallet while it has no state: it bounces (compute
    /// skipped, bounce phase ok) and nothing stays (sandbox transaction 1 in
    /// `fixtures/sandbox/`).
    pub fn bounced_deposit(&mut self, amount: i128) {
        assert!(!self.deployed);
        let status = self.status();
        let tx = json!({
            "orig_status": status,
            "end_status": status,
            "in_msg": {
                "source": format!("0:{}", "EE".repeat(32)),
                "destination": self.wallet.to_raw().to_uppercase(),
                "value": amount.to_string(),
                "bounce": true,
                "bounced": false,
                "message_content": {"body": "te6cckEBAQEAAgAAAEysuc0=", "decoded": null}
            },
            "out_msgs": [{"source": self.wallet.to_raw().to_uppercase(), "destination": format!("0:{}", "EE".repeat(32)), "bounce": false, "bounced": true}],
            "description": {
                "type": "ord", "aborted": true, "destroyed": false, "credit_first": false,
                "storage_ph": {"storage_fees_collected": "0", "status_change": "unchanged"},
                "credit_ph": {"credit": amount.to_string()},
                "compute_ph": {"skipped": true, "reason": "no_state"},
                "bounce": {"type": "ok", "msg_size": {"cells": "1", "bits": "200"}, "msg_fees": "0", "fwd_fees": "266669"}
            }
        });
        self.push_tx(tx);
    }

    /// The wallet's status as the index spells it.
    pub fn status(&self) -> &'static str {
        if self.deployed {
            "active"
        } else if self.balance > 0 {
            "uninit"
        } else {
            "nonexist"
        }
    }

    /// What the wallet contract would do with this external message.
    pub fn submit(&mut self, boc: &str) -> Result<String, String> {
        let refuse = |s: &mut ChainState, why: String| {
            s.refused.push(why.clone());
            Err(why)
        };
        let root = match ton::cell::parse_boc(boc) {
            Ok(r) => r,
            Err(e) => return refuse(self, e),
        };
        let hash = b64(Cell::cell_hash(&root).as_slice());
        let msg = match Message::from_cell(&root) {
            Ok(m) => m,
            Err(e) => return refuse(self, format!("not a message: {e}")),
        };
        let TlbInfo::ExtIn(info) = &msg.info else {
            return refuse(self, "not an external inbound message".into());
        };
        let dest = TonAddress::from_msg_address(info.dest.clone()).unwrap();
        if Address::from_raw(&dest.to_hex()).unwrap() != self.wallet {
            return refuse(self, "message to another account".into());
        }
        if let Some(init) = &msg.init {
            let h = init.value.cell_hash().unwrap();
            if h.as_slice() != self.wallet.hash {
                return refuse(self, "state init does not match the address".into());
            }
            if !self.deployed {
                self.deployed = true;
            }
        }
        if !self.deployed {
            return refuse(self, "wallet not deployed and no state init".into());
        }
        let mut parser = msg.body.value.parser();
        let body = match WalletExtMsgBodyV5::read(&mut parser) {
            Ok(b) => b,
            Err(e) => return refuse(self, format!("not a v5r1 signed request: {e}")),
        };
        if parser.remaining_bits() != 512 {
            return refuse(self, "no signature".into());
        }
        if body.wallet_id != self.wallet_id {
            return refuse(self, format!("wallet id {} (exit 34)", body.wallet_id));
        }
        if body.valid_until <= self.now {
            return refuse(
                self,
                format!(
                    "expired: valid_until {} <= now {} (exit 36)",
                    body.valid_until, self.now
                ),
            );
        }
        if body.msg_seqno != self.seqno {
            return refuse(
                self,
                format!("seqno {} != {} (exit 33)", body.msg_seqno, self.seqno),
            );
        }
        if body.msgs_modes.iter().any(|m| m & 2 == 0) {
            return refuse(self, "external action without the ignore-errors bit".into());
        }
        if self.drop_messages {
            // Accepted by the API, never included in a block.
            return Ok(hash);
        }
        self.seqno += 1;
        self.applied += 1;
        let lt = self.next_lt;
        let mut out = Vec::new();
        let mut skipped = 0;
        for m in &body.msgs {
            let t = TransferMessage::parse(m).unwrap();
            let CommonMsgInfo::InternalMessage(i) = &t.common_msg_info else {
                skipped += 1;
                continue;
            };
            let to = Address::from_raw(&i.dest.to_hex()).unwrap();
            let amount = i64::try_from(&i.value).unwrap();
            if self.fail_to.contains(&to) || self.balance < i128::from(amount) {
                skipped += 1;
                continue;
            }
            self.balance -= i128::from(amount);
            // A contract call (the registry's owner messages) carries no comment.
            let comment = ton::decode_comment(&t.body).ok().flatten().unwrap_or_default();
            self.bodies.push(Cell::cell_hash(&t.body).as_slice().to_vec());
            out.push(json!({
                "hash": b64(Cell::cell_hash(m).as_slice()),
                "source": self.wallet.to_raw().to_uppercase(),
                "destination": to.to_raw().to_uppercase(),
                "value": amount.to_string(),
                "bounce": i.bounce,
                "bounced": false,
                "message_content": {
                    "body": ton::cell::to_boc_b64(&t.body).unwrap(),
                    "decoded": {"type": "text_comment", "comment": comment}
                }
            }));
            self.transfers.push(Sent {
                to,
                amount,
                bounce: i.bounce,
                comment,
                tx_lt: lt,
            });
        }
        let n = body.msgs.len();
        let tx = json!({
            "in_msg": {
                "hash": hash,
                "hash_norm": hash,
                "source": null,
                "destination": self.wallet.to_raw().to_uppercase(),
                "value": null,
                "message_content": {"body": ton::cell::to_boc_b64(&msg.body.value).unwrap(), "decoded": null}
            },
            "out_msgs": out,
            "description": {
                "aborted": false,
                "compute_ph": {"skipped": false, "success": true, "exit_code": 0},
                "action": {"success": true, "valid": true, "tot_actions": n, "msgs_created": n - skipped, "skipped_actions": skipped}
            }
        });
        self.push_tx(tx);
        // A transfer to itself (the deploy's) arrives as the wallet's next transaction.
        let wallet = self.wallet;
        for t in self
            .transfers
            .iter()
            .filter(|t| t.tx_lt == lt && t.to == wallet)
            .cloned()
            .collect::<Vec<_>>()
        {
            self.push_tx(json!({
                "orig_status": "active",
                "end_status": "active",
                "in_msg": {
                    "source": wallet.to_raw().to_uppercase(),
                    "destination": wallet.to_raw().to_uppercase(),
                    "value": t.amount.to_string(),
                    "bounce": t.bounce,
                    "bounced": false,
                    "message_content": {"body": boc_with_crc(&ton::comment_cell(&t.comment).unwrap()), "decoded": null}
                },
                "out_msgs": [],
                "description": {
                    "type": "ord", "aborted": true, "destroyed": false, "credit_first": !t.bounce,
                    "credit_ph": {"credit": t.amount.to_string()},
                    "compute_ph": {"skipped": true, "reason": "no_gas"}
                }
            }));
        }
        Ok(hash)
    }

    /// Every transfer whose comment is `comment`.
    pub fn sent_with(&self, comment: &str) -> Vec<Sent> {
        self.transfers
            .iter()
            .filter(|t| t.comment == comment)
            .cloned()
            .collect()
    }
}

async fn send_message(
    State(s): State<Arc<Mutex<ChainState>>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut st = s.lock().unwrap();
    st.posts += 1;
    if st.fail_posts > 0 {
        st.fail_posts -= 1;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "upstream timeout", "code": 500})),
        );
    }
    let boc = body["boc"].as_str().unwrap_or_default().to_owned();
    match st.submit(&boc) {
        Ok(hash) => {
            if st.apply_then_fail > 0 {
                st.apply_then_fail -= 1;
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "connection reset", "code": 500})),
                );
            }
            (
                StatusCode::OK,
                Json(json!({"message_hash": hash, "message_hash_norm": hash})),
            )
        }
        Err(why) => (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": format!("cannot apply external message to current state: {why}"), "code": 400}),
            ),
        ),
    }
}

/// As ton-index-go answers (`GetV2WalletInformation`, `use_v2=false`): an account the
/// index has never seen gets 200 `uninit` with zero balance; one it holds without wallet
/// code and not `uninit` (here: `nonexist` after a bounced transfer) gets 409
/// `{"error": "not a wallet"}` (`IndexError` serialises only its message); an undeployed
/// wallet with a balance gets 200 `uninit` without seqno; a deployed one its seqno.
async fn wallet_information(
    State(s): State<Arc<Mutex<ChainState>>>,
    RawQuery(q): RawQuery,
) -> (StatusCode, Json<Value>) {
    let q = query_pairs(q.as_deref());
    let st = s.lock().unwrap();
    let unseen = json!({
        "balance": "0",
        "last_transaction_hash": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "last_transaction_lt": "0",
        "status": "uninit",
    });
    let address = param(&q, "address").and_then(|a| Address::from_raw(a).ok());
    if address != Some(st.wallet) {
        // Other accounts the fake knows are not wallets (payout destinations' contracts).
        return match address.and_then(|a| st.accounts.get(&a)) {
            Some(_) => (StatusCode::CONFLICT, Json(json!({"error": "not a wallet"}))),
            None => (StatusCode::OK, Json(unseen)),
        };
    }
    let Some(last) = st.txs.last() else {
        return (StatusCode::OK, Json(unseen));
    };
    let status = st.status();
    if status == "nonexist" {
        return (StatusCode::CONFLICT, Json(json!({"error": "not a wallet"})));
    }
    let mut info = json!({
        "balance": st.balance.to_string(),
        "status": status,
        "last_transaction_lt": last["lt"].clone(),
        "last_transaction_hash": last["hash"].clone(),
    });
    if st.deployed {
        info["seqno"] = json!(st.seqno);
        info["wallet_type"] = json!("wallet v5 r1");
        info["wallet_id"] = json!(st.wallet_id);
    }
    (StatusCode::OK, Json(info))
}

async fn transactions(
    State(s): State<Arc<Mutex<ChainState>>>,
    RawQuery(q): RawQuery,
) -> Json<Value> {
    let q = query_pairs(q.as_deref());
    let st = s.lock().unwrap();
    let account = param(&q, "account").and_then(|a| Address::from_raw(a).ok());
    assert_eq!(account, Some(st.wallet));
    let start: u64 = param(&q, "start_lt").map_or(0, |v| v.parse().unwrap());
    let end: u64 = param(&q, "end_lt").map_or(u64::MAX, |v| v.parse().unwrap());
    let limit: usize = param(&q, "limit").map_or(10, |v| v.parse().unwrap());
    let offset: usize = param(&q, "offset").map_or(0, |v| v.parse().unwrap());
    let visible = if st.hide_last_tx {
        st.txs.len().saturating_sub(1)
    } else {
        st.txs.len()
    };
    let mut txs: Vec<Value> = st.txs[..visible]
        .iter()
        .filter(|t| (start..=end).contains(&t["lt"].as_str().unwrap().parse::<u64>().unwrap()))
        .cloned()
        .collect();
    if param(&q, "sort") != Some("asc") {
        txs.reverse();
    }
    let page: Vec<Value> = txs.into_iter().skip(offset).take(limit).collect();
    Json(json!({"transactions": page, "address_book": {}}))
}

async fn account_states(
    State(s): State<Arc<Mutex<ChainState>>>,
    RawQuery(q): RawQuery,
) -> Json<Value> {
    let q = query_pairs(q.as_deref());
    let st = s.lock().unwrap();
    let accounts: Vec<Value> = q
        .iter()
        .filter(|(k, _)| k == "address")
        .map(|(_, v)| {
            let a = Address::from_raw(v).unwrap();
            if a == st.wallet {
                let last = st.txs.last();
                return json!({
                    "address": a.to_raw().to_uppercase(),
                    "status": st.status(),
                    "balance": st.balance.to_string(),
                    "last_transaction_lt": last.map(|t| t["lt"].clone()),
                    "last_transaction_hash": last.map(|t| t["hash"].clone()),
                });
            }
            let status = st.accounts.get(&a).copied().unwrap_or("nonexist");
            json!({"address": a.to_raw().to_uppercase(), "status": status, "balance": "0"})
        })
        .collect();
    Json(json!({"accounts": accounts, "address_book": {}}))
}

async fn masterchain(State(s): State<Arc<Mutex<ChainState>>>) -> Json<Value> {
    let st = s.lock().unwrap();
    Json(json!({
        "first": {"seqno": 1, "gen_utime": "1600000000"},
        "last": {"workchain": -1, "shard": "8000000000000000", "seqno": st.mc_seqno, "gen_utime": st.now.to_string()}
    }))
}

/// 429 for a call that comes less than `min_gap` after the previous one (answered or
/// not: the client's rejected calls count against it too). The body is not what toncenter
/// sends word for word; the client only looks at the status.
async fn rate_limit(
    State(s): State<Arc<Mutex<ChainState>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    {
        let mut st = s.lock().unwrap();
        st.calls += 1;
        let now = tokio::time::Instant::now();
        let last = st.last_call.replace(now);
        if let (Some(gap), Some(last)) = (st.min_gap, last) {
            if now.duration_since(last) < gap {
                st.rate_limited += 1;
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": "Ratelimit exceed", "code": 429})),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

impl FakeChain {
    /// A chain where `wallet` (id `wallet_id`) holds `balance` and is not deployed yet.
    pub async fn start(wallet: Address, wallet_id: i32, balance: i128) -> FakeChain {
        let mut st = ChainState {
            wallet,
            wallet_id,
            seqno: 0,
            deployed: false,
            balance: 0,
            now: 1_700_000_000,
            mc_seqno: 1000,
            next_lt: 50_000_000,
            txs: Vec::new(),
            accounts: HashMap::new(),
            transfers: Vec::new(),
            bodies: Vec::new(),
            posts: 0,
            applied: 0,
            drop_messages: false,
            fail_posts: 0,
            apply_then_fail: 0,
            fail_to: HashSet::new(),
            hide_last_tx: false,
            refused: Vec::new(),
            min_gap: None,
            last_call: None,
            calls: 0,
            rate_limited: 0,
        };
        if balance > 0 {
            st.fund(balance);
        }
        let state = Arc::new(Mutex::new(st));
        let app = Router::new()
            .route("/api/v3/message", post(send_message))
            .route("/api/v3/walletInformation", get(wallet_information))
            .route("/api/v3/transactions", get(transactions))
            .route("/api/v3/accountStates", get(account_states))
            .route("/api/v3/masterchainInfo", get(masterchain))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                rate_limit,
            ))
            .with_state(state.clone());
        let addr = serve(app).await;
        let api = TonApi::new(&format!("http://{addr}"), None, Duration::from_secs(5)).unwrap();
        FakeChain { state, api, addr }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut ChainState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}
