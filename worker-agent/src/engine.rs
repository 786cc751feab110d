//! Talking to the local OpenAI-compatible engine (vLLM, llama-server, the test engine).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use protocol::{Endpoint, Job, JobError, JobEvent, ModelInfo, Usage};
use serde::Deserialize;

use crate::config::EngineProcessKind;
use crate::metrics::{JobOutcome, WorkerMetrics};
use crate::normalize::{Chunk, Quirks, StreamRewriter};
use crate::sink::EventSink;
use crate::sse::SseParser;
use crate::supervisor::{EngineFacts, EngineState, EngineSupervisor};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("engine at {url} not ready after {waited:?}: {last}")]
    NotReady {
        url: String,
        waited: Duration,
        last: String,
    },
    #[error("engine HTTP client: {0}")]
    Client(String),
}

#[derive(Clone)]
pub struct EngineClient {
    base: String,
    http: reqwest::Client,
    metrics: Arc<WorkerMetrics>,
    /// Set when the worker supervises the engine: its state, so a down engine is reported
    /// at once instead of after failed requests.
    state: Option<tokio::sync::watch::Receiver<EngineState>>,
    /// Supervised: which engine it is (`None`: an engine someone else runs, make unknown).
    kind: Option<EngineProcessKind>,
    /// Supervised: changes when the engine is lost, so running jobs fail at once.
    epoch: Option<tokio::sync::watch::Receiver<u64>>,
    /// Supervised: what the supervisor learned (parallelism, version, tool calls).
    facts: Option<Arc<Mutex<EngineFacts>>>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    owned_by: String,
    /// vLLM: `ModelCard.max_model_len` (vllm/entrypoints/openai/protocol.py).
    #[serde(default)]
    max_model_len: Option<u64>,
    /// llama-server: `meta.n_ctx`, the context each request gets.
    #[serde(default)]
    meta: Option<ModelMeta>,
}

#[derive(Deserialize)]
struct ModelMeta {
    #[serde(default)]
    n_ctx: Option<u64>,
}

/// The few fields the worker reads from a whole answer; everything else passes through.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    usage: Option<Usage>,
}

/// What a request body says that the worker checks before the engine sees it.
#[derive(Deserialize)]
struct RequestPeek {
    #[serde(default)]
    best_of: Option<serde_json::Value>,
}

