//! Payouts: worker payout addresses and the payout outbox. Carrying payouts to the chain
//! is `batches`'.
//!
//! [`Ledger::create_payouts`] turns each worker balance at or above a threshold into a
//! `pending` payout and debits it from the worker (to the clearing account) in the same
//! database transaction. The sender then moves payouts through batches:
//!
//! ```text
//! pending --prepare_payout_batch--> sending --mark_payout_batch_sent--> sent
//!    ^                                 |                                  |
//!    |                                 +------ settle_payout_batch -------+
//!    |                                 |   Landed: delivered -> confirmed (tx hash)
//!    +---------------------------------+   others, Expired, Superseded -> pending
//! pending --cancel_payout--> cancelled (money back to the worker)
//! ```

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{get_flag, limit_of, truncate_chars};
use crate::error::{Error, Result};
use crate::ledger::{now_ms, Ledger};
use crate::types::{AccountId, AccountKind, UnixMillis};

/// Whether `s` is a raw TON address as the `ton` crate writes it: workchain 0 or -1, a
/// colon, 64 lowercase hex digits, not all zero (the zero address is nobody's wallet).
pub fn is_raw_address(s: &str) -> bool {
    let Some((wc, hash)) = s.split_once(':') else {
        return false;
    };
    matches!(wc, "0" | "-1")
        && hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hash.bytes().any(|b| b != b'0')
}

/// A worker's payout address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutAddress {
    /// Raw form `wc:hex`.
    pub address: String,
    /// Whether the owner gave a bounceable form. Messages to a destination that is not
    /// deployed go non-bounceable whatever this says.
    pub bounceable: bool,
    pub updated_at_ms: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    /// In the outbox, in no open batch.
    Pending,
    /// In a batch whose message was signed and saved but is not known to be broadcast.
    Sending,
    /// In a batch whose message was broadcast; not seen on chain yet.
    Sent,
    /// Its transfer is on chain (`tx_hash`).
    Confirmed,
    /// Cancelled before it was sent; the amount went back to the worker.
    Cancelled,
}

impl PayoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutStatus::Pending => "pending",
            PayoutStatus::Sending => "sending",
            PayoutStatus::Sent => "sent",
            PayoutStatus::Confirmed => "confirmed",
            PayoutStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => PayoutStatus::Pending,
            "sending" => PayoutStatus::Sending,
            "sent" => PayoutStatus::Sent,
            "confirmed" => PayoutStatus::Confirmed,
            "cancelled" => PayoutStatus::Cancelled,
            other => return Err(Error::Corrupt(format!("payout status {other:?}"))),
        })
    }
}

/// One payout of the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub id: i64,
    pub worker: AccountId,
    /// The worker account's external id.
    pub worker_name: String,
    /// Destination, raw form.
    pub address: String,
    pub bounceable: bool,
    pub amount: i64,
    pub status: PayoutStatus,
    /// The batch it is in (sending, sent) or landed with (confirmed).
    pub batch_id: Option<i64>,
    /// That batch's wallet seqno.
    pub seqno: Option<u32>,
    /// Hash of the wallet transaction that sent it (confirmed).
    pub tx_hash: Option<String>,
    /// The ledger transaction that debited the worker.
    pub transaction: i64,
    pub created_at_ms: UnixMillis,
    pub sent_at_ms: Option<UnixMillis>,
    pub confirmed_at_ms: Option<UnixMillis>,
}

/// Which payouts [`Ledger::list_payouts`] returns, newest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct PayoutFilter {
    pub status: Option<PayoutStatus>,
    pub worker: Option<AccountId>,
    pub before_id: Option<i64>,
    /// At most this many (0 = 100).
    pub limit: u32,
}

const PAYOUT_COLUMNS: &str = "p.id, p.account_id, a.external_id, p.address, p.bounceable, \
     p.amount, p.status, p.batch_id, b.seqno, p.tx_hash, p.transaction_id, p.created_at, \
     p.sent_at, p.confirmed_at";
const PAYOUT_FROM: &str = "FROM payouts p JOIN accounts a ON a.id = p.account_id \
     LEFT JOIN payout_batches b ON b.id = p.batch_id";

