//! Workers that dial the router over TLS + WebSocket: routing, a worker dying mid-stream
//! (the client gets an OpenAI-shaped error event, never a hang; the next request goes to the
//! other worker), a stalled worker (requests retry on the healthy one), pin mismatch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Gateway {
    base: String,
    key: String,
    worker_url: String,
    pin: String,
    router: router::Router,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn gateway(first_token_timeout_ms: u64) -> Gateway {
    gateway_with(first_token_timeout_ms, true).await
}

async fn gateway_with(first_token_timeout_ms: u64, allow_simulated: bool) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cocoon::Config::default();
    cfg.data_dir = dir.path().into();
    cfg.gateway.listen = "127.0.0.1:0".into();
    cfg.router.worker_listen = Some("127.0.0.1:0".into());
    cfg.router.first_token_timeout_ms = first_token_timeout_ms;
    cfg.router.worker_liveness_ms = 2_000;
    cfg.billing.enabled = false; // routing under test; billing has its own tests
    // No TEE on a CI machine: workers attest with the simulated one, which must be allowed.
    cfg.attestation.policy.allow_insecure_simulated_tee = allow_simulated;
    let stop = CancellationToken::new();
    let router = router::Router::new(cfg.router.clone(), cfg.attestation.attestor(None).unwrap());
    let l = cocoon::roles::start_worker_listener(&cfg, router.clone(), stop.clone()).await.unwrap().unwrap();
    let gw = cocoon::roles::start_gateway(&cfg, router.clone(), stop.clone()).await.unwrap();
    let key = gw.keys.create("t", "acct", None).await.unwrap().key;
    Gateway {
        base: format!("http://{}/v1", gw.addr),
        key,
        worker_url: format!("wss://{}/v1/worker", l.addr),
        pin: l.cert_sha256,
        router,
        stop,
        _dir: dir,
    }
}

struct Worker {
    engine: Arc<test_engine::TestEngine>,
    link: JoinHandle<Result<(), String>>,
    stop: CancellationToken,
}

async fn worker(gw: &Gateway, id: &str, ttft_ms: u64, pin: &str) -> Worker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let engine = test_engine::TestEngine::new(test_engine::EngineConfig {
        ttft: Duration::from_millis(ttft_ms),
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(test_engine::serve(listener, engine.clone(), async move { s.cancelled().await }));
    let agent = worker_agent::WorkerAgent::new(worker_agent::WorkerConfig {
        worker_id: id.into(),
        engine_url: url,
        health_interval_ms: 200,
        ..Default::default()
    }, worker_agent::WorkerTee::simulated().unwrap())
    .unwrap();
    let link = worker_agent::net::RouterLink { url: gw.worker_url.clone(), cert_sha256: pin.into() };
    let link = tokio::spawn(worker_agent::net::run(agent, link, Duration::from_secs(10), stop.clone()));
    Worker { engine, link, stop }
}

async fn wait_workers(gw: &Gateway, n: usize) {
    for _ in 0..250 {
        if gw.router.snapshot().len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} workers, have {:?}", gw.router.snapshot());
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

async fn chat(gw: &Gateway, body: serde_json::Value) -> reqwest::Response {
    client().post(format!("{}/chat/completions", gw.base)).bearer_auth(&gw.key).json(&body).send().await.unwrap()
}

fn simple() -> serde_json::Value {
    json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
}

#[tokio::test]
async fn worker_dying_mid_stream_gives_an_error_event_and_traffic_moves_on() {
    let gw = gateway(5_000).await;
    let a = worker(&gw, "a", 0, &gw.pin).await;
    let b = worker(&gw, "b", 0, &gw.pin).await;
    wait_workers(&gw, 2).await;

    // A slow stream; find which worker serves it, then kill that worker's process-equivalent.
    let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "long"}], "stream": true,
        "max_tokens": 500, "test_engine": {"tokens_per_second": 50, "completion_tokens": 500}});
    let resp = chat(&gw, body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while text.matches("data: ").count() < 3 {
        text.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    let (victim, survivor) = if a.engine.stats().active.load(std::sync::atomic::Ordering::Relaxed) == 1 { (a, b) } else { (b, a) };
    victim.link.abort(); // the connection drops like a killed process's would
    victim.stop.cancel();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream hung after the worker died");
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let err: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert!(err["error"]["message"].as_str().unwrap().contains("worker"), "{err}");
    assert!(!text.contains("data: [DONE]"), "a dead worker's stream must not end as if complete");

    // The next requests go to the survivor.
    wait_workers(&gw, 1).await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, simple()).await.status(), 200);
    }
    assert!(survivor.engine.stats().requests_completed.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    gw.stop.cancel();
}

#[tokio::test]
async fn stalled_worker_is_skipped_for_the_healthy_one() {
    let gw = gateway(300).await;
    let _stalled = worker(&gw, "stalled", 60_000, &gw.pin).await;
    let healthy = worker(&gw, "healthy", 0, &gw.pin).await;
    wait_workers(&gw, 2).await;
    for _ in 0..6 {
        let r = chat(&gw, simple()).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(healthy.engine.stats().requests_completed.load(std::sync::atomic::Ordering::Relaxed), 6);
    // After its failures the stalled worker's circuit is open.
    let snap = gw.router.snapshot();
    let s = snap.iter().find(|w| w.worker_id == "stalled").unwrap();
    assert!(s.circuit_open || s.ewma_ttft_us == 0, "{snap:?}");
    gw.stop.cancel();
}

#[tokio::test]
async fn a_worker_with_the_wrong_pin_never_joins() {
    let gw = gateway(5_000).await;
    let w = worker(&gw, "impostor-check", 0, &"00".repeat(32)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.router.snapshot().is_empty());
    let r = chat(&gw, simple()).await;
    assert_eq!(r.status(), 404, "no worker serves the model");
    w.stop.cancel();
    gw.stop.cancel();
}

#[tokio::test]
async fn a_worker_without_acceptable_evidence_is_refused_over_mutual_tls() {
    // Production-like policy: the simulated TEE is not admitted, whatever the TLS says.
    let gw = gateway_with(5_000, false).await;
    let w = worker(&gw, "no-tee", 0, &gw.pin).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(gw.router.snapshot().is_empty(), "{:?}", gw.router.snapshot());
    let metrics = client().get(gw.base.replace("/v1", "/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("cocoon_router_workers_refused_total") && !l.ends_with(" 0")),
        "the refusal is counted"
    );
    let r = chat(&gw, simple()).await;
    assert_eq!(r.status(), 404, "no admitted worker serves the model");
    w.stop.cancel();
    gw.stop.cancel();
}
