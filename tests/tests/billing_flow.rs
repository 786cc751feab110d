//! Billing through the real gateway (SQLite ledger of `cocoon dev`): a completed request is
//! charged once before the client sees its end, a cut stream is charged for what was relayed,
//! a failure before any token charges nothing, an account that cannot cover the worst case
//! gets 402 before any work, a worker reporting more usage than the request allowed is
//! charged the bound and flagged, and the books balance after each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use billing::{AccountKind, Ledger};
use futures::StreamExt;
use serde_json::{json, Value};

async fn dev_balance(l: &Ledger, name: &str) -> billing::Balance {
    let id = l.find_account(AccountKind::Client, name).await.unwrap().unwrap().id;
    l.balance(id).await.unwrap()
}

async fn assert_books_balance(l: &Ledger) {
    let v = l.check().await.unwrap();
    assert!(v.is_empty(), "ledger invariants violated: {v:?}");
}

#[tokio::test]
async fn completed_requests_are_charged_once_before_the_client_sees_the_end() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let before = dev_balance(&l, "dev").await;
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})).await;
    assert_eq!(r.status(), 200);
    let id: uuid::Uuid = r.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let cost: i64 = r.headers()["x-cocoon-cost-nanoton"].to_str().unwrap().parse().unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(cost > 0);
    let receipt = l.receipt(id).await.unwrap().expect("charged before the answer was sent");
    assert_eq!(receipt.billed.charge, cost);
    assert_eq!(receipt.usage.completion_tokens, body["usage"]["completion_tokens"].as_u64().unwrap());
    let after = dev_balance(&l, "dev").await;
    assert_eq!(before.total - after.total, cost);
    assert_eq!(after.held, 0, "the rest of the hold was released");

    // Stream: the capture commits before [DONE].
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 5})).await;
    let id: uuid::Uuid = r.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let receipt = l.receipt(id).await.unwrap().expect("a stream is charged before [DONE]");
    assert_eq!(receipt.usage.completion_tokens, 5);
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn a_cut_stream_is_charged_for_what_was_relayed() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "go"}], "stream": true,
        "max_tokens": 1000, "test_engine": {"tokens_per_second": 50, "completion_tokens": 1000}})).await;
    let id: uuid::Uuid = r.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let mut s = r.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"content\":\"").count() < 4 {
        seen.push_str(&String::from_utf8_lossy(&s.next().await.unwrap().unwrap()));
    }
    drop(s);
    let mut receipt = None;
    for _ in 0..100 {
        receipt = l.receipt(id).await.unwrap();
        if receipt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let receipt = receipt.expect("the drop guard captured the cut stream");
    // The role chunk plus at least 3 tokens reached the client; far fewer than 1000 were charged.
    assert!((3..100).contains(&receipt.usage.completion_tokens), "{receipt:?}");
    assert_eq!(dev_balance(&l, "dev").await.held, 0);
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn failures_before_any_token_charge_nothing() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let before = dev_balance(&l, "dev").await;
    // The engine rejects this schema (it cannot be resolved): an error before any token.
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}})).await;
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = dev_balance(&l, "dev").await;
    assert_eq!((after.total, after.held), (before.total, 0));
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn an_account_that_cannot_cover_the_worst_case_gets_402() {
    let net = common::start(|c| c.billing.dev_credit_nanoton = 1_000).await;
    let l = net.ledger.clone().unwrap();
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})).await;
    assert_eq!(r.status(), 402);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    let stats = net.engine.as_ref().unwrap().stats().snapshot();
    assert_eq!(stats.requests_started, 0, "no work was done");
    assert_eq!(dev_balance(&l, "dev").await.held, 0);
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

// ---- /v1/account/* and /v1/workers/*/earnings ----

