//! Relaying a job's streamed events to the client as OpenAI-style SSE.
//!
//! The body stream owns the job: when the client goes away hyper drops the body, which drops the
//! [`router::JobStream`] (cancelling the job at the worker), releases the in-flight permit and
//! records the stream as cut. Frames are `data: {chunk}\n\n`, ending with `data: [DONE]\n\n`;
//! a worker failure mid-stream becomes one `data: {"error": …}` event and the stream ends.
//! The worker's receipt, once the router found it valid, precedes `[DONE]` as the SSE comment
//! `: cocoon-receipt <base64url>` (SDKs skip comments; docs/e2e.md, section 6).
//! A Responses API stream is framed as OpenAI frames those instead (`event:` lines, no
//! `[DONE]`, the terminal event held until the capture): [`crate::responses`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use protocol::{JobEvent, Usage};
use router::JobStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::billing::{Bill, UsageBounds};
use crate::error::ApiError;
use crate::metrics as m;
use crate::ratelimit::{Limits, RateLimiter};

/// Settles the token budget with the real count once a request ends.
pub struct TokenSettle {
    pub limiter: Arc<RateLimiter>,
    pub rate_key: String,
    pub limits: Limits,
    pub estimated: u64,
}

impl TokenSettle {
    pub fn settle(self, usage: Option<&Usage>) {
        let Some(u) = usage else { return };
        let actual = u.total_tokens.max(u.prompt_tokens + u.completion_tokens);
        let delta = i64::try_from(actual).unwrap_or(i64::MAX) - i64::try_from(self.estimated).unwrap_or(i64::MAX);
        if delta == 0 || self.limits.tokens_per_minute == 0 {
            return;
        }
        // Off the response path: a slow Redis must not delay the client.
        tokio::spawn(async move {
            if let Err(e) = self.limiter.adjust_tokens(&self.rate_key, self.limits, delta).await {
                tracing::warn!(error = %e, "could not settle token budget");
            }
        });
    }
}

pub fn record_usage(model: &str, usage: Option<&Usage>) {
    if let Some(u) = usage {
        metrics::counter!(m::TOKENS, "model" => model.to_string(), "kind" => "prompt").increment(u.prompt_tokens);
        metrics::counter!(m::TOKENS, "model" => model.to_string(), "kind" => "completion")
            .increment(u.completion_tokens);
    }
}

type Dispatch = Pin<Box<dyn Future<Output = Result<JobStream, router::RouteError>> + Send>>;
type Capture = Pin<Box<dyn Future<Output = Result<i64, crate::billing::MeterError>> + Send>>;

/// What a relay is made of (see [`crate::inference`]).
pub struct RelayParts {
    /// Waits for a slot and the worker's first event (queue and prefill).
    pub dispatch: Dispatch,
    /// The client asked for the usage chunk; if not, the gateway-requested one is dropped.
    pub include_usage: bool,
    /// A Responses API stream: framed by [`crate::responses::ResponsesFraming`].
    pub responses: bool,
    pub model: String,
    pub started: Instant,
    /// An SSE comment after this long without a byte.
    pub keepalive: Duration,
    pub settle: TokenSettle,
    pub bill: Option<Bill>,
    pub bounds: UsageBounds,
    pub permit: OwnedSemaphorePermit,
    /// A Responses stream with `store: true`: the final Response object is stored (after
    /// the capture, before the terminal event reaches the client).
    pub store: Option<crate::stored::Intent>,
}

/// The body of a streaming answer. Its headers went out when the job was admitted; it then
/// waits for dispatch (keep-alive comments meanwhile), relays the job's events as SSE, and
/// captures before `[DONE]`.
pub struct SseRelay {
    phase: Phase,
    include_usage: bool,
    model: String,
    started: Instant,
    first_chunk_seen: bool,
    settle: Option<TokenSettle>,
    bill: Option<Bill>,
    bounds: UsageBounds,
    keepalive_every: Duration,
    /// Fires when the client has had no byte for `keepalive_every`.
    keepalive: Pin<Box<tokio::time::Sleep>>,
    /// The receipt comment, taken from the job at its end and sent just before `[DONE]`.
    receipt: Option<Bytes>,
    /// Set for a Responses API stream (its framing differs from chat's).
    responses: Option<crate::responses::ResponsesFraming>,
    store: Option<crate::stored::Intent>,
    _permit: OwnedSemaphorePermit,
}

/// `: cocoon-receipt <base64url>` for a receipt the router found valid; nothing otherwise
/// (an invalid receipt is the router's alarm, not something to hand a client as proof).
pub(crate) fn receipt_comment(check: Option<&router::ReceiptCheck>) -> Option<Bytes> {
    match check {
        Some(router::ReceiptCheck::Valid { signed, .. }) => Some(Bytes::from(format!(": cocoon-receipt {}\n\n", signed.to_header()))),
        _ => None,
    }
}

/// The `x-cocoon-receipt` header value of a whole answer, for a valid receipt.
pub(crate) fn receipt_header(check: Option<&router::ReceiptCheck>) -> Option<axum::http::HeaderValue> {
    match check {
        Some(router::ReceiptCheck::Valid { signed, .. }) => axum::http::HeaderValue::from_str(&signed.to_header()).ok(),
        _ => None,
    }
}

