//! The built-in TEST engine: a small deterministic OpenAI-compatible server for tests, development and
//! benchmarks. It is not a model: tokens are words from a fixed list chosen by a seeded PRNG, so every
//! answer, token count and timing is exact. Contract: `docs/test-engine-spec.md`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod chat;
mod choice;
mod completions;
mod embeddings;
mod error;
mod gen;
mod params;
mod schema;
mod sse;

pub use error::ApiError;

/// Largest request body accepted (prompts can be big in benchmarks).
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Engine settings; every request may override the timing and length with its `test_engine` object.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Served model ids; any other model is a 404 `model_not_found`.
    pub models: Vec<String>,
    /// Delay before the first token (stream) or before the answer (non-stream).
    pub ttft: Duration,
    /// 0.0 = unlimited (no sleeping at all); otherwise 1/tps between tokens.
    pub tokens_per_second: f64,
    pub embedding_dim: usize,
    /// Caps the natural length (8..=24 words) when a request gives no max_tokens/max_completion_tokens
    /// and no `test_engine.completion_tokens`; the finish reason stays "stop".
    pub max_tokens_default: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models: vec!["cocoon-test".into()],
            ttft: Duration::ZERO,
            tokens_per_second: 0.0,
            embedding_dim: 64,
            max_tokens_default: 16,
        }
    }
}

/// Live counters, updated by every request.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub requests_started: AtomicU64,
    pub requests_completed: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub active: AtomicU64,
    pub tokens_generated: AtomicU64,
}

/// A point-in-time copy of [`EngineStats`] (the body of `GET /debug/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub requests_started: u64,
    pub requests_completed: u64,
    pub requests_cancelled: u64,
    pub active: u64,
    pub tokens_generated: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests_started: self.requests_started.load(Ordering::Relaxed),
            requests_completed: self.requests_completed.load(Ordering::Relaxed),
            requests_cancelled: self.requests_cancelled.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            tokens_generated: self.tokens_generated.load(Ordering::Relaxed),
        }
    }
}

/// The engine: configuration, counters and the last request body.
#[derive(Debug)]
pub struct TestEngine {
    cfg: EngineConfig,
    stats: EngineStats,
    last_request: Mutex<Option<Arc<Value>>>,
    /// Set when `serve`'s shutdown fires, so paced streams end instead of holding graceful shutdown.
    closing: tokio::sync::watch::Sender<bool>,
    created: u64,
}

impl TestEngine {
    pub fn new(cfg: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            stats: EngineStats::default(),
            last_request: Mutex::new(None),
            closing: tokio::sync::watch::Sender::new(false),
            created: unix_now(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The last JSON body received on a POST route, exactly as parsed.
    pub fn last_request(&self) -> Option<Arc<Value>> {
        self.last_request
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// All routes of the spec, with this engine as state.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(list_models))
            .route("/v1/models/{model}", get(get_model))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions_route))
            .route("/v1/embeddings", post(embeddings_route))
            .route("/debug/stats", get(debug_stats))
            .route("/debug/last-request", get(debug_last_request))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self.clone())
    }

    /// Parse a POST body, remembering it for `/debug/last-request`.
    fn parse_body(&self, body: Result<Bytes, BytesRejection>) -> Result<Arc<Value>, ApiError> {
        let bytes = body.map_err(|r| ApiError::other(r.status(), r.body_text(), None))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(ApiError::bad_json)?;
        let value = Arc::new(value);
        match self.last_request.lock() {
            Ok(mut g) => *g = Some(value.clone()),
            Err(p) => *p.into_inner() = Some(value.clone()),
        }
        Ok(value)
    }

    fn model_object(&self, id: &str) -> Value {
        json!({"id": id, "object": "model", "created": self.created, "owned_by": "cocoon-test-engine"})
    }
}

/// Serve until `shutdown` resolves; open paced streams are ended (and counted as cancelled) then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<TestEngine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    engine.closing.send_replace(false);
    let closing = engine.closing.clone();
    let app = engine.router();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.send_replace(true);
        })
        .await
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A unique-enough response id (`chatcmpl-…`, `cmpl-…`).
pub(crate) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{:016x}{:08x}",
        gen::mix(nanos ^ gen::mix(c)),
        c as u32
    )
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn list_models(State(engine): State<Arc<TestEngine>>) -> Json<Value> {
    let data: Vec<Value> = engine
        .cfg
        .models
        .iter()
        .map(|m| engine.model_object(m))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(State(engine): State<Arc<TestEngine>>, Path(model): Path<String>) -> Response {
    if engine.cfg.models.contains(&model) {
        Json(engine.model_object(&model)).into_response()
    } else {
        ApiError::model_not_found(&model).into_response()
    }
}

async fn chat_completions(
    State(engine): State<Arc<TestEngine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match engine.parse_body(body) {
        Ok(v) => chat::handle(engine, &v).await,
        Err(e) => e.into_response(),
    }
}

async fn completions_route(
    State(engine): State<Arc<TestEngine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match engine.parse_body(body) {
        Ok(v) => completions::handle(engine, &v).await,
        Err(e) => e.into_response(),
    }
}

async fn embeddings_route(
    State(engine): State<Arc<TestEngine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match engine.parse_body(body) {
        Ok(v) => embeddings::handle(engine, &v),
        Err(e) => e.into_response(),
    }
}

async fn debug_stats(State(engine): State<Arc<TestEngine>>) -> Json<StatsSnapshot> {
    Json(engine.stats.snapshot())
}

async fn debug_last_request(State(engine): State<Arc<TestEngine>>) -> Json<Value> {
    Json(engine.last_request().map_or(Value::Null, |v| (*v).clone()))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::other(
        StatusCode::NOT_FOUND,
        format!("Unknown request URL: {}", uri.path()),
        Some("unknown_url"),
    )
}
