//! Cost of the per-request auth + rate-limit path as the number of API keys grows (issue #14),
//! for `scripts/bench-keys-scale`.
//!
//! ```text
//! cargo run -p gateway --release --example auth_scale -- [--keys 10,10000,100000] [--calls 500000]
//!     [--active 10,10000,100000] [--dir DIR]
//! ```
//! For each N it runs two child processes of itself, so that no run's freed memory blurs the
//! next run's RSS figures:
//! - `--seed N`: creates N keys with `KeyStore::create` (one transaction each, what
//!   `cocoon keys create` does) in a fresh SQLite file and writes their plaintexts to a file;
//! - `--measure N`: opens the store as the gateway does at start (the whole table into the
//!   cache; RSS before and after), touches every key once (so every key has live rate-limit
//!   buckets, the steady state with N active keys), then times `--calls` requests whose keys
//!   are drawn uniformly at random from the N: `KeyStore::verify`, `Principal::from_key` (what
//!   `Principal::authenticate` builds) and `RateLimiter::check` on the memory backend, on one
//!   current-thread tokio runtime. CPU time is this thread's utime + stime from
//!   `/proc/thread-self/stat` (10 ms ticks: a few per cent of a 0.3 s run); per-call
//!   latencies are `Instant` samples, and include the ~20 ns the two `Instant::now` cost.
//!   Then the same number of requests over only 10 of the N keys (the control: same store,
//!   same code, a working set that stays in the CPU caches).
//!
//! Then, for each A in `--active` (default: the `--keys` list), `--limiter A` measures the rate
//! limiter alone: RSS before and after A distinct keys each make one request in a fresh
//! `RateLimiter::memory()` (RSS moves in 4 KiB pages: small A shows page noise, not per-key cost).
//!
//! stdout: one JSON object per run; stderr: a readable line per run. The SQLite file goes to
//! /dev/shm when there is one: seeding costs a synchronous commit per key, which on a disk is
//! minutes for 100,000 keys and is not what is measured here.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use billing::{Ledger, LedgerOptions};
use futures::StreamExt;
use gateway::auth::Principal;
use gateway::keys::KeyStore;
use gateway::ratelimit::{Limits, RateLimiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set and large: every request is counted in both buckets, none is denied.
const LIMITS: Limits = Limits {
    requests_per_minute: 1_000_000_000,
    tokens_per_minute: 1_000_000_000,
};
/// Tokens each request is estimated at (what `check` takes from the tokens bucket).
const TOKENS: u64 = 500;
/// Keys the control run spreads its requests over.
const HOT_KEYS: usize = 10;
/// /proc's clock ticks are USER_HZ, 100 on every Linux architecture we run on.
const TICKS_PER_SEC: f64 = 100.0;

enum Mode {
    All {
        keys: Vec<usize>,
        calls: usize,
        active: Vec<usize>,
        dir: Option<PathBuf>,
    },
    Seed {
        n: usize,
        dir: PathBuf,
    },
    Measure {
        n: usize,
        dir: PathBuf,
        calls: usize,
        seed_s: f64,
    },
    Limiter {
        active: usize,
    },
}

fn parse_args() -> Result<Mode, BoxError> {
    let mut keys = vec![10, 10_000, 100_000];
    let (mut calls, mut active, mut seed_s) = (500_000, None, f64::NAN);
    let (mut dir, mut seed, mut measure, mut limiter) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--keys" => {
                keys = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--calls" => calls = value()?.parse()?,
            "--active" => {
                active = Some(
                    value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--seed" => seed = Some(value()?.parse()?),
            "--measure" => measure = Some(value()?.parse()?),
            "--seed-seconds" => seed_s = value()?.parse()?,
            "--limiter" => limiter = Some(value()?.parse()?),
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    let need_dir = || dir.clone().ok_or("--seed and --measure need --dir");
    Ok(match (seed, measure, limiter) {
        (Some(n), None, None) => Mode::Seed {
            n,
            dir: need_dir()?,
        },
        (None, Some(n), None) => Mode::Measure {
            n,
            dir: need_dir()?,
            calls,
            seed_s,
        },
        (None, None, Some(active)) => Mode::Limiter { active },
        (None, None, None) => Mode::All {
            active: active.unwrap_or_else(|| keys.clone()),
            keys,
            calls,
            dir,
        },
        _ => return Err("--seed, --measure and --limiter are exclusive".into()),
    })
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match parse_args()? {
        Mode::All {
            keys,
            calls,
            active,
            dir,
        } => run_all(&keys, calls, &active, dir),
        Mode::Seed { n, dir } => rt.block_on(seed(n, &dir)),
        Mode::Measure {
            n,
            dir,
            calls,
            seed_s,
        } => rt.block_on(measure(n, &dir, calls, seed_s)),
        Mode::Limiter { active } => rt.block_on(limiter(active)),
    }
}

/// Resident set size of this process, bytes.
fn rss() -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// CPU seconds (user + system) this thread has used.
fn thread_cpu_s() -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').ok_or("odd /proc/thread-self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, BoxError> { Ok(f.get(i).ok_or("short stat")?.parse()?) };
    Ok((ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SEC)
}

fn db_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("ledger.db").display())
}

fn keys_file(dir: &Path) -> PathBuf {
    dir.join("keys.txt")
}

/// Runs this program with `args`; its stderr passes through, its stdout is returned.
fn child(args: &[String]) -> Result<String, BoxError> {
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("auth_scale {} failed: {}", args.join(" "), out.status).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn run_all(
    keys: &[usize],
    calls: usize,
    active: &[usize],
    dir: Option<PathBuf>,
) -> Result<(), BoxError> {
    let base = dir.unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    });
    let mut stdout = std::io::stdout();
    for &n in keys {
        let dir = base.join(format!("cocoon-auth-scale-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display().to_string();
        let result = child(&["--seed".into(), n.to_string(), "--dir".into(), d.clone()]).and_then(
            |seed_s| {
                child(&[
                    "--measure".into(),
                    n.to_string(),
                    "--dir".into(),
                    d,
                    "--calls".into(),
                    calls.to_string(),
                    "--seed-seconds".into(),
                    seed_s.trim().to_owned(),
                ])
            },
        );
        // The file holds plaintext keys (of a throwaway database): never leave it behind.
        std::fs::remove_dir_all(&dir)?;
        stdout.write_all(result?.as_bytes())?;
        stdout.flush()?;
    }
    for &a in active {
        stdout.write_all(child(&["--limiter".into(), a.to_string()])?.as_bytes())?;
        stdout.flush()?;
    }
    Ok(())
}

/// Creates `n` keys through `KeyStore::create`; prints the seconds it took.
async fn seed(n: usize, dir: &Path) -> Result<(), BoxError> {
    let store =
        KeyStore::open(Ledger::connect(&db_url(dir), LedgerOptions::default()).await?).await?;
    let started = Instant::now();
    // A few creates in flight keep the single SQLite writer busy; each is still its own
    // transaction, as when keys are made one by one.
    let mut made = futures::stream::iter(0..n)
        .map(|i| {
            let store = &store;
            async move {
                store
                    .create(&format!("bench {i}"), &format!("acct-{}", i % 1000), None)
                    .await
            }
        })
        .buffer_unordered(8);
    let mut plaintexts = String::with_capacity(n * 63);
    while let Some(k) = made.next().await {
        plaintexts.push_str(&k?.key);
        plaintexts.push('\n');
    }
    let secs = started.elapsed().as_secs_f64();
    std::fs::write(keys_file(dir), plaintexts)?;
    eprintln!("seeded {n} keys with KeyStore::create in {secs:.2} s");
    println!("{secs:.3}");
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// One request's auth + rate-limit work, as the gateway does it; true when allowed.
async fn request(
    store: &KeyStore,
    limiter: &RateLimiter,
    presented: &str,
) -> Result<bool, BoxError> {
    let rec = store
        .verify(presented)
        .await
        .ok_or("a seeded key did not verify")?;
    let p = Principal::from_key(&rec, LIMITS);
    let d = limiter.check(&p.rate_key, p.limits, TOKENS).await?;
    Ok(black_box(d).allowed)
}

/// Times one request per entry of `order` (indices into `keys`): wall seconds, this thread's
/// CPU seconds, and the sorted per-call latencies in ns.
async fn timed(
    store: &KeyStore,
    limiter: &RateLimiter,
    keys: &[String],
    order: &[u32],
) -> Result<(f64, f64, Vec<u32>), BoxError> {
    let mut samples: Vec<u32> = Vec::with_capacity(order.len());
    let mut denied = 0usize;
    let cpu0 = thread_cpu_s()?;
    let wall = Instant::now();
    for &i in order {
        let t = Instant::now();
        let allowed = request(store, limiter, &keys[i as usize]).await?;
        samples.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
        denied += usize::from(!allowed);
    }
    let wall_s = wall.elapsed().as_secs_f64();
    let cpu_s = thread_cpu_s()? - cpu0;
    if denied > 0 {
        return Err(format!("{denied} requests denied: the limits are meant never to bind").into());
    }
    samples.sort_unstable();
    Ok((wall_s, cpu_s, samples))
}

async fn measure(n: usize, dir: &Path, calls: usize, seed_s: f64) -> Result<(), BoxError> {
    let keys: Vec<String> = std::fs::read_to_string(keys_file(dir))?
        .lines()
        .map(str::to_owned)
        .collect();
    if keys.len() != n {
        return Err(format!("{} keys in the file, expected {n}", keys.len()).into());
    }
    let mut rng = StdRng::seed_from_u64(14);
    let order: Vec<u32> = (0..calls).map(|_| rng.gen_range(0..n as u32)).collect();
    // The control: the same store and limiter, requests over only HOT_KEYS of the keys, so
    // the memory they touch stays in the CPU caches whatever N is.
    let hot: Vec<u32> = (0..calls)
        .map(|_| rng.gen_range(0..n.min(HOT_KEYS) as u32))
        .collect();

    let db = Ledger::connect(&db_url(dir), LedgerOptions::default()).await?;
    let rss_before_open = rss()?;
    let started = Instant::now();
    let store = KeyStore::open(db).await?;
    let open_s = started.elapsed().as_secs_f64();
    let rss_after_open = rss()?;

    let limiter = RateLimiter::memory();
    // Every key once: all N have buckets, as with N active keys, and the caches are warm.
    for k in &keys {
        if !request(&store, &limiter, k).await? {
            return Err("warm-up request denied".into());
        }
    }
    let rss_after_warmup = rss()?;

    let (wall_s, cpu_s, samples) = timed(&store, &limiter, &keys, &order).await?;
    let (_, hot_cpu_s, hot_samples) = timed(&store, &limiter, &keys, &hot).await?;
    let per_call = |s: f64| s * 1e6 / calls as f64;
    let keystore_bytes = rss_after_open.saturating_sub(rss_before_open);
    let out = serde_json::json!({
        "run": "auth",
        "keys": n,
        "seed_s": seed_s,
        "open_s": open_s,
        "calls": calls,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "cpu_clock": "thread utime+stime, /proc/thread-self/stat",
        "wall_us_per_call": per_call(wall_s),
        "cpu_us_per_call": per_call(cpu_s),
        "p50_us": percentile(&samples, 0.50),
        "p99_us": percentile(&samples, 0.99),
        "p999_us": percentile(&samples, 0.999),
        "hot_keys": n.min(HOT_KEYS),
        "hot_cpu_us_per_call": per_call(hot_cpu_s),
        "hot_p50_us": percentile(&hot_samples, 0.50),
        "hot_p99_us": percentile(&hot_samples, 0.99),
        "max_us": percentile(&samples, 1.0),
        "keystore_rss_bytes": keystore_bytes,
        "keystore_bytes_per_key": keystore_bytes as f64 / n as f64,
        "rss_after_open_bytes": rss_after_open,
        "rss_after_warmup_bytes": rss_after_warmup,
        "rss_after_bytes": rss()?,
    });
    println!("{out}");
    eprintln!(
        "{n} keys: open {open_s:.3} s; {calls} requests: {:.3} CPU µs/request ({:.3} wall), p50 {:.3} µs, p99 {:.3} µs; \
         KeyStore RSS +{:.1} MB ({:.0} B/key); over {} of the keys: {:.3} CPU µs/request",
        per_call(cpu_s),
        per_call(wall_s),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        keystore_bytes as f64 / 1e6,
        keystore_bytes as f64 / n as f64,
        n.min(HOT_KEYS),
        per_call(hot_cpu_s),
    );
    Ok(())
}

async fn limiter(active: usize) -> Result<(), BoxError> {
    let mut rng = StdRng::seed_from_u64(14);
    // Bucket names as `Principal::from_key` makes them, allocated before the first reading.
    let names: Vec<String> = (0..active)
        .map(|_| {
            let id: String = (0..12)
                .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
                .collect();
            format!("key:{id}")
        })
        .collect();
    let limiter = RateLimiter::memory();
    let before = rss()?;
    let started = Instant::now();
    for name in &names {
        if !limiter.check(name, LIMITS, TOKENS).await?.allowed {
            return Err("denied".into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let after = rss()?;
    let bytes = after.saturating_sub(before);
    println!(
        "{}",
        serde_json::json!({
            "run": "limiter",
            "active_keys": active,
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "bytes": bytes,
            "bytes_per_key": bytes as f64 / active as f64,
            "first_touch_us_per_key": secs * 1e6 / active as f64,
        })
    );
    eprintln!(
        "rate limiter, {active} active keys: RSS {:.1} -> {:.1} MB, +{:.1} MB ({:.0} B/key)",
        before as f64 / 1e6,
        after as f64 / 1e6,
        bytes as f64 / 1e6,
        bytes as f64 / active as f64
    );
    Ok(())
}
