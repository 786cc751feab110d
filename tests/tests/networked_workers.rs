//! Workers that dial the router over TLS + WebSocket: routing, a worker dying mid-stream
//! (the client gets an OpenAI-shaped error event, never a hang; the next request goes to the
//! other worker), a stalled worker (requests retry on the healthy one), pin mismatch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Gateway {
    base: String,
    metrics: String,
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
    gateway_cfg(first_token_timeout_ms, allow_simulated, |_| {}).await
}

async fn gateway_cfg(first_token_timeout_ms: u64, allow_simulated: bool, tweak: impl FnOnce(&mut cocoon::Config)) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cocoon::Config::default();
    cfg.environment = cocoon::config::Environment::Development;
    cfg.data_dir = dir.path().into();
    cfg.gateway.listen = "127.0.0.1:0".into();
    cfg.gateway.metrics_listen = Some("127.0.0.1:0".into());
    cfg.router.worker_listen = Some("127.0.0.1:0".into());
    cfg.router.first_token_timeout_ms = first_token_timeout_ms;
    cfg.router.worker_liveness_ms = 2_000;
    cfg.billing.enabled = false; // routing under test; billing has its own tests
    // No TEE on a CI machine: workers attest with the simulated one, which must be allowed.
    cfg.attestation.policy.allow_insecure_simulated_tee = allow_simulated;
    tweak(&mut cfg);
    let stop = CancellationToken::new();
    // As `cocoon gateway` builds it: worker-id bindings in the gateway's database.
    let router = cocoon::routing::start_router(&cfg, stop.clone()).await.unwrap();
    let l = cocoon::roles::start_worker_listener(&cfg, router.clone(), stop.clone()).await.unwrap().unwrap();
    let gw = cocoon::roles::start_gateway(&cfg, router.clone(), stop.clone()).await.unwrap();
    let key = gw.keys.create("t", "acct", None).await.unwrap().key;
    Gateway {
        base: format!("http://{}/v1", gw.addr),
        metrics: format!("http://{}/metrics", gw.metrics_addr.unwrap()),
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
    worker_with(gw, id, ttft_ms, pin, 1000).await
}

async fn worker_with(gw: &Gateway, id: &str, ttft_ms: u64, pin: &str, price_coefficient: u32) -> Worker {
    spawn_worker(gw, id, ttft_ms, pin, price_coefficient, None).await
}

/// A worker; `weights` is the digest it measured for the test model's weights, if any.
async fn spawn_worker(gw: &Gateway, id: &str, ttft_ms: u64, pin: &str, price_coefficient: u32, weights: Option<&str>) -> Worker {
    spawn_worker_at(&gw.worker_url, id, ttft_ms, pin, price_coefficient, weights).await
}

/// [`spawn_worker`] dialling `url` (e.g. a relay in front of the router).
async fn spawn_worker_at(router_url: &str, id: &str, ttft_ms: u64, pin: &str, price_coefficient: u32, weights: Option<&str>) -> Worker {
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
        price_coefficient,
        ..Default::default()
    }, worker_agent::WorkerTee::simulated().unwrap())
    .unwrap();
    if let Some(d) = weights {
        agent.set_model_digest("cocoon-test", d.into());
    }
    let link = worker_agent::net::RouterLink { url: router_url.to_string(), cert_sha256: pin.into() };
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
    // Streams: the first-token timeout is what moves a job off a worker that stays silent.
    let mut body = simple();
    body["stream"] = json!(true);
    for _ in 0..6 {
        let r = chat(&gw, body.clone()).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
    assert_eq!(healthy.engine.stats().requests_completed.load(std::sync::atomic::Ordering::Relaxed), 6);
    // After its failures the stalled worker's circuit is open.
    let snap = gw.router.snapshot();
    let s = snap.iter().find(|w| w.worker_id == "stalled").unwrap();
    assert!(s.circuit_open || s.ewma_ttft_us == 0, "{snap:?}");
    gw.stop.cancel();
}