async fn get(net: &cocoon::dev::DevNetwork, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = common::http().get(format!("{}{path}", net.base_url));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

async fn get_json(net: &cocoon::dev::DevNetwork, path: &str, key: &str) -> Value {
    let r = get(net, path, Some(key)).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

fn int(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("{k} is not an integer in {v}"))
}

#[tokio::test]
async fn balance_and_usage_over_http_match_the_ledger_and_the_cost_header() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let before = get_json(&net, "/account/balance", &net.api_key).await;
    assert_eq!(before["object"], "account.balance");
    assert_eq!(before["account"], "dev");
    let credit = 1_000_000_000_000_i64;
    assert_eq!((int(&before, "total"), int(&before, "held"), int(&before, "available")), (credit, 0, credit));
    assert_eq!(before["total_ton"], "1000");

    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 7})).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let cost: i64 = r.headers()["x-cocoon-cost-nanoton"].to_str().unwrap().parse().unwrap();
    let body: Value = r.json().await.unwrap();
    let after = get_json(&net, "/account/balance", &net.api_key).await;
    assert_eq!(int(&after, "total"), credit - cost);
    assert_eq!(int(&after, "held"), 0);
    assert_eq!(int(&after, "available"), credit - cost);
    assert_eq!(dev_balance(&l, "dev").await.total, credit - cost, "HTTP and ledger agree");

    // A stream ending with [DONE], then the usage history, newest first.
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 3})).await;
    let stream_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let usage = get_json(&net, "/account/usage?limit=10", &net.api_key).await;
    assert_eq!(usage["object"], "list");
    assert_eq!(usage["has_more"], false);
    let rows = usage["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{usage}");
    assert_eq!(rows[0]["job_id"], stream_id.as_str(), "newest first");
    assert_eq!(rows[0]["usage"]["completion_tokens"], 3);
    let row = &rows[1];
    assert_eq!(row["object"], "account.usage");
    assert_eq!(row["job_id"], id.as_str());
    assert_eq!(row["model"], "cocoon-test");
    assert_eq!(int(row, "charge"), cost, "the usage row's charge is the x-cocoon-cost-nanoton header");
    assert_eq!(int(row, "cost"), cost);
    assert_eq!(row["worker_coefficient"], 1000);
    assert_eq!(row["usage"]["prompt_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(row["usage"]["completion_tokens"], body["usage"]["completion_tokens"]);
    assert_eq!(row["usage"]["cached_prompt_tokens"], 0);
    assert_eq!(row["usage"]["reasoning_tokens"], 0);
    let receipt = l.receipt(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(int(row, "created_at_ms"), receipt.at_ms);
    assert_eq!(int(row, "created_at"), receipt.at_ms / 1000);
    // The two charges are the whole difference.
    let total = int(&get_json(&net, "/account/balance", &net.api_key).await, "total");
    assert_eq!(credit - total, cost + int(&rows[0], "charge"));

    // limit bounds the page and says there is more.
    let one = get_json(&net, "/account/usage?limit=1", &net.api_key).await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["has_more"], true);
    for bad in ["?limit=0", "?limit=101", "?limit=ten"] {
        let r = get(&net, &format!("/account/usage{bad}"), Some(&net.api_key)).await;
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], "limit", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn a_stream_in_flight_shows_as_held_until_it_ends() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "go"}], "stream": true,
        "max_tokens": 200, "test_engine": {"tokens_per_second": 40, "completion_tokens": 200}})).await;
    let id: uuid::Uuid = r.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    let hold = l.find_hold(id).await.unwrap().expect("the stream holds its worst case");
    let mid = get_json(&net, "/account/balance", &net.api_key).await;
    assert_eq!(int(&mid, "held"), hold.amount);
    assert!(hold.amount > 0);
    assert_eq!(int(&mid, "available"), int(&mid, "total") - hold.amount);
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = get_json(&net, "/account/balance", &net.api_key).await;
        if int(&b, "held") == 0 {
            assert_eq!(int(&b, "available"), int(&b, "total"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hold was never settled: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_outlives_its_hold_is_still_charged() {
    // Holds live 1 s and the reaper runs every second; the stream takes ~4 s, so its hold is
    // reaped mid-stream. Before: the capture found the hold released and the answer was free.
    let net = common::start(|c| {
        c.billing.hold_ttl_secs = 1;
        c.billing.reap_interval_secs = 1;
    })
    .await;
    let l = net.ledger.clone().unwrap();
    let before = get_json(&net, "/account/balance", &net.api_key).await;
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "go"}], "stream": true,
        "max_tokens": 120, "test_engine": {"tokens_per_second": 30, "completion_tokens": 120}})).await;
    let id: uuid::Uuid = r.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while l.find_hold(id).await.unwrap().unwrap().status != billing::HoldStatus::Expired {
        assert!(tokio::time::Instant::now() < deadline, "the reaper never released the stream's hold");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut text = String::new();
    while let Some(chunk) = s.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let receipt = l.receipt(id).await.unwrap().expect("the late capture charged the stream");
    assert_eq!(receipt.usage.completion_tokens, 120);
    assert!(receipt.billed.charge > 0);
    assert_eq!(receipt.held, 0, "charged from the available balance, nothing was reserved");
    let after = get_json(&net, "/account/balance", &net.api_key).await;
    assert_eq!(int(&after, "total"), int(&before, "total") - receipt.billed.charge);
    assert_eq!(int(&after, "held"), 0);
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}

