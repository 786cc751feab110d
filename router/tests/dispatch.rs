//! Dispatch against scripted in-process workers: retries before the first event only,
//! circuit breaking, cancel on drop, selection by load and price.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use protocol::{Endpoint, Job, JobError, JobEvent, ModelInfo, RouterToWorker, WorkerInfo, WorkerToRouter};
use router::{Attestor, DispatchOptions, RouteError, Router, RouterConfig};
use uuid::Uuid;

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Streams 3 chunks then Done.
    Good,
    /// Fails before any event (retryable).
    FailFast,
    /// Never answers.
    Stall,
    /// Sends one chunk, then fails.
    FailMidStream,
    /// Streams slowly until cancelled.
    Slow,
}

struct Worker {
    jobs: Arc<AtomicU32>,
    cancels: Arc<AtomicU32>,
    _task: tokio::task::JoinHandle<()>,
}

fn info(id: &str, price: u32) -> WorkerInfo {
    WorkerInfo {
        worker_id: id.into(),
        models: vec![ModelInfo { id: "m".into(), ..Default::default() }],
        gpu: "test".into(),
        slots: 8,
        price_coefficient: price,
        attestation: None,
    }
}

/// A simulated-TEE worker verified the way the router verifies one (these tests drive the
/// registry directly; the challenge flow and sealing are covered in tests/sealed.rs).
fn verified() -> attestation::VerifiedWorker {
    use attestation::{EvidenceProducer, JobOpener, Nonce, Policy, Verifier};
    let tee = EvidenceProducer::simulated().unwrap();
    let keys = JobOpener::generate().unwrap();
    let nonce = Nonce::random().unwrap();
    let now = attestation::unix_now();
    let att = tee.attest(keys.public_key(), b"", nonce, now).unwrap();
    Verifier::new(Policy::insecure_dev()).verify_attestation(&att, &nonce, now).unwrap()
}

fn router(cfg: RouterConfig) -> Router {
    // Jobs in clear: these scripted workers do not open sealed jobs.
    Router::new(cfg, Arc::new(Attestor::insecure_dev().with_sealing(false)))
}

fn spawn_worker(router: &Router, id: &str, price: u32, b: Behaviour) -> Worker {
    spawn_with(router, info(id, price), b)
}

fn spawn_with(router: &Router, info: WorkerInfo, b: Behaviour) -> Worker {
    let (session, mut rx) = router.attach(info, verified()).unwrap();
    let jobs = Arc::new(AtomicU32::new(0));
    let cancels = Arc::new(AtomicU32::new(0));
    let (j, c) = (jobs.clone(), cancels.clone());
    let session = Arc::new(session);
    let task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                RouterToWorker::Cancel { .. } => {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                RouterToWorker::Challenge { .. }
                | RouterToWorker::Credit { .. }
                | RouterToWorker::Attest { .. }
                | RouterToWorker::Refused { .. }
                | RouterToWorker::Session { .. } => {}
                RouterToWorker::Job(job) => {
                    j.fetch_add(1, Ordering::SeqCst);
                    let s = session.clone();
                    tokio::spawn(async move {
                        let send = |ev| s.handle(WorkerToRouter::Event { job_id: job.id, event: ev });
                        let chunk = || JobEvent::Chunk { data: Bytes::from_static(b"{}") };
                        match b {
                            Behaviour::Good => {
                                for _ in 0..3 {
                                    send(chunk());
                                }
                                send(JobEvent::Done { usage: None });
                            }
                            Behaviour::FailFast => send(JobEvent::Failed {
                                error: JobError::new(502, "engine down", true),
                                usage: None,
                            }),
                            Behaviour::Stall => {}
                            Behaviour::FailMidStream => {
                                send(chunk());
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                send(JobEvent::Failed { error: JobError::new(502, "died", false), usage: None });
                            }
                            Behaviour::Slow => {
                                for _ in 0..1000 {
                                    send(chunk());
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                        }
                    });
                }
            }
        }
    });
    Worker { jobs, cancels, _task: task }
}

