//! The router side of collateral and admission: replicas sharing one collateral fetch through
//! the real Redis, a policy replaced while running applying at the next re-challenge, and the
//! handshake deadline naming the side that timed out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use attestation::collateral::replay::ReplayServer;
use attestation::{
    CollateralConfig, CollateralService, Evidence, EvidenceProducer, JobOpener, Nonce, Policy,
    QuoteCollateralV3, SimulatedKey, SnpEvidence, SnpProduct, TdxEvidence, Verifier,
};
use futures::StreamExt;
use protocol::{ModelInfo, RouterToWorker, WorkerInfo, WorkerToRouter};
use router::{Attestor, LinkError, RedisCollateralShare, Router, RouterConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379/";
const TDX_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/tdx_quote");
const TDX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/tdx_quote_collateral.json");
const SNP_REPORT_HEX: &str = include_str!("../../attestation/testdata/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../../attestation/testdata/vcek_milan.der");
/// Inside the sample TDX collateral's window (2025-06-19 .. 2025-07-19).
const TDX_NOW: u64 = 1_751_328_000; // 2025-07-01
const SNP_NOW: u64 = 1_760_000_000;

async fn replica(url: &str, prefix: &str) -> CollateralService {
    let share = tokio::time::timeout(Duration::from_secs(5), RedisCollateralShare::connect(REDIS, prefix))
        .await
        .expect("connecting to Redis at 127.0.0.1:6379 timed out (scripts/ensure-services starts it)")
        .expect("Redis at 127.0.0.1:6379 (scripts/ensure-services starts it)");
    CollateralService::new(CollateralConfig {
        pccs_url: url.into(),
        kds_url: url.into(),
        fetch_timeout_ms: 2_000,
        ..CollateralConfig::default()
    })
    .unwrap()
    .with_shared(Arc::new(share))
}

#[tokio::test]
async fn two_replicas_share_one_fetch_per_fmspc_and_per_chip() {
    let server = ReplayServer::start().await.unwrap();
    let collateral: QuoteCollateralV3 = serde_json::from_slice(TDX_COLLATERAL).unwrap();
    server.serve_tdx(collateral);
    let report = hex::decode(SNP_REPORT_HEX.trim()).unwrap();
    let parsed = attestation::parse_snp_report(&report).unwrap();
    let t = &parsed.reported_tcb;
    server.serve_vcek("Milan", &hex::encode(parsed.chip_id), [t.bootloader, t.tee, t.snp, t.microcode], SNP_VCEK.to_vec());
    let prefix = format!("test-collateral-{}", uuid::Uuid::new_v4().simple());
    let (a, b) = (replica(&server.url(), &prefix).await, replica(&server.url(), &prefix).await);

    let tdx = Evidence::Tdx(TdxEvidence { quote: TDX_QUOTE.to_vec(), collateral: None });
    let (ra, rb) = tokio::time::timeout(
        Duration::from_secs(30),
        async { tokio::join!(a.resolve(&tdx, &[], TDX_NOW), b.resolve(&tdx, &[], TDX_NOW)) },
    )
    .await
    .expect("both replicas resolve within 30 s");
    let (ea, ua) = ra.unwrap();
    let (eb, ub) = rb.unwrap();
    assert_eq!(ea, eb, "both replicas use the same collateral");
    assert_eq!(ua.unwrap().fetched_at, ub.unwrap().fetched_at);
    assert_eq!(server.hits_matching("/tdx/certification/v4/tcb"), 1, "one fetch for two replicas: {:?}", server.hits());
    assert_eq!(server.hits_matching("/certification/v4/pckcrl"), 1);

    let snp = Evidence::SevSnp(SnpEvidence { report, vcek: Vec::new() });
    let products = [SnpProduct::Milan];
    let (ra, rb) = tokio::time::timeout(
        Duration::from_secs(30),
        async { tokio::join!(a.resolve(&snp, &products, SNP_NOW), b.resolve(&snp, &products, SNP_NOW)) },
    )
    .await
    .expect("both replicas resolve within 30 s");
    ra.unwrap();
    rb.unwrap();
    assert_eq!(server.hits_matching("/vcek/v1/Milan/"), 1, "one KDS request for two replicas: {:?}", server.hits());
    // Both publish freshness: the status lists the same entries.
    assert_eq!(a.status(TDX_NOW).len(), 2);
    assert_eq!(b.status(TDX_NOW).len(), 2, "the second replica took both from Redis");
}

/// A worker that answers every challenge with simulated evidence; returns the router's side.
fn spawn_worker(router: &Router, answer: bool) -> (tokio::task::JoinHandle<Result<(), LinkError>>, Arc<tokio::sync::Mutex<Option<String>>>) {
    let (to_worker, mut from_router) = mpsc::channel::<RouterToWorker>(16);
    let (to_router, events) = mpsc::channel::<WorkerToRouter>(16);
    let r = router.clone();
    let serve = tokio::spawn(async move {
        r.serve_link(to_worker, ReceiverStream::new(events).map(Ok), attestation::spki_sha256(b""), None, CancellationToken::new())
            .await
    });
    let refused = Arc::new(tokio::sync::Mutex::new(None));
    let rf = refused.clone();
    tokio::spawn(async move {
        let tee = EvidenceProducer::simulated().unwrap();
        let keys = JobOpener::generate().unwrap();
        let _keep_open = to_router.clone();
        while let Some(msg) = from_router.recv().await {
            match msg {
                RouterToWorker::Challenge { nonce } if answer => {
                    let nonce = Nonce(nonce.as_ref().try_into().unwrap());
                    let att = tee.attest(keys.public_key(), b"", nonce, attestation::unix_now()).unwrap();
                    let info = WorkerInfo {
                        worker_id: "w".into(),
                        models: vec![ModelInfo { id: "m".into(), ..Default::default() }],
                        gpu: "test".into(),
                        slots: 1,
                        price_coefficient: 1000,
                        attestation: Some(serde_json::to_vec(&att).unwrap().into()),
                    };
                    to_router.send(WorkerToRouter::Hello(info)).await.unwrap();
                }
                RouterToWorker::Refused { reason } => *rf.lock().await = Some(reason),
                _ => {}
            }
        }
    });
    (serve, refused)
}

#[tokio::test]
async fn a_policy_replaced_while_running_applies_at_the_next_re_challenge() {
    let policy = Policy { cache_ttl_secs: 4, ..Policy::insecure_dev() };
    let attestor = Attestor::new(Verifier::new(policy.clone()), Arc::new(attestation::MemoryNonceStore::new()), true);
    let r = Router::new(RouterConfig::default(), Arc::new(attestor));
    let (serve, refused) = spawn_worker(&r, true);
    for _ in 0..400 {
        if !r.snapshot().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.snapshot().len(), 1, "admitted under the first policy");
    // Raised without a restart: only a key this worker does not have may sign simulated
    // evidence. Nothing happens to the live link until it is re-challenged (at 3/4 of 4 s).
    r.attestor().set_policy(Policy { simulated_tee_keys: vec![SimulatedKey([9; 32])], ..policy });
    assert_eq!(r.attestor().policy().simulated_tee_keys.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.snapshot().len(), 1, "still attached before the re-challenge");
    let end = tokio::time::timeout(Duration::from_secs(10), serve).await.expect("re-challenged within 10 s").unwrap();
    let e = end.unwrap_err();
    let reason = refused.lock().await.clone().unwrap();
    assert!(reason.contains("(simulated_key)"), "{reason}");
    eprintln!("re-challenge under the new policy: {e}");
    assert!(r.snapshot().is_empty());
}

#[tokio::test]
async fn the_handshake_deadline_is_config_and_names_the_router_side() {
    let cfg = RouterConfig { hello_timeout_ms: 1_000, ..RouterConfig::default() };
    let r = Router::new(cfg, Arc::new(Attestor::insecure_dev()));
    let (serve, _) = spawn_worker(&r, false);
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), serve).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(e, LinkError::HelloTimeout { after } if after == Duration::from_secs(1)), "{e}");
    assert!(e.to_string().starts_with("router side timed out"), "{e}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    eprintln!("hello timeout: {e}");
    assert_eq!(RouterConfig::default().hello_timeout_ms, 90_000);
}
