//! Billing through the real gateway (SQLite ledger of `cocoon dev`): a completed request is
//! charged once before the client sees its end, a cut stream is charged for what was relayed,
//! a failure before any token charges nothing, an account that cannot cover the worst case
//! gets 402 before any work, and the books balance after each.

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