fn payout_from_row(row: &AnyRow) -> Result<Payout> {
    let seqno = row
        .try_get::<Option<i64>, _>("seqno")?
        .map(|s| u32::try_from(s).map_err(|_| Error::Corrupt(format!("seqno = {s}"))))
        .transpose()?;
    Ok(Payout {
        id: row.try_get("id")?,
        worker: AccountId(row.try_get("account_id")?),
        worker_name: row.try_get("external_id")?,
        address: row.try_get("address")?,
        bounceable: get_flag(row, "bounceable")?,
        amount: row.try_get("amount")?,
        status: PayoutStatus::parse(row.try_get("status")?)?,
        batch_id: row.try_get("batch_id")?,
        seqno,
        tx_hash: row.try_get("tx_hash")?,
        transaction: row.try_get("transaction_id")?,
        created_at_ms: row.try_get("created_at")?,
        sent_at_ms: row.try_get("sent_at")?,
        confirmed_at_ms: row.try_get("confirmed_at")?,
    })
}

/// Locks (Postgres) and reads the clearing account's cached balance and the kind of
/// `account`, lowest id first like every other writer.
async fn lock_clearing_and(
    ledger: &Ledger,
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
) -> Result<(i64, AccountKind)> {
    let rows = sqlx::query(ledger.pick(
        "SELECT id, kind, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
        "SELECT id, kind, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id",
    ))
    .bind(account.0)
    .bind(ledger.clearing_account.0)
    .fetch_all(&mut **tx)
    .await?;
    let mut clearing = None;
    let mut kind = None;
    for row in &rows {
        let id = AccountId(row.try_get("id")?);
        if id == ledger.clearing_account {
            clearing = Some(row.try_get::<i64, _>("balance")?);
        } else {
            kind = Some(AccountKind::parse(row.try_get("kind")?)?);
        }
    }
    let clearing = clearing.ok_or_else(|| Error::Corrupt("clearing account missing".into()))?;
    let kind = kind.ok_or(Error::UnknownAccount(account))?;
    Ok((clearing, kind))
}

/// A ledger transaction moving `amount` from `from` to `to`, one of them the clearing
/// account, whose cached balance becomes `new_clearing`.
struct Movement<'a> {
    kind: &'a str,
    memo: &'a str,
    from: AccountId,
    to: AccountId,
    amount: i64,
    new_clearing: i64,
}

/// Writes `m`; returns the transaction id.
async fn write_transfer(
    ledger: &Ledger,
    tx: &mut Transaction<'static, Any>,
    m: Movement<'_>,
) -> Result<i64> {
    let Movement {
        kind,
        memo,
        from,
        to,
        amount,
        new_clearing,
    } = m;
    let tx_id: i64 = sqlx::query(
        "INSERT INTO transactions (kind, memo, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(kind)
    .bind(memo)
    .bind(now_ms())
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    sqlx::query(
        "INSERT INTO entries (transaction_id, account_id, amount) VALUES ($1, $2, $3), ($1, $4, $5)",
    )
    .bind(tx_id)
    .bind(from.0)
    .bind(-amount)
    .bind(to.0)
    .bind(amount)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
        .bind(new_clearing)
        .bind(ledger.clearing_account.0)
        .execute(&mut **tx)
        .await?;
    Ok(tx_id)
}

async fn worker_balance(tx: &mut Transaction<'static, Any>, worker: AccountId) -> Result<i64> {
    Ok(sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM entries WHERE account_id = $1",
    )
    .bind(worker.0)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?)
}

impl Ledger {
    // -----------------------------------------------------------------------------------
    // Payout addresses

    /// Sets worker `worker`'s payout address: raw form (`0:…` or `-1:…`, lowercase hex, as
    /// `ton::Address::to_raw` writes it), and whether the owner gave a bounceable form.
    /// Payouts already created keep the address they were created with.
    pub async fn set_payout_address(
        &self,
        worker: AccountId,
        address: &str,
        bounceable: bool,
    ) -> Result<()> {
        if !is_raw_address(address) {
            return Err(Error::InvalidInput(format!(
                "payout address {:?} is not a raw address (wc:64 lowercase hex)",
                truncate_chars(address, 80)
            )));
        }
        match self.account(worker).await? {
            None => return Err(Error::UnknownAccount(worker)),
            Some(a) if a.kind != AccountKind::Worker => {
                return Err(Error::WrongAccountKind {
                    id: worker,
                    actual: a.kind,
                    expected: AccountKind::Worker,
                })
            }
            Some(_) => {}
        }
        self.retrying("set_payout_address", || async {
            sqlx::query(
                "INSERT INTO payout_addresses (account_id, address, bounceable, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE SET \
                   address = excluded.address, bounceable = excluded.bounceable, \
                   updated_at = excluded.updated_at",
            )
            .bind(worker.0)
            .bind(address)
            .bind(i64::from(bounceable))
            .bind(now_ms())
            .execute(&self.write)
            .await?;
            Ok(())
        })
        .await
    }