/// A non-streaming answer is one event, at the end: a generation longer than the first-token
/// timeout must succeed (it is bound by `router.non_stream_timeout_ms` instead).
#[tokio::test]
async fn a_long_non_streaming_generation_is_not_cut_by_the_first_token_timeout() {
    let gw = gateway(300).await;
    let _w = worker(&gw, "slow", 0, &gw.pin).await;
    wait_workers(&gw, 1).await;
    // 30 tokens at 20/s: about 1.5 s, five times the first-token timeout.
    let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "long"}],
        "max_tokens": 30, "test_engine": {"tokens_per_second": 20, "completion_tokens": 30}});
    let started = std::time::Instant::now();
    let r = chat(&gw, body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(started.elapsed() > Duration::from_millis(1200), "the generation really took longer than the timeout");
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
    let metrics = client().get(&gw.metrics).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("cocoon_router_workers_refused_total") && !l.ends_with(" 0")),
        "the refusal is counted"
    );
    let r = chat(&gw, simple()).await;
    assert_eq!(r.status(), 404, "no admitted worker serves the model");
    w.stop.cancel();
    gw.stop.cancel();
}

/// The worker port before admission: a flood of idle connections and of garbage bytes is
/// held to `router.max_unattested_links` and `router.pre_auth_bytes`; the attested worker
/// keeps serving throughout, and a new worker can join once the flood lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_worker_port_keeps_serving_attested_workers() {
    let gw = gateway_cfg(5_000, true, |c| {
        c.router.max_unattested_links = 4;
        c.router.pre_auth_bytes = 64 * 1024;
    })
    .await;
    let _w = worker(&gw, "steady", 0, &gw.pin).await;
    wait_workers(&gw, 1).await;
    let addr: std::net::SocketAddr = gw.worker_url.trim_start_matches("wss://").trim_end_matches("/v1/worker").parse().unwrap();

    // Idle connections beyond the limit are closed at once; garbage past the budget too.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut garbage = Vec::new();
    for _ in 0..4 {
        garbage.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return 0usize };
            let junk = vec![0x16u8; 16 * 1024];
            let mut sent = 0;
            while s.write_all(&junk).await.is_ok() && sent < 8 << 20 {
                sent += junk.len();
            }
            sent
        }));
    }
    for _ in 0..10 {
        let r = chat(&gw, simple()).await;
        assert_eq!(r.status(), 200, "the attested worker serves during the flood");
    }
    for g in garbage {
        let sent = tokio::time::timeout(Duration::from_secs(20), g).await.expect("garbage connections are cut").unwrap();
        assert!(sent < 8 << 20, "a garbage connection was allowed to send {sent} bytes");
    }
    let metrics = client().get(&gw.metrics).send().await.unwrap().text().await.unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cocoon_router_links_refused_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 30.0, "connections past the unattested limit are refused:\n{metrics}");
    drop(idle);
    // The flood gone, a new worker attests and joins.
    let _late = worker(&gw, "late", 0, &gw.pin).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while gw.router.snapshot().len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a new worker joins after the flood");
    gw.stop.cancel();
}

/// A worker's price coefficient is what its jobs are billed at: above the network's maximum
/// it is refused, whatever it says.
#[tokio::test]
async fn a_worker_declaring_a_price_above_the_maximum_is_refused() {
    let gw = gateway_cfg(5_000, true, |c| c.router.max_price_coefficient = 2000).await;
    let w = worker_with(&gw, "greedy", 0, &gw.pin, 3000).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(gw.router.snapshot().is_empty(), "{:?}", gw.router.snapshot());
    let _ok = worker_with(&gw, "fair", 0, &gw.pin, 2000).await;
    wait_workers(&gw, 1).await;
    w.stop.cancel();
    gw.stop.cancel();
}

