//! Accounts, credits (top-ups) and balances.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Ledger};
use crate::error::{Error, Result};
use crate::types::{Account, AccountId, AccountKind, Balance, CreditOutcome, WorkerEarnings};

impl Ledger {
    /// The id of the `kind` account named `external_id`, created if missing. Only client
    /// and worker accounts can be created; see [`Ledger::fee_account`] and
    /// [`Ledger::clearing_account`] for the system accounts.
    pub async fn ensure_account(&self, kind: AccountKind, external_id: &str) -> Result<AccountId> {
        if !matches!(kind, AccountKind::Client | AccountKind::Worker) {
            return Err(Error::SystemAccount(kind));
        }
        self.retrying("ensure_account", || async {
            let inserted = sqlx::query(
                "INSERT INTO accounts (kind, external_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, external_id) DO NOTHING RETURNING id",
            )
            .bind(kind.as_str())
            .bind(external_id)
            .bind(now_ms())
            .fetch_optional(&self.write)
            .await?;
            let row = match inserted {
                Some(row) => row,
                None => {
                    sqlx::query("SELECT id FROM accounts WHERE kind = $1 AND external_id = $2")
                        .bind(kind.as_str())
                        .bind(external_id)
                        .fetch_one(&self.write)
                        .await?
                }
            };
            Ok(AccountId(row.try_get(0)?))
        })
        .await
    }

