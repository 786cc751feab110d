//! [`Ledger`]: the connection, migrations and transaction plumbing. The operations live in
//! the submodules: accounts and credits, holds and captures, prices, the invariant check.

mod accounts;
mod batch;
mod budgets;
mod capture;
mod check;
pub(crate) mod dashboard;
mod holds;
mod identities;
mod stored;
pub(crate) mod keys;
mod prices;
mod receipts;
mod rows;
pub(crate) mod ton;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Row, Transaction};

use batch::Committer;
pub use batch::GroupCommitStats;
pub use receipts::StoredReceipt;

use crate::error::{Error, Result};
use crate::money::BPS_ONE;
use crate::types::{AccountId, AccountKind, UnixMillis};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");

/// Retries of a call that hit a transient conflict (deadlock, serialization failure,
/// SQLite busy) before the error is returned.
const MAX_ATTEMPTS: u32 = 5;

/// A busy database or an exhausted pool that answered sooner than this is transient (SQLite's
/// immediate `SQLITE_BUSY` on a snapshot) and worth retrying. One that took longer already
/// waited out the database's own wait (SQLite's 10 s `busy_timeout`: another process holds
/// the write lock; the pool's `acquire_timeout`: the database is down): retrying would only
/// multiply that wait, e.g. a capture answer held 50 s instead of 10 s before it goes to the
/// capture outbox. Postgres conflicts (serialization failure, deadlock) are always retried.
const RETRY_IF_FAILED_WITHIN: Duration = Duration::from_secs(1);

/// Which database a [`Ledger`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Production: `postgres://user@host:port/db`.
    Postgres,
    /// Embedded default: `sqlite:path/to/ledger.db` (created if missing) or `sqlite::memory:`.
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(Error::UnsupportedUrl(redact(url)))
        }
    }
}

/// Settings of [`Ledger::connect`].
#[derive(Clone, Copy, Debug)]
pub struct LedgerOptions {
    /// Network fee in basis points of each charge, fixed into each hold when it is placed.
    pub fee_bps: u32,
    /// Pool size (Postgres), or reader pool size (SQLite, whose writer is one connection).
    pub max_connections: u32,
    /// How long a call waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// Group commit of holds and captures (see `ledger::batch`): calls that arrive while a
    /// commit is in flight share the next transaction. `false`: one transaction per call.
    pub group_commit: bool,
    /// With group commit, how long a batch waits for more calls after its first one; zero
    /// (the default) waits for none, so a batch is what queued during the previous commit
    /// and an idle ledger answers as fast as without batching.
    pub commit_window: Duration,
    /// With group commit, batch a hold or capture only when another call on the same client
    /// account is in flight through this ledger, and run the others alone. For Postgres,
    /// where calls on different accounts run in parallel and only a hot account's calls
    /// queue on its row lock (see `ledger::batch`).
    pub batch_only_contended: bool,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            fee_bps: 0,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
            group_commit: true,
            commit_window: Duration::ZERO,
            batch_only_contended: false,
        }
    }
}

/// The double-entry ledger. Cheap to clone (pools are shared).
///
/// # One code path, two databases
/// Queries go through sqlx's `Any` driver: one set of Rust code and (nearly) one set of
/// SQL serves both Postgres and SQLite, so the test suite exercising one exercises the
/// other. The price is a narrow type set (i64, text), which suits a ledger of integers:
/// ids are `BIGINT`, money is `BIGINT` nanoTON, times are `BIGINT` Unix milliseconds and job
/// ids are UUID text. (An enum over a `PgPool` and a `SqlitePool` would have meant every
/// query written twice, or generic code over `sqlx::Database` with a wall of bounds.)
/// Per-backend SQL is limited to the row-lock suffix, the `BEGIN` and the writes of a hold
/// and of a capture, sent in one round trip each: on Postgres one statement
/// (data-modifying CTEs), on SQLite, which lacks them, several statements in one call
/// sharing numbered parameters (each is a hop to sqlx's SQLite thread, so this matters
/// there too); both forms write the same rows.
///
/// # Concurrency: row locks, not SERIALIZABLE
/// Every write runs in one database transaction that first locks the rows it decides on:
/// on Postgres `SELECT … FOR UPDATE` of the client account (hold, credit) or of the hold
/// and its client account (capture, release, reap), always hold before account, so no two
/// calls lock in opposite orders; on SQLite `BEGIN IMMEDIATE` takes the database write lock
/// up front and all writes of this process go through one connection. Contending calls
/// queue on the lock instead of failing and retrying, which is what a hot client account
/// (many concurrent requests) needs: with SERIALIZABLE each conflict would abort and redo
/// the work, and throughput on one account would collapse under load. Calls on different
/// accounts do not contend at all. Transient errors that can still occur (deadlock
/// detection, SQLite busy across processes) are retried up to 5 times when they came back
/// at once (not after a full `busy_timeout` wait); every call is idempotent by its key, so
/// a retry never doubles anything.
///
/// One exception on Postgres: a capture whose cost fits in its hold (the usual case) needs
/// no locked read, since its charge then depends on the hold alone. It reads the hold
/// plainly and writes in one statement that re-checks the hold is still active under the
/// hold's row lock and moves the balance relative to the current row, so a hot account's
/// row is locked for one statement instead of three round trips (see `Ledger::capture`).
/// The worker's receipt is a CTE of that statement, so a request's capture and receipt
/// cost one commit.
///
/// # Cached balances
/// `accounts.balance` caches the entry sum of client accounts (a hold must read the
/// balance under its lock) and of the clearing account (so that the money ever deposited
/// — and hence every account balance and every sum the checker computes — provably fits
/// an i64). Worker and fee balances are always summed from entries: caching them would
/// make every capture in the network update the same fee row and serialise on its lock.
/// [`Ledger::check`] verifies every cached value against the entries.
#[derive(Clone, Debug)]
pub struct Ledger {
    backend: Backend,
    /// All writes. SQLite: exactly one connection.
    write: AnyPool,
    /// Reads. Postgres: the same pool; SQLite: a pool of WAL readers.
    read: AnyPool,
    fee_account: AccountId,
    clearing_account: AccountId,
    /// Shared by clones: the policy registry can change the fee while running; each hold
    /// records the fee it was placed with, so a change applies to new holds only.
    fee_bps: Arc<std::sync::atomic::AtomicU32>,
    /// The group committer's queue, when group commit is on (see `ledger::batch`).
    committer: Option<Arc<Committer>>,
}