impl EngineClient {
    pub fn new(base_url: &str) -> Result<Self, EngineError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(EngineError::BadUrl {
                url: base_url.to_string(),
                reason: "must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            // Below llama-server's 5 s keep-alive, so the pool never hands out a connection
            // the engine is about to close.
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .map_err(|e| EngineError::Client(e.to_string()))?;
        Ok(Self {
            base,
            http,
            metrics: WorkerMetrics::new(),
            state: None,
            kind: None,
            epoch: None,
            facts: None,
        })
    }

    /// A client for the engine `sup` runs, sharing its metrics and state.
    pub fn supervised(sup: &EngineSupervisor) -> Result<Self, EngineError> {
        let mut me = Self::new(sup.url())?;
        me.metrics = sup.metrics().clone();
        me.state = Some(sup.state());
        me.kind = Some(sup.kind());
        me.epoch = Some(sup.epoch());
        me.facts = Some(sup.shared_facts());
        Ok(me)
    }

    /// The supervised engine's kind (`None` for an engine someone else runs).
    pub fn kind(&self) -> Option<EngineProcessKind> {
        self.kind
    }

    /// What the supervisor knows about the engine (default for an unsupervised one).
    pub fn facts(&self) -> EngineFacts {
        self.facts
            .as_ref()
            .map(|f| f.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// How many sequences the engine runs at once, if known: the supervisor's (vLLM's
    /// `--max-num-seqs`, llama-server's `/props`), else asked of the engine (`/props`).
    pub async fn parallelism(&self) -> Option<u32> {
        if let Some(p) = self.facts().parallelism {
            return Some(p);
        }
        if self.kind == Some(EngineProcessKind::Vllm) {
            return None;
        }
        let resp = self
            .http
            .get(format!("{}/props", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        crate::engine_load::parse_props(&resp.bytes().await.ok()?).0
    }

    /// Whether the engine can call tools, where that is known: the supervisor's (vLLM's
    /// `--enable-auto-tool-choice`, llama-server's `/props` read when it became ready), else,
    /// for a llama-server not read yet, asked of it (`/props`).
    pub async fn tool_calls(&self) -> Option<bool> {
        if let Some(t) = self.facts().tool_calls {
            return Some(t);
        }
        if self.kind != Some(EngineProcessKind::LlamaServer) {
            return None;
        }
        let resp = self.http.get(format!("{}/props", self.base)).timeout(Duration::from_secs(2)).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        crate::engine_load::parse_template_tools(&resp.bytes().await.ok()?)
    }

    /// What the engine kind is known to honour: (json_schema, logprobs, multiple choices).
    /// llama-server turns a `json_schema` into a grammar and answers `logprobs`, but refuses
    /// `n` > 1 and `best_of` (llama.cpp's OpenAI-compatible parameter parsing in tools/server,
    /// `// Handle "n" field`: "Only one completion choice is allowed"); vLLM serves all three (guided decoding, `SamplingParams`
    /// n/logprobs). An engine someone else runs (or a custom command) is unknown: not checked.
    pub fn capabilities(&self) -> (Option<bool>, Option<bool>, Option<bool>) {
        match self.kind {
            Some(EngineProcessKind::LlamaServer) => (Some(true), Some(true), Some(false)),
            Some(EngineProcessKind::Vllm) => (Some(true), Some(true), Some(true)),
            Some(EngineProcessKind::Command) | None => (None, None, None),
        }
    }

    fn quirks(&self) -> Quirks {
        match self.kind {
            Some(EngineProcessKind::LlamaServer) => Quirks::LLAMA_SERVER,
            Some(EngineProcessKind::Vllm) => Quirks::VLLM,
            Some(EngineProcessKind::Command) | None => Quirks::UNKNOWN,
        }
    }

    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    /// False while a supervised engine is starting, down or stopped.
    pub fn supervised_ready(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.borrow().is_ready())
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The HTTP client the worker uses towards its engine (loopback).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn models(&self) -> Result<Vec<ModelInfo>, String> {
        let resp = self
            .http
            .get(format!("{}/v1/models", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("GET /v1/models: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET /v1/models: HTTP {}", resp.status()));
        }
        let list: ModelList = resp
            .json()
            .await
            .map_err(|e| format!("GET /v1/models: bad body: {e}"))?;
        Ok(list
            .data
            .into_iter()
            .map(|m| ModelInfo {
                max_model_len: m
                    .max_model_len
                    .or(m.meta.and_then(|x| x.n_ctx))
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n > 0),
                id: m.id,
                created: m.created,
                owned_by: m.owned_by,
                // Set by the worker from its own measurement (`measure`), never the engine's word.
                digest: None,
                ..ModelInfo::default()
            })
            .collect())
    }

    /// A supervised engine is healthy when its supervisor says so (it probes the engine
    /// itself, so this never waits on a hung engine); any other engine when `/v1/models`
    /// lists a model.
    pub async fn healthy(&self) -> bool {
        if self.state.is_some() {
            return self.supervised_ready();
        }
        self.models().await.is_ok_and(|m| !m.is_empty())
    }

    /// Polls `/v1/models` until the engine lists at least one model.
    pub async fn wait_for_models(&self, wait: Duration) -> Result<Vec<ModelInfo>, EngineError> {
        let start = tokio::time::Instant::now();
        loop {
            let last = match self.models().await {
                Ok(m) if !m.is_empty() => return Ok(m),
                Ok(_) => "engine lists no model".to_string(),
                Err(e) => e,
            };
            if start.elapsed() >= wait {
                return Err(EngineError::NotReady {
                    url: self.base.clone(),
                    waited: wait,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn failed(status: u16, message: impl Into<String>, retryable: bool, body: Option<Bytes>) -> JobEvent {
    let mut error = JobError::new(status, message, retryable);
    error.body = body;
    JobEvent::Failed { error, usage: None }
}

/// Passes events on and notes how the job ended, for the worker's metrics.
struct Tally<'a> {
    sink: &'a mut EventSink,
    outcome: Option<JobOutcome>,
    /// Chunks relayed so far: after the first, a failure is no longer retryable.
    chunks: u64,
}

impl Tally<'_> {
    async fn emit(&mut self, event: JobEvent) -> bool {
        match &event {
            JobEvent::Response { .. } | JobEvent::Done { .. } => self.outcome = Some(JobOutcome::Completed),
            JobEvent::Failed { .. } => self.outcome = Some(JobOutcome::Failed),
            JobEvent::Chunk { .. } => self.chunks += 1,
            JobEvent::Receipt { .. } => {}
        }
        self.sink.emit(event).await
    }
}

/// Runs one job to its end, reporting every event. Aborting the future stops it at once and
/// drops the engine connection.
pub(crate) async fn run_job(engine: &EngineClient, job: Job, sink: &mut EventSink) {
    let guard = engine.metrics.job_started();
    let mut tally = Tally { sink, outcome: None, chunks: 0 };
    let mut epoch = engine.epoch.clone();
    if let Some(e) = epoch.as_mut() {
        // Only a loss from now on concerns this job.
        e.borrow_and_update();
    }
    let lost = async {
        match epoch.as_mut() {
            // The supervisor lost the engine this job runs on (crashed, hung): fail now
            // rather than wait for a connection a hung engine may never close.
            Some(e) => {
                let _ = e.changed().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let engine_lost = tokio::select! {
        () = run(engine, job, &mut tally) => false,
        () = lost => true,
    };
    if engine_lost && tally.outcome.is_none() {
        let retryable = tally.chunks == 0;
        tally
            .emit(failed(503, "the engine was lost (crashed or hung) and is being restarted", retryable, None))
            .await;
    }
    // No terminal event: the link went away mid-job.
    guard.finish(tally.outcome.unwrap_or(JobOutcome::Cancelled));
}

/// OpenAI-shaped error body for a request the worker refuses itself.
fn refusal(message: &str, param: &str, code: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    Bytes::from(body.to_string())
}

/// A request this engine cannot serve, refused before it reaches the engine.
fn refuse_early(engine: &EngineClient, job: &Job) -> Option<JobEvent> {
    if engine.kind != Some(EngineProcessKind::Vllm) {
        return None;
    }
    let peek = serde_json::from_slice::<RequestPeek>(&job.body).ok()?;
    // vLLM v1 refuses best_of > 1 (vllm/v1/engine/processor.py: "vLLM V1 does not yet support
    // best_of."), as a 400 or, for a stream, as an error event after the 200.
    let best_of = peek.best_of.as_ref().and_then(serde_json::Value::as_f64)?;
    (best_of > 1.0).then(|| {
        let msg = format!("`best_of` must be 1 on this model's engine (vLLM v1 does not support best_of > 1), got {best_of}.");
        failed(400, msg.clone(), false, Some(refusal(&msg, "best_of", "unsupported_parameter")))
    })
}

async fn run(engine: &EngineClient, mut job: Job, sink: &mut Tally<'_>) {
    if let Some(refused) = refuse_early(engine, &job) {
        sink.emit(refused).await;
        return;
    }
    // The Responses API: passed through to an engine that serves it (vLLM, for what its
    // endpoint serves), else run on the engine's chat completions, translated here (in the
    // TEE). `crate::responses_native` says which and why.
    let mut responses = None;
    let mut native = None;
    if job.endpoint == Endpoint::Responses {
        let prepared = match crate::responses_native::route(engine.kind, &job.body) {
            crate::responses_native::Route::Native => crate::responses_native::to_engine(&job.body).map(|(b, echo)| {
                native = Some(echo);
                b
            }),
            crate::responses_native::Route::Translate => crate::responses::to_chat(&job.body).map(|(b, ctx)| {
                responses = Some(ctx);
                b
            }),
        };
        match prepared {
            Ok(body) => job.body = body,
            Err(e) => {
                let msg = format!("The request cannot be served: {}.", e.0);
                sink.emit(failed(400, msg.clone(), false, Some(refusal(&msg, "input", "invalid_request")))).await;
                return;
            }
        }
    }
    let engine_path = if responses.is_some() { Endpoint::ChatCompletions.path() } else { job.endpoint.path() };
    let url = format!("{}{engine_path}", engine.base);
    let mut rewriter = None;
    if job.stream && native.is_none() {
        let plan = crate::normalize::usage_plan(job.body.clone(), engine.kind == Some(EngineProcessKind::Vllm));
        job.body = plan.body;
        rewriter = Some(StreamRewriter::new(engine.quirks(), plan.client_usage));
    }
    let mut req = engine
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if job.stream {
        // llama-server closes the connection after an SSE response without saying so
        // (no `Connection: close`); pooled, the next request on it would fail unsent. A
        // stream gets its own connection, which loopback makes cheap (~0.1 ms).
        req = req.header(reqwest::header::CONNECTION, "close");
    }
    let resp = match req.body(job.body.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            // Nothing reached the engine: safe for the router to try another worker.
            tracing::warn!(job_id = %job.id, error = %e, "engine unreachable");
            sink.emit(failed(502, "engine unreachable", true, None)).await;
            return;
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.ok();
        // 4xx are the request's fault: another worker would answer the same.
        let retryable = status.is_server_error() || status.as_u16() == 429;
        sink.emit(failed(status.as_u16(), format!("engine answered HTTP {status}"), retryable, body),
        )
        .await;
        return;
    }
    if let Some(echo) = native {
        if job.stream {
            relay_native_stream(resp, &job, crate::responses_native::NativeStream::new(echo), sink).await;
            return;
        }
        match resp.bytes().await {
            Ok(body) => match crate::responses_native::whole(&echo, &body) {
                Ok((body, usage)) => {
                    sink.emit(JobEvent::Response { body, usage }).await;
                }
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e.0, "engine answer is not a Response object");
                    sink.emit(JobEvent::Failed { error: JobError::new(502, e.0, false), usage: None }).await;
                }
            },
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine body cut");
                sink.emit(failed(502, "engine answer was cut", true, None)).await;
            }
        }
        return;
    }
    let Some(rewriter) = rewriter else {
        match resp.bytes().await {
            Ok(body) => {
                let usage = serde_json::from_slice::<Peek>(&body).ok().and_then(|p| p.usage);
                let body = crate::normalize::response(body, engine.quirks());
                let body = match &responses {
                    None => body,
                    Some(ctx) => match crate::responses::from_chat(ctx, &body, usage.as_ref()) {
                        Ok(b) => b,
                        Err(e) => {
                            // The engine did generate: its usage is billed.
                            tracing::warn!(job_id = %job.id, error = %e.0, "engine answer not translatable to a Response");
                            sink.emit(JobEvent::Failed { error: JobError::new(502, e.0, false), usage }).await;
                            return;
                        }
                    },
                };
                sink.emit(JobEvent::Response { body, usage }).await;
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine body cut");
                sink.emit(failed(502, "engine answer was cut", true, None)).await;
            }
        }
        return;
    };
    relay_stream(resp, &job, rewriter, responses.map(crate::responses::StreamTranslator::new), sink).await;
}

/// vLLM v0.11's `EngineDeadError` message (vllm/v1/engine/exceptions.py): its streams report
/// it as a 400 `BadRequestError` (the default of `create_streaming_error_response`), but the
/// engine core is dead and another worker can serve the request.
const VLLM_ENGINE_DEAD: &str = "EngineCore encountered an issue";

/// Status and retryability of an error event inside a stream. `error.code` is an HTTP status
/// for vLLM (`ErrorInfo.code: int`) and llama-server; anything else is a 500. Retryable only
/// before the first chunk, and only for what another worker may not hit (5xx, 429).
fn stream_error(code: Option<u16>, message: &str, sent_any: bool) -> (u16, bool) {
    let status = match code {
        _ if message.starts_with(VLLM_ENGINE_DEAD) => 503,
        Some(c) if (400..=599).contains(&c) => c,
        _ => 500,
    };
    (status, !sent_any && (status >= 500 || status == 429))
}

/// Relays the engine's stream; with `responses`, its chunks become Responses events first.
async fn relay_stream(
    resp: reqwest::Response,
    job: &Job,
    mut rewriter: StreamRewriter,
    mut responses: Option<crate::responses::StreamTranslator>,
    sink: &mut Tally<'_>,
) {
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    let mut usage: Option<Usage> = None;
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine stream broke");
                let retryable = sink.chunks == 0;
                sink.emit(JobEvent::Failed {
                    error: JobError::new(502, "engine stream broke", retryable),
                    usage,
                })
                .await;
                return;
            }
        };
        parser.push(&piece);
        while let Some(data) = parser.next_data() {
            if &data[..] == b"[DONE]" {
                // Tool calls' first deltas still held back (an engine that ended a call's
                // choice without a finish reason).
                let owed = rewriter.finish();
                let mut out = match responses.as_mut() {
                    Some(t) => owed.iter().flat_map(|c| t.chunk(c)).collect(),
                    None => owed,
                };
                if let Some(t) = responses.as_mut() {
                    out.extend(t.finish(usage.as_ref()));
                }
                for data in out {
                    if !sink.emit(JobEvent::Chunk { data }).await {
                        return;
                    }
                }
                sink.emit(JobEvent::Done { usage }).await;
                return;
            }
            match rewriter.chunk(data.clone()) {
                Chunk::Error(e) => {
                    let (status, retryable) = stream_error(e.code, &e.message, sink.chunks > 0);
                    // The engine's error object is relayed as the failure body.
                    sink.emit(JobEvent::Failed {
                        error: JobError {
                            status,
                            message: "engine reported an error mid-stream".into(),
                            retryable,
                            body: Some(data),
                        },
                        usage,
                    })
                    .await;
                    return;
                }
                Chunk::Relay { out, usage: u } => {
                    if u.is_some() {
                        usage = u;
                    }
                    let out = match responses.as_mut() {
                        Some(t) => out.iter().flat_map(|c| t.chunk(c)).collect(),
                        None => out,
                    };
                    for data in out {
                        if !sink.emit(JobEvent::Chunk { data }).await {
                            return;
                        }
                    }
                }
            }
        }
    }
    // The engine closed the stream without [DONE].
    let retryable = sink.chunks == 0;
    sink.emit(JobEvent::Failed {
        error: JobError::new(502, "engine stream ended without [DONE]", retryable),
        usage,
    })
    .await;
}

/// Relays an engine's own Responses stream (`crate::responses_native`): its events, corrected,
/// until the terminal one. It has no `[DONE]`; a stream that ends before its terminal event
/// (vLLM drops the connection when generation fails) is a failed job.
async fn relay_native_stream(
    resp: reqwest::Response,
    job: &Job,
    mut events: crate::responses_native::NativeStream,
    sink: &mut Tally<'_>,
) {
    use crate::responses_native::Step;
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine stream broke");
                let retryable = sink.chunks == 0;
                sink.emit(JobEvent::Failed { error: JobError::new(502, "engine stream broke", retryable), usage: None }).await;
                return;
            }
        };
        parser.push(&piece);
        while let Some(data) = parser.next_data() {
            match events.event(&data) {
                Step::Relay(data) => {
                    if !sink.emit(JobEvent::Chunk { data }).await {
                        return;
                    }
                }
                Step::End(data) => {
                    if sink.emit(JobEvent::Chunk { data }).await {
                        sink.emit(JobEvent::Done { usage: events.usage() }).await;
                    }
                    return;
                }
                Step::Failed(body) => {
                    let retryable = sink.chunks == 0;
                    sink.emit(JobEvent::Failed {
                        error: JobError {
                            status: 500,
                            message: "engine reported an error mid-stream".into(),
                            retryable,
                            body: Some(body),
                        },
                        usage: None,
                    })
                    .await;
                    return;
                }
            }
        }
    }
    let retryable = sink.chunks == 0;
    sink.emit(JobEvent::Failed {
        error: JobError::new(502, "engine stream ended before response.completed", retryable),
        usage: None,
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mid_stream_error_codes_map_to_status_and_retryability() {
        assert_eq!(stream_error(Some(400), "bad", false), (400, false));
        assert_eq!(stream_error(Some(503), "busy", false), (503, true));
        assert_eq!(stream_error(Some(503), "busy", true), (503, false), "never after the first chunk");
        assert_eq!(stream_error(Some(429), "slow down", false), (429, true));
        assert_eq!(stream_error(Some(200), "?", false), (500, true));
        assert_eq!(stream_error(None, "?", false), (500, true));
        assert_eq!(
            stream_error(Some(400), "EngineCore encountered an issue. See stack trace (above) for the root cause.", false),
            (503, true)
        );
    }
}
