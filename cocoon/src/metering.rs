//! The gateway's [`Meter`] over the [`billing::Ledger`]: prices the worst case for holds,
//! maps accounts by name, and reaps expired holds in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
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
    /// Account ids by (kind, name): accounts are never deleted, so the cache never goes stale.
    accounts: Mutex<HashMap<(AccountKind, String), AccountId>>,
}

fn unavailable(e: billing::Error) -> MeterError {
    MeterError::Unavailable(e.to_string())
}

impl LedgerMeter {
    pub fn new(ledger: Ledger, hold_ttl: Duration) -> Self {
        Self {
            ledger,
            hold_ttl,
            accounts: Mutex::new(HashMap::new()),
        }
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
    async fn hold(&self, req: &HoldRequest) -> Result<(), MeterError> {
        let price = self
            .ledger
            .price(&req.model)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| MeterError::Unpriced(req.model.clone()))?;
        let worst = billing::Usage {
            prompt_tokens: req.prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: req.completion_tokens,
            reasoning_tokens: 0,
        };
        let amount = billing::cost(price, worst, req.max_coefficient, self.ledger.fee_bps())
            .map_err(unavailable)?
            .charge
            // A free model still gets a (1 nanoTON) hold, so every request has one record.
            .max(1);
        let client = self.account(AccountKind::Client, &req.account).await?;
        match self.ledger.hold(req.job_id, client, &req.model, amount, self.hold_ttl).await {
            Ok(_) => Ok(()),
            Err(billing::Error::InsufficientFunds { available, needed }) => {
                Err(MeterError::InsufficientFunds { available, needed })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn capture(&self, job_id: Uuid, worker: &str, coefficient: u32, usage: &Usage) -> Result<i64, MeterError> {
        let worker = self.account(AccountKind::Worker, worker).await?;
        let outcome = self
            .ledger
            .capture(job_id, worker, billing::Usage::from(usage), coefficient)
            .await
            .map_err(unavailable)?;
        Ok(outcome.receipt().map_or(0, |r| r.billed.charge))
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
        Ok(rows
            .into_iter()
            .map(|r| UsageRecord {
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
