//! The axum application.
//!
//! Layers, outermost first:
//! 1. `CatchPanic`: a panic in any handler becomes an OpenAI-shaped 500 (none should be reachable).
//! 2. `SetSensitiveRequestHeaders(Authorization)`: keys never reach logs.
//! 3. `request_id`: every response carries `x-request-id` (inference sets it to the job id).
//! 4. `metrics::track`: counts by matched route, model (from the `ModelLabel` extension) and status.
//! 5. CORS (`[gateway.cors]`, only when origins are configured): answers preflights and adds
//!    the headers to every response, errors included.
//!
//! The dashboard's pages and API are merged in from [`crate::dashboard::routes`].
//! Unknown routes and wrong methods answer in the OpenAI error shape too.

use std::any::Any;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use uuid::Uuid;

use crate::error::ApiError;
use crate::handlers;
use crate::state::AppState;

pub fn build(state: AppState) -> axum::Router {
    let cors = crate::dashboard::cors_layer(&state.cfg.cors);
    axum::Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/responses", post(handlers::create_response))
        .route("/v1/responses/{id}", get(crate::stored::get_response).delete(crate::stored::delete_response))
        .route("/v1/responses/{id}/input_items", get(crate::stored::input_items_of))
        .route("/v1/responses/{id}/cancel", post(handlers::cancel_response))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{id}", get(handlers::get_model))
        .route("/v1/account/balance", get(crate::account::balance))
        .route("/v1/account/usage", get(crate::account::usage))
        .route("/v1/workers/{worker_id}/earnings", get(crate::account::worker_earnings))
        .route("/v1/attestation/report", get(crate::attest::report))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .merge(crate::dashboard::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(tower::util::option_layer(cors))
        .layer(middleware::from_fn(request_id))
        .layer(SetSensitiveRequestHeadersLayer::new([axum::http::header::AUTHORIZATION]))
        .layer(CatchPanicLayer::custom(panic_response))
}

/// The metrics listener's app: `/metrics` only (`gateway.metrics_listen`).
pub fn metrics_app(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(handlers::metrics))
        .fallback(unknown_route)
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownUrl {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn request_id(req: Request, next: Next) -> Response {
    let client_id = client_request_id(req.headers()).cloned();
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&Uuid::now_v7().to_string()) {
            resp.headers_mut().insert("x-request-id", v);
        }
    }
    // Echoed, as OpenAI does, so a client can match our answer (and our logs, where
    // inference records it with the job id) to its own id.
    if let Some(v) = client_id {
        resp.headers_mut().insert(CLIENT_REQUEST_ID, v);
    }
    resp
}

/// The client's own request id (OpenAI's `X-Client-Request-Id`).
pub(crate) const CLIENT_REQUEST_ID: &str = "x-client-request-id";

/// The client's `X-Client-Request-Id` when usable as given: at most 512 characters of visible
/// ASCII (OpenAI's limits). Anything else is ignored rather than altered: an altered id would
/// no longer match what the client logged.
pub(crate) fn client_request_id(h: &axum::http::HeaderMap) -> Option<&HeaderValue> {
    h.get(CLIENT_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 512 && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)))
}

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    ApiError::Internal(detail.to_string()).into_response()
}
