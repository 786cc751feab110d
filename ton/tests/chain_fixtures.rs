//! The deposit watcher on transactions the real chain made, not on hand-written ones:
//!
//! - `fixtures/sandbox/transactions.json`: the service wallet's history made in
//!   `@ton/sandbox` by `tests/ton/make-fixtures.js` (scripts/ton-tests regenerates it and
//!   fails if it differs): deposits into the undeployed wallet (non-bounceable: kept;
//!   bounceable: bounced back), the deploy, a deposit into the deployed wallet, a failing
//!   transaction.
//! - `fixtures/real/testnet-uninit-deposit.json`: a toncenter v3 response recorded from
//!   the public testnet (origin in `fixtures/real/README.md`).
//!
//! Each chain behaviour has one test naming the transaction that proves it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use billing::{
    AccountKind, DepositFilter, DepositInput, DepositStatus, Ledger, RejectReason, Rejection,
};
use common::{param, query_pairs, serve, TestDb};
use serde_json::{json, Value};
use ton::api::{normalize_hash, Transaction};
use ton::{
    classify, Address, Classified, DepositConfig, DepositWatcher, Network, ServiceWallet, TonApi,
    WalletKind,
};

const SANDBOX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sandbox/transactions.json"
);
const REAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/real/testnet-uninit-deposit.json"
);
/// The mnemonic `make-fixtures.js` derives the service wallet from (tonlib-core's test
/// mnemonic, also used by sandbox_fixtures.rs).
const WORDS: &str = "section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug";
const CODE_A: &str = "AAAA1111";
const CODE_B: &str = "BBBB2222";
const TON: i64 = 1_000_000_000;

fn load(path: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["transactions"].as_array().unwrap().clone()
}

fn parsed(txs: &[Value]) -> Vec<Transaction> {
    txs.iter()
        .map(|t| serde_json::from_value(t.clone()).unwrap())
        .collect()
}

fn sandbox_wallet() -> Address {
    // A fresh mainnet network's service wallet (sandbox uses the mainnet global id).
    ServiceWallet::from_mnemonic(WORDS, WalletKind::V5r1, Network::Mainnet)
        .unwrap()
        .address()
}

fn transfer(c: Classified) -> DepositInput {
    match c {
        Classified::Transfer(d) => d,
        other => panic!("expected a transfer, got {other:?}"),
    }
}

fn hex_hash(tx: &Value) -> String {
    normalize_hash(tx["hash"].as_str().unwrap()).unwrap()
}

#[test]
fn sandbox_fixture_is_the_service_wallets_history() {
    let txs = load(SANDBOX);
    assert_eq!(txs.len(), 6);
    let wallet = sandbox_wallet();
    for t in &txs {
        assert_eq!(
            Address::from_api(t["account"].as_str().unwrap()),
            Some(wallet)
        );
        // Real bodies carry a CRC32C (`te6cck`), and the parser checks it.
        let body = t["in_msg"]["message_content"]["body"].as_str().unwrap();
        assert!(body.starts_with("te6cck"), "{body}");
        let cell = ton::cell::parse_boc(body).unwrap();
        assert_eq!(
            STANDARD.encode(cell.cell_hash().as_slice()),
            t["in_msg"]["message_content"]["hash"].as_str().unwrap()
        );
    }
}

/// Chain behaviour: a non-bounceable transfer to the undeployed (no code) wallet is
/// aborted with the compute phase skipped (`no_state`), yet its value is credited to the
/// account and stays. Proof: sandbox transaction 0 (lt 3000000).
#[test]
fn nonbounceable_deposit_into_undeployed_wallet_is_credited() {
    let txs = load(SANDBOX);
    let tx = &txs[0];
    assert_eq!(tx["orig_status"], "uninit");
    assert_eq!(tx["description"]["aborted"], true);
    assert_eq!(
        tx["description"]["compute_ph"],
        json!({"skipped": true, "reason": "no_state"})
    );
    assert_eq!(tx["description"]["credit_first"], true);
    assert!(tx["description"].get("bounce").is_none());
    assert_eq!(tx["account_state_after"]["balance"], "2000000000");
    let d = transfer(classify(&parsed(&txs)[0], &sandbox_wallet()).unwrap());
    assert_eq!(d.comment.as_deref(), Some(CODE_A));
    assert_eq!(d.value, (2 * TON).to_string());
    assert_eq!(d.rejection, None);
    assert_eq!(d.tx_hash, hex_hash(tx));
}

