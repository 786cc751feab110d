//! HTTP handlers of the OpenAI-compatible API.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::openai::{Model, ModelList};
use protocol::{Endpoint, ErrorBody};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

pub use crate::inference::{MAX_PRICE_COEFFICIENT, TEE_HEADER};

#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "inference",
    request_body = protocol::openai::ChatCompletionRequestDoc,
    responses(
        (status = 200, description = "A chat.completion object, or with `stream: true` a text/event-stream of chat.completion.chunk objects ending with `data: [DONE]`", body = protocol::openai::CompletionResponseDoc),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key / JWT", body = ErrorBody),
        (status = 403, description = "A worker operator's key (`worker:` account) buys no inference (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 402, description = "The account's balance cannot cover the request's worst case (`insufficient_quota`)", body = ErrorBody),
        (status = 413, description = "Body over the configured limit", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After and x-ratelimit-* headers", body = ErrorBody),
        (status = 408, description = "The request body did not arrive in time (`gateway.body_read_timeout_ms`)", body = ErrorBody),
        (status = 503, description = "No worker can take the model now, its queue is full, the request waited past `router.queue_timeout_ms`, the gateway is at capacity, or the ledger cannot be reached (`billing_unavailable`); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(State(state): State<AppState>, principal: Principal, req: Request) -> Response {
    crate::inference::run(state, principal, Endpoint::ChatCompletions, req).await
}

#[utoipa::path(
    post, path = "/v1/completions", tag = "inference",
    request_body = protocol::openai::CompletionRequestDoc,
    responses(
        (status = 200, description = "A text_completion object, or an SSE stream of them", body = protocol::openai::CompletionResponseDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn completions(State(state): State<AppState>, principal: Principal, req: Request) -> Response {
    crate::inference::run(state, principal, Endpoint::Completions, req).await
}

#[utoipa::path(
    post, path = "/v1/embeddings", tag = "inference",
    request_body = protocol::openai::EmbeddingRequestDoc,
    responses(
        (status = 200, description = "An embedding list", body = protocol::openai::EmbeddingResponseDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn embeddings(State(state): State<AppState>, principal: Principal, req: Request) -> Response {
    crate::inference::run(state, principal, Endpoint::Embeddings, req).await
}

#[utoipa::path(
    post, path = "/v1/responses", tag = "inference",
    request_body = protocol::openai::ResponseRequestDoc,
    responses(
        (status = 200, description = "A Response object, or with `stream: true` a text/event-stream of Responses events (`event: <type>` and `data: {event}`, numbered by `sequence_number`) ending with `response.completed` or `response.incomplete`", body = protocol::openai::ResponseDoc),
        (status = 400, description = "Invalid request, or a field this network does not serve (`unsupported_parameter`: built-in tools, `background`, `conversation`, …); `param` names the field", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 402, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_response(State(state): State<AppState>, principal: Principal, req: Request) -> Response {
    crate::inference::run(state, principal, Endpoint::Responses, req).await
}

/// What the stored-response routes answer where nothing is stored: `cocoon client-proxy`
/// (end-to-end mode keeps nothing), and `cancel` (there are no background responses).
pub fn no_stored_response(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "Response with id '{id}' not found: end-to-end sealed responses are never stored, and this network runs no background responses to cancel."
        ),
        code: "response_not_found",
    }
}

/// `POST /v1/responses/{id}/cancel`: only background responses can be cancelled, and there are none.
pub async fn cancel_response(_p: Principal, Path(id): Path<String>) -> ApiError {
    no_stored_response(&id)
}

/// What `x_cocoon` is made from, read once per request: the workers and the price list.
struct ModelFacts {
    workers: Vec<router::WorkerSnapshot>,
    prices: std::collections::HashMap<String, protocol::openai::ModelPricing>,
}

impl ModelFacts {
    async fn read(state: &AppState) -> Self {
        // Best effort: a ledger that cannot be read leaves the prices out, not the models.
        let prices = match &state.meter {
            Some(meter) => meter.prices().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read model prices for /v1/models");
                Vec::new()
            }),
            None => Vec::new(),
        };
        Self { workers: state.router.snapshot(), prices: prices.into_iter().collect() }
    }

    /// A model as OpenAI lists it, with what the network knows of it in `x_cocoon`.
    fn model(&self, state: &AppState, m: protocol::ModelInfo) -> Model {
        let serving: Vec<_> = self.workers.iter().filter(|w| w.available && w.models.contains(&m.id)).collect();
        let mut tee: Vec<String> = serving.iter().map(|w| w.tee.clone()).collect();
        tee.sort();
        tee.dedup();
        let ext = protocol::openai::ModelExtensions {
            workers: u32::try_from(serving.len()).unwrap_or(u32::MAX),
            tee,
            context_length: state.router.context_len(&m.id),
            pricing: self.prices.get(&m.id).copied(),
            capabilities: {
                let c = |cap| state.router.capability(&m.id, cap);
                use protocol::Capability as C;
                protocol::openai::ModelCapabilities {
                    tools: c(C::ToolCalls),
                    json_schema: c(C::JsonSchema),
                    logprobs: c(C::Logprobs),
                    multiple_choices: c(C::MultipleChoices),
                }
            },
        };
        Model {
            id: m.id,
            object: "model".into(),
            created: m.created,
            owned_by: if m.owned_by.is_empty() { "cocoon".into() } else { m.owned_by },
            x_cocoon: Some(ext),
        }
    }
}

#[utoipa::path(
    get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<AppState>, p: Principal) -> Json<ModelList> {
    let facts = ModelFacts::read(&state).await;
    let data = state.router.models().into_iter().filter(|m| p.may_use(&m.id)).map(|m| facts.model(&state, m)).collect();
    Json(ModelList { object: "list".into(), data })
}

#[utoipa::path(
    get, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = Model), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_model(State(state): State<AppState>, p: Principal, Path(id): Path<String>) -> Result<Json<Model>, ApiError> {
    let m = state.router.models().into_iter().find(|m| m.id == id && p.may_use(&m.id)).ok_or(ApiError::ModelNotFound(id))?;
    Ok(Json(ModelFacts::read(&state).await.model(&state, m)))
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "At least one worker can take jobs"), (status = 503, body = ErrorBody))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let n = state.router.available_workers();
    if n == 0 {
        return Err(ApiError::NotReady("no worker is connected and available".into()));
    }
    Ok(Json(serde_json::json!({"status": "ready", "workers": n})))
}

/// `/metrics` in Prometheus text format, served on its own listener
/// (`gateway.metrics_listen`, loopback by default), not on the public API.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    (h, state.metrics.render())
}
