//! Payout batches: the signed wallet messages that carry payouts, from prepared to settled.
//!
//! The ledger does not speak the wallet protocol. The `ton` crate's payout sender builds
//! and signs the message (the seqno read from the wallet, `valid_until` from the chain's
//! time) and hands over its BOC, hash, seqno, `valid_until` and the wallet's last lt in a
//! [`NewBatch`]: the ledger only stores them. Later the sender reads the chain and decides
//! what became of the message; the ledger only records that verdict ([`BatchResult`]:
//! landed, expired, superseded) and moves the batch's payouts accordingly. Nothing here
//! compares seqnos or holds `valid_until` against a clock. The one wallet fact kept here is
//! [`MAX_BATCH_PAYOUTS`], a bound on a batch's size.
//!
//! What the ledger does enforce: a batch row is written *before* the message is sent, and
//! at most one batch per wallet is open, so after a crash the sender finds it and settles it
//! from what the chain shows instead of sending anything new.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use super::{get_flag, get_u32, get_u64, lt_i64};
use crate::error::{Error, Result};
use crate::ledger::{now_ms, Ledger};
use crate::types::UnixMillis;

/// Most payouts in one batch: the wallet v5r1 action list holds at most 255 actions.
pub const MAX_BATCH_PAYOUTS: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Signed and saved; maybe broadcast (a crash may have come between).
    Prepared,
    /// Broadcast at least once.
    Sent,
    /// Landed on chain.
    Confirmed,
    /// Its `valid_until` passed on chain with the seqno unused: it can never land.
    Expired,
    /// Its seqno was used by another message: it can never land.
    Superseded,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Prepared => "prepared",
            BatchStatus::Sent => "sent",
            BatchStatus::Confirmed => "confirmed",
            BatchStatus::Expired => "expired",
            BatchStatus::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "prepared" => BatchStatus::Prepared,
            "sent" => BatchStatus::Sent,
            "confirmed" => BatchStatus::Confirmed,
            "expired" => BatchStatus::Expired,
            "superseded" => BatchStatus::Superseded,
            other => return Err(Error::Corrupt(format!("batch status {other:?}"))),
        })
    }

    /// Prepared or sent: may still land.
    pub fn is_open(self) -> bool {
        matches!(self, BatchStatus::Prepared | BatchStatus::Sent)
    }
}

/// A payout in a batch, with the bounce flag its message used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    pub payout_id: i64,
    pub bounce: bool,
}

/// One signed wallet message carrying payouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutBatch {
    pub id: i64,
    /// The service wallet, raw form.
    pub wallet: String,
    pub seqno: u32,
    /// Unix seconds after which the wallet refuses the message.
    pub valid_until: u32,
    /// The wallet's last transaction lt before the message was built.
    pub prev_lt: u64,
    /// The signed external message, base64 BOC.
    pub boc: String,
    /// Its cell hash, hex.
    pub msg_hash: String,
    pub status: BatchStatus,
    /// The wallet transaction that executed it (confirmed).
    pub tx_hash: Option<String>,
    pub tx_lt: Option<u64>,
    pub created_at_ms: UnixMillis,
    /// Last broadcast.
    pub sent_at_ms: Option<UnixMillis>,
    pub closed_at_ms: Option<UnixMillis>,
    pub items: Vec<BatchItem>,
}

/// What [`Ledger::prepare_payout_batch`] records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBatch {
    pub wallet: String,
    pub seqno: u32,
    pub valid_until: u32,
    pub prev_lt: u64,
    pub boc: String,
    pub msg_hash: String,
    pub items: Vec<BatchItem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Recorded; its payouts are `sending`. Broadcast it now.
    Prepared(PayoutBatch),
    /// The wallet already has an open batch (this one): settle it first. Nothing written.
    Busy(PayoutBatch),
    /// A payout is no longer pending (cancelled, or taken by another sender). Nothing
    /// written; pick payouts again.
    Stale,
}

/// What the chain shows about an open batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchResult {
    /// The message landed in wallet transaction `tx_hash`/`tx_lt`; `delivered` are the
    /// payouts whose transfer is among its outgoing messages. The others (an action that
    /// failed) can no longer be sent by this message and go back to pending.
    Landed {
        tx_hash: String,
        tx_lt: u64,
        delivered: Vec<i64>,
    },
    /// `valid_until` has passed on chain and the seqno is unused.
    Expired,
    /// Another message used the seqno.
    Superseded,
}

const BATCH_COLUMNS: &str = "id, wallet, seqno, valid_until, prev_lt, boc, msg_hash, status, \
     tx_hash, tx_lt, created_at, sent_at, closed_at";