/// Chain behaviour: a bounceable transfer to the undeployed wallet bounces (bounce phase
/// `ok`, a bounced message goes back): nothing stays. Proof: sandbox transaction 1.
#[test]
fn bounceable_deposit_into_undeployed_wallet_is_rejected() {
    let txs = load(SANDBOX);
    let tx = &txs[1];
    assert_eq!(tx["orig_status"], "uninit");
    assert_eq!(tx["in_msg"]["bounce"], true);
    assert_eq!(tx["description"]["bounce"]["type"], "ok");
    assert_eq!(tx["out_msgs"][0]["bounced"], true);
    // The balance is what the first deposit left: the 1 TON went back.
    assert_eq!(tx["account_state_after"]["balance"], "2000000000");
    let d = transfer(classify(&parsed(&txs)[1], &sandbox_wallet()).unwrap());
    let r = d.rejection.unwrap();
    assert_eq!(r.reason, RejectReason::Failed);
    assert!(r.detail.contains("bounce phase ok"), "{}", r.detail);
    assert!(r.detail.contains("skipped (no_state)"), "{}", r.detail);
}

/// Chain behaviour: the deploy (an external message with state init) and its zero-value
/// self-transfer (compute skipped `no_gas`, aborted) are not deposits. Proof: sandbox
/// transactions 2 and 3.
#[test]
fn deploy_and_self_transfer_are_ignored() {
    let txs = load(SANDBOX);
    assert_eq!(txs[2]["orig_status"], "uninit");
    assert_eq!(txs[2]["end_status"], "active");
    assert!(txs[2]["in_msg"]["init_state"].is_object());
    assert_eq!(txs[3]["description"]["compute_ph"]["reason"], "no_gas");
    let p = parsed(&txs);
    let w = sandbox_wallet();
    assert_eq!(
        classify(&p[2], &w).unwrap(),
        Classified::Ignore("external inbound message")
    );
    assert_eq!(
        classify(&p[3], &w).unwrap(),
        Classified::Ignore("message from the watched wallet itself")
    );
}

/// Chain behaviour: a transfer to the deployed wallet runs its code successfully (not
/// aborted). Proof: sandbox transaction 4.
#[test]
fn deposit_into_deployed_wallet_is_credited() {
    let txs = load(SANDBOX);
    assert_eq!(txs[4]["orig_status"], "active");
    assert_eq!(txs[4]["description"]["aborted"], false);
    let d = transfer(classify(&parsed(&txs)[4], &sandbox_wallet()).unwrap());
    assert_eq!(
        (d.comment.as_deref(), d.value.as_str(), d.rejection),
        (Some(CODE_A), "3000000000", None)
    );
}

/// Chain behaviour: a bounceable message whose compute phase fails (wallet v5r1 exit 133,
/// a signed internal request with a used seqno) is aborted and bounced back. Proof:
/// sandbox transaction 5.
#[test]
fn failed_bounceable_transaction_is_rejected() {
    let txs = load(SANDBOX);
    assert_eq!(txs[5]["description"]["compute_ph"]["exit_code"], 133);
    let d = transfer(classify(&parsed(&txs)[5], &sandbox_wallet()).unwrap());
    let r = d.rejection.unwrap();
    assert_eq!(r.reason, RejectReason::Failed);
    assert!(r.detail.contains("exit code 133"), "{}", r.detail);
}

/// A non-bounceable transfer that fails without a credit (nothing reached the account) is
/// not credited, whatever its comment. Derived from sandbox transaction 0 with the credit
/// phase removed.
#[test]
fn failed_transfer_without_credit_is_rejected() {
    let mut tx = load(SANDBOX)[0].clone();
    tx["description"]
        .as_object_mut()
        .unwrap()
        .remove("credit_ph");
    let tx: Transaction = serde_json::from_value(tx).unwrap();
    let d = transfer(classify(&tx, &sandbox_wallet()).unwrap());
    assert_eq!(d.rejection.unwrap().reason, RejectReason::Failed);
}

