//! HTTP handlers of the OpenAI-compatible API.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::openai::{Model, ModelList};
use protocol::{Endpoint, ErrorBody, Job, JobEvent};
use router::{DispatchOptions, RouteError};
use uuid::Uuid;

use crate::auth::Principal;
use crate::billing::{Bill, HoldRequest, MeterError};
use crate::error::ApiError;
use crate::metrics::{ModelLabel, INFLIGHT_REQUESTS};
use crate::ratelimit::Decision;
use crate::relay::{record_usage, SseRelay, TokenSettle};
use crate::state::AppState;
use crate::validate::{self, ValidRequest};

/// The highest worker price multiplier (thousandths) there is: a hold at it covers any worker.
pub const MAX_PRICE_COEFFICIENT: u32 = 4000;

/// Reads the body as JSON bytes: content type checked, size bounded (413), before any parsing.
async fn read_json_body(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let limit = state.cfg.max_body_bytes;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "Invalid Content-Type header ({}), expected application/json.",
                if ct.is_empty() { "none" } else { ct }
            ),
            param: None,
            code: Some("invalid_content_type"),
        });
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })
}

fn request_id_header(id: &Uuid) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Errors after authentication still carry the rate-limit headers, as OpenAI's do.
fn with_headers(mut resp: Response, id: &Uuid, decision: Option<&Decision>, model: Option<&str>) -> Response {
    let h = resp.headers_mut();
    h.insert("x-request-id", request_id_header(id));
    if let Some(d) = decision {
        d.apply_headers(h);
    }
    if let Some(m) = model {
        resp.extensions_mut().insert(ModelLabel(m.to_string()));
    }
    resp
}

