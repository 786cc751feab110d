//! The gateway's side of billing: a [`Meter`] (the ledger behind a trait, so the edge stays
//! testable without a database) and [`Bill`], the drop guard that makes sure every request that
//! placed a hold ends in exactly one capture or release, whichever way it ends.
//!
//! Life cycle: `hold` for the worst case before routing (402 if the balance cannot cover it);
//! `capture` of the real usage when the engine reports it (before the client sees the end of
//! the answer: `[DONE]` or the JSON body); if the request ends any other way (client gone,
//! worker died, gateway error) the guard captures the tokens relayed so far, or releases the
//! hold when nothing was produced. A process killed outright leaves the hold to expire, and the
//! ledger's reaper releases it.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::Usage;
use uuid::Uuid;

/// What a request may cost at most, for the hold.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub job_id: Uuid,
    pub account: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Highest worker price coefficient (thousandths) the request may be served at.
    pub max_coefficient: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("insufficient balance: {available} nanoTON available, {needed} nanoTON needed for this request")]
    InsufficientFunds { available: i64, needed: i64 },
    #[error("The model `{0}` has no price set, so it cannot be billed; an operator sets one with `cocoon prices set`")]
    Unpriced(String),
    #[error("billing unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Meter: Send + Sync + 'static {
    async fn hold(&self, req: &HoldRequest) -> Result<(), MeterError>;
    /// Charges `usage` at the worker's coefficient; returns the charge in nanoTON. Idempotent.
    async fn capture(&self, job_id: Uuid, worker: &str, coefficient: u32, usage: &Usage) -> Result<i64, MeterError>;
    /// Gives the hold back. Idempotent; a no-op after a capture.
    async fn release(&self, job_id: Uuid) -> Result<(), MeterError>;
}

/// One request's bill. Settle it with [`Bill::capture`] or [`Bill::release`]; if it is dropped
/// unsettled it settles itself in the background from what it counted.
pub struct Bill {
    meter: Arc<dyn Meter>,
    job_id: Uuid,
    worker: Option<(String, u32)>,
    prompt_estimate: u64,
    relayed_chunks: u64,
    settled: bool,
}

impl Bill {
    pub fn new(meter: Arc<dyn Meter>, job_id: Uuid, prompt_estimate: u64) -> Self {
        Self {
            meter,
            job_id,
            worker: None,
            prompt_estimate,
            relayed_chunks: 0,
            settled: false,
        }
    }

    pub fn set_worker(&mut self, worker: &str, coefficient: u32) {
        self.worker = Some((worker.to_string(), coefficient));
    }

    /// One content chunk reached the client: about one completion token.
    pub fn count_chunk(&mut self) {
        self.relayed_chunks += 1;
    }

    /// What the client received so far, when the engine never said.
    fn counted_usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: self.relayed_chunks,
            total_tokens: self.prompt_estimate + self.relayed_chunks,
            ..Default::default()
        }
    }

    /// Captures `usage` (or the counted usage when the engine reported none).
    pub async fn capture(mut self, usage: Option<&Usage>) -> Result<i64, MeterError> {
        self.settled = true;
        let usage = usage.copied().unwrap_or_else(|| self.counted_usage());
        match &self.worker {
            Some((w, c)) => self.meter.capture(self.job_id, w, *c, &usage).await,
            None => self.meter.release(self.job_id).await.map(|()| 0),
        }
    }

    pub async fn release(mut self) {
        self.settled = true;
        if let Err(e) = self.meter.release(self.job_id).await {
            tracing::warn!(job_id = %self.job_id, error = %e, "release failed; the hold will expire");
        }
    }

    /// Settles in the background with the worker's partial usage if it reported one.
    pub fn settle_later(mut self, usage: Option<Usage>) {
        self.settled = true;
        let usage = usage.or_else(|| (self.relayed_chunks > 0).then(|| self.counted_usage()));
        let meter = self.meter.clone();
        let (job_id, worker) = (self.job_id, self.worker.clone());
        tokio::spawn(async move {
            let r = match (worker, usage) {
                (Some((w, c)), Some(u)) if u.completion_tokens > 0 || u.prompt_tokens > 0 => {
                    meter.capture(job_id, &w, c, &u).await.map(|_| ())
                }
                _ => meter.release(job_id).await,
            };
            if let Err(e) = r {
                tracing::warn!(%job_id, error = %e, "settling a cut request failed; the hold will expire");
            }
        });
    }
}

impl Drop for Bill {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Unsettled: the request ended early. Charge what was relayed, or release.
        let this = Bill {
            meter: self.meter.clone(),
            job_id: self.job_id,
            worker: self.worker.take(),
            prompt_estimate: self.prompt_estimate,
            relayed_chunks: self.relayed_chunks,
            settled: false,
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            this.settle_later(None);
        } else {
            std::mem::forget(this);
            tracing::warn!(job_id = %self.job_id, "bill dropped outside a runtime; the hold will expire");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Meter for Recorder {
        async fn hold(&self, _: &HoldRequest) -> Result<(), MeterError> {
            Ok(())
        }
        async fn capture(&self, job: Uuid, w: &str, c: u32, u: &Usage) -> Result<i64, MeterError> {
            self.0.lock().unwrap().push(format!("capture {job} {w} {c} {} {}", u.prompt_tokens, u.completion_tokens));
            Ok(1)
        }
        async fn release(&self, job: Uuid) -> Result<(), MeterError> {
            self.0.lock().unwrap().push(format!("release {job}"));
            Ok(())
        }
    }

    async fn settled(r: &Recorder) -> Vec<String> {
        for _ in 0..100 {
            if !r.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        r.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn dropped_before_any_worker_releases() {
        let r = Arc::new(Recorder::default());
        let id = Uuid::nil();
        drop(Bill::new(r.clone(), id, 10));
        assert_eq!(settled(&r).await, vec![format!("release {id}")]);
    }

    #[tokio::test]
    async fn dropped_mid_stream_captures_what_was_relayed() {
        let r = Arc::new(Recorder::default());
        let id = Uuid::nil();
        let mut b = Bill::new(r.clone(), id, 10);
        b.set_worker("w", 1500);
        b.count_chunk();
        b.count_chunk();
        drop(b);
        assert_eq!(settled(&r).await, vec![format!("capture {id} w 1500 10 2")]);
    }

    #[tokio::test]
    async fn explicit_capture_settles_once() {
        let r = Arc::new(Recorder::default());
        let mut b = Bill::new(r.clone(), Uuid::nil(), 1);
        b.set_worker("w", 1000);
        let u = Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, ..Default::default() };
        b.capture(Some(&u)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(r.0.lock().unwrap().len(), 1);
    }
}
