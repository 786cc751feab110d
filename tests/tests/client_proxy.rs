//! End-to-end sealing through `cocoon client-proxy` against the real dev network: an OpenAI
//! client talks plain JSON/SSE to the proxy; the proxy seals to the attested worker; the
//! gateway relays bytes it cannot read. A recording relay between proxy and gateway sees every
//! byte of that hop, so the tests can assert what it never carries, and can tamper with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestation::receipt::SignedReceipt;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use futures::StreamExt;
use serde_json::json;

const MODEL: &str = "cocoon-test";
const MARKER: &str = "zebra-quartz-marker-7731";

/// What the relay does to the gateway's answers.
#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    None,
    /// Flip one bit of a sealed answer's first frame ciphertext.
    FlipAnswerByte,
    /// Lower the declared output bound in transit (a gateway trying to bill less, or a
    /// client's bound that disagrees with its sealed body).
    LowerDeclaredBound,
    /// Rename the model a report's worker lists (a gateway passing off a worker for a model
    /// its evidence does not commit to).
    ReportOtherModel,
    /// Swap the worker's HPKE key in the report for one the gateway holds (so that it could
    /// open what the client seals).
    ReportOtherKey,
}

/// Each sealed request's body and its sealed answer, as they crossed the hop.
type Exchanges = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

#[derive(Clone)]
struct Relay {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Each sealed request's body and its sealed answer, as they crossed the hop.
    sealed: Exchanges,
    tamper: Tamper,
}

async fn relay(State(r): State<Relay>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let url = format!("{}{}", r.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut req = r.http.request(method, url);
    let mut sealed = false;
    for (k, v) in &headers {
        if k == "host" || k == "content-length" {
            continue;
        }
        let mut v = v.clone();
        if k == "cocoon-e2e-max-output-tokens" && r.tamper == Tamper::LowerDeclaredBound {
            v = "1".parse().unwrap();
        }
        if k == "cocoon-e2e" {
            sealed = true;
        }
        r.seen.lock().unwrap().extend_from_slice(k.as_str().as_bytes());
        r.seen.lock().unwrap().extend_from_slice(v.as_bytes());
        req = req.header(k, v);
    }
    r.seen.lock().unwrap().extend_from_slice(&body);
    let exchange = sealed.then(|| {
        let mut all = r.sealed.lock().unwrap();
        all.push((body.to_vec(), Vec::new()));
        all.len() - 1
    });
    let resp = req.body(body).send().await.unwrap();
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            out = out.header(k, v);
            r.seen.lock().unwrap().extend_from_slice(v.as_bytes());
        }
    }
    let seen = r.seen.clone();
    let sealed_log = r.sealed.clone();
    if r.tamper == Tamper::ReportOtherModel && uri.path().ends_with("/attestation/report") {
        let text = resp.text().await.unwrap().replace(r#""models":[{"id":"cocoon-test""#, r#""models":[{"id":"cocoon-cheap""#);
        assert!(text.contains("cocoon-cheap"), "the report's model list changed shape: {text}");
        return out.body(Body::from(text)).unwrap();
    }
    if r.tamper == Tamper::ReportOtherKey && uri.path().ends_with("/attestation/report") {
        let mut v: serde_json::Value = resp.json().await.unwrap();
        v["workers"][0]["hpke_public_key"] = json!("11".repeat(32));
        return out.body(Body::from(v.to_string())).unwrap();
    }
    let flip = sealed && r.tamper == Tamper::FlipAnswerByte;
    let mut offset = 0usize;
    let stream = resp.bytes_stream().map(move |chunk| {
        let chunk = chunk.unwrap();
        let mut v = chunk.to_vec();
        // "COCOE2E1" + 32-byte response nonce + 13-byte frame header: byte 60 is ciphertext.
        if flip && (offset..offset + v.len()).contains(&60) {
            v[60 - offset] ^= 0x01;
        }
        offset += chunk.len();
        seen.lock().unwrap().extend_from_slice(&v);
        if let Some(i) = exchange {
            sealed_log.lock().unwrap()[i].1.extend_from_slice(&v);
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(v))
    });
    out.body(Body::from_stream(stream)).unwrap()
}

struct Setup {
    net: common::Net,
    proxy: String,
    seen: Arc<Mutex<Vec<u8>>>,
    sealed: Exchanges,
}