/// The recorded testnet response: the first deposit into a never-used (`nonexist`)
/// address, non-bounceable with comment `1985597651`, aborted with the compute phase
/// skipped (`no_state`, older `type`/`skip_reason` spelling). Parsing gives exactly that
/// deposit; the later jetton notification (op 0x7362d09c, 1 nanoton, `no_gas`) is a
/// kept transfer that is not a comment.
#[test]
fn recorded_testnet_response_gives_exactly_its_deposit() {
    let txs = load(REAL);
    let wallet = Address::from_api(txs[0]["account"].as_str().unwrap()).unwrap();
    // The bodies are genuine: their cell hashes are the ones the indexer recorded.
    for t in &txs {
        let c = &t["in_msg"]["message_content"];
        let cell = ton::cell::parse_boc(c["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            STANDARD.encode(cell.cell_hash().as_slice()),
            c["hash"].as_str().unwrap()
        );
    }
    let p = parsed(&txs);
    // The page is newest first (as toncenter's default sort=desc).
    let first = transfer(classify(&p[1], &wallet).unwrap());
    assert_eq!(
        first,
        DepositInput {
            tx_hash: hex_hash(&txs[1]),
            lt: 22_161_219_000_001,
            source: Some(
                "0:e1cb4616edbdd7f663f295cf611fc82917839cd2a3775cbc2194df43baf6601a".into()
            ),
            value: "1000000000".into(),
            comment: Some("1985597651".into()),
            utime: 1_717_046_274,
            rejection: None,
        }
    );
    let jetton = transfer(classify(&p[0], &wallet).unwrap());
    assert_eq!(jetton.value, "1");
    assert_eq!(
        jetton.rejection,
        Some(Rejection {
            reason: RejectReason::NotAComment,
            detail: "not a text comment (op 0x7362d09c)".into()
        })
    );
}

// ---- the watcher on the sandbox history, through HTTP and the ledger -------------------

struct Replay {
    txs: Vec<Value>,
    last_mc: u64,
}

fn lt_of(tx: &Value) -> u64 {
    tx["lt"].as_str().unwrap().parse().unwrap()
}

async fn transactions(State(r): State<Arc<Replay>>, RawQuery(q): RawQuery) -> Json<Value> {
    let q = query_pairs(q.as_deref());
    let account = Address::from_api(param(&q, "account").unwrap());
    let start: u64 = param(&q, "start_lt").map_or(0, |v| v.parse().unwrap());
    let limit: usize = param(&q, "limit").map_or(10, |v| v.parse().unwrap());
    let mut page: Vec<Value> = r
        .txs
        .iter()
        .filter(|t| Address::from_api(t["account"].as_str().unwrap()) == account)
        .filter(|t| lt_of(t) >= start)
        .cloned()
        .collect();
    page.sort_by_key(lt_of);
    if param(&q, "sort") != Some("asc") {
        page.reverse();
    }
    page.truncate(limit);
    Json(json!({"transactions": page, "address_book": {}}))
}

async fn masterchain(State(r): State<Arc<Replay>>) -> Json<Value> {
    Json(json!({
        "first": {"workchain": -1, "shard": "8000000000000000", "seqno": 1, "gen_utime": "1600000000"},
        "last": {"workchain": -1, "shard": "8000000000000000", "seqno": r.last_mc, "gen_utime": "1700000100"}
    }))
}

async fn replay(txs: Vec<Value>) -> TonApi {
    let last_mc = txs
        .iter()
        .map(|t| t["mc_block_seqno"].as_u64().unwrap())
        .max()
        .unwrap()
        + 3;
    let app = Router::new()
        .route("/api/v3/transactions", get(transactions))
        .route("/api/v3/masterchainInfo", get(masterchain))
        .with_state(Arc::new(Replay { txs, last_mc }));
    let addr = serve(app).await;
    TonApi::new(&format!("http://{addr}"), None, Duration::from_secs(5)).unwrap()
}

/// A fresh network: its service wallet has never been deployed, and the first client
/// deposit (sandbox transaction 0) is credited; the bounced one is recorded as rejected,
/// the deploy and self-transfer are ignored, the later deposit is credited too.
async fn fresh_network_credits_first_deposit(db: &TestDb) {
    let l: &Ledger = &db.ledger;
    let a = l
        .ensure_account(AccountKind::Client, "alice")
        .await
        .unwrap();
    let b = l.ensure_account(AccountKind::Client, "bob").await.unwrap();
    db.set_code(a, CODE_A).await;
    db.set_code(b, CODE_B).await;
    let txs = load(SANDBOX);
    let api = replay(txs.clone()).await;
    let w = DepositWatcher::new(
        api,
        l.clone(),
        sandbox_wallet(),
        DepositConfig {
            confirmations: 3,
            page_size: 2,
            ..DepositConfig::default()
        },
    );
    let r = w.poll_once().await.unwrap();
    assert_eq!(
        (r.credited, r.rejected, r.ignored, r.unconfirmed),
        (2, 2, 2, 0),
        "{r:?}"
    );
    assert_eq!(r.cursor, Some(lt_of(&txs[5])));
    assert_eq!(l.balance(a).await.unwrap().total, 5 * TON);
    assert_eq!(l.balance(b).await.unwrap().total, 0);
    let credited = l
        .list_deposits(DepositFilter {
            status: Some(DepositStatus::Credited),
            limit: 10,
            ..DepositFilter::default()
        })
        .await
        .unwrap();
    let mut lts: Vec<u64> = credited.iter().map(|d| d.lt).collect();
    lts.sort_unstable();
    assert_eq!(lts, vec![lt_of(&txs[0]), lt_of(&txs[4])]);
    // Polling again changes nothing.
    let again = w.poll_once().await.unwrap();
    assert_eq!(again.credited + again.rejected, 0);
    assert_eq!(l.balance(a).await.unwrap().total, 5 * TON);
}

on_both_backends!(fresh_network_credits_first_deposit);
