//! A fresh ledger per test, on Postgres (a new database on the local server) or SQLite (a
//! new file), dropped again at the end.
//!
//! Postgres: `BILLING_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! names a database to connect to as an administrator; each test creates and drops its own
//! `billing_test_*` database there. Tests fail if the server is not reachable.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use billing::{Ledger, LedgerOptions};
use sqlx::Connection;

pub const FEE_BPS: u32 = 500;

pub fn admin_url() -> String {
    std::env::var("BILLING_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

pub struct TestDb {
    pub ledger: Ledger,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin: String, name: String },
    Sqlite { dir: PathBuf },
}

impl TestDb {
    pub async fn postgres() -> TestDb {
        sqlx::any::install_default_drivers();
        let admin = admin_url();
        let name = unique("billing_test");
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {admin} (set BILLING_TEST_PG_URL): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
        let url = format!("{base}/{name}");
        let ledger = Ledger::connect(&url, options()).await.unwrap();
        TestDb {
            ledger,
            url,
            cleanup: Cleanup::Postgres { admin, name },
        }
    }

    pub async fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(unique("billing_test"));
        std::fs::create_dir_all(&dir).unwrap();
        // The file does not exist yet: connect creates it.
        let url = format!("sqlite:{}", dir.join("ledger.db").display());
        let ledger = Ledger::connect(&url, options()).await.unwrap();
        TestDb {
            ledger,
            url,
            cleanup: Cleanup::Sqlite { dir },
        }
    }

    /// Asserts that every invariant holds, then closes the ledger (the database is
    /// dropped when `self` is).
    pub async fn finish(self) {
        let violations = self.ledger.check().await.unwrap();
        assert!(
            violations.is_empty(),
            "ledger check failed: {violations:#?}"
        );
        self.ledger.close().await;
    }

    /// A raw connection for tests that tamper with the books.
    pub async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::AnyConnection::connect(&self.url).await.unwrap()
    }
}

pub fn options() -> LedgerOptions {
    LedgerOptions {
        fee_bps: FEE_BPS,
        max_connections: 8,
        // A pool that cannot hand out a connection fails the test in seconds, not minutes.
        acquire_timeout: std::time::Duration::from_secs(10),
        ..LedgerOptions::default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Postgres { admin, name } => {
                let (admin, name) = (admin.clone(), name.clone());
                // Runs even when the test panicked; a thread of its own because we may be
                // inside the test's runtime.
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let mut conn = sqlx::AnyConnection::connect(&admin).await?;
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await?;
                        Ok::<_, sqlx::Error>(())
                    })
                    .map_err(std::io::Error::other)
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!(
                        "warning: could not drop test database {}",
                        name_of(&self.cleanup)
                    );
                }
            }
            Cleanup::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn name_of(c: &Cleanup) -> &str {
    match c {
        Cleanup::Postgres { name, .. } => name,
        Cleanup::Sqlite { .. } => "",
    }
}

/// Runs each listed `async fn(&TestDb)` once on Postgres and once on SQLite, each on a
/// fresh database, and checks every invariant afterwards.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::postgres().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}
