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
//! Phase 1 places holds from C concurrent tasks spread over K client accounts for at most
//! S seconds; phase 2 captures them (each with a different worker among 8, realistic
//! usage, 1.0×–4.0× coefficients) from C tasks for at most S seconds. Both rates are
//! printed with latency percentiles, then `Ledger::check` runs over the result. Bounded:
//! at most 2·S seconds of load plus setup and the final check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billing::{AccountKind, CaptureOutcome, Ledger, LedgerOptions, Price, Usage};
use sqlx::Connection;
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
            "--commit-window-us" => parsed.commit_window_us = value()?.parse()?,
            url if parsed.url.is_empty() && !url.starts_with("--") => parsed.url = url.to_owned(),
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    if parsed.url.is_empty() {
        return Err(
            "usage: capture_bench <postgres://…|sqlite:path|sqlite> [--seconds S] \
                    [--concurrency C] [--clients K] [--max-jobs N] [--no-group-commit] \
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

fn report(what: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) {
    lat.sort_unstable();
    let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what:>9}: {n:>7} in {:>6.2} s = {rate:>8.0}/s   latency p50 {:>7.2} ms  p99 {:>7.2} ms",
        elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );
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
        commit_window: Duration::from_micros(args.commit_window_us),
        ..LedgerOptions::default()
    };
    let ledger = Ledger::connect(url, options).await?;
    println!(
        "backend {:?}, group commit {}, {} clients, {} concurrent tasks, phases of at most {} s",
        ledger.backend(),
        if args.group_commit { "on" } else { "off" },
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
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let c = ledger
            .ensure_account(AccountKind::Client, &format!("bench-{run_tag}-{i}"))
            .await?;
        ledger
            .credit(
                c,
                1_000_000_000_000_000,
                &format!("bench-{run_tag}-{i}"),
                "bench",
            )
            .await?;
        clients.push(c);
    }
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
    for t in 0..args.concurrency {
        let (ledger, jobs, count, clients) =
            (ledger.clone(), jobs.clone(), count.clone(), clients.clone());
        let max_jobs = args.max_jobs;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while start.elapsed() < phase && count.fetch_add(1, Ordering::Relaxed) < max_jobs {
                let job = Uuid::now_v7();
                let t0 = Instant::now();
                ledger
                    .hold(
                        job,
                        clients[i % clients.len()],
                        model,
                        50_000_000,
                        Duration::from_secs(3600),
                    )
                    .await?;
                lat.push(t0.elapsed());
                jobs.lock().map_err(|_| "poisoned")?.push(job);
                i += 7;
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let held = std::mem::take(&mut *jobs.lock().map_err(|_| "poisoned")?);
    report("holds", held.len(), start.elapsed(), lat);

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
    report("captures", lat.len(), elapsed, lat);

    let t0 = Instant::now();
    let violations = ledger.check().await?;
    println!(
        "check: {} violations ({:.2} s)",
        violations.len(),
        t0.elapsed().as_secs_f64()
    );
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
    ledger.close().await;
    if violations.is_empty() {
        Ok(())
    } else {
        Err("ledger check failed".into())
    }
}
