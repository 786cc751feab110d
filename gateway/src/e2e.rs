//! End-to-end sealed requests at the gateway (`cocoon-e2e/1`, docs/e2e.md): the routing
//! facts come from headers, the body is relayed as bytes it never parses, the answer is the
//! worker's sealed frames relayed as they come, and the charge comes only from the receipt
//! the worker's attested identity signed.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use protocol::{E2eRoute, Endpoint, Job, JobEvent, Usage};
use router::{ReceiptCheck, Ticket};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::billing::{Bill, UsageBounds};
use crate::config::{E2eMode, GatewayConfig};
use crate::error::ApiError;
use crate::inference::Demand;
use crate::relay::{record_usage, TokenSettle};

pub const E2E_HEADER: &str = "cocoon-e2e";
/// The protocol version this gateway relays (`attestation::e2e::E2E_VERSION`).
const VERSION: &str = "1";
pub const CONTENT_TYPE: &str = "application/cocoon-e2e";

/// A sealed request's facts, from its headers.
pub(crate) struct SealedCall {
    pub demand: Demand,
    pub route: E2eRoute,
}

fn bad(name: &str, why: &str) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("Header {name}: {why}"),
        param: Some(name.to_string()),
        code: Some("invalid_e2e_header"),
    }
}

fn text<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    h.get(name)
        .ok_or_else(|| bad(name, "missing (required for end-to-end sealed requests)"))?
        .to_str()
        .map_err(|_| bad(name, "not visible ASCII"))
}

fn number(h: &HeaderMap, name: &str) -> Result<u64, ApiError> {
    text(h, name)?.trim().parse::<u64>().map_err(|_| bad(name, "not a non-negative integer"))
}

fn key32(h: &HeaderMap, name: &str) -> Result<Bytes, ApiError> {
    let raw = hex::decode(text(h, name)?.trim()).map_err(|_| bad(name, "not hex"))?;
    if raw.len() != 32 {
        return Err(bad(name, "must be 32 bytes (64 hex digits)"));
    }
    Ok(Bytes::from(raw))
}

impl SealedCall {
    /// `None` for an ordinary request; an error for a sealed one that is malformed, refused
    /// by `gateway.e2e`, or for an endpoint that cannot be sealed.
    pub(crate) fn from_headers(h: &HeaderMap, endpoint: Endpoint, cfg: &GatewayConfig) -> Result<Option<Self>, ApiError> {
        let Some(v) = h.get(E2E_HEADER) else { return Ok(None) };
        if cfg.e2e == E2eMode::Off {
            return Err(ApiError::InvalidRequest {
                message: "This gateway does not accept end-to-end sealed requests (gateway.e2e = \"off\").".into(),
                param: None,
                code: Some("e2e_disabled"),
            });
        }
        if v.as_bytes() != VERSION.as_bytes() {
            return Err(bad(E2E_HEADER, "unsupported version (this gateway speaks 1)"));
        }
        let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(bad("content-type", "a sealed body must be application/cocoon-e2e"));
        }
        let request_id = text(h, "cocoon-e2e-request-id")?
            .trim()
            .parse::<Uuid>()
            .map_err(|_| bad("cocoon-e2e-request-id", "not a UUID"))?;
        let model = text(h, "cocoon-e2e-model")?.trim().to_string();
        if model.is_empty() || model.len() > 256 {
            return Err(bad("cocoon-e2e-model", "must be 1..=256 bytes"));
        }
        let stream = match text(h, "cocoon-e2e-stream")?.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(bad("cocoon-e2e-stream", "must be true or false")),
        };
        let max_prompt_tokens = number(h, "cocoon-e2e-max-prompt-tokens")?;
        let max_output_tokens = number(h, "cocoon-e2e-max-output-tokens")?;
        if max_prompt_tokens > 100_000_000 || max_output_tokens > 100_000_000 {
            return Err(bad("cocoon-e2e-max-output-tokens", "bounds must be at most 100000000"));
        }
        if endpoint == Endpoint::Embeddings && max_output_tokens != 0 {
            return Err(bad("cocoon-e2e-max-output-tokens", "embeddings generate nothing: declare 0"));
        }
        let worker_id = text(h, "cocoon-e2e-worker")?.trim().to_string();
        if worker_id.is_empty() || worker_id.len() > 128 {
            return Err(bad("cocoon-e2e-worker", "must be 1..=128 bytes"));
        }
        let max_price_coefficient = match h.get("cocoon-e2e-max-price-coefficient") {
            None => None,
            Some(_) => Some(
                u32::try_from(number(h, "cocoon-e2e-max-price-coefficient")?)
                    .ok()
                    .filter(|c| (1000..=1_000_000).contains(c))
                    .ok_or_else(|| bad("cocoon-e2e-max-price-coefficient", "must be in 1000..=1000000"))?,
            ),
        };
        let pad_to = match h.get("cocoon-e2e-pad-to") {
            None => 0,
            Some(_) => u32::try_from(number(h, "cocoon-e2e-pad-to")?)
                .ok()
                .filter(|p| *p <= attestation::e2e::MAX_PAD_TO)
                .ok_or_else(|| bad("cocoon-e2e-pad-to", "must be at most 65536"))?,
        };
        let route = E2eRoute {
            request_id,
            pad_to,
            max_prompt_tokens,
            max_output_tokens,
            worker_id: worker_id.clone(),
            worker_key: key32(h, "cocoon-e2e-key")?,
            enc: key32(h, "cocoon-e2e-enc")?,
        };
        let demand = Demand {
            model,
            stream,
            prompt_tokens: max_prompt_tokens,
            completion_tokens: max_output_tokens,
            max_price_coefficient,
            worker: Some(worker_id),
            bounds: UsageBounds { completion_tokens: max_output_tokens, prompt_tokens: max_prompt_tokens },
            // The body is sealed: what it asks of the engine is the named worker's to check.
            needs: protocol::Needs::default(),
        };
        Ok(Some(SealedCall { demand, route }))
    }
}

