//! The request life cycle, part two: capturing a hold, and the receipts it leaves.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;
use uuid::Uuid;

use super::batch::Op;
use super::receipts::{bind_receipt, check_receipt, insert_receipt, StoredReceipt};
use super::rows::{charge_columns, hold_and_account, hold_from_row, receipt_from_row};
use super::{now_ms, tokens_i64, Backend, Ledger};
use crate::error::{Error, Result};
use crate::money::{cost, split, Breakdown, Usage};
use crate::types::{AccountId, AccountKind, CaptureOutcome, HoldStatus, Receipt};

impl Ledger {
    /// Charges job `job_id` for `usage` served by `worker` at `coefficient` thousandths, at
    /// the price and fee fixed in its hold: in one database transaction the client is
    /// debited the charge, `worker` is credited `charge − fee`, the fee account `fee`, the
    /// rest of the hold is released and a usage row is written.
    ///
    /// An active hold is captured even after its expiry time if the reaper has not
    /// released it yet. A hold the reaper already released (`expired`) is still captured,
    /// late: the request ran past its hold's lifetime (a stream longer than
    /// `billing.hold_ttl_secs`, or a capture that waited in the outbox), and the answer was
    /// delivered, so it is charged, not given away. Its reservation is gone, so the charge
    /// comes from the client's available balance alone (the rule below with a hold of zero)
    /// and the receipt's `held` is 0. Capturing a captured job, or one the gateway released
    /// (the request failed), changes nothing: [`CaptureOutcome::AlreadyCaptured`] (with the
    /// original receipt) or [`CaptureOutcome::AlreadyReleased`].
    ///
    /// # When the cost exceeds the hold
    /// A capture never exceeds its hold: the client pays `min(cost, hold amount, what other
    /// holds leave of its balance)` (the last bound matters only for a late capture, whose
    /// reservation is gone). A cost above the hold means the worker reported more than the
    /// request could use (tokens or coefficient): the excess is the receipt's `shortfall`,
    /// written off, charged to no one and paid to no one, logged here and counted by the
    /// gateway (`cocoon_gateway_capture_shortfall_total{worker}`); worker and fee split the
    /// capped charge by the usual rule.
    pub async fn capture(
        &self,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
    ) -> Result<CaptureOutcome> {
        self.capture_with_receipt(job_id, worker, usage, coefficient, None)
            .await
    }

    /// [`Ledger::capture`], storing the worker's signed receipt first (as
    /// [`Ledger::record_receipt`] does) in the same transaction, so a request costs one
    /// commit for both.
    pub async fn capture_with_receipt(
        &self,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<&StoredReceipt>,
    ) -> Result<CaptureOutcome> {
        for tokens in [
            usage.prompt_tokens,
            usage.cached_prompt_tokens,
            usage.completion_tokens,
            usage.reasoning_tokens,
        ] {
            tokens_i64(tokens)?;
        }
        if let Some(r) = receipt {
            check_receipt(r)?;
        }
        // Counted as in flight on its account until answered, whichever path it takes.
        let in_flight = self.committer.as_ref().map(|c| c.enter(c.client_of(job_id)));
        let batch = in_flight.as_ref().is_some_and(|f| f.batch);
        let outcome = self
            .capture_routed(job_id, worker, usage, coefficient, receipt, batch)
            .await;
        if let (Some(c), Ok(_)) = (&self.committer, &outcome) {
            c.settled(job_id);
        }
        outcome
    }