    /// Worker `worker`'s payout address, if set.
    pub async fn payout_address(&self, worker: AccountId) -> Result<Option<PayoutAddress>> {
        sqlx::query(
            "SELECT address, bounceable, updated_at FROM payout_addresses WHERE account_id = $1",
        )
        .bind(worker.0)
        .fetch_optional(&self.read)
        .await?
        .map(|r| {
            Ok(PayoutAddress {
                address: r.try_get("address")?,
                bounceable: get_flag(&r, "bounceable")?,
                updated_at_ms: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    // -----------------------------------------------------------------------------------
    // Payout outbox

    /// Turns every worker balance of at least `threshold` nanoTON into a pending payout of
    /// the whole balance to the worker's payout address (workers without one are skipped),
    /// debiting the worker in the same database transaction. Returns the new payouts.
    /// Safe to run at any time and concurrently: a worker's balance is re-read under its
    /// row lock, so it is never paid out twice.
    pub async fn create_payouts(&self, threshold: i64) -> Result<Vec<Payout>> {
        if threshold <= 0 {
            return Err(Error::InvalidAmount(threshold));
        }
        let candidates = sqlx::query(
            "SELECT a.id FROM accounts a JOIN payout_addresses p ON p.account_id = a.id \
             WHERE a.kind = 'worker' AND (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) \
               FROM entries e WHERE e.account_id = a.id) >= $1 ORDER BY a.id",
        )
        .bind(threshold)
        .fetch_all(&self.read)
        .await?;
        let mut created = Vec::new();
        for row in candidates {
            let worker = AccountId(row.try_get(0)?);
            if let Some(id) = self
                .retrying("create_payout", || {
                    self.create_payout_once(worker, threshold)
                })
                .await?
            {
                created.push(self.stored_payout(id).await?);
            }
        }
        Ok(created)
    }

    async fn create_payout_once(&self, worker: AccountId, threshold: i64) -> Result<Option<i64>> {
        let mut tx = self.begin().await?;
        let (clearing, kind) = lock_clearing_and(self, &mut tx, worker).await?;
        if kind != AccountKind::Worker {
            return Err(Error::WrongAccountKind {
                id: worker,
                actual: kind,
                expected: AccountKind::Worker,
            });
        }
        let balance = worker_balance(&mut tx, worker).await?;
        let address =
            sqlx::query("SELECT address, bounceable FROM payout_addresses WHERE account_id = $1")
                .bind(worker.0)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(address) = address.filter(|_| balance >= threshold) else {
            tx.rollback().await?;
            return Ok(None);
        };
        let new_clearing = clearing
            .checked_add(balance)
            .ok_or(Error::Overflow("clearing balance"))?;
        let dest: String = address.try_get("address")?;
        let bounceable: i64 = address.try_get("bounceable")?;
        let memo = format!("TON payout to {dest}");
        let tx_id = write_transfer(
            self,
            &mut tx,
            Movement {
                kind: "payout",
                memo: &memo,
                from: worker,
                to: self.clearing_account,
                amount: balance,
                new_clearing,
            },
        )
        .await?;
        let id: i64 = sqlx::query(
            "INSERT INTO payouts (account_id, address, bounceable, amount, status, transaction_id, \
               created_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6) RETURNING id",
        )
        .bind(worker.0)
        .bind(&dest)
        .bind(bounceable)
        .bind(balance)
        .bind(tx_id)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        tx.commit().await?;
        tracing::info!(payout = id, worker = %worker, amount = balance, "payout created");
        Ok(Some(id))
    }

    /// Cancels pending payout `id`: the amount goes back to the worker. Payouts in a batch
    /// cannot be cancelled (their message may still land); cancelling a cancelled payout
    /// changes nothing.
    pub async fn cancel_payout(&self, id: i64) -> Result<Payout> {
        self.retrying("cancel_payout", || self.cancel_payout_once(id))
            .await?;
        self.stored_payout(id).await
    }

    async fn cancel_payout_once(&self, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(self.pick(
            "SELECT account_id, amount, status FROM payouts WHERE id = $1 FOR UPDATE",
            "SELECT account_id, amount, status FROM payouts WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::InvalidInput(format!("no payout {id}")))?;
        let status = PayoutStatus::parse(row.try_get("status")?)?;
        match status {
            PayoutStatus::Pending => {}
            PayoutStatus::Cancelled => {
                tx.rollback().await?;
                return Ok(());
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "payout {id} is {}: only pending payouts can be cancelled",
                    other.as_str()
                )))
            }
        }
        let worker = AccountId(row.try_get("account_id")?);
        let amount: i64 = row.try_get("amount")?;
        let (clearing, _) = lock_clearing_and(self, &mut tx, worker).await?;
        let new_clearing = clearing
            .checked_sub(amount)
            .ok_or(Error::Overflow("clearing balance"))?;
        let tx_id = write_transfer(
            self,
            &mut tx,
            Movement {
                kind: "payout_reversal",
                memo: &format!("cancelled payout {id}"),
                from: self.clearing_account,
                to: worker,
                amount,
                new_clearing,
            },
        )
        .await?;
        sqlx::query("UPDATE payouts SET status = 'cancelled', reversal_id = $2 WHERE id = $1")
            .bind(id)
            .bind(tx_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(payout = id, worker = %worker, amount, "payout cancelled");
        Ok(())
    }

    async fn stored_payout(&self, id: i64) -> Result<Payout> {
        self.payout_on(&self.write, id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("payout {id} vanished")))
    }

    async fn payout_on(&self, pool: &sqlx::AnyPool, id: i64) -> Result<Option<Payout>> {
        sqlx::query(&format!(
            "SELECT {PAYOUT_COLUMNS} {PAYOUT_FROM} WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| payout_from_row(&r))
        .transpose()
    }

    /// Payout `id`, if any.
    pub async fn payout(&self, id: i64) -> Result<Option<Payout>> {
        self.payout_on(&self.read, id).await
    }

    /// Pending payouts, oldest first, at most `limit` (0 = 100).
    pub async fn pending_payouts(&self, limit: u32) -> Result<Vec<Payout>> {
        sqlx::query(&format!(
            "SELECT {PAYOUT_COLUMNS} {PAYOUT_FROM} WHERE p.status = 'pending' ORDER BY p.id LIMIT $1"
        ))
        .bind(limit_of(limit))
        .fetch_all(&self.write)
        .await?
        .iter()
        .map(payout_from_row)
        .collect()
    }

    /// Payouts, newest first (`cocoon payouts list`).
    pub async fn list_payouts(&self, filter: PayoutFilter) -> Result<Vec<Payout>> {
        sqlx::query(&format!(
            "SELECT {PAYOUT_COLUMNS} {PAYOUT_FROM} \
             WHERE ($1 = '' OR p.status = $1) AND ($2 = 0 OR p.account_id = $2) AND p.id < $3 \
             ORDER BY p.id DESC LIMIT $4"
        ))
        .bind(filter.status.map(PayoutStatus::as_str).unwrap_or(""))
        .bind(filter.worker.map(|a| a.0).unwrap_or(0))
        .bind(filter.before_id.unwrap_or(i64::MAX))
        .bind(limit_of(filter.limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(payout_from_row)
        .collect()
    }

    /// Worker `worker`'s payouts, newest first, at most `limit` (0 = 100): the worker's
    /// earnings endpoint.
    pub async fn payouts_for_worker(&self, worker: AccountId, limit: u32) -> Result<Vec<Payout>> {
        self.list_payouts(PayoutFilter {
            worker: Some(worker),
            limit,
            ..PayoutFilter::default()
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses() {
        let h = "ab".repeat(32);
        assert!(is_raw_address(&format!("0:{h}")));
        assert!(is_raw_address(&format!("-1:{h}")));
        assert!(!is_raw_address(&format!("1:{h}")));
        assert!(!is_raw_address(&format!("0:{}", h.to_uppercase())));
        assert!(!is_raw_address(&format!("0:{}", &h[2..])));
        assert!(!is_raw_address("EQ..."));
        assert!(!is_raw_address(&format!("0:{}", "0".repeat(64))));
    }
}
