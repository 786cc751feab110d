//! The invariant checker behind `cocoon ledger check` and every test.

use sqlx::Row;

use super::{Backend, Ledger};
use crate::error::Result;
use crate::types::{AccountId, AccountKind, Violation};

impl Ledger {
    /// Verifies every invariant of the books in one consistent snapshot and returns what is
    /// broken (empty = healthy):
    /// - every transaction's entries sum to zero;
    /// - no client balance is below zero;
    /// - every cached balance equals the sum of its entries (uncached kinds keep 0), every
    ///   cached `held` equals the sum of the account's active holds and does not exceed
    ///   the balance;
    /// - no hold is captured twice: a captured hold has exactly one charge row, any other
    ///   none; every capture transaction has its charge row;
    /// - no job is charged twice: at most one capture transaction per job;
    /// - each charge row agrees with its own split and with its entries;
    /// - the sum over all accounts is zero.
    pub async fn check(&self) -> Result<Vec<Violation>> {
        let mut tx = match self.backend {
            Backend::Postgres => {
                self.read
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
            // A WAL read transaction is a snapshot from its first read.
            Backend::Sqlite => self.read.begin().await?,
        };
        let mut found = Vec::new();

        for row in sqlx::query(
            "SELECT transaction_id, CAST(SUM(amount) AS BIGINT) AS s FROM entries \
             GROUP BY transaction_id HAVING SUM(amount) <> 0 ORDER BY transaction_id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            found.push(Violation::UnbalancedTransaction {
                transaction: row.try_get("transaction_id")?,
                sum: row.try_get("s")?,
            });
        }

        for row in sqlx::query(
            "SELECT a.id, a.kind, a.balance, a.held, COALESCE(e.s, 0) AS entries, \
               COALESCE(h.s, 0) AS holds \
             FROM accounts a \
             LEFT JOIN (SELECT account_id, CAST(SUM(amount) AS BIGINT) AS s FROM entries \
                        GROUP BY account_id) e ON e.account_id = a.id \
             LEFT JOIN (SELECT account_id, CAST(SUM(amount) AS BIGINT) AS s FROM holds \
                        WHERE status = 'active' GROUP BY account_id) h ON h.account_id = a.id \
             WHERE (a.kind = 'client' AND COALESCE(e.s, 0) < 0) \
                OR (a.kind IN ('client', 'clearing') AND a.balance <> COALESCE(e.s, 0)) \
                OR (a.kind NOT IN ('client', 'clearing') AND a.balance <> 0) \
                OR a.held <> COALESCE(h.s, 0) OR a.held < 0 \
                OR (a.held > 0 AND a.held > COALESCE(e.s, 0)) \
             ORDER BY a.id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let account = AccountId(row.try_get("id")?);
            let kind = AccountKind::parse(row.try_get("kind")?)?;
            let cached: i64 = row.try_get("balance")?;
            let held: i64 = row.try_get("held")?;
            let entries: i64 = row.try_get("entries")?;
            let holds: i64 = row.try_get("holds")?;
            if kind == AccountKind::Client && entries < 0 {
                found.push(Violation::NegativeClientBalance {
                    account,
                    balance: entries,
                });
            }
            let expected_cache = if kind.caches_balance() { entries } else { 0 };
            if cached != expected_cache {
                found.push(Violation::CachedBalanceMismatch {
                    account,
                    cached,
                    entries,
                });
            }
            if held != holds || held < 0 || (held > 0 && held > entries) {
                found.push(Violation::HeldMismatch {
                    account,
                    cached: held,
                    active_holds: holds,
                    balance: entries,
                });
            }
        }

        for row in sqlx::query(
            "SELECT h.job_id, h.status, COUNT(c.job_id) AS n FROM holds h \
             LEFT JOIN charges c ON c.job_id = h.job_id GROUP BY h.job_id, h.status \
             HAVING (h.status = 'captured' AND COUNT(c.job_id) <> 1) \
                 OR (h.status <> 'captured' AND COUNT(c.job_id) <> 0) \
             ORDER BY h.job_id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            found.push(Violation::HoldCaptureMismatch {
                job_id: row.try_get("job_id")?,
                status: row.try_get("status")?,
                charges: row.try_get("n")?,
            });
        }

        for row in sqlx::query(
            "SELECT job_id, COUNT(*) AS n FROM transactions WHERE kind = 'capture' \
             GROUP BY job_id HAVING COUNT(*) > 1 ORDER BY job_id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            found.push(Violation::JobChargedTwice {
                job_id: row
                    .try_get::<Option<String>, _>("job_id")?
                    .unwrap_or_default(),
                transactions: row.try_get("n")?,
            });
        }

        for row in sqlx::query(
            "SELECT t.id, t.job_id FROM transactions t \
             LEFT JOIN charges c ON c.transaction_id = t.id \
             WHERE t.kind = 'capture' AND c.job_id IS NULL ORDER BY t.id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let id: i64 = row.try_get("id")?;
            found.push(Violation::ChargeMismatch {
                job_id: row
                    .try_get::<Option<String>, _>("job_id")?
                    .unwrap_or_default(),
                detail: format!("capture transaction {id} has no charge row"),
            });
        }

        for row in sqlx::query(
            "SELECT * FROM ( \
               SELECT c.job_id, c.cost, c.charge, c.worker_amount, c.fee, c.shortfall, \
                 (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                  WHERE e.transaction_id = c.transaction_id AND e.account_id = c.client_id) AS client_amt, \
                 (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                  WHERE e.transaction_id = c.transaction_id AND e.account_id = c.worker_id) AS worker_amt, \
                 (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                  WHERE e.transaction_id = c.transaction_id AND e.account_id = $1) AS fee_amt \
               FROM charges c) x \
             WHERE charge <> worker_amount + fee OR cost <> charge + shortfall \
                OR charge < 0 OR worker_amount < 0 OR fee < 0 OR shortfall < 0 \
                OR client_amt <> -charge OR worker_amt <> worker_amount OR fee_amt <> fee \
             ORDER BY job_id",
        )
        .bind(self.fee_account.0)
        .fetch_all(&mut *tx)
        .await?
        {
            let get = |c: &str| row.try_get::<i64, _>(c);
            found.push(Violation::ChargeMismatch {
                job_id: row.try_get("job_id")?,
                detail: format!(
                    "cost {} = charge {} (worker {} + fee {}) + shortfall {}; entries: client {}, worker {}, fee {}",
                    get("cost")?,
                    get("charge")?,
                    get("worker_amount")?,
                    get("fee")?,
                    get("shortfall")?,
                    get("client_amt")?,
                    get("worker_amt")?,
                    get("fee_amt")?,
                ),
            });
        }

        let sum: i64 = sqlx::query("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM entries")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if sum != 0 {
            found.push(Violation::LedgerNotZero { sum });
        }
        tx.commit().await?;
        Ok(found)
    }
}
