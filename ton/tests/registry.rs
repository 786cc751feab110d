//! The registry reader on what the contract really returns: `fixtures/registry/policy.json`
//! holds the get-method results of the compiled `contracts/registry.tolk` in @ton/sandbox
//! after a fixed set of owner updates, rendered in toncenter v3's `runGetMethod` shape
//! (made by `tests/ton/make-registry-fixtures.js`; `scripts/ton-tests` regenerates it and
//! fails if it differs). A replay server answers `POST /api/v3/runGetMethod` from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use ton::registry::RegistryPolicy;
use ton::{Address, RegistryReader, TonApi};

const FIXTURE: &str = include_str!("fixtures/registry/policy.json");

#[derive(Clone, Default)]
struct Replay {
    responses: Arc<Mutex<Value>>,
    address: String,
    /// Every request body, to check what the reader sends.
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn run_get_method(State(r): State<Replay>, Json(body): Json<Value>) -> Json<Value> {
    r.seen.lock().unwrap().push(body.clone());
    let responses = r.responses.lock().unwrap().clone();
    let method = body["method"].as_str().unwrap_or_default();
    if !body["address"].as_str().unwrap_or_default().eq_ignore_ascii_case(&r.address) {
        // What toncenter answers for an account without code.
        return Json(json!({"gas_used": 0, "exit_code": -13, "stack": []}));
    }
    let resp = if method == "get_registry_list" {
        let kind = body["stack"][0]["value"].as_str().unwrap_or("0x0");
        let kind = i64::from_str_radix(kind.trim_start_matches("0x"), 16).unwrap_or(0);
        responses["get_registry_list"][kind.to_string()].clone()
    } else {
        responses[method].clone()
    };
    if resp.is_null() {
        // An unknown get-method: TVM exit code 11.
        return Json(json!({"gas_used": 0, "exit_code": 11, "stack": []}));
    }
    Json(resp)
}

async fn replay(fixture: &Value) -> (Replay, RegistryReader) {
    let address = fixture["address"].as_str().unwrap().to_owned();
    let r = Replay {
        responses: Arc::new(Mutex::new(fixture["responses"].clone())),
        address: address.clone(),
        seen: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/api/v3/runGetMethod", post(run_get_method))
        .with_state(r.clone());
    let addr = common::serve(app).await;
    let api = TonApi::new(&format!("http://{addr}"), None, Duration::from_secs(5)).unwrap();
    let reader = RegistryReader::new(api, Address::from_raw(&address).unwrap());
    (r, reader)
}

#[tokio::test]
async fn reads_what_the_contract_returns() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let (replay, reader) = replay(&fixture).await;
    let got = reader.read().await.unwrap();
    let want: RegistryPolicy = serde_json::from_value(fixture["expected_policy"].clone()).unwrap();
    assert_eq!(got, want);
    assert_eq!(reader.version().await.unwrap(), want.version);
    // The fixture exercises every list, an "any" RTMR and a model with two digests.
    assert!(!got.tdx.is_empty() && !got.snp.is_empty() && !got.endpoints.is_empty());
    assert!(got.tdx.iter().any(|t| t.rtmr3 == "any"));
    assert!(got.models.values().any(|d| d.len() == 2));
    assert!(got.gpu.require && !got.gpu.measurements.is_empty());
    // The request has toncenter's shape: raw address, method name, an empty stack.
    let seen = replay.seen.lock().unwrap().clone();
    assert_eq!(seen[0]["method"], "get_registry_policy");
    assert_eq!(seen[0]["stack"], json!([]));
    assert!(seen[0]["address"].as_str().unwrap().starts_with("0:"));

    // Our own encoder of the same state decodes to the same policy; with the same
    // dictionary layout as TVM's it is even the very same cell.
    let ours = want.to_cell().unwrap();
    let owner = Address::from_raw(&want.owner).unwrap();
    assert_eq!(RegistryPolicy::decode(want.version, &owner, &ours).unwrap(), want);
    let theirs = ton::cell::parse_boc(
        fixture["responses"]["get_registry_policy"]["stack"][1]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        hex::encode(ours.cell_hash().as_slice()),
        hex::encode(theirs.cell_hash().as_slice()),
        "tonlib-core's dictionary builder lays the lists out differently from TVM"
    );
}

#[tokio::test]
async fn refuses_what_does_not_decode() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let (replay, reader) = replay(&fixture).await;
    let set = |f: &dyn Fn(&mut Value)| f(&mut replay.responses.lock().unwrap());

