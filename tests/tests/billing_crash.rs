//! Crash test of billing (#5): `cocoon gateway` (ledger on a fresh Postgres database) and
//! `cocoon worker` (built-in engine) run as real processes under concurrent stream and
//! non-stream load, and are SIGKILLed at random moments, many times, each time restarted.
//! Afterwards:
//! - `cocoon ledger check` exits 0 (and `Ledger::check` finds nothing);
//! - every request the client saw complete (non-stream: 200 with `x-request-id` and
//!   `x-cocoon-cost-nanoton`; stream: `data: [DONE]`) has exactly one receipt, whose charge
//!   is the header the client saw and whose tokens are the usage the client saw;
//! - no job is charged twice, every hold a kill left open is released by the reaper of a
//!   later gateway (short `billing.hold_ttl_secs`), and all accounts sum to zero.
//!
//! Needs the `cocoon` binary (`cargo build -p cocoon`; `scripts/test` builds it first; or
//! set `COCOON_BIN`) and Postgres at `BILLING_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). `CRASH_SEED` replays a run's kill
//! schedule (the seed is printed). Bounded: 10 kill rounds, 20–30 s on 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing::{AccountKind, HoldStatus, Ledger, LedgerOptions, Price};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use uuid::Uuid;

const MODEL: &str = "cocoon-test";
const ACCOUNT: &str = "crash-client";
const WORKER_ID: &str = "crash-worker";
const CREDIT: i64 = 1_000_000_000_000_000;
/// Far above any request of this test (well under a second each), so a live request's hold
/// is never reaped before its capture; short enough that orphans go within the test.
const HOLD_TTL_SECS: u64 = 4;
/// Kill rounds: each kills the gateway, the worker or both (and every fourth also kills the
/// restarted gateway during its start-up).
const ROUNDS: usize = 10;
const LOAD_TASKS: usize = 4;

/// The two processes, their settings and logs.
struct Procs {
    bin: PathBuf,
    dir: PathBuf,
    gateway_env: Vec<(String, String)>,
    worker_env: Vec<(String, String)>,
    gateway: Option<Child>,
    worker: Option<Child>,
    gateway_url: String,
}

impl Procs {
    fn spawn(&self, role: &str, env: &[(String, String)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{role}.log")))
            .unwrap();
        Command::new(&self.bin)
            .arg(role)
            .env_remove("COCOON_CONFIG")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {role}: {e}", self.bin.display()))
    }

    fn start_gateway(&mut self) {
        assert!(self.gateway.is_none());
        self.gateway = Some(self.spawn("gateway", &self.gateway_env));
    }

    fn start_worker(&mut self) {
        assert!(self.worker.is_none());
        self.worker = Some(self.spawn("worker", &self.worker_env));
    }

    /// SIGKILL, then reap: no drain, no drop guards, no destructors.
    async fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            c.kill().await.unwrap();
        }
    }

    /// The last lines of a role's log, for failure messages.
    fn tail(&self, role: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{role}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Until `/readyz` says a worker is connected.
    async fn wait_ready(&self, http: &reqwest::Client, within: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(r) = http
                .get(format!("{}/readyz", self.gateway_url))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < within,
                "gateway not ready within {within:?}\n--- gateway log ---\n{}\n--- worker log ---\n{}",
                self.tail("gateway"),
                self.tail("worker")
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A request the client saw complete.
#[derive(Debug)]
struct Completed {
    job: Uuid,
    stream: bool,
    /// `x-cocoon-cost-nanoton` (non-stream).
    cost: Option<i64>,
    /// The usage the client was shown (body, or the stream's usage chunk).
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Default)]
struct Tally {
    completed: Vec<Completed>,
    /// Answered 200 but without a cost header: served and (as far as the client can tell)
    /// not charged. Must stay empty.
    uncharged: Vec<Uuid>,
    /// Connection refused/reset, a stream without [DONE]: the kills at work.
    interrupted: usize,
    /// Streams the client walked away from.
    hung_up: usize,
    /// Other statuses (404 while no worker is connected, …), by status.
    statuses: BTreeMap<u16, usize>,
}

fn body(rng: &mut StdRng, stream: bool) -> Value {
    // Paced by the engine so kills land mid-request: up to ~0.1 s non-stream, ~0.4 s stream.
    let tokens: u32 = if stream {
        rng.gen_range(5..=60)
    } else {
        rng.gen_range(1..=30)
    };
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("crash test {}", rng.gen::<u32>())}],
        "max_tokens": tokens,
        "test_engine": {"tokens_per_second": 150, "completion_tokens": tokens},
    });
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?;
    Some((
        u["prompt_tokens"].as_u64()?,
        u["completion_tokens"].as_u64()?,
    ))
}

