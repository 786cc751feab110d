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
use attestation::receipt::SignedReceipt;
use protocol::Usage;
use uuid::Uuid;

/// What a worker may report for one request. Usage above it is a worker fault, never a
/// charge: the report is clamped, the alarm `cocoon_gateway_usage_over_bounds_total` counts
/// it and the worker is named in the log.
#[derive(Clone, Copy, Debug)]
pub struct UsageBounds {
    /// The generation cap the engine was sent, times the choices.
    pub completion_tokens: u64,
    /// Generous: one token per byte of the request body plus the chat template's.
    pub prompt_tokens: u64,
}

impl UsageBounds {
    pub fn clamp(&self, u: &Usage, worker: &str) -> Usage {
        let mut out = *u;
        let mut over = Vec::new();
        if u.completion_tokens > self.completion_tokens {
            over.push(format!("completion_tokens {} > {}", u.completion_tokens, self.completion_tokens));
            out.completion_tokens = self.completion_tokens;
        }
        if u.prompt_tokens > self.prompt_tokens {
            over.push(format!("prompt_tokens {} > {}", u.prompt_tokens, self.prompt_tokens));
            out.prompt_tokens = self.prompt_tokens;
        }
        if let Some(d) = out.completion_tokens_details.as_mut() {
            d.reasoning_tokens = d.reasoning_tokens.min(out.completion_tokens);
        }
        if let Some(d) = out.prompt_tokens_details.as_mut() {
            d.cached_tokens = d.cached_tokens.min(out.prompt_tokens);
        }
        out.total_tokens = out.prompt_tokens.saturating_add(out.completion_tokens);
        if !over.is_empty() {
            metrics::counter!("cocoon_gateway_usage_over_bounds_total", "worker" => worker.to_string()).increment(1);
            tracing::error!(%worker, over = %over.join(", "), "worker reported usage beyond the request's bounds; charging at most the bounds");
        }
        out
    }
}

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
    /// The API key's spend budgets the hold must fit, in the same ledger transaction.
    pub budget: Option<billing::KeyBudget>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("insufficient balance: {available} nanoTON available, {needed} nanoTON needed for this request")]
    InsufficientFunds { available: i64, needed: i64 },
    #[error("The model `{0}` has no price set, so it cannot be billed; an operator sets one with `cocoon prices set`")]
    Unpriced(String),
    #[error("billing unavailable: {0}")]
    Unavailable(String),
    /// The key's daily or monthly budget is spent (counting requests in flight at their hold).
    #[error("This API key's {period} budget of {budget} nanoTON is spent ({committed} nanoTON charged or held, this request needs up to {needed}); it resets at {resets_at}.")]
    BudgetExceeded { period: billing::BudgetPeriod, budget: i64, committed: i64, needed: i64, resets_at: String, resets_in_secs: u64 },
    /// Not a failure of the request: the ledger could not take the capture now, so it was
    /// written durably to the capture outbox and will be retried until it lands. The answer
    /// may be released; its charge is not known yet.
    #[error("capture deferred to the outbox: {0}")]
    CaptureDeferred(String),
}

/// A client account's money in nanoTON: `available = total - held`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountBalance {
    pub total: i64,
    pub held: i64,
    pub available: i64,
}

/// One captured request, as the ledger recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub job_id: Uuid,
    pub model: String,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    /// The serving worker's price coefficient, thousandths (1000 = 1.0×).
    pub coefficient: u32,
    /// Full cost by the price, before any cap.
    pub cost: i64,
    /// What was taken from the account (`x-cocoon-cost-nanoton`).
    pub charge: i64,
    pub at_ms: i64,
    /// The worker's signed receipt for the job, in its header form (base64url), when the
    /// ledger holds one.
    pub receipt: Option<String>,
}

/// Where a payout to a worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    /// In the outbox (already debited from the worker's balance), not in a message yet.
    Pending,
    /// In a signed wallet message that may not have been broadcast yet.
    Sending,
    /// Broadcast; not seen on chain yet.
    Sent,
    /// On chain (`tx_hash`).
    Confirmed,
    /// Cancelled before it was sent; the amount went back to the worker's balance.
    Cancelled,
}