/// Carries the worker's signed receipt on a whole answer (base64url of its JSON).
pub const RECEIPT_HEADER: &str = "x-cocoon-receipt";

const DONE: &[u8] = b"data: [DONE]\n\n";

/// `[DONE]`, after the receipt comment when there is one.
fn done_frame(receipt: Option<Bytes>) -> Bytes {
    match receipt {
        None => Bytes::from_static(DONE),
        Some(r) => {
            let mut b = BytesMut::with_capacity(r.len() + DONE.len());
            b.put_slice(&r);
            b.put_slice(DONE);
            b.freeze()
        }
    }
}

enum Phase {
    Dispatching(Dispatch),
    Streaming(JobStream),
    /// The capture that must be durable before `[DONE]` reaches the client.
    Capturing(Capture),
    Finished,
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// One SSE event carrying `data` as its `data:` line.
pub fn frame(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 8);
    b.put_slice(b"data: ");
    b.put_slice(data);
    b.put_slice(b"\n\n");
    b.freeze()
}

fn error_frame(err: &ApiError) -> Bytes {
    frame(&err.into_body_json())
}

/// A usage-only chunk: `"choices": []` with `usage` set. Only parsed when the client did not ask
/// for usage, since then such a chunk must not reach it.
fn is_usage_only(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Peek>(data) {
        Ok(p) => p.usage.is_some() && p.choices.is_some_and(|c| c.is_empty()),
        Err(_) => false,
    }
}

impl SseRelay {
    pub fn new(p: RelayParts) -> Self {
        metrics::gauge!(m::INFLIGHT_STREAMS).increment(1.0);
        Self {
            phase: Phase::Dispatching(p.dispatch),
            include_usage: p.include_usage,
            model: p.model,
            started: p.started,
            first_chunk_seen: false,
            settle: Some(p.settle),
            bill: p.bill,
            bounds: p.bounds,
            keepalive_every: p.keepalive,
            keepalive: Box::pin(tokio::time::sleep(p.keepalive)),
            receipt: None,
            responses: p.responses.then(crate::responses::ResponsesFraming::default),
            store: p.store,
            _permit: p.permit,
        }
    }

    fn finish(&mut self, usage: Option<&Usage>) {
        self.phase = Phase::Finished;
        record_usage(&self.model, usage);
        if let Some(s) = self.settle.take() {
            s.settle(usage);
        }
    }

    /// A frame of the worker's data, in this stream's framing (`None`: held back).
    fn data_frame(&mut self, data: &[u8]) -> Option<Bytes> {
        match self.responses.as_mut() {
            Some(r) => r.event(data),
            None => Some(frame(data)),
        }
    }

    fn error_frame(&mut self, err: &ApiError) -> Bytes {
        match self.responses.as_mut() {
            Some(r) => r.error(err),
            None => error_frame(err),
        }
    }

    fn done_frame(&mut self) -> Bytes {
        let receipt = self.receipt.take();
        match self.responses.as_mut() {
            Some(r) => r.end(receipt),
            None => done_frame(receipt),
        }
    }

    fn worker(&self) -> String {
        self.bill.as_ref().and_then(Bill::worker).unwrap_or("?").to_string()
    }