#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "inference",
    request_body = protocol::openai::ChatCompletionRequestDoc,
    responses(
        (status = 200, description = "A chat.completion object, or with `stream: true` a text/event-stream of chat.completion.chunk objects ending with `data: [DONE]`", body = protocol::openai::CompletionResponseDoc),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key / JWT", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 402, description = "The account's balance cannot cover the request's worst case (`insufficient_quota`)", body = ErrorBody),
        (status = 413, description = "Body over the configured limit", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After and x-ratelimit-* headers", body = ErrorBody),
        (status = 503, description = "No worker can take the model, or the gateway is at capacity; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(State(state): State<AppState>, principal: Principal, req: Request) -> Response {
    inference(state, principal, Endpoint::ChatCompletions, req).await
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
    inference(state, principal, Endpoint::Completions, req).await
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
    inference(state, principal, Endpoint::Embeddings, req).await
}

/// The common path of every inference call: read, validate, rate-limit, shed, dispatch, relay.
async fn inference(state: AppState, principal: Principal, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let job_id = Uuid::now_v7();
    let mut decision: Option<Decision> = None;
    let mut model: Option<String> = None;
    match run_inference(&state, &principal, endpoint, req, job_id, started, &mut decision, &mut model).await {
        Ok(resp) => with_headers(resp, &job_id, decision.as_ref(), model.as_deref()),
        Err(e) => with_headers(e.into_response(), &job_id, decision.as_ref(), model.as_deref()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_inference(
    state: &AppState,
    principal: &Principal,
    endpoint: Endpoint,
    req: Request,
    job_id: Uuid,
    started: Instant,
    decision_out: &mut Option<Decision>,
    model_out: &mut Option<String>,
) -> Result<Response, ApiError> {
    let raw = read_json_body(state, req).await?;
    let obj = validate::parse_object(&raw)?;
    let valid: ValidRequest = match endpoint {
        Endpoint::ChatCompletions => validate::chat(&obj)?,
        Endpoint::Completions => validate::completion(&obj)?,
        Endpoint::Embeddings => validate::embeddings(&obj)?,
    };
    if !state.router.knows_model(&valid.model) {
        return Err(ApiError::ModelNotFound(valid.model));
    }
    *model_out = Some(valid.model.clone());

    let estimated = valid.token_estimate(state.cfg.default_max_tokens_estimate);
    match state.limiter.check(&principal.rate_key, principal.limits, estimated).await {
        Ok(d) if d.allowed => *decision_out = Some(d),
        Ok(d) => {
            let what = match d.exceeded {
                Some(crate::ratelimit::LimitKind::Tokens) => format!(
                    "Rate limit reached for tokens per minute: limit {}, remaining {}, requested {}.",
                    d.limit_tokens, d.remaining_tokens, estimated
                ),
                _ => format!(
                    "Rate limit reached for requests per minute: limit {}, remaining {}.",
                    d.limit_requests, d.remaining_requests
                ),
            };
            let retry = d
                .retry_after
                .map_or(1, |r| r.as_millis().div_ceil(1000).max(1));
            return Err(ApiError::RateLimited {
                message: format!("{what} Please try again in {retry}s."),
                decision: Box::new(d),
            });
        }
        Err(e) if state.cfg.rate_limit_fail_open => {
            tracing::warn!(error = %e, "rate limiter unavailable; serving without it");
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    }

    // Hold the worst case before any work is done; the bill settles it whichever way this ends.
    let mut bill = match &state.meter {
        Some(meter) => {
            let hold = HoldRequest {
                job_id,
                account: principal.account.clone(),
                model: valid.model.clone(),
                prompt_tokens: valid.prompt_tokens_estimate,
                completion_tokens: valid
                    .max_completion_tokens
                    .unwrap_or(state.cfg.default_max_tokens_estimate),
                max_coefficient: valid.max_price_coefficient.unwrap_or(MAX_PRICE_COEFFICIENT),
            };
            meter.hold(&hold).await.map_err(|e| match e {
                MeterError::InsufficientFunds { .. } => ApiError::InsufficientQuota(format!(
                    "You exceeded your current quota: {e}. Top up the account's balance."
                )),
                MeterError::Unpriced(_) => ApiError::Upstream {
                    status: 503,
                    message: e.to_string(),
                    body: None,
                },
                MeterError::Unavailable(m) => ApiError::Internal(m),
            })?;
            Some(Bill::new(meter.clone(), job_id, valid.prompt_tokens_estimate))
        }
        None => None,
    };

    // Shed load at once rather than queue without bound; the permit lives until the last byte.
    let permit = state
        .inflight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)?;
    metrics::gauge!(INFLIGHT_REQUESTS).increment(1.0);
    let _inflight = scopeguard(|| metrics::gauge!(INFLIGHT_REQUESTS).decrement(1.0));

    let settle = TokenSettle {
        limiter: state.limiter.clone(),
        rate_key: principal.rate_key.clone(),
        limits: principal.limits,
        estimated,
    };
    let opts = DispatchOptions {
        max_price_coefficient: valid.max_price_coefficient,
    };
    let body = validate::forward_body(raw, obj, &valid);
    let job = Job {
        id: job_id,
        endpoint,
        model: valid.model.clone(),
        stream: valid.stream,
        body,
    };
    tracing::debug!(%job_id, account = %principal.account, model = %valid.model, stream = valid.stream, "dispatching");
    let mut events = state.router.dispatch(job, opts).await.map_err(|e| match e {
        RouteError::ModelNotFound(m) => ApiError::ModelNotFound(m),
        RouteError::NoCapacity(m) => ApiError::NoCapacity(m),
        RouteError::Job(j) => ApiError::Upstream {
            status: j.status,
            message: j.message,
            body: j.body,
        },
    })?;

    if let Some(b) = bill.as_mut() {
        b.set_worker(events.worker_id(), events.price_coefficient());
    }
    // Clients must be able to tell that no hardware protected this answer.
    let tee_header = events.insecure_simulated().then_some((TEE_HEADER, HeaderValue::from_static("simulated")));
    if valid.stream {
        let relay = SseRelay::new(events, valid.include_usage, valid.model.clone(), started, settle, bill, permit);
        let mut resp = Response::new(Body::from_stream(relay));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Some((k, v)) = tee_header {
            h.insert(k, v);
        }
        return Ok(resp);
    }

    use futures::StreamExt;
    match events.next().await {
        Some(JobEvent::Response { body, usage }) => {
            record_usage(&valid.model, usage.as_ref());
            settle.settle(usage.as_ref());
            // Charged before the client has the answer: an answered request is a charged one.
            let cost = match bill {
                Some(b) => match b.capture(usage.as_ref()).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(%job_id, error = %e, "capture failed; the hold will expire");
                        None
                    }
                },
                None => None,
            };
            drop(permit);
            let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            if let Some(c) = cost.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
                resp.headers_mut().insert("x-cocoon-cost-nanoton", c);
            }
            if let Some((k, v)) = tee_header {
                resp.headers_mut().insert(k, v);
            }
            Ok(resp)
        }
        Some(JobEvent::Failed { error, .. }) => Err(ApiError::Upstream {
            status: error.status,
            message: error.message,
            body: error.body,
        }),
        _ => Err(ApiError::Upstream {
            status: 502,
            message: "The worker answered a non-streaming request with a stream".into(),
            body: None,
        }),
    }
}

/// Set to `simulated` on every answer from a worker in the insecure simulated TEE.
pub const TEE_HEADER: &str = "x-cocoon-tee";

/// Runs `f` on drop (a tiny scope guard, to keep gauges right on every exit path).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}

fn model_object(m: protocol::ModelInfo) -> Model {
    Model {
        id: m.id,
        object: "model".into(),
        created: m.created,
        owned_by: if m.owned_by.is_empty() { "cocoon".into() } else { m.owned_by },
    }
}

#[utoipa::path(
    get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<AppState>, _p: Principal) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: state.router.models().into_iter().map(model_object).collect(),
    })
}

#[utoipa::path(
    get, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = Model), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_model(State(state): State<AppState>, _p: Principal, Path(id): Path<String>) -> Result<Json<Model>, ApiError> {
    state
        .router
        .models()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| Json(model_object(m)))
        .ok_or(ApiError::ModelNotFound(id))
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

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    (h, state.metrics.render())
}
