//! The full link as the router runs it ([`Router::serve_link`] over channels): challenge,
//! evidence, admission, jobs sealed to the attested key, sealed responses checked in order,
//! and every way a response stream can be tampered with failing the job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use attestation::{
    AttestationReport, EvidenceProducer, JobContext, JobOpener, LinkOpener, LinkSealedJob, Nonce,
    Policy, Verifier, WorkerAttestation,
};
use bytes::Bytes;
use futures::StreamExt;
use protocol::{
    wire, Endpoint, Job, JobEvent, ModelInfo, Payload, RouterToWorker, WorkerInfo, WorkerToRouter,
};
use router::{Attestor, DispatchOptions, RouteError, Router, RouterConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MARKER: &str = "zebra-marker-7f3a";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Honest,
    Reorder,
    Replay,
    Tamper,
    Plaintext,
    /// Final flag on a chunk that is not the terminal event.
    EarlyLast,
}

struct FakeWorker {
    to_router: mpsc::Sender<WorkerToRouter>,
    serve: tokio::task::JoinHandle<Result<(), router::LinkError>>,
    refused: Arc<tokio::sync::Mutex<Option<String>>>,
    keys: Arc<JobOpener>,
}

/// Spawns a worker that answers the challenge with simulated evidence (binding `attest_spki`)
/// and serves jobs per `mode`.
fn spawn(router: &Router, id: &str, mode: Mode, attest_spki: &'static [u8]) -> FakeWorker {
    let (to_worker, mut from_router) = mpsc::channel::<RouterToWorker>(64);
    let (to_router, events) = mpsc::channel::<WorkerToRouter>(64);
    let r = router.clone();
    let serve = tokio::spawn(async move {
        r.serve_link(
            to_worker,
            ReceiverStream::new(events).map(Ok),
            attestation::spki_sha256(b""),
            None,
            CancellationToken::new(),
        )
        .await
    });
    let tee = Arc::new(EvidenceProducer::simulated().unwrap());
    let keys = Arc::new(JobOpener::generate().unwrap());
    let refused = Arc::new(tokio::sync::Mutex::new(None));
    let (tx, k, rf, id) = (to_router.clone(), keys.clone(), refused.clone(), id.to_string());
    tokio::spawn(async move {
        let mut session: Option<LinkOpener> = None;
        while let Some(msg) = from_router.recv().await {
            match msg {
                RouterToWorker::Session { enc } => {
                    session = Some(k.open_link(enc.as_ref().try_into().unwrap()).unwrap());
                }
                RouterToWorker::Challenge { nonce } => {
                    let nonce = Nonce(nonce.as_ref().try_into().unwrap());
                    let att = tee.attest(k.public_key(), attest_spki, nonce, attestation::unix_now()).unwrap();
                    let info = WorkerInfo {
                        worker_id: id.clone(),
                        models: vec![ModelInfo { id: "m".into(), ..Default::default() }],
                        gpu: "test".into(),
                        slots: 8,
                        price_coefficient: 1000,
                        attestation: Some(serde_json::to_vec(&att).unwrap().into()),
                    };
                    tx.send(WorkerToRouter::Hello(info)).await.unwrap();
                }
                RouterToWorker::Attest { request_id, nonce } => {
                    let nonce = Nonce(nonce.as_ref().try_into().unwrap());
                    let att = tee.attest(k.public_key(), attest_spki, nonce, attestation::unix_now()).unwrap();
                    let attestation = Some(Bytes::from(serde_json::to_vec(&att).unwrap()));
                    tx.send(WorkerToRouter::Attestation { request_id, attestation, error: None }).await.unwrap();
                }
                RouterToWorker::Refused { reason } => {
                    *rf.lock().await = Some(reason);
                }
                RouterToWorker::Cancel { .. } | RouterToWorker::Credit { .. } => {}
                RouterToWorker::Job(env) => {
                    let Payload::LinkSealed { salt, ciphertext } = env.payload else {
                        panic!("the router sent a job in clear");
                    };
                    assert!(
                        !String::from_utf8_lossy(&ciphertext).contains(MARKER),
                        "the prompt is visible in the sealed job"
                    );
                    let sealed = LinkSealedJob { salt: salt.as_ref().try_into().unwrap(), ciphertext: ciphertext.to_vec() };
                    let link = session.as_ref().expect("the session precedes every job");
                    let (body, mut sealer) = link.open(&JobContext::new(env.id, env.model.clone()), &sealed).unwrap();
                    assert!(String::from_utf8_lossy(&body).contains(MARKER));
                    let events = [
                        JobEvent::Chunk { data: Bytes::from_static(b"{\"n\":0}") },
                        JobEvent::Chunk { data: Bytes::from_static(b"{\"n\":1}") },
                        JobEvent::Done { usage: None },
                    ];
                    let mut out = Vec::new();
                    for (i, ev) in events.iter().enumerate() {
                        let last = ev.is_terminal() || (mode == Mode::EarlyLast && i == 1);
                        if mode == Mode::EarlyLast && i == 2 {
                            break;
                        }
                        let c = sealer.seal(&wire::encode(ev).unwrap(), last).unwrap();
                        out.push(WorkerToRouter::SealedEvent { job_id: env.id, seq: c.seq, last: c.last, ciphertext: c.ciphertext.into() });
                    }
                    match mode {
                        Mode::Honest | Mode::EarlyLast => {}
                        Mode::Reorder => out.swap(1, 2),
                        Mode::Replay => out.insert(2, out[1].clone()),
                        Mode::Tamper => {
                            if let WorkerToRouter::SealedEvent { ciphertext, .. } = &mut out[1] {
                                let mut v = ciphertext.to_vec();
                                v[0] ^= 1;
                                *ciphertext = v.into();
                            }
                        }
                        Mode::Plaintext => {
                            out[1] = WorkerToRouter::Event { job_id: env.id, event: JobEvent::Chunk { data: Bytes::from_static(b"{}") } };
                        }
                    }
                    for m in out {
                        tx.send(m).await.unwrap();
                    }
                }
            }
        }
    });
    FakeWorker { to_router, serve, refused, keys }
}