async fn setup(tamper: Tamper) -> Setup {
    setup_padded(tamper, 0).await
}

async fn setup_padded(tamper: Tamper, pad_to: usize) -> Setup {
    let net = common::start(|_| {}).await;
    let upstream = format!("http://{}", net.gateway_addr);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sealed = Arc::new(Mutex::new(Vec::new()));
    let r = Relay { upstream, http: reqwest::Client::new(), seen: seen.clone(), sealed: sealed.clone(), tamper };
    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(relay).with_state(r);
    tokio::spawn(async move { axum::serve(relay_listener, app).await.unwrap() });

    let client = Arc::new(common::sealed_client(&format!("http://{relay_addr}/v1"), &net.api_key, pad_to));
    let verdict = cocoon::client_proxy::verify_all(&client).await.unwrap();
    if tamper == Tamper::ReportOtherModel {
        assert!(verdict.contains("NOT TRUSTED") && verdict.contains("(models_digest)"), "{verdict}");
    } else if tamper == Tamper::ReportOtherKey {
        assert!(verdict.contains("NOT TRUSTED") && verdict.contains("(report_data)"), "{verdict}");
    } else {
        assert!(verdict.contains("TRUSTED") && !verdict.contains("NOT TRUSTED"), "{verdict}");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(cocoon::client_proxy::serve(client, listener, tokio_util::sync::CancellationToken::new()));
    Setup { net, proxy, seen, sealed }
}

fn chat(stream: bool) -> serde_json::Value {
    json!({"model": MODEL, "stream": stream, "max_tokens": 12,
           "messages": [{"role": "user", "content": format!("Repeat after me: {MARKER}")}]})
}

async fn post(url: &str, body: &serde_json::Value) -> reqwest::Response {
    common::http().post(url).json(body).send().await.unwrap()
}

/// The identity key the (only) dev worker attests, from the network's report.
async fn identity(net: &common::Net) -> attestation::receipt::IdentityPublicKey {
    let report: attestation::AttestationReport = common::http()
        .get(format!("{}/attestation/report?model={MODEL}&nonce={}", net.base_url, "cd".repeat(32)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report.workers[0].identity_key.expect("the dev worker attests an identity key")
}

/// `GET /v1/account/<what>` for the dev account.
async fn account(net: &common::Net, what: &str) -> serde_json::Value {
    common::http()
        .get(format!("{}/account/{what}", net.base_url))
        .bearer_auth(&net.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The dev account's balance: (total, held).
async fn balance(net: &common::Net) -> (i64, i64) {
    let b = account(net, "balance").await;
    (b["total"].as_i64().unwrap(), b["held"].as_i64().unwrap())
}

#[tokio::test]
async fn sdk_requests_through_the_proxy_are_sealed_end_to_end_with_receipts() {
    let s = setup(Tamper::None).await;
    // A whole answer: plain OpenAI JSON to the SDK, the receipt in a header.
    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cocoon-tee"], "simulated");
    let receipt = SignedReceipt::from_header(resp.headers()["x-cocoon-receipt"].to_str().unwrap()).unwrap();
    let r = receipt.verify(&identity(&s.net).await).expect("signed by the attested identity");
    let v: serde_json::Value = resp.json().await.unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap(), r.usage.completion_tokens);
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap(), r.usage.prompt_tokens);
    assert!(r.request_id.is_some(), "a sealed job's receipt names the client's request id");

    // A stream: chunks as SSE, the receipt as a comment before [DONE].
    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let comment = text.lines().find_map(|l| l.strip_prefix(": cocoon-receipt ")).expect("receipt comment");
    let streamed = SignedReceipt::from_header(comment).unwrap().verify(&identity(&s.net).await).unwrap();
    let chunks: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"), "{text}");
    let streamed_text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!streamed_text.is_empty());

    // Embeddings are sealed too.
    let resp = post(&format!("{}/embeddings", s.proxy), &json!({"model": MODEL, "input": MARKER})).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-cocoon-receipt"));

    // Not one byte between proxy and gateway carried the prompt or a completion.
    let seen = String::from_utf8_lossy(&s.seen.lock().unwrap()).into_owned();
    assert!(seen.contains("cocoon-e2e"), "the relay saw the sealed requests");
    assert!(!seen.contains(MARKER), "the prompt marker crossed the gateway hop in clear");
    for text in [&content, &streamed_text] {
        if text.len() >= 8 {
            assert!(!seen.contains(text.as_str()), "a completion crossed the gateway hop in clear: {text}");
        }
    }

    // The ledger charged exactly what the receipts state, job by job.
    let usage = account(&s.net, "usage").await;
    let rows = usage["data"].as_array().expect("usage rows");
    for rec in [&r, &streamed] {
        let row = rows.iter().find(|row| row["job_id"] == rec.job_id.to_string()).unwrap_or_else(|| panic!("no charge for job {}: {usage}", rec.job_id));
        assert_eq!(row["usage"]["prompt_tokens"].as_u64().unwrap(), rec.usage.prompt_tokens, "{row}");
        assert_eq!(row["usage"]["completion_tokens"].as_u64().unwrap(), rec.usage.completion_tokens, "{row}");
        // The ledger kept the receipt with the charge; it verifies as the one the client got.
        let kept = SignedReceipt::from_header(row["receipt"].as_str().unwrap_or_else(|| panic!("no receipt kept: {row}"))).unwrap();
        assert_eq!(kept.verify(&kept.signer).unwrap(), *rec);
    }

    // The books balance after end-to-end traffic (`cocoon ledger check`'s invariants).
    let violations = s.net.ledger.as_ref().expect("billing is on").check().await.unwrap();
    assert!(violations.is_empty(), "ledger check after E2E traffic: {violations:?}");

    // Receipts verify offline against a saved report; a forged signature or a report without
    // the signer does not.
    let nonce = "ab".repeat(32);
    let report = common::http()
        .get(format!("{}/attestation/report?model={MODEL}&nonce={nonce}", s.net.base_url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let policy = attestation::Policy { allow_insecure_simulated_tee: true, ..Default::default() };
    let ok = cocoon_client::verify_receipt_offline(&report, &receipt, policy.clone(), None).unwrap();
    assert_eq!(ok.receipt.job_id, r.job_id);
    let mut forged = receipt.clone();
    forged.signature[0] ^= 1;
    let e = cocoon_client::verify_receipt_offline(&report, &forged, policy.clone(), None).unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
    let other = attestation::receipt::IdentityKey::generate().unwrap();
    let foreign = other.sign(&receipt.verify(&receipt.signer).unwrap()).unwrap();
    let e = cocoon_client::verify_receipt_offline(&report, &foreign, policy.clone(), None).unwrap_err();
    assert!(e.to_string().contains("no worker in the report attested"), "{e}");
    let e = cocoon_client::verify_receipt_offline(&report, &receipt, attestation::Policy::default(), None).unwrap_err();
    assert!(e.to_string().contains("fails the policy"), "strict policy refuses the simulated TEE: {e}");

    // Paths that cannot be sealed are refused, never forwarded in clear.
    let resp = post(&format!("{}/audio/speech", s.proxy), &json!({"model": MODEL, "input": MARKER})).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"]["code"], "not_sealable");
    s.net.net.shutdown().await;
}

/// Lengths of the frames of a sealed answer as it crossed the gateway hop.
fn frame_lengths(answer: &[u8]) -> Vec<usize> {
    assert_eq!(&answer[..8], attestation::e2e::RESPONSE_MAGIC);
    let mut rest = &answer[8 + 32..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize + 4;
        out.push(len);
        rest = &rest[len..];
    }
    out
}

#[tokio::test]
async fn with_padding_the_gateway_sees_sizes_only_to_the_granule() {
    // Unpadded, frame sizes follow the text (token by token in a stream).
    let s = setup(Tamper::None).await;
    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(true)).await;
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let plain_sizes = frame_lengths(&s.sealed.lock().unwrap()[0].1);
    assert!(plain_sizes.iter().any(|l| l % 256 != 0), "{plain_sizes:?}");
    s.net.net.shutdown().await;

    let s = setup_padded(Tamper::None, 256).await;
    for stream in [true, false] {
        let resp = post(&format!("{}/chat/completions", s.proxy), &chat(stream)).await;
        assert_eq!(resp.status(), 200);
        let whole_receipt = resp.headers().contains_key("x-cocoon-receipt");
        let text = resp.text().await.unwrap();
        assert!(whole_receipt || text.contains(": cocoon-receipt "), "the answer opened and carried its receipt: {text}");
    }
    let exchanges = s.sealed.lock().unwrap().clone();
    assert_eq!(exchanges.len(), 2);
    for (body, answer) in &exchanges {
        // The request: JSON padded to 256 bytes, plus the 16-byte AEAD tag.
        assert_eq!(body.len() % 256, 16, "request of {} bytes", body.len());
        let sizes = frame_lengths(answer);
        assert!(sizes.len() >= 2, "{sizes:?}");
        assert!(sizes.iter().all(|l| l % 256 == 0), "every frame is whole granules: {sizes:?}");
    }
    // The stream's chunks, of different text lengths, all look alike on the wire.
    let stream_sizes = frame_lengths(&exchanges[0].1);
    let most_common = stream_sizes.iter().map(|a| stream_sizes.iter().filter(|b| *b == a).count()).max().unwrap();
    assert!(most_common >= 8, "12 chunks of different text, alike on the wire: {stream_sizes:?}");
    // (The padding is a sealed fact: a gateway that strips or changes it makes the body
    // unopenable, attestation's `every_clear_fact_is_bound`.)
    let seen = String::from_utf8_lossy(&s.seen.lock().unwrap()).into_owned();
    assert!(!seen.contains(MARKER));
    s.net.net.shutdown().await;
}

#[tokio::test]
async fn a_tampered_answer_fails_at_the_client_whole_or_streamed() {
    let s = setup(Tamper::FlipAnswerByte).await;
    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(false)).await;
    assert_eq!(resp.status(), 502);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "verification_failed", "{e}");

    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(true)).await;
    let text = resp.text().await.unwrap();
    assert!(text.contains("verification_failed"), "{text}");
    assert!(!text.contains("[DONE]"), "a stream that failed its checks must not end as a success: {text}");
    s.net.net.shutdown().await;
}

