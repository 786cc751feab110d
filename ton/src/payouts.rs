//! The payout sender: turns worker balances over the threshold into payouts, sends them
//! in batches — one wallet external message per batch, signed for the wallet's current
//! seqno with a `valid_until` — and confirms each batch on chain.
//!
//! # Never twice
//! A batch (its signed BOC, seqno, `valid_until` and the wallet's last lt) is saved in the
//! ledger *before* it is broadcast, and a wallet has at most one open batch. Every round
//! starts from the chain, not from memory:
//!
//! - wallet seqno > batch seqno: the seqno was used. The wallet's transactions after the
//!   saved lt, up to the wallet's current last lt, are searched for our message hash.
//!   Found: the payouts whose transfer is among its outgoing messages are confirmed with
//!   the transaction hash (the others — an action that failed — go back to pending: this
//!   message can never send them again). Not found although the index has reached the
//!   wallet's last lt: another message used the seqno, ours can never land (superseded),
//!   all go back to pending. The index not there yet: wait.
//! - wallet seqno = batch seqno: the message has not landed. While the chain's time (the
//!   last masterchain block's) is before `valid_until` + grace, the *same* BOC is
//!   broadcast again (the same seqno can be used once, so copies cannot pay twice). Once
//!   the chain's time is past it and the seqno is still unused (read again after the time),
//!   the message can never land: the batch is expired and its payouts are rebuilt into a
//!   new message with the then current seqno.
//! - anything else (seqno below the batch's, a found transaction whose outgoing messages
//!   disagree with the batch): nothing is decided; the batch stays open and blocks new
//!   batches until someone looks.
//!
//! So a crash after sending and before confirming resumes by looking at the chain and
//! never signs a second message for money that may already have left.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use billing::{
    BatchItem, BatchResult, BatchStatus, Ledger, NewBatch, Payout, PayoutBatch, PrepareOutcome,
};

use crate::address::Address;
use crate::api::{normalize_hash, Message, Sort, TonApi, Transaction, TxQuery, WalletInformation};
use crate::cell::decode_comment_boc;
use crate::config::PayoutConfig;
use crate::error::{Error, Result};
use crate::wallet::{ServiceWallet, Transfer};

const COMMENT_PREFIX: &str = "cocoon payout ";
/// Transactions read per page while searching for a batch.
const SEARCH_PAGE: u32 = 256;
/// Pages read at most while searching for a batch in one round.
const SEARCH_PAGES: usize = 200;

/// The comment of payout `id`'s transfer, so its owner can match it.
pub fn payout_comment(id: i64) -> String {
    format!("{COMMENT_PREFIX}{id}")
}

/// The payout id of a transfer comment written by [`payout_comment`].
pub fn parse_payout_comment(comment: &str) -> Option<i64> {
    comment.strip_prefix(COMMENT_PREFIX)?.parse().ok()
}

/// What a round did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No open batch and nothing pending.
    Idle,
    /// A new batch was saved and broadcast.
    Sent {
        batch: i64,
        seqno: u32,
        payouts: usize,
    },
    /// A saved batch could not be broadcast (it stays open and is retried).
    SendFailed { batch: i64, error: String },
    /// The open batch is not on chain yet and was broadcast again.
    Resent { batch: i64 },
    /// The open batch is not on chain yet and was broadcast recently.
    Waiting { batch: i64 },
    /// The open batch was closed.
    Settled {
        batch: i64,
        status: BatchStatus,
        delivered: usize,
    },
    /// What the chain shows does not settle the batch yet (index lag) or does not add up;
    /// nothing was decided.
    Inconclusive { batch: i64, why: String },
    /// Pending payouts wait for the wallet to hold enough.
    Underfunded { needed: i64, balance: i64 },
    /// Payouts changed while a batch was built (another sender); try again.
    Stale,
}

/// One round: payouts created from balances, and the step taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundReport {
    pub created: usize,
    pub step: Step,
}

/// Sends payouts from the service wallet.
#[derive(Clone, Debug)]
pub struct PayoutSender {
    api: TonApi,
    ledger: Ledger,
    wallet: ServiceWallet,
    wallet_raw: String,
    config: PayoutConfig,
}

fn chain_seqno(info: &WalletInformation) -> Result<u32> {
    match info.seqno {
        Some(s) => u32::try_from(s).map_err(|_| Error::BadResponse {
            endpoint: "/api/v3/walletInformation",
            detail: format!("seqno {s}"),
        }),
        // A wallet that is not deployed has no seqno yet: its first message uses 0.
        None if info.status.as_deref() != Some("active") => Ok(0),
        None => Err(Error::BadResponse {
            endpoint: "/api/v3/walletInformation",
            detail: "active wallet without seqno".into(),
        }),
    }
}

