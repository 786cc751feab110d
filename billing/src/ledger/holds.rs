//! The request life cycle, part one: placing, releasing and reaping holds (keyed by job id).

use std::time::{Duration, SystemTime};

use sqlx::AnyConnection;
use sqlx::Row;
use uuid::Uuid;

use super::batch::Op;
use super::rows::{hold_and_account, hold_columns, hold_from_row, parse_job};
use super::{now_ms, unix_ms, Ledger};
use crate::error::{Error, Result};
use crate::money::{cost, Price};
use crate::types::{AccountId, AccountKind, Hold, HoldAmount, HoldOutcome, HoldStatus, KeyBudget, ReleaseOutcome};

const REAP_BATCH: i64 = 500;

impl Ledger {
    /// Reserves `amount` nanoTON of `client`'s available balance for job `job_id` until
    /// `ttl` from now, fixing the price of `model` and the ledger's fee for this job.
    ///
    /// Fails with [`Error::InsufficientFunds`] when `amount` exceeds the available balance,
    /// with [`Error::UnknownModel`] when the model has no price; neither writes anything.
    /// A second call with the same job id writes nothing and returns
    /// [`HoldOutcome::AlreadyExists`] with the hold as it is (in whatever status).
    pub async fn hold(
        &self,
        job_id: Uuid,
        client: AccountId,
        model: &str,
        amount: i64,
        ttl: Duration,
    ) -> Result<HoldOutcome> {
        self.hold_for_key(job_id, client, model, amount, ttl, None).await
    }

    /// [`Self::hold`] that also counts against an API key's day and month budgets
    /// (`ledger::budgets`), in the same transaction: [`Error::BudgetExceeded`] when it does
    /// not fit, nothing written.
    pub async fn hold_for_key(
        &self,
        job_id: Uuid,
        client: AccountId,
        model: &str,
        amount: i64,
        ttl: Duration,
        budget: Option<&KeyBudget>,
    ) -> Result<HoldOutcome> {
        self.hold_amount(job_id, client, model, HoldAmount::Fixed(amount), ttl, budget)
            .await
    }

    /// [`Self::hold_for_key`] for an amount given as [`HoldAmount`]: with
    /// [`HoldAmount::WorstCase`] the hold prices the worst case itself, so a caller needs no
    /// read of the price before it (the gateway's path: one database call per hold, not two).
    pub async fn hold_amount(
        &self,
        job_id: Uuid,
        client: AccountId,
        model: &str,
        amount: HoldAmount,
        ttl: Duration,
        budget: Option<&KeyBudget>,
    ) -> Result<HoldOutcome> {
        if let HoldAmount::Fixed(a) = amount {
            if a <= 0 {
                return Err(Error::InvalidAmount(a));
            }
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).map_err(|_| Error::Overflow("ttl"))?;
        // Counted as in flight on its account until answered, whichever path it takes.
        let in_flight = self.committer.as_ref().map(|c| c.enter(Some(client)));
        let batch = in_flight.as_ref().is_some_and(|f| f.batch);
        let outcome = self
            .hold_routed(job_id, client, model, amount, ttl_ms, budget, batch)
            .await;
        if let (Some(c), Ok(HoldOutcome::Placed(_))) = (&self.committer, &outcome) {
            c.placed(job_id, client);
        }
        outcome
    }

