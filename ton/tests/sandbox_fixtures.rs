//! Writes what the node sandbox test (`tests/ton`, run by `scripts/ton-tests`) executes on
//! the real wallet contracts: the payout batch messages exactly as the production path
//! saves them (ledger payouts → `PayoutSender` → the batch row's BOC, against the fake
//! chain so that seqnos and `valid_until` come from a chain), what each transfer must be,
//! a long multi-cell comment, an expired message, a wallet v4r2 message, the deploy
//! message of `cocoon ton deploy-wallet`, and the
//! addresses and wallet ids derived in Rust. Only runs when `TON_SANDBOX_OUT` names a
//! directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use billing::{AccountKind, Ledger, Price, Usage};
use common::fake_chain::FakeChain;
use serde_json::{json, Value};
use ton::{
    payout_comment, Address, Network, PayoutConfig, PayoutSender, ServiceWallet, Step, Transfer,
    WalletKind,
};
use uuid::Uuid;

/// tonlib-core's test mnemonics: the service wallet and a second (deployed) wallet.
const WORDS: &str = "section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug";
const WORDS2: &str = "fancy carpet hello mandate penalty trial consider property top vicious exit rebuild tragic profit urban major total month holiday sudden rib gather media vicious";
const TON: i64 = 1_000_000_000;
const NOW: u32 = 1_700_000_000;

async fn worker(l: &Ledger, name: &str, earn: i64, to: Address, bounceable: bool) {
    l.set_price(
        "m",
        Price {
            prompt: 1_000_000_000,
            ..Price::default()
        },
    )
    .await
    .unwrap();
    let client = l
        .ensure_account(AccountKind::Client, &format!("payer-{name}"))
        .await
        .unwrap();
    let w = l.ensure_account(AccountKind::Worker, name).await.unwrap();
    l.credit(client, earn * 2, &format!("fund-{name}"), "")
        .await
        .unwrap();
    let job = Uuid::new_v4();
    l.hold(job, client, "m", earn * 2, Duration::from_secs(60))
        .await
        .unwrap();
    let tokens = u64::try_from(earn / 1000).unwrap();
    l.capture(
        job,
        w,
        Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        },
        1000,
    )
    .await
    .unwrap();
    l.set_payout_address(w, &to.to_raw(), bounceable)
        .await
        .unwrap();
}

/// Runs the sender until its open batch is confirmed; returns the batch as the sandbox
/// must see it.
async fn batch(s: &PayoutSender, l: &Ledger) -> Value {
    let Step::Sent { batch, .. } = s.run_once().await.unwrap().step else {
        panic!("nothing sent")
    };
    let b = l.payout_batch(batch).await.unwrap().unwrap();
    let mut transfers = Vec::new();
    for item in &b.items {
        let p = l.payout(item.payout_id).await.unwrap().unwrap();
        transfers.push(json!({
            "to": p.address,
            "amount": p.amount.to_string(),
            "bounce": item.bounce,
            "comment": payout_comment(p.id),
        }));
    }
    assert!(matches!(
        s.run_once().await.unwrap().step,
        Step::Settled { .. }
    ));
    json!({"boc": b.boc, "hash": b.msg_hash, "seqno": b.seqno, "valid_until": b.valid_until, "transfers": transfers})
}