fn job() -> Job {
    Job { id: Uuid::new_v4(), endpoint: Endpoint::ChatCompletions, model: "m".into(), stream: true, body: Bytes::new(), e2e: None }
}

fn cfg() -> RouterConfig {
    RouterConfig { first_token_timeout_ms: 200, circuit_failure_threshold: 2, circuit_open_ms: 300, ..Default::default() }
}

async fn drain(mut s: router::JobStream) -> Vec<JobEvent> {
    let mut out = Vec::new();
    while let Some(ev) = s.next().await {
        out.push(ev);
    }
    out
}

#[tokio::test]
async fn unknown_model_and_no_worker() {
    let r = router(cfg());
    assert!(matches!(r.dispatch(job(), DispatchOptions::default()).await, Err(RouteError::ModelNotFound(_))));
}

#[tokio::test]
async fn retries_on_another_worker_before_the_first_event() {
    let r = router(RouterConfig { max_attempts: 3, ..cfg() });
    let bad = spawn_worker(&r, "bad", 1000, Behaviour::FailFast);
    let stall = spawn_worker(&r, "stall", 1000, Behaviour::Stall);
    let good = spawn_worker(&r, "good", 1000, Behaviour::Good);
    for _ in 0..5 {
        let s = r.dispatch(job(), DispatchOptions::default()).await.expect("a retry must reach the good worker");
        assert_eq!(s.worker_id(), "good");
        let evs = drain(s).await;
        assert_eq!(evs.len(), 4);
        assert!(matches!(evs.last(), Some(JobEvent::Done { .. })));
    }
    assert_eq!(good.jobs.load(Ordering::SeqCst), 5);
    // The stalled worker got a cancel for every job it timed out on.
    assert_eq!(stall.cancels.load(Ordering::SeqCst), stall.jobs.load(Ordering::SeqCst));
    // A broken worker that failed threshold (2) times in a row is circuit-broken.
    let snap = r.snapshot();
    for (name, w) in [("bad", &bad), ("stall", &stall)] {
        let open = snap.iter().find(|s| s.worker_id == name).unwrap().circuit_open;
        assert_eq!(open, w.jobs.load(Ordering::SeqCst) >= 2, "{name}");
    }
}

