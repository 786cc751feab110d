//! Test support: a fresh ledger per test on Postgres (a new database on the local server,
//! `BILLING_TEST_PG_URL` as in the billing tests) or SQLite (a new file), a tiny HTTP
//! server runner, and query-string parsing for the toncenter-shaped fakes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fake_chain;

use std::net::SocketAddr;
use std::path::PathBuf;

use billing::{AccountId, Ledger, LedgerOptions};
use sqlx::Connection;

pub struct TestDb {
    pub ledger: Ledger,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin: String, name: String },
    Sqlite { dir: PathBuf },
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

fn options() -> LedgerOptions {
    LedgerOptions {
        fee_bps: 500,
        max_connections: 8,
        ..LedgerOptions::default()
    }
}

/// A ledger on an existing test database (one per simulated process).
pub async fn connect(url: &str) -> Ledger {
    Ledger::connect(url, options()).await.unwrap()
}

impl TestDb {
    pub async fn postgres() -> TestDb {
        sqlx::any::install_default_drivers();
        let admin = std::env::var("BILLING_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = unique("ton_test");
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
        let dir = std::env::temp_dir().join(unique("ton_test"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("ledger.db").display());
        let ledger = Ledger::connect(&url, options()).await.unwrap();
        TestDb {
            ledger,
            url,
            cleanup: Cleanup::Sqlite { dir },
        }
    }

    /// A second ledger on the same database: what a restarted process gets.
    pub async fn reopen(&self) -> Ledger {
        connect(&self.url).await
    }

    /// Gives client `account` a known deposit code (the fixtures name it).
    pub async fn set_code(&self, account: AccountId, code: &str) {
        let mut c = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        sqlx::query("INSERT INTO deposit_codes (account_id, code, created_at) VALUES ($1, $2, 0)")
            .bind(account.0)
            .bind(code)
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }

    /// Every ledger invariant, then close.
    pub async fn finish(self) {
        let v = self.ledger.check().await.unwrap();
        assert!(v.is_empty(), "ledger check: {v:#?}");
        let v = self.ledger.check_ton().await.unwrap();
        assert!(v.is_empty(), "ledger check_ton: {v:#?}");
        self.ledger.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Postgres { admin, name } => {
                let (admin, name) = (admin.clone(), name.clone());
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        if let Ok(mut c) = sqlx::AnyConnection::connect(&admin).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    })
                })
                .join();
            }
            Cleanup::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Runs each `async fn(&TestDb)` on Postgres and on SQLite, checking every invariant after.
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

/// Serves `app` on a free loopback port until the test ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// `k=v&k=v` with percent-decoding; repeated keys kept in order.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let h = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A small deterministic generator (tests must be reproducible; no rand dependency).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