    /// A capture through the committer when `batch`, else alone.
    async fn capture_routed(
        &self,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<&StoredReceipt>,
        batch: bool,
    ) -> Result<CaptureOutcome> {
        if let (Some(c), true) = (&self.committer, batch) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let op = Op::Capture {
                job_id,
                worker,
                usage,
                coefficient,
                receipt: receipt.cloned(),
                reply,
            };
            // No answer: the batch failed (rolled back) or the committer is gone; the call
            // then runs alone below, which its job id makes safe to repeat.
            if c.submit(op) {
                if let Ok(r) = answer.await {
                    return r;
                }
            }
        }
        self.retrying("capture", || {
            self.capture_once(job_id, worker, usage, coefficient, receipt)
        })
        .await
    }

    /// The receipt is written in the capture's own transaction on every path: a capture
    /// whose receipt cannot be kept is not made, and both cost one commit.
    async fn capture_once(
        &self,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<&StoredReceipt>,
    ) -> Result<CaptureOutcome> {
        if self.backend == Backend::Postgres {
            if let Some(done) = self
                .capture_within_hold(job_id, worker, usage, coefficient, receipt)
                .await?
            {
                return Ok(done);
            }
        }
        self.capture_locked(job_id, worker, usage, coefficient, receipt)
            .await
    }

    /// Postgres fast path, for a cost within the hold (the usual case: the hold is the
    /// worst case). Then the charge depends on the hold alone — the ceiling
    /// `balance − (held − hold)` is at least the hold because `held <= balance` — so nothing
    /// has to be read under a lock: one plain read of the hold, then one statement, its own
    /// transaction, that closes the hold only if it is still active and moves the money
    /// relative to the account's current row (`balance − charge`, `held − hold`). Two round
    /// trips instead of four. It writes the same rows as the locked path, and takes the
    /// hold's row lock before the account's, as every other call does. The receipt, if
    /// any, is written by the same statement.
    ///
    /// `None` sends the call down the locked path: the hold is not active (that path reports
    /// how it was closed), the cost exceeds the hold (the cap needs the balance), or the hold
    /// was closed between the read and the write (nothing was written).
    async fn capture_within_hold(
        &self,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<&StoredReceipt>,
    ) -> Result<Option<CaptureOutcome>> {
        let job = job_id.to_string();
        let row = sqlx::query(hold_and_account!())
            .bind(&job)
            .bind(worker.0)
            .fetch_optional(&self.write)
            .await?
            .ok_or(Error::UnknownHold(job_id))?;
        let hold = hold_from_row(&row)?;
        if hold.status != HoldStatus::Active {
            return Ok(None);
        }
        check_worker(&row, worker)?;
        let billed = cost(hold.price, usage, coefficient, hold.fee_bps)?;
        if billed.charge > hold.amount {
            return Ok(None);
        }
        let now = now_ms();
        let write = CaptureWrite {
            job: &job,
            now,
            client: hold.client,
            worker,
            fee_account: self.fee_account,
            model: &hold.model,
            usage: [
                tokens_i64(usage.prompt_tokens)?,
                tokens_i64(usage.cached_prompt_tokens)?,
                tokens_i64(usage.completion_tokens)?,
                tokens_i64(usage.reasoning_tokens)?,
            ],
            coefficient: i64::from(coefficient),
            cost: billed.charge,
            billed,
            shortfall: 0,
            held: hold.amount,
            // Unused: this path moves the balance relative to the row as it is.
            new_balance: 0,
            new_held: 0,
        };
        let Some(tx_id) = write.postgres_if_active(self, receipt).await? else {
            return Ok(None);
        };
        Ok(Some(CaptureOutcome::Captured(Receipt {
            job_id,
            client: hold.client,
            worker,
            model: hold.model,
            usage,
            coefficient,
            cost: billed.charge,
            billed,
            shortfall: 0,
            held: hold.amount,
            transaction: tx_id,
            at_ms: now,
        })))
    }

    /// The general path: the hold and its client account read under row locks (SQLite:
    /// under the database write lock), then written in the same transaction.
    async fn capture_locked(
        &self,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<&StoredReceipt>,
    ) -> Result<CaptureOutcome> {
        let mut tx = self.begin().await?;
        // An error drops `tx`, which rolls back.
        let outcome = self
            .capture_in(&mut tx, job_id, worker, usage, coefficient, receipt)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The body of a capture inside a write transaction that the caller commits (alone, or
    /// in a group commit with other calls). Every refusal (unknown hold, wrong worker
    /// account, overflow) is decided before the first write, so a refused capture leaves
    /// the transaction as it found it; only a database error can come after a write. The
    /// exception is the worker's receipt, written first, so a statement of work is kept with
    /// every answer (also `AlreadyCaptured` and `AlreadyReleased`). A refusal leaves it
    /// written too: a capture alone then rolls it back with its transaction, while in a
    /// batch, which commits, it stays (as [`Ledger::record_receipt`] would have kept it).
    pub(super) async fn capture_in(
        &self,
        conn: &mut AnyConnection,
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<&StoredReceipt>,
    ) -> Result<CaptureOutcome> {
        let job = job_id.to_string();
        let row = match (self.backend, receipt) {
            // SQLite: the receipt and the read in one call (one hop to sqlx's SQLite thread),
            // sharing $1; `fetch_all` because sqlx's `Any` driver answers `fetch_optional`
            // from the first statement's (empty) result.
            (Backend::Sqlite, Some(r)) => {
                let q = sqlx::query(concat!(
                    "INSERT INTO receipts (job_id, sha256, signer, signature, receipt, created_at) \
                     VALUES ($1, $3, $4, $5, $6, $7) ON CONFLICT (job_id) DO NOTHING; ",
                    hold_and_account!()
                ))
                .bind(&job)
                .bind(worker.0);
                bind_receipt(q, r)
                    .bind(now_ms())
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .next()
            }
            (backend, receipt) => {
                if let Some(r) = receipt {
                    insert_receipt(conn, r).await?;
                }
                let sql = match backend {
                    Backend::Postgres => concat!(hold_and_account!(), " FOR UPDATE OF h, a"),
                    Backend::Sqlite => hold_and_account!(),
                };
                sqlx::query(sql)
                    .bind(&job)
                    .bind(worker.0)
                    .fetch_optional(&mut *conn)
                    .await?
            }
        }
        .ok_or(Error::UnknownHold(job_id))?;
        let hold = hold_from_row(&row)?;
        match hold.status {
            HoldStatus::Active => {}
            HoldStatus::Captured => {
                // Read in this transaction: the capture may be earlier in the same batch.
                let receipt = sqlx::query(concat!(
                    "SELECT ",
                    charge_columns!(),
                    " FROM charges WHERE job_id = $1"
                ))
                .bind(&job)
                .fetch_optional(&mut *conn)
                .await?
                .map(|r| receipt_from_row(&r))
                .transpose()?
                .ok_or_else(|| {
                    Error::Corrupt(format!("hold {job_id} captured without a charge row"))
                })?;
                return Ok(CaptureOutcome::AlreadyCaptured(receipt));
            }
            HoldStatus::Expired => {}
            HoldStatus::Released => {
                return Ok(CaptureOutcome::AlreadyReleased(hold));
            }
        }
        check_worker(&row, worker)?;
        // A reaped hold no longer counts in `held`: nothing is reserved for this charge.
        let late = hold.status == HoldStatus::Expired;
        let reserved = if late { 0 } else { hold.amount };

        let full = cost(hold.price, usage, coefficient, hold.fee_bps)?;
        let balance: i64 = row.try_get("balance")?;
        let held: i64 = row.try_get("held")?;
        let new_held = held
            .checked_sub(reserved)
            .ok_or(Error::Overflow("held"))?;
        // Never more than the hold (what the client agreed to risk on this request), and
        // never more than what other holds leave available, this hold included.
        let ceiling = balance
            .checked_sub(new_held)
            .ok_or(Error::Overflow("ceiling"))?
            .max(0)
            .min(hold.amount);
        let billed = if full.charge <= ceiling {
            full
        } else {
            split(ceiling, hold.fee_bps)?
        };
        let shortfall = full.charge - billed.charge;
        let new_balance = balance
            .checked_sub(billed.charge)
            .ok_or(Error::Overflow("balance"))?;
        let now = now_ms();

        let write = CaptureWrite {
            job: &job,
            now,
            client: hold.client,
            worker,
            fee_account: self.fee_account,
            model: &hold.model,
            usage: [
                tokens_i64(usage.prompt_tokens)?,
                tokens_i64(usage.cached_prompt_tokens)?,
                tokens_i64(usage.completion_tokens)?,
                tokens_i64(usage.reasoning_tokens)?,
            ],
            coefficient: i64::from(coefficient),
            cost: full.charge,
            billed,
            shortfall,
            held: reserved,
            new_balance,
            new_held,
        };
        let tx_id = match self.backend {
            Backend::Postgres => write.postgres(conn).await?,
            Backend::Sqlite => write.portable(conn).await?,
        };
        // Its key's budgets now count the charge instead of the hold (an expired hold
        // counted nothing any more, so its late charge is added).
        super::budgets::adjust(conn, &hold, billed.charge - reserved).await?;
        // Logged before the commit, which may still fail (the call then fails and is retried).
        if late {
            tracing::warn!(%job_id, cost = full.charge, billed = billed.charge, "hold expired before its capture; charged late from the available balance");
        }
        if shortfall > 0 {
            tracing::warn!(%job_id, cost = full.charge, billed = billed.charge, worker = worker.0, "capture exceeded its hold (or the balance left for a late one); shortfall written off");
        }
        Ok(CaptureOutcome::Captured(Receipt {
            job_id,
            client: hold.client,
            worker,
            model: hold.model,
            usage,
            coefficient,
            cost: full.charge,
            billed,
            shortfall,
            held: reserved,
            transaction: tx_id,
            at_ms: now,
        }))
    }

    /// Job `job_id`'s receipt, if it was captured.
    pub async fn receipt(&self, job_id: Uuid) -> Result<Option<Receipt>> {
        sqlx::query(concat!(
            "SELECT ",
            charge_columns!(),
            " FROM charges WHERE job_id = $1"
        ))
        .bind(job_id.to_string())
        .fetch_optional(&self.read)
        .await?
        .map(|r| receipt_from_row(&r))
        .transpose()
    }

    /// `client`'s most recent captured requests, newest first, at most `limit`.
    pub async fn usage(&self, client: AccountId, limit: u32) -> Result<Vec<Receipt>> {
        sqlx::query(concat!(
            "SELECT ",
            charge_columns!(),
            " FROM charges WHERE client_id = $1 ORDER BY created_at DESC, transaction_id DESC LIMIT $2"
        ))
        .bind(client.0)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(receipt_from_row)
        .collect()
    }
}

/// `worker` (the `worker_kind` column of [`hold_and_account`]) is a worker account.
fn check_worker(row: &AnyRow, worker: AccountId) -> Result<()> {
    match row.try_get::<Option<String>, _>("worker_kind")? {
        None => Err(Error::UnknownAccount(worker)),
        Some(k) if k != AccountKind::Worker.as_str() => Err(Error::WrongAccountKind {
            id: worker,
            actual: AccountKind::parse(&k)?,
            expected: AccountKind::Worker,
        }),
        Some(_) => Ok(()),
    }
}

/// Everything a capture writes once its amounts are known.
struct CaptureWrite<'a> {
    job: &'a str,
    now: i64,
    client: AccountId,
    worker: AccountId,
    fee_account: AccountId,
    model: &'a str,
    /// prompt, cached prompt, completion, reasoning tokens.
    usage: [i64; 4],
    coefficient: i64,
    cost: i64,
    billed: Breakdown,
    shortfall: i64,
    held: i64,
    new_balance: i64,
    new_held: i64,
}

