//! The gateway's [`Meter`] over the [`billing::Ledger`]: prices the worst case for holds,
//! maps accounts by name, and reaps expired holds in the background.
//!
//! A capture the ledger cannot take (database down, locked) goes to the capture outbox: one
//! JSON line per capture in `<data_dir>/capture-outbox.jsonl`, fsynced before the answer is
//! released, retried every second until the ledger takes it (captures are idempotent by job
//! id). So a failed capture does not mean a free answer. A capture that lands after the
//! reaper released its hold (`billing.hold_ttl_secs`, 2 h by default: a long outage, or a
//! stream that outlived its hold) is charged late from the client's available balance
//! (see [`billing::Ledger::capture`]); only a hold released because the request failed
//! cannot be captured, and that is counted
//! (`cocoon_billing_outbox_captures_total{outcome="hold_released"}`) and logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use attestation::receipt::SignedReceipt;
use billing::{AccountId, AccountKind, Ledger};
use gateway::billing::{
    AccountBalance, HoldRequest, Meter, MeterError, PayoutRecord, PayoutStatus, UsageRecord, WorkerEarnings,
};
use protocol::Usage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Payouts listed with a worker's earnings.
const EARNINGS_PAYOUTS: u32 = 20;

pub struct LedgerMeter {
    ledger: Ledger,
    hold_ttl: Duration,
    outbox: Option<CaptureOutbox>,
    /// Account ids by (kind, name): accounts are never deleted, so the cache never goes stale.
    accounts: Mutex<HashMap<(AccountKind, String), AccountId>>,
}

fn unavailable(e: billing::Error) -> MeterError {
    MeterError::Unavailable(e.to_string())
}

/// A receipt as the ledger keeps it.
fn stored(job_id: Uuid, r: &SignedReceipt) -> billing::StoredReceipt {
    billing::StoredReceipt {
        job_id,
        sha256: hex::encode(r.digest()),
        signer: r.signer.to_hex(),
        signature: hex::encode(&r.signature),
        receipt: String::from_utf8_lossy(&r.receipt).into_owned(),
    }
}

/// The database failed (down, locked, timed out), not the request.
fn infrastructure(e: &billing::Error) -> bool {
    matches!(e, billing::Error::Database(_) | billing::Error::Migrate(_))
}

