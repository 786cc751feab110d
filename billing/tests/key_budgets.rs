//! Per-key spend budgets (`billing/src/ledger/budgets.rs`), on SQLite and Postgres: a hold
//! fits the key's day and month budgets or is refused with nothing written; a capture frees
//! what its hold reserved beyond the charge, a release all of it; two replicas racing holds
//! of one key, with group commit on and off, place exactly as many as the budget allows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use billing::{BudgetPeriod, CaptureOutcome, Error, HoldOutcome, KeyBudget, Ledger, LedgerOptions, Price, Usage, AccountKind};
use common::TestDb;
use uuid::Uuid;

const MODEL: &str = "m";
const PRICE: Price = Price { prompt: 1, cached_prompt: 0, completion: 1, reasoning: 0 };
const TTL: Duration = Duration::from_secs(60);
const HOLD: i64 = 1_000;

fn budget(daily: Option<i64>, monthly: Option<i64>) -> KeyBudget {
    KeyBudget::new("key-1", daily, monthly).unwrap()
}

async fn hold(l: &Ledger, client: billing::AccountId, b: &KeyBudget) -> Result<Uuid, Error> {
    let job = Uuid::new_v4();
    match l.hold_for_key(job, client, MODEL, HOLD, TTL, Some(b)).await? {
        HoldOutcome::Placed(h) => {
            assert_eq!(h.key_id.as_deref(), Some("key-1"));
            Ok(job)
        }
        other => panic!("{other:?}"),
    }
}

async fn life_cycle(l: &Ledger) {
    l.set_price(MODEL, PRICE).await.unwrap();
    let client = l.ensure_account(AccountKind::Client, "c").await.unwrap();
    let worker = l.ensure_account(AccountKind::Worker, "w").await.unwrap();
    l.credit(client, 1_000_000, "dep", "").await.unwrap();
    let now = std::time::SystemTime::now();

    // Day budget: two holds fit, the third does not; the month budget is looser.
    let b = budget(Some(2 * HOLD), Some(10 * HOLD));
    let j1 = hold(l, client, &b).await.unwrap();
    let j2 = hold(l, client, &b).await.unwrap();
    let before = l.balance(client).await.unwrap();
    match hold(l, client, &b).await {
        Err(Error::BudgetExceeded { period, budget, committed, needed, resets_at_ms }) => {
            assert_eq!((period, budget, committed, needed), (BudgetPeriod::Day, 2 * HOLD, 2 * HOLD, HOLD));
            let now_ms = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            assert!(resets_at_ms > now_ms && resets_at_ms <= now_ms + 86_400_000, "{resets_at_ms}");
            assert_eq!(resets_at_ms % 86_400_000, 0, "UTC midnight");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.balance(client).await.unwrap(), before, "a refused hold writes nothing");
    assert_eq!(l.key_spend("key-1", now).await.unwrap(), (2 * HOLD, 2 * HOLD));

    // A capture charges far less than its hold: the rest is free again.
    let usage = Usage { prompt_tokens: 10, completion_tokens: 20, ..Usage::default() };
    let charge = match l.capture(j1, worker, usage, 1000).await.unwrap() {
        CaptureOutcome::Captured(r) => r.billed.charge,
        other => panic!("{other:?}"),
    };
    assert!(charge > 0 && charge < HOLD);
    assert_eq!(l.key_spend("key-1", now).await.unwrap().0, HOLD + charge);
    // A repeated capture changes nothing.
    assert!(matches!(l.capture(j1, worker, usage, 1000).await.unwrap(), CaptureOutcome::AlreadyCaptured(_)));
    assert_eq!(l.key_spend("key-1", now).await.unwrap().0, HOLD + charge);
    // A release frees all of its hold; a second release nothing.
    l.release(j2).await.unwrap();
    l.release(j2).await.unwrap();
    assert_eq!(l.key_spend("key-1", now).await.unwrap(), (charge, charge));
    hold(l, client, &b).await.unwrap();

    // The month budget binds when it is the tighter one; a key without budgets is not counted.
    let m = KeyBudget::new("key-2", None, Some(HOLD)).unwrap();
    let j = Uuid::new_v4();
    l.hold_for_key(j, client, MODEL, HOLD, TTL, Some(&m)).await.unwrap();
    let e = l.hold_for_key(Uuid::new_v4(), client, MODEL, 1, TTL, Some(&m)).await.unwrap_err();
    assert!(matches!(e, Error::BudgetExceeded { period: BudgetPeriod::Month, .. }), "{e:?}");
    assert!(KeyBudget::new("key-3", None, None).is_none());
    assert!(l.check().await.unwrap().is_empty());
}

#[tokio::test]
async fn budget_life_cycle_sqlite() {
    let db = TestDb::sqlite().await;
    life_cycle(&db.ledger).await;
    db.finish().await;
}

#[tokio::test]
async fn budget_life_cycle_postgres() {
    let db = TestDb::postgres().await;
    life_cycle(&db.ledger).await;
    db.finish().await;
}

/// 60 holds of one key at once over two replicas; the budget takes 12 and the balance more.
async fn race(a: &Ledger, b: &Ledger) {
    a.set_price(MODEL, PRICE).await.unwrap();
    let client = a.ensure_account(AccountKind::Client, "c").await.unwrap();
    a.credit(client, 1_000_000, "dep", "").await.unwrap();
    let bud = budget(Some(12 * HOLD), None);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            let bud = bud.clone();
            tokio::spawn(async move { hold(&l, client, &bud).await })
        })
        .collect();
    let (mut placed, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => placed += 1,
            Err(Error::BudgetExceeded { .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((placed, refused), (12, 48));
    assert_eq!(a.key_spend("key-1", std::time::SystemTime::now()).await.unwrap().0, 12 * HOLD);
    assert_eq!(a.balance(client).await.unwrap().held, 12 * HOLD);
}

fn options(group_commit: bool) -> LedgerOptions {
    LedgerOptions { group_commit, ..common::options() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_cannot_overshoot_a_budget_postgres() {
    for group_commit in [true, false] {
        let db = TestDb::postgres().await;
        let b = Ledger::connect(&db.url, options(group_commit)).await.unwrap();
        race(&db.ledger, &b).await;
        b.close().await;
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_cannot_overshoot_a_budget_sqlite() {
    let db = TestDb::sqlite().await;
    let b = Ledger::connect(&db.url, options(true)).await.unwrap();
    race(&db.ledger, &b).await;
    b.close().await;
    db.finish().await;
}