    /// A hold through the committer when `batch`, else alone.
    #[allow(clippy::too_many_arguments)]
    async fn hold_routed(
        &self,
        job_id: Uuid,
        client: AccountId,
        model: &str,
        amount: HoldAmount,
        ttl_ms: i64,
        budget: Option<&KeyBudget>,
        batch: bool,
    ) -> Result<HoldOutcome> {
        if let (Some(c), true) = (&self.committer, batch) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let op = Op::Hold {
                job_id,
                client,
                model: model.to_owned(),
                amount,
                ttl_ms,
                budget: budget.cloned(),
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
        self.retrying("hold", || {
            self.hold_once(job_id, client, model, amount, ttl_ms, budget)
        })
        .await
    }

    async fn hold_once(
        &self,
        job_id: Uuid,
        client: AccountId,
        model: &str,
        amount: HoldAmount,
        ttl_ms: i64,
        budget: Option<&KeyBudget>,
    ) -> Result<HoldOutcome> {
        let mut tx = self.begin().await?;
        // An error drops `tx`, which rolls back: nothing of a refused hold is written.
        let outcome = self
            .hold_in(&mut tx, job_id, client, model, amount, ttl_ms, budget)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The body of a hold inside a write transaction that the caller commits (alone, or in a
    /// group commit with other calls). Every refusal (`InsufficientFunds`, unknown model or
    /// account, overflow) is decided before the first write, so a refused hold leaves the
    /// transaction as it found it; only a database error can come after a write. The key's
    /// budgets are read after the account row is locked, which serialises them per key.
    /// A [`HoldAmount::WorstCase`] is priced from the price row read here, the one the hold
    /// fixes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn hold_in(
        &self,
        conn: &mut AnyConnection,
        job_id: Uuid,
        client: AccountId,
        model: &str,
        amount: HoldAmount,
        ttl_ms: i64,
        budget: Option<&KeyBudget>,
    ) -> Result<HoldOutcome> {
        let now = now_ms();
        let expires = now
            .checked_add(ttl_ms)
            .ok_or(Error::Overflow("hold expiry"))?;
        let job = job_id.to_string();
        let row = sqlx::query(self.pick(
            "SELECT a.kind, a.balance, a.held, p.prompt, p.cached_prompt, p.completion, \
               p.reasoning, h.job_id AS existing \
             FROM accounts a LEFT JOIN prices p ON p.model = $2 \
             LEFT JOIN holds h ON h.job_id = $3 WHERE a.id = $1 FOR UPDATE OF a",
            "SELECT a.kind, a.balance, a.held, p.prompt, p.cached_prompt, p.completion, \
               p.reasoning, h.job_id AS existing \
             FROM accounts a LEFT JOIN prices p ON p.model = $2 \
             LEFT JOIN holds h ON h.job_id = $3 WHERE a.id = $1",
        ))
        .bind(client.0)
        .bind(model)
        .bind(&job)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::UnknownAccount(client))?;
        if row.try_get::<Option<String>, _>("existing")?.is_some() {
            return existing_hold(conn, job_id).await;
        }
        let kind = AccountKind::parse(row.try_get("kind")?)?;
        if kind != AccountKind::Client {
            return Err(Error::WrongAccountKind {
                id: client,
                actual: kind,
                expected: AccountKind::Client,
            });
        }
        let price = match row.try_get::<Option<i64>, _>("prompt")? {
            Some(prompt) => Price {
                prompt,
                cached_prompt: row.try_get("cached_prompt")?,
                completion: row.try_get("completion")?,
                reasoning: row.try_get("reasoning")?,
            },
            None => return Err(Error::UnknownModel(model.to_owned())),
        };
        let amount = match amount {
            HoldAmount::Fixed(a) => a,
            HoldAmount::WorstCase { usage, coefficient } => {
                cost(price, usage, coefficient, self.fee_bps())
                    .map_err(|e| match e {
                        Error::InvalidPrice { .. } => Error::InvalidPrice { model: model.to_owned() },
                        e => e,
                    })?
                    .charge
                    .max(1)
            }
        };
        let balance: i64 = row.try_get("balance")?;
        let held: i64 = row.try_get("held")?;
        let available = balance
            .checked_sub(held)
            .ok_or(Error::Overflow("available"))?;
        if amount > available {
            return Err(Error::InsufficientFunds {
                available,
                needed: amount,
            });
        }
        let new_held = held.checked_add(amount).ok_or(Error::Overflow("held"))?;
        let (budget_day, budget_month) = match budget {
            Some(b) => super::budgets::check(conn, b, amount, now).await?,
            None => (None, None),
        };
        let key_id = budget.map(|b| b.key_id.clone());
        // One round trip on both backends. Postgres: a data-modifying CTE. SQLite (no such
        // CTEs): three statements in one call, sharing the numbered parameters; `changes()`
        // is the row count of the statement before, so the account is updated and a row
        // comes back only if the hold was inserted (not a conflict). Same rows either way.
        let insert_hold = self.pick(
            "WITH h AS ( \
               INSERT INTO holds (job_id, account_id, model, amount, price_prompt, \
                 price_cached_prompt, price_completion, price_reasoning, fee_bps, status, \
                 created_at, expires_at, key_id, budget_day, budget_month) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $11, $12, $13, $14) \
               ON CONFLICT (job_id) DO NOTHING RETURNING job_id), \
             a AS (UPDATE accounts SET held = $15 WHERE id = $2 AND EXISTS (SELECT 1 FROM h)) \
             SELECT job_id FROM h",
            "INSERT INTO holds (job_id, account_id, model, amount, price_prompt, \
               price_cached_prompt, price_completion, price_reasoning, fee_bps, status, \
               created_at, expires_at, key_id, budget_day, budget_month) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $11, $12, $13, $14) \
             ON CONFLICT (job_id) DO NOTHING; \
             UPDATE accounts SET held = $15 WHERE id = $2 AND changes() = 1; \
             SELECT $1 WHERE changes() = 1",
        );
        let placed = sqlx::query(insert_hold)
            .bind(&job)
            .bind(client.0)
            .bind(model)
            .bind(amount)
            .bind(price.prompt)
            .bind(price.cached_prompt)
            .bind(price.completion)
            .bind(price.reasoning)
            .bind(i64::from(self.fee_bps()))
            .bind(now)
            .bind(expires)
            .bind(key_id.clone())
            .bind(budget_day.clone())
            .bind(budget_month.clone())
            .bind(new_held)
            // `fetch_all`, not `fetch_optional`: sqlx's `Any` driver for SQLite looks only at
            // the first statement's result and may stop the rest.
            .fetch_all(&mut *conn)
            .await?;
        if placed.is_empty() {
            // The same job id on another client's account, placed concurrently (and
            // committed: the insert waited for it). Nothing was written here.
            return existing_hold(conn, job_id).await;
        }
        let hold = Hold {
            job_id,
            client,
            model: model.to_owned(),
            amount,
            price,
            fee_bps: self.fee_bps(),
            status: HoldStatus::Active,
            created_at_ms: now,
            expires_at_ms: expires,
            closed_at_ms: None,
            key_id,
            budget_day,
            budget_month,
        };
        super::budgets::adjust(conn, &hold, amount).await?;
        Ok(HoldOutcome::Placed(hold))
    }

    /// Releases job `job_id`'s hold without charging anything. Releasing a hold that is no
    /// longer active changes nothing: [`ReleaseOutcome::AlreadyClosed`].
    pub async fn release(&self, job_id: Uuid) -> Result<ReleaseOutcome> {
        if let Some(c) = &self.committer {
            c.settled(job_id);
        }
        self.retrying("release", || {
            self.close_once(job_id, HoldStatus::Released, None)
        })
        .await
    }

    /// Releases every active hold whose expiry is at or before `now` (status `expired`)
    /// and returns them. Holds captured or released meanwhile are left alone.
    pub async fn reap_expired(&self, now: SystemTime) -> Result<Vec<Hold>> {
        let now = unix_ms(now);
        let mut reaped = Vec::new();
        loop {
            let rows = sqlx::query(
                "SELECT job_id FROM holds WHERE status = 'active' AND expires_at <= $1 \
                 ORDER BY expires_at LIMIT $2",
            )
            .bind(now)
            .bind(REAP_BATCH)
            .fetch_all(&self.read)
            .await?;
            let batch = rows.len();
            let mut closed_any = false;
            for row in rows {
                let job_id = parse_job(row.try_get("job_id")?)?;
                let outcome = self
                    .retrying("reap", || {
                        self.close_once(job_id, HoldStatus::Expired, Some(now))
                    })
                    .await?;
                if let ReleaseOutcome::Released(hold) = outcome {
                    closed_any = true;
                    reaped.push(hold);
                }
            }
            if (batch as i64) < REAP_BATCH || !closed_any {
                break;
            }
        }
        if !reaped.is_empty() {
            tracing::info!(count = reaped.len(), "released expired holds");
        }
        Ok(reaped)
    }

    /// Closes an active hold as `status` without a charge. With `expired_by`, only if the
    /// hold expired at or before that time.
    async fn close_once(
        &self,
        job_id: Uuid,
        status: HoldStatus,
        expired_by: Option<i64>,
    ) -> Result<ReleaseOutcome> {
        let job = job_id.to_string();
        let mut tx = self.begin().await?;
        let row = sqlx::query(self.pick(
            concat!(hold_and_account!(), " FOR UPDATE OF h, a"),
            hold_and_account!(),
        ))
        .bind(&job)
        .bind(0_i64)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::UnknownHold(job_id))?;
        let mut hold = hold_from_row(&row)?;
        let due = expired_by.is_none_or(|t| hold.expires_at_ms <= t);
        if hold.status != HoldStatus::Active || !due {
            tx.rollback().await?;
            return Ok(ReleaseOutcome::AlreadyClosed(hold));
        }
        let held: i64 = row.try_get("held")?;
        let new_held = held
            .checked_sub(hold.amount)
            .ok_or(Error::Overflow("held"))?;
        let now = now_ms();
        sqlx::query("UPDATE holds SET status = $2, closed_at = $3 WHERE job_id = $1")
            .bind(&job)
            .bind(status.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE accounts SET held = $1 WHERE id = $2")
            .bind(new_held)
            .bind(hold.client.0)
            .execute(&mut *tx)
            .await?;
        // Released or expired: it no longer counts against its key's budgets.
        super::budgets::adjust(&mut tx, &hold, -hold.amount).await?;
        tx.commit().await?;
        hold.status = status;
        hold.closed_at_ms = Some(now);
        Ok(ReleaseOutcome::Released(hold))
    }

    /// Job `job_id`'s hold, in whatever status.
    pub async fn find_hold(&self, job_id: Uuid) -> Result<Option<Hold>> {
        sqlx::query(concat!(
            "SELECT ",
            hold_columns!(),
            " FROM holds h WHERE h.job_id = $1"
        ))
        .bind(job_id.to_string())
        .fetch_optional(&self.read)
        .await?
        .map(|r| hold_from_row(&r))
        .transpose()
    }
}

/// The hold already recorded for `job_id`, read inside the caller's transaction (so a hold
/// placed earlier in the same group commit is seen).
async fn existing_hold(conn: &mut AnyConnection, job_id: Uuid) -> Result<HoldOutcome> {
    let hold = sqlx::query(concat!(
        "SELECT ",
        hold_columns!(),
        " FROM holds h WHERE h.job_id = $1"
    ))
    .bind(job_id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| hold_from_row(&r))
    .transpose()?
    .ok_or(Error::UnknownHold(job_id))?;
    Ok(HoldOutcome::AlreadyExists(hold))
}
