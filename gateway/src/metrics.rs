//! Prometheus metrics: requests by route/model/status, latency and time-to-first-token
//! histograms, tokens in/out, in-flight requests and streams.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ErrorLabel;

pub const REQUESTS: &str = "cocoon_http_requests_total";
pub const DURATION: &str = "cocoon_http_request_duration_seconds";
pub const TTFT: &str = "cocoon_time_to_first_token_seconds";
pub const TOKENS: &str = "cocoon_tokens_total";
pub const INFLIGHT_REQUESTS: &str = "cocoon_inflight_requests";
pub const INFLIGHT_STREAMS: &str = "cocoon_inflight_streams";
pub const STREAMS_CUT: &str = "cocoon_streams_cut_total";
pub const ERRORS: &str = "cocoon_http_errors_total";
pub const SSE_KEEPALIVES: &str = "cocoon_sse_keepalives_total";

/// The model label of a response: set by inference handlers to a model the router knows, so
/// label cardinality stays bounded by what workers serve.
#[derive(Clone, Debug)]
pub struct ModelLabel(pub String);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (several gateways in one test process share it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DURATION.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TTFT.into()), &latency));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "HTTP requests by route, model and status");
    describe_histogram!(DURATION, Unit::Seconds, "Time from request to the last byte of the response head (non-stream) or of the stream");
    describe_histogram!(TTFT, Unit::Seconds, "Time from request to the first streamed token chunk");
    describe_counter!(TOKENS, "Tokens by model and kind (prompt, completion)");
    describe_gauge!(INFLIGHT_REQUESTS, "Inference requests in flight");
    describe_gauge!(INFLIGHT_STREAMS, "SSE streams open to clients");
    describe_counter!(STREAMS_CUT, "Streams that ended before their end: client gone or worker failed");
    describe_counter!(ERRORS, "Error responses by code");
}

/// Middleware: counts every response by route (the matched pattern, never the raw path),
/// model and status, and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| match p.as_str() {
            // Map to static strings so labels cannot grow with input.
            "/v1/chat/completions" => "/v1/chat/completions",
            "/v1/completions" => "/v1/completions",
            "/v1/embeddings" => "/v1/embeddings",
            "/v1/models" => "/v1/models",
            "/v1/models/{id}" => "/v1/models/{id}",
            "/healthz" => "/healthz",
            "/readyz" => "/readyz",
            "/metrics" => "/metrics",
            _ => "other",
        });
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let model = resp
        .extensions()
        .get::<ModelLabel>()
        .map_or_else(|| "-".to_string(), |m| m.0.clone());
    if let Some(ErrorLabel(code)) = resp.extensions().get::<ErrorLabel>() {
        metrics::counter!(ERRORS, "code" => *code).increment(1);
    }
    metrics::counter!(REQUESTS, "route" => route, "model" => model, "status" => status).increment(1);
    metrics::histogram!(DURATION, "route" => route).record(start.elapsed().as_secs_f64());
    resp
}