fn router(policy: Policy) -> Router {
    let attestor = Attestor::new(Verifier::new(policy), Arc::new(attestation::MemoryNonceStore::new()), true);
    Router::new(RouterConfig { first_token_timeout_ms: 2_000, max_attempts: 1, ..Default::default() }, Arc::new(attestor))
}

fn job() -> Job {
    let body = format!("{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{MARKER}\"}}]}}");
    Job { id: Uuid::new_v4(), endpoint: Endpoint::ChatCompletions, model: "m".into(), stream: true, body: Bytes::from(body), e2e: None }
}

async fn admitted(r: &Router, id: &str) {
    for _ in 0..200 {
        if r.snapshot().iter().any(|w| w.worker_id == id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("worker {id} was not admitted");
}

async fn collect(r: &Router) -> Vec<JobEvent> {
    let s = r.dispatch(job(), DispatchOptions::default()).await.unwrap();
    assert!(s.sealed());
    assert!(s.insecure_simulated());
    s.collect().await
}

#[tokio::test]
async fn sealed_job_and_response_round_trip() {
    let r = router(Policy::insecure_dev());
    let _w = spawn(&r, "w", Mode::Honest, b"");
    admitted(&r, "w").await;
    let snap = &r.snapshot()[0];
    assert_eq!(snap.tee, "simulated");
    assert!(snap.insecure_simulated);
    let evs = collect(&r).await;
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert!(matches!(&evs[0], JobEvent::Chunk { data } if &data[..] == b"{\"n\":0}"));
    assert!(matches!(&evs[2], JobEvent::Done { .. }));
}

#[tokio::test]
async fn tampered_response_streams_fail_the_job() {
    for (mode, expect) in [
        (Mode::Reorder, "dropped or reordered"),
        (Mode::Replay, "replayed"),
        (Mode::Tamper, "failed authentication"),
        (Mode::Plaintext, "in clear"),
        (Mode::EarlyLast, "final flag"),
    ] {
        let r = router(Policy::insecure_dev());
        let _w = spawn(&r, "w", mode, b"");
        admitted(&r, "w").await;
        let evs = collect(&r).await;
        let Some(JobEvent::Failed { error, .. }) = evs.last() else {
            panic!("{mode:?}: expected a failure, got {evs:?}");
        };
        assert!(error.message.contains("integrity") && error.message.contains(expect), "{mode:?}: {}", error.message);
        // Whatever came before the bad chunk was authentic; nothing after it is relayed.
        assert!(evs[..evs.len() - 1].iter().all(|e| matches!(e, JobEvent::Chunk { .. })), "{mode:?}: {evs:?}");
        assert!(evs.len() <= 3, "{mode:?}: {evs:?}");
    }
}

#[tokio::test]
async fn workers_that_fail_attestation_are_refused() {
    // Simulated evidence under a policy that does not allow it.
    let r = router(Policy::default());
    let w = spawn(&r, "sim", Mode::Honest, b"");
    let err = w.serve.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("simulated_not_allowed"), "{err}");
    assert!(w.refused.lock().await.as_deref().unwrap_or("").contains("simulated_not_allowed"));
    assert!(r.snapshot().is_empty());
    assert!(matches!(r.dispatch(job(), DispatchOptions::default()).await, Err(RouteError::ModelNotFound(_))));

    // Evidence binding another TLS key than the connection's.
    let r = router(Policy::insecure_dev());
    let w = spawn(&r, "mitm", Mode::Honest, b"another tls key");
    let err = w.serve.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("tls_key"), "{err}");
}