#[tokio::test]
async fn never_retries_after_the_first_event() {
    let r = router(cfg());
    let w = spawn_worker(&r, "mid", 1000, Behaviour::FailMidStream);
    let _good = spawn_worker(&r, "good", 1000, Behaviour::Good);
    // Route to "mid" by making "good" unavailable for price reasons.
    let s = r.dispatch(job(), DispatchOptions::default()).await;
    let s = match s {
        Ok(s) if s.worker_id() == "mid" => s,
        // p2c may pick "good"; keep trying until "mid" is chosen.
        _ => loop {
            let s = r.dispatch(job(), DispatchOptions::default()).await.unwrap();
            if s.worker_id() == "mid" {
                break s;
            }
            drain(s).await;
        },
    };
    let evs = drain(s).await;
    assert!(matches!(evs[0], JobEvent::Chunk { .. }));
    assert!(matches!(evs.last(), Some(JobEvent::Failed { .. })), "the failure is surfaced, not retried");
    assert_eq!(evs.len(), 2);
    assert!(w.jobs.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn circuit_opens_then_half_open_probe_closes_it() {
    let r = router(RouterConfig { max_attempts: 1, ..cfg() });
    let _w = spawn_worker(&r, "flaky", 1000, Behaviour::FailFast);
    for _ in 0..2 {
        assert!(matches!(r.dispatch(job(), DispatchOptions::default()).await, Err(RouteError::Job(_))));
    }
    // Open: no candidate at all.
    assert!(matches!(r.dispatch(job(), DispatchOptions::default()).await, Err(RouteError::NoCapacity(_))));
    assert_eq!(r.available_workers(), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(r.available_workers(), 1, "half-open after the cool-down");
    // The probe fails again -> open again.
    assert!(matches!(r.dispatch(job(), DispatchOptions::default()).await, Err(RouteError::Job(_))));
    assert_eq!(r.available_workers(), 0);
}

#[tokio::test]
async fn dropping_the_stream_cancels_at_the_worker() {
    let r = router(cfg());
    let w = spawn_worker(&r, "slow", 1000, Behaviour::Slow);
    let mut s = r.dispatch(job(), DispatchOptions::default()).await.unwrap();
    s.next().await.unwrap();
    s.next().await.unwrap();
    assert_eq!(r.snapshot()[0].running, 1);
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(w.cancels.load(Ordering::SeqCst), 1);
    assert_eq!(r.snapshot()[0].running, 0);
}

#[tokio::test]
async fn price_cap_excludes_expensive_workers() {
    let r = router(cfg());
    let _cheap = spawn_worker(&r, "cheap", 1000, Behaviour::Good);
    let _dear = spawn_worker(&r, "dear", 3000, Behaviour::Good);
    for _ in 0..10 {
        let s = r.dispatch(job(), DispatchOptions { max_price_coefficient: Some(1500), ..Default::default() }).await.unwrap();
        assert_eq!(s.worker_id(), "cheap");
        drain(s).await;
    }
    let r2 = router(cfg());
    let _d = spawn_worker(&r2, "dear", 3000, Behaviour::Good);
    assert!(matches!(
        r2.dispatch(job(), DispatchOptions { max_price_coefficient: Some(1500), ..Default::default() }).await,
        Err(RouteError::NoCapacity(_))
    ));
}

/// #15: a request needing a capability (here json_schema) goes only to workers that do not
/// report lacking it; with only lacking workers it is not dispatched at all.
#[tokio::test]
async fn requests_needing_a_capability_go_to_workers_that_have_it() {
    use protocol::{Capability, Needs};
    let r = router(cfg());
    let mut plain = info("plain", 1000);
    plain.models[0].json_schema = Some(false);
    plain.models[0].multiple_choices = Some(false);
    let mut able = info("able", 1000);
    able.models[0].json_schema = Some(true);
    let _p = spawn_with(&r, plain.clone(), Behaviour::Good);
    let _a = spawn_with(&r, able, Behaviour::Good);
    let needs = Needs::default().with(Capability::JsonSchema);
    for _ in 0..10 {
        let s = r.dispatch(job(), DispatchOptions { needs, ..Default::default() }).await.unwrap();
        assert_eq!(s.worker_id(), "able");
        drain(s).await;
    }
    assert_eq!(r.capability("m", Capability::JsonSchema), Some(true));
    // One lacks it and the other does not say: unknown, so not refused up front.
    assert_eq!(r.capability("m", Capability::MultipleChoices), None);
    assert_eq!(r.capability("m", Capability::Logprobs), None);

    let r2 = router(cfg());
    let _only = spawn_with(&r2, plain, Behaviour::Good);
    assert_eq!(r2.capability("m", Capability::JsonSchema), Some(false));
    assert!(matches!(r2.dispatch(job(), DispatchOptions { needs, ..Default::default() }).await, Err(RouteError::NoCapacity(_))));
    assert!(r2.dispatch(job(), DispatchOptions::default()).await.is_ok(), "a request not needing it is served");
}

#[tokio::test]
async fn load_spreads_over_idle_workers() {
    let r = router(cfg());
    let a = spawn_worker(&r, "a", 1000, Behaviour::Slow);
    let b = spawn_worker(&r, "b", 1000, Behaviour::Slow);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(r.dispatch(job(), DispatchOptions::default()).await.unwrap());
    }
    let (ja, jb) = (a.jobs.load(Ordering::SeqCst), b.jobs.load(Ordering::SeqCst));
    assert_eq!(ja + jb, 8);
    assert!(ja >= 2 && jb >= 2, "p2c on load should spread jobs: a={ja} b={jb}");
}

#[tokio::test]
async fn worker_disconnect_fails_its_streams_and_removes_it() {
    let r = router(cfg());
    let (session, _rx) = r.attach(info("gone", 1000), verified()).unwrap();
    let id = Uuid::new_v4();
    let j = Job { id, ..job() };
    let r2 = r.clone();
    let pending = tokio::spawn(async move { r2.dispatch(j, DispatchOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    session.handle(WorkerToRouter::Event { job_id: id, event: JobEvent::Chunk { data: Bytes::from_static(b"{}") } });
    let s = pending.await.unwrap().unwrap();
    drop(session);
    let evs = drain(s).await;
    assert!(matches!(evs.last(), Some(JobEvent::Failed { .. })));
    assert!(r.models().is_empty());
}

/// #14: what a request asks of the registry per model (does anyone serve it, its context
/// length, a capability, whether a simulated TEE may serve it) follows workers attaching and
/// detaching.
#[tokio::test]
async fn the_model_facts_follow_attach_and_detach() {
    use protocol::Capability;
    let r = router(cfg());
    let mut small = info("small", 1000);
    small.models[0].max_model_len = Some(4096);
    small.models[0].tool_calls = Some(false);
    let mut big = info("big", 1000);
    big.models[0].max_model_len = Some(8192);
    big.models[0].tool_calls = Some(true);
    big.models.push(ModelInfo { id: "m2".into(), max_model_len: Some(1024), ..Default::default() });
    let (s_small, _rx1) = r.attach(small, verified()).unwrap();
    let (s_big, _rx2) = r.attach(big, verified()).unwrap();
    assert_eq!(r.context_len("m"), Some(4096), "the smallest every worker can hold");
    assert_eq!(r.capability("m", Capability::ToolCalls), Some(true));
    assert!(r.knows_model("m2") && r.serves_simulated("m2"));
    assert_eq!(r.context_len("m2"), Some(1024));
    assert!(r.worker_serves("big", "m2") && !r.worker_serves("small", "m2"));

    drop(s_big);
    assert_eq!(r.context_len("m"), Some(4096));
    assert_eq!(r.capability("m", Capability::ToolCalls), Some(false), "only a worker lacking tools is left");
    assert!(!r.knows_model("m2") && !r.serves_simulated("m2"));
    assert_eq!(r.context_len("m2"), None);
    drop(s_small);
    assert!(!r.knows_model("m"));
    assert_eq!(r.capability("m", Capability::ToolCalls), None);
}

/// #14: in a fleet larger than the pick's random probes, jobs still go only to eligible
/// workers (the probes fall back to a scan when few are), and spread over all of them.
#[tokio::test]
async fn a_large_fleet_picks_only_eligible_workers_and_spreads_over_them() {
    let r = router(cfg());
    let mut workers = Vec::new();
    for i in 0..40 {
        workers.push(spawn_worker(&r, &format!("w{i}"), 3000, Behaviour::Good));
    }
    let _cheap = [spawn_worker(&r, "cheap-a", 1000, Behaviour::Good), spawn_worker(&r, "cheap-b", 1000, Behaviour::Good)];
    let mut cheap_seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let s = r.dispatch(job(), DispatchOptions { max_price_coefficient: Some(1500), ..Default::default() }).await.unwrap();
        assert!(s.worker_id().starts_with("cheap-"), "{} is above the cap", s.worker_id());
        cheap_seen.insert(s.worker_id().to_owned());
        drain(s).await;
    }
    assert_eq!(cheap_seen.len(), 2, "both eligible workers get jobs");
    for _ in 0..400 {
        drain(r.dispatch(job(), DispatchOptions::default()).await.unwrap()).await;
    }
    let busy = workers.iter().filter(|w| w.jobs.load(Ordering::SeqCst) > 0).count();
    // Uniform over 42 workers, 400 jobs: a given worker gets none with probability ~7e-5.
    assert!(busy >= 38, "jobs should spread over the fleet, {busy} of 40 got any");
}