#[tokio::test]
async fn a_declared_bound_changed_in_transit_is_refused_and_nothing_is_charged() {
    let s = setup(Tamper::LowerDeclaredBound).await;
    let (before, _) = balance(&s.net).await;
    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(false)).await;
    assert_ne!(resp.status(), 200, "a body sealed for other facts must not run");
    let body = resp.text().await.unwrap();
    assert!(!body.contains(MARKER), "{body}");
    // Changing a clear fact breaks the HPKE info/AAD, so the worker cannot even open the body.
    assert!(body.contains("cannot open the sealed request") && body.contains("for other facts"), "the refusal names why: {body}");
    // Nothing charged, and the hold released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (total, held) = balance(&s.net).await;
        if held == 0 {
            assert_eq!(total, before, "nothing charged for a refused sealed request ({body})");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hold was not released: {held} nanoTON held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.net.net.shutdown().await;
}

#[tokio::test]
async fn clear_answers_carry_the_workers_receipt() {
    let net = common::start(|_| {}).await;
    let key = identity(&net).await;
    let resp = common::post_chat(&net, &net.api_key, &chat(false)).await;
    assert_eq!(resp.status(), 200);
    let job: uuid::Uuid = resp.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let r = SignedReceipt::from_header(resp.headers()["x-cocoon-receipt"].to_str().unwrap()).unwrap().verify(&key).unwrap();
    assert_eq!(r.job_id, job, "the receipt is for this request");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap(), r.usage.completion_tokens);

    let resp = common::post_chat(&net, &net.api_key, &chat(true)).await;
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.last(), Some(&"data: [DONE]"), "{text}");
    let comment = lines[lines.len() - 2].strip_prefix(": cocoon-receipt ").unwrap_or_else(|| panic!("receipt comment right before [DONE]: {text}"));
    let r = SignedReceipt::from_header(comment).unwrap().verify(&key).unwrap();
    assert!(r.usage.completion_tokens > 0);
    net.net.shutdown().await;
}

