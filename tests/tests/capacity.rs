//! Capacity through the whole network (gateway, router, worker-agent, test engine in one
//! process): a bounded, fair queue per model with a deadline; stream headers at once and
//! SSE keep-alives while queued; 503 with `Retry-After` past the queue's limit or deadline;
//! flow control from a client that stops reading back to the engine; the generation cap the
//! hold covers sent to the engine; load shed before the ledger is touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

fn slow_stream(tokens: u32, tps: f64) -> Value {
    json!({
        "model": "cocoon-test",
        "messages": [{"role": "user", "content": "count slowly"}],
        "stream": true,
        "max_tokens": tokens,
        "test_engine": {"tokens_per_second": tps, "completion_tokens": tokens}
    })
}

fn quick(stream: bool) -> Value {
    json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream})
}

/// Reads a stream until `needle` appears; returns the text read so far.
async fn read_until(body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin), needle: &str, within: Duration) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    while !text.contains(needle) {
        let next = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within {within:?}; read so far: {text}"));
        match next {
            Some(Ok(b)) => text.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("stream ended before {needle:?} ({other:?}); read: {text}"),
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_stream_gets_headers_at_once_and_keepalives_until_its_turn() {
    let net = common::start(|c| {
        c.worker.slots = 1;
        c.gateway.sse_keepalive_ms = 150;
    })
    .await;
    // The one slot is busy for about 1.5 s.
    let first = common::post_chat(&net, &net.api_key, &slow_stream(15, 10.0)).await;
    assert_eq!(first.status(), 200);
    let mut first = first.bytes_stream();
    read_until(&mut first, "data: {", Duration::from_secs(5)).await;

    let started = Instant::now();
    let second = common::post_chat(&net, &net.api_key, &quick(true)).await;
    assert_eq!(second.status(), 200, "admitted to the queue: the headers go out at once");
    assert!(started.elapsed() < Duration::from_millis(800), "headers took {:?}", started.elapsed());
    assert_eq!(second.headers()["content-type"], "text/event-stream");
    assert_eq!(net.router.queued("cocoon-test"), 1);
    let mut second = second.bytes_stream();
    let waiting = read_until(&mut second, ": keep-alive", Duration::from_secs(3)).await;
    assert!(!waiting.contains("data:"), "nothing but keep-alives while queued: {waiting}");
    // Its turn comes when the first stream ends.
    read_until(&mut first, "data: [DONE]", Duration::from_secs(10)).await;
    let rest = read_until(&mut second, "data: [DONE]", Duration::from_secs(10)).await;
    assert!(rest.contains("\"role\":\"assistant\""), "{rest}");
    assert_eq!(net.router.queued("cocoon-test"), 0);
    net.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_limit_or_its_deadline_the_answer_is_503_with_retry_after_at_once() {
    let net = common::start(|c| {
        c.worker.slots = 1;
        c.router.max_queued_per_model = 1;
        c.router.queue_timeout_ms = 400;
    })
    .await;
    let busy = common::post_chat(&net, &net.api_key, &slow_stream(40, 10.0)).await;
    let mut busy = busy.bytes_stream();
    read_until(&mut busy, "data: {", Duration::from_secs(5)).await;

    // One may wait (non-streaming: its answer is the 503 once its deadline passes) ...
    let key = net.api_key.clone();
    let base = net.base_url.clone();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let r = common::http().post(format!("{base}/chat/completions")).bearer_auth(&key).json(&quick(false)).send().await.unwrap();
        (r.status().as_u16(), r.headers().get("retry-after").cloned(), r.json::<Value>().await.unwrap(), started.elapsed())
    });
    common::wait_until("one request queued", Duration::from_secs(3), || net.router.queued("cocoon-test") == 1).await;
    // ... the next finds the queue full and is told at once.
    let started = Instant::now();
    let full = common::post_chat(&net, &net.api_key, &quick(false)).await;
    assert!(started.elapsed() < Duration::from_millis(300), "refused in {:?}", started.elapsed());
    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_capacity");
    assert!(body["error"]["message"].as_str().unwrap().contains("queue limit 1"), "{body}");

    let (status, retry_after, body, waited) = waiter.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    assert!(body["error"]["message"].as_str().unwrap().contains("became free within"), "{body}");
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(3), "waited {waited:?}");
    drop(busy);
    net.net.shutdown().await;
}

/// A client that stops reading stops its engine stream (the job's flow-control window runs
/// out, the worker stops reading the engine, the engine blocks on its socket) instead of
/// piling events up anywhere; reading again finishes the answer whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_pushes_back_to_the_engine() {
    let net = common::start(|_| {}).await;
    let engine = net.engine.clone().unwrap();
    // The test engine's largest answer.
    const TOKENS: u64 = 100_000;
    let job = protocol::Job {
        id: uuid::Uuid::now_v7(),
        endpoint: protocol::Endpoint::ChatCompletions,
        model: "cocoon-test".into(),
        stream: true,
        body: bytes::Bytes::from(
            serde_json::to_vec(&json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "go"}],
                "stream": true, "max_tokens": TOKENS, "test_engine": {"completion_tokens": TOKENS}}))
            .unwrap(),
        ),
        e2e: None,
    };
    let mut events = net.router.dispatch(job, router::DispatchOptions::default()).await.unwrap();
    events.next().await.unwrap();
    // Not reading: generation must stall well short of the answer.
    let mut last = 0;
    let stalled = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = engine.stats().tokens_generated.load(Ordering::Relaxed);
        if now == last {
            break now;
        }
        assert!(now < TOKENS, "the engine generated the whole answer with nobody reading");
        last = now;
    };
    eprintln!("engine stalled after {stalled} of {TOKENS} tokens with one event read");
    assert!(stalled < TOKENS / 2, "the engine ran {stalled} tokens ahead of a reader that took one event");
    // Reading again resumes the engine: once the socket buffers between engine and worker
    // drain, it generates again.
    let resumed = tokio::time::timeout(Duration::from_secs(60), async {
        while engine.stats().tokens_generated.load(Ordering::Relaxed) <= stalled {
            let ev = events.next().await;
            assert!(matches!(ev, Some(protocol::JobEvent::Chunk { .. })), "{ev:?}");
        }
    })
    .await;
    assert!(resumed.is_ok(), "the engine did not resume once the reader read again");
    drop(events);
    net.net.shutdown().await;
}

/// A request without `max_tokens` is sent the cap its hold covers, so it cannot run past
/// what was reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_tokens_the_engine_gets_the_cap_the_hold_covers() {
    let net = common::start(|c| c.gateway.default_max_tokens = 7).await;
    let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "talk"}],
        "test_engine": {"completion_tokens": 500}});
    let r = common::post_chat(&net, &net.api_key, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 7, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    net.net.shutdown().await;
}

/// At the in-flight limit the next request is shed before its hold: no ledger write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_before_the_hold() {
    let net = common::start(|c| c.gateway.max_in_flight = 1).await;
    let busy = common::post_chat(&net, &net.api_key, &slow_stream(30, 10.0)).await;
    let mut busy = busy.bytes_stream();
    read_until(&mut busy, "data: {", Duration::from_secs(5)).await;
    let shed = common::post_chat(&net, &net.api_key, &quick(false)).await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let job_id: uuid::Uuid = shed.headers()["x-request-id"].to_str().unwrap().parse().unwrap();
    let ledger = net.ledger.clone().unwrap();
    assert!(ledger.find_hold(job_id).await.unwrap().is_none(), "a shed request placed a hold");
    drop(busy);
    net.net.shutdown().await;
}
