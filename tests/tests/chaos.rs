//! Chaos under load (#17). Each test runs a steady load of streaming and non-streaming
//! requests against a real gateway (its ledger on a fresh Postgres database, two networked
//! workers over TLS), breaks one shared part in the middle of the load, heals it, and then
//! checks what an operator needs to hold:
//! - no client waited past its timeout, and no request got a 500;
//! - while the part was down, requests were refused at once with 503 and `Retry-After`;
//! - after the heal, service resumed by itself;
//! - every answer the client saw complete is charged exactly once (its receipt in the
//!   ledger, equal to the cost header when the client got one; a capture deferred to the
//!   capture outbox during the outage lands once the database is back);
//! - the ledger's invariants hold (`cocoon ledger check`).
//!
//! Faults: Postgres refusing connections, Redis killed (limits failing closed, or open), one
//! worker's network stalled 10 s, the SQLite ledger's disk full, one of two gateway
//! processes SIGKILLed. Loopback only; each test owns its database (and its Redis server)
//! and removes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing::{AccountKind, Price};
use futures::StreamExt;
use serde_json::json;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MODEL: &str = "cocoon-test";
const ACCOUNT: &str = "chaos";
/// The client's own timeout: no request may take longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A Redis server of the test's own (the shared one must not go down under other tests).
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { port, dir: tempfile::tempdir().unwrap(), child: None };
        r.up();
        r
    }

    fn up(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

struct Net {
    base: String,
    key: String,
    ledger: billing::Ledger,
    meter: Arc<cocoon::metering::LedgerMeter>,
    /// The in-process gateway's router (`None` for a gateway in another process).
    router: Option<router::Router>,
    /// The engines of w1 and w2.
    engines: Vec<Arc<test_engine::TestEngine>>,
    stop: CancellationToken,
    /// The gateway's data dir, removed with the network.
    _dir: Option<tempfile::TempDir>,
}

/// A TCP relay that can stall: while paused it forwards nothing either way (the bytes wait
/// in the sockets' buffers, as on a network that stopped delivering).
struct StallingRelay {
    addr: std::net::SocketAddr,
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl StallingRelay {
    async fn start(upstream: std::net::SocketAddr) -> StallingRelay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = paused.clone();
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else { return };
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                for (mut from, mut to) in [(dr, uw), (ur, dw)].map(|(r, w)| (Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>, Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>)) {
                    let p = p.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16384];
                        loop {
                            while p.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while p.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown().await;
                    });
                }
            }
        });
        StallingRelay { addr, paused }
    }

    fn pause(&self, on: bool) {
        self.paused.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn network(db: &common::PgDb, tweak: impl FnOnce(&mut cocoon::Config)) -> Net {
    network_via(&db.url, tweak, None).await
}

/// As [`network`]; with `relay`, w2 reaches the router through it (it is started here).
async fn network_via(database_url: &str, tweak: impl FnOnce(&mut cocoon::Config), relay: Option<&mut Option<StallingRelay>>) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cocoon::Config::default();
    cfg.environment = cocoon::config::Environment::Development;
    cfg.data_dir = dir.path().to_path_buf();
    cfg.log = "warn".into();
    cfg.gateway.listen = "127.0.0.1:0".into();
    cfg.gateway.metrics_listen = Some("127.0.0.1:0".into());
    cfg.router.worker_listen = Some("127.0.0.1:0".into());
    cfg.attestation.policy.allow_insecure_simulated_tee = true;
    cfg.billing.database_url = Some(database_url.to_string());
    // A database that is down is noticed within a second, not sqlx's 30 s.
    cfg.billing.db_timeout_ms = 1_000;
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let stop = CancellationToken::new();
    let router = cocoon::routing::start_router(&cfg, stop.clone()).await.unwrap();
    let l = cocoon::roles::start_worker_listener(&cfg, router.clone(), stop.clone()).await.unwrap().unwrap();
    let gw = cocoon::roles::start_gateway(&cfg, router.clone(), stop.clone()).await.unwrap();
    let limits = gateway::ratelimit::Limits { requests_per_minute: 1_000_000, tokens_per_minute: 0 };
    let key = gw.keys.create("chaos", ACCOUNT, Some(limits)).await.unwrap().key;
    let meter = gw.meter.clone().expect("billing on");
    let ledger = meter.ledger().clone();
    ledger.set_price(MODEL, Price { prompt: 1_000_000_000, cached_prompt: 0, completion: 2_000_000_000, reasoning: 0 }).await.unwrap();
    let client = ledger.ensure_account(AccountKind::Client, ACCOUNT).await.unwrap();
    ledger.credit(client, 1_000_000_000_000, "seed", "chaos").await.unwrap();
    let mut engines = Vec::new();
    let mut relay = relay;
    for id in ["w1", "w2"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let engine_url = format!("http://{}", listener.local_addr().unwrap());
        let engine = test_engine::TestEngine::new(test_engine::EngineConfig::default());
        engines.push(engine.clone());
        let s = stop.clone();
        tokio::spawn(test_engine::serve(listener, engine, async move { s.cancelled().await }));
        let mut router_addr = l.addr;
        if let (Some(slot), "w2") = (relay.as_deref_mut(), id) {
            let r = StallingRelay::start(l.addr).await;
            router_addr = r.addr;
            *slot = Some(r);
        }
        let agent = worker_agent::WorkerAgent::new(
            worker_agent::WorkerConfig { worker_id: id.into(), engine_url, health_interval_ms: 200, ..Default::default() },
            worker_agent::WorkerTee::simulated().unwrap(),
        )
        .unwrap();
        let link = worker_agent::net::RouterLink { url: format!("wss://{router_addr}/v1/worker"), cert_sha256: l.cert_sha256.clone() };
        tokio::spawn(worker_agent::net::run(agent, link, Duration::from_secs(10), stop.clone()));
    }
    let t0 = Instant::now();
    while router.snapshot().len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "workers did not join");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Net { base: format!("http://{}/v1", gw.addr), key, ledger, meter, router: Some(router), engines, stop, _dir: Some(dir) }
}

