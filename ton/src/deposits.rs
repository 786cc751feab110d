//! The deposit watcher: pages through the service wallet's transactions by lt from a
//! persisted cursor, and hands every confirmed incoming transfer to
//! [`billing::Ledger::record_deposit`], which credits it once by `(tx hash, lt)` or
//! records why not.
//!
//! # Exactly once
//! The cursor moves only past transactions already recorded, at the end of each page, and
//! never backwards. A crash anywhere (mid-page, between a credit and the cursor write)
//! makes the next poll see some transactions again; the ledger answers `Duplicate` for
//! them. Transactions are keyed by their hash in one spelling (hex) whatever encoding the
//! API uses, so a re-read cannot look new.
//!
//! # Confirmations
//! A transaction is processed only once its masterchain block is followed by
//! `confirmations` more; the first unconfirmed transaction stops the poll (the cursor
//! stays before it), so nothing is credited from a block that could still change and
//! nothing later is processed ahead of it.

use std::future::Future;
use std::time::Duration;

use billing::{DepositInput, DepositOutcome, Ledger, RejectReason, Rejection};

use crate::address::Address;
use crate::api::{normalize_hash, Sort, TonApi, Transaction, TxQuery};
use crate::cell::{decode_comment_boc, CommentError, MAX_COMMENT_BYTES};
use crate::config::DepositConfig;
use crate::error::{Error, Result};

const TX_ENDPOINT: &str = "/api/v3/transactions";

/// What one transaction turned into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// Not an incoming transfer (an external message such as our own payout batch, or no
    /// inbound message): nothing to record.
    Ignore(&'static str),
    /// An incoming transfer for the ledger to decide on.
    Transfer(DepositInput),
}

/// Decides what `tx` is, without touching the ledger. `wallet` is the watched address.
pub fn classify(tx: &Transaction, wallet: &Address) -> Result<Classified> {
    let (hash, lt) = identity(tx)?;
    let Some(msg) = &tx.in_msg else {
        return Ok(Classified::Ignore("no inbound message"));
    };
    let (source_addr, source_text) = match msg.source.as_deref() {
        None | Some("") => return Ok(Classified::Ignore("external inbound message")),
        Some(s) => (Address::from_api(s), s),
    };
    if let Some(dest) = msg.destination.as_deref() {
        if Address::from_api(dest).as_ref() != Some(wallet) {
            return Ok(Classified::Ignore("inbound message to another address"));
        }
    }
    if source_addr.as_ref() == Some(wallet) {
        // The wallet's own message to itself (the zero-value self-transfer that deploys
        // it): not a client's deposit.
        return Ok(Classified::Ignore("message from the watched wallet itself"));
    }
    let source = source_addr
        .map(|a| a.to_raw())
        .unwrap_or_else(|| source_text.chars().take(80).collect());
    let reject = |reason: RejectReason, detail: String| Some(Rejection { reason, detail });
    let desc = tx.description.clone().unwrap_or_default();
    // The first deposits of a new network land on the undeployed service wallet: the
    // node marks such a transaction aborted (compute skipped, no_state), yet a
    // non-bounceable message's value stays on the account and is credited. A bounceable
    // one bounces back, and is rejected like any transfer whose value did not stay.
    let (comment, rejection) = if msg.bounced == Some(true) {
        (
            None,
            reject(RejectReason::Bounced, "bounced message".into()),
        )
    } else if let Err(why) = desc.value_kept(msg.bounce) {
        (None, reject(RejectReason::Failed, why))
    } else {
        let content = msg.message_content.as_ref();
        let decoded = match content.and_then(|c| c.body.as_deref()) {
            Some(body) => decode_comment_boc(body),
            // No body given: the API's own decoding, if it has one.
            None => Ok(content
                .and_then(|c| c.decoded.as_ref())
                .and_then(|d| d.get("comment"))
                .and_then(|c| c.as_str())
                .map(str::to_owned)),
        };
        match decoded {
            Ok(Some(text)) => (Some(text), None),
            Ok(None) => (None, reject(RejectReason::NotAComment, "empty body".into())),
            Err(CommentError::NotAComment(op)) => (
                None,
                reject(
                    RejectReason::NotAComment,
                    format!("not a text comment (op {op})"),
                ),
            ),
            Err(CommentError::BadUtf8) => (
                None,
                reject(
                    RejectReason::BadComment,
                    "comment is not valid UTF-8".into(),
                ),
            ),
            Err(CommentError::Malformed(e)) => (
                None,
                reject(RejectReason::BadComment, format!("malformed body: {e}")),
            ),
            Err(CommentError::TooLong { prefix }) => (
                (!prefix.is_empty()).then_some(prefix),
                reject(
                    RejectReason::CommentTooLong,
                    format!("comment longer than {MAX_COMMENT_BYTES} bytes"),
                ),
            ),
        }
    };
    Ok(Classified::Transfer(DepositInput {
        tx_hash: hash,
        lt,
        source: Some(source),
        value: msg.value.clone().unwrap_or_default(),
        comment,
        utime: tx.now.unwrap_or(0),
        rejection,
    }))
}

/// A transaction's `(hash as hex, lt)`; an error if the API left either out.
fn identity(tx: &Transaction) -> Result<(String, u64)> {
    let hash = tx
        .hash
        .as_deref()
        .and_then(normalize_hash)
        .ok_or_else(|| Error::BadResponse {
            endpoint: TX_ENDPOINT,
            detail: format!("transaction without a valid hash (lt {:?})", tx.lt),
        })?;
    let lt = tx.lt.ok_or_else(|| Error::BadResponse {
        endpoint: TX_ENDPOINT,
        detail: format!("transaction {hash} without lt"),
    })?;
    if i64::try_from(lt).is_err() {
        return Err(Error::BadResponse {
            endpoint: TX_ENDPOINT,
            detail: format!("transaction {hash}: lt {lt} out of range"),
        });
    }
    Ok((hash, lt))
}