fn batch_from_row(row: &AnyRow, items: Vec<BatchItem>) -> Result<PayoutBatch> {
    Ok(PayoutBatch {
        id: row.try_get("id")?,
        wallet: row.try_get("wallet")?,
        seqno: get_u32(row, "seqno")?,
        valid_until: get_u32(row, "valid_until")?,
        prev_lt: get_u64(row, "prev_lt")?,
        boc: row.try_get("boc")?,
        msg_hash: row.try_get("msg_hash")?,
        status: BatchStatus::parse(row.try_get("status")?)?,
        tx_hash: row.try_get("tx_hash")?,
        tx_lt: row
            .try_get::<Option<i64>, _>("tx_lt")?
            .map(|v| u64::try_from(v).map_err(|_| Error::Corrupt(format!("tx_lt = {v}"))))
            .transpose()?,
        created_at_ms: row.try_get("created_at")?,
        sent_at_ms: row.try_get("sent_at")?,
        closed_at_ms: row.try_get("closed_at")?,
        items,
    })
}

async fn batch_items(
    conn: impl sqlx::Executor<'_, Database = Any>,
    batch: i64,
) -> Result<Vec<BatchItem>> {
    sqlx::query(
        "SELECT payout_id, bounce FROM payout_batch_items WHERE batch_id = $1 ORDER BY payout_id",
    )
    .bind(batch)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(BatchItem {
            payout_id: r.try_get("payout_id")?,
            bounce: get_flag(r, "bounce")?,
        })
    })
    .collect()
}