impl CaptureWrite<'_> {
    /// Postgres, [`Ledger::capture_within_hold`]: one statement in its own transaction that
    /// writes only if the hold is still active (the `UPDATE … WHERE status = 'active'` takes
    /// the hold's row lock and re-checks the status after any concurrent writer committed;
    /// everything else hangs off its `RETURNING`), and moves the client's cached balance and
    /// `held` relative to the current row. `None`: the hold was closed meanwhile and
    /// nothing was written but the receipt. Same rows as [`Self::postgres`]. With a
    /// receipt, one more CTE writes it (a data-modifying CTE always runs, whatever the hold's
    /// status), so the capture and its receipt cost one statement and one commit.
    async fn postgres_if_active(
        &self,
        ledger: &Ledger,
        receipt: Option<&StoredReceipt>,
    ) -> Result<Option<i64>> {
        // The statement's text is fixed at compile time (no string built per capture).
        macro_rules! capture {
            () => {
                "h AS ( \
                     UPDATE holds SET status = 'captured', closed_at = $2 \
                     WHERE job_id = $1 AND status = 'active' RETURNING job_id), \
                     t AS ( \
                     INSERT INTO transactions (kind, job_id, created_at) \
                     SELECT 'capture', h.job_id, $2 FROM h RETURNING id), \
                     e AS ( \
                     INSERT INTO entries (transaction_id, account_id, amount) \
                     SELECT t.id, v.column1, v.column2 \
                     FROM t, (VALUES ($3, $4), ($5, $6), ($7, $8)) AS v WHERE v.column2 <> 0), \
                     a AS (UPDATE accounts SET balance = balance + $4, held = held - $22 \
                     WHERE id = $3 AND EXISTS (SELECT 1 FROM h)) \
                     INSERT INTO charges (job_id, transaction_id, client_id, worker_id, model, \
                     prompt_tokens, cached_prompt_tokens, completion_tokens, reasoning_tokens, \
                     coefficient, cost, charge, worker_amount, fee, shortfall, held, created_at) \
                     SELECT $1, t.id, $3, $5, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, 0, \
                     $22, $2 FROM t RETURNING transaction_id"
            };
        }
        const WITH_RECEIPT: &str = concat!(
            "WITH r AS ( \
             INSERT INTO receipts (job_id, sha256, signer, signature, receipt, created_at) \
             VALUES ($1, $23, $24, $25, $26, $2) ON CONFLICT (job_id) DO NOTHING), ",
            capture!()
        );
        const WITHOUT_RECEIPT: &str = concat!("WITH ", capture!());
        // The shared parameter list; $9, $10 and $21 (absolute balance, held, shortfall)
        // are not used here: the balance moves relative to the row and nothing falls short.
        let q = match receipt {
            Some(r) => bind_receipt(self.bind_all(sqlx::query(WITH_RECEIPT)), r),
            None => self.bind_all(sqlx::query(WITHOUT_RECEIPT)),
        };
        let row = q.fetch_optional(&ledger.write).await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Error::from)
    }

    /// Postgres: one statement (data-modifying CTEs), so a capture costs four round trips
    /// in all (BEGIN, the locking SELECT, this, COMMIT). Same rows as [`Self::portable`].
    async fn postgres(&self, tx: &mut AnyConnection) -> Result<i64> {
        let row = sqlx::query(
            "WITH t AS ( \
             INSERT INTO transactions (kind, job_id, created_at) VALUES ('capture', $1, $2) \
             RETURNING id), \
             e AS ( \
             INSERT INTO entries (transaction_id, account_id, amount) \
             SELECT t.id, v.column1, v.column2 \
             FROM t, (VALUES ($3, $4), ($5, $6), ($7, $8)) AS v WHERE v.column2 <> 0), \
             a AS (UPDATE accounts SET balance = $9, held = $10 WHERE id = $3), \
             h AS (UPDATE holds SET status = 'captured', closed_at = $2 WHERE job_id = $1) \
             INSERT INTO charges (job_id, transaction_id, client_id, worker_id, model, \
             prompt_tokens, cached_prompt_tokens, completion_tokens, reasoning_tokens, \
             coefficient, cost, charge, worker_amount, fee, shortfall, held, created_at) \
             SELECT $1, t.id, $3, $5, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
             $22, $2 FROM t RETURNING transaction_id",
        );
        Ok(self.bind_all(row).fetch_one(&mut *tx).await?.try_get(0)?)
    }

    /// The 22 parameters every capture statement here takes, in their numbered order.
    fn bind_all<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>
    where
        Self: 'q,
    {
        q.bind(self.job)
            .bind(self.now)
            .bind(self.client.0)
            .bind(-self.billed.charge)
            .bind(self.worker.0)
            .bind(self.billed.worker)
            .bind(self.fee_account.0)
            .bind(self.billed.fee)
            .bind(self.new_balance)
            .bind(self.new_held)
            .bind(self.model)
            .bind(self.usage[0])
            .bind(self.usage[1])
            .bind(self.usage[2])
            .bind(self.usage[3])
            .bind(self.coefficient)
            .bind(self.cost)
            .bind(self.billed.charge)
            .bind(self.billed.worker)
            .bind(self.billed.fee)
            .bind(self.shortfall)
            .bind(self.held)
    }

    /// SQLite has no data-modifying CTEs: the same rows as [`Self::postgres`] from six
    /// statements sent in one call (one round trip to sqlx's SQLite thread instead of one per
    /// statement), sharing the numbered parameters. The charge row takes the transaction's
    /// id from `last_insert_rowid()` right after the transaction insert; the entries and the
    /// answer read it back from the charge (its primary key is the job id).
    async fn portable(&self, tx: &mut AnyConnection) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO transactions (kind, job_id, created_at) VALUES ('capture', $1, $2); \
             INSERT INTO charges (job_id, transaction_id, client_id, worker_id, model, \
               prompt_tokens, cached_prompt_tokens, completion_tokens, reasoning_tokens, \
               coefficient, cost, charge, worker_amount, fee, shortfall, held, created_at) \
             VALUES ($1, last_insert_rowid(), $3, $5, $11, $12, $13, $14, $15, $16, $17, $18, \
               $19, $20, $21, $22, $2); \
             INSERT INTO entries (transaction_id, account_id, amount) \
             SELECT c.transaction_id, v.column1, v.column2 \
             FROM charges c, (VALUES ($3, $4), ($5, $6), ($7, $8)) AS v \
             WHERE c.job_id = $1 AND v.column2 <> 0; \
             UPDATE accounts SET balance = $9, held = $10 WHERE id = $3; \
             UPDATE holds SET status = 'captured', closed_at = $2 WHERE job_id = $1; \
             SELECT transaction_id FROM charges WHERE job_id = $1",
        );
        // `fetch_all`: sqlx's `Any` driver for SQLite answers `fetch_one`/`fetch_optional`
        // from the first statement's result and may stop the statements after it.
        let rows = self.bind_all(row).fetch_all(&mut *tx).await?;
        let row = rows.first().ok_or_else(|| Error::Corrupt(format!("capture of {} wrote no charge", self.job)))?;
        Ok(row.try_get(0)?)
    }
}