#[tokio::test]
async fn account_endpoints_need_a_key_and_workers_see_only_their_own_earnings() {
    let net = common::start(|_| {}).await;
    for path in ["/account/balance", "/account/usage", "/workers/worker-1/earnings"] {
        let r = get(&net, path, None).await;
        assert_eq!(r.status(), 401, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{path}: {v}");
        let r = get(&net, path, Some("sk-cocoon-notakeyatallnotakeyatallnotakeyatallnotakeyat")).await;
        assert_eq!(r.status(), 401, "{path}");
    }

    // The dev worker has not served anything yet: its operator sees zeros.
    let operator = net.keys.create("operator", "worker:worker-1", None).await.unwrap().key;
    let e = get_json(&net, "/workers/worker-1/earnings", &operator).await;
    assert_eq!((int(&e, "balance"), int(&e, "earned"), int(&e, "jobs")), (0, 0, 0), "{e}");

    let mut charged = 0;
    for _ in 0..3 {
        let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})).await;
        assert_eq!(r.status(), 200);
        charged += r.headers()["x-cocoon-cost-nanoton"].to_str().unwrap().parse::<i64>().unwrap();
    }
    let e = get_json(&net, "/workers/worker-1/earnings", &operator).await;
    assert_eq!(e["object"], "worker.earnings");
    assert_eq!(e["worker_id"], "worker-1");
    assert_eq!(int(&e, "jobs"), 3);
    // The dev network's fee is 500 bps: the worker earns the charges less the fee, rounded
    // per job, so within 3 nanoTON of 95 %.
    let earned = int(&e, "earned");
    assert!((earned - charged * 95 / 100).abs() <= 3, "earned {earned} of {charged}");
    assert_eq!(int(&e, "balance"), earned, "nothing paid out yet");
    assert_eq!(e["payouts"], json!([]));
    assert_eq!(e["payout_address"], Value::Null);
    let l = net.ledger.clone().unwrap();
    let w = l.find_account(AccountKind::Worker, "worker-1").await.unwrap().unwrap();
    assert_eq!(l.worker_earnings(w.id).await.unwrap().earned, earned);

    // A payout of the whole balance: pending in the outbox, already off the balance.
    let address = format!("0:{}", "ab".repeat(32));
    l.set_payout_address(w.id, &address, false).await.unwrap();
    let created = l.create_payouts(1).await.unwrap();
    assert_eq!(created.len(), 1);
    let e = get_json(&net, "/workers/worker-1/earnings", &operator).await;
    assert_eq!((int(&e, "balance"), int(&e, "earned")), (0, earned), "{e}");
    assert_eq!(e["payout_address"], address.as_str());
    let payouts = e["payouts"].as_array().unwrap();
    assert_eq!(payouts.len(), 1, "{e}");
    assert_eq!(payouts[0]["id"], created[0].id);
    assert_eq!(int(&payouts[0], "amount"), earned);
    assert_eq!(payouts[0]["status"], "pending");
    assert_eq!(payouts[0]["address"], address.as_str());
    assert_eq!(payouts[0]["tx_hash"], Value::Null);

    // A client key cannot read a worker's earnings, not even one whose account has the
    // worker's name, nor one worker another's.
    let namesake = net.keys.create("namesake", "worker-1", None).await.unwrap().key;
    for (key, path) in [
        (&net.api_key, "/workers/worker-1/earnings"),
        (&namesake, "/workers/worker-1/earnings"),
        (&operator, "/workers/worker-2/earnings"),
    ] {
        let r = get(&net, path, Some(key)).await;
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "worker_not_found", "{v}");
    }
    // An operator's key buys no inference.
    let r = common::post_chat(&net, &operator, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "permission_denied", "{v}");
    net.net.shutdown().await;
}

#[tokio::test]
async fn account_endpoints_without_billing_say_so() {
    let net = common::start(|c| c.billing.enabled = false).await;
    for path in ["/account/balance", "/account/usage", "/workers/worker-1/earnings"] {
        let r = get(&net, path, Some(&net.api_key)).await;
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "billing_disabled", "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    net.net.shutdown().await;
}

/// A dishonest (or broken) engine behind a worker reports far more usage than the request
/// allowed. The gateway charges at most what the request could have cost (its declared
/// `max_tokens`), never the report, and raises the alarm metric naming the worker.
#[tokio::test]
async fn a_worker_reporting_usage_beyond_the_request_is_charged_the_bound_and_flagged() {
    // An OpenAI-compatible engine whose answers claim a million completion tokens.
    let app = axum::Router::new()
        .route(
            "/v1/models",
            axum::routing::get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "cocoon-test", "object": "model", "owned_by": "t"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(|| async {
                axum::Json(json!({
                    "id": "chatcmpl-liar", "object": "chat.completion", "created": 1, "model": "cocoon-test",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1_000_000, "total_tokens": 1_000_003}
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let net = common::start(|c| {
        c.engine.kind = cocoon::config::EngineKind::External;
        c.worker.engine_url = engine_url;
    })
    .await;
    let l = net.ledger.clone().unwrap();
    let before = dev_balance(&l, "dev").await;
    let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})).await;
    assert_eq!(r.status(), 200);
    let id: uuid::Uuid = r.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let cost: i64 = r.headers()["x-cocoon-cost-nanoton"].to_str().unwrap().parse().unwrap();
    let receipt = l.receipt(id).await.unwrap().expect("charged");
    assert_eq!(receipt.usage.completion_tokens, 8, "billed at the request's max_tokens, not the report");
    assert_eq!(receipt.billed.charge, cost);
    assert_eq!(before.total - dev_balance(&l, "dev").await.total, cost);
    let metrics = common::metrics_text(net.gateway_metrics_addr.unwrap()).await;
    let alarm = metrics
        .lines()
        .find(|l| l.starts_with("cocoon_gateway_usage_over_bounds_total{") && l.contains(&format!("worker=\"{}\"", net.router.snapshot()[0].worker_id)))
        .unwrap_or_else(|| panic!("no over-bounds alarm for the worker:\n{metrics}"));
    let count: f64 = alarm.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{alarm}");
    assert_books_balance(&l).await;
    net.net.shutdown().await;
}
