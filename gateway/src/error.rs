//! The one error type of the HTTP edge and its mapping to OpenAI-shaped responses.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use protocol::{ErrorBody, ErrorObject};

use crate::ratelimit::Decision;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{0}")]
    InvalidApiKey(String),
    /// Authenticated, but this key may not do that (e.g. a worker operator's key buying
    /// inference).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("Invalid URL ({method} {path})")]
    UnknownUrl { method: String, path: String },
    #[error("Method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("Request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{message}")]
    RateLimited {
        message: String,
        decision: Box<Decision>,
    },
    #[error("{0}")]
    InsufficientQuota(String),
    /// The API key's day or month budget is spent: 402 `budget_exceeded`, `Retry-After` the
    /// seconds until it resets (UTC midnight or the first of the month).
    #[error("{message}")]
    BudgetExceeded { message: String, resets_in_secs: u64 },
    #[error("The gateway is at its in-flight request limit; retry shortly")]
    Overloaded,
    /// No worker can take the request now (none available, the model's queue is full, or
    /// the request waited its full turn); `retry_after` seconds go in `Retry-After`.
    #[error("{message}")]
    NoCapacity { message: String, retry_after: u64 },
    /// The rate-limit store is down and limits fail closed (`gateway.rate_limit_fail_open`).
    #[error("Rate limits cannot be checked right now; retry shortly")]
    LimiterUnavailable,
    /// The ledger's database cannot be reached or written: no hold could be placed, or an
    /// answer's capture could be neither written nor journalled. A whole answer is then
    /// withheld; a stream, whose chunks already went out, ends with this error instead of its
    /// end. Nothing is charged; the cause is logged, not sent.
    #[error("The ledger is unavailable right now, so this request could not be billed and has failed; nothing was charged. Retry shortly")]
    LedgerUnavailable(String),
    #[error("The request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The worker a sealed request names is gone, or refused the key as stale, before
    /// anything ran: the client picks again from a fresh report.
    #[error("{0}")]
    E2eWorkerUnavailable(String),
    /// An engine or worker error, relayed with its status (and the engine's body when it had one).
    #[error("{message}")]
    Upstream {
        status: u16,
        message: String,
        body: Option<Bytes>,
    },
    #[error("The server is not ready: {0}")]
    NotReady(String),
    /// An account or worker endpoint on a gateway that runs without a ledger.
    #[error("Billing is disabled on this gateway (billing.enabled = false): there are no balances, usage or earnings to show")]
    BillingDisabled,
    /// Unknown worker, or one the caller does not operate (the two are not told apart).
    #[error("The worker `{0}` does not exist or you do not have access to it.")]
    WorkerNotFound(String),
    /// A dashboard sign-in whose proof did not verify (Telegram `initData`, TON `ton_proof`),
    /// or a missing or expired dashboard session; `code` names which.
    #[error("{message}")]
    SignInFailed { message: String, code: &'static str },
    /// A dashboard resource that does not exist or is not the caller's (not told apart).
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    #[error("Internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidApiKey(_) | ApiError::SignInFailed { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::ModelNotFound(_)
            | ApiError::UnknownUrl { .. }
            | ApiError::BillingDisabled
            | ApiError::WorkerNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InsufficientQuota(_) | ApiError::BudgetExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded
            | ApiError::NoCapacity { .. }
            | ApiError::NotReady(_)
            | ApiError::LimiterUnavailable
            | ApiError::LedgerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::E2eWorkerUnavailable(_) => StatusCode::CONFLICT,
            // A worker says what status it wants; only error statuses are believed.
            ApiError::Upstream { status, .. } => match StatusCode::from_u16(*status) {
                Ok(s) if s.is_client_error() || s.is_server_error() => s,
                _ => StatusCode::BAD_GATEWAY,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::InvalidApiKey(_)
            | ApiError::PermissionDenied(_)
            | ApiError::ModelNotFound(_)
            | ApiError::UnknownUrl { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::BillingDisabled
            | ApiError::BodyTimeout(_)
            | ApiError::E2eWorkerUnavailable(_)
            | ApiError::WorkerNotFound(_)
            | ApiError::SignInFailed { .. }
            | ApiError::NotFound { .. } => "invalid_request_error",
            ApiError::RateLimited { .. } => "requests",
            ApiError::InsufficientQuota(_) | ApiError::BudgetExceeded { .. } => "insufficient_quota",
            ApiError::Overloaded
            | ApiError::NoCapacity { .. }
            | ApiError::NotReady(_)
            | ApiError::LimiterUnavailable
            | ApiError::LedgerUnavailable(_) => "service_unavailable_error",
            ApiError::Upstream { .. } if self.status().is_client_error() => "invalid_request_error",
            ApiError::Upstream { .. } | ApiError::Internal(_) => "server_error",
        }
    }

    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::InvalidApiKey(_) => Some("invalid_api_key"),
            ApiError::PermissionDenied(_) => Some("permission_denied"),
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::UnknownUrl { .. } => Some("unknown_url"),
            ApiError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::RateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::InsufficientQuota(_) => Some("insufficient_quota"),
            ApiError::BudgetExceeded { .. } => Some("budget_exceeded"),
            ApiError::Overloaded => Some("server_overloaded"),
            ApiError::NoCapacity { .. } => Some("no_capacity"),
            ApiError::LimiterUnavailable => Some("rate_limiter_unavailable"),
            ApiError::LedgerUnavailable(_) => Some("billing_unavailable"),
            ApiError::BodyTimeout(_) => Some("request_timeout"),
            ApiError::E2eWorkerUnavailable(_) => Some("e2e_worker_unavailable"),
            ApiError::NotReady(_) => Some("not_ready"),
            ApiError::BillingDisabled => Some("billing_disabled"),
            ApiError::WorkerNotFound(_) => Some("worker_not_found"),
            ApiError::Upstream { .. } => Some("upstream_error"),
            ApiError::SignInFailed { code, .. } | ApiError::NotFound { code, .. } => Some(code),
            ApiError::Internal(_) => None,
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::ModelNotFound(_) => Some("model".into()),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::RateLimited { .. }
            | ApiError::Overloaded
            | ApiError::NoCapacity { .. }
            | ApiError::LimiterUnavailable
            | ApiError::LedgerUnavailable(_)
            | ApiError::BodyTimeout(_)
            | ApiError::NotReady(_) => true,
            ApiError::Upstream { .. } => {
                let s = self.status();
                s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        self.code().unwrap_or("internal")
    }

    pub fn body(&self) -> ErrorBody {
        let message = match self {
            // Never leak internals to clients; they are logged where the error is made.
            ApiError::Internal(_) => "Internal server error".to_string(),
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorObject {
                message,
                kind: self.kind().to_string(),
                param: self.param(),
                code: self.code().map(str::to_string),
            },
        }
    }

    /// The engine's own OpenAI-shaped error, if it sent one, normalised to carry all four keys.
    fn upstream_body(body: &Bytes) -> Option<ErrorBody> {
        #[derive(serde::Deserialize)]
        struct Loose {
            error: LooseObj,
        }
        #[derive(serde::Deserialize)]
        struct LooseObj {
            message: Option<String>,
            #[serde(rename = "type")]
            kind: Option<String>,
            param: Option<serde_json::Value>,
            code: Option<serde_json::Value>,
        }
        let l: Loose = serde_json::from_slice(body).ok()?;
        let as_string = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Some(ErrorBody {
            error: ErrorObject {
                message: l.error.message.unwrap_or_else(|| "engine error".into()),
                kind: l.error.kind.unwrap_or_else(|| "invalid_request_error".into()),
                param: as_string(l.error.param),
                code: as_string(l.error.code),
            },
        })
    }

    pub fn into_body_json(&self) -> Bytes {
        let body = match self {
            ApiError::Upstream { body: Some(b), .. } => {
                Self::upstream_body(b).unwrap_or_else(|| self.body())
            }
            _ => self.body(),
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
    }

    fn headers(&self, headers: &mut HeaderMap) {
        match self {
            ApiError::RateLimited { decision, .. } => decision.apply_headers(headers),
            ApiError::Overloaded | ApiError::NotReady(_) | ApiError::LimiterUnavailable => {
                headers.insert("retry-after", HeaderValue::from_static("1"));
            }
            ApiError::LedgerUnavailable(_) => {
                headers.insert("retry-after", HeaderValue::from_static("2"));
            }
            ApiError::NoCapacity { retry_after, .. } => {
                headers.insert("retry-after", HeaderValue::from(*retry_after));
            }
            ApiError::BudgetExceeded { resets_in_secs, .. } => {
                headers.insert("retry-after", HeaderValue::from(*resets_in_secs));
            }
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = ?self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let mut resp = (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.into_body_json(),
        )
            .into_response();
        self.headers(resp.headers_mut());
        resp.extensions_mut().insert(ErrorLabel(self.metric_label()));
        resp
    }
}

impl ApiError {
    /// A worker's or engine's error, relayed with its status and body.
    pub fn upstream(e: protocol::JobError) -> Self {
        ApiError::Upstream {
            status: e.status,
            message: e.message,
            body: e.body,
        }
    }

    /// No worker can take a request for `model` now.
    pub fn no_capacity(model: &str) -> Self {
        ApiError::NoCapacity {
            message: format!("No worker can serve model `{model}` right now; retry shortly"),
            retry_after: 1,
        }
    }
}

impl From<router::RouteError> for ApiError {
    fn from(e: router::RouteError) -> Self {
        let retry_after = e.retry_after_secs();
        match e {
            router::RouteError::ModelNotFound(m) => ApiError::ModelNotFound(m),
            // Only a sealed request names its worker: that worker is gone (or above the
            // client's price cap), and only the client can pick another (it must seal
            // again), so 409 tells it to, not a 503 it would retry against the same worker.
            w @ router::RouteError::WorkerUnavailable { .. } => ApiError::E2eWorkerUnavailable(w.to_string()),
            router::RouteError::Job(j) => ApiError::upstream(j),
            other => ApiError::NoCapacity {
                message: other.to_string(),
                retry_after: retry_after.unwrap_or(1),
            },
        }
    }
}

/// Response extension read by the metrics layer.
#[derive(Clone, Copy, Debug)]
pub struct ErrorLabel(pub &'static str);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_all_four_keys() {
        for e in [
            ApiError::invalid("temperature", "too hot"),
            ApiError::InvalidApiKey("bad".into()),
            ApiError::ModelNotFound("m".into()),
            ApiError::Internal("secret detail".into()),
        ] {
            let v: serde_json::Value = serde_json::from_slice(&e.into_body_json()).unwrap();
            let obj = v["error"].as_object().unwrap();
            for k in ["message", "type", "param", "code"] {
                assert!(obj.contains_key(k), "{k} missing in {v}");
            }
            assert!(!v.to_string().contains("secret detail"));
        }
    }

    #[test]
    fn upstream_error_body_is_relayed_and_normalised() {
        let e = ApiError::Upstream {
            status: 400,
            message: "x".into(),
            body: Some(Bytes::from_static(
                br#"{"error":{"message":"bad stop","type":"invalid_request_error","param":"stop"}}"#,
            )),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.into_body_json()).unwrap();
        assert_eq!(v["error"]["message"], "bad stop");
        assert_eq!(v["error"]["param"], "stop");
        assert!(v["error"].as_object().unwrap().contains_key("code"));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_worker_cannot_make_an_error_look_like_success() {
        for (given, want) in [(200, 502), (101, 502), (302, 502), (0, 502), (999, 502), (429, 429), (503, 503), (418, 418)] {
            let e = ApiError::Upstream { status: given, message: "x".into(), body: None };
            assert_eq!(e.status().as_u16(), want, "worker said {given}");
        }
    }
}