/// One payout of a worker's balance to its TON wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayoutRecord {
    pub id: i64,
    pub amount: i64,
    pub status: PayoutStatus,
    /// Destination wallet, raw form `wc:hex`.
    pub address: String,
    /// The wallet transaction that carried it, once confirmed.
    pub tx_hash: Option<String>,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub confirmed_at_ms: Option<i64>,
}

/// A worker's money: what it is owed now, what it earned in total, and its payouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerEarnings {
    pub balance: i64,
    pub earned: i64,
    pub jobs: i64,
    /// Where payouts go, if the operator set an address.
    pub payout_address: Option<String>,
    /// Newest first.
    pub payouts: Vec<PayoutRecord>,
}

#[async_trait]
pub trait Meter: Send + Sync + 'static {
    async fn hold(&self, req: &HoldRequest) -> Result<(), MeterError>;
    /// Charges `usage` at the worker's coefficient; returns the charge in nanoTON. Idempotent.
    /// `receipt`, the worker's signed receipt the router found valid, is kept with the charge.
    async fn capture(&self, job_id: Uuid, worker: &str, coefficient: u32, usage: &Usage, receipt: Option<&SignedReceipt>) -> Result<i64, MeterError>;
    /// Gives the hold back. Idempotent; a no-op after a capture.
    async fn release(&self, job_id: Uuid) -> Result<(), MeterError>;

    // Reads behind `/v1/account/*` and `/v1/workers/*`. They never create an account: one
    // the ledger has not seen yet reads as zero.
    /// Client account `account`'s balance.
    async fn balance(&self, account: &str) -> Result<AccountBalance, MeterError>;
    /// Client account `account`'s captured requests, newest first, at most `limit`.
    async fn usage(&self, account: &str, limit: u32) -> Result<Vec<UsageRecord>, MeterError>;
    /// Worker `worker`'s earnings and its most recent payouts.
    async fn worker_earnings(&self, worker: &str) -> Result<WorkerEarnings, MeterError>;
    /// Every model's price that is set, by model id (for `/v1/models`).
    async fn prices(&self) -> Result<Vec<(String, protocol::openai::ModelPricing)>, MeterError> {
        Ok(Vec::new())
    }
}

