//! TON settlement in the books: deposit codes, deposits seen on chain (credited exactly once
//! by `(tx hash, lt)`), the deposit watcher's cursor, worker payout addresses and the payout
//! outbox with its batches.
//!
//! The chain side (parsing transactions, signing wallet messages, talking to a TON HTTP
//! API) lives in the `ton` crate; this module only decides and records, each step in one
//! database transaction, so that the watcher and the sender can crash anywhere and resume.
//!
//! One file a concern:
//! - `codes`: deposit codes, issued to clients and read back from transfer comments;
//! - `deposits`: incoming transfers, credited once or kept for review, and the watcher's
//!   cursor;
//! - `payouts`: worker payout addresses and the payout outbox;
//! - `batches`: the signed wallet messages that carry payouts, stored and settled as the
//!   `ton` crate reports;
//! - `check`: the TON tables checked against the books.
//!
//! This file re-exports their public items and holds the row readers they share.

mod batches;
mod check;
mod codes;
mod deposits;
mod payouts;

pub use batches::{
    BatchItem, BatchResult, BatchStatus, NewBatch, PayoutBatch, PrepareOutcome, MAX_BATCH_PAYOUTS,
};
pub use check::TonViolation;
pub use codes::{normalize_deposit_code, DEPOSIT_CODE_LEN};
pub use deposits::{
    deposit_key, Deposit, DepositFilter, DepositInput, DepositOutcome, DepositStatus, RejectReason,
    Rejection, TonCursor,
};
pub use payouts::{is_raw_address, Payout, PayoutAddress, PayoutFilter, PayoutStatus};

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Error, Result};

fn get_u64(row: &AnyRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{col} = {v}")))
}

fn get_u32(row: &AnyRow, col: &str) -> Result<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{col} = {v}")))
}

fn get_flag(row: &AnyRow, col: &str) -> Result<bool> {
    match row.try_get::<i64, _>(col)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Error::Corrupt(format!("{col} = {v}"))),
    }
}

fn lt_i64(lt: u64) -> Result<i64> {
    i64::try_from(lt).map_err(|_| Error::Overflow("lt exceeds i64"))
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

fn limit_of(limit: u32) -> i64 {
    i64::from(if limit == 0 { 100 } else { limit })
}