/// A worker id belongs to the first attested identity that used it: a second worker (its own
/// identity key) claiming the same id is refused, while the first keeps serving; the binding
/// is in the gateway's database, so another replica or a restart keeps it
/// (billing `the_first_identity_keeps_a_worker_id_across_handles`).
#[tokio::test]
async fn a_worker_cannot_take_over_another_workers_id() {
    let gw = gateway(5_000).await;
    let first = worker(&gw, "w1", 0, &gw.pin).await;
    wait_workers(&gw, 1).await;
    let impostor = worker(&gw, "w1", 0, &gw.pin).await;
    let mut refusals = String::new();
    for _ in 0..100 {
        let metrics = client().get(&gw.metrics).send().await.unwrap().text().await.unwrap();
        if let Some(l) = metrics.lines().find(|l| {
            l.starts_with("cocoon_router_workers_refused_total") && l.contains("rule=\"worker_id\"") && !l.ends_with(" 0")
        }) {
            refusals = l.to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!refusals.is_empty(), "the impostor is refused under rule worker_id within 10 s");
    let now = gw.router.snapshot();
    assert_eq!(now.len(), 1, "only the first worker holds w1: {now:?}");
    assert_eq!(chat(&gw, simple()).await.status(), 200);
    first.stop.cancel();
    impostor.stop.cancel();
    gw.stop.cancel();
}

/// `[attestation.policy.models]` pins the weights a model id may be served with: a worker
/// whose measured (and attested) weights differ, or that measured none, is refused under
/// rule `model_digest`; one with the pinned weights is admitted.
#[tokio::test]
async fn a_worker_serving_other_weights_under_a_pinned_model_id_is_refused() {
    let pinned = "ab".repeat(32);
    let gw = gateway_cfg(5_000, true, |c| {
        c.attestation.policy.models.insert("cocoon-test".into(), vec![pinned.clone()]);
    })
    .await;
    let other = spawn_worker(&gw, "other-weights", 0, &gw.pin, 1000, Some(&"cd".repeat(32))).await;
    let unmeasured = spawn_worker(&gw, "unmeasured", 0, &gw.pin, 1000, None).await;
    let mut refused = 0.0;
    for _ in 0..100 {
        let metrics = client().get(&gw.metrics).send().await.unwrap().text().await.unwrap();
        refused = metrics
            .lines()
            .find(|l| l.starts_with("cocoon_router_workers_refused_total") && l.contains("rule=\"model_digest\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if refused >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused >= 2.0, "both workers refused under model_digest, counted {refused}");
    assert!(gw.router.snapshot().is_empty(), "{:?}", gw.router.snapshot());
    let pinned_ok = spawn_worker(&gw, "pinned", 0, &gw.pin, 1000, Some(&pinned)).await;
    wait_workers(&gw, 1).await;
    assert_eq!(gw.router.snapshot()[0].worker_id, "pinned");
    assert_eq!(chat(&gw, simple()).await.status(), 200);
    for w in [other, unmeasured, pinned_ok] {
        w.stop.cancel();
    }
    gw.stop.cancel();
}

/// #13, end to end: a sealed request names its worker, and the gateway routes it to that
/// worker only. When the named worker has left, the gateway answers 409
/// `e2e_worker_unavailable` before anything runs; `cocoon-client` (what `cocoon client-proxy`
/// runs) then fetches a fresh report and seals the request again to a worker that is there.
#[tokio::test]
async fn a_sealed_request_for_a_worker_that_left_gets_409_and_is_resealed_to_another() {
    let gw = gateway(5_000).await;
    let _a = worker(&gw, "a", 0, &gw.pin).await;
    let b = worker(&gw, "b", 0, &gw.pin).await;
    wait_workers(&gw, 2).await;
    let sealed_client = common::sealed_client(&gw.base, &gw.key, 0);
    // Both verified and cached (the client reuses the list for reverify_after).
    let trusted = sealed_client.trusted_workers("cocoon-test", true).await.unwrap();
    let gone = trusted.iter().find(|w| w.worker_id == "b").expect("b verified").clone();
    assert_eq!(trusted.len(), 2);

    b.stop.cancel();
    let _ = b.link.await;
    wait_workers(&gw, 1).await;

    // A request sealed to b: the gateway cannot route it elsewhere (the seal binds b and its
    // key), so it says so at once.
    let body = serde_json::to_vec(&simple()).unwrap();
    let facts = attestation::e2e::E2eFacts {
        request_id: uuid::Uuid::new_v4(),
        model: "cocoon-test".into(),
        endpoint: "/v1/chat/completions".into(),
        stream: false,
        max_prompt_tokens: 1000,
        max_output_tokens: 16,
        worker_id: gone.worker_id.clone(),
        worker_key: gone.hpke_key,
        pad_to: 0,
    };
    let (sealed, _) = attestation::e2e::seal_request(&facts, &body).unwrap();
    let r = client()
        .post(format!("{}/chat/completions", gw.base))
        .bearer_auth(&gw.key)
        .header("content-type", "application/cocoon-e2e")
        .header("cocoon-e2e", "1")
        .header("cocoon-e2e-request-id", facts.request_id.to_string())
        .header("cocoon-e2e-model", "cocoon-test")
        .header("cocoon-e2e-stream", "false")
        .header("cocoon-e2e-max-prompt-tokens", "1000")
        .header("cocoon-e2e-max-output-tokens", "16")
        .header("cocoon-e2e-worker", "b")
        .header("cocoon-e2e-key", gone.hpke_key.to_hex())
        .header("cocoon-e2e-enc", sealed.enc.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .body(sealed.ciphertext)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"]["code"], "e2e_worker_unavailable", "{e}");

    // The library, still holding b in its cached list, picks among a and b; whenever it
    // picks b it gets that 409, verifies afresh (b is no longer in the report) and seals to
    // a. Every send succeeds on a; the cache shrinking to one worker shows the retry ran.
    let mut sends = 0;
    while sealed_client.trusted_workers("cocoon-test", false).await.unwrap().len() == 2 {
        sends += 1;
        assert!(sends <= 40, "the client never picked the departed worker in 40 sends");
        let mut answer = sealed_client.send("/v1/chat/completions", &body).await.unwrap();
        assert_eq!(answer.worker().worker_id, "a");
        while let Some(frame) = answer.next_frame().await {
            frame.unwrap();
        }
        assert_eq!(answer.receipt().expect("a receipt").worker_id, "a");
    }
}

/// #13, the second hop: a relay between the gateway's worker port and the worker records
/// every byte of the link while a sealed request (prompt with a marker) is served. Neither
/// the marker nor the completion appears in it. (The link is mutual TLS whose worker key the
/// evidence binds, so this shows the hop carries nothing in clear; that the gateway process
/// holds no plaintext of a sealed request is `client_proxy`'s trace-log and database scan.)
#[tokio::test]
async fn the_gateway_to_worker_hop_carries_no_prompt_or_completion_in_clear() {
    use tokio::io::AsyncWriteExt;
    const MARKER: &str = "okapi-lantern-marker-5521";
    let gw = gateway(5_000).await;
    let upstream = gw.worker_url.trim_start_matches("wss://").trim_end_matches("/v1/worker").to_string();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("wss://{}/v1/worker", relay.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut down, _) = relay.accept().await.unwrap();
            let mut up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let a = async {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = tokio::io::AsyncReadExt::read(&mut dr, &mut buf).await.unwrap_or(0);
                        if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                };
                let b = async {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = tokio::io::AsyncReadExt::read(&mut ur, &mut buf).await.unwrap_or(0);
                        if n == 0 || dw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                };
                tokio::join!(a, b);
            });
        }
    });
    // The worker dials the relay, pinning the router's certificate as usual.
    let w = spawn_worker_at(&relay_url, "w", 0, &gw.pin, 1000, None).await;
    wait_workers(&gw, 1).await;

    let sealed_client = common::sealed_client(&gw.base, &gw.key, 0);
    let body = json!({"model": "cocoon-test", "stream": true, "max_tokens": 12, "messages": [{"role": "user", "content": format!("Repeat: {MARKER}")}]});
    let mut answer = sealed_client.send("/v1/chat/completions", &serde_json::to_vec(&body).unwrap()).await.unwrap();
    let mut text = String::new();
    while let Some(f) = answer.next_frame().await {
        if let attestation::e2e::Frame::Data { data } = f.unwrap() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) {
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
            }
        }
    }
    assert!(text.len() >= 8, "{text:?}");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 1000, "the relay carried the link ({} bytes)", seen.len());
    let contains = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(MARKER.as_bytes()), "the prompt marker crossed the gateway→worker hop in clear");
    assert!(!contains(text.trim().as_bytes()), "the completion crossed the gateway→worker hop in clear");
    w.stop.cancel();
}

