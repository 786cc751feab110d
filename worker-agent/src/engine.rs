//! Talking to the local OpenAI-compatible engine (vLLM, llama-server, the test engine).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use protocol::{Job, JobError, JobEvent, ModelInfo, Usage, WorkerToRouter};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::sse::SseParser;

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
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EngineError::Client(e.to_string()))?;
        Ok(Self { base, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
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
            })
            .collect())
    }

    pub async fn healthy(&self) -> bool {
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

async fn emit(to_router: &mpsc::Sender<WorkerToRouter>, job: &Job, event: JobEvent) -> bool {
    to_router
        .send(WorkerToRouter::Event {
            job_id: job.id,
            event,
        })
        .await
        .is_ok()
}

fn failed(status: u16, message: impl Into<String>, retryable: bool, body: Option<Bytes>) -> JobEvent {
    let mut error = JobError::new(status, message, retryable);
    error.body = body;
    JobEvent::Failed { error, usage: None }
}

/// Runs one job to its end, reporting every event. Aborting the future stops it at once and
/// drops the engine connection.
pub(crate) async fn run_job(engine: &EngineClient, job: Job, to_router: &mpsc::Sender<WorkerToRouter>) {
    let url = format!("{}{}", engine.base, job.endpoint.path());
    let resp = match engine
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(job.body.clone())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            // Nothing reached the engine: safe for the router to try another worker.
            tracing::warn!(job_id = %job.id, error = %e, "engine unreachable");
            emit(to_router, &job, failed(502, "engine unreachable", true, None)).await;
            return;
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.ok();
        // 4xx are the request's fault: another worker would answer the same.
        let retryable = status.is_server_error() || status.as_u16() == 429;
        emit(
            to_router,
            &job,
            failed(status.as_u16(), format!("engine answered HTTP {status}"), retryable, body),
        )
        .await;
        return;
    }
    if !job.stream {
        match resp.bytes().await {
            Ok(body) => {
                let usage = serde_json::from_slice::<Peek>(&body).ok().and_then(|p| p.usage);
                emit(to_router, &job, JobEvent::Response { body, usage }).await;
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine body cut");
                emit(to_router, &job, failed(502, "engine answer was cut", true, None)).await;
            }
        }
        return;
    }
    relay_stream(resp, &job, to_router).await;
}

async fn relay_stream(resp: reqwest::Response, job: &Job, to_router: &mpsc::Sender<WorkerToRouter>) {
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    let mut usage: Option<Usage> = None;
    let mut sent_any = false;
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "engine stream broke");
                emit(to_router, job, JobEvent::Failed {
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
                emit(to_router, job, JobEvent::Done { usage }).await;
                return;
            }
            if let Ok(peek) = serde_json::from_slice::<Peek>(&data) {
                if peek.error.is_some() {
                    // The engine reported an error inside the stream; relay it as the failure body.
                    emit(to_router, job, JobEvent::Failed {
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
            if !emit(to_router, job, JobEvent::Chunk { data }).await {
                return;
            }
        }
    }
    // The engine closed the stream without [DONE].
    emit(to_router, job, JobEvent::Failed {
        error: JobError::new(502, "engine stream ended without [DONE]", !sent_any),
        usage,
    })
    .await;
}
