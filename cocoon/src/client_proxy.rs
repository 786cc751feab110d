//! `cocoon client-proxy`: a local OpenAI-compatible endpoint over [`cocoon_client`], so any
//! SDK gets end-to-end sealing by changing only its base URL (docs/e2e.md).
//!
//! Each request body is sealed to one worker whose evidence passed the client's own policy;
//! the gateway sees only the routing facts. The answer is opened and checked frame by frame
//! here, and given to the SDK as the plain OpenAI response it expects: a JSON body with the
//! worker's receipt in `x-cocoon-receipt`, or SSE with the receipt as the comment
//! `: cocoon-receipt …` before `data: [DONE]` (a Responses stream: `event: <type>` before each
//! `data:` line and no `[DONE]`, as OpenAI frames it). A stream whose frames or receipt fail
//! their checks ends with an error event and no `[DONE]` or terminal event, so an SDK
//! reports it as failed. Responses bodies are validated here first, with the gateway's own
//! validator, so a sealed request is refused with the same errors as a clear one.
//!
//! The proxy holds the API key and the plaintext: it is meant to listen on loopback, on the
//! client's own machine.

use std::sync::Arc;

use attestation::e2e::Frame;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cocoon_client::{ClientError, SealedAnswer, SealedClient};
use gateway::relay::frame;
use gateway::responses::ResponsesFraming;

/// Bodies larger than this are refused before sealing (the gateway's default cap).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The endpoints a sealed request may target; anything else is refused, never forwarded in
/// clear (docs/e2e.md, section 2).
const SEALED_ENDPOINTS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];

#[derive(Clone)]
struct Proxy {
    client: Arc<SealedClient>,
    http: reqwest::Client,
}

/// The proxy's routes: the three sealed endpoints, and `GET /v1/models` passed through
/// (it carries no user data).
pub fn app(client: Arc<SealedClient>) -> Router {
    let http = reqwest::Client::new();
    Router::new()
        .route("/v1/chat/completions", post(sealed))
        .route("/v1/completions", post(sealed))
        .route("/v1/embeddings", post(sealed))
        .route("/v1/responses", post(sealed))
        // Nothing is stored in end-to-end mode: answered here, as the gateway answers.
        .route("/v1/responses/{id}", get(not_stored).delete(not_stored))
        .route("/v1/responses/{id}/input_items", get(not_stored))
        .route("/v1/responses/{id}/cancel", post(not_stored))
        .route("/v1/models", get(models))
        .fallback(not_sealable)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Proxy { client, http })
}

/// An OpenAI-style error body.
fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

/// How a client-side failure reads to an SDK. The network's own answers (e.g. 401, 402,
/// 429) are passed through with their status and body.
fn client_error(e: ClientError) -> Response {
    match e {
        ClientError::Status { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        ClientError::Body(m) => error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_body", m),
        e @ ClientError::NoTrustedWorker { .. } => {
            error(StatusCode::SERVICE_UNAVAILABLE, "cocoon_attestation_error", "no_trusted_worker", e.to_string())
        }
        e @ (ClientError::Report(_) | ClientError::Answer(_) | ClientError::Receipt(_)) => {
            error(StatusCode::BAD_GATEWAY, "cocoon_verification_error", "verification_failed", e.to_string())
        }
        e @ ClientError::Http(_) => error(StatusCode::BAD_GATEWAY, "api_error", "gateway_unreachable", e.to_string()),
    }
}

async fn not_sealable(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_sealable",
        format!("{} cannot be sent end-to-end sealed through this proxy (only {})", uri.path(), SEALED_ENDPOINTS.join(", ")),
    )
}

async fn models(State(p): State<Proxy>) -> Response {
    let cfg = p.client.config();
    let base = cfg.base_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    match p.http.get(format!("{base}/v1/models")).bearer_auth(&cfg.api_key).timeout(cfg.timeout).send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match r.bytes().await {
                Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
                Err(e) => error(StatusCode::BAD_GATEWAY, "api_error", "gateway_unreachable", e.to_string()),
            }
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "api_error", "gateway_unreachable", e.to_string()),
    }
}

async fn not_stored(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    gateway::handlers::no_stored_response(&id).into_response()
}

async fn sealed(State(p): State<Proxy>, uri: Uri, body: Bytes) -> Response {
    let endpoint = uri.path().to_string();
    let responses = endpoint == "/v1/responses";
    let stream = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            if responses {
                let checked = match &v {
                    serde_json::Value::Object(o) => {
                        gateway::validate_responses::responses(o).and_then(|_| gateway::stored::refuse_sealed(o))
                    }
                    _ => gateway::validate::parse_object(&body).map(|_| ()),
                };
                if let Err(e) = checked {
                    return e.into_response();
                }
            }
            v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false)
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json", format!("The body is not valid JSON: {e}")),
    };
    let answer = match p.client.send(&endpoint, &body).await {
        Ok(a) => a,
        Err(e) => return client_error(e),
    };
    tracing::debug!(worker = %answer.worker().worker_id, request_id = %answer.request_id(), "sealed request sent");
    if stream {
        streamed(answer, responses)
    } else {
        whole(answer).await
    }
}

