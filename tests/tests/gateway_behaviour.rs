//! Behaviour at the edge that a client cannot see through an SDK alone: cancellation reaching
//! the engine, drain on shutdown, load shedding, rate limits shared through Redis, metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use gateway::ratelimit::Limits;
use serde_json::{json, Value};

fn slow_stream_body(tokens: u32, tps: f64) -> Value {
    json!({
        "model": "cocoon-test",
        "messages": [{"role": "user", "content": "count slowly"}],
        "stream": true,
        "test_engine": {"tokens_per_second": tps, "completion_tokens": tokens},
        "max_tokens": tokens
    })
}

#[tokio::test]
async fn client_disconnect_cancels_generation_at_the_engine() {
    let net = common::start(|_| {}).await;
    let engine = net.engine.clone().unwrap();
    let resp = common::post_chat(&net, &net.api_key, &slow_stream_body(1000, 50.0)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(body.next().await.unwrap().unwrap());
    }
    assert_eq!(engine.stats().requests_cancelled.load(Ordering::Relaxed), 0);
    drop(body);
    common::wait_until("engine saw the cancel", Duration::from_secs(3), || {
        engine.stats().requests_cancelled.load(Ordering::Relaxed) == 1
    })
    .await;
    let generated = engine.stats().tokens_generated.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        engine.stats().tokens_generated.load(Ordering::Relaxed),
        generated,
        "the engine kept generating after the cancel"
    );
    assert_eq!(engine.stats().active.load(Ordering::Relaxed), 0);
    common::wait_until("router released the slot", Duration::from_secs(2), || {
        net.router.snapshot().iter().all(|w| w.running == 0)
    })
    .await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_streams() {
    let net = common::start(|_| {}).await;
    let resp = common::post_chat(&net, &net.api_key, &slow_stream_body(20, 40.0)).await;
    assert_eq!(resp.status(), 200);
    let addr = net.gateway_addr;
    let base = net.base_url.clone();
    let key = net.api_key.clone();
    let reader = tokio::spawn(async move { resp.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(async move { net.net.shutdown().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New requests are not served once draining started.
    let late = common::http()
        .post(format!("{base}/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "x"}]}))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(late.is_err(), "gateway at {addr} still accepted a request while draining");
    let text = reader.await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "stream was not drained to its end: {text}");
    assert_eq!(text.matches("\"content\":\"").count(), 21, "role chunk + 20 tokens");
    stopping.await.unwrap();
}

#[tokio::test]
async fn in_flight_limit_sheds_load_at_once() {
    let net = common::start(|c| c.gateway.max_in_flight = 1).await;
    let first = common::post_chat(&net, &net.api_key, &slow_stream_body(50, 20.0)).await;
    assert_eq!(first.status(), 200);
    let started = std::time::Instant::now();
    let second = common::post_chat(&net, &net.api_key, &slow_stream_body(1, 0.0)).await;
    assert_eq!(second.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(500), "shedding must not queue");
    assert_eq!(second.headers()["retry-after"], "1");
    let v: Value = second.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_overloaded");
    drop(first);
    net.net.shutdown().await;
}

#[tokio::test]
async fn body_limit_and_malformed_json_get_openai_errors() {
    let net = common::start(|c| c.gateway.max_body_bytes = 2048).await;
    let big = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let r = common::post_chat(&net, &net.api_key, &big).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");

    let r = common::http()
        .post(format!("{}/chat/completions", net.base_url))
        .bearer_auth(&net.api_key)
        .header("content-type", "application/json")
        .body("{\"model\": \"cocoon-test\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    assert!(v["error"].as_object().unwrap().contains_key("param"));
    net.net.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_ttft() {
    let net = common::start(|_| {}).await;
    let r = common::post_chat(&net, &net.api_key, &slow_stream_body(5, 0.0)).await;
    let _ = r.text().await.unwrap();
    let text = common::metrics_text(net.gateway_metrics_addr.unwrap()).await;
    for needle in [
        "cocoon_http_requests_total{route=\"/v1/chat/completions\",model=\"cocoon-test\",status=\"200\"}",
        "cocoon_time_to_first_token_seconds_bucket",
        "cocoon_tokens_total{model=\"cocoon-test\",kind=\"completion\"}",
        "cocoon_inflight_streams",
        "cocoon_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics:\n{text}");
    }
    let ready = common::http().get(format!("http://{}/readyz", net.gateway_addr)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    net.net.shutdown().await;
}

/// Two gateway replicas share one Redis: a key limited to 3 requests/min gets 3 in total.
#[tokio::test]
async fn rate_limits_are_shared_between_replicas_through_redis() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_file = keys_dir.path().join("keys.json");
    let limited = common::legacy_keys_file(&keys_file, cocoon::dev::DEV_ACCOUNT, Some(Limits { requests_per_minute: 3, tokens_per_minute: 0 }));
    let setup = |c: &mut cocoon::Config| {
        c.gateway.redis_url = Some("redis://127.0.0.1:6379".into());
        c.gateway.keys_file = Some(keys_file.clone());
    };
    let a = common::start(setup).await;
    let b = common::start(setup).await;
    let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let mut statuses = Vec::new();
    for net in [&a, &b, &a, &b] {
        let r = common::post_chat(net, &limited, &body).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1);
            assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
            assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    a.net.shutdown().await;
    b.net.shutdown().await;
}

/// `gateway.insecure_disable_auth` (benchmarks only) serves without any credential and bills
/// the anonymous account; with it off the same request is a 401.
#[tokio::test]
async fn insecure_disable_auth_serves_without_a_key() {
    let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let send = |base: String| {
        let body = body.clone();
        async move { common::http().post(format!("{base}/chat/completions")).json(&body).send().await.unwrap() }
    };
    let open = common::start(|c| {
        c.gateway.insecure_disable_auth = true;
        c.billing.enabled = false;
    })
    .await;
    assert_eq!(send(open.base_url.clone()).await.status(), 200);
    open.net.shutdown().await;
    let normal = common::start(|c| c.billing.enabled = false).await;
    assert_eq!(send(normal.base_url.clone()).await.status(), 401);
    normal.net.shutdown().await;
}

/// #15: `/v1/models` entries carry Cocoon's extensions in `x_cocoon` (worker count, TEE
/// types, context length, the ledger's price), which SDKs ignore; the client's
/// `X-Client-Request-Id` is echoed on every answer (an invalid one is ignored, not altered).
#[tokio::test]
async fn models_carry_x_cocoon_and_client_request_ids_are_echoed() {
    let net = common::start(|_| {}).await;
    let get = |path: &str, client_id: Option<&str>| {
        let mut r = common::http().get(format!("{}/{path}", net.base_url)).bearer_auth(&net.api_key);
        if let Some(id) = client_id {
            r = r.header("x-client-request-id", id);
        }
        r.send()
    };
    let r = get("models", Some("my-trace-42")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-client-request-id"], "my-trace-42");
    let list: Value = r.json().await.unwrap();
    let m = list["data"].as_array().unwrap().iter().find(|m| m["id"] == "cocoon-test").expect("the dev model");
    let x = &m["x_cocoon"];
    assert_eq!(x["workers"], 1, "{m}");
    assert_eq!(x["tee"], json!(["simulated"]), "{m}");
    // `cocoon dev` prices its models (billing.dev_price_per_million, nanoTON per 1M tokens).
    let dev_price = cocoon::Config::default().billing.dev_price_per_million;
    assert_eq!(x["pricing"]["prompt"], dev_price, "{m}");
    assert_eq!(x["pricing"]["completion"], dev_price, "{m}");
    let one: Value = get("models/cocoon-test", None).await.unwrap().json().await.unwrap();
    assert_eq!(one["x_cocoon"], *x);

    // Echoed on inference answers and errors too; an unusable id is not echoed.
    let r = common::http()
        .post(format!("{}/chat/completions", net.base_url))
        .bearer_auth(&net.api_key)
        .header("x-client-request-id", "req-7")
        .json(&json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-client-request-id"], "req-7");
    assert!(r.headers().contains_key("x-request-id"), "our own id as well");
    let r = common::http()
        .post(format!("{}/chat/completions", net.base_url))
        .bearer_auth(&net.api_key)
        .header("x-client-request-id", "x".repeat(513))
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an error answer");
    assert!(!r.headers().contains_key("x-client-request-id"), "over 512 characters: ignored");
    net.net.shutdown().await;
}

/// #15 per-key controls: a model allow-list (other models are 404 `model_not_found`, as if
/// they did not exist, and are left out of `/v1/models`) and a price-coefficient cap used
/// when a request sets none (the hold is placed at it instead of the network's maximum).
#[tokio::test]
async fn a_keys_model_allow_list_and_price_cap_are_enforced() {
    let net = common::start(|_| {}).await;
    let key = |models: Option<Vec<&str>>, cap: Option<u32>| {
        let controls = gateway::keys::KeyControls {
            allowed_models: models.map(|m| m.into_iter().map(String::from).collect()),
            max_price_coefficient: cap,
            ..Default::default()
        };
        let keys = net.keys.clone();
        async move { keys.create_with("t", "dev", None, &controls, "cli").await.unwrap().key }
    };
    let chat = |key: String, body: Value| {
        let url = format!("{}/chat/completions", net.base_url);
        async move { common::http().post(url).bearer_auth(key).json(&body).send().await.unwrap() }
    };
    let models = |key: String| {
        let url = format!("{}/models", net.base_url);
        async move { common::http().get(url).bearer_auth(key).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let hi = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});

    let elsewhere = key(Some(vec!["another-model"]), None).await;
    let r = chat(elsewhere.clone(), hi.clone()).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");
    assert_eq!(models(elsewhere.clone()).await["data"], json!([]));
    let r = common::http().get(format!("{}/models/cocoon-test", net.base_url)).bearer_auth(&elsewhere).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let allowed = key(Some(vec!["cocoon-test"]), None).await;
    assert_eq!(chat(allowed.clone(), hi.clone()).await.status(), 200);
    assert_eq!(models(allowed).await["data"][0]["id"], "cocoon-test");

    // The hold while a slow stream runs: at the key's cap (1.0x) versus the network's
    // maximum coefficient (4.0x) for a key without one.
    let held_during_stream = |key: String| {
        let (base, chat) = (net.base_url.clone(), chat);
        async move {
            let body = json!({"model": "cocoon-test", "stream": true, "max_tokens": 10,
                              "messages": [{"role": "user", "content": "hi"}],
                              "test_engine": {"tokens_per_second": 5.0}});
            let r = chat(key.clone(), body).await;
            assert_eq!(r.status(), 200);
            let b: Value = common::http().get(format!("{base}/account/balance")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
            let _ = r.text().await;
            b["held"].as_i64().unwrap()
        }
    };
    let capped = held_during_stream(key(None, Some(1000)).await).await;
    let uncapped = held_during_stream(key(None, None).await).await;
    assert!(capped > 0 && capped * 3 < uncapped, "held at 1.0x: {capped}, at the network's maximum: {uncapped}");
    net.net.shutdown().await;
}

/// #15 per-key budgets: a key whose daily budget cannot take a request's hold gets 402
/// `budget_exceeded` with the reset time and `Retry-After`, and nothing is charged; a key
/// with room is served, and its day and month spend is the charge once the request settled.
#[tokio::test]
async fn a_keys_daily_and_monthly_budgets_are_enforced() {
    let net = common::start(|_| {}).await;
    let key = |daily: Option<i64>, monthly: Option<i64>| {
        let controls = gateway::keys::KeyControls { daily_budget_nanoton: daily, monthly_budget_nanoton: monthly, ..Default::default() };
        let keys = net.keys.clone();
        async move { keys.create_with("t", "dev", None, &controls, "cli").await.unwrap() }
    };
    let hi = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let chat = |key: String| {
        let (url, body) = (format!("{}/chat/completions", net.base_url), hi.clone());
        async move { common::http().post(url).bearer_auth(key).json(&body).send().await.unwrap() }
    };
    let ledger = net.net.ledger.clone().unwrap();
    let dev = ledger.ensure_account(billing::AccountKind::Client, "dev").await.unwrap();
    let before = ledger.balance(dev).await.unwrap();

    let tight = key(Some(1), None).await;
    let r = chat(tight.key.clone()).await;
    assert_eq!(r.status(), 402);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "budget_exceeded", "{e}");
    assert_eq!(e["error"]["type"], "insufficient_quota", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("daily budget of 1 nanoTON") && msg.contains("resets at") && msg.ends_with("Z."), "{msg}");
    assert_eq!(ledger.balance(dev).await.unwrap(), before, "a refused request holds and charges nothing");

    let roomy = key(Some(1_000_000_000_000), Some(1_000_000_000_000)).await;
    let r = chat(roomy.key.clone()).await;
    assert_eq!(r.status(), 200);
    let _ = r.text().await;
    let charged = before.total - ledger.balance(dev).await.unwrap().total;
    assert!(charged > 0);
    let (day, month) = ledger.key_spend(&roomy.record.id, std::time::SystemTime::now()).await.unwrap();
    assert_eq!((day, month), (charged, charged), "the hold settled to the charge");
    net.net.shutdown().await;
}
