//! Values the ledger hands out.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::money::{Breakdown, Price, Usage};

/// Milliseconds since the Unix epoch (UTC): every ledger timestamp.
pub type UnixMillis = i64;

/// Row id of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub i64);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What an account stands for. `Fee` and `Clearing` exist exactly once each (created by
/// the migrations); the clearing account is the TON hot wallet's mirror: a deposit moves
/// money from it to a client, so it goes negative by everything ever deposited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Client,
    Worker,
    Fee,
    Clearing,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Client => "client",
            AccountKind::Worker => "worker",
            AccountKind::Fee => "fee",
            AccountKind::Clearing => "clearing",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "client" => AccountKind::Client,
            "worker" => AccountKind::Worker,
            "fee" => AccountKind::Fee,
            "clearing" => AccountKind::Clearing,
            other => return Err(Error::Corrupt(format!("account kind {other:?}"))),
        })
    }

    /// Whether `accounts.balance` caches this account's balance (see `Ledger`'s docs).
    pub(crate) fn caches_balance(self) -> bool {
        matches!(self, AccountKind::Client | AccountKind::Clearing)
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub kind: AccountKind,
    pub external_id: String,
    pub created_at_ms: UnixMillis,
}

/// `total` is the sum of the account's entries; `held` the sum of its active holds;
/// `available = total - held` is what a new hold may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub total: i64,
    pub held: i64,
    pub available: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// Reserving `amount` of the client's balance.
    Active,
    /// Closed by `capture`.
    Captured,
    /// Closed by `release`.
    Released,
    /// Closed by `reap_expired` after `expires_at_ms`.
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Captured => "captured",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "active" => HoldStatus::Active,
            "captured" => HoldStatus::Captured,
            "released" => HoldStatus::Released,
            "expired" => HoldStatus::Expired,
            other => return Err(Error::Corrupt(format!("hold status {other:?}"))),
        })
    }
}

/// A reservation of a client's balance for one job. The model's price and the network fee
/// are fixed when the hold is placed: a price change never affects a job in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub job_id: Uuid,
    pub client: AccountId,
    pub model: String,
    pub amount: i64,
    pub price: Price,
    pub fee_bps: u32,
    pub status: HoldStatus,
    pub created_at_ms: UnixMillis,
    pub expires_at_ms: UnixMillis,
    /// When it was captured, released or reaped.
    pub closed_at_ms: Option<UnixMillis>,
    /// The API key whose budgets it counts against, and the periods it counts in
    /// (`day:YYYY-MM-DD`, `month:YYYY-MM`, UTC); `None` where no budget applied.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub budget_day: Option<String>,
    #[serde(default)]
    pub budget_month: Option<String>,
}

/// An API key's spend budgets, in nanoTON (`None`: no limit for that period). See
/// `ledger::budgets` for how holds count against them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBudget {
    pub key_id: String,
    pub daily_nanoton: Option<i64>,
    pub monthly_nanoton: Option<i64>,
}

impl KeyBudget {
    /// `None` when the key has neither budget.
    pub fn new(key_id: &str, daily_nanoton: Option<i64>, monthly_nanoton: Option<i64>) -> Option<Self> {
        (daily_nanoton.is_some() || monthly_nanoton.is_some()).then(|| Self { key_id: key_id.to_owned(), daily_nanoton, monthly_nanoton })
    }
}

/// Which budget a hold did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl std::fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BudgetPeriod::Day => "daily",
            BudgetPeriod::Month => "monthly",
        })
    }
}

/// How much a hold reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldAmount {
    /// Exactly this many nanoTON (more than 0).
    Fixed(i64),
    /// What `usage` costs at `coefficient` thousandths, at the model's price and the fee the
    /// hold fixes, and at least 1 nanoTON (so every request has a hold). Priced inside the
    /// hold's own transaction, from the same price row it fixes: the amount can never be
    /// computed from a price other than the one the capture will charge, and the caller
    /// needs no read of its own.
    WorstCase { usage: crate::money::Usage, coefficient: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// A new hold was written.
    Placed(Hold),
    /// A hold with this job id already existed (in whatever status); nothing was written.
    /// The caller compares it with what it asked for.
    AlreadyExists(Hold),
}

impl HoldOutcome {
    pub fn hold(&self) -> &Hold {
        match self {
            HoldOutcome::Placed(h) | HoldOutcome::AlreadyExists(h) => h,
        }
    }
}

