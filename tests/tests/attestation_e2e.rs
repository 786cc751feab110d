//! Attestation through the whole dev network: jobs sealed end to end under the simulated TEE,
//! `x-cocoon-tee: simulated` on every answer, `/v1/attestation/report` + `cocoon verify`
//! (passes with the simulated warning, fails on a tampered report), production refusing the
//! simulated TEE, and no prompt or completion text in the logs even at trace level.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODEL: &str = "cocoon-test";

#[tokio::test]
async fn dev_network_seals_jobs_and_marks_simulated_answers() {
    let net = common::start(|_| {}).await;
    let w = &net.router.snapshot()[0];
    assert_eq!(w.tee, "simulated");
    assert!(w.insecure_simulated);

    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let resp = common::post_chat(&net, &net.api_key, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cocoon-tee"], "simulated");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|s| !s.is_empty()));

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let resp = common::post_chat(&net, &net.api_key, &sbody).await;
    assert_eq!(resp.headers()["x-cocoon-tee"], "simulated");
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Both jobs travelled sealed (HPKE) to the worker's attested key.
    let metrics = common::metrics_text(net.gateway_metrics_addr.unwrap()).await;
    let sealed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("cocoon_router_jobs_sealed_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .expect("sealed-jobs counter");
    assert!(sealed >= 2.0, "{sealed}");
    net.net.shutdown().await;
}

#[tokio::test]
async fn attestation_report_validates_its_input() {
    let net = common::start(|_| {}).await;
    let base = net.base_url.clone();
    let get = |q: String| {
        let url = format!("{base}/attestation/report{q}");
        async move { common::http().get(url).send().await.unwrap() }
    };
    let r = get(String::new()).await;
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "model");
    let r = get(format!("?model={MODEL}&nonce=abc")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["param"], "nonce");
    let r = get(format!("?model=nope&nonce={}", "00".repeat(32))).await;
    assert_eq!(r.status(), 404);
    let nonce = "5a".repeat(32);
    let r = get(format!("?model={MODEL}&nonce={nonce}")).await;
    assert_eq!(r.status(), 200);
    let rep: serde_json::Value = r.json().await.unwrap();
    assert_eq!(rep["nonce"], nonce);
    assert_eq!(rep["workers"].as_array().unwrap().len(), 1);
    assert_eq!(rep["workers"][0]["nonce"], nonce, "the evidence answers the client's nonce");
    assert_eq!(rep["policy"]["allow_insecure_simulated_tee"], true);
    // The dev worker's simulated GPU: its evidence, and what the router verified of it.
    let w = &rep["workers"][0];
    assert!(w["gpu"]["report"].is_string() && w["gpu"]["insecure_simulated"] == true, "{w}");
    let g = &w["gpu_verdict"];
    assert_eq!(g["insecure_simulated"], true, "{g}");
    assert_eq!(g["architecture"], "hopper", "{g}");
    assert_eq!(g["cc_mode"], "on", "{g}");
    assert_eq!(g["protection_mode"], "spt", "{g}");
    assert_eq!(g["driver_version"], "580.00.00-simulated", "{g}");
    assert_eq!(g["vbios_version"], "96.00.00.00.00", "{g}");
    net.net.shutdown().await;
}

fn verify(base: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(common::cocoon_bin())
        .args(["verify", "--base-url", base, "--model", MODEL])
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn cocoon_verify_passes_on_dev_and_fails_on_a_tampered_report() {
    let net = common::start(|_| {}).await;
    let base = net.base_url.clone();
    let b = base.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || verify(&b, &["--allow-simulated"])).await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("SIMULATED") && out.contains("verdict: OK"), "{out}");
    assert!(out.contains("HPKE key fingerprint"), "{out}");
    assert!(out.contains("WARNING: SIMULATED GPU") && out.contains("GPU CC mode: on"), "{out}");
    assert!(out.contains("driver 580.00.00-simulated, VBIOS 96.00.00.00.00"), "{out}");
    assert!(out.contains("WARNING: the GPU evidence is SIMULATED"), "{out}");

    // A client that does not accept the simulated TEE says exactly why.
    let b = base.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || verify(&b, &[])).await.unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("simulated_not_allowed"), "{out}");

    // A man in the middle swapping the worker's HPKE key (to read sealed jobs) is caught by
    // the report_data binding; flipping a byte of the signed evidence by the signature.
    for tamper in [Tamper::HpkeKey, Tamper::Signature, Tamper::GpuReport] {
        let proxy = tampering_proxy(net.gateway_addr, tamper).await;
        let (ok, out) = tokio::task::spawn_blocking(move || verify(&format!("http://{proxy}/v1"), &["--allow-simulated"])).await.unwrap();
        assert!(!ok, "{tamper:?}: {out}");
        assert!(out.contains("REJECTED"), "{tamper:?}: {out}");
        let rule = match tamper {
            Tamper::HpkeKey => "(report_data)",
            Tamper::Signature => "(bad_signature)",
            Tamper::GpuReport => "(gpu_report_signature)",
        };
        assert!(out.contains(rule), "{tamper:?}: {out}");
    }
    net.net.shutdown().await;
}