#[derive(Debug, Clone)]
enum Outcome {
    /// The client saw the whole answer: its job id and the cost header, if any.
    Completed { job: Uuid, cost: Option<i64> },
    /// Refused: status, `code`, whether `Retry-After` came with it.
    Refused { status: u16, code: String, retry_after: bool },
    /// A stream that started and then ended with an error event, or a transport error.
    Broken(String),
}

#[derive(Debug, Clone)]
struct Record {
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

async fn one(http: &reqwest::Client, net: &Net, stream: bool) -> Outcome {
    let body = json!({"model": MODEL, "stream": stream, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}],
                      "test_engine": {"tokens_per_second": 40.0}});
    let r = match http.post(format!("{}/chat/completions", net.base)).bearer_auth(&net.key).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("send: {e}")),
    };
    let status = r.status().as_u16();
    let header = |k: &str| r.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let job = header("x-request-id").and_then(|v| v.parse::<Uuid>().ok());
    let cost = header("x-cocoon-cost-nanoton").and_then(|v| v.parse::<i64>().ok());
    let retry_after = header("retry-after").is_some();
    if status != 200 {
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        return Outcome::Refused { status, code: v["error"]["code"].as_str().unwrap_or_default().to_string(), retry_after };
    }
    let Some(job) = job else { return Outcome::Broken("200 without x-request-id".into()) };
    if !stream {
        return match r.json::<serde_json::Value>().await {
            Ok(v) if v["choices"].is_array() => Outcome::Completed { job, cost },
            other => Outcome::Broken(format!("{other:?}")),
        };
    }
    let mut text = String::new();
    let mut body = r.bytes_stream();
    while let Some(c) = body.next().await {
        match c {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(e) => return Outcome::Broken(format!("stream: {e}")),
        }
    }
    if text.ends_with("data: [DONE]\n\n") {
        Outcome::Completed { job, cost: None }
    } else {
        Outcome::Broken(text.lines().rev().find(|l| l.starts_with("data:")).unwrap_or_default().to_string())
    }
}

