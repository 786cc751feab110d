//! The edge under hostile or broken conditions: a body or request head that never finishes
//! arriving, the rate-limit store going away, `/metrics` kept off the public listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A declared body that never arrives is answered 408 after `gateway.body_read_timeout_ms`,
/// instead of holding a task (and an in-flight slot) for as long as the client likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_gets_408() {
    let net = common::start(|c| c.gateway.body_read_timeout_ms = 300).await;
    let mut tcp = TcpStream::connect(net.gateway_addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":",
        net.api_key
    );
    let started = Instant::now();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("an answer within 5 s").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    net.net.shutdown().await;
}

/// A client that connects and dribbles a request head is disconnected after
/// `gateway.header_read_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_finishes_is_cut_off() {
    let net = common::start(|c| c.gateway.header_read_timeout_ms = 300).await;
    let mut tcp = TcpStream::connect(net.gateway_addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    // hyper answers 408 or just closes; either way the connection ends, and soon.
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let mut all = Vec::new();
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closed the connection within 5 s");
    let text = String::from_utf8_lossy(&r);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    net.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_their_own_listener_only() {
    let net = common::start(|_| {}).await;
    let public = common::http().get(format!("http://{}/metrics", net.gateway_addr)).send().await.unwrap();
    assert_eq!(public.status(), 404, "/metrics must not be on the public API");
    let m = net.gateway_metrics_addr.expect("a metrics listener");
    assert!(m.ip().is_loopback());
    let text = common::http().get(format!("http://{m}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("cocoon_"), "{text}");
    net.net.shutdown().await;
}

/// A TCP relay to the local Redis that the test can cut (closing every connection and
/// refusing new ones) and restore, so Redis "goes down" for this gateway alone.
struct CuttableRedis {
    addr: std::net::SocketAddr,
    up: Arc<tokio::sync::watch::Sender<bool>>,
}

impl CuttableRedis {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let up = Arc::new(up);
        let u = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !*u.borrow() {
                    continue; // down: accept and drop at once
                }
                let mut down = u.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect("127.0.0.1:6379").await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

async fn limited_chat(net: &common::Net) -> (u16, Option<String>, Value) {
    let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let r = common::post_chat(net, &net.api_key, &body).await;
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap())
}

/// With the rate-limit store down, limits fail closed by default (503 with `Retry-After`),
/// fail open when configured, and recover by themselves when the store comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_fail_closed_when_redis_is_down_unless_configured_open() {
    for fail_open in [false, true] {
        let redis = CuttableRedis::start().await;
        let url = format!("redis://{}/", redis.addr);
        let net = common::start(|c| {
            c.gateway.redis_url = Some(url);
            c.gateway.rate_limit_fail_open = fail_open;
        })
        .await;
        assert_eq!(limited_chat(&net).await.0, 200);
        redis.set_up(false);
        let (status, retry, body) = limited_chat(&net).await;
        if fail_open {
            assert_eq!(status, 200, "fail open serves without limits: {body}");
        } else {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
            assert_eq!(retry.as_deref(), Some("1"));
        }
        redis.set_up(true);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if limited_chat(&net).await.0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "rate limits did not recover after Redis came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        net.net.shutdown().await;
    }
}

/// Fresh attestation reports cost every worker a quote: limited per client; without a nonce
/// the recent cached report is served, to anyone, at no cost to the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_reports_cannot_be_monopolised() {
    let net = common::start(|c| {
        c.gateway.attestation_reports_per_minute = 2;
        c.gateway.attestation_cache_secs = 60;
    })
    .await;
    let url = |nonce: Option<&str>| {
        let base = net.base_url.clone();
        match nonce {
            Some(n) => format!("{base}/attestation/report?model=cocoon-test&nonce={n}"),
            None => format!("{base}/attestation/report?model=cocoon-test"),
        }
    };
    for i in 0..2 {
        let r = common::http().get(url(Some(&format!("{i:064x}")))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["nonce"], format!("{i:064x}"));
    }
    let r = common::http().get(url(Some(&format!("{:064x}", 9)))).send().await.unwrap();
    assert_eq!(r.status(), 429, "the third fresh report in a minute from one client");
    assert!(r.headers().contains_key("retry-after"));
    // Cached reports are still served, and are the same evidence until they age out.
    let a: Value = common::http().get(url(None)).send().await.unwrap().json().await.unwrap();
    let b: Value = common::http().get(url(None)).send().await.unwrap().json().await.unwrap();
    assert_eq!(a["nonce"], b["nonce"]);
    assert_eq!(a["generated_at"], b["generated_at"]);
    assert_eq!(a["workers"].as_array().unwrap().len(), 1);
    net.net.shutdown().await;
}