impl Ledger {
    /// Connects, creates the SQLite file if missing, applies pending migrations and finds
    /// the system accounts.
    pub async fn connect(url: &str, options: LedgerOptions) -> Result<Ledger> {
        sqlx::any::install_default_drivers();
        if options.fee_bps > BPS_ONE {
            return Err(Error::InvalidFee(options.fee_bps));
        }
        let backend = Backend::from_url(url)?;
        let max = options.max_connections.max(1);
        let (write, read) = match backend {
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(options.acquire_timeout)
                    .connect(url)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                (pool.clone(), pool)
            }
            Backend::Sqlite => {
                let memory = url.contains(":memory:") || url.contains("mode=memory");
                let url = sqlite_url(url);
                let write = sqlite_pool(&url, 1, options.acquire_timeout).await?;
                if !memory {
                    // Persistent in the file; readers then never block the writer.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&write)
                        .await?;
                }
                SQLITE_MIGRATIONS.run(&write).await?;
                let read = if memory {
                    write.clone()
                } else {
                    sqlite_pool(&url, max, options.acquire_timeout).await?
                };
                (write, read)
            }
        };
        let system = |kind: AccountKind| {
            let read = read.clone();
            async move {
                let row = sqlx::query("SELECT id FROM accounts WHERE kind = $1")
                    .bind(kind.as_str())
                    .fetch_optional(&read)
                    .await?
                    .ok_or_else(|| Error::Corrupt(format!("no {kind} account")))?;
                Ok::<_, Error>(AccountId(row.try_get(0)?))
            }
        };
        let fee_account = system(AccountKind::Fee).await?;
        let clearing_account = system(AccountKind::Clearing).await?;
        tracing::debug!(?backend, "ledger connected and migrated");
        let mut ledger = Ledger {
            backend,
            write,
            read,
            fee_account,
            clearing_account,
            fee_bps: Arc::new(std::sync::atomic::AtomicU32::new(options.fee_bps)),
            committer: None,
        };
        if options.group_commit {
            let mut committer = Committer::start(ledger.clone(), options.commit_window);
            if options.batch_only_contended {
                committer = committer.batching_only_contended();
            }
            ledger.committer = Some(Arc::new(committer));
        }
        Ok(ledger)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The network fee account (created by the migrations).
    pub fn fee_account(&self) -> AccountId {
        self.fee_account
    }

    /// The deposits-clearing account, mirror of the TON hot wallet (created by the migrations).
    pub fn clearing_account(&self) -> AccountId {
        self.clearing_account
    }

    /// The fee new holds get, in basis points.
    pub fn fee_bps(&self) -> u32 {
        self.fee_bps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the fee of holds placed from now on (every clone of this ledger).
    pub fn set_fee_bps(&self, fee_bps: u32) -> Result<()> {
        if fee_bps > BPS_ONE {
            return Err(Error::InvalidFee(fee_bps));
        }
        self.fee_bps.store(fee_bps, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Closes the pools, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// A write transaction: SQLite takes the write lock at `BEGIN`, so the first read of
    /// the transaction already sees the state it will write on.
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Postgres => self.write.begin().await?,
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
        })
    }