impl LedgerMeter {
    pub fn new(ledger: Ledger, hold_ttl: Duration) -> Self {
        Self {
            ledger,
            hold_ttl,
            outbox: None,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps captures the ledger cannot take in the outbox file `path` (see the module doc).
    pub fn with_outbox(mut self, path: std::path::PathBuf) -> Self {
        self.outbox = Some(CaptureOutbox { path, file: Mutex::new(()) });
        self
    }

    /// Captures waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.read().len())
    }

    /// The capture, and whether a failure is the database's (worth deferring to the outbox)
    /// rather than the request's (an unknown hold, a wrong account: retrying cannot help).
    async fn capture_now(&self, job_id: Uuid, worker: &str, coefficient: u32, usage: &Usage, receipt: Option<&SignedReceipt>) -> Result<i64, (MeterError, bool)> {
        let worker_id = worker;
        let worker = self.account(AccountKind::Worker, worker).await.map_err(|e| (e, true))?;
        // The receipt is written in the capture's transaction (before the charge), so a
        // charge whose receipt could not be kept is retried whole, and both cost one commit.
        let receipt = receipt.map(|r| stored(job_id, r));
        let outcome = self
            .ledger
            .capture_with_receipt(job_id, worker, billing::Usage::from(usage), coefficient, receipt.as_ref())
            .await
            .map_err(|e| {
                let infra = infrastructure(&e);
                (unavailable(e), infra)
            })?;
        if let Some(r) = outcome.receipt().filter(|r| r.shortfall > 0) {
            // The hold is the most the request could cost: a worker that reports more is
            // charged at most the hold, and the excess is its fault, flagged here.
            metrics::counter!("cocoon_gateway_capture_shortfall_total", "worker" => worker_id.to_string()).increment(1);
            tracing::error!(%job_id, worker = worker_id, cost = r.cost, billed = r.billed.charge, shortfall = r.shortfall,
                "the worker's usage costs more than the request's hold: charged the hold, the rest written off");
        }
        Ok(outcome.receipt().map_or(0, |r| r.billed.charge))
    }

    /// Tries every capture in the outbox once; returns how many are still waiting.
    pub async fn drain_outbox(&self) -> usize {
        let Some(outbox) = &self.outbox else { return 0 };
        let pending = outbox.read();
        if pending.is_empty() {
            return 0;
        }
        let mut landed = std::collections::HashSet::new();
        for p in &pending {
            let Ok(worker) = self.account(AccountKind::Worker, &p.worker).await else { continue };
            if let Some(r) = p.receipt.as_deref().and_then(|h| SignedReceipt::from_header(h).ok()) {
                if let Err(e) = self.ledger.record_receipt(&stored(p.job_id, &r)).await {
                    if infrastructure(&e) {
                        continue;
                    }
                    tracing::warn!(job_id = %p.job_id, error = %e, "could not keep the receipt of a deferred capture");
                }
            }
            match self.ledger.capture(p.job_id, worker, billing::Usage::from(&p.usage), p.coefficient).await {
                Ok(billing::CaptureOutcome::AlreadyReleased(_)) => {
                    // The gateway released the hold (it saw the request fail) before the
                    // capture landed: nothing to charge. A reaped hold is captured late instead.
                    metrics::counter!("cocoon_billing_outbox_captures_total", "outcome" => "hold_released").increment(1);
                    tracing::error!(job_id = %p.job_id, worker = %p.worker, "outbox capture found its hold released by the gateway: not charged");
                    landed.insert(p.job_id);
                }
                Ok(_) => {
                    metrics::counter!("cocoon_billing_outbox_captures_total", "outcome" => "captured").increment(1);
                    tracing::info!(job_id = %p.job_id, "deferred capture landed");
                    landed.insert(p.job_id);
                }
                Err(e) if infrastructure(&e) => {}
                Err(e) => {
                    metrics::counter!("cocoon_billing_outbox_captures_total", "outcome" => "failed").increment(1);
                    tracing::error!(job_id = %p.job_id, error = %e, "outbox capture refused by the ledger; dropped from the outbox");
                    landed.insert(p.job_id);
                }
            }
        }
        match outbox.remove(&landed) {
            Ok(left) => left,
            Err(e) => {
                tracing::error!(error = %e, "could not rewrite the capture outbox; its captures will be retried (they are idempotent)");
                pending.len()
            }
        }
    }

    /// Drains the outbox every `every` (and once at start, for what a previous run left).
    pub fn spawn_outbox(self: &Arc<Self>, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let left = this.drain_outbox().await;
                metrics::gauge!("cocoon_billing_outbox_pending").set(left as f64);
            }
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    async fn account(&self, kind: AccountKind, name: &str) -> Result<AccountId, MeterError> {
        let key = (kind, name.to_string());
        if let Some(id) = self.accounts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*id);
        }
        let id = self.ledger.ensure_account(kind, name).await.map_err(unavailable)?;
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).insert(key, id);
        Ok(id)
    }

    /// Like [`Self::account`] but never creates one: reads of an account the ledger has not
    /// seen must not write.
    async fn existing_account(&self, kind: AccountKind, name: &str) -> Result<Option<AccountId>, MeterError> {
        let key = (kind, name.to_string());
        if let Some(id) = self.accounts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Some(*id));
        }
        let Some(acct) = self.ledger.find_account(kind, name).await.map_err(unavailable)? else {
            return Ok(None);
        };
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).insert(key, acct.id);
        Ok(Some(acct.id))
    }

    /// Releases expired holds (their process died or never settled) every `every`.
    pub fn spawn_reaper(self: &Arc<Self>, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                match this.ledger.reap_expired(SystemTime::now()).await {
                    Ok(reaped) if !reaped.is_empty() => {
                        tracing::warn!(count = reaped.len(), "released expired holds");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reaper failed"),
                }
            }
        })
    }
}