/// Counts of one poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    pub pages: u32,
    pub credited: u32,
    pub duplicates: u32,
    pub rejected: u32,
    pub ignored: u32,
    /// Seen but not yet confirmed: left for a later poll.
    pub unconfirmed: u32,
    /// The cursor after the poll.
    pub cursor: Option<u64>,
}

/// Watches one address for deposits.
#[derive(Clone, Debug)]
pub struct DepositWatcher {
    api: TonApi,
    ledger: Ledger,
    wallet: Address,
    config: DepositConfig,
}

impl DepositWatcher {
    /// Watches `wallet` (normally the service wallet's address).
    pub fn new(api: TonApi, ledger: Ledger, wallet: Address, config: DepositConfig) -> Self {
        DepositWatcher {
            api,
            ledger,
            wallet,
            config,
        }
    }

    pub fn wallet(&self) -> Address {
        self.wallet
    }

    /// Records one transaction (idempotent): what a poll does for each confirmed one.
    pub async fn process(&self, tx: &Transaction) -> Result<Option<DepositOutcome>> {
        match classify(tx, &self.wallet)? {
            Classified::Ignore(why) => {
                tracing::debug!(lt = ?tx.lt, why, "transaction ignored");
                Ok(None)
            }
            Classified::Transfer(input) => Ok(Some(self.ledger.record_deposit(&input).await?)),
        }
    }

    /// Reads every page available after the cursor and records its confirmed
    /// transactions, moving the cursor after each page.
    pub async fn poll_once(&self) -> Result<PollReport> {
        let mut report = PollReport::default();
        let last_mc = if self.config.confirmations > 0 {
            self.api.masterchain_info().await?.seqno
        } else {
            None
        };
        let mut start_lt = match self.ledger.ton_cursor(&self.config.cursor).await? {
            Some(c) => c.lt.saturating_add(1),
            None => self.config.start_lt,
        };
        report.cursor = start_lt.checked_sub(1);
        let account = self.wallet.to_raw();
        loop {
            let mut page = self
                .api
                .transactions(
                    &account,
                    TxQuery {
                        start_lt: Some(start_lt),
                        end_lt: None,
                        limit: self.config.page_size,
                        offset: 0,
                        sort: Sort::Asc,
                    },
                )
                .await?;
            report.pages += 1;
            let full = page.len() >= self.config.page_size as usize;
            // Check every identity before acting on any: a page the API mangled is
            // retried whole rather than half applied.
            let mut keyed = Vec::with_capacity(page.len());
            for tx in page.drain(..) {
                let (hash, lt) = identity(&tx)?;
                keyed.push((lt, hash, tx));
            }
            // The API promised ascending lt; do not rely on it.
            keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            keyed.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            let mut last: Option<(u64, String)> = None;
            let mut stopped = false;
            for (i, (lt, hash, tx)) in keyed.iter().enumerate() {
                if !self.confirmed(tx, last_mc) {
                    report.unconfirmed += u32::try_from(keyed.len() - i).unwrap_or(u32::MAX);
                    stopped = true;
                    break;
                }
                match self.process(tx).await? {
                    None => report.ignored += 1,
                    Some(DepositOutcome::Credited(_)) => report.credited += 1,
                    Some(DepositOutcome::Duplicate(_)) => report.duplicates += 1,
                    Some(DepositOutcome::Rejected(_)) => report.rejected += 1,
                }
                last = Some((*lt, hash.clone()));
            }
            let mut advanced = false;
            if let Some((lt, hash)) = last {
                if lt >= start_lt {
                    self.ledger
                        .advance_ton_cursor(&self.config.cursor, lt, &hash)
                        .await?;
                    report.cursor = Some(lt);
                    start_lt = lt.saturating_add(1);
                    advanced = true;
                }
            }
            // A full page that does not move the cursor (only transactions below it)
            // would be asked for again forever.
            if stopped || !full || !advanced {
                break;
            }
        }
        Ok(report)
    }

    fn confirmed(&self, tx: &Transaction, last_mc: Option<u64>) -> bool {
        if self.config.confirmations == 0 {
            return true;
        }
        match (tx.mc_block_seqno, last_mc) {
            (Some(block), Some(last)) => {
                last.saturating_sub(block) >= u64::from(self.config.confirmations)
            }
            _ => false,
        }
    }

    /// Starts a poll every `poll_interval_secs` (counted from the previous poll's start,
    /// so a poll slowed by the API's rate limit does not push the next one back) until
    /// `shutdown` completes; errors are logged and retried with a growing delay (at most
    /// 5 minutes). A 429 is not an error here: the API client retries it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let every = Duration::from_secs(self.config.poll_interval_secs.max(1));
        let mut delay = every;
        tokio::pin!(shutdown);
        loop {
            let started = tokio::time::Instant::now();
            match self.poll_once().await {
                Ok(r) => {
                    if r.credited + r.rejected > 0 {
                        tracing::info!(credited = r.credited, rejected = r.rejected, duplicates = r.duplicates, cursor = ?r.cursor, "deposits polled");
                    }
                    delay = every;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deposit poll failed; retrying");
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(started + delay) => {}
            }
        }
    }
}