/// One request; what the client saw of it goes into `tally`.
async fn one_request(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    rng: &mut StdRng,
    tally: &Mutex<Tally>,
) {
    let stream = rng.gen_bool(0.5);
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body(rng, stream))
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(_) => {
            tally.lock().unwrap().interrupted += 1;
            // The gateway is down: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        *tally.lock().unwrap().statuses.entry(status).or_default() += 1;
        let _ = resp.bytes().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        return;
    }
    let job: Uuid = resp.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let cost = resp
        .headers()
        .get("x-cocoon-cost-nanoton")
        .map(|v| v.to_str().unwrap().parse::<i64>().unwrap());
    if !stream {
        let Ok(bytes) = resp.bytes().await else {
            tally.lock().unwrap().interrupted += 1;
            return;
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let (prompt_tokens, completion_tokens) =
            usage_of(&v).expect("a non-stream answer has usage");
        let mut t = tally.lock().unwrap();
        match cost {
            Some(c) => t.completed.push(Completed {
                job,
                stream,
                cost: Some(c),
                prompt_tokens,
                completion_tokens,
            }),
            None => t.uncharged.push(job),
        }
        return;
    }
    // Some clients hang up mid-stream: the gateway's drop guard charges what was relayed.
    let hang_up_after = rng.gen_bool(0.15).then(|| rng.gen_range(1..6));
    let mut text = String::new();
    let mut s = resp.bytes_stream();
    let mut chunks = 0;
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => break,
        }
        chunks += 1;
        if hang_up_after == Some(chunks) && !text.ends_with("data: [DONE]\n\n") {
            drop(s);
            tally.lock().unwrap().hung_up += 1;
            return;
        }
    }
    if !text.ends_with("data: [DONE]\n\n") {
        tally.lock().unwrap().interrupted += 1;
        return;
    }
    let usage = text
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| usage_of(&v));
    let (prompt_tokens, completion_tokens) =
        usage.expect("a completed stream with include_usage has a usage chunk");
    tally.lock().unwrap().completed.push(Completed {
        job,
        stream,
        cost: None,
        prompt_tokens,
        completion_tokens,
    });
}

