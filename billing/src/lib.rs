//! Billing ledger of Cocoon-rs: a double-entry nanoTON ledger with per-model prices and
//! holds/captures keyed by job id, on Postgres (production) or SQLite (embedded default)
//! through the same code. It knows no HTTP and no engine.
//!
//! # Public API (what the gateway and the CLI call)
//!
//! ```text
//! // connect, migrate
//! Ledger::connect(url: &str, options: LedgerOptions) -> Result<Ledger>
//!     // url: "postgres://user@host:5432/db" | "sqlite:path/ledger.db" (created) | "sqlite::memory:"
//!     // LedgerOptions { fee_bps, max_connections, acquire_timeout, group_commit: bool,
//!     //                 commit_window: Duration, batch_only_contended: bool }  (docs/ledger.md)
//! Ledger::backend(&self) -> Backend            // Postgres | Sqlite
//! Ledger::fee_account(&self) -> AccountId
//! Ledger::clearing_account(&self) -> AccountId // deposits clearing = TON hot wallet
//! Ledger::fee_bps(&self) -> u32
//! Ledger::group_commit_stats(&self) -> Option<GroupCommitStats> // batches, calls, failed_batches
//! Ledger::close(&self)                         // async
//!
//! // accounts and money in                      (all async, all -> Result<_>)
//! ensure_account(&self, kind: AccountKind, external_id: &str) -> AccountId   // Client | Worker
//! find_account(&self, kind: AccountKind, external_id: &str) -> Option<Account>
//! account(&self, id: AccountId) -> Option<Account>
//! credit(&self, client: AccountId, amount: i64, idempotency_key: &str, memo: &str) -> CreditOutcome
//! balance(&self, account: AccountId) -> Balance                  // { total, held, available }
//! worker_earnings(&self, worker: AccountId) -> WorkerEarnings    // { balance, earned, jobs }
//!
//! // prices (nanoTON per 1M tokens)
//! set_price(&self, model: &str, price: Price) -> ()
//! price(&self, model: &str) -> Option<Price>
//! prices(&self) -> Vec<ModelPrice>
//!
//! // request life cycle, keyed by job id
//! hold(&self, job_id: Uuid, client: AccountId, model: &str, amount: i64, ttl: Duration) -> HoldOutcome
//!     // Err(Error::InsufficientFunds { available, needed }) -> HTTP 402 insufficient_quota
//! hold_amount(&self, .., amount: HoldAmount, ttl, budget: Option<&KeyBudget>) -> HoldOutcome
//!     // HoldAmount::WorstCase { usage, coefficient }: priced in the hold from the price it fixes
//! capture(&self, job_id: Uuid, worker: AccountId, usage: Usage, coefficient: u32) -> CaptureOutcome
//! capture_with_receipt(&self, .., receipt: Option<&StoredReceipt>) -> CaptureOutcome // one commit
//!     // Captured(Receipt) | AlreadyCaptured(Receipt) | AlreadyReleased(Hold)
//! release(&self, job_id: Uuid) -> ReleaseOutcome // Released(Hold) | AlreadyClosed(Hold)
//! reap_expired(&self, now: SystemTime) -> Vec<Hold>
//! find_hold(&self, job_id: Uuid) -> Option<Hold>
//! receipt(&self, job_id: Uuid) -> Option<Receipt>
//! usage(&self, client: AccountId, limit: u32) -> Vec<Receipt>   // newest first
//!
//! // API keys (gateway::keys caches them; every change bumps one version counter)
//! insert_api_key(&self, &NewApiKey) -> Option<ApiKeyRow>  // None: id taken
//! revoke_api_key / rename_api_key(&self, id, account: Option<&str>, ..) -> Option<ApiKeyRow>
//! api_key(&self, id) / api_keys(&self, account: Option<&str>) / api_keys_since(&self, version)
//!
//! // dashboard: sign-in identities, single-use nonces, usage by day, workers by address
//! sign_in_identity(&self, provider, subject, new_account, label) -> Identity
//! use_nonce(&self, nonce, purpose, expires_at_ms) -> bool      // true the first time only
//! daily_usage(&self, client, since_ms) -> Vec<DailyUsage>
//! workers_paid_to(&self, raw_address) -> Vec<String>
//!
//! // books
//! check(&self) -> Vec<Violation>               // empty = every invariant holds
//!
//! // pure money arithmetic
//! cost(price: Price, usage: Usage, coefficient: u32, fee_bps: u32) -> Result<Breakdown>
//! split(charge: i64, fee_bps: u32) -> Result<Breakdown>          // Breakdown { charge, worker, fee }
//! Usage: From<&protocol::openai::Usage>
//! ```
//!
//! The gateway's flow: `hold` the worst case before routing (402 on
//! `InsufficientFunds`); on the final usage `capture` (its receipt's `billed.charge` is the
//! `x-cocoon-cost-nanoton` header); on failure before any token, `release`; a drop guard
//! makes sure one of the two always runs, and a periodic `reap_expired` catches holds
//! whose process died. Every call is idempotent by its key (job id, or the credit's
//! idempotency key), so any of them may be retried after an error or a crash.
//!
//! The rounding rule is written once, in [`money`]. How concurrency is handled (row
//! locks), which balances are cached and why the `Any` driver: see [`Ledger`]. What
//! happens when a capture costs more than its hold: see [`Ledger::capture`]. Migrations:
//! `migrations/postgres` and `migrations/sqlite` at the workspace root, embedded at
//! build time and applied by [`Ledger::connect`].

mod error;
mod ledger;
pub mod money;
mod types;

pub use error::{Error, Result};
pub use ledger::ton::{
    deposit_key, is_raw_address, normalize_deposit_code, BatchItem, BatchResult, BatchStatus,
    Deposit, DepositFilter, DepositInput, DepositOutcome, DepositStatus, NewBatch, Payout,
    PayoutAddress, PayoutBatch, PayoutFilter, PayoutStatus, PrepareOutcome, RejectReason,
    Rejection, TonCursor, TonViolation, DEPOSIT_CODE_LEN, MAX_BATCH_PAYOUTS,
};
pub use ledger::dashboard::{DailyUsage, Identity, IdentityProvider};
pub use ledger::keys::{ApiKeyRow, KeyControls, NewApiKey};
pub use ledger::{Backend, GroupCommitStats, Ledger, LedgerOptions, StoredReceipt};
pub use money::{cost, split, Breakdown, Price, Usage};
pub use types::{
    Account, AccountId, AccountKind, Balance, BudgetPeriod, CaptureOutcome, CreditOutcome, Hold, HoldAmount, HoldOutcome, KeyBudget,
    HoldStatus, ModelPrice, Receipt, ReleaseOutcome, UnixMillis, Violation, WorkerEarnings,
};