/// `tasks` clients in a loop until `stop`; every request recorded.
fn load(net: Arc<Net>, tasks: usize, stop: CancellationToken) -> (Arc<Mutex<Vec<Record>>>, Vec<tokio::task::JoinHandle<()>>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let handles = (0..tasks)
        .map(|i| {
            let (net, records, stop) = (net.clone(), records.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().unwrap();
                let mut n = 0usize;
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    let outcome = one(&http, &net, (i + n).is_multiple_of(2)).await;
                    let failed = !matches!(outcome, Outcome::Completed { .. });
                    records.lock().unwrap().push(Record { at: started - t0, took: started.elapsed(), outcome });
                    n += 1;
                    if failed {
                        // A client honouring Retry-After would wait longer; a short pause keeps
                        // the load on without spinning.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    (records, handles)
}

/// The checks every chaos test ends with.
async fn assert_books(net: &Net, records: &[Record], outage: std::ops::Range<Duration>) {
    assert!(!records.is_empty());
    for r in records {
        assert!(r.took < CLIENT_TIMEOUT, "a client waited {:?}: {r:?}", r.took);
        if let Outcome::Refused { status, .. } = &r.outcome {
            assert_ne!(*status, 500, "{r:?}");
        }
    }
    // Service resumed by itself: the requests started well after the heal all completed.
    let after: Vec<&Record> = records.iter().filter(|r| r.at > outage.end + Duration::from_secs(2)).collect();
    assert!(after.len() >= 4, "too little load after the heal: {}", after.len());
    for r in &after {
        assert!(matches!(r.outcome, Outcome::Completed { .. }), "after the heal: {r:?}");
    }
    // Deferred captures land from the outbox.
    let t0 = Instant::now();
    while net.meter.outbox_len() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the capture outbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every completed answer charged exactly once, as the client was told.
    let mut seen = std::collections::HashSet::new();
    for r in records {
        if let Outcome::Completed { job, cost } = &r.outcome {
            assert!(seen.insert(*job), "job {job} completed twice");
            let receipt = net.ledger.receipt(*job).await.unwrap().unwrap_or_else(|| panic!("completed job {job} was not charged: {r:?}"));
            if let Some(c) = cost {
                assert_eq!(receipt.billed.charge, *c, "{r:?}");
            }
        }
    }
    let v = net.ledger.check().await.unwrap();
    assert!(v.is_empty(), "ledger invariants violated: {v:?}");
}

/// The run every single-fault test shares: four clients load `net` for 2 s, `fault(true)`
/// breaks a part, `down_for` later `fault(false)` heals it, then `after()` runs with the load
/// still on (made only then: a timer made earlier would already have run), and the load stops. Returns every request, the outage (measured from the load's
/// start) and what `after` returned.
async fn under_load<F, Fut, A, AFut, T>(net: &Arc<Net>, down_for: Duration, mut fault: F, after: A) -> (Vec<Record>, std::ops::Range<Duration>, T)
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
    A: FnOnce() -> AFut,
    AFut: std::future::Future<Output = T>,
{
    let stop = CancellationToken::new();
    let (records, tasks) = load(net.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down_at = Instant::now();
    fault(true).await;
    tokio::time::sleep(down_for).await;
    fault(false).await;
    let outage = Duration::from_secs(2)..Duration::from_secs(2) + down_at.elapsed();
    let out = after().await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let records = records.lock().unwrap().clone();
    (records, outage, out)
}

/// The refusals in `records`: each 503 `code` with `Retry-After`, each answered within
/// `within` when given; at least `min` of them, else the fault was not noticed.
fn refusals<'a>(records: &'a [Record], code: &str, min: usize, within: Option<Duration>) -> Vec<&'a Record> {
    let refused: Vec<&Record> = records.iter().filter(|r| matches!(r.outcome, Outcome::Refused { .. })).collect();
    assert!(refused.len() >= min, "{} refusals with {code}, expected at least {min}: {refused:?}", refused.len());
    for r in &refused {
        let Outcome::Refused { status, code: got, retry_after } = &r.outcome else { unreachable!() };
        assert_eq!((*status, got.as_str(), *retry_after), (503, code, true), "{r:?}");
        if let Some(limit) = within {
            assert!(r.took < limit, "a refusal took {:?}", r.took);
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_down_under_load_refuses_fast_loses_nothing_and_recovers() {
    let db = common::PgDb::create("cocoon_chaos").await;
    let net = Arc::new(network(&db, |_| {}).await);
    let (records, outage, ()) =
        under_load(&net, Duration::from_secs(4), |down| db.allow(!down), || tokio::time::sleep(Duration::from_secs(5))).await;
    let refused = refusals(&records, "billing_unavailable", 1, Some(Duration::from_secs(5)));
    let completed = records.iter().filter(|r| matches!(r.outcome, Outcome::Completed { .. })).count();
    eprintln!(
        "postgres outage: {} requests, {completed} completed, {} refused (503 billing_unavailable), broken: {:?}",
        records.len(),
        refused.len(),
        broken(&records)
    );
    assert_books(&net, &records, outage).await;
    net.stop.cancel();
    db.drop_it().await;
}

/// Streams cut by the fault (an error event after a 200), named for the log.
fn broken(records: &[Record]) -> Vec<&str> {
    records.iter().filter_map(|r| if let Outcome::Broken(why) = &r.outcome { Some(why.as_str()) } else { None }).collect()
}

/// Redis (rate limits and the shared worker registry) killed for 3 s under load, then
/// restarted: limits fail closed (503 `rate_limiter_unavailable` with `Retry-After`, within
/// about a second) or, configured so, open (served unlimited); either way service resumes.
async fn redis_outage(fail_open: bool) {
    let db = common::PgDb::create("cocoon_chaos").await;
    let mut redis = Redis::start();
    let url = redis.url();
    let net = Arc::new(
        network(&db, |c| {
            c.gateway.redis_url = Some(url.clone());
            c.router.redis_url = Some(url.clone());
            c.gateway.rate_limit_fail_open = fail_open;
        })
        .await,
    );
    let redis_fault = |down: bool| {
        if down {
            redis.down();
        } else {
            redis.up();
        }
        std::future::ready(())
    };
    let (records, outage, ()) = under_load(&net, Duration::from_secs(3), redis_fault, || tokio::time::sleep(Duration::from_secs(5))).await;
    let refused = if fail_open {
        let refused = refusals(&records, "rate_limiter_unavailable", 0, None);
        assert!(refused.is_empty(), "fail-open refused: {refused:?}");
        let during = records.iter().filter(|r| r.at > outage.start && r.at < outage.end);
        assert!(during.clone().count() >= 4, "served while Redis was down");
        assert!(during.clone().all(|r| r.took < Duration::from_secs(3)), "slow while Redis was down");
        refused
    } else {
        refusals(&records, "rate_limiter_unavailable", 4, Some(Duration::from_secs(2)))
    };
    eprintln!(
        "redis outage (fail_open = {fail_open}): {} requests, {} refused (503 rate_limiter_unavailable), broken: {:?}",
        records.len(),
        refused.len(),
        broken(&records)
    );
    assert_books(&net, &records, outage).await;
    net.stop.cancel();
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_under_load_fails_closed_then_recovers() {
    redis_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_under_load_fails_open_when_configured_then_recovers() {
    redis_outage(true).await;
}

/// One worker's network stalls for 10 s under load (its link relayed, the relay stops
/// delivering). Jobs sent to it get no first token and move to the other worker before the
/// first token (`router.first_token_timeout_ms`); a stream it had already started ends with an
/// error event within the link's liveness timeout, never a hang; afterwards the worker is
/// back (it reconnects) and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_network_stalls_10s_loses_its_jobs_to_the_other_and_comes_back() {
    let db = common::PgDb::create("cocoon_chaos").await;
    let mut relay = None;
    let net = Arc::new(
        network_via(
            &db.url,
            |c| {
                c.router.first_token_timeout_ms = 2_000;
                c.router.worker_liveness_ms = 3_000;
            },
            Some(&mut relay),
        )
        .await,
    );
    let relay = relay.unwrap();
    let stall = |on: bool| {
        if on {
            assert!(net.engines[1].stats().snapshot().requests_started > 0, "w2 served before the stall");
        }
        relay.pause(on);
        std::future::ready(())
    };
    // After the heal, the worker is back (reconnected if the router dropped its link) and
    // gets jobs again, with the load still on.
    let back = || async {
        let t0 = Instant::now();
        let w2_after_heal = net.engines[1].stats().snapshot().requests_started;
        while net.router.as_ref().unwrap().snapshot().len() < 2 || net.engines[1].stats().snapshot().requests_started <= w2_after_heal {
            assert!(t0.elapsed() < Duration::from_secs(20), "w2 did not come back: {:?}", net.router.as_ref().unwrap().snapshot());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let back_after = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        back_after
    };
    let (records, outage, back_after) = under_load(&net, Duration::from_secs(10), stall, back).await;
    let during: Vec<&Record> = records.iter().filter(|r| r.at > outage.start && r.at < outage.end).collect();
    let completed_during = during.iter().filter(|r| matches!(r.outcome, Outcome::Completed { .. })).count();
    assert!(completed_during >= 10, "the other worker kept serving during the stall: {completed_during} of {}", during.len());
    for r in &during {
        assert!(!matches!(r.outcome, Outcome::Refused { .. }), "refused during a one-worker stall: {r:?}");
    }
    eprintln!(
        "worker stall: {} requests, {} during the 10 s stall ({completed_during} completed), broken: {:?}, w2 serving again {back_after:?} after the heal",
        records.len(),
        during.len(),
        broken(&records)
    );
    assert_books(&net, &records, outage).await;
    net.stop.cancel();
    db.drop_it().await;
}

/// A small filesystem of the test's own (tmpfs), for filling. `None` where this process may
/// not mount (not root, or no CAP_SYS_ADMIN in its container).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }

    /// Removes the filler file.
    fn free(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The embedded ledger's disk fills up under load (its data dir on an 8 MiB tmpfs, filled
/// by another file for 3 s, then freed). Requests are refused with 503 `billing_unavailable`
/// and `Retry-After` (an answer whose capture could not be kept either is withheld, not
/// given away), nothing hangs, SQLite's own integrity check passes, and service resumes
/// once space frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_ledgers_disk_filling_up_is_a_clear_error_without_corruption() {
    let Some(disk) = SmallDisk::mount(8 << 20) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk-full case is not exercised");
        return;
    };
    let data = disk.dir.path().to_path_buf();
    let db_file = data.join("ledger.db");
    let net = Arc::new(network_via(&format!("sqlite:{}?mode=rwc", db_file.display()), |c| c.data_dir = data.clone(), None).await);
    let fill = |full: bool| {
        if full {
            disk.fill();
        } else {
            disk.free();
        }
        std::future::ready(())
    };
    let (records, outage, ()) = under_load(&net, Duration::from_secs(3), fill, || tokio::time::sleep(Duration::from_secs(5))).await;
    let refused = refusals(&records, "billing_unavailable", 1, None);
    // A stream whose capture could not be kept ends with the same error as an event.
    for why in broken(&records) {
        assert!(why.contains("billing_unavailable"), "{why}");
    }
    eprintln!(
        "sqlite disk full: {} requests, {} refused (503 billing_unavailable), broken: {:?}",
        records.len(),
        refused.len(),
        broken(&records)
    );
    assert_books(&net, &records, outage).await;
    let mut conn = sqlx::AnyConnection::connect(&format!("sqlite:{}", db_file.display())).await.unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
    assert_eq!(check, "ok", "SQLite integrity check after the disk filled up");
    drop(conn);
    net.stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// One replica of two `cocoon gateway` processes (shared Postgres and Redis, one worker
/// each) is SIGKILLed under load. Its clients' requests end at once (a cut stream, a refused
/// connection), never a hang; the other replica serves every one of its clients throughout;
/// the dead replica's open holds are released by the survivor's reaper; every completed answer
/// is charged once and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_gateway_replica_under_load_leaves_the_other_serving_and_the_books_whole() {
    use std::io::BufRead;
    let db = common::PgDb::create("cocoon_chaos").await;
    let redis = Redis::start();
    // Keys, prices and credit live in the shared database: both replicas see them.
    let ledger = billing::Ledger::connect(&db.url, billing::LedgerOptions::default()).await.unwrap();
    ledger.set_price(MODEL, Price { prompt: 1_000_000_000, cached_prompt: 0, completion: 2_000_000_000, reasoning: 0 }).await.unwrap();
    let client = ledger.ensure_account(AccountKind::Client, ACCOUNT).await.unwrap();
    ledger.credit(client, 1_000_000_000_000, "seed", "chaos").await.unwrap();
    let keys = gateway::keys::KeyStore::open(ledger.clone()).await.unwrap();
    let key = keys.create("chaos", ACCOUNT, None).await.unwrap().key;

    let stop = CancellationToken::new();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let mut child = std::process::Command::new(common::cocoon_bin())
            .arg("gateway")
            .env("COCOON__ENVIRONMENT", "development")
            .env("COCOON__DATA_DIR", dir.path())
            .env("COCOON__LOG", "warn")
            .env("COCOON__GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
            .env("COCOON__GATEWAY__METRICS_LISTEN", "127.0.0.1:0")
            .env("COCOON__GATEWAY__REDIS_URL", redis.url())
            .env("COCOON__ROUTER__REDIS_URL", redis.url())
            .env("COCOON__ROUTER__INSTANCE_ID", format!("replica-{i}"))
            .env("COCOON__ROUTER__WORKER_LISTEN", "127.0.0.1:0")
            .env("COCOON__BILLING__DATABASE_URL", &db.url)
            .env("COCOON__BILLING__HOLD_TTL_SECS", "3")
            .env("COCOON__BILLING__REAP_INTERVAL_SECS", "1")
            .env("COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE", "true")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut workers, mut pin) = (None, None);
        while workers.is_none() || pin.is_none() {
            let line = lines.next().expect("cocoon gateway exited before it was up").unwrap();
            if let Some(u) = line.strip_prefix("workers:") {
                workers = Some(u.trim().to_string());
            } else if let Some((_, hex)) = line.split_once("router certificate SHA-256 (set as worker.router_cert_sha256): ") {
                pin = Some(hex.trim().to_string());
            }
        }
        // Its worker (built-in test engine, simulated TEE) dials this replica.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let engine_url = format!("http://{}", listener.local_addr().unwrap());
        let s = stop.clone();
        tokio::spawn(test_engine::serve(listener, test_engine::TestEngine::new(test_engine::EngineConfig::default()), async move { s.cancelled().await }));
        let agent = worker_agent::WorkerAgent::new(
            worker_agent::WorkerConfig { worker_id: format!("w{i}"), engine_url, health_interval_ms: 200, ..Default::default() },
            worker_agent::WorkerTee::simulated().unwrap(),
        )
        .unwrap();
        let link = worker_agent::net::RouterLink { url: workers.unwrap(), cert_sha256: pin.unwrap() };
        tokio::spawn(worker_agent::net::run(agent, link, Duration::from_secs(10), stop.clone()));
        let base = format!("http://127.0.0.1:{port}/v1");
        let t0 = Instant::now();
        while common_http_status(&format!("http://127.0.0.1:{port}/readyz")).await != Some(200) {
            assert!(t0.elapsed() < Duration::from_secs(20), "replica {i} never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replicas.push((child, base, dir));
    }

    // Two clients per replica.
    let meter = Arc::new(cocoon::metering::LedgerMeter::new(ledger.clone(), Duration::from_secs(3)));
    let mut loads = Vec::new();
    let load_stop = CancellationToken::new();
    for (_, base, _) in &replicas {
        let net = Arc::new(Net {
            base: base.clone(),
            key: key.clone(),
            ledger: ledger.clone(),
            meter: meter.clone(),
            router: None,
            engines: Vec::new(),
            stop: stop.clone(),
            _dir: None,
        });
        loads.push((net.clone(), load(net, 2, load_stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Duration::from_secs(2);
    let (mut dead, _, _) = replicas.remove(0);
    dead.kill().unwrap();
    let _ = dead.wait();
    tokio::time::sleep(Duration::from_secs(4)).await;
    load_stop.cancel();
    let mut per_replica = Vec::new();
    for (net, (records, tasks)) in loads {
        for t in tasks {
            t.await.unwrap();
        }
        per_replica.push((net, records.lock().unwrap().clone()));
    }

    // The killed replica: everything ended fast, nothing hung; after the kill, refused.
    let (_, a) = &per_replica[0];
    for r in a {
        assert!(r.took < Duration::from_secs(5), "a client of the killed replica waited {:?}: {r:?}", r.took);
    }
    let a_after: Vec<&Record> = a.iter().filter(|r| r.at > killed_at + Duration::from_millis(500)).collect();
    assert!(!a_after.is_empty() && a_after.iter().all(|r| matches!(r.outcome, Outcome::Broken(_))), "{a_after:?}");
    // The survivor: every request completed, before and after the kill.
    let (_, b) = &per_replica[1];
    assert!(b.len() >= 10);
    for r in b {
        assert!(matches!(r.outcome, Outcome::Completed { .. }), "the surviving replica failed a request: {r:?}");
    }
    eprintln!(
        "replica killed: its clients sent {} requests ({} completed before the kill, {} cut or refused); the survivor completed {} of {}",
        a.len(),
        a.iter().filter(|r| matches!(r.outcome, Outcome::Completed { .. })).count(),
        a.iter().filter(|r| matches!(r.outcome, Outcome::Broken(_))).count(),
        b.iter().filter(|r| matches!(r.outcome, Outcome::Completed { .. })).count(),
        b.len()
    );
    // The dead replica's open holds are released by the survivor's reaper (TTL 3 s).
    let t0 = Instant::now();
    loop {
        let bal = ledger.balance(client).await.unwrap();
        if bal.held == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "holds of the killed replica were never released: {bal:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every answer a client saw complete, on either replica, charged once.
    let mut seen = std::collections::HashSet::new();
    for (_, records) in &per_replica {
        for r in records {
            if let Outcome::Completed { job, cost } = &r.outcome {
                assert!(seen.insert(*job));
                let receipt = ledger.receipt(*job).await.unwrap().unwrap_or_else(|| panic!("completed job {job} not charged"));
                if let Some(c) = cost {
                    assert_eq!(receipt.billed.charge, *c);
                }
            }
        }
    }
    assert!(ledger.check().await.unwrap().is_empty());
    for (mut child, _, _) in replicas {
        let _ = child.kill();
        let _ = child.wait();
    }
    stop.cancel();
    drop(redis);
    db.drop_it().await;
}

async fn common_http_status(url: &str) -> Option<u16> {
    reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok().map(|r| r.status().as_u16())
}
