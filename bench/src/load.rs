//! `cocoon-bench load`: chat completions against one or more gateway replicas, for
//! `scripts/scale-out`.
//!
//! Requests go to the given URLs in turn (request i to URL i mod n), as an L4 balancer doing
//! round-robin spreads them when every connection carries the same number of requests.
//! Connections to each URL are kept alive and reused.
//!
//! - Closed loop (`--concurrency N`): N tasks, each sending its next request as soon as the
//!   last one answered: the most the system serves at that concurrency.
//! - Open loop (`--rate R`): request i is due at `i / R` seconds, whether or not the earlier
//!   ones have answered, and its latency is measured from that due time, not from when it
//!   was actually sent: a stalled server (or a stalled client) shows up as latency instead of
//!   as fewer requests (no coordinated omission).
//!
//! Requests due in the first `--warmup-secs` are sent but not counted. Latency percentiles
//! are over the requests answered 200; the others are counted by kind in `errors`.
//! `send_lag_ms` is how late the client itself sent (tokio's timer has millisecond
//! resolution, so about 1 ms on average in the open loop), and `latency_from_send_ms` the
//! latency without it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// Full URL of a replica's chat completions endpoint; repeat (or separate with commas) for
    /// several replicas. Requests go to them round-robin.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Sent as `Authorization: Bearer KEY`; repeat (or separate with commas) to spread the
    /// requests over several keys (accounts): each key in turn goes to every URL in turn.
    #[arg(long = "key", value_delimiter = ',')]
    pub keys: Vec<String>,
    #[arg(long, default_value = "cocoon-test")]
    pub model: String,
    #[arg(long, default_value = "Say hello to the cocoon.")]
    pub prompt: String,
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// JSON object merged into every request body.
    #[arg(long, default_value = "{}")]
    pub extra: String,
    /// Streaming requests (read to `[DONE]`; latency is to the end of the stream).
    #[arg(long)]
    pub stream: bool,
    /// Closed loop: this many requests in flight at all times.
    #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: requests per second, sent on schedule whatever the answers do.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Seconds of load before the measured part, not counted.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_secs: f64,
    /// One request's bound; past it the request counts as a `timeout` error.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_secs: f64,
    /// Open loop: requests in flight beyond this are not sent and count as
    /// `client_in_flight_cap` errors (the client's own limit, so it cannot run out of sockets).
    #[arg(long, default_value_t = 8192)]
    pub max_in_flight: usize,
}

/// The URL and the key (indices) of the next request: URLs in turn, and the key moves on
/// after each round of the URLs, so every key reaches every URL whatever the two counts.
pub fn pick(counter: &AtomicU64, urls: usize, keys: usize) -> (usize, usize) {
    let i = counter.fetch_add(1, Ordering::Relaxed);
    let urls = urls.max(1) as u64;
    (
        (i % urls) as usize,
        ((i / urls) % keys.max(1) as u64) as usize,
    )
}

/// Open loop: when request `i` is due, counted from the start.
pub fn due_at(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error kind: `http_<status>`, `timeout`, `connect`, `body`, `request`,
    /// `stream_incomplete`, `client_in_flight_cap`.
    Error(String),
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub url: usize,
    /// When the request was due (open loop) or started (closed loop), from the start.
    pub due: Duration,
    /// From `due` to the end of the answer.
    pub latency: Duration,
    /// From `due` to when it was actually sent (open loop: the client's own lag).
    pub send_lag: Duration,
    pub outcome: Outcome,
    pub error_text: Option<String>,
}

/// Counts what the window [warmup, warmup + duration) saw.
#[derive(Debug, Default)]
pub struct Recorder {
    warmup: Duration,
    window_end: Duration,
    per_url_sent: Vec<u64>,
    per_url_ok: Vec<u64>,
    latencies_us: Vec<f64>,
    /// From when each answered request was actually sent (its latency less its send lag).
    from_send_us: Vec<f64>,
    send_lag_us: Vec<f64>,
    errors: BTreeMap<String, u64>,
    warmup_sent: u64,
    warmup_ok: u64,
    /// End of the last counted request, from the start.
    last_end: Duration,
    last_error: Option<String>,
}