impl Ledger {
    /// Records a signed batch message before it is sent: the batch row and its items, and
    /// its payouts become `sending`. Refused (nothing written) while `wallet` has another
    /// open batch ([`PrepareOutcome::Busy`]) or when a payout is no longer pending
    /// ([`PrepareOutcome::Stale`]).
    pub async fn prepare_payout_batch(&self, batch: &NewBatch) -> Result<PrepareOutcome> {
        if batch.items.is_empty() || batch.items.len() > MAX_BATCH_PAYOUTS {
            return Err(Error::InvalidInput(format!(
                "a batch carries 1..={MAX_BATCH_PAYOUTS} payouts, not {}",
                batch.items.len()
            )));
        }
        let mut ids: Vec<i64> = batch.items.iter().map(|i| i.payout_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != batch.items.len() {
            return Err(Error::InvalidInput(
                "a payout appears twice in the batch".into(),
            ));
        }
        let outcome = self
            .retrying("prepare_payout_batch", || self.prepare_once(batch, &ids))
            .await;
        match outcome {
            // Another sender inserted an open batch between our check and insert.
            Err(Error::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                match self.open_payout_batch(&batch.wallet).await? {
                    Some(open) => Ok(PrepareOutcome::Busy(open)),
                    None => Err(Error::Database(sqlx::Error::Database(e))),
                }
            }
            other => other,
        }
    }

    async fn prepare_once(&self, batch: &NewBatch, ids: &[i64]) -> Result<PrepareOutcome> {
        let mut tx = self.begin().await?;
        let open = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM payout_batches WHERE wallet = $1 \
             AND status IN ('prepared', 'sent')"
        ))
        .bind(&batch.wallet)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = open {
            let id: i64 = row.try_get("id")?;
            let items = batch_items(&mut *tx, id).await?;
            let open = batch_from_row(&row, items)?;
            tx.rollback().await?;
            return Ok(PrepareOutcome::Busy(open));
        }
        // Lock the payouts (Postgres) and check that every one is still pending.
        let mut pending = 0usize;
        for id in ids {
            let status: Option<String> = sqlx::query(self.pick(
                "SELECT status FROM payouts WHERE id = $1 FOR UPDATE",
                "SELECT status FROM payouts WHERE id = $1",
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            pending += usize::from(status.as_deref() == Some("pending"));
        }
        if pending != ids.len() {
            tx.rollback().await?;
            return Ok(PrepareOutcome::Stale);
        }
        let now = now_ms();
        let batch_id: i64 = sqlx::query(
            "INSERT INTO payout_batches (wallet, seqno, valid_until, prev_lt, boc, msg_hash, status, \
               created_at) VALUES ($1, $2, $3, $4, $5, $6, 'prepared', $7) RETURNING id",
        )
        .bind(&batch.wallet)
        .bind(i64::from(batch.seqno))
        .bind(i64::from(batch.valid_until))
        .bind(lt_i64(batch.prev_lt)?)
        .bind(&batch.boc)
        .bind(&batch.msg_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        for item in &batch.items {
            sqlx::query(
                "INSERT INTO payout_batch_items (batch_id, payout_id, bounce) VALUES ($1, $2, $3)",
            )
            .bind(batch_id)
            .bind(item.payout_id)
            .bind(i64::from(item.bounce))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE payouts SET status = 'sending', batch_id = $2 WHERE id = $1")
                .bind(item.payout_id)
                .bind(batch_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let stored = self
            .payout_batch(batch_id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("batch {batch_id} vanished")))?;
        Ok(PrepareOutcome::Prepared(stored))
    }

    /// Batch `id` with its items, if any.
    pub async fn payout_batch(&self, id: i64) -> Result<Option<PayoutBatch>> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM payout_batches WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.write)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let items = batch_items(&self.write, id).await?;
                Ok(Some(batch_from_row(&row, items)?))
            }
        }
    }

    /// The open (prepared or sent) batch of `wallet`, if any: what a sender must settle
    /// before it may build a new one.
    pub async fn open_payout_batch(&self, wallet: &str) -> Result<Option<PayoutBatch>> {
        let id = sqlx::query(
            "SELECT id FROM payout_batches WHERE wallet = $1 AND status IN ('prepared', 'sent')",
        )
        .bind(wallet)
        .fetch_optional(&self.write)
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?;
        match id {
            Some(id) => self.payout_batch(id).await,
            None => Ok(None),
        }
    }

    /// Notes that batch `id` was broadcast (again): `sent`, its payouts `sent`. A closed
    /// batch is left as it is.
    pub async fn mark_payout_batch_sent(&self, id: i64) -> Result<PayoutBatch> {
        self.retrying("mark_payout_batch_sent", || async {
            let mut tx = self.begin().await?;
            let now = now_ms();
            let done = sqlx::query(
                "UPDATE payout_batches SET status = 'sent', sent_at = $2 \
                 WHERE id = $1 AND status IN ('prepared', 'sent')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                sqlx::query(
                    "UPDATE payouts SET status = 'sent', sent_at = $2 \
                     WHERE batch_id = $1 AND status IN ('sending', 'sent')",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
        self.payout_batch(id)
            .await?
            .ok_or_else(|| Error::InvalidInput(format!("no payout batch {id}")))
    }

    /// Closes open batch `id` with what the chain shows (see [`BatchResult`]): delivered
    /// payouts become `confirmed` with the transaction hash, every other payout of the
    /// batch goes back to `pending` for a new batch. Settling a closed batch changes
    /// nothing and returns it as it is.
    pub async fn settle_payout_batch(&self, id: i64, result: &BatchResult) -> Result<PayoutBatch> {
        self.retrying("settle_payout_batch", || self.settle_once(id, result))
            .await?;
        self.payout_batch(id)
            .await?
            .ok_or_else(|| Error::InvalidInput(format!("no payout batch {id}")))
    }

    async fn settle_once(&self, id: i64, result: &BatchResult) -> Result<()> {
        let mut tx = self.begin().await?;
        let status: String = sqlx::query(self.pick(
            "SELECT status FROM payout_batches WHERE id = $1 FOR UPDATE",
            "SELECT status FROM payout_batches WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::InvalidInput(format!("no payout batch {id}")))?
        .try_get(0)?;
        if !BatchStatus::parse(&status)?.is_open() {
            tx.rollback().await?;
            return Ok(());
        }
        let items = batch_items(&mut *tx, id).await?;
        let now = now_ms();
        let (new_status, delivered, tx_hash, tx_lt): (
            BatchStatus,
            &[i64],
            Option<&str>,
            Option<i64>,
        ) = match result {
            BatchResult::Landed {
                tx_hash,
                tx_lt,
                delivered,
            } => (
                BatchStatus::Confirmed,
                delivered.as_slice(),
                Some(tx_hash.as_str()),
                Some(lt_i64(*tx_lt)?),
            ),
            BatchResult::Expired => (BatchStatus::Expired, &[], None, None),
            BatchResult::Superseded => (BatchStatus::Superseded, &[], None, None),
        };
        if let Some(stray) = delivered
            .iter()
            .find(|d| !items.iter().any(|i| i.payout_id == **d))
        {
            return Err(Error::InvalidInput(format!(
                "payout {stray} is not in batch {id}"
            )));
        }
        sqlx::query(
            "UPDATE payout_batches SET status = $2, tx_hash = $3, tx_lt = $4, closed_at = $5 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(new_status.as_str())
        .bind(tx_hash)
        .bind(tx_lt)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for item in &items {
            if delivered.contains(&item.payout_id) {
                sqlx::query(
                    "UPDATE payouts SET status = 'confirmed', tx_hash = $2, confirmed_at = $3 \
                     WHERE id = $1 AND batch_id = $4",
                )
                .bind(item.payout_id)
                .bind(tx_hash)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE payouts SET status = 'pending', batch_id = NULL, sent_at = NULL \
                     WHERE id = $1 AND batch_id = $2",
                )
                .bind(item.payout_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        tracing::info!(
            batch = id,
            status = new_status.as_str(),
            delivered = delivered.len(),
            of = items.len(),
            "payout batch settled"
        );
        Ok(())
    }
}