#[async_trait]
impl Meter for LedgerMeter {
    async fn prices(&self) -> Result<Vec<(String, protocol::openai::ModelPricing)>, MeterError> {
        let all = self.ledger.prices().await.map_err(unavailable)?;
        Ok(all
            .into_iter()
            .map(|m| {
                let p = m.price;
                (m.model, protocol::openai::ModelPricing { prompt: p.prompt, cached_prompt: p.cached_prompt, completion: p.completion, reasoning: p.reasoning })
            })
            .collect())
    }

    async fn hold(&self, req: &HoldRequest) -> Result<(), MeterError> {
        let worst = billing::Usage {
            prompt_tokens: req.prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: req.completion_tokens,
            reasoning_tokens: 0,
        };
        // Priced by the ledger inside the hold, from the price row the hold fixes: no read of
        // the price before it, and no window for the price to change between the two.
        let amount = billing::HoldAmount::WorstCase { usage: worst, coefficient: req.max_coefficient };
        let client = self.account(AccountKind::Client, &req.account).await?;
        match self.ledger.hold_amount(req.job_id, client, &req.model, amount, self.hold_ttl, req.budget.as_ref()).await {
            Err(billing::Error::UnknownModel(model)) => Err(MeterError::Unpriced(model)),
            Ok(_) => Ok(()),
            Err(billing::Error::InsufficientFunds { available, needed }) => {
                Err(MeterError::InsufficientFunds { available, needed })
            }
            Err(billing::Error::BudgetExceeded { period, budget, committed, needed, resets_at_ms }) => {
                let now_ms = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX);
                let resets_at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(resets_at_ms)
                    .map_or_else(|| format!("{resets_at_ms} ms"), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                let resets_in_secs = u64::try_from(resets_at_ms.saturating_sub(now_ms).div_euclid(1000)).unwrap_or(0).max(1);
                Err(MeterError::BudgetExceeded { period, budget, committed, needed, resets_at, resets_in_secs })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn capture(&self, job_id: Uuid, worker: &str, coefficient: u32, usage: &Usage, receipt: Option<&SignedReceipt>) -> Result<i64, MeterError> {
        match self.capture_now(job_id, worker, coefficient, usage, receipt).await {
            Ok(charge) => Ok(charge),
            Err((e, false)) => Err(e),
            Err((e, true)) => {
                let Some(outbox) = &self.outbox else { return Err(e) };
                let why = e.to_string();
                let p = PendingCapture { job_id, worker: worker.to_string(), coefficient, usage: *usage, receipt: receipt.map(SignedReceipt::to_header) };
                outbox.append(&p).map_err(|e| MeterError::Unavailable(format!("{why}; and the capture outbox failed too: {e}")))?;
                metrics::counter!("cocoon_billing_outbox_captures_total", "outcome" => "deferred").increment(1);
                tracing::warn!(%job_id, error = %why, "the ledger could not take the capture: kept in the outbox, retried until it lands");
                Err(MeterError::CaptureDeferred(why))
            }
        }
    }

    async fn release(&self, job_id: Uuid) -> Result<(), MeterError> {
        self.ledger.release(job_id).await.map(|_| ()).map_err(unavailable)
    }

    async fn balance(&self, account: &str) -> Result<AccountBalance, MeterError> {
        let Some(id) = self.existing_account(AccountKind::Client, account).await? else {
            return Ok(AccountBalance::default());
        };
        let b = self.ledger.balance(id).await.map_err(unavailable)?;
        Ok(AccountBalance { total: b.total, held: b.held, available: b.available })
    }

    async fn usage(&self, account: &str, limit: u32) -> Result<Vec<UsageRecord>, MeterError> {
        let Some(id) = self.existing_account(AccountKind::Client, account).await? else {
            return Ok(Vec::new());
        };
        let rows = self.ledger.usage(id, limit).await.map_err(unavailable)?;
        let jobs: Vec<Uuid> = rows.iter().map(|r| r.job_id).collect();
        let mut receipts = self.ledger.receipts(&jobs).await.map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| UsageRecord {
                receipt: receipts.remove(&r.job_id).and_then(header_form),
                job_id: r.job_id,
                model: r.model,
                prompt_tokens: r.usage.prompt_tokens,
                cached_prompt_tokens: r.usage.cached_prompt_tokens,
                completion_tokens: r.usage.completion_tokens,
                reasoning_tokens: r.usage.reasoning_tokens,
                coefficient: r.coefficient,
                cost: r.cost,
                charge: r.billed.charge,
                at_ms: r.at_ms,
            })
            .collect())
    }

    async fn worker_earnings(&self, worker: &str) -> Result<WorkerEarnings, MeterError> {
        let Some(id) = self.existing_account(AccountKind::Worker, worker).await? else {
            return Ok(WorkerEarnings::default());
        };
        let e = self.ledger.worker_earnings(id).await.map_err(unavailable)?;
        let address = self.ledger.payout_address(id).await.map_err(unavailable)?;
        let payouts = self
            .ledger
            .payouts_for_worker(id, EARNINGS_PAYOUTS)
            .await
            .map_err(unavailable)?;
        Ok(WorkerEarnings {
            balance: e.balance,
            earned: e.earned,
            jobs: e.jobs,
            payout_address: address.map(|a| a.address),
            payouts: payouts
                .into_iter()
                .map(|p| PayoutRecord {
                    id: p.id,
                    amount: p.amount,
                    status: match p.status {
                        billing::PayoutStatus::Pending => PayoutStatus::Pending,
                        billing::PayoutStatus::Sending => PayoutStatus::Sending,
                        billing::PayoutStatus::Sent => PayoutStatus::Sent,
                        billing::PayoutStatus::Confirmed => PayoutStatus::Confirmed,
                        billing::PayoutStatus::Cancelled => PayoutStatus::Cancelled,
                    },
                    address: p.address,
                    tx_hash: p.tx_hash,
                    created_at_ms: p.created_at_ms,
                    sent_at_ms: p.sent_at_ms,
                    confirmed_at_ms: p.confirmed_at_ms,
                })
                .collect(),
        })
    }
}

/// One capture waiting in the outbox.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PendingCapture {
    job_id: Uuid,
    worker: String,
    coefficient: u32,
    usage: Usage,
    /// The worker's receipt in its header form.
    #[serde(default)]
    receipt: Option<String>,
}