#[derive(Clone, Copy, Debug)]
enum Tamper {
    HpkeKey,
    Signature,
    /// One byte of the (simulated) GPU's signed measurements.
    GpuReport,
}

/// A one-request-per-connection HTTP proxy that forwards a GET to the gateway and alters the
/// attestation report on the way back.
async fn tampering_proxy(gateway: std::net::SocketAddr, tamper: Tamper) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap().to_string();
            let mut v: serde_json::Value = common::http()
                .get(format!("http://{gateway}{path}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let w = &mut v["workers"][0];
            match tamper {
                Tamper::HpkeKey => w["hpke_public_key"] = json!("11".repeat(32)),
                Tamper::Signature => {
                    let sim = &mut w["evidence"]["data"];
                    let sig = sim["signature"].as_str().expect("simulated evidence signature").to_string();
                    let mut bytes = sig.into_bytes();
                    bytes[4] = if bytes[4] == b'0' { b'1' } else { b'0' };
                    sim["signature"] = json!(String::from_utf8(bytes).unwrap());
                }
                Tamper::GpuReport => {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let mut report = b64.decode(w["gpu"]["report"].as_str().expect("simulated GPU evidence")).unwrap();
                    report[60] ^= 1;
                    w["gpu"]["report"] = json!(b64.encode(report));
                }
            }
            let body = serde_json::to_vec(&v).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(&body).await.unwrap();
        }
    });
    addr
}

#[test]
fn production_refuses_the_simulated_tee_and_clear_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(common::cocoon_bin())
            .args(args)
            .env("COCOON__DATA_DIR", dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let sim = ("COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE", "true");
    let (ok, err) = run(&["gateway", "--production"], &[sim]);
    assert!(!ok);
    assert!(err.contains("allow_insecure_simulated_tee") && err.contains("production"), "{err}");
    // Production is the default: without `environment = "development"` a gateway refuses the
    // simulated TEE, and a worker refuses to pick a dev engine on its own.
    let (ok, err) = run(&["gateway"], &[sim]);
    assert!(!ok);
    assert!(err.contains("allow_insecure_simulated_tee") && err.contains("production"), "{err}");
    let (ok, err) = run(&["worker"], &[]);
    assert!(!ok);
    assert!(err.contains("engine.kind"), "{err}");
    let (ok, err) = run(&["config-check"], &[("COCOON__ENVIRONMENT", "production"), ("COCOON__ATTESTATION__SEAL_JOBS", "false")]);
    assert!(!ok);
    assert!(err.contains("attestation.seal_jobs"), "{err}");
    let (ok, err) = run(&["dev"], &[("COCOON__ENVIRONMENT", "production")]);
    assert!(!ok, "{err}");
}

/// The whole network in one process at trace level: the prompt and the completion must not
/// appear anywhere in its output.
#[tokio::test(flavor = "multi_thread")]
async fn no_prompt_or_completion_text_in_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let mut child = Command::new(common::cocoon_bin())
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env("COCOON__DATA_DIR", dir.path())
        .env("COCOON__LOG", "trace")
        // The deterministic engine: this test is about what the gateway, router and agent log.
        .env("COCOON__ENGINE__KIND", "builtin")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let state = dir.path().join("dev.json");
    common::wait_until("cocoon dev to start", Duration::from_secs(60), || state.exists()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dev: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let base = dev["base_url"].as_str().unwrap();
    let key = dev["api_key"].as_str().unwrap();

    const PROMPT: &str = "quokka-secret-4417 tell me about xylophones";
    let mut completions = Vec::new();
    for stream in [false, true] {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12, "stream": stream});
        let resp = common::http().post(format!("{base}/chat/completions")).bearer_auth(key).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        if stream {
            let mut s = resp.bytes_stream();
            let mut text = String::new();
            while let Some(c) = s.next().await {
                text.push_str(&String::from_utf8_lossy(&c.unwrap()));
            }
            completions.push(text);
        } else {
            let v: serde_json::Value = resp.json().await.unwrap();
            completions.push(v["choices"][0]["message"]["content"].as_str().unwrap().to_string());
        }
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let mut logs = String::new();
    std::fs::File::open(&log).unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.contains("TRACE"), "the process must actually log at trace level");
    // Dev-only behaviour is announced: `cocoon dev` runs the simulated TEE and says so loudly.
    assert!(logs.contains("INSECURE SIMULATED TEE (dev only)"), "no simulated-TEE banner");
    assert!(logs.len() > 10_000, "suspiciously little log output: {} bytes", logs.len());
    assert!(!logs.contains("quokka-secret-4417"), "the prompt leaked into the logs");
    // The completion's content (not its framing) must not appear either.
    let content = completions[0].trim();
    assert!(content.len() >= 10, "{content:?}");
    assert!(!logs.contains(content), "the completion leaked into the logs");
}