/// One captured job: what was billed, to whom, and why. Also a row of `Ledger::usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub job_id: Uuid,
    pub client: AccountId,
    pub worker: AccountId,
    pub model: String,
    pub usage: Usage,
    /// The worker's price coefficient used (thousandths).
    pub coefficient: u32,
    /// Full cost by the rounding rule, before any cap.
    pub cost: i64,
    /// What was actually moved: `billed.charge = min(cost, hold + client's other available)`.
    pub billed: Breakdown,
    /// `cost - billed.charge`: written off, charged to nobody, paid to nobody.
    pub shortfall: i64,
    /// The hold's amount.
    pub held: i64,
    /// Ledger transaction holding the entries.
    pub transaction: i64,
    pub at_ms: UnixMillis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// Charged now.
    Captured(Receipt),
    /// Captured before; nothing changed. The original receipt.
    AlreadyCaptured(Receipt),
    /// The hold was released or reaped before; nothing changed and nothing is charged.
    AlreadyReleased(Hold),
}

impl CaptureOutcome {
    /// The receipt, new or earlier.
    pub fn receipt(&self) -> Option<&Receipt> {
        match self {
            CaptureOutcome::Captured(r) | CaptureOutcome::AlreadyCaptured(r) => Some(r),
            CaptureOutcome::AlreadyReleased(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Released now; the hold as it is now.
    Released(Hold),
    /// Captured, released or reaped before; nothing changed.
    AlreadyClosed(Hold),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditOutcome {
    /// Credited now by ledger transaction `.0`.
    Credited(i64),
    /// This idempotency key was credited before by transaction `.0`; nothing changed.
    AlreadyApplied(i64),
}

/// A worker's money: `balance` (sum of entries, what is owed to it now) and what it
/// earned in total over `jobs` captured jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEarnings {
    pub balance: i64,
    pub earned: i64,
    pub jobs: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub model: String,
    pub price: Price,
    pub updated_at_ms: UnixMillis,
}

/// One broken invariant found by `Ledger::check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum Violation {
    /// A transaction whose entries do not sum to zero.
    UnbalancedTransaction { transaction: i64, sum: i64 },
    /// A client account whose entries sum below zero.
    NegativeClientBalance { account: AccountId, balance: i64 },
    /// `accounts.balance` differs from the sum of entries (for kinds that do not cache,
    /// the cached column must stay 0).
    CachedBalanceMismatch {
        account: AccountId,
        cached: i64,
        entries: i64,
    },
    /// `accounts.held` differs from the sum of the account's active holds, or exceeds its
    /// balance, or is negative.
    HeldMismatch {
        account: AccountId,
        cached: i64,
        active_holds: i64,
        balance: i64,
    },
    /// A hold with more than one charge row, or a captured hold with none, or a charge
    /// whose hold is not captured.
    HoldCaptureMismatch {
        job_id: String,
        status: String,
        charges: i64,
    },
    /// A job with more than one capture transaction.
    JobChargedTwice { job_id: String, transactions: i64 },
    /// A charge row whose amounts disagree with its own split or with its entries.
    ChargeMismatch { job_id: String, detail: String },
    /// The sum over all accounts is not zero.
    LedgerNotZero { sum: i64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnbalancedTransaction { transaction, sum } => {
                write!(f, "transaction {transaction}: entries sum to {sum}, not 0")
            }
            Violation::NegativeClientBalance { account, balance } => {
                write!(f, "client account {account}: balance {balance} < 0")
            }
            Violation::CachedBalanceMismatch {
                account,
                cached,
                entries,
            } => {
                write!(
                    f,
                    "account {account}: cached balance {cached} != entries {entries}"
                )
            }
            Violation::HeldMismatch {
                account,
                cached,
                active_holds,
                balance,
            } => write!(
                f,
                "account {account}: held {cached}, active holds {active_holds}, balance {balance}"
            ),
            Violation::HoldCaptureMismatch {
                job_id,
                status,
                charges,
            } => {
                write!(
                    f,
                    "hold {job_id}: status {status} with {charges} charge rows"
                )
            }
            Violation::JobChargedTwice {
                job_id,
                transactions,
            } => {
                write!(f, "job {job_id}: {transactions} capture transactions")
            }
            Violation::ChargeMismatch { job_id, detail } => write!(f, "charge {job_id}: {detail}"),
            Violation::LedgerNotZero { sum } => write!(f, "all accounts sum to {sum}, not 0"),
        }
    }
}
