//! Router cost per job as the fleet grows (issue #14, "cost as work grows").
//!
//! ```text
//! cargo run --release -p router --example select_scale -- [--workers 1,100,1000] [--jobs 200000] [--concurrency 32]
//! ```
//!
//! For each fleet size N, N in-process workers serving one model attach to one router (each
//! verified as the router verifies a simulated-TEE worker; jobs in clear, so sealing is not
//! part of the figure). Then C tasks keep dispatching jobs: per job the router answers what
//! the gateway asks before it dispatches (does a worker serve the model, its context length,
//! whether it can call tools), admits the job, picks a worker and relays its events (one
//! chunk and `Done`) back. Everything runs on one thread (a current-thread runtime), so the
//! wall time per job is the CPU the router plus these scripted workers spend on it; the
//! workers' share does not depend on N, so growth with N is the router's.
//!
//! Prints one JSON object per N on stdout and a readable line on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use protocol::{Capability, Endpoint, Job, JobEvent, ModelInfo, RouterToWorker, WorkerInfo, WorkerToRouter};
use router::{Attestor, DispatchOptions, Router, RouterConfig};
use uuid::Uuid;

struct Args {
    workers: Vec<usize>,
    jobs: usize,
    concurrency: usize,
}

fn parse_args() -> Args {
    let mut a = Args { workers: vec![1, 100, 1000], jobs: 200_000, concurrency: 32 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--workers" => a.workers = v.split(',').map(|n| n.trim().parse().expect("--workers N,N,…")).collect(),
            "--jobs" => a.jobs = v.parse().expect("--jobs N"),
            "--concurrency" => a.concurrency = v.parse::<usize>().expect("--concurrency N").max(1),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A simulated-TEE worker verified the way the router verifies one.
fn verified() -> attestation::VerifiedWorker {
    use attestation::{EvidenceProducer, JobOpener, Nonce, Policy, Verifier};
    let tee = EvidenceProducer::simulated().unwrap();
    let keys = JobOpener::generate().unwrap();
    let nonce = Nonce::random().unwrap();
    let now = attestation::unix_now();
    let att = tee.attest(keys.public_key(), b"", nonce, now).unwrap();
    Verifier::new(Policy::insecure_dev()).verify_attestation(&att, &nonce, now).unwrap()
}

/// Attaches a worker that answers every job at once with one chunk and `Done`.
fn attach(router: &Router, i: usize) -> tokio::task::JoinHandle<()> {
    let info = WorkerInfo {
        worker_id: format!("w{i}"),
        models: vec![ModelInfo { id: "m".into(), max_model_len: Some(8192), tool_calls: Some(true), ..Default::default() }],
        gpu: "test".into(),
        slots: 64,
        price_coefficient: 1000,
        attestation: None,
    };
    let (session, mut rx) = router.attach(info, verified()).unwrap();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let RouterToWorker::Job(job) = msg {
                let send = |event| session.handle(WorkerToRouter::Event { job_id: job.id, event });
                send(JobEvent::Chunk { data: Bytes::from_static(b"{}") });
                send(JobEvent::Done { usage: None });
            }
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

async fn measure(n: usize, args: &Args) -> serde_json::Value {
    let router = Router::new(RouterConfig::default(), Arc::new(Attestor::insecure_dev().with_sealing(false)));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..n).map(|i| attach(&router, i)).collect();
    let attach_s = t0.elapsed().as_secs_f64();
    // Warm-up, not measured.
    run(&router, args.concurrency, 2_000.min(args.jobs)).await;
    let start = Instant::now();
    let mut lat = run(&router, args.concurrency, args.jobs).await;
    let wall = start.elapsed();
    lat.sort_unstable();
    for w in workers {
        w.abort();
    }
    let per_job_us = wall.as_secs_f64() * 1e6 / args.jobs as f64;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    eprintln!(
        "{n:>5} workers: {:>8.0} jobs/s, {per_job_us:>6.2} µs per job (one thread), latency p50 {:>7.1} µs p99 {:>7.1} µs (attach {attach_s:.2} s)",
        args.jobs as f64 / wall.as_secs_f64(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
    );
    serde_json::json!({
        "workers": n,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "jobs_per_s": args.jobs as f64 / wall.as_secs_f64(),
        "us_per_job": per_job_us,
        "p50_us": p50.as_secs_f64() * 1e6,
        "p99_us": p99.as_secs_f64() * 1e6,
        "attach_s": attach_s,
    })
}

/// `jobs` jobs from `concurrency` tasks; each job's latency from the gateway's questions to
/// the last event.
async fn run(router: &Router, concurrency: usize, jobs: usize) -> Vec<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (router, next) = (router.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    let t = Instant::now();
                    // What the gateway asks per request before dispatching (inference.rs).
                    assert!(router.knows_model("m"));
                    assert_eq!(router.capability("m", Capability::ToolCalls), Some(true));
                    assert_eq!(router.context_len("m"), Some(8192));
                    let job = Job {
                        id: Uuid::now_v7(),
                        endpoint: Endpoint::ChatCompletions,
                        model: "m".into(),
                        stream: true,
                        body: Bytes::new(),
                        e2e: None,
                    };
                    let mut s = router.dispatch(job, DispatchOptions::default()).await.expect("dispatch");
                    while let Some(ev) = s.next().await {
                        if matches!(ev, JobEvent::Failed { .. }) {
                            panic!("job failed: {ev:?}");
                        }
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(jobs);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for &n in &args.workers {
            println!("{}", measure(n, &args).await);
        }
    });
}