    /// The `kind` account named `external_id`, if any.
    pub async fn find_account(
        &self,
        kind: AccountKind,
        external_id: &str,
    ) -> Result<Option<Account>> {
        sqlx::query(
            "SELECT id, kind, external_id, created_at FROM accounts \
             WHERE kind = $1 AND external_id = $2",
        )
        .bind(kind.as_str())
        .bind(external_id)
        .fetch_optional(&self.read)
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    /// The account with this id, if any.
    pub async fn account(&self, id: AccountId) -> Result<Option<Account>> {
        sqlx::query("SELECT id, kind, external_id, created_at FROM accounts WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.read)
            .await?
            .map(|r| account_from_row(&r))
            .transpose()
    }

    /// Tops up `client` by `amount` nanoTON from the deposits-clearing account, once per
    /// `idempotency_key` (e.g. the deposit's `tx_hash:lt`). The same key again with the same
    /// client and amount changes nothing and answers [`CreditOutcome::AlreadyApplied`];
    /// with a different client or amount it is [`Error::IdempotencyConflict`].
    pub async fn credit(
        &self,
        client: AccountId,
        amount: i64,
        idempotency_key: &str,
        memo: &str,
    ) -> Result<CreditOutcome> {
        if amount <= 0 {
            return Err(Error::InvalidAmount(amount));
        }
        if client == self.clearing_account {
            return Err(Error::WrongAccountKind {
                id: client,
                actual: AccountKind::Clearing,
                expected: AccountKind::Client,
            });
        }
        self.retrying("credit", || {
            self.credit_once(client, amount, idempotency_key, memo)
        })
        .await
    }

    async fn credit_once(
        &self,
        client: AccountId,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<CreditOutcome> {
        let mut tx = self.begin().await?;
        // Lock both balance rows, lowest id first (the clearing account is created first).
        let rows = sqlx::query(self.pick(
            "SELECT id, kind, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
            "SELECT id, kind, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id",
        ))
        .bind(client.0)
        .bind(self.clearing_account.0)
        .fetch_all(&mut *tx)
        .await?;
        let mut client_balance = None;
        let mut clearing_balance = None;
        for row in &rows {
            let id = AccountId(row.try_get("id")?);
            let kind = AccountKind::parse(row.try_get("kind")?)?;
            let balance: i64 = row.try_get("balance")?;
            if id == self.clearing_account {
                clearing_balance = Some(balance);
            } else if kind == AccountKind::Client {
                client_balance = Some(balance);
            } else {
                return Err(Error::WrongAccountKind {
                    id,
                    actual: kind,
                    expected: AccountKind::Client,
                });
            }
        }
        let client_balance = client_balance.ok_or(Error::UnknownAccount(client))?;
        let clearing_balance =
            clearing_balance.ok_or_else(|| Error::Corrupt("clearing account missing".into()))?;

        let existing = sqlx::query(
            "SELECT t.id, e.amount FROM transactions t \
             LEFT JOIN entries e ON e.transaction_id = t.id AND e.account_id = $2 \
             WHERE t.idempotency_key = $1",
        )
        .bind(key)
        .bind(client.0)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.rollback().await?;
            let credited: Option<i64> = row.try_get("amount")?;
            return if credited == Some(amount) {
                Ok(CreditOutcome::AlreadyApplied(row.try_get("id")?))
            } else {
                Err(Error::IdempotencyConflict {
                    key: key.to_owned(),
                })
            };
        }

        let new_client = client_balance
            .checked_add(amount)
            .ok_or(Error::Overflow("client balance"))?;
        // Clearing = −(all money ever deposited): keeping it within i64 keeps every sum in
        // the ledger within i64.
        // i64::MIN is excluded so that the positive balances, which sum to −clearing, fit.
        let new_clearing = clearing_balance
            .checked_sub(amount)
            .filter(|b| *b != i64::MIN)
            .ok_or(Error::Overflow("total deposits"))?;
        let tx_id: i64 = sqlx::query(
            "INSERT INTO transactions (kind, idempotency_key, memo, created_at) \
             VALUES ('credit', $1, $2, $3) RETURNING id",
        )
        .bind(key)
        .bind(memo)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query(
            "INSERT INTO entries (transaction_id, account_id, amount) VALUES ($1, $2, $3), ($1, $4, $5)",
        )
        .bind(tx_id)
        .bind(self.clearing_account.0)
        .bind(-amount)
        .bind(client.0)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
        for (id, balance) in [(self.clearing_account, new_clearing), (client, new_client)] {
            sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
                .bind(balance)
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(CreditOutcome::Credited(tx_id))
    }

    /// `total` (sum of entries), `held` (active holds) and `available` of any account.
    pub async fn balance(&self, account: AccountId) -> Result<Balance> {
        let row = sqlx::query(
            "SELECT a.kind, a.balance, a.held, \
               (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                WHERE e.account_id = a.id AND a.kind IN ('worker', 'fee')) AS summed \
             FROM accounts a WHERE a.id = $1",
        )
        .bind(account.0)
        .fetch_optional(&self.read)
        .await?
        .ok_or(Error::UnknownAccount(account))?;
        let kind = AccountKind::parse(row.try_get("kind")?)?;
        let total: i64 = if kind.caches_balance() {
            row.try_get("balance")?
        } else {
            row.try_get("summed")?
        };
        let held: i64 = row.try_get("held")?;
        let available = total
            .checked_sub(held)
            .ok_or(Error::Overflow("available"))?;
        Ok(Balance {
            total,
            held,
            available,
        })
    }

    /// A worker's current balance and lifetime earnings.
    pub async fn worker_earnings(&self, worker: AccountId) -> Result<WorkerEarnings> {
        let row = sqlx::query(
            "SELECT a.kind, \
               (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                WHERE e.account_id = a.id) AS balance, \
               (SELECT CAST(COALESCE(SUM(c.worker_amount), 0) AS BIGINT) FROM charges c \
                WHERE c.worker_id = a.id) AS earned, \
               (SELECT COUNT(*) FROM charges c WHERE c.worker_id = a.id) AS jobs \
             FROM accounts a WHERE a.id = $1",
        )
        .bind(worker.0)
        .fetch_optional(&self.read)
        .await?
        .ok_or(Error::UnknownAccount(worker))?;
        let kind = AccountKind::parse(row.try_get("kind")?)?;
        if kind != AccountKind::Worker {
            return Err(Error::WrongAccountKind {
                id: worker,
                actual: kind,
                expected: AccountKind::Worker,
            });
        }
        Ok(WorkerEarnings {
            balance: row.try_get("balance")?,
            earned: row.try_get("earned")?,
            jobs: row.try_get("jobs")?,
        })
    }
}

fn account_from_row(row: &AnyRow) -> Result<Account> {
    Ok(Account {
        id: AccountId(row.try_get("id")?),
        kind: AccountKind::parse(row.try_get("kind")?)?,
        external_id: row.try_get("external_id")?,
        created_at_ms: row.try_get("created_at")?,
    })
}
