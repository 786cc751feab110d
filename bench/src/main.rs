//! `cocoon-bench`: the clients `scripts/bench` needs beyond an HTTP load generator (oha).
//!
//! - `stream`: streaming requests one after another, timing the first token and every chunk as
//!   the client sees it (time to first token, interval between chunks, tokens/s).
//! - `whole`: non-streaming requests one after another, timing each answer.
//! - `idle`: holds N streams open and idle (the engine sends the first chunk and then waits),
//!   reports when all are open and keeps them until a line arrives on stdin, so the harness can
//!   read each process's RSS with N streams open.
//!
//! - `load`: closed- or open-loop load spread round-robin over several gateway replicas
//!   (`scripts/scale-out`); see `load.rs`.
//!
//! Output is one JSON object per line on stdout; the harness parses it.

mod load;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(name = "cocoon-bench", about = "Benchmark clients for scripts/bench and scripts/scale-out")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Full URL of the chat completions endpoint, e.g. http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    key: Option<String>,
    #[arg(long, default_value = "cocoon-test")]
    model: String,
    /// JSON object merged into every request body (e.g. the test engine's `test_engine` timing).
    #[arg(long, default_value = "{}")]
    extra: String,
    #[arg(long, default_value = "Tell me a long story about a cocoon.")]
    prompt: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sequential streaming requests; prints TTFT, chunk interval and tokens/s percentiles.
    Stream {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
        /// Requests sent first and not counted.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Give up on the whole run after this long (what was measured is still printed).
        #[arg(long, default_value_t = 120)]
        budget_secs: u64,
    },
    /// Sequential non-streaming requests; prints latency percentiles.
    Whole {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
    /// Opens N streams that stay idle after their first chunk; holds them until stdin has a line.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        streams: usize,
        /// New streams started per second (a burst of thousands of SYNs overflows the backlog).
        #[arg(long, default_value_t = 2000)]
        open_rate: u64,
        /// Stop waiting for the streams to open after this long and report how many did.
        #[arg(long, default_value_t = 60)]
        ready_timeout_secs: u64,
        /// Release the streams after this long even without a line on stdin.
        #[arg(long, default_value_t = 120)]
        hold_secs: u64,
    },
    /// Closed-loop (--concurrency) or open-loop (--rate) load over several replicas; prints
    /// throughput, latency percentiles, errors by kind and per-URL counts.
    Load(load::LoadArgs),
}

fn body(t: &Target, max_tokens: u32) -> anyhow::Result<Value> {
    make_body(&t.model, &t.prompt, &t.extra, max_tokens)
}

/// A streaming chat completion body with `extra` (a JSON object) merged in.
fn make_body(model: &str, prompt: &str, extra: &str, max_tokens: u32) -> anyhow::Result<Value> {
    let mut b = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": true,
    });
    let extra: Value = serde_json::from_str(extra).context("--extra is not JSON")?;
    let Value::Object(extra) = extra else { bail!("--extra must be a JSON object") };
    if let Value::Object(m) = &mut b {
        for (k, v) in extra {
            m.insert(k, v);
        }
    }
    Ok(b)
}

fn client(conns: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(conns)
        .build()?)
}

fn request(c: &reqwest::Client, t: &Target, body: &Value) -> reqwest::RequestBuilder {
    let r = c.post(&t.url).json(body);
    match &t.key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

/// Does this SSE `data:` payload carry generated text (not the empty role chunk, not usage)?
fn has_content(data: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return false };
    v.get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("delta"))
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// Splits complete SSE events out of `buf`, calling `on_data` with each `data:` payload.
/// Returns true once `[DONE]` was seen.
fn drain_events(buf: &mut Vec<u8>, mut on_data: impl FnMut(&[u8])) -> bool {
    let mut done = false;
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..end + 2).collect();
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if data == b"[DONE]" {
                    done = true;
                } else {
                    on_data(data);
                }
            }
        }
    }
    done
}