    /// `pg` on Postgres, `sqlite` on SQLite (they differ only in row-lock clauses).
    fn pick(&self, pg: &'static str, sqlite: &'static str) -> &'static str {
        match self.backend {
            Backend::Postgres => pg,
            Backend::Sqlite => sqlite,
        }
    }

    /// Runs `op` again on transient conflicts, at most [`MAX_ATTEMPTS`] times in all.
    async fn retrying<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            match op().await {
                Err(e)
                    if e.is_retryable()
                        && attempt < MAX_ATTEMPTS
                        && (e.is_conflict() || started.elapsed() < RETRY_IF_FAILED_WITHIN) =>
                {
                    tracing::debug!(what, attempt, error = %e, "ledger retry");
                    tokio::time::sleep(Duration::from_millis(2u64 << attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

async fn sqlite_pool(url: &str, max: u32, acquire_timeout: Duration) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // FULL: a commit is on disk before the call returns (ledger, not cache).
                for pragma in [
                    "PRAGMA foreign_keys = ON",
                    "PRAGMA busy_timeout = 10000",
                    "PRAGMA synchronous = FULL",
                ] {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        // A ledger call cancelled mid-transaction (client gone, timeout, aborted task) can
        // leave a connection inside BEGIN; reused, every later write on it would fail
        // ("non-zero transaction depth"). Flush the queued rollback, and drop the connection
        // if it is still in a transaction. (Postgres connections recover on their own.)
        .after_release(|conn, _meta| {
            Box::pin(async move {
                use sqlx::{Connection, Database, TransactionManager};
                conn.ping().await?;
                Ok(<sqlx::Any as Database>::TransactionManager::get_transaction_depth(conn) == 0)
            })
        })
        .connect(url)
        .await?)
}

/// Adds `mode=rwc` (create if missing) unless the URL picks a mode itself.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The URL without any password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> UnixMillis {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> UnixMillis {
    unix_ms(SystemTime::now())
}

/// Reads an i64 column as a u32 (token coefficient, fee) that the ledger itself wrote.
pub(crate) fn get_u32(row: &AnyRow, col: &str) -> Result<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{col} = {v}")))
}

/// Reads an i64 column as a u64 token count.
pub(crate) fn get_u64(row: &AnyRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{col} = {v}")))
}

/// A token count for a BIGINT column.
pub(crate) fn tokens_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Overflow("token count exceeds i64"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use sqlx::{Database, TransactionManager};

    use super::*;

    /// What a ledger call cancelled right after its `BEGIN` ran leaves behind: a connection
    /// back in the pool at transaction depth 1, with no `Transaction` guard to roll it back.
    /// Made directly rather than by racing a cancel against a timer, so the test is
    /// deterministic and takes milliseconds.
    async fn release_inside_transaction(pool: &AnyPool) {
        let mut conn = pool.acquire().await.unwrap();
        <sqlx::Any as Database>::TransactionManager::begin(&mut conn, Some("BEGIN IMMEDIATE".into()))
            .await
            .unwrap();
        assert_eq!(<sqlx::Any as Database>::TransactionManager::get_transaction_depth(&conn), 1);
        drop(conn);
    }

    async fn write(pool: &AnyPool, k: &str) -> std::result::Result<(), sqlx::Error> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO t (k) VALUES ($1)").bind(k).execute(&mut *tx).await?;
        tx.commit().await
    }

    fn temp_url() -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("ledger_pool_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = sqlite_url(&format!("sqlite:{}", dir.join("p.db").display()));
        (dir, url)
    }

    /// The ledger's one-writer SQLite pool survives a call cancelled inside its transaction:
    /// the release hook drops the poisoned connection and the next write gets a fresh one.
    #[tokio::test]
    async fn sqlite_writer_survives_a_cancel_inside_begin() {
        sqlx::any::install_default_drivers();
        let (dir, url) = temp_url();
        // A short acquire timeout: a regression fails in seconds instead of hanging.
        let pool = sqlite_pool(&url, 1, Duration::from_secs(2)).await.unwrap();
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
        for i in 0..20 {
            release_inside_transaction(&pool).await;
            let r = tokio::time::timeout(Duration::from_secs(5), write(&pool, &format!("k{i}"))).await;
            assert!(matches!(r, Ok(Ok(()))), "write {i} after a cancelled BEGIN: {r:?}");
        }
        pool.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The control: the same pool without the hook is poisoned by one such cancel, so the
    /// test above tests the hook and not luck.
    #[tokio::test]
    async fn without_the_hook_one_cancel_poisons_the_writer() {
        sqlx::any::install_default_drivers();
        let (dir, url) = temp_url();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&url)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
        release_inside_transaction(&pool).await;
        let r = tokio::time::timeout(Duration::from_secs(5), write(&pool, "k")).await;
        let err = r.expect("the write answered (an error), it did not hang").expect_err("the writer is poisoned");
        assert!(err.to_string().contains("transaction depth"), "{err}");
        pool.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
