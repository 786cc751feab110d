//! Evidence for the lead (billing, not this crate): a ledger call cancelled at an await
//! point (a dropped request future, a timeout, an aborted task) can leave SQLite's single
//! writer connection inside a transaction for good; every later write then fails with
//! "attempted to call begin_with at non-zero transaction depth" until the process
//! restarts. Postgres is not affected. `sqlite_writer_after_cancelled_calls` guards the fix
//! now in billing's SQLite pool; `release_hook_recovers` shows it on a raw pool: an
//! `after_release` hook that flushes the connection (`ping`) and drops it if it is still
//! in a transaction.

#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::Duration;

use billing::AccountKind;
use sqlx::any::AnyPoolOptions;
use sqlx::{Connection, Database, TransactionManager};

async fn cancel_credits(db: &common::TestDb) -> u32 {
    let l = &db.ledger;
    let a = l.ensure_account(AccountKind::Client, "a").await.unwrap();
    let mut rng = common::Rng(7);
    let mut failures = 0;
    for i in 0..300 {
        let l2 = l.clone();
        let mut t = tokio::spawn(async move { l2.credit(a, 1, &format!("k{i}"), "").await });
        tokio::select! {
            _ = &mut t => {}
            _ = tokio::time::sleep(Duration::from_micros(rng.below(3000))) => { t.abort(); let _ = t.await; }
        }
        failures += u32::from(l.credit(a, 1, &format!("check{i}"), "").await.is_err());
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_after_cancelled_calls() {
    let db = common::TestDb::postgres().await;
    assert_eq!(cancel_credits(&db).await, 0);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_after_cancelled_calls() {
    let db = common::TestDb::sqlite().await;
    assert_eq!(cancel_credits(&db).await, 0);
    db.finish().await;
}

/// Writes with cancelled writes in between on a one-connection SQLite pool; returns how
/// many of the uncancelled writes failed.
async fn cancelled_writes(hook: bool) -> u32 {
    sqlx::any::install_default_drivers();
    let dir = std::env::temp_dir().join(format!(
        "ledger_cancellation_{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("p.db").display());
    let mut options = AnyPoolOptions::new().max_connections(1);
    if hook {
        options = options.after_release(|conn, _| {
            Box::pin(async move {
                // Flush a queued rollback, then drop the connection if a cancelled BEGIN
                // left it inside a transaction.
                conn.ping().await?;
                Ok(<sqlx::Any as Database>::TransactionManager::get_transaction_depth(conn) == 0)
            })
        });
    }
    let pool = options.connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut rng = common::Rng(11);
    let mut failures = 0;
    for i in 0..300 {
        let p = pool.clone();
        let mut t = tokio::spawn(async move {
            let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query("INSERT INTO t (k) VALUES ($1)")
                .bind(format!("a{i}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        });
        tokio::select! {
            _ = &mut t => {}
            _ = tokio::time::sleep(Duration::from_micros(rng.below(2000))) => { t.abort(); let _ = t.await; }
        }
        let ok = async {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query("INSERT INTO t (k) VALUES ($1)")
                .bind(format!("b{i}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        failures += u32::from(ok.is_err());
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hook_recovers() {
    // Without the hook the writer is usually poisoned (46 and 290 of 300 writes failed in two
    // runs), but whether a cancel lands inside BEGIN depends on timing: report, don't assert.
    let without = cancelled_writes(false).await;
    eprintln!("without the release hook: {without} of 300 writes failed");
    assert_eq!(cancelled_writes(true).await, 0);
}