/// The outbox file; the mutex serialises appends against the rewrite after a drain.
struct CaptureOutbox {
    path: std::path::PathBuf,
    file: Mutex<()>,
}

impl CaptureOutbox {
    /// Appends one capture and syncs it to disk before returning.
    fn append(&self, p: &PendingCapture) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut line = serde_json::to_vec(p).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Every readable entry; a torn last line (a crash mid-append) is skipped.
    fn read(&self) -> Vec<PendingCapture> {
        let _g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(text) = std::fs::read_to_string(&self.path) else { return Vec::new() };
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Rewrites the file without the entries for `done` (write, sync, rename); returns how
    /// many are left. Entries appended meanwhile are kept: the file is re-read under the lock.
    fn remove(&self, done: &std::collections::HashSet<Uuid>) -> std::io::Result<usize> {
        use std::io::Write as _;
        let _g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let left: Vec<&str> = text
            .lines()
            .filter(|l| serde_json::from_str::<PendingCapture>(l).is_ok_and(|p| !done.contains(&p.job_id)))
            .collect();
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for l in &left {
            f.write_all(l.as_bytes())?;
            f.write_all(b"\n")?;
        }
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(left.len())
    }
}

/// A stored receipt back in the header form clients got it in.
fn header_form(r: billing::StoredReceipt) -> Option<String> {
    let signer = attestation::receipt::IdentityPublicKey(hex::decode(&r.signer).ok()?.try_into().ok()?);
    let signed = SignedReceipt { receipt: r.receipt.into_bytes(), signature: hex::decode(&r.signature).ok()?, signer };
    Some(signed.to_header())
}