/// Holds the ledger shows active right now (straight from the table: the ledger has no
/// listing of them, and this is only read).
async fn active_holds(pool: &sqlx::PgPool) -> Vec<Uuid> {
    sqlx::query_scalar::<_, String>("SELECT job_id FROM holds WHERE status = 'active'")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_gateway_and_worker_never_lose_or_double_a_charge() {
    let started = Instant::now();
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("billing_crash: CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let db = common::PgDb::create("cocoon_crash").await;
    eprintln!("billing_crash: database {}", db.name);
    let tmp = tempfile::tempdir().unwrap();
    let (gw_dir, wk_dir) = (tmp.path().join("gateway"), tmp.path().join("worker"));
    std::fs::create_dir_all(&gw_dir).unwrap();
    std::fs::create_dir_all(&wk_dir).unwrap();

    // The books before any process: price, a well-funded client, an unlimited key.
    let ledger = Ledger::connect(
        &db.url,
        LedgerOptions {
            fee_bps: 500,
            max_connections: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let p = 100_000_000;
    ledger
        .set_price(
            MODEL,
            Price {
                prompt: p,
                cached_prompt: p / 2,
                completion: 3 * p,
                reasoning: 3 * p,
            },
        )
        .await
        .unwrap();
    let client = ledger
        .ensure_account(AccountKind::Client, ACCOUNT)
        .await
        .unwrap();
    ledger
        .credit(client, CREDIT, "crash-test-credit", "crash test")
        .await
        .unwrap();
    let unlimited = gateway::ratelimit::Limits {
        requests_per_minute: 0,
        tokens_per_minute: 0,
    };
    let key = gateway::keys::KeyStore::open(ledger.clone())
        .await
        .unwrap()
        .create("crash", ACCOUNT, Some(unlimited))
        .await
        .unwrap()
        .key;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();

    // A router certificate that survives restarts, so the worker's pin stays valid.
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key_file) = (tmp.path().join("router.crt"), tmp.path().join("router.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key_file, ck.key_pair.serialize_pem()).unwrap();
    let pin = router::net::RouterIdentity::from_pem_files(
        cert.to_str().unwrap(),
        key_file.to_str().unwrap(),
    )
    .unwrap()
    .fingerprint;

    let (gw_port, wk_port) = (common::free_port(), common::free_port());
    let s = |v: &str| v.to_string();
    let gateway_env = vec![
        (s("COCOON__DATA_DIR"), gw_dir.display().to_string()),
        (s("COCOON__LOG"), s("warn")),
        (s("COCOON__ENVIRONMENT"), s("development")),
        (s("COCOON__GATEWAY__LISTEN"), format!("127.0.0.1:{gw_port}")),
        (s("COCOON__GATEWAY__METRICS_LISTEN"), s("127.0.0.1:0")),
        (
            s("COCOON__ROUTER__WORKER_LISTEN"),
            format!("127.0.0.1:{wk_port}"),
        ),
        (
            s("COCOON__ROUTER__TLS_CERT_FILE"),
            cert.display().to_string(),
        ),
        (
            s("COCOON__ROUTER__TLS_KEY_FILE"),
            key_file.display().to_string(),
        ),
        (s("COCOON__BILLING__DATABASE_URL"), db.url.clone()),
        (s("COCOON__BILLING__FEE_BPS"), s("500")),
        // Batching is off by default on Postgres; the crash loop runs it on, so a SIGKILL
        // mid-batch is tested too.
        (s("COCOON__BILLING__GROUP_COMMIT"), s("on")),
        (
            s("COCOON__BILLING__HOLD_TTL_SECS"),
            HOLD_TTL_SECS.to_string(),
        ),
        (s("COCOON__BILLING__REAP_INTERVAL_SECS"), s("1")),
        // The worker's evidence is the simulated TEE's (no TDX/SNP here).
        (
            s("COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE"),
            s("true"),
        ),
    ];
    let worker_env = vec![
        (s("COCOON__DATA_DIR"), wk_dir.display().to_string()),
        (s("COCOON__LOG"), s("warn")),
        (s("COCOON__WORKER__WORKER_ID"), s(WORKER_ID)),
        (
            s("COCOON__WORKER__ROUTER_URL"),
            format!("wss://127.0.0.1:{wk_port}/v1/worker"),
        ),
        (s("COCOON__WORKER__ROUTER_CERT_SHA256"), pin),
        (s("COCOON__ENVIRONMENT"), s("development")),
        (s("COCOON__ENGINE__KIND"), s("builtin")),
        (s("COCOON__ENGINE__LISTEN"), s("127.0.0.1:0")),
    ];
    let mut procs = Procs {
        bin: common::cocoon_bin(),
        dir: tmp.path().to_path_buf(),
        gateway_env,
        worker_env,
        gateway: None,
        worker: None,
        gateway_url: format!("http://127.0.0.1:{gw_port}"),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    procs.start_gateway();
    procs.start_worker();
    procs.wait_ready(&http, Duration::from_secs(30)).await;

    // Load: tasks alternating stream and non-stream requests until told to stop.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..LOAD_TASKS {
        let (http, base, key, tally, stop) = (
            http.clone(),
            procs.gateway_url.clone(),
            key.clone(),
            tally.clone(),
            stop.clone(),
        );
        let mut rng = StdRng::seed_from_u64(seed ^ (t as u64 + 1));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                one_request(&http, &base, &key, &mut rng, &tally).await;
            }
        }));
    }

    // Kill at random moments; the gateway every time, the worker too in some rounds.
    let mut orphans: HashSet<Uuid> = HashSet::new();
    let (mut gateway_kills, mut worker_kills) = (0, 0);
    // Restart to ready, per round (the worker has to reconnect and re-attest).
    let mut ready_after = Vec::new();
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        // Gateway alone, worker alone (the live gateway then settles its cut streams), or both.
        let (gateway, worker) = match rng.gen_range(0..4) {
            0 | 1 => (true, false),
            2 => (false, true),
            _ => (true, true),
        };
        if gateway {
            Procs::kill(&mut procs.gateway).await;
            gateway_kills += 1;
        }
        if worker {
            Procs::kill(&mut procs.worker).await;
            worker_kills += 1;
        }
        if gateway {
            // What the dead gateway left open (its in-flight requests).
            orphans.extend(active_holds(&pool).await);
        }
        // Clients meet a dead port (or no worker) for a moment; then restart.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        if procs.gateway.is_none() {
            procs.start_gateway();
        }
        if procs.worker.is_none() {
            procs.start_worker();
        }
        if round % 4 == 3 {
            // Sometimes kill the fresh gateway while it is still starting up, too.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..150))).await;
            Procs::kill(&mut procs.gateway).await;
            gateway_kills += 1;
            orphans.extend(active_holds(&pool).await);
            procs.start_gateway();
        }
        let t0 = Instant::now();
        procs.wait_ready(&http, Duration::from_secs(30)).await;
        ready_after.push(t0.elapsed().as_millis());
    }

    // Let the load drain against the last gateway, then stop it.
    stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load task stuck")
            .unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());

    // Every hold a kill left open is released by the reaper of a later gateway.
    let deadline = Instant::now() + Duration::from_secs(HOLD_TTL_SECS * 3 + 10);
    loop {
        let b = ledger.balance(client).await.unwrap();
        if b.held == 0 && active_holds(&pool).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "holds still open after the TTL: {:?}\n--- gateway log ---\n{}",
            active_holds(&pool).await,
            procs.tail("gateway")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut expired = 0;
    for job in &orphans {
        let hold = ledger.find_hold(*job).await.unwrap().unwrap();
        assert_ne!(hold.status, HoldStatus::Active, "{hold:?}");
        if hold.status == HoldStatus::Expired {
            expired += 1;
        }
    }
    Procs::kill(&mut procs.gateway).await;
    Procs::kill(&mut procs.worker).await;

    // `cocoon ledger check` on the books the processes left.
    let check = Command::new(&procs.bin)
        .args(["ledger", "check"])
        .env_remove("COCOON_CONFIG")
        .env("COCOON__DATA_DIR", gw_dir.display().to_string())
        .env("COCOON__BILLING__DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "cocoon ledger check failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let violations = ledger.check().await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");

    // What the client saw complete was charged exactly once, at the price it was told.
    assert!(
        tally.uncharged.is_empty(),
        "answered without a charge: {:?}",
        tally.uncharged
    );
    let mut seen = HashSet::new();
    let (mut streams, mut charged) = (0, 0_i64);
    for c in &tally.completed {
        assert!(seen.insert(c.job), "job id {} completed twice", c.job);
        let r = ledger
            .receipt(c.job)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("completed request {c:?} has no receipt"));
        assert_eq!(
            ledger.find_hold(c.job).await.unwrap().unwrap().status,
            HoldStatus::Captured
        );
        if let Some(cost) = c.cost {
            assert_eq!(r.billed.charge, cost, "{c:?}: charged {r:?}");
        }
        assert_eq!(
            (r.usage.prompt_tokens, r.usage.completion_tokens),
            (c.prompt_tokens, c.completion_tokens),
            "{c:?}: billed usage differs from what the client was shown: {r:?}"
        );
        assert!(r.billed.charge > 0, "{r:?}");
        streams += usize::from(c.stream);
        charged += r.billed.charge;
    }

    // Money is conserved: the client lost exactly what its receipts say (completed or
    // not), and all accounts, system ones included, sum to zero.
    let receipts = ledger.usage(client, 1_000_000).await.unwrap();
    let total_charged: i64 = receipts.iter().map(|r| r.billed.charge).sum();
    assert!(total_charged >= charged);
    let client_total = ledger.balance(client).await.unwrap().total;
    assert_eq!(client_total, CREDIT - total_charged);
    let worker = ledger
        .find_account(AccountKind::Worker, WORKER_ID)
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut sum = 0_i64;
    for a in [
        client,
        worker,
        ledger.fee_account(),
        ledger.clearing_account(),
    ] {
        sum += ledger.balance(a).await.unwrap().total;
    }
    assert_eq!(sum, 0, "all accounts must sum to zero");
    let charge_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM charges")
        .fetch_one(&pool)
        .await
        .unwrap();
    let capture_txs: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT job_id) FROM transactions WHERE kind = 'capture'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let captures: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transactions WHERE kind = 'capture'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (captures, capture_txs),
        (charge_rows, charge_rows),
        "one capture per charged job"
    );

    eprintln!(
        "billing_crash: {ROUNDS} rounds: {gateway_kills} gateway kills, {worker_kills} worker kills; {} completed ({streams} streams), \
         {} interrupted, {} hung up, {} charged in all ({} completed), other statuses {:?}, {} holds orphaned by kills \
         ({expired} reaped), ready after restart (ms) {ready_after:?}, {:.1} s",
        tally.completed.len(),
        tally.interrupted,
        tally.hung_up,
        receipts.len(),
        tally.completed.len(),
        tally.statuses,
        orphans.len(),
        started.elapsed().as_secs_f64()
    );
    // The run exercised what it claims to.
    assert!(tally.completed.len() >= 20, "too little load got through");
    assert!(tally.interrupted > 0, "no kill ever cut a request");
    assert!(expired > 0, "no kill ever left a hold for the reaper");

    ledger.close().await;
    pool.close().await;
    db.drop_it().await;
}