/// A whole network in one process at trace level, asked only sealed requests: neither the
/// prompt nor the completion appears in its logs or in any file of its data directory (the
/// ledger's database and WAL included).
#[tokio::test(flavor = "multi_thread")]
async fn sealed_requests_leave_no_text_in_trace_logs_or_the_database() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let mut child = Command::new(common::cocoon_bin())
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env("COCOON__DATA_DIR", dir.path())
        .env("COCOON__LOG", "trace")
        .env("COCOON__ENGINE__KIND", "builtin")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let state = dir.path().join("dev.json");
    common::wait_until("cocoon dev to start", Duration::from_secs(60), || state.exists()).await;
    let dev: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let client = common::sealed_client(dev["base_url"].as_str().unwrap(), dev["api_key"].as_str().unwrap(), 0);
    let mut completions = String::new();
    for stream in [false, true] {
        let body = serde_json::to_vec(&chat(stream)).unwrap();
        let mut answer = client.send("/v1/chat/completions", &body).await.unwrap();
        while let Some(frame) = answer.next_frame().await {
            if let attestation::e2e::Frame::Data { data } = frame.unwrap() {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                let text = if stream { &v["choices"][0]["delta"]["content"] } else { &v["choices"][0]["message"]["content"] };
                completions.push_str(text.as_str().unwrap_or_default());
            }
        }
        assert!(answer.receipt().is_some(), "checked receipt");
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("TRACE") && logs.len() > 10_000, "the process must actually log at trace level ({} bytes)", logs.len());
    assert!(!logs.contains(MARKER), "the prompt leaked into the logs");
    let content = completions.trim();
    assert!(content.len() >= 10, "{content:?}");
    assert!(!logs.contains(content), "the completion leaked into the logs");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path != log {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(MARKER), "the prompt is in {}", path.display());
            assert!(!text.contains(content), "the completion is in {}", path.display());
        }
    }
    assert!(dir.path().join("ledger.db").exists(), "the ledger was on (and checked above)");
}

