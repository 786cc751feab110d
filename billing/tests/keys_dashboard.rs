//! API keys and dashboard state in the ledger's database, the same test bodies on Postgres
//! and on SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use billing::{AccountKind, IdentityProvider, KeyControls, Ledger, NewApiKey, Price, Usage};
use common::TestDb;
use uuid::Uuid;

fn new_key(id: &str, account: &str) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        sha256: format!("{:064x}", id.len() as u64 * 7919 + id.as_bytes()[0] as u64),
        account: account.into(),
        name: format!("key {id}"),
        created_by: "test".into(),
        created_at_ms: 1_700_000_000_000,
        revoked_at_ms: None,
        limits: None,
        controls: KeyControls::default(),
    }
}

async fn keys_versioned(db: &TestDb) {
    let l = &db.ledger;
    assert!(l.api_keys_since(0).await.unwrap().is_empty());
    let a = l.insert_api_key(&new_key("aaaaaaaaaaaa", "alice")).await.unwrap().unwrap();
    let mut b_in = new_key("bbbbbbbbbbbb", "bob");
    b_in.limits = Some((10, 1000));
    b_in.controls = KeyControls {
        allowed_models: Some(r#"["m1"]"#.into()),
        daily_budget_nanoton: Some(5),
        monthly_budget_nanoton: Some(50),
        max_price_coefficient: Some(1500),
    };
    let b = l.insert_api_key(&b_in).await.unwrap().unwrap();
    assert!(b.version > a.version);
    assert_eq!(b.limits, Some((10, 1000)));
    assert_eq!(b.controls, b_in.controls);
    // The same id again writes nothing and does not move the version.
    assert!(l.insert_api_key(&new_key("aaaaaaaaaaaa", "mallory")).await.unwrap().is_none());
    let seen = l.api_keys_since(0).await.unwrap();
    assert_eq!(seen.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);
    assert!(l.api_keys_since(b.version).await.unwrap().is_empty());
    // Paged, one row at a time, the same rows in the same order.
    let first = l.api_keys_page(0, 1).await.unwrap();
    assert_eq!(first, seen[..1]);
    let next = l.api_keys_page(first[0].version, 1).await.unwrap();
    assert_eq!(next, seen[1..]);
    assert!(l.api_keys_page(next[0].version, 1).await.unwrap().is_empty());
    assert_eq!(l.api_keys_page(0, 10).await.unwrap(), seen);

    // Another account cannot revoke or rename alice's key.
    assert!(l.revoke_api_key("aaaaaaaaaaaa", Some("bob")).await.unwrap().is_none());
    assert!(l.rename_api_key("aaaaaaaaaaaa", Some("bob"), "x").await.unwrap().is_none());
    assert!(l.revoke_api_key("nope", None).await.unwrap().is_none());

    let renamed = l.rename_api_key("aaaaaaaaaaaa", Some("alice"), "laptop").await.unwrap().unwrap();
    assert_eq!(renamed.name, "laptop");
    assert!(renamed.version > b.version);
    let revoked = l.revoke_api_key("aaaaaaaaaaaa", Some("alice")).await.unwrap().unwrap();
    assert!(revoked.revoked_at_ms.is_some());
    assert!(revoked.version > renamed.version);
    // Idempotent: revoking again changes nothing.
    let again = l.revoke_api_key("aaaaaaaaaaaa", None).await.unwrap().unwrap();
    assert_eq!(again, revoked);
    let changes = l.api_keys_since(b.version).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0], revoked);

    assert_eq!(l.api_keys(Some("alice")).await.unwrap(), vec![revoked.clone()]);
    assert_eq!(l.api_keys(None).await.unwrap().len(), 2);
    assert_eq!(l.api_key("bbbbbbbbbbbb").await.unwrap().unwrap(), b);

    // Malformed hashes are refused.
    let mut bad = new_key("cccccccccccc", "c");
    bad.sha256 = "zz".into();
    assert!(l.insert_api_key(&bad).await.is_err());
}