impl Recorder {
    pub fn new(urls: usize, warmup: Duration, duration: Duration) -> Self {
        Self {
            warmup,
            window_end: warmup + duration,
            per_url_sent: vec![0; urls],
            per_url_ok: vec![0; urls],
            ..Default::default()
        }
    }

    pub fn record(&mut self, s: Sample) {
        let ok = s.outcome == Outcome::Ok;
        if s.due < self.warmup {
            self.warmup_sent += 1;
            self.warmup_ok += u64::from(ok);
            return;
        }
        if s.due >= self.window_end {
            return;
        }
        self.per_url_sent[s.url] += 1;
        self.send_lag_us.push(s.send_lag.as_secs_f64() * 1e6);
        self.last_end = self.last_end.max(s.due + s.latency);
        match s.outcome {
            Outcome::Ok => {
                self.per_url_ok[s.url] += 1;
                self.latencies_us.push(s.latency.as_secs_f64() * 1e6);
                self.from_send_us
                    .push(s.latency.saturating_sub(s.send_lag).as_secs_f64() * 1e6);
            }
            Outcome::Error(kind) => {
                *self.errors.entry(kind).or_default() += 1;
                if s.error_text.is_some() {
                    self.last_error = s.error_text;
                }
            }
        }
    }

    /// The report; `closed_loop`: throughput is over the time to the last counted answer
    /// (requests still running at the window's end were started in it and are waited for).
    pub fn report(self, urls: &[String], closed_loop: bool) -> Value {
        let sent: u64 = self.per_url_sent.iter().sum();
        let ok: u64 = self.per_url_ok.iter().sum();
        let nominal = (self.window_end - self.warmup).as_secs_f64();
        let wall = if closed_loop {
            self.last_end
                .saturating_sub(self.warmup)
                .as_secs_f64()
                .max(nominal)
        } else {
            nominal
        };
        let per_url: Vec<Value> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| json!({"url": u, "sent": self.per_url_sent[i], "ok": self.per_url_ok[i]}))
            .collect();
        json!({
            "sent": sent,
            "ok": ok,
            "failed": sent - ok,
            "errors": self.errors,
            "measured_s": wall,
            "achieved_rps": if wall > 0.0 { ok as f64 / wall } else { 0.0 },
            "latency_ms": to_ms(crate::summary(self.latencies_us)),
            "latency_from_send_ms": to_ms(crate::summary(self.from_send_us)),
            "send_lag_ms": to_ms(crate::summary(self.send_lag_us)),
            "per_url": per_url,
            "warmup": {"sent": self.warmup_sent, "ok": self.warmup_ok},
            "last_error": self.last_error,
        })
    }
}

/// A microsecond summary (see `summary`) in milliseconds; `n` stays a count.
pub fn to_ms(mut s: Value) -> Value {
    if let Value::Object(m) = &mut s {
        for (k, v) in m.iter_mut() {
            if k != "n" {
                if let Some(x) = v.as_f64() {
                    *v = json!(x / 1000.0);
                }
            }
        }
    }
    s
}

fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

struct Shared {
    client: reqwest::Client,
    urls: Vec<String>,
    keys: Vec<String>,
    body: Value,
    stream: bool,
    start: Instant,
    next_url: AtomicU64,
    recorder: Mutex<Recorder>,
}

impl Shared {
    /// Sends one request due at `due` (from the start) and records it.
    async fn one(&self, due: Duration) {
        let (url, key) = pick(&self.next_url, self.urls.len(), self.keys.len());
        let send_lag = self.start.elapsed().saturating_sub(due);
        let mut req = self.client.post(&self.urls[url]).json(&self.body);
        if let Some(k) = self.keys.get(key) {
            req = req.bearer_auth(k);
        }
        let (outcome, error_text) = match self.exchange(req).await {
            Ok(()) => (Outcome::Ok, None),
            Err((kind, text)) => (Outcome::Error(kind), Some(text)),
        };
        let latency = self.start.elapsed().saturating_sub(due);
        let s = Sample {
            url,
            due,
            latency,
            send_lag,
            outcome,
            error_text,
        };
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(s);
    }