/// One request's bill. Settle it with [`Bill::capture`] or [`Bill::release`]; if it is dropped
/// unsettled it settles itself in the background from what it counted.
pub struct Bill {
    meter: Arc<dyn Meter>,
    job_id: Uuid,
    worker: Option<(String, u32)>,
    /// The worker's receipt, once the router found it valid.
    receipt: Option<SignedReceipt>,
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
            receipt: None,
            prompt_estimate,
            relayed_chunks: 0,
            settled: false,
        }
    }

    pub fn set_worker(&mut self, worker: &str, coefficient: u32) {
        self.worker = Some((worker.to_string(), coefficient));
    }

    /// Keeps the job's receipt with the charge, if the router found it valid.
    pub fn set_receipt(&mut self, check: Option<&router::ReceiptCheck>) {
        if let Some(router::ReceiptCheck::Valid { signed, .. }) = check {
            self.receipt = Some(signed.clone());
        }
    }

    /// The serving worker's id, once dispatched.
    pub fn worker(&self) -> Option<&str> {
        self.worker.as_ref().map(|(w, _)| w.as_str())
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
    ///
    /// The ledger call runs in its own task, so it completes even when the caller is dropped
    /// while awaiting it (the client went away between the last token and the end of the
    /// answer): cut in the middle, the served request would go unpaid and its hold would keep
    /// the client's funds reserved until it expired.
    pub async fn capture(mut self, usage: Option<&Usage>) -> Result<i64, MeterError> {
        self.settled = true;
        let usage = usage.copied().unwrap_or_else(|| self.counted_usage());
        let (meter, job_id, worker, receipt) = (self.meter.clone(), self.job_id, self.worker.take(), self.receipt.take());
        let settle = tokio::spawn(async move {
            match worker {
                Some((w, c)) => meter.capture(job_id, &w, c, &usage, receipt.as_ref()).await,
                None => meter.release(job_id).await.map(|()| 0),
            }
        });
        settle
            .await
            .map_err(|e| MeterError::Unavailable(format!("settling job {job_id}: {e}")))?
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
        let (job_id, worker, receipt) = (self.job_id, self.worker.clone(), self.receipt.take());
        tokio::spawn(async move {
            let r = match (worker, usage) {
                (Some((w, c)), Some(u)) if u.completion_tokens > 0 || u.prompt_tokens > 0 => {
                    meter.capture(job_id, &w, c, &u, receipt.as_ref()).await.map(|_| ())
                }
                _ => meter.release(job_id).await,
            };
            if let Err(e) = r.or_else(|e| if matches!(e, MeterError::CaptureDeferred(_)) { Ok(()) } else { Err(e) }) {
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
            receipt: self.receipt.take(),
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
        async fn capture(&self, job: Uuid, w: &str, c: u32, u: &Usage, _: Option<&SignedReceipt>) -> Result<i64, MeterError> {
            self.0.lock().unwrap().push(format!("capture {job} {w} {c} {} {}", u.prompt_tokens, u.completion_tokens));
            Ok(1)
        }
        async fn release(&self, job: Uuid) -> Result<(), MeterError> {
            self.0.lock().unwrap().push(format!("release {job}"));
            Ok(())
        }
        async fn balance(&self, _: &str) -> Result<AccountBalance, MeterError> {
            Ok(AccountBalance::default())
        }
        async fn usage(&self, _: &str, _: u32) -> Result<Vec<UsageRecord>, MeterError> {
            Ok(Vec::new())
        }
        async fn worker_earnings(&self, _: &str) -> Result<WorkerEarnings, MeterError> {
            Ok(WorkerEarnings::default())
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

    /// A meter whose captures wait for a permit of its semaphore.
    struct Gated(tokio::sync::Semaphore, Recorder);

    #[async_trait]
    impl Meter for Gated {
        async fn hold(&self, _: &HoldRequest) -> Result<(), MeterError> {
            Ok(())
        }
        async fn capture(&self, job: Uuid, w: &str, c: u32, u: &Usage, r: Option<&SignedReceipt>) -> Result<i64, MeterError> {
            let _open = self.0.acquire().await;
            self.1.capture(job, w, c, u, r).await
        }
        async fn release(&self, job: Uuid) -> Result<(), MeterError> {
            self.1.release(job).await
        }
        async fn balance(&self, _: &str) -> Result<AccountBalance, MeterError> {
            Ok(AccountBalance::default())
        }
        async fn usage(&self, _: &str, _: u32) -> Result<Vec<UsageRecord>, MeterError> {
            Ok(Vec::new())
        }
        async fn worker_earnings(&self, _: &str) -> Result<WorkerEarnings, MeterError> {
            Ok(WorkerEarnings::default())
        }
    }

    #[tokio::test]
    async fn a_capture_completes_even_if_its_caller_is_dropped() {
        let g = Arc::new(Gated(tokio::sync::Semaphore::new(0), Recorder::default()));
        let id = Uuid::nil();
        let mut b = Bill::new(g.clone(), id, 3);
        b.set_worker("w", 1000);
        let u = Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, ..Default::default() };
        // The request future (client gone) is dropped while the capture is in the ledger.
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), b.capture(Some(&u))).await;
        assert!(cut.is_err(), "the capture was still waiting");
        assert!(g.1 .0.lock().unwrap().is_empty());
        g.0.add_permits(1);
        assert_eq!(settled(&g.1).await, vec![format!("capture {id} w 1000 3 4")]);
    }

    #[test]
    fn usage_beyond_the_bounds_is_clamped_never_charged() {
        let b = UsageBounds { completion_tokens: 10, prompt_tokens: 100 };
        let u = Usage {
            prompt_tokens: 5000,
            completion_tokens: 1_000_000,
            total_tokens: 1,
            completion_tokens_details: Some(protocol::openai::CompletionTokensDetails { reasoning_tokens: 900 }),
            ..Default::default()
        };
        let c = b.clamp(&u, "w");
        assert_eq!((c.prompt_tokens, c.completion_tokens, c.total_tokens), (100, 10, 110));
        assert_eq!(c.reasoning_tokens(), 10);
        let fine = Usage { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10, ..Default::default() };
        assert_eq!(b.clamp(&fine, "w"), fine);
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
