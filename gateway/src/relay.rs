//! Relaying a job's streamed events to the client as OpenAI-style SSE.
//!
//! The body stream owns the job: when the client goes away hyper drops the body, which drops the
//! [`router::JobStream`] (cancelling the job at the worker), releases the in-flight permit and
//! records the stream as cut. Frames are `data: {chunk}\n\n`, ending with `data: [DONE]\n\n`;
//! a worker failure mid-stream becomes one `data: {"error": …}` event and the stream ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use protocol::{JobEvent, Usage};
use router::JobStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::billing::Bill;
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

pub struct SseRelay {
    job: JobStream,
    /// The client asked for the usage chunk; if not, the gateway-requested one is dropped.
    include_usage: bool,
    model: String,
    started: Instant,
    first_chunk_seen: bool,
    state: State,
    settle: Option<TokenSettle>,
    bill: Option<Bill>,
    /// The capture that must commit before `[DONE]` reaches the client.
    capturing: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    _permit: OwnedSemaphorePermit,
}

#[derive(PartialEq, Eq)]
enum State {
    Streaming,
    Finished,
}

fn frame(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 8);
    b.put_slice(b"data: ");
    b.put_slice(data);
    b.put_slice(b"\n\n");
    b.freeze()
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
    pub fn new(
        job: JobStream,
        include_usage: bool,
        model: String,
        started: Instant,
        settle: TokenSettle,
        bill: Option<Bill>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        metrics::gauge!(m::INFLIGHT_STREAMS).increment(1.0);
        Self {
            job,
            include_usage,
            model,
            started,
            first_chunk_seen: false,
            state: State::Streaming,
            settle: Some(settle),
            bill,
            capturing: None,
            _permit: permit,
        }
    }

    fn finish(&mut self, usage: Option<&Usage>) {
        self.state = State::Finished;
        record_usage(&self.model, usage);
        if let Some(s) = self.settle.take() {
            s.settle(usage);
        }
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(fut) = this.capturing.as_mut() {
            if fut.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.capturing = None;
            return Poll::Ready(Some(Ok(Bytes::from_static(b"data: [DONE]\n\n"))));
        }
        loop {
            if this.state == State::Finished {
                return Poll::Ready(None);
            }
            let ev = match Pin::new(&mut this.job).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => {
                    // JobStream always ends with a terminal event; treat a bare end as a failure.
                    this.finish(None);
                    metrics::counter!(m::STREAMS_CUT, "reason" => "worker").increment(1);
                    let err = ApiError::Upstream { status: 502, message: "stream ended unexpectedly".into(), body: None };
                    return Poll::Ready(Some(Ok(frame(&err.into_body_json()))));
                }
            };
            match ev {
                JobEvent::Chunk { data } => {
                    if !this.include_usage && is_usage_only(&data) {
                        continue;
                    }
                    if let Some(b) = this.bill.as_mut() {
                        b.count_chunk();
                    }
                    if !this.first_chunk_seen {
                        this.first_chunk_seen = true;
                        metrics::histogram!(m::TTFT, "model" => this.model.clone())
                            .record(this.started.elapsed().as_secs_f64());
                    }
                    return Poll::Ready(Some(Ok(frame(&data))));
                }
                JobEvent::Done { usage } => {
                    this.finish(usage.as_ref());
                    if let Some(bill) = this.bill.take() {
                        let job = this.model.clone();
                        this.capturing = Some(Box::pin(async move {
                            if let Err(e) = bill.capture(usage.as_ref()).await {
                                tracing::warn!(model = %job, error = %e, "capture failed; the hold will expire");
                            }
                        }));
                        // Poll the capture right away; [DONE] follows once it committed.
                        return Pin::new(this).poll_next(cx);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from_static(b"data: [DONE]\n\n"))));
                }
                JobEvent::Failed { error, usage } => {
                    this.finish(usage.as_ref());
                    if let Some(bill) = this.bill.take() {
                        bill.settle_later(usage);
                    }
                    metrics::counter!(m::STREAMS_CUT, "reason" => "worker").increment(1);
                    tracing::warn!(error = %error.message, "stream failed mid-way");
                    let err = ApiError::Upstream {
                        status: error.status,
                        message: format!("The worker failed mid-stream: {}", error.message),
                        body: error.body,
                    };
                    return Poll::Ready(Some(Ok(frame(&err.into_body_json()))));
                }
                JobEvent::Response { body, usage } => {
                    // A worker answering a stream request with a whole body: relay it as one chunk.
                    this.finish(usage.as_ref());
                    if let Some(bill) = this.bill.take() {
                        bill.settle_later(usage);
                    }
                    return Poll::Ready(Some(Ok(frame(&body))));
                }
            }
        }
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        metrics::gauge!(m::INFLIGHT_STREAMS).decrement(1.0);
        if self.state != State::Finished {
            // The client went away: dropping `job` right after this cancels it at the worker.
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