struct StreamTiming {
    ttft: Duration,
    total: Duration,
    /// Arrival of each content chunk, from the request's start.
    chunks: Vec<Duration>,
}

async fn one_stream(c: &reqwest::Client, t: &Target, body: &Value) -> anyhow::Result<StreamTiming> {
    let start = Instant::now();
    let resp = request(c, t, body).send().await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut chunks = Vec::new();
    let mut done = false;
    while let Some(piece) = stream.next().await {
        buf.extend_from_slice(&piece?);
        let now = start.elapsed();
        done |= drain_events(&mut buf, |d| {
            if has_content(d) {
                chunks.push(now);
            }
        });
    }
    if !done {
        bail!("stream ended without [DONE]");
    }
    let Some(ttft) = chunks.first().copied() else { bail!("stream carried no content") };
    Ok(StreamTiming { ttft, total: start.elapsed(), chunks })
}

/// Nearest-rank percentiles of microsecond samples.
fn summary(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        // Nearest rank; the epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
        let rank = ((p / 100.0) * v.len() as f64 - 1e-9).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "n": v.len(), "mean": mean, "p50": pick(50.0), "p90": pick(90.0), "p99": pick(99.0),
        "p99.9": pick(99.9), "max": v[v.len() - 1],
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn run_stream(t: Target, requests: usize, max_tokens: u32, warmup: usize, budget: Duration) -> anyhow::Result<()> {
    let c = client(4)?;
    let b = body(&t, max_tokens)?;
    let deadline = Instant::now() + budget;
    for _ in 0..warmup {
        one_stream(&c, &t, &b).await.context("warm-up stream failed")?;
    }
    let (mut ttft, mut total, mut gaps, mut per_chunk, mut tps, mut nchunks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut errors = 0u64;
    let mut last_error = None;
    let mut truncated = false;
    for _ in 0..requests {
        if Instant::now() > deadline {
            truncated = true;
            break;
        }
        match one_stream(&c, &t, &b).await {
            Ok(s) => {
                ttft.push(us(s.ttft));
                total.push(us(s.total));
                nchunks.push(s.chunks.len() as f64);
                for w in s.chunks.windows(2) {
                    gaps.push(us(w[1] - w[0]));
                }
                if let (Some(first), Some(last)) = (s.chunks.first(), s.chunks.last()) {
                    if s.chunks.len() > 1 {
                        let span = *last - *first;
                        per_chunk.push(us(span) / (s.chunks.len() - 1) as f64);
                        if span > Duration::ZERO {
                            tps.push((s.chunks.len() - 1) as f64 / span.as_secs_f64());
                        }
                    }
                }
            }
            Err(e) => {
                errors += 1;
                last_error = Some(e.to_string());
            }
        }
    }
    println!(
        "{}",
        json!({
            "kind": "stream", "requests": ttft.len(), "errors": errors, "last_error": last_error,
            "truncated_by_budget": truncated, "max_tokens": max_tokens,
            "ttft_us": summary(ttft), "total_us": summary(total), "chunks": summary(nchunks),
            "chunk_interval_us": summary(gaps), "per_chunk_us": summary(per_chunk),
            "decode_tokens_per_s": summary(tps),
        })
    );
    Ok(())
}

async fn run_whole(t: Target, requests: usize, max_tokens: u32, warmup: usize) -> anyhow::Result<()> {
    let c = client(4)?;
    let mut b = body(&t, max_tokens)?;
    b["stream"] = json!(false);
    let one = |c: &reqwest::Client| {
        let r = request(c, &t, &b);
        async move {
            let start = Instant::now();
            let resp = r.send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            if !status.is_success() {
                bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>());
            }
            Ok::<_, anyhow::Error>(us(start.elapsed()))
        }
    };
    for _ in 0..warmup {
        one(&c).await.context("warm-up request failed")?;
    }
    let mut lat = Vec::with_capacity(requests);
    let mut errors = 0u64;
    let mut last_error = None;
    for _ in 0..requests {
        match one(&c).await {
            Ok(v) => lat.push(v),
            Err(e) => {
                errors += 1;
                last_error = Some(e.to_string());
            }
        }
    }
    println!(
        "{}",
        json!({"kind": "whole", "requests": lat.len(), "errors": errors, "last_error": last_error, "latency_us": summary(lat)})
    );
    Ok(())
}

async fn run_idle(t: Target, streams: usize, open_rate: u64, ready_timeout: Duration, hold: Duration) -> anyhow::Result<()> {
    let c = client(streams)?;
    let b = Arc::new(body(&t, 3)?);
    let t = Arc::new(t);
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / open_rate.max(1) as f64);
    for i in 0..streams {
        let (c, t, b, opened, failed, last_error) =
            (c.clone(), t.clone(), b.clone(), opened.clone(), failed.clone(), last_error.clone());
        tasks.spawn(async move {
            let r: anyhow::Result<()> = async {
                let resp = request(&c, &t, &b).send().await?;
                if !resp.status().is_success() {
                    bail!("HTTP {}", resp.status());
                }
                let mut s = resp.bytes_stream();
                let mut first = true;
                while let Some(piece) = s.next().await {
                    piece?;
                    if first {
                        first = false;
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = last_error.lock() {
                    *g = Some(e.to_string());
                }
            }
        });
        // Pace the opens: sleep once per batch, since timers are millisecond-grained.
        if (i + 1) % 64 == 0 {
            let due = start + gap * (i as u32 + 1);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let deadline = start + ready_timeout;
    loop {
        let n = opened.load(Ordering::Relaxed) as usize;
        let f = failed.load(Ordering::Relaxed) as usize;
        if n >= streams || n + f >= streams || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = last_error.lock().ok().and_then(|g| g.clone());
    println!(
        "{}",
        json!({
            "kind": "idle_ready", "requested": streams, "opened": opened.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed), "seconds": start.elapsed().as_secs_f64(),
            "last_error": err,
        })
    );
    // The harness reads RSS now, then writes a line (or closes stdin) to release the streams.
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = tokio::time::timeout(hold, stdin.read_line(&mut line)).await;
    let still_open = streams as u64 - failed.load(Ordering::Relaxed);
    tasks.abort_all();
    println!("{}", json!({"kind": "idle_done", "held": still_open}));
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Stream { target, requests, max_tokens, warmup, budget_secs } => {
            run_stream(target, requests, max_tokens, warmup, Duration::from_secs(budget_secs)).await
        }
        Cmd::Whole { target, requests, max_tokens, warmup } => run_whole(target, requests, max_tokens, warmup).await,
        Cmd::Idle { target, streams, open_rate, ready_timeout_secs, hold_secs } => {
            run_idle(
                target,
                streams,
                open_rate,
                Duration::from_secs(ready_timeout_secs),
                Duration::from_secs(hold_secs),
            )
            .await
        }
        Cmd::Load(args) => load::run(args).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", json!({"kind": "error", "error": format!("{e:#}")}));
            eprintln!("cocoon-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads() {
        let mut buf = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[{\"del".to_vec();
        let mut seen = Vec::new();
        assert!(!drain_events(&mut buf, |d| seen.push(has_content(d))));
        buf.extend_from_slice(b"ta\":{\"content\":\"\"}}]}\n\ndata: [DONE]\n\n");
        assert!(drain_events(&mut buf, |d| seen.push(has_content(d))));
        assert_eq!(seen, vec![true, false]);
        assert!(buf.is_empty());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = summary((1..=1000).map(f64::from).collect());
        assert_eq!(s["p50"], 500.0);
        assert_eq!(s["p99"], 990.0);
        assert_eq!(s["p99.9"], 999.0);
        assert_eq!(s["max"], 1000.0);
    }
}
