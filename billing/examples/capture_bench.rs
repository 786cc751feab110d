//! Captures per second on Postgres or SQLite (for BENCHMARKS.md).
//!
//! ```text
//! cargo run -p billing --release --example capture_bench -- <url> [--seconds S] [--concurrency C] [--clients K]
//! ```
//! - `postgres://user@host:port/db`: `db` is used as an administrator database; the bench
//!   creates a fresh `billing_bench_*` database next to it and drops it at the end.
//! - `sqlite:path` (a new file is created; an existing file is reused) or just `sqlite`
//!   for a fresh temporary file.
//!
//! The K funded client accounts are seeded in bulk first (see [`seed_clients`]; timed and
//! printed apart from the rates). Phase 1 places holds from C concurrent tasks, each on a
//! pseudo-random one of the K accounts (so a large K touches rows all over the table and
//! its indexes), for at most S seconds; phase 2 captures them (each with a different worker
//! among 8, realistic usage, 1.0×–4.0× coefficients) from C tasks for at most S seconds. Both rates are
//! printed with latency percentiles, then `Ledger::check` runs over the result. Bounded:
//! at most 2·S seconds of load plus setup and the final check. The last line, `result {…}`,
//! repeats the figures as one JSON object for scripts (`scripts/bench-ledger-scale`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billing::{
    AccountId, AccountKind, CaptureOutcome, CreditOutcome, Ledger, LedgerOptions, Price, Usage,
};
use sqlx::{Connection, Row};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    url: String,
    seconds: u64,
    concurrency: usize,
    clients: usize,
    max_jobs: usize,
    /// `--no-group-commit`: one transaction per call, as before group commit.
    group_commit: bool,
    /// `--contended-only`: batch only calls on an account with another call in flight
    /// (Postgres's default).
    contended_only: bool,
    commit_window_us: u64,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        url: String::new(),
        seconds: 10,
        concurrency: 32,
        clients: 100,
        max_jobs: 500_000,
        group_commit: true,
        contended_only: false,
        commit_window_us: 0,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--concurrency" => parsed.concurrency = value()?.parse()?,
            "--clients" => parsed.clients = value()?.parse()?,
            "--max-jobs" => parsed.max_jobs = value()?.parse()?,
            "--no-group-commit" => parsed.group_commit = false,
            "--contended-only" => parsed.contended_only = true,
            "--commit-window-us" => parsed.commit_window_us = value()?.parse()?,
            url if parsed.url.is_empty() && !url.starts_with("--") => parsed.url = url.to_owned(),
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    if parsed.url.is_empty() {
        return Err(
            "usage: capture_bench <postgres://…|sqlite:path|sqlite> [--seconds S] \
                    [--concurrency C] [--clients K] [--max-jobs N] [--no-group-commit] [--contended-only] \
                    [--commit-window-us U]"
                .into(),
        );
    }
    parsed.concurrency = parsed.concurrency.max(1);
    parsed.clients = parsed.clients.max(1);
    Ok(parsed)
}

/// Where the bench writes, and how to clean it up.
enum Target {
    Postgres {
        name: String,
        url: String,
    },
    Sqlite {
        url: String,
        temp: Option<std::path::PathBuf>,
    },
}

impl Target {
    async fn create(url: &str) -> Result<Target, BoxError> {
        let tag = format!(
            "billing_bench_{}_{}",
            std::process::id(),
            Uuid::new_v4().simple()
        );
        if url.starts_with("postgres") {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(url).await?;
            sqlx::query(&format!("CREATE DATABASE {tag}"))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            let base = url
                .rsplit_once('/')
                .map(|(b, _)| b)
                .ok_or("postgres url without /db")?;
            let url = format!("{base}/{tag}");
            Ok(Target::Postgres { name: tag, url })
        } else if url == "sqlite" || url == "sqlite:" {
            let path = std::env::temp_dir().join(format!("{tag}.db"));
            Ok(Target::Sqlite {
                url: format!("sqlite:{}", path.display()),
                temp: Some(path),
            })
        } else {
            Ok(Target::Sqlite {
                url: url.to_owned(),
                temp: None,
            })
        }
    }

