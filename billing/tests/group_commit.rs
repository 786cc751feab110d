//! Group commit (`docs/ledger.md`) with two gateway replicas on one database: two `Ledger`s,
//! each with its own committers, race holds on one account for more money than it has,
//! then race captures of every job. No overdraft, each job charged exactly once, and the
//! books check clean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use billing::{cost, AccountKind, Balance, CaptureOutcome, Error, HoldOutcome, Ledger, LedgerOptions, Price, Usage};
use common::{TestDb, FEE_BPS};
use uuid::Uuid;

const MODEL: &str = "m";
const PRICE: Price = Price {
    prompt: 100_000_000,
    cached_prompt: 25_000_000,
    completion: 300_000_000,
    reasoning: 300_000_000,
};
const TTL: Duration = Duration::from_secs(60);
const HOLD: i64 = 1_000;
/// Money for exactly this many holds.
const AFFORDABLE: usize = 40;
/// Holds attempted, over both replicas.
const ATTEMPTS: usize = 150;

fn options(group_commit: bool) -> LedgerOptions {
    LedgerOptions { group_commit, ..common::options() }
}

fn usage() -> Usage {
    Usage { prompt_tokens: 1, completion_tokens: 2, ..Usage::default() }
}

async fn race(a: &Ledger, b: &Ledger) {
    a.set_price(MODEL, PRICE).await.unwrap();
    let client = a.ensure_account(AccountKind::Client, "c").await.unwrap();
    let worker = b.ensure_account(AccountKind::Worker, "w").await.unwrap();
    a.credit(client, HOLD * AFFORDABLE as i64, "dep", "").await.unwrap();

    // Every hold at once, alternating replicas.
    let tasks: Vec<_> = (0..ATTEMPTS)
        .map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let job = Uuid::new_v4();
                (job, l.hold(job, client, MODEL, HOLD, TTL).await)
            })
        })
        .collect();
    let mut placed = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (job, Ok(HoldOutcome::Placed(_))) => placed.push(job),
            (_, Err(Error::InsufficientFunds { available, needed })) => {
                assert!(available < needed, "refused with {available} available for {needed}");
                refused += 1;
            }
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!((placed.len(), refused), (AFFORDABLE, ATTEMPTS - AFFORDABLE));
    let total = HOLD * AFFORDABLE as i64;
    let full = Balance { total, held: total, available: 0 };
    assert_eq!(a.balance(client).await.unwrap(), full);
    assert_eq!(b.balance(client).await.unwrap(), full);

    // Each job captured twice from each replica at once: exactly one charge per job.
    let mut tasks = Vec::new();
    for &job in &placed {
        for l in [a, b, a, b] {
            let l = l.clone();
            tasks.push(tokio::spawn(async move { l.capture(job, worker, usage(), 1000).await }));
        }
    }
    let mut charged = HashSet::new();
    let mut repeats = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CaptureOutcome::Captured(r) => assert!(charged.insert(r.job_id), "charged twice: {}", r.job_id),
            CaptureOutcome::AlreadyCaptured(_) => repeats += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((charged.len(), repeats), (AFFORDABLE, 3 * AFFORDABLE));
    let per_job = cost(PRICE, usage(), 1000, FEE_BPS).unwrap();
    let left = total - AFFORDABLE as i64 * per_job.charge;
    assert_eq!(a.balance(client).await.unwrap(), Balance { total: left, held: 0, available: left });
    assert_eq!(b.worker_earnings(worker).await.unwrap().earned, AFFORDABLE as i64 * per_job.worker);
    assert!(a.check().await.unwrap().is_empty());
    // The batched replicas did batch, and no batch fell back to single calls.
    for l in [a, b] {
        if let Some(s) = l.group_commit_stats() {
            assert_eq!(s.failed_batches, 0, "{s:?}");
            assert!(s.calls > s.batches, "no batch held more than one call: {s:?}");
            eprintln!("{:?}: {s:?}", l.backend());
        }
    }
}

async fn second_replica(db: &TestDb, group_commit: bool) -> Ledger {
    Ledger::connect(&db.url, options(group_commit)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_batching_replicas_postgres() {
    let db = TestDb::postgres().await;
    let b = second_replica(&db, true).await;
    race(&db.ledger, &b).await;
    b.close().await;
    db.finish().await;
}

/// A replica with group commit next to one without (a rolling upgrade): the batches' lock
/// order and the single calls' must not deadlock or overdraw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batching_and_single_replicas_postgres() {
    let db = TestDb::postgres().await;
    let b = second_replica(&db, false).await;
    race(&db.ledger, &b).await;
    b.close().await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_batching_replicas_sqlite() {
    let db = TestDb::sqlite().await;
    let b = second_replica(&db, true).await;
    race(&db.ledger, &b).await;
    b.close().await;
    db.finish().await;
}

fn contended_only() -> LedgerOptions {
    LedgerOptions { group_commit: true, batch_only_contended: true, ..common::options() }
}

/// Postgres's default (`auto`): each replica batches only the calls on an account with
/// another call in flight through it. The race on one account is contended throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_batching_contended_calls_postgres() {
    let db = TestDb::postgres().await;
    let a = Ledger::connect(&db.url, contended_only()).await.unwrap();
    let b = Ledger::connect(&db.url, contended_only()).await.unwrap();
    race(&a, &b).await;
    a.close().await;
    b.close().await;
    db.finish().await;
}

/// Calls one after the other, or on different accounts, are never contended: they all run
/// alone. Many at once on one account: from the third in flight they join batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncontended_calls_run_alone_postgres() {
    let db = TestDb::postgres().await;
    let l = Ledger::connect(&db.url, contended_only()).await.unwrap();
    l.set_price(MODEL, PRICE).await.unwrap();
    let worker = l.ensure_account(AccountKind::Worker, "w").await.unwrap();
    let mut clients = Vec::new();
    for i in 0..8 {
        let c = l.ensure_account(AccountKind::Client, &format!("c{i}")).await.unwrap();
        l.credit(c, 100 * HOLD, &format!("dep{i}"), "").await.unwrap();
        clients.push(c);
    }
    for &c in &clients {
        let job = Uuid::new_v4();
        l.hold(job, c, MODEL, HOLD, TTL).await.unwrap();
        l.capture(job, worker, usage(), 1000).await.unwrap();
    }
    // Different accounts at once: still alone.
    let tasks: Vec<_> = clients
        .iter()
        .map(|&c| {
            let l = l.clone();
            tokio::spawn(async move { l.hold(Uuid::new_v4(), c, MODEL, HOLD, TTL).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(l.group_commit_stats().unwrap().calls, 0, "uncontended calls were batched");
    // Many at once on one account: batched, and correct.
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let l = l.clone();
            let c = clients[0];
            tokio::spawn(async move {
                let job = Uuid::new_v4();
                l.hold(job, c, MODEL, HOLD, TTL).await.unwrap();
                l.capture(job, worker, usage(), 1000).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), CaptureOutcome::Captured(_)));
    }
    assert!(l.group_commit_stats().unwrap().calls > 0, "contended calls were not batched");
    l.close().await;
    db.finish().await;
}

/// Group commit off: the unbatched path (also the fallback of a failed batch) stays tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_calls_sqlite() {
    let db = TestDb::sqlite().await;
    let a = second_replica(&db, false).await;
    let b = second_replica(&db, false).await;
    race(&a, &b).await;
    a.close().await;
    b.close().await;
    db.finish().await;
}