    /// One job event to at most one SSE frame (`None`: nothing to send for it).
    fn on_event(&mut self, ev: JobEvent, cx: &mut Context<'_>) -> Option<Bytes> {
        match ev {
            // The router consumes and checks receipts; its verdict is read at `Done`.
            JobEvent::Receipt { .. } => None,
            JobEvent::Chunk { data } => {
                if !self.include_usage && is_usage_only(&data) {
                    return None;
                }
                if let Some(b) = self.bill.as_mut() {
                    b.count_chunk();
                }
                if !self.first_chunk_seen {
                    self.first_chunk_seen = true;
                    metrics::histogram!(m::TTFT, "model" => self.model.clone()).record(self.started.elapsed().as_secs_f64());
                }
                self.data_frame(&data)
            }
            JobEvent::Done { usage } => {
                // The router settled its verdict on the receipt with this terminal event.
                if let Phase::Streaming(job) = &self.phase {
                    self.receipt = receipt_comment(job.receipt());
                    if let Some(b) = self.bill.as_mut() {
                        b.set_receipt(job.receipt());
                    }
                }
                let usage = usage.map(|u| self.bounds.clamp(&u, &self.worker()));
                self.finish(usage.as_ref());
                let store = match (self.store.take(), self.responses.as_ref().and_then(|f| f.terminal_response())) {
                    (Some(intent), Some(response)) => Some((intent, response)),
                    _ => None,
                };
                match (self.bill.take(), store) {
                    (None, None) => Some(self.done_frame()),
                    (bill, store) => {
                        let u = usage;
                        self.phase = Phase::Capturing(Box::pin(async move {
                            let charged = match bill {
                                Some(bill) => bill.capture(u.as_ref()).await,
                                None => Ok(0),
                            };
                            // A paid answer is stored; one the ledger refused is not.
                            if let (Some((intent, response)), Ok(_) | Err(crate::billing::MeterError::CaptureDeferred(_))) = (store, &charged) {
                                intent.save(response).await;
                            }
                            charged
                        }));
                        // Polled right away by the caller; [DONE] follows once it is durable.
                        cx.waker().wake_by_ref();
                        None
                    }
                }
            }
            JobEvent::Failed { error, usage } => {
                let usage = usage.map(|u| self.bounds.clamp(&u, &self.worker()));
                self.finish(usage.as_ref());
                if let Some(bill) = self.bill.take() {
                    bill.settle_later(usage);
                }
                metrics::counter!(m::STREAMS_CUT, "reason" => "worker").increment(1);
                tracing::warn!(error = %error.message, "stream failed mid-way");
                let err = ApiError::Upstream {
                    status: error.status,
                    message: format!("The worker failed mid-stream: {}", error.message),
                    body: error.body,
                };
                Some(self.error_frame(&err))
            }
            JobEvent::Response { body, usage } => {
                // A worker answering a stream request with a whole body: relay it as one chunk.
                let usage = usage.map(|u| self.bounds.clamp(&u, &self.worker()));
                self.finish(usage.as_ref());
                if let Some(bill) = self.bill.take() {
                    bill.settle_later(usage);
                }
                Some(frame(&body))
            }
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            match &mut self.phase {
                Phase::Finished => return Poll::Ready(None),
                Phase::Dispatching(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(job)) => {
                        tracing::Span::current().record("worker", job.worker_id());
                        if let Some(b) = self.bill.as_mut() {
                            b.set_worker(job.worker_id(), job.price_coefficient());
                        }
                        self.phase = Phase::Streaming(job);
                    }
                    Poll::Ready(Err(e)) => {
                        // The headers are out: the failure becomes one error event. Nothing
                        // was produced, so the bill (dropped here) releases the hold.
                        self.finish(None);
                        metrics::counter!(m::STREAMS_CUT, "reason" => "dispatch").increment(1);
                        return Poll::Ready(Some(self.error_frame(&ApiError::from(e))));
                    }
                },
                Phase::Streaming(job) => {
                    let ev = match Pin::new(job).poll_next(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(ev)) => ev,
                        Poll::Ready(None) => {
                            // JobStream always ends with a terminal event; a bare end is a failure.
                            self.finish(None);
                            metrics::counter!(m::STREAMS_CUT, "reason" => "worker").increment(1);
                            let err = ApiError::Upstream { status: 502, message: "stream ended unexpectedly".into(), body: None };
                            return Poll::Ready(Some(self.error_frame(&err)));
                        }
                    };
                    if let Some(bytes) = self.on_event(ev, cx) {
                        return Poll::Ready(Some(bytes));
                    }
                }
                Phase::Capturing(fut) => {
                    let r = match fut.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r,
                    };
                    self.phase = Phase::Finished;
                    return Poll::Ready(Some(match r {
                        // Deferred: durable in the capture outbox, retried until it lands.
                        Ok(_) | Err(crate::billing::MeterError::CaptureDeferred(_)) => self.done_frame(),
                        Err(e) => {
                            // Neither committed nor in the outbox: the stream does not end as a
                            // success. (Its content is out; the hold stays for the reaper.)
                            tracing::error!(model = %self.model, error = %e, "capture failed and could not be journalled");
                            metrics::counter!(m::STREAMS_CUT, "reason" => "capture").increment(1);
                            self.error_frame(&ApiError::LedgerUnavailable(format!("capture failed: {e}")))
                        }
                    }));
                }
            }
        }
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.poll_step(cx) {
            Poll::Ready(Some(b)) => {
                let next = tokio::time::Instant::now() + this.keepalive_every;
                this.keepalive.as_mut().reset(next);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Nothing to send: a comment once the client has waited a keep-alive period.
                if this.keepalive.as_mut().poll(cx).is_ready() {
                    let next = tokio::time::Instant::now() + this.keepalive_every;
                    this.keepalive.as_mut().reset(next);
                    metrics::counter!(m::SSE_KEEPALIVES).increment(1);
                    return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE))));
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        metrics::gauge!(m::INFLIGHT_STREAMS).decrement(1.0);
        metrics::gauge!(m::INFLIGHT_REQUESTS).decrement(1.0);
        if !matches!(self.phase, Phase::Finished) {
            // The client went away: dropping the job (or the dispatch) cancels it at the worker.
            metrics::counter!(m::STREAMS_CUT, "reason" => "client").increment(1);
            tracing::debug!(model = %self.model, "client disconnected mid-stream");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_usage_only_chunks() {
        assert!(is_usage_only(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(!is_usage_only(br#"{"id":"x","choices":[{"index":0}],"usage":null}"#));
        assert!(!is_usage_only(br#"{"id":"x","choices":[]}"#));
        assert!(!is_usage_only(b"not json"));
    }

    #[test]
    fn frames_are_openai_sse() {
        assert_eq!(&frame(b"{}")[..], b"data: {}\n\n");
    }
}