    fn url(&self) -> &str {
        match self {
            Target::Postgres { url, .. } | Target::Sqlite { url, .. } => url,
        }
    }

    async fn drop_it(self, admin_url: &str) -> Result<(), BoxError> {
        match self {
            Target::Postgres { name, .. } => {
                let mut conn = sqlx::AnyConnection::connect(admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
            }
            Target::Sqlite {
                temp: Some(path), ..
            } => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Target::Sqlite { temp: None, .. } => {}
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One phase's figures: count, rate per second, p50 and p99 in ms.
struct Phase {
    n: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn report(what: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) -> Phase {
    lat.sort_unstable();
    let phase = Phase {
        n,
        rate: n as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: percentile(&lat, 0.50).as_secs_f64() * 1e3,
        p99_ms: percentile(&lat, 0.99).as_secs_f64() * 1e3,
    };
    println!(
        "{what:>9}: {n:>7} in {:>6.2} s = {:>8.0}/s   latency p50 {:>7.2} ms  p99 {:>7.2} ms",
        elapsed.as_secs_f64(),
        phase.rate,
        phase.p50_ms,
        phase.p99_ms,
    );
    phase
}

/// A fixed pseudo-random map from the n-th hold to a client index (splitmix64's finaliser):
/// uniform over all K accounts and the same in every run, with no RNG dependency.
fn spread(n: usize, k: usize) -> usize {
    let mut z = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % k as u64) as usize
}

/// Rows per seeding transaction: 1,000,000 accounts take ten commits instead of a million.
const SEED_ROWS_PER_TX: usize = 100_000;

/// The integers `$1..=$2` as rows `s(i)`, and their names `$3 || i`. Recursive CTEs read
/// the same on Postgres and SQLite (SQLite has no `generate_series` built in).
const SEED_SERIES: &str = "WITH RECURSIVE s(i) AS (SELECT CAST($1 AS BIGINT) UNION ALL \
     SELECT i + 1 FROM s WHERE i < $2), \
     n(name) AS (SELECT CAST($3 AS TEXT) || CAST(i AS TEXT) FROM s) ";

/// Creates `k` client accounts named `{prefix}{i}`, each credited `amount` from the clearing
/// account with idempotency key `{prefix}{i}` and memo "bench": row for row what
/// `ensure_account` + `credit` write (account with its cached balance, one 'credit'
/// transaction, its two entries, the clearing account's cached balance), but generated in
/// the database, [`SEED_ROWS_PER_TX`] accounts per transaction, so a million accounts take
/// seconds instead of a million fsyncs. Returns the new ids in name order.
async fn seed_clients(
    url: &str,
    clearing: AccountId,
    prefix: &str,
    k: usize,
    amount: i64,
) -> Result<Vec<AccountId>, BoxError> {
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let mut ids = Vec::with_capacity(k);
    for lo in (0..k).step_by(SEED_ROWS_PER_TX) {
        let hi = (lo + SEED_ROWS_PER_TX).min(k) - 1;
        let rows = i64::try_from(hi - lo + 1)?;
        let (lo, hi) = (i64::try_from(lo)?, i64::try_from(hi)?);
        let mut tx = conn.begin().await?;
        // Like `credit`: the clearing balance moves by what this chunk deposits, checked
        // so that it stays within i64 (the ledger refuses i64::MIN too).
        let clearing_balance: i64 = sqlx::query("SELECT balance FROM accounts WHERE id = $1")
            .bind(clearing.0)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let new_clearing = amount
            .checked_mul(rows)
            .and_then(|d| clearing_balance.checked_sub(d))
            .filter(|b| *b != i64::MIN)
            .ok_or("seeded deposits overflow the clearing account; lower the amount")?;
        let chunk: Vec<i64> = sqlx::query(&format!(
            "{SEED_SERIES} INSERT INTO accounts (kind, external_id, balance, created_at) \
             SELECT 'client', name, $4, $5 FROM n RETURNING id"
        ))
        .bind(lo)
        .bind(hi)
        .bind(prefix)
        .bind(amount)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        sqlx::query(&format!(
            "{SEED_SERIES} INSERT INTO transactions (kind, idempotency_key, memo, created_at) \
             SELECT 'credit', name, 'bench', $4 FROM n"
        ))
        .bind(lo)
        .bind(hi)
        .bind(prefix)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Each credit's two entries: +amount to the client, −amount from clearing.
        sqlx::query(&format!(
            "{SEED_SERIES} INSERT INTO entries (transaction_id, account_id, amount) \
             SELECT t.id, a.id, $4 FROM n \
             JOIN transactions t ON t.idempotency_key = n.name \
             JOIN accounts a ON a.kind = 'client' AND a.external_id = n.name"
        ))
        .bind(lo)
        .bind(hi)
        .bind(prefix)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "{SEED_SERIES} INSERT INTO entries (transaction_id, account_id, amount) \
             SELECT t.id, $4, $5 FROM n JOIN transactions t ON t.idempotency_key = n.name"
        ))
        .bind(lo)
        .bind(hi)
        .bind(prefix)
        .bind(clearing.0)
        .bind(-amount)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
            .bind(new_clearing)
            .bind(clearing.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if chunk.len() != usize::try_from(rows)? {
            return Err(format!("seeded {} accounts, expected {rows}", chunk.len()).into());
        }
        ids.extend(chunk.into_iter().map(AccountId));
    }
    // Settle the seed before measuring, so that the phases do not pay for it: a long-lived
    // database has planner statistics (autovacuum would gather them within a minute of a
    // million inserts), and the checkpoint that a million rows of WAL trigger (Postgres:
    // max_wal_size; SQLite: the WAL copied back into the file) is done here, not mid-phase.
    if url.starts_with("postgres") {
        sqlx::query("ANALYZE").execute(&mut conn).await?;
        sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    } else {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(ids)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let target = Target::create(&args.url).await?;
    let result = run(&args, target.url()).await;
    target.drop_it(&args.url).await?;
    result
}

async fn run(args: &Args, url: &str) -> Result<(), BoxError> {
    let options = LedgerOptions {
        fee_bps: 500,
        max_connections: u32::try_from(args.concurrency)?,
        group_commit: args.group_commit,
        batch_only_contended: args.contended_only,
        commit_window: Duration::from_micros(args.commit_window_us),
        ..LedgerOptions::default()
    };
    let ledger = Ledger::connect(url, options).await?;
    println!(
        "backend {:?}, group commit {}, {} clients, {} concurrent tasks, phases of at most {} s",
        ledger.backend(),
        match (args.group_commit, args.contended_only) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "on for contended accounts",
        },
        args.clients,
        args.concurrency,
        args.seconds
    );
    let model = "bench-model";
    ledger
        .set_price(
            model,
            Price {
                prompt: 100_000_000,
                cached_prompt: 25_000_000,
                completion: 300_000_000,
                reasoning: 300_000_000,
            },
        )
        .await?;
    let run_tag = Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{run_tag}-");
    // 10⁶ nanoTON-scale TON per account as before, less where K accounts would overflow the
    // clearing account (which holds −(all deposits) in an i64): half of i64::MAX in all.
    let k = i64::try_from(args.clients)?;
    let amount = (i64::MAX / 2 / k).min(1_000_000_000_000_000);
    let t0 = Instant::now();
    let clients = seed_clients(
        url,
        ledger.clearing_account(),
        &prefix,
        args.clients,
        amount,
    )
    .await?;
    let seed_s = t0.elapsed().as_secs_f64();
    // The seed must be what the API would have written: the API finds the last account by
    // its name and takes its credit as already applied (same key, client and amount).
    let last = args.clients - 1;
    let name = format!("{prefix}{last}");
    if ledger.ensure_account(AccountKind::Client, &name).await? != clients[last]
        || !matches!(
            ledger.credit(clients[last], amount, &name, "bench").await?,
            CreditOutcome::AlreadyApplied(_)
        )
    {
        return Err("bulk seed differs from ensure_account + credit".into());
    }
    println!(
        "seed: {} funded client accounts in {seed_s:.2} s ({amount} nanoTON each)",
        clients.len()
    );
    let mut workers = Vec::new();
    for i in 0..8 {
        workers.push(
            ledger
                .ensure_account(AccountKind::Worker, &format!("bench-{run_tag}-w{i}"))
                .await?,
        );
    }
    let phase = Duration::from_secs(args.seconds);

    // Phase 1: holds.
    let jobs = Arc::new(std::sync::Mutex::new(Vec::<Uuid>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (ledger, jobs, count, clients) =
            (ledger.clone(), jobs.clone(), count.clone(), clients.clone());
        let max_jobs = args.max_jobs;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < phase {
                let n = count.fetch_add(1, Ordering::Relaxed);
                if n >= max_jobs {
                    break;
                }
                let job = Uuid::now_v7();
                let t0 = Instant::now();
                ledger
                    .hold(
                        job,
                        clients[spread(n, clients.len())],
                        model,
                        50_000_000,
                        Duration::from_secs(3600),
                    )
                    .await?;
                lat.push(t0.elapsed());
                jobs.lock().map_err(|_| "poisoned")?.push(job);
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let held = std::mem::take(&mut *jobs.lock().map_err(|_| "poisoned")?);
    let holds = report("holds", held.len(), start.elapsed(), lat);

    // Phase 2: captures.
    let queue = Arc::new(held);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (ledger, queue, next, workers) =
            (ledger.clone(), queue.clone(), next.clone(), workers.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < phase {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&job) = queue.get(i) else { break };
                let usage = Usage {
                    prompt_tokens: 500 + (i % 1000) as u64,
                    cached_prompt_tokens: (i % 300) as u64,
                    completion_tokens: 200 + (i % 700) as u64,
                    reasoning_tokens: (i % 50) as u64,
                };
                let coefficient = 1000 + (i % 3001) as u32;
                let t0 = Instant::now();
                match ledger
                    .capture(job, workers[i % workers.len()], usage, coefficient)
                    .await?
                {
                    CaptureOutcome::Captured(_) => lat.push(t0.elapsed()),
                    other => return Err(format!("unexpected {other:?}").into()),
                }
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let captures = report("captures", lat.len(), elapsed, lat);

    let t0 = Instant::now();
    let violations = ledger.check().await?;
    let check_s = t0.elapsed().as_secs_f64();
    println!("check: {} violations ({check_s:.2} s)", violations.len());
    for v in violations.iter().take(10) {
        println!("  {v}");
    }
    if let Some(s) = ledger.group_commit_stats() {
        let per = s.calls as f64 / s.batches.max(1) as f64;
        println!(
            "group commit: {} calls in {} transactions ({per:.1} per commit), {} failed batches",
            s.calls, s.batches, s.failed_batches
        );
    }
    println!(
        "result {{\"backend\":\"{:?}\",\"group_commit\":{},\"accounts\":{},\"concurrency\":{},\
         \"seconds\":{},\"seed_s\":{seed_s:.3},\"holds\":{},\"holds_per_s\":{:.1},\
         \"hold_p50_ms\":{:.3},\"hold_p99_ms\":{:.3},\"captures\":{},\"captures_per_s\":{:.1},\
         \"capture_p50_ms\":{:.3},\"capture_p99_ms\":{:.3},\"check_s\":{check_s:.3},\
         \"violations\":{}}}",
        ledger.backend(),
        args.group_commit,
        args.clients,
        args.concurrency,
        args.seconds,
        holds.n,
        holds.rate,
        holds.p50_ms,
        holds.p99_ms,
        captures.n,
        captures.rate,
        captures.p50_ms,
        captures.p99_ms,
        violations.len()
    );
    ledger.close().await;
    if violations.is_empty() {
        Ok(())
    } else {
        Err("ledger check failed".into())
    }
}