fn signed(
    w: &ServiceWallet,
    transfers: &[Transfer],
    seqno: u32,
    valid_until: u32,
    init: bool,
) -> Value {
    let m = w
        .sign_transfers(transfers, seqno, valid_until, init)
        .unwrap();
    let list: Vec<Value> = transfers
        .iter()
        .map(|t| json!({"to": t.to.to_raw(), "amount": t.amount.to_string(), "bounce": t.bounce, "comment": t.comment}))
        .collect();
    json!({"boc": m.boc, "hash": m.hash, "seqno": seqno, "valid_until": valid_until, "transfers": list})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_sandbox_fixtures() {
    let Some(out) = std::env::var_os("TON_SANDBOX_OUT") else {
        eprintln!("TON_SANDBOX_OUT is not set: nothing written (scripts/ton-tests sets it)");
        return;
    };
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out).unwrap();

    let service = ServiceWallet::from_mnemonic(WORDS, WalletKind::V5r1, Network::Mainnet).unwrap();
    let testnet = ServiceWallet::from_mnemonic(WORDS, WalletKind::V5r1, Network::Testnet).unwrap();
    let v4 = ServiceWallet::from_mnemonic(WORDS, WalletKind::V4r2, Network::Mainnet).unwrap();
    let second = ServiceWallet::from_mnemonic(WORDS2, WalletKind::V5r1, Network::Mainnet).unwrap();
    let undeployed_a = Address {
        workchain: 0,
        hash: [0x11; 32],
    };
    let undeployed_b = Address {
        workchain: 0,
        hash: [0x22; 32],
    };

    // The production path: ledger payouts, sent by the sender against the fake chain.
    let db = common::TestDb::sqlite().await;
    let l = &db.ledger;
    let chain = FakeChain::start(
        service.address(),
        service.wallet_id(),
        10_000 * i128::from(TON),
    )
    .await;
    chain.with(|s| {
        s.now = NOW;
        // What the sandbox will hold: the second wallet deployed, and (as the chain claims)
        // undeployed_b too, so that its transfer goes bounceable and comes back.
        s.accounts.insert(second.address(), "active");
        s.accounts.insert(undeployed_b, "active");
    });
    let sender = PayoutSender::new(
        chain.api.clone(),
        l.clone(),
        service.clone(),
        PayoutConfig {
            threshold_nanoton: TON,
            max_batch: 100,
            ..PayoutConfig::default()
        },
    );
    worker(l, "gpu-a", 3 * TON, undeployed_a, true).await; // destination not deployed: non-bounceable
    worker(l, "gpu-b", 2 * TON, undeployed_b, true).await; // bounceable, bounces in the sandbox
    worker(l, "gpu-c", 5 * TON, second.address(), true).await; // bounceable to a deployed wallet
    worker(l, "gpu-d", 4 * TON, second.address(), false).await; // the owner asked for non-bounceable
    let first = batch(&sender, l).await; // seqno 0, deploys the wallet
    worker(l, "gpu-e", 2 * TON, undeployed_a, false).await;
    let second_batch = batch(&sender, l).await; // seqno 1
    for i in 0..100u8 {
        let mut hash = [0xa0; 32];
        hash[31] = i;
        let to = Address { workchain: 0, hash };
        worker(l, &format!("many-{i}"), 2 * TON + i64::from(i), to, false).await;
    }
    let big = batch(&sender, l).await; // seqno 2, 100 transfers
    assert_eq!(big["transfers"].as_array().unwrap().len(), 100);

    let long = "cocoon ✓ ".repeat(40);
    let extra = signed(
        &service,
        &[Transfer {
            to: second.address(),
            amount: TON / 10,
            bounce: true,
            comment: long.clone(),
        }],
        3,
        NOW + 600,
        false,
    );
    let expired = signed(
        &service,
        &[Transfer {
            to: undeployed_a,
            amount: TON / 10,
            bounce: false,
            comment: "too late".into(),
        }],
        4,
        NOW - 1,
        false,
    );
    let v4_batch = signed(
        &v4,
        &[Transfer {
            to: undeployed_a,
            amount: TON / 5,
            bounce: false,
            comment: "from v4r2".into(),
        }],
        0,
        NOW + 600,
        true,
    );
    // `cocoon ton deploy-wallet`'s message (deploy::deploy_wallet signs it so).
    let deploy = service
        .sign_deploy(NOW + 600, ton::deploy::DEPLOY_COMMENT)
        .unwrap();
    let fixtures = json!({
        "now": NOW,
        "deploy": {"boc": deploy.boc, "hash": deploy.hash, "comment": ton::deploy::DEPLOY_COMMENT},
        "mnemonic": WORDS,
        "second_mnemonic": WORDS2,
        "public_key": hex::encode(service.public_key()),
        "v5r1_mainnet": {"raw": service.address().to_raw(), "friendly": service.address().to_friendly(false, false), "wallet_id": service.wallet_id()},
        "v5r1_testnet": {"raw": testnet.address().to_raw(), "friendly": testnet.address().to_friendly(false, true), "wallet_id": testnet.wallet_id()},
        "v4r2_mainnet": {"raw": v4.address().to_raw(), "friendly": v4.address().to_friendly(true, false), "wallet_id": v4.wallet_id()},
        "second_wallet": second.address().to_raw(),
        "undeployed": [undeployed_a.to_raw(), undeployed_b.to_raw()],
        "batches": [first, second_batch, big, extra],
        "expired": expired,
        "v4r2_batch": v4_batch,
    });
    let path = out.join("fixtures.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fixtures).unwrap()).unwrap();
    eprintln!("wrote {}", path.display());
    db.finish().await;
}

/// `cocoon registry`'s messages, signed by the service wallet exactly as the CLI signs them
/// (`registry::messages` bodies in `ServiceWallet::sign_calls`), for the node suite to run
/// on the real wallet v5r1 and the compiled registry (`tests/ton/registry.test.js`):
/// the wallet deploy (seqno 0), the registry deploy (seqno 1), then one update per
/// seqno. A stranger's wallet (the second mnemonic) sends one update, which the registry
/// must refuse with 401. `expected_policy` is what `get_registry_policy` must decode to.
#[test]
fn write_registry_fixtures() {
    use ton::registry::{messages, Endpoint, Item, Params, Prices, RegistryPolicy, Role, TdxImage};
    use ton::Call;
    let Some(out) = std::env::var_os("TON_SANDBOX_OUT") else {
        eprintln!("TON_SANDBOX_OUT is not set: nothing written (scripts/ton-tests sets it)");
        return;
    };
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out).unwrap();
    let service = ServiceWallet::from_mnemonic(WORDS, WalletKind::V5r1, Network::Mainnet).unwrap();
    let stranger = ServiceWallet::from_mnemonic(WORDS2, WalletKind::V5r1, Network::Mainnet).unwrap();
    let params = Params {
        max_price_coefficient: 3000,
        fee_bps: 400,
        ..Params::default()
    };
    let deploy = messages::deploy(&service.address(), &params).unwrap();
    let registry = deploy.address;
    let hx = |b: u8| hex::encode([b; 48]);
    let tdx = Item::Tdx(TdxImage {
        mrtd: hx(0x11),
        rtmr0: hx(0x12),
        rtmr1: hx(0x13),
        rtmr2: hx(0x14),
        rtmr3: "any".into(),
    });
    let model_a = Item::Model { id: "smollm2-135m".into(), sha256: hex::encode([0x21; 32]) };
    let model_b = Item::Model { id: "smollm2-135m".into(), sha256: hex::encode([0x22; 32]) };
    let model_gone = Item::Model { id: "retired-model".into(), sha256: hex::encode([0x23; 32]) };
    let added = vec![
        tdx,
        Item::Snp(hx(0x31)),
        model_a,
        model_b,
        model_gone.clone(),
        Item::GpuDriver("550.54.15".into()),
        Item::GpuVbios("96.00.9F.00.04".into()),
        Item::GpuGolden { index: 2, value: hex::encode([0x41; 48]) },
        Item::Endpoint(Endpoint {
            role: Role::Gateway,
            url: "https://gateway.example/v1".into(),
            tls_sha256: hex::encode([0x51; 32]),
        }),
    ];
    let final_params = Params {
        prices: Prices { prompt: 100_000_000, cached_prompt: 50_000_000, completion: 300_000_000, reasoning: 300_000_000 },
        max_price_coefficient: 2500,
        fee_bps: 300,
        gpu_require: true,
        gpu_architectures: vec!["hopper".into()],
        gpu_protection_modes: vec!["spt".into()],
    };
    let mut bodies: Vec<(String, _)> = added
        .iter()
        .enumerate()
        .map(|(i, it)| (format!("add kind {}", it.kind()), messages::add_item(i as u64 + 1, it).unwrap()))
        .collect();
    bodies.push(("set params".into(), messages::set_params(100, &final_params).unwrap()));
    bodies.push((
        "remove the retired model".into(),
        messages::remove_item(101, model_gone.kind(), model_gone.key().unwrap()).unwrap(),
    ));
    let wallet_deploy = service.sign_deploy(NOW + 600, ton::deploy::DEPLOY_COMMENT).unwrap();
    let call = |body, state_init, amount: i64| Call { to: registry, amount, bounce: true, body, state_init };
    let mut msgs = vec![json!({
        "name": "deploy registry",
        "boc": service.sign_calls(&[Call { bounce: false, ..call(messages::empty().unwrap(), Some(deploy.state_init.clone()), ton::registry::owner::DEPLOY_VALUE) }], 1, NOW + 600).unwrap().boc,
        "registry_exit_code": 0,
    })];
    for (i, (name, body)) in bodies.into_iter().enumerate() {
        let seqno = u32::try_from(i).unwrap() + 2;
        let m = service
            .sign_calls(&[call(body, None, ton::registry::owner::UPDATE_VALUE)], seqno, NOW + 600)
            .unwrap();
        msgs.push(json!({"name": name, "boc": m.boc, "registry_exit_code": 0}));
    }
    let intruder = Item::Snp(hx(0x66));
    let stranger_deploy = stranger.sign_deploy(NOW + 600, ton::deploy::DEPLOY_COMMENT).unwrap();
    let stranger_msg = stranger
        .sign_calls(&[call(messages::add_item(7, &intruder).unwrap(), None, ton::registry::owner::UPDATE_VALUE)], 1, NOW + 600)
        .unwrap();
    let kept: Vec<Item> = added.into_iter().filter(|i| *i != model_gone).collect();
    // Version: one per accepted update after the deploy (9 adds, params, remove).
    let expected = RegistryPolicy::from_parts(11, &service.address(), final_params, kept);
    let code = messages::code().unwrap();
    let fixtures = json!({
        "now": NOW,
        "wallet_address": service.address().to_raw(),
        "wallet_deploy": wallet_deploy.boc,
        "registry_address": registry.to_raw(),
        "registry_code_hash": hex::encode(code.cell_hash().as_slice()),
        "messages": msgs,
        "stranger": {
            "wallet_address": stranger.address().to_raw(),
            "wallet_deploy": stranger_deploy.boc,
            "boc": stranger_msg.boc,
            "registry_exit_code": 401,
        },
        "expected_policy": expected,
    });
    let path = out.join("registry.json");
    std::fs::write(&path, serde_json::to_string_pretty(&fixtures).unwrap()).unwrap();
    eprintln!("wrote {}", path.display());
}