    // The contract threw.
    set(&|v| v["get_registry_policy"]["exit_code"] = json!(9));
    let e = reader.read().await.unwrap_err().to_string();
    assert!(e.contains("exited with code 9"), "{e}");

    // One stack entry instead of two.
    set(&|v| {
        v["get_registry_policy"]["exit_code"] = json!(0);
        v["get_registry_policy"]["stack"].as_array_mut().unwrap().truncate(1);
    });
    let e = reader.read().await.unwrap_err().to_string();
    assert!(e.contains("1 stack entries, expected 2"), "{e}");

    // The version as a cell, the policy as a number.
    let good: Value = fixture["responses"]["get_registry_policy"].clone();
    set(&|v| {
        let s = good["stack"].as_array().unwrap();
        v["get_registry_policy"]["stack"] = json!([s[1].clone(), s[0].clone()]);
    });
    assert!(reader.read().await.is_err());

    // A policy cell that is the params cell (wrong shape).
    let params = fixture["responses"]["get_registry_params"]["stack"][0].clone();
    set(&|v| {
        v["get_registry_policy"]["stack"] = json!([good["stack"][0].clone(), params.clone()]);
    });
    let e = reader.read().await.unwrap_err().to_string();
    assert!(e.starts_with("policy registry:"), "{e}");

    // No contract at the address.
    let api = TonApi::new(
        &format!(
            "http://{}",
            common::serve(
                axum::Router::new()
                    .route("/api/v3/runGetMethod", post(run_get_method))
                    .with_state(replay.clone())
            )
            .await
        ),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let elsewhere = RegistryReader::new(api, Address { workchain: 0, hash: [1; 32] });
    let e = elsewhere.read().await.unwrap_err().to_string();
    assert!(e.contains("exited with code -13"), "{e}");
}

/// What `cocoon registry` sends: `owner::send` reads the wallet's seqno and the chain time,
/// signs one call to the registry and broadcasts it; the fake chain (a wallet v5r1 model
/// that checks signature layout, wallet id, expiry and seqno) applies it.
#[tokio::test]
async fn the_owner_sends_an_update_from_the_service_wallet() {
    use ton::registry::{messages, owner, Item};
    const WORDS: &str = "section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug";
    let wallet = ton::ServiceWallet::from_mnemonic(WORDS, ton::WalletKind::V5r1, ton::Network::Mainnet).unwrap();
    let chain = common::fake_chain::FakeChain::start(wallet.address(), wallet.wallet_id(), 10_000_000_000).await;
    let registry = Address { workchain: 0, hash: [0x77; 32] };
    let body = messages::add_item(1, &Item::Snp("ab".repeat(48))).unwrap();

    // Not deployed yet: refused before anything is signed.
    let e = owner::send(&chain.api, &wallet, registry, body.clone(), None, owner::UPDATE_VALUE).await.unwrap_err();
    assert!(e.to_string().contains("cocoon ton deploy-wallet"), "{e}");

    chain.with(|s| {
        s.deployed = true;
        s.seqno = 5;
        s.now = 1_700_000_000;
    });
    let sent = owner::send(&chain.api, &wallet, registry, body.clone(), None, owner::UPDATE_VALUE).await.unwrap();
    assert_eq!(sent.seqno, 5);
    assert_eq!(sent.valid_until, 1_700_000_000 + 120);
    chain.with(|s| {
        assert_eq!(s.seqno, 6, "the wallet took it: {:?}", s.refused);
        let t = s.transfers.last().unwrap();
        assert_eq!((t.to, t.amount, t.bounce), (registry, owner::UPDATE_VALUE, true));
        assert_eq!(s.bodies.last().unwrap().as_slice(), body.cell_hash().as_slice());
    });
}
