//! The consistency check of the TON tables: [`Ledger::check_ton`] reads payouts, their
//! batches and credited deposits against the books and lists each broken invariant as a
//! [`TonViolation`]. The check of the books themselves is `ledger::check`.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::error::Result;
use crate::ledger::Ledger;
use crate::types::AccountId;

/// A broken invariant of the TON tables, found by [`Ledger::check_ton`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum TonViolation {
    /// A payout whose ledger transaction (or reversal) is not exactly worker −amount,
    /// clearing +amount (or the opposite).
    PayoutEntriesMismatch { payout: i64, detail: String },
    /// A worker whose entries sum below zero (paid out more than it earned).
    NegativeWorkerBalance { account: AccountId, balance: i64 },
    /// A payout whose status disagrees with its batch's.
    PayoutBatchMismatch { payout: i64, detail: String },
    /// A credited deposit whose ledger transaction does not credit its account its amount.
    DepositEntriesMismatch { deposit: i64, detail: String },
}

impl std::fmt::Display for TonViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TonViolation::PayoutEntriesMismatch { payout, detail } => {
                write!(f, "payout {payout}: {detail}")
            }
            TonViolation::NegativeWorkerBalance { account, balance } => {
                write!(f, "worker account {account}: balance {balance} < 0")
            }
            TonViolation::PayoutBatchMismatch { payout, detail } => {
                write!(f, "payout {payout}: {detail}")
            }
            TonViolation::DepositEntriesMismatch { deposit, detail } => {
                write!(f, "deposit {deposit}: {detail}")
            }
        }
    }
}

impl Ledger {
    /// Verifies the TON tables against the books (empty = healthy); complements
    /// [`Ledger::check`]:
    /// - each payout's transaction moves exactly its amount from the worker to the
    ///   clearing account, and a cancelled payout's reversal moves it back;
    /// - no worker balance is below zero;
    /// - sending/sent payouts are in an open batch, confirmed ones in a confirmed batch;
    /// - each credited deposit's transaction credits its account exactly its amount.
    pub async fn check_ton(&self) -> Result<Vec<TonViolation>> {
        let mut found = Vec::new();
        let amount_in = "(SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                         WHERE e.transaction_id = {tx} AND e.account_id = {acc})";
        let q = format!(
            "SELECT p.id, p.amount, {w} AS w, {c} AS c, \
               (SELECT COUNT(*) FROM entries e WHERE e.transaction_id = p.transaction_id) AS n, \
               (SELECT t.kind FROM transactions t WHERE t.id = p.transaction_id) AS kind, \
               COALESCE({rw}, 0) AS rw, COALESCE({rc}, 0) AS rc, p.status, p.reversal_id \
             FROM payouts p ORDER BY p.id",
            w = amount_in
                .replace("{tx}", "p.transaction_id")
                .replace("{acc}", "p.account_id"),
            c = amount_in
                .replace("{tx}", "p.transaction_id")
                .replace("{acc}", "$1"),
            rw = amount_in
                .replace("{tx}", "p.reversal_id")
                .replace("{acc}", "p.account_id"),
            rc = amount_in
                .replace("{tx}", "p.reversal_id")
                .replace("{acc}", "$1"),
        );
        for row in sqlx::query(&q)
            .bind(self.clearing_account.0)
            .fetch_all(&self.read)
            .await?
        {
            let id: i64 = row.try_get("id")?;
            let amount: i64 = row.try_get("amount")?;
            let (w, c, n): (i64, i64, i64) =
                (row.try_get("w")?, row.try_get("c")?, row.try_get("n")?);
            let kind: Option<String> = row.try_get("kind")?;
            if w != -amount || c != amount || n != 2 || kind.as_deref() != Some("payout") {
                found.push(TonViolation::PayoutEntriesMismatch {
                    payout: id,
                    detail: format!(
                        "amount {amount}: {kind:?} transaction with {n} entries, worker {w}, clearing {c}"
                    ),
                });
            }
            let cancelled = row.try_get::<String, _>("status")? == "cancelled";
            let (rw, rc): (i64, i64) = (row.try_get("rw")?, row.try_get("rc")?);
            let expected = if cancelled { (amount, -amount) } else { (0, 0) };
            if (rw, rc) != expected {
                found.push(TonViolation::PayoutEntriesMismatch {
                    payout: id,
                    detail: format!(
                        "reversal moves worker {rw}, clearing {rc}; expected {expected:?}"
                    ),
                });
            }
        }
        for row in sqlx::query(
            "SELECT a.id, CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) AS s FROM accounts a \
             JOIN entries e ON e.account_id = a.id WHERE a.kind = 'worker' \
             GROUP BY a.id HAVING SUM(e.amount) < 0 ORDER BY a.id",
        )
        .fetch_all(&self.read)
        .await?
        {
            found.push(TonViolation::NegativeWorkerBalance {
                account: AccountId(row.try_get("id")?),
                balance: row.try_get("s")?,
            });
        }
        for row in sqlx::query(
            "SELECT p.id, p.status, b.status AS batch_status FROM payouts p \
             LEFT JOIN payout_batches b ON b.id = p.batch_id \
             WHERE (p.status IN ('sending', 'sent') AND (b.status IS NULL OR b.status NOT IN ('prepared', 'sent'))) \
                OR (p.status = 'confirmed' AND (b.status IS NULL OR b.status <> 'confirmed')) \
                OR (p.status IN ('pending', 'cancelled') AND p.batch_id IS NOT NULL) \
             ORDER BY p.id",
        )
        .fetch_all(&self.read)
        .await?
        {
            let status: String = row.try_get("status")?;
            let batch: Option<String> = row.try_get("batch_status")?;
            found.push(TonViolation::PayoutBatchMismatch {
                payout: row.try_get("id")?,
                detail: format!("payout {status}, batch {batch:?}"),
            });
        }
        let q = format!(
            "SELECT d.id, d.amount, {got} AS got FROM ton_deposits d \
             WHERE d.status = 'credited' AND {got} <> d.amount ORDER BY d.id",
            got = amount_in
                .replace("{tx}", "d.transaction_id")
                .replace("{acc}", "d.account_id"),
        );
        for row in sqlx::query(&q).fetch_all(&self.read).await? {
            let amount: Option<i64> = row.try_get("amount")?;
            let got: i64 = row.try_get("got")?;
            found.push(TonViolation::DepositEntriesMismatch {
                deposit: row.try_get("id")?,
                detail: format!("amount {amount:?}, credited {got}"),
            });
        }
        Ok(found)
    }
}