fn with_worker(mut resp: Response, answer: &SealedAnswer) -> Response {
    if let Ok(v) = HeaderValue::from_str(&answer.worker().worker_id) {
        resp.headers_mut().insert("x-cocoon-worker", v);
    }
    if answer.worker().insecure_simulated {
        resp.headers_mut().insert("x-cocoon-tee", HeaderValue::from_static("simulated"));
    }
    resp
}

/// A whole answer: every frame opened and the receipt checked before the SDK sees a byte.
async fn whole(mut answer: SealedAnswer) -> Response {
    let mut out: Option<Response> = None;
    while let Some(frame) = answer.next_frame().await {
        match frame {
            Ok(Frame::Data { data }) if out.is_none() => {
                out = Some((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], data).into_response());
            }
            Ok(Frame::Error { status, body }) if out.is_none() => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                out = Some((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
            }
            Ok(_) => {
                return error(StatusCode::BAD_GATEWAY, "cocoon_verification_error", "verification_failed", "a whole answer came in more than one frame");
            }
            Err(e) => return client_error(e),
        }
    }
    let Some(mut resp) = out else {
        return error(StatusCode::BAD_GATEWAY, "cocoon_verification_error", "verification_failed", "the sealed answer was empty");
    };
    if let Some(v) = answer.signed_receipt().and_then(|r| HeaderValue::from_str(&r.to_header()).ok()) {
        resp.headers_mut().insert("x-cocoon-receipt", v);
    }
    with_worker(resp, &answer)
}

/// A stream: each opened frame becomes one SSE event as it arrives.
fn streamed(answer: SealedAnswer, responses: bool) -> Response {
    let worker = answer.worker().worker_id.clone();
    let simulated = answer.worker().insecure_simulated;
    // A Responses stream is framed as the gateway frames one (`event:` lines, no `[DONE]`),
    // its terminal event held until the final frame and receipt have checked out.
    let framing = responses.then(ResponsesFraming::default);
    let events = futures::stream::unfold(Some((answer, framing)), |state| async move {
        let (mut answer, mut framing) = state?;
        let error = |framing: &mut Option<ResponsesFraming>, body: &[u8]| match framing {
            Some(f) => f.error_body(body),
            None => frame(body),
        };
        let chunk = match answer.next_frame().await {
            Some(Ok(Frame::Data { data })) => match framing.as_mut() {
                // A held terminal event yields nothing now (filtered out below).
                Some(f) => f.event(&data).unwrap_or_default(),
                None => frame(&data),
            },
            Some(Ok(Frame::Error { status, body })) => {
                tracing::warn!(status, "the worker failed mid-stream");
                return Some((Ok::<Bytes, std::convert::Infallible>(error(&mut framing, &body)), None));
            }
            Some(Ok(Frame::Final { .. })) => return None,
            Some(Err(e)) => {
                tracing::error!(error = %e, "sealed stream failed its checks");
                let body = serde_json::json!({"error": {"message": e.to_string(), "type": "cocoon_verification_error", "param": null, "code": "verification_failed"}});
                return Some((Ok(error(&mut framing, body.to_string().as_bytes())), None));
            }
            None => {
                // The final frame was read and the receipt checked: only now the end that
                // tells the SDK the answer is whole ([DONE], or the held terminal event).
                let receipt = answer.signed_receipt().map(|r| Bytes::from(format!(": cocoon-receipt {}\n\n", r.to_header())));
                let end = match framing.as_mut() {
                    Some(f) => f.end(receipt),
                    None => Bytes::from([receipt.unwrap_or_default(), Bytes::from_static(b"data: [DONE]\n\n")].concat()),
                };
                return Some((Ok(end), None));
            }
        };
        Some((Ok(chunk), Some((answer, framing))))
    });
    let events = futures::StreamExt::filter(events, |c| std::future::ready(c.as_ref().map_or(true, |b| !b.is_empty())));
    let mut resp = Response::new(Body::from_stream(events));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&worker) {
        h.insert("x-cocoon-worker", v);
    }
    if simulated {
        h.insert("x-cocoon-tee", HeaderValue::from_static("simulated"));
    }
    resp
}

/// Serves [`app`] on `listener` until `stop`.
pub async fn serve(client: Arc<SealedClient>, listener: tokio::net::TcpListener, stop: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // SSE chunks are small writes: with Nagle on, each waits for the SDK's delayed ACK (~40 ms
    // added to the first token, measured by scripts/bench-e2e).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(client)).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

/// Verifies the workers of every model the network lists, against the client's policy, and
/// returns a human-readable verdict (what `cocoon client-proxy` prints at start). An error
/// only when the model list cannot be read; a model with no trusted worker is reported.
pub async fn verify_all(client: &SealedClient) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let cfg = client.config();
    let base = cfg.base_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    let models: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/models"))
        .bearer_auth(&cfg.api_key)
        .timeout(cfg.timeout)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut out = String::new();
    let ids = models["data"].as_array().map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect::<Vec<_>>()).unwrap_or_default();
    for id in ids {
        match client.trusted_workers(&id, true).await {
            Ok(ws) => {
                for w in ws {
                    let _ = writeln!(out, "model {id}: worker {} TRUSTED{}", w.worker_id, if w.insecure_simulated { " (INSECURE simulated TEE)" } else { "" });
                    for line in w.verdict.lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "model {id}: NOT TRUSTED: {e}");
            }
        }
    }
    Ok(out)
}
