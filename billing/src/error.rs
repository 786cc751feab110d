//! The one error type of the ledger.

use uuid::Uuid;

use crate::types::{AccountId, AccountKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a ledger call can fail with. Variants other than [`Error::Database`] and
/// [`Error::Migrate`] are the caller's fault or a business outcome and are never retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client cannot afford the hold; nothing was written. The gateway answers 402
    /// `insufficient_quota`.
    #[error("insufficient funds: {available} nanoTON available, {needed} needed")]
    InsufficientFunds { available: i64, needed: i64 },
    /// The API key's daily or monthly budget cannot take the hold; nothing was written. The
    /// gateway answers 402 `budget_exceeded` with the reset time.
    #[error("the key's {period} budget of {budget} nanoTON has {committed} committed; this request needs {needed}")]
    BudgetExceeded {
        period: crate::types::BudgetPeriod,
        budget: i64,
        committed: i64,
        needed: i64,
        /// Unix ms when the period ends (UTC midnight / first of the month).
        resets_at_ms: i64,
    },
    /// Checked arithmetic failed: the result does not fit an `i64` (or the `i128`
    /// intermediate). Nothing was written.
    #[error("amount overflow: {0}")]
    Overflow(&'static str),
    /// An amount that must be positive was not (credit, hold).
    #[error("invalid amount {0} nanoTON: must be positive")]
    InvalidAmount(i64),
    /// A price component was negative.
    #[error("invalid price for model {model:?}: components must be >= 0")]
    InvalidPrice { model: String },
    /// `fee_bps` above 10 000 (100 %).
    #[error("invalid network fee {0} bps: must be <= 10000")]
    InvalidFee(u32),
    #[error("no account with id {0}")]
    UnknownAccount(AccountId),
    /// The account exists but is of the wrong kind for this operation (e.g. a hold on a
    /// worker account, or `ensure_account` for a system account kind).
    #[error("account {id} is {actual}, expected {expected}")]
    WrongAccountKind {
        id: AccountId,
        actual: AccountKind,
        expected: AccountKind,
    },
    /// `ensure_account` for a system kind: the fee and deposits-clearing accounts are
    /// created by the migrations; see `Ledger::fee_account` / `Ledger::clearing_account`.
    #[error("{0} accounts are system accounts and cannot be created")]
    SystemAccount(AccountKind),
    #[error("no price set for model {0:?}")]
    UnknownModel(String),
    #[error("no hold for job {0}")]
    UnknownHold(Uuid),
    /// An idempotency key was reused with a different account or amount.
    #[error("idempotency key {key:?} was already used for a different credit")]
    IdempotencyConflict { key: String },
    /// An argument the ledger refuses (a malformed TON address, a payout in the wrong
    /// state for the operation, ...). Nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unsupported ledger url (expected postgres://… or sqlite:…): {0}")]
    UnsupportedUrl(String),
    /// A row the ledger wrote itself holds something it cannot read back.
    #[error("corrupt ledger row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// Transient database conflicts (Postgres serialization failure or deadlock, SQLite
    /// busy/locked). The ledger already retries these a few times itself; a caller that
    /// still sees one may retry the whole call, every call being idempotent by its key.
    /// A Postgres serialization failure or detected deadlock: the transaction was chosen to
    /// abort (a deadlock only after `deadlock_timeout`, 1 s by default), and running it again
    /// is the cure whatever time it took.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("40001") | Some("40P01")))
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(db)) => {
                let code = db.code();
                match code.as_deref() {
                    Some("40001") | Some("40P01") => true,
                    Some(c) => c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)),
                    None => false,
                }
            }
            Error::Database(sqlx::Error::PoolTimedOut) => true,
            _ => false,
        }
    }
}