#[tokio::test]
async fn a_report_listing_models_the_evidence_does_not_commit_to_is_refused() {
    let s = setup(Tamper::ReportOtherModel).await;
    let resp = post(&format!("{}/chat/completions", s.proxy), &chat(false)).await;
    assert_eq!(resp.status(), 503);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "no_trusted_worker", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("(models_digest)"), "{e}");
    s.net.net.shutdown().await;
}

#[tokio::test]
async fn a_report_with_a_swapped_worker_key_is_refused_and_nothing_is_sealed_to_it() {
    let s = setup(Tamper::ReportOtherKey).await;
    let resp = post(&format!("{}/chat/completions", s.proxy), &json!({"model": MODEL, "messages": [{"role": "user", "content": MARKER}]})).await;
    assert_eq!(resp.status(), 503);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "no_trusted_worker", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("(report_data)"), "{e}");
    let seen = String::from_utf8_lossy(&s.seen.lock().unwrap()).into_owned();
    assert!(!seen.contains("cocoon-e2e-enc"), "a request was sealed to the swapped key");
    s.net.net.shutdown().await;
}

/// The Responses API sealed end to end: the proxy validates the body as the gateway would,
/// seals it to the worker, which translates it to the engine's chat completions inside the
/// TEE; the answer comes back as OpenAI's Response object or event stream, with a receipt,
/// billed as the receipt says, and the gateway hop never carries the marker.
#[tokio::test]
async fn responses_requests_are_sealed_end_to_end_whole_and_streamed() {
    let s = setup(Tamper::None).await;
    let url = format!("{}/responses", s.proxy);
    let body = |stream: bool| json!({"model": MODEL, "input": format!("Repeat after me: {MARKER}"), "instructions": "Be brief.", "max_output_tokens": 12, "stream": stream});

    let resp = post(&url, &body(false)).await;
    assert_eq!(resp.status(), 200);
    let receipt = SignedReceipt::from_header(resp.headers()["x-cocoon-receipt"].to_str().unwrap()).unwrap();
    let r = receipt.verify(&identity(&s.net).await).expect("signed by the attested identity");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "response", "{v}");
    // Cut at max_output_tokens by the test engine: OpenAI's "incomplete", as in clear mode.
    assert!(v["status"] == "completed" || v["incomplete_details"]["reason"] == "max_output_tokens", "{v}");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    assert_eq!(v["usage"]["output_tokens"].as_u64().unwrap(), r.usage.completion_tokens);

    // A stream: `event:` + `data:` per event, gapless sequence numbers, the receipt comment
    // before the terminal event (held until the final frame checked out), no [DONE].
    let resp = post(&url, &body(true)).await;
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.unwrap();
    assert!(!raw.contains("[DONE]"), "{raw}");
    let mut kinds = Vec::new();
    let mut seqs = Vec::new();
    let mut receipt_before_end = false;
    for block in raw.split("\n\n").filter(|b| !b.is_empty()) {
        if let Some(r) = block.strip_prefix(": cocoon-receipt ") {
            SignedReceipt::from_header(r).unwrap().verify(&identity(&s.net).await).unwrap();
            receipt_before_end = !kinds.iter().any(|k| k == "response.completed" || k == "response.incomplete");
            continue;
        }
        let (event, data) = block.split_once('\n').unwrap_or_else(|| panic!("{block}"));
        let kind = event.strip_prefix("event: ").unwrap_or_else(|| panic!("{block}"));
        let data: serde_json::Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["type"], kind);
        seqs.push(data["sequence_number"].as_u64().unwrap());
        kinds.push(kind.to_string());
    }
    assert_eq!(kinds.first().map(String::as_str), Some("response.created"), "{kinds:?}");
    assert!(matches!(kinds.last().map(String::as_str), Some("response.completed" | "response.incomplete")), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "response.output_text.delta"), "{kinds:?}");
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(receipt_before_end, "the receipt comes before the terminal event");

    // Refused here as the gateway refuses it in clear; nothing stored, so nothing to fetch.
    let resp = post(&url, &json!({"model": MODEL, "input": "hi", "store": true})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"]["param"], "store");
    let resp = common::http().get(format!("{}/responses/resp_123", s.proxy)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"]["code"], "response_not_found");

    let seen = String::from_utf8_lossy(&s.seen.lock().unwrap()).into_owned();
    assert!(seen.contains("cocoon-e2e"), "the relay saw the sealed requests");
    assert!(!seen.contains(MARKER), "the prompt marker crossed the gateway hop in clear");
    assert!(text.len() < 8 || !seen.contains(text.as_str()), "the answer crossed the gateway hop in clear");
    // Charged as the receipt says.
    let usage = account(&s.net, "usage").await;
    let row = usage["data"].as_array().unwrap().iter().find(|row| row["job_id"] == r.job_id.to_string()).expect("charged");
    assert_eq!(row["usage"]["completion_tokens"].as_u64().unwrap(), r.usage.completion_tokens, "{row}");
    assert!(s.net.ledger.as_ref().unwrap().check().await.unwrap().is_empty());
    s.net.net.shutdown().await;
}

/// `gateway.e2e`: "require" refuses every clear inference request and serves sealed ones;
/// "off" refuses sealed ones.
#[tokio::test]
async fn gateway_e2e_require_refuses_clear_requests_and_off_refuses_sealed_ones() {
    let sealed_client = |net: &common::Net| common::sealed_client(&net.base_url, &net.api_key, 0);
    let body = serde_json::to_vec(&chat(false)).unwrap();

    let net = common::start(|c| c.gateway.e2e = gateway::config::E2eMode::Require).await;
    for path in ["chat/completions", "responses"] {
        let clear = if path == "responses" { json!({"model": MODEL, "input": "hi"}) } else { chat(false) };
        let r = common::http().post(format!("{}/{path}", net.base_url)).bearer_auth(&net.api_key).json(&clear).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["code"], "e2e_required", "{path}");
    }
    let mut answer = sealed_client(&net).send("/v1/chat/completions", &body).await.unwrap();
    let mut data = 0;
    while let Some(f) = answer.next_frame().await {
        if matches!(f.unwrap(), attestation::e2e::Frame::Data { .. }) {
            data += 1;
        }
    }
    assert_eq!(data, 1, "a whole answer is one data frame");
    assert!(answer.receipt().is_some());
    net.net.shutdown().await;

    let net = common::start(|c| c.gateway.e2e = gateway::config::E2eMode::Off).await;
    match sealed_client(&net).send("/v1/chat/completions", &body).await {
        Err(cocoon_client::ClientError::Status { status: 400, body }) => assert!(body.contains("e2e_disabled"), "{body}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a sealed request was served with gateway.e2e = off"),
    }
    net.net.shutdown().await;
}
