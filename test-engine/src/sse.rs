//! Request accounting (a drop guard), pacing, and Server-Sent-Events plumbing.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::params::Timing;
use crate::TestEngine;

/// Counts one request: started/active on creation; on drop `active` goes down and the request is counted
/// completed if [`RequestGuard::complete`] was called, else cancelled. Living inside the SSE body stream,
/// it is dropped exactly once when hyper drops the body (client gone) or the stream ends.
pub struct RequestGuard {
    engine: Arc<TestEngine>,
    completed: bool,
}

impl RequestGuard {
    pub fn start(engine: Arc<TestEngine>) -> Self {
        let s = engine.stats();
        s.requests_started.fetch_add(1, Ordering::Relaxed);
        s.active.fetch_add(1, Ordering::Relaxed);
        Self {
            engine,
            completed: false,
        }
    }

    pub fn complete(&mut self) {
        self.completed = true;
    }

    pub fn add_tokens(&self, n: u64) {
        self.engine
            .stats()
            .tokens_generated
            .fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = self.engine.stats();
        if self.completed {
            s.requests_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            s.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("test-engine: request cancelled");
        }
        s.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sleeps before tokens: `ttft` before the first, then the per-token interval (anchored to a deadline
/// so the rate does not drift). Never sleeps when both are zero/unlimited.
pub struct Pacer {
    timing: Timing,
    next: Option<Instant>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Pacer {
    pub fn new(timing: Timing, engine: &TestEngine) -> Self {
        Self {
            timing,
            next: None,
            closing: engine.closing.subscribe(),
        }
    }

    /// Wait for the next token slot. `false` means the server is shutting down: stop generating.
    pub async fn before_token(&mut self) -> bool {
        let deadline = match self.next {
            None => {
                let now = Instant::now();
                let first = now.checked_add(self.timing.ttft).unwrap_or(now);
                self.next = Some(first);
                (!self.timing.ttft.is_zero()).then_some(first)
            }
            Some(prev) => self.timing.interval.map(|i| {
                let at = prev.checked_add(i).unwrap_or(prev);
                self.next = Some(at);
                at
            }),
        };
        match deadline {
            None => true,
            Some(at) => self.sleep_until(at).await,
        }
    }

    /// Non-stream: the whole generation time at once (ttft + interval for each further token).
    pub async fn before_answer(&mut self, tokens: u32) -> bool {
        let extra = self.timing.interval.map_or(std::time::Duration::ZERO, |i| {
            i.saturating_mul(tokens.saturating_sub(1))
        });
        let total = self.timing.ttft.saturating_add(extra);
        if total.is_zero() {
            return true;
        }
        let at = Instant::now()
            .checked_add(total)
            .unwrap_or_else(|| Instant::now() + crate::params::MAX_DELAY);
        self.sleep_until(at).await
    }

    async fn sleep_until(&mut self, at: Instant) -> bool {
        let closing = &mut self.closing;
        tokio::select! {
            _ = tokio::time::sleep_until(at) => true,
            _ = wait_closing(closing) => false,
        }
    }
}

async fn wait_closing(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        // The engine (sender) is gone: nothing will ever close us.
        std::future::pending::<()>().await;
    }
}

/// Append one `data: <json>\n\n` event.
pub fn push_event(buf: &mut Vec<u8>, value: &impl Serialize) {
    buf.extend_from_slice(b"data: ");
    // Writing our own plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, value);
    buf.extend_from_slice(b"\n\n");
}

pub fn push_done(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"data: [DONE]\n\n");
}

/// A streaming `text/event-stream` response whose body is `stream`.
pub fn response<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Drive a step function as an SSE body: `step` yields the next batch of events, `None` ends the body.
pub fn drive<T, F, Fut>(state: T, step: F) -> Response
where
    T: Send + 'static,
    F: FnMut(T) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Bytes, T)>> + Send + 'static,
{
    let mut step = step;
    let stream = futures::stream::unfold(state, move |s| {
        let fut = step(s);
        async move { fut.await.map(|(b, s)| (Ok::<_, Infallible>(b), s)) }
    });
    response(stream)
}