/// A toncenter v3 fake serving the registry's get-methods from a policy state the test
/// changes (cells from `RegistryPolicy::to_cell`, which `ton/tests/registry.rs` checks
/// against what the compiled contract returns).
#[derive(Clone)]
struct FakeRegistry {
    state: Arc<std::sync::Mutex<ton::RegistryPolicy>>,
    address: ton::Address,
}

async fn fake_registry_answer(
    axum::extract::State(f): axum::extract::State<FakeRegistry>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::Json<serde_json::Value> {
    let p = f.state.lock().unwrap().clone();
    if body["address"].as_str() != Some(f.address.to_raw().as_str()) {
        return axum::Json(json!({"gas_used": 0, "exit_code": -13, "stack": []}));
    }
    let boc = |c: &ton::registry::messages::Cell| ton::cell::to_boc_b64(c).unwrap();
    let owner = ton::Address::from_raw(&p.owner).unwrap();
    let stack = match body["method"].as_str().unwrap_or_default() {
        "get_registry_policy" => json!([
            {"type": "num", "value": format!("{:#x}", p.version)},
            {"type": "cell", "value": boc(&p.to_cell().unwrap())},
        ]),
        "get_registry_version" => json!([{"type": "num", "value": format!("{:#x}", p.version)}]),
        "get_registry_owner" => json!([{"type": "slice", "value": boc(&ton::registry::messages::address_cell(&owner).unwrap())}]),
        _ => return axum::Json(json!({"gas_used": 0, "exit_code": 11, "stack": []})),
    };
    axum::Json(json!({"gas_used": 1000, "exit_code": 0, "stack": stack}))
}

async fn fake_registry(initial: ton::RegistryPolicy) -> (FakeRegistry, String) {
    let f = FakeRegistry {
        state: Arc::new(std::sync::Mutex::new(initial)),
        address: ton::Address { workchain: 0, hash: [0x5e; 32] },
    };
    let app = axum::Router::new()
        .route("/api/v3/runGetMethod", axum::routing::post(fake_registry_answer))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (f, url)
}

/// #19: `policy_source = "chain"`. The router applies the registry's rules and shows the
/// version in the attestation report; a new version (a model pinned to other weights)
/// re-attests the admitted worker at once and detaches it; an older version from a
/// lagging API node is ignored; `cocoon verify --registry` passes while the gateway is at
/// the chain's version and fails while it lags; an unreadable registry stops the start.
#[tokio::test]
async fn the_on_chain_registry_policy_applies_live_and_clients_can_check_it() {
    use ton::registry::{Item, Params, RegistryPolicy};
    let owner = ton::Address { workchain: 0, hash: [0x0e; 32] };
    let served = "aa".repeat(32);
    let v1 = RegistryPolicy::from_parts(1, &owner, Params { max_price_coefficient: 2000, ..Params::default() }, vec![]);
    let (chain, api_url) = fake_registry(v1.clone()).await;
    let address = chain.address.to_raw();
    let tweak = |c: &mut cocoon::Config| {
        c.attestation.policy_source = cocoon::registry::PolicySource::Chain;
        c.attestation.registry.address = Some(address.clone());
        c.ton.api_url = Some(api_url.clone());
    };
    let gw = gateway_cfg(5_000, true, tweak).await;
    let mut cfg = cocoon::Config::default();
    cfg.environment = cocoon::config::Environment::Development;
    cfg.attestation.policy.allow_insecure_simulated_tee = true;
    tweak(&mut cfg);
    let registry = cocoon::registry::ChainPolicy::start(&cfg, gw.router.clone(), gw.stop.clone()).await.unwrap().unwrap();
    assert_eq!(registry.in_force(), Some((address.clone(), 1)));
    assert_eq!(gw.router.max_price_coefficient(), 2000);

    // A worker above the registry's price cap is refused; one within it serves.
    let pricey = worker_with(&gw, "pricey", 0, &gw.pin, 3000).await;
    let w = spawn_worker(&gw, "w", 0, &gw.pin, 1000, Some(&served)).await;
    wait_workers(&gw, 1).await;
    assert_eq!(chat(&gw, simple()).await.status(), 200);
    let report: serde_json::Value = client()
        .get(format!("{}/attestation/report?model=cocoon-test", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["policy_origin"], json!({"source": "chain", "address": address, "version": 1}));
    assert_eq!(report["max_price_coefficient"], 2000);

    let verify = |api_url: String| {
        let base = gw.base.clone();
        let address = address.clone();
        async move {
            let mut out = Vec::new();
            let ok = cocoon::verify::run(
                cocoon::verify::VerifyArgs {
                    base_url: base,
                    model: "cocoon-test".into(),
                    policy: None,
                    allow_simulated: true,
                    timeout: Duration::from_secs(10),
                    collateral: attestation::CollateralConfig { cache_dir: None, ..Default::default() },
                    registry: Some(cocoon::verify::RegistryCheck { address, network: ton::Network::Testnet, api_url, api_key: None }),
                },
                &mut out,
            )
            .await
            .unwrap();
            (ok, String::from_utf8(out).unwrap())
        }
    };
    let (ok, out) = verify(api_url.clone()).await;
    assert!(ok, "{out}");
    assert!(out.contains("the gateway applies this registry's rules at version 1"), "{out}");

    // Version 2 pins the model to other weights. Until the gateway re-reads, a client sees
    // it lag behind the chain and refuses.
    let v2 = RegistryPolicy::from_parts(
        2,
        &owner,
        v1.params(),
        vec![Item::Model { id: "cocoon-test".into(), sha256: "bb".repeat(32) }],
    );
    *chain.state.lock().unwrap() = v2;
    let (ok, out) = verify(api_url.clone()).await;
    assert!(!ok, "{out}");
    assert!(out.contains("applies registry version 1 but the chain is at version 2"), "{out}");
    registry.refresh().await;
    assert_eq!(registry.in_force(), Some((address.clone(), 2)));
    // The admitted worker re-attests at once (not at 3/4 of its validity) and is refused.
    wait_workers(&gw, 0).await;
    let status = chat(&gw, simple()).await.status().as_u16();
    assert!(matches!(status, 404 | 503), "no worker may serve the model now, got {status}");

    // A lagging API node serving version 1 again changes nothing.
    *chain.state.lock().unwrap() = v1.clone();
    registry.refresh().await;
    assert_eq!(registry.in_force(), Some((address.clone(), 2)));

    // No registry at the address: the router does not start on unpublished rules.
    let mut bad = cfg.clone();
    bad.attestation.registry.address = Some(ton::Address { workchain: 0, hash: [1; 32] }.to_raw());
    let e = match cocoon::registry::ChainPolicy::start(&bad, gw.router.clone(), gw.stop.clone()).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("started without a readable registry"),
    };
    assert!(e.contains("does not start without it") && e.contains("exited with code -13"), "{e}");
    for x in [pricey, w] {
        x.stop.cancel();
    }
    gw.stop.cancel();
}
