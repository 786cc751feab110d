//! Talking to the local OpenAI-compatible engine (vLLM, llama-server, the test engine).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use protocol::{Job, JobError, JobEvent, ModelInfo, Usage};
use serde::Deserialize;

use crate::metrics::{JobOutcome, WorkerMetrics};
use crate::sink::EventSink;
use crate::sse::SseParser;
use crate::supervisor::{EngineState, EngineSupervisor};

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
}

/// The few fields the worker reads from an engine answer; everything else passes through.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
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
        })
    }

    /// A client for the engine `sup` runs, sharing its metrics and state.
    pub fn supervised(sup: &EngineSupervisor) -> Result<Self, EngineError> {
        let mut me = Self::new(sup.url())?;
        me.metrics = sup.metrics().clone();
        me.state = Some(sup.state());
        Ok(me)
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
                id: m.id,
                created: m.created,
                owned_by: m.owned_by,
                // Set by the worker from its own measurement (`measure`), never the engine's word.
                digest: None,
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
}

impl Tally<'_> {
    async fn emit(&mut self, event: JobEvent) -> bool {
        match &event {
            JobEvent::Response { .. } | JobEvent::Done { .. } => self.outcome = Some(JobOutcome::Completed),
            JobEvent::Failed { .. } => self.outcome = Some(JobOutcome::Failed),
            _ => {}
        }
        self.sink.emit(event).await
    }
}

/// Runs one job to its end, reporting every event. Aborting the future stops it at once and
/// drops the engine connection.
pub(crate) async fn run_job(engine: &EngineClient, job: Job, sink: &mut EventSink) {
    let guard = engine.metrics.job_started();
    let mut tally = Tally { sink, outcome: None };
    run(engine, job, &mut tally).await;
    // No terminal event: the link went away mid-job.
    guard.finish(tally.outcome.unwrap_or(JobOutcome::Cancelled));
}

async fn run(engine: &EngineClient, job: Job, sink: &mut Tally<'_>) {
    let url = format!("{}{}", engine.base, job.endpoint.path());
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
    if !job.stream {
        match resp.bytes().await {
            Ok(body) => {
                let usage = serde_json::from_slice::<Peek>(&body).ok().and_then(|p| p.usage);
                let body = crate::normalize::response(body);
                sink.emit(JobEvent::Response { body, usage }).await;
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine body cut");
                sink.emit(failed(502, "engine answer was cut", true, None)).await;
            }
        }
        return;
    }
    relay_stream(resp, &job, sink).await;
}

async fn relay_stream(resp: reqwest::Response, job: &Job, sink: &mut Tally<'_>) {
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    let include_usage = crate::normalize::wants_usage(&job.body);
    let mut usage: Option<Usage> = None;
    let mut sent_any = false;
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine stream broke");
                sink.emit(JobEvent::Failed {
                    error: JobError::new(502, "engine stream broke", !sent_any),
                    usage,
                })
                .await;
                return;
            }
        };
        parser.push(&piece);
        while let Some(data) = parser.next_data() {
            if &data[..] == b"[DONE]" {
                sink.emit(JobEvent::Done { usage }).await;
                return;
            }
            if let Ok(peek) = serde_json::from_slice::<Peek>(&data) {
                if peek.error.is_some() {
                    // The engine reported an error inside the stream; relay it as the failure body.
                    sink.emit(JobEvent::Failed {
                        error: JobError {
                            status: 500,
                            message: "engine reported an error mid-stream".into(),
                            retryable: !sent_any,
                            body: Some(data),
                        },
                        usage,
                    })
                    .await;
                    return;
                }
                if peek.usage.is_some() {
                    usage = peek.usage;
                }
            }
            sent_any = true;
            for data in crate::normalize::stream_chunk(data, include_usage) {
                if !sink.emit(JobEvent::Chunk { data }).await {
                    return;
                }
            }
        }
    }
    // The engine closed the stream without [DONE].
    sink.emit(JobEvent::Failed {
        error: JobError::new(502, "engine stream ended without [DONE]", !sent_any),
        usage,
    })
    .await;
}
