//! A failed capture is not a free answer: with the ledger's Postgres refusing connections
//! between hold and capture, or the embedded SQLite file locked by another writer, the
//! gateway's meter keeps the capture in its outbox (fsynced file), answers "deferred", and
//! once the database is back the outbox lands it exactly once; `cocoon ledger check`'s
//! invariants hold throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use billing::{AccountKind, Ledger, LedgerOptions, Price};
use gateway::billing::{HoldRequest, Meter, MeterError};
use sqlx::Connection;
use uuid::Uuid;

/// One held request on `ledger`, about to be captured: alice (1,000,000 nanoTON) holds job
/// for model "m"; the worker account w1 exists (as once a worker has served). Returns the
/// meter (its outbox in `dir`), alice's and w1's accounts, the job and the usage to capture.
async fn held(ledger: &Ledger, dir: &std::path::Path) -> (cocoon::metering::LedgerMeter, billing::AccountId, billing::AccountId, Uuid, protocol::Usage) {
    ledger.set_price("m", Price { prompt: 1_000_000_000, cached_prompt: 0, completion: 2_000_000_000, reasoning: 0 }).await.unwrap();
    let client = ledger.ensure_account(AccountKind::Client, "alice").await.unwrap();
    ledger.credit(client, 1_000_000, "seed", "test").await.unwrap();
    let meter = cocoon::metering::LedgerMeter::new(ledger.clone(), Duration::from_secs(3600)).with_outbox(dir.join("capture-outbox.jsonl"));
    let job = Uuid::new_v4();
    meter
        .hold(&HoldRequest { job_id: job, account: "alice".into(), model: "m".into(), prompt_tokens: 10, completion_tokens: 20, max_coefficient: 1000, budget: None })
        .await
        .unwrap();
    let worker = ledger.ensure_account(AccountKind::Worker, "w1").await.unwrap();
    let usage = protocol::Usage { prompt_tokens: 10, completion_tokens: 7, total_tokens: 17, ..Default::default() };
    (meter, client, worker, job, usage)
}

#[tokio::test]
async fn a_capture_the_ledger_cannot_take_lands_from_the_outbox_exactly_once() {
    let db = common::PgDb::create("cocoon_outbox").await;
    let opts = LedgerOptions { acquire_timeout: Duration::from_secs(2), ..Default::default() };
    let ledger = Ledger::connect(&db.url, opts.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("capture-outbox.jsonl");
    // The worker account exists before the outage (as it does once a worker has served).
    let (meter, client, worker_acct, job, usage) = held(&ledger, dir.path()).await;

    db.allow(false).await;
    let started = tokio::time::Instant::now();
    let r = meter.capture(job, "w1", 1000, &usage, None).await;
    assert!(matches!(r, Err(MeterError::CaptureDeferred(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "deferring took {:?}", started.elapsed());
    assert_eq!(meter.outbox_len(), 1, "the capture is on disk before the answer is released");
    // Still down: a drain keeps it.
    assert_eq!(meter.drain_outbox().await, 1);

    // A restarted gateway would find the same file: a second meter over it drains it too.
    db.allow(true).await;
    let ledger2 = Ledger::connect(&db.url, opts).await.unwrap();
    let meter2 = cocoon::metering::LedgerMeter::new(ledger2.clone(), Duration::from_secs(3600)).with_outbox(outbox.clone());
    let mut left = 1;
    for _ in 0..50 {
        left = meter2.drain_outbox().await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the outbox drained once the database was back");
    // Charged once: 10 prompt × 1 nanoTON + 7 completion × 2 nanoTON at 1 TON per 1M tokens.
    let b = ledger2.balance(client).await.unwrap();
    assert_eq!(b.held, 0, "the hold was captured, not left to the reaper");
    assert_eq!(b.total, 1_000_000 - (10 * 1_000 + 7 * 2_000), "{b:?}");
    let earned = ledger2.worker_earnings(worker_acct).await.unwrap();
    assert_eq!(earned.jobs, 1);
    // Draining again (or the original capture retried) changes nothing.
    assert_eq!(meter2.drain_outbox().await, 0);
    assert!(meter2.capture(job, "w1", 1000, &usage, None).await.is_ok());
    assert_eq!(ledger2.balance(client).await.unwrap().total, b.total, "captured exactly once");
    assert!(ledger2.check().await.unwrap().is_empty(), "ledger invariants hold");
    drop((meter, meter2, ledger, ledger2));
    db.drop_it().await;
}

#[tokio::test]
async fn a_capture_the_ledger_refuses_is_not_deferred() {
    // An unknown hold is the request's fault, not the database's: retrying cannot help, so
    // it is reported, not written to the outbox.
    let db = common::PgDb::create("cocoon_outbox").await;
    let ledger = Ledger::connect(&db.url, LedgerOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meter = cocoon::metering::LedgerMeter::new(ledger.clone(), Duration::from_secs(3600)).with_outbox(dir.path().join("o.jsonl"));
    let usage = protocol::Usage { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, ..Default::default() };
    let r = meter.capture(Uuid::new_v4(), "w1", 1000, &usage, None).await;
    assert!(matches!(r, Err(MeterError::Unavailable(ref m)) if m.contains("no hold")), "{r:?}");
    assert_eq!(meter.outbox_len(), 0);
    drop((meter, ledger));
    db.drop_it().await;
}

#[tokio::test]
async fn a_capture_while_the_sqlite_ledger_is_locked_lands_from_the_outbox_exactly_once() {
    // The embedded ledger's failure mode is not a server going away but its file locked by
    // another writer (a backup tool, an operator's sqlite3 shell, a second process): every
    // write waits `busy_timeout` (10 s) and fails with SQLITE_BUSY.
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("ledger.db").display());
    let ledger = Ledger::connect(&url, LedgerOptions::default()).await.unwrap();
    let (meter, client, worker_acct, job, usage) = held(&ledger, dir.path()).await;

    // Another connection takes the write lock and keeps it.
    let mut locker = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();
    let started = tokio::time::Instant::now();
    let r = meter.capture(job, "w1", 1000, &usage, None).await;
    assert!(matches!(r, Err(MeterError::CaptureDeferred(_))), "{r:?}");
    // One busy_timeout (10 s) of waiting, not one per retry (it was 50 s).
    assert!(started.elapsed() < Duration::from_secs(25), "deferring took {:?}", started.elapsed());
    assert_eq!(meter.outbox_len(), 1, "the capture is on disk before the answer is released");

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    assert_eq!(meter.drain_outbox().await, 0, "the outbox drained once the lock was gone");
    let b = ledger.balance(client).await.unwrap();
    assert_eq!(b.held, 0);
    assert_eq!(b.total, 1_000_000 - (10 * 1_000 + 7 * 2_000), "{b:?}");
    assert_eq!(ledger.worker_earnings(worker_acct).await.unwrap().jobs, 1);
    assert!(meter.capture(job, "w1", 1000, &usage, None).await.is_ok());
    assert_eq!(ledger.balance(client).await.unwrap().total, b.total, "captured exactly once");
    assert!(ledger.check().await.unwrap().is_empty(), "ledger invariants hold");
}