/// `gateway.e2e = "require"` and a request in clear.
pub(crate) fn required() -> ApiError {
    ApiError::InvalidRequest {
        message: "This gateway accepts only end-to-end sealed requests (gateway.e2e = \"require\"): use cocoon client-proxy or the cocoon-client library.".into(),
        param: None,
        code: Some("e2e_required"),
    }
}

/// Usage by token class from a receipt.
fn receipt_usage(check: Option<&ReceiptCheck>) -> Option<Usage> {
    let Some(ReceiptCheck::Valid { receipt, .. }) = check else { return None };
    let u = receipt.usage;
    Some(Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        prompt_tokens_details: Some(protocol::openai::PromptTokensDetails { cached_tokens: u.cached_prompt_tokens }),
        completion_tokens_details: Some(protocol::openai::CompletionTokensDetails { reasoning_tokens: u.reasoning_tokens }),
    })
}

/// Dispatches to the named worker and relays its sealed answer. Billing: the capture is the
/// receipt's usage (within the declared bounds) before the last bytes go out; without a
/// valid receipt nothing is charged and the hold is released (and the router counted why).
pub(crate) async fn relay(
    ticket: Ticket,
    job: Job,
    mut bill: Option<Bill>,
    bounds: UsageBounds,
    settle: TokenSettle,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let model = job.model.clone();
    let events = ticket.dispatch(job).await.map_err(|e| match e {
        router::RouteError::Job(j) if j.status == 409 => ApiError::E2eWorkerUnavailable(j.message),
        router::RouteError::WorkerUnavailable { .. } => ApiError::E2eWorkerUnavailable(e.to_string()),
        other => ApiError::from(other),
    })?;
    if let Some(b) = bill.as_mut() {
        b.set_worker(events.worker_id(), events.price_coefficient());
    }
    let simulated = events.insecure_simulated();
    struct State {
        events: router::JobStream,
        bill: Option<Bill>,
        settle: Option<TokenSettle>,
        done: bool,
        _permit: OwnedSemaphorePermit,
    }
    let state = State { events, bill, settle: Some(settle), done: false, _permit: permit };
    let body = futures::stream::unfold(state, move |mut s| {
        let model = model.clone();
        async move {
            if s.done {
                return None;
            }
            loop {
                match s.events.next().await {
                    Some(JobEvent::Chunk { data }) => return Some((Ok::<Bytes, std::convert::Infallible>(data), s)),
                    Some(JobEvent::Receipt { .. }) => {}
                    Some(JobEvent::Done { .. } | JobEvent::Response { .. } | JobEvent::Failed { .. }) | None => {
                        s.done = true;
                        let usage = receipt_usage(s.events.receipt()).map(|u| bounds.clamp(&u, s.events.worker_id()));
                        record_usage(&model, usage.as_ref());
                        if let Some(st) = s.settle.take() {
                            st.settle(usage.as_ref());
                        }
                        match (s.bill.take(), usage) {
                            (Some(mut b), Some(u)) => {
                                b.set_receipt(s.events.receipt());
                                match b.capture(Some(&u)).await {
                                    Ok(_) | Err(crate::billing::MeterError::CaptureDeferred(_)) => {}
                                    Err(e) => tracing::error!(error = %e, "capture of a sealed answer failed and could not be journalled"),
                                }
                            }
                            (Some(b), None) => {
                                metrics::counter!("cocoon_gateway_e2e_unbilled_total").increment(1);
                                tracing::error!(worker = %s.events.worker_id(), "sealed answer without a valid receipt: nothing is charged");
                                b.release().await;
                            }
                            (None, _) => {}
                        }
                        return None;
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if simulated {
        h.insert(crate::inference::TEE_HEADER, HeaderValue::from_static("simulated"));
    }
    Ok(resp)
}