fn message_comment(m: &Message) -> Option<String> {
    let content = m.message_content.as_ref()?;
    match content.body.as_deref() {
        Some(body) => decode_comment_boc(body).ok().flatten(),
        None => content
            .decoded
            .as_ref()?
            .get("comment")?
            .as_str()
            .map(str::to_owned),
    }
}

impl PayoutSender {
    pub fn new(api: TonApi, ledger: Ledger, wallet: ServiceWallet, config: PayoutConfig) -> Self {
        let wallet_raw = wallet.address().to_raw();
        PayoutSender {
            api,
            ledger,
            wallet,
            wallet_raw,
            config,
        }
    }

    pub fn wallet(&self) -> &ServiceWallet {
        &self.wallet
    }

    /// One round: create payouts from balances, then advance the open batch or start one.
    pub async fn run_once(&self) -> Result<RoundReport> {
        let created = self
            .ledger
            .create_payouts(self.config.threshold_nanoton)
            .await?
            .len();
        let step = match self.ledger.open_payout_batch(&self.wallet_raw).await? {
            Some(batch) => self.advance(&batch).await?,
            None => self.start_batch().await?,
        };
        match &step {
            Step::Idle | Step::Waiting { .. } => {
                tracing::debug!(created, ?step, "payout round")
            }
            Step::Inconclusive { .. } | Step::SendFailed { .. } | Step::Underfunded { .. } => {
                tracing::warn!(created, ?step, "payout round")
            }
            _ => tracing::info!(created, ?step, "payout round"),
        }
        Ok(RoundReport { created, step })
    }