/// Concurrent writers (two ledgers on one database = two replicas) never hand out the same
/// version, and a reader that follows `api_keys_since` sees every change.
async fn concurrent_key_writes(db: &TestDb) {
    let other = Ledger::connect(&db.url, common::options()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let l = if i % 2 == 0 { db.ledger.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let id = format!("k{i:011}");
            l.insert_api_key(&new_key(&id, "acct")).await.unwrap().unwrap();
            l.revoke_api_key(&id, None).await.unwrap().unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(tokio::time::timeout(Duration::from_secs(60), t).await.expect("key writes finished").unwrap().version);
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 20, "every revocation got its own version");
    let all = db.ledger.api_keys_since(0).await.unwrap();
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|k| k.revoked_at_ms.is_some()));
    other.close().await;
}

async fn identities_and_nonces(db: &TestDb) {
    let l = &db.ledger;
    let first = l.sign_in_identity(IdentityProvider::Telegram, "42", "tg:42", "@alice").await.unwrap();
    assert_eq!(first.account, "tg:42");
    // A later sign-in keeps the account it was linked to, updates the label.
    let again = l.sign_in_identity(IdentityProvider::Telegram, "42", "other", "@alice2").await.unwrap();
    assert_eq!(again.account, "tg:42");
    assert_eq!(again.label, "@alice2");
    assert!(again.last_login_at_ms >= first.last_login_at_ms);
    let ton = l.sign_in_identity(IdentityProvider::Ton, "0:ab", "tg:42", "EQ..").await.unwrap();
    assert_eq!(ton.provider, IdentityProvider::Ton);
    assert_eq!(l.identities("tg:42").await.unwrap().len(), 2);

    let later = 4_000_000_000_000; // ms, far ahead
    assert!(l.use_nonce("n1", "ton_proof", later).await.unwrap());
    assert!(!l.use_nonce("n1", "ton_proof", later).await.unwrap(), "single use");
    assert!(!l.use_nonce("n1", "other", later).await.unwrap(), "single use whatever the purpose");
    // Rows past their expiry are dropped; the issuer refuses expired values itself.
    assert!(l.use_nonce("n2", "ton_proof", 1).await.unwrap());
    assert!(l.use_nonce("n3", "ton_proof", later).await.unwrap());
    assert!(l.use_nonce("n2", "ton_proof", later).await.unwrap(), "the expired row was dropped");
}

async fn usage_by_day_and_workers_by_address(db: &TestDb) {
    let l = &db.ledger;
    let price = Price { prompt: 1_000_000, cached_prompt: 0, completion: 2_000_000, reasoning: 0 };
    l.set_price("m1", price).await.unwrap();
    l.set_price("m2", price).await.unwrap();
    let client = l.ensure_account(AccountKind::Client, "c").await.unwrap();
    let worker = l.ensure_account(AccountKind::Worker, "w1").await.unwrap();
    l.credit(client, 1_000_000_000, "seed", "").await.unwrap();
    let mut total = 0;
    for (model, n) in [("m1", 2), ("m2", 1)] {
        for _ in 0..n {
            let job = Uuid::new_v4();
            l.hold(job, client, model, 1_000_000, Duration::from_secs(60)).await.unwrap();
            let out = l
                .capture(job, worker, Usage { prompt_tokens: 10, completion_tokens: 20, ..Usage::default() }, 1000)
                .await
                .unwrap();
            total += out.receipt().unwrap().billed.charge;
        }
    }
    let rows = l.daily_usage(client, 0).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].model, "m1");
    assert_eq!(rows[0].requests, 2);
    assert_eq!(rows[0].prompt_tokens, 20);
    assert_eq!(rows[0].completion_tokens, 40);
    assert_eq!(rows.iter().map(|r| r.charge).sum::<i64>(), total);
    let today = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 / 86_400_000;
    assert!(rows.iter().all(|r| r.day == today));
    assert!(l.daily_usage(client, i64::MAX).await.unwrap().is_empty());

    let addr = format!("0:{}", "ab".repeat(32));
    assert!(l.workers_paid_to(&addr).await.unwrap().is_empty());
    l.set_payout_address(worker, &addr, false).await.unwrap();
    let w2 = l.ensure_account(AccountKind::Worker, "w0").await.unwrap();
    l.set_payout_address(w2, &addr, false).await.unwrap();
    assert_eq!(l.workers_paid_to(&addr).await.unwrap(), ["w0", "w1"]);
}

on_both_backends!(keys_versioned, concurrent_key_writes, identities_and_nonces, usage_by_day_and_workers_by_address);