#[tokio::test]
async fn a_replayed_hello_is_refused() {
    let r = router(Policy::insecure_dev());
    let first = spawn(&r, "a", Mode::Honest, b"");
    admitted(&r, "a").await;
    // Capture a valid hello by answering a second challenge ourselves, then replay it on a
    // new link: its nonce is spent.
    let (to_worker, mut from_router) = mpsc::channel::<RouterToWorker>(8);
    let (to_router, events) = mpsc::channel::<WorkerToRouter>(8);
    let r2 = r.clone();
    let serve = tokio::spawn(async move {
        r2.serve_link(to_worker, ReceiverStream::new(events).map(Ok), attestation::spki_sha256(b""), None, CancellationToken::new()).await
    });
    let Some(RouterToWorker::Challenge { nonce }) = from_router.recv().await else { panic!() };
    let tee = EvidenceProducer::simulated().unwrap();
    let nonce = Nonce(nonce.as_ref().try_into().unwrap());
    let att = tee.attest(first.keys.public_key(), b"", nonce, attestation::unix_now()).unwrap();
    let hello = |att: &WorkerAttestation| {
        WorkerToRouter::Hello(WorkerInfo {
            worker_id: "replay".into(),
            models: vec![],
            gpu: "x".into(),
            slots: 1,
            price_coefficient: 1000,
            attestation: Some(serde_json::to_vec(att).unwrap().into()),
        })
    };
    to_router.send(hello(&att)).await.unwrap();
    drop(to_router);
    // That link admits the worker; closing it detaches it again.
    let _ = serve.await.unwrap();
    // Same evidence on a fresh link: it answers the other link's nonce, not the one this
    // link sent, so it is refused before the nonce store is even asked.
    let (to_worker, mut from_router) = mpsc::channel::<RouterToWorker>(8);
    let (to_router, events) = mpsc::channel::<WorkerToRouter>(8);
    let r3 = r.clone();
    let serve = tokio::spawn(async move {
        r3.serve_link(to_worker, ReceiverStream::new(events).map(Ok), attestation::spki_sha256(b""), None, CancellationToken::new()).await
    });
    let _ = from_router.recv().await;
    to_router.send(hello(&att)).await.unwrap();
    let err = serve.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("(nonce)") && err.contains("was asked for"), "{err}");
    drop(first.to_router);
}

#[tokio::test]
async fn attestation_report_is_fresh_and_verifiable() {
    let r = router(Policy::insecure_dev());
    let _w = spawn(&r, "w", Mode::Honest, b"");
    admitted(&r, "w").await;
    let nonce = Nonce::random().unwrap();
    let created = attestation::unix_now();
    let answers = r.attest_workers("m", nonce.0, Duration::from_secs(5)).await;
    assert_eq!(answers.len(), 1);
    let att: WorkerAttestation = answers[0].1.clone().unwrap();
    let report = AttestationReport { nonce, model: Some("m".into()), policy: Policy::insecure_dev(), workers: vec![att], gateway: None };
    let verdict = attestation::verify_report(&Verifier::new(Policy::insecure_dev()), &report, &nonce, created, attestation::unix_now()).unwrap();
    assert!(verdict.all_ok() && verdict.any_simulated());
    // A client with a strict policy rejects the same report.
    let strict = attestation::verify_report(&Verifier::new(Policy::default()), &report, &nonce, created, attestation::unix_now()).unwrap();
    assert!(!strict.all_ok());
}

#[tokio::test]
async fn workers_are_re_challenged_on_the_live_link_before_their_attestation_expires() {
    let policy = Policy { cache_ttl_secs: 4, ..Policy::insecure_dev() };
    let r = router(policy);
    let w = spawn(&r, "w", Mode::Honest, b"");
    admitted(&r, "w").await;
    let first = r.snapshot()[0].attestation_expires_at;
    // Past the first verification's expiry: still attached, verified afresh, still serving.
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let snap = r.snapshot();
    if snap.is_empty() {
        panic!("link ended: {:?}", w.serve.await);
    }
    assert_eq!(snap.len(), 1, "the worker stays attached");
    assert!(snap[0].attestation_expires_at > first, "re-verified: {} > {first}", snap[0].attestation_expires_at);
    assert!(attestation::unix_now() >= first);
    let evs = collect(&r).await;
    assert!(matches!(evs.last(), Some(JobEvent::Done { .. })), "{evs:?}");
}