    /// Rounds every `poll_interval_secs` (sooner while a batch is moving) until
    /// `shutdown` completes; errors are logged and retried with a growing delay.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let every = Duration::from_secs(self.config.poll_interval_secs.max(1));
        let mut delay = every;
        tokio::pin!(shutdown);
        loop {
            match self.run_once().await {
                Ok(r) => {
                    delay = match r.step {
                        Step::Sent { .. } | Step::Settled { .. } | Step::Resent { .. } => {
                            every.min(Duration::from_secs(3))
                        }
                        _ => every,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "payout round failed; retrying");
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Builds, saves and broadcasts a batch of pending payouts.
    async fn start_batch(&self) -> Result<Step> {
        let max = self
            .config
            .max_batch
            .clamp(1, self.wallet.kind().max_transfers());
        let pending = self
            .ledger
            .pending_payouts(u32::try_from(max).unwrap_or(u32::MAX))
            .await?;
        if pending.is_empty() {
            return Ok(Step::Idle);
        }
        let info = self.api.wallet_information(&self.wallet_raw).await?;
        let balance: i64 = info
            .balance
            .as_deref()
            .and_then(|b| b.parse::<u128>().ok())
            .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
        // Oldest first, as many as the balance covers with the fee reserve.
        let mut chosen: Vec<&Payout> = Vec::new();
        let mut total: i64 = 0;
        for p in &pending {
            let with = total
                .checked_add(p.amount)
                .and_then(|t| t.checked_add(self.config.fee_reserve_nanoton));
            match with {
                Some(t) if t <= balance => {
                    total = t;
                    chosen.push(p);
                }
                _ => {}
            }
        }
        if chosen.is_empty() {
            let needed = pending[0]
                .amount
                .saturating_add(self.config.fee_reserve_nanoton);
            return Ok(Step::Underfunded { needed, balance });
        }
        let seqno = chain_seqno(&info)?;
        let deployed = info.status.as_deref() == Some("active");
        let prev_lt = info.last_transaction_lt.unwrap_or(0);

        // Bounce only to deployed destinations whose owner gave a bounceable form: a
        // bounceable transfer to an undeployed wallet would come straight back.
        let mut dests: Vec<String> = chosen.iter().map(|p| p.address.clone()).collect();
        dests.sort();
        dests.dedup();
        let mut active: HashMap<Address, bool> = HashMap::new();
        for state in self.api.account_states(&dests).await? {
            let (Some(addr), Some(status)) = (state.address.as_deref(), state.status.as_deref())
            else {
                continue;
            };
            if let Some(a) = Address::from_api(addr) {
                active.insert(a, status == "active");
            }
        }
        let mut transfers = Vec::with_capacity(chosen.len());
        let mut items = Vec::with_capacity(chosen.len());
        for p in &chosen {
            let to = Address::from_raw(&p.address)?;
            let bounce = p.bounceable && active.get(&to).copied().unwrap_or(false);
            transfers.push(Transfer {
                to,
                amount: p.amount,
                bounce,
                comment: payout_comment(p.id),
            });
            items.push(BatchItem {
                payout_id: p.id,
                bounce,
            });
        }
        let chain_now = self.chain_time().await?;
        let ttl = u32::try_from(self.config.message_ttl_secs).unwrap_or(u32::MAX);
        let valid_until = chain_now.saturating_add(ttl);
        let signed = self
            .wallet
            .sign_transfers(&transfers, seqno, valid_until, !deployed)?;
        let batch = NewBatch {
            wallet: self.wallet_raw.clone(),
            seqno,
            valid_until,
            prev_lt,
            boc: signed.boc,
            msg_hash: signed.hash,
            items,
        };
        match self.ledger.prepare_payout_batch(&batch).await? {
            PrepareOutcome::Prepared(b) => Ok(match self.broadcast(&b).await {
                Ok(()) => Step::Sent {
                    batch: b.id,
                    seqno,
                    payouts: b.items.len(),
                },
                Err(e) => Step::SendFailed {
                    batch: b.id,
                    error: e.to_string(),
                },
            }),
            PrepareOutcome::Busy(open) => self.advance(&open).await,
            PrepareOutcome::Stale => Ok(Step::Stale),
        }
    }

    async fn chain_time(&self) -> Result<u32> {
        let last = self.api.masterchain_info().await?;
        let t = last.gen_utime.unwrap_or(0);
        u32::try_from(t).map_err(|_| Error::BadResponse {
            endpoint: "/api/v3/masterchainInfo",
            detail: format!("gen_utime {t}"),
        })
    }

    /// Broadcasts the saved BOC and notes it.
    async fn broadcast(&self, b: &PayoutBatch) -> Result<()> {
        self.api.send_boc(&b.boc).await?;
        self.ledger.mark_payout_batch_sent(b.id).await?;
        Ok(())
    }

    /// Moves the open batch on from what the chain shows (see the module docs).
    async fn advance(&self, b: &PayoutBatch) -> Result<Step> {
        let info = self.api.wallet_information(&self.wallet_raw).await?;
        let seqno = chain_seqno(&info)?;
        if seqno > b.seqno {
            return self.find_landing(b, &info).await;
        }
        if seqno < b.seqno {
            tracing::error!(
                batch = b.id,
                seqno,
                batch_seqno = b.seqno,
                "wallet seqno is below the open batch's: wrong wallet or API?"
            );
            return Ok(Step::Inconclusive {
                batch: b.id,
                why: format!("wallet seqno {seqno} is below the batch's {}", b.seqno),
            });
        }
        let chain_now = self.chain_time().await?;
        let grace = u32::try_from(self.config.expiry_grace_secs).unwrap_or(u32::MAX);
        if chain_now > b.valid_until.saturating_add(grace) {
            // The chain is past valid_until: re-read the seqno (after that time) to be
            // sure the message did not land in between.
            let again = self.api.wallet_information(&self.wallet_raw).await?;
            if chain_seqno(&again)? != b.seqno {
                return Ok(Step::Inconclusive {
                    batch: b.id,
                    why: "the seqno moved while the batch expired".into(),
                });
            }
            let closed = self
                .ledger
                .settle_payout_batch(b.id, &BatchResult::Expired)
                .await?;
            return Ok(Step::Settled {
                batch: b.id,
                status: closed.status,
                delivered: 0,
            });
        }
        let resend_after = i64::try_from(self.config.resend_after_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let due = match (b.status, b.sent_at_ms) {
            (BatchStatus::Prepared, _) | (_, None) => true,
            (_, Some(at)) => now_ms().saturating_sub(at) >= resend_after,
        };
        if !due {
            return Ok(Step::Waiting { batch: b.id });
        }
        Ok(match self.broadcast(b).await {
            Ok(()) => Step::Resent { batch: b.id },
            Err(e) => Step::SendFailed {
                batch: b.id,
                error: e.to_string(),
            },
        })
    }

    /// The seqno is used: find our message among the wallet's transactions since the
    /// batch was built.
    async fn find_landing(&self, b: &PayoutBatch, info: &WalletInformation) -> Result<Step> {
        let inconclusive = |why: String| Ok(Step::Inconclusive { batch: b.id, why });
        let Some(last_lt) = info.last_transaction_lt else {
            return inconclusive("wallet information without last_transaction_lt".into());
        };
        if last_lt <= b.prev_lt {
            return inconclusive("the seqno moved but no newer transaction is indexed".into());
        }
        let mut start = b.prev_lt.saturating_add(1);
        let mut reached = false;
        let mut found: Option<Transaction> = None;
        for _ in 0..SEARCH_PAGES {
            let page = self
                .api
                .transactions(
                    &self.wallet_raw,
                    TxQuery {
                        start_lt: Some(start),
                        end_lt: Some(last_lt),
                        limit: SEARCH_PAGE,
                        offset: 0,
                        sort: Sort::Asc,
                    },
                )
                .await?;
            let mut max_lt = None;
            for tx in &page {
                let Some(lt) = tx.lt else { continue };
                max_lt = max_lt.max(Some(lt));
                if lt >= last_lt {
                    reached = true;
                }
                let Some(msg) = &tx.in_msg else { continue };
                let external = msg.source.as_deref().is_none_or(str::is_empty);
                let ours = [&msg.hash, &msg.hash_norm]
                    .into_iter()
                    .flatten()
                    .any(|h| normalize_hash(h).as_deref() == Some(b.msg_hash.as_str()));
                if external && ours {
                    found = Some(tx.clone());
                }
            }
            match max_lt {
                Some(m) if found.is_none() && !reached && page.len() >= SEARCH_PAGE as usize => {
                    start = m.saturating_add(1);
                }
                _ => break,
            }
        }
        match found {
            Some(tx) => self.settle_landed(b, &tx).await,
            None if reached => {
                tracing::warn!(
                    batch = b.id,
                    seqno = b.seqno,
                    "another message used the batch's seqno; its payouts go into a new batch"
                );
                let closed = self
                    .ledger
                    .settle_payout_batch(b.id, &BatchResult::Superseded)
                    .await?;
                Ok(Step::Settled {
                    batch: b.id,
                    status: closed.status,
                    delivered: 0,
                })
            }
            None => inconclusive(format!("the index has not reached lt {last_lt} yet")),
        }
    }

    /// Confirms the payouts whose transfers `tx` sent.
    async fn settle_landed(&self, b: &PayoutBatch, tx: &Transaction) -> Result<Step> {
        let inconclusive = |why: String| {
            tracing::error!(batch = b.id, why, "landed batch does not add up; left open");
            Ok(Step::Inconclusive { batch: b.id, why })
        };
        let (Some(tx_hash), Some(tx_lt)) = (tx.hash.as_deref().and_then(normalize_hash), tx.lt)
        else {
            return inconclusive("landing transaction without hash or lt".into());
        };
        let mut payouts = HashMap::new();
        for item in &b.items {
            if let Some(p) = self.ledger.payout(item.payout_id).await? {
                payouts.insert(p.id, p);
            }
        }
        let mut delivered = Vec::new();
        for m in &tx.out_msgs {
            let Some(id) = message_comment(m).as_deref().and_then(parse_payout_comment) else {
                continue;
            };
            let Some(p) = payouts.get(&id) else {
                return inconclusive(format!(
                    "outgoing transfer for payout {id}, not in the batch"
                ));
            };
            let dest = m.destination.as_deref().and_then(Address::from_api);
            let value = m.value.as_deref().and_then(|v| v.parse::<i64>().ok());
            if dest.map(|d| d.to_raw()).as_deref() != Some(p.address.as_str())
                || value != Some(p.amount)
                || delivered.contains(&id)
            {
                return inconclusive(format!(
                    "outgoing transfer for payout {id} differs from it ({:?}, {:?})",
                    m.destination, m.value
                ));
            }
            delivered.push(id);
        }
        if delivered.len() != b.items.len() {
            // Some actions failed. Believe it only if the action phase counts the same
            // number of messages as the API lists.
            let created = tx
                .description
                .as_ref()
                .and_then(|d| d.action.as_ref())
                .and_then(|a| a.msgs_created);
            if created != Some(tx.out_msgs.len() as u64) {
                return inconclusive(format!(
                    "{} of {} transfers listed, action phase says {created:?} messages",
                    delivered.len(),
                    b.items.len()
                ));
            }
            tracing::warn!(
                batch = b.id,
                delivered = delivered.len(),
                of = b.items.len(),
                "some transfers of a landed batch failed; they go into a new batch"
            );
        }
        let n = delivered.len();
        let closed = self
            .ledger
            .settle_payout_batch(
                b.id,
                &BatchResult::Landed {
                    tx_hash,
                    tx_lt,
                    delivered,
                },
            )
            .await?;
        Ok(Step::Settled {
            batch: b.id,
            status: closed.status,
            delivered: n,
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments() {
        assert_eq!(payout_comment(42), "cocoon payout 42");
        assert_eq!(parse_payout_comment("cocoon payout 42"), Some(42));
        assert_eq!(parse_payout_comment("cocoon payout x"), None);
        assert_eq!(parse_payout_comment("payout 42"), None);
    }
}