    async fn exchange(&self, req: reqwest::RequestBuilder) -> Result<(), (String, String)> {
        let err = |e: reqwest::Error| (classify(&e).to_string(), e.to_string());
        let resp = req.send().await.map_err(err)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err((
                format!("http_{}", status.as_u16()),
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ),
            ));
        }
        if !self.stream {
            resp.bytes().await.map_err(err)?;
            return Ok(());
        }
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut done = false;
        while let Some(piece) = body.next().await {
            buf.extend_from_slice(&piece.map_err(err)?);
            done |= crate::drain_events(&mut buf, |_| {});
        }
        if done {
            Ok(())
        } else {
            Err((
                "stream_incomplete".into(),
                "stream ended without [DONE]".into(),
            ))
        }
    }
}

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    if a.urls.is_empty() {
        bail!("--url is required");
    }
    // (Duration::from_secs_f64 panics on negative, NaN or infinite seconds.)
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(a.duration_secs)
        || !positive(a.timeout_secs)
        || !(positive(a.warmup_secs) || a.warmup_secs == 0.0)
    {
        bail!("--duration-secs and --timeout-secs must be > 0, --warmup-secs >= 0");
    }
    if a.rate.is_some_and(|r| !positive(r)) {
        bail!("--rate must be > 0");
    }
    if a.concurrency == Some(0) {
        bail!("--concurrency must be > 0");
    }
    let mut body = crate::make_body(&a.model, &a.prompt, &a.extra, a.max_tokens)?;
    body["stream"] = json!(a.stream);
    let conns = a.concurrency.unwrap_or(256).max(1);
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(conns)
        .timeout(Duration::from_secs_f64(a.timeout_secs))
        .build()?;
    let warmup = Duration::from_secs_f64(a.warmup_secs);
    let duration = Duration::from_secs_f64(a.duration_secs);
    let end = warmup + duration;
    let shared = Arc::new(Shared {
        client,
        urls: a.urls.clone(),
        keys: a.keys.clone(),
        body,
        stream: a.stream,
        start: Instant::now(),
        next_url: AtomicU64::new(0),
        recorder: Mutex::new(Recorder::new(a.urls.len(), warmup, duration)),
    });
    let mut tasks = tokio::task::JoinSet::new();
    match (a.concurrency, a.rate) {
        (Some(n), _) => {
            for _ in 0..n {
                let s = shared.clone();
                tasks.spawn(async move {
                    loop {
                        let due = s.start.elapsed();
                        if due >= end {
                            break;
                        }
                        s.one(due).await;
                    }
                });
            }
        }
        (None, Some(rate)) => {
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut i = 0u64;
            loop {
                let due = due_at(i, rate);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until((shared.start + due).into()).await;
                i += 1;
                if in_flight.load(Ordering::Relaxed) >= a.max_in_flight {
                    let s = Sample {
                        url: pick(&shared.next_url, shared.urls.len(), shared.keys.len()).0,
                        due,
                        latency: Duration::ZERO,
                        send_lag: Duration::ZERO,
                        outcome: Outcome::Error("client_in_flight_cap".into()),
                        error_text: None,
                    };
                    shared
                        .recorder
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(s);
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (s, f) = (shared.clone(), in_flight.clone());
                tasks.spawn(async move {
                    s.one(due).await;
                    f.fetch_sub(1, Ordering::Relaxed);
                });
                // Reap finished tasks as we go, so the set does not grow with the run.
                while tasks.try_join_next().is_some() {}
            }
        }
        (None, None) => bail!("give --concurrency or --rate"),
    }
    while tasks.join_next().await.is_some() {}
    let recorder = std::mem::take(&mut *shared.recorder.lock().unwrap_or_else(|p| p.into_inner()));
    let mut out = recorder.report(&a.urls, a.concurrency.is_some());
    if let Value::Object(m) = &mut out {
        m.insert("kind".into(), json!("load"));
        m.insert(
            "mode".into(),
            json!(if a.concurrency.is_some() {
                "closed"
            } else {
                "open"
            }),
        );
        m.insert("concurrency".into(), json!(a.concurrency));
        m.insert("offered_rps".into(), json!(a.rate));
        m.insert("duration_s".into(), json!(a.duration_secs));
        m.insert("warmup_s".into(), json!(a.warmup_secs));
        m.insert("stream".into(), json!(a.stream));
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_in_turn_and_every_key_reaches_every_url() {
        let c = AtomicU64::new(0);
        let picks: Vec<usize> = (0..7).map(|_| pick(&c, 3, 1).0).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
        let one = AtomicU64::new(0);
        assert!((0..5).all(|_| pick(&one, 1, 0) == (0, 0)));
        // Three URLs, three keys: key k is not tied to URL k.
        let c = AtomicU64::new(0);
        let pairs: std::collections::BTreeSet<(usize, usize)> =
            (0..9).map(|_| pick(&c, 3, 3)).collect();
        assert_eq!(pairs.len(), 9);
    }

    #[test]
    fn open_loop_schedule_is_fixed_by_the_rate() {
        assert_eq!(due_at(0, 100.0), Duration::ZERO);
        assert_eq!(due_at(1, 100.0), Duration::from_millis(10));
        assert_eq!(due_at(250, 100.0), Duration::from_millis(2500));
        assert_eq!(due_at(3, 0.5), Duration::from_secs(6));
    }

    fn sample(url: usize, due_ms: u64, latency_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            url,
            due: Duration::from_millis(due_ms),
            latency: Duration::from_millis(latency_ms),
            send_lag: Duration::ZERO,
            outcome,
            error_text: None,
        }
    }

    #[test]
    fn only_the_window_is_counted_and_latency_is_over_successes() {
        let urls = vec!["a".to_string(), "b".to_string()];
        let mut r = Recorder::new(2, Duration::from_secs(1), Duration::from_secs(2));
        r.record(sample(0, 500, 5, Outcome::Ok)); // warm-up
        r.record(sample(0, 3000, 5, Outcome::Ok)); // after the window
        for i in 0..100u64 {
            r.record(sample((i % 2) as usize, 1000 + i * 10, i + 1, Outcome::Ok));
        }
        r.record(sample(1, 1500, 7000, Outcome::Error("http_503".into())));
        let v = r.report(&urls, false);
        assert_eq!(v["sent"], 101);
        assert_eq!(v["ok"], 100);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["errors"]["http_503"], 1);
        assert_eq!(v["warmup"]["sent"], 1);
        assert_eq!(v["per_url"][0]["ok"], 50);
        assert_eq!(v["per_url"][1]["sent"], 51);
        // Nearest rank over 1..=100 ms; the failed request's 7 s is not in it.
        assert_eq!(v["latency_ms"]["p50"], 50.0);
        assert_eq!(v["latency_ms"]["p99"], 99.0);
        assert_eq!(v["latency_ms"]["max"], 100.0);
        assert_eq!(v["achieved_rps"], 50.0);
    }

    #[test]
    fn the_clients_own_lag_is_reported_and_can_be_taken_out() {
        let mut r = Recorder::new(1, Duration::ZERO, Duration::from_secs(1));
        let mut s = sample(0, 10, 10, Outcome::Ok);
        s.send_lag = Duration::from_millis(3);
        r.record(s);
        let v = r.report(&["a".to_string()], false);
        assert_eq!(v["latency_ms"]["p50"], 10.0);
        assert_eq!(v["send_lag_ms"]["p50"], 3.0);
        assert_eq!(v["latency_from_send_ms"]["p50"], 7.0);
    }

    #[test]
    fn closed_loop_throughput_waits_for_the_last_answer() {
        let mut r = Recorder::new(1, Duration::ZERO, Duration::from_secs(1));
        for i in 0..10u64 {
            r.record(sample(0, i * 100, 1000, Outcome::Ok));
        }
        // The last request started at 0.9 s and answered at 1.9 s.
        let v = r.report(&["a".to_string()], true);
        assert!(
            (v["measured_s"].as_f64().unwrap_or(0.0) - 1.9).abs() < 1e-9,
            "{v}"
        );
    }
}
