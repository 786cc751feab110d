//! Reading ledger rows back into values; the column lists the readers expect.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{get_u32, get_u64};
use crate::error::{Error, Result};
use crate::money::{Breakdown, Price, Usage};
use crate::types::{AccountId, Hold, HoldStatus, Receipt};

/// Columns of `holds h` that [`hold_from_row`] reads.
macro_rules! hold_columns {
    () => {
        "h.job_id, h.account_id, h.model, h.amount, h.price_prompt, h.price_cached_prompt, \
         h.price_completion, h.price_reasoning, h.fee_bps, h.status, h.created_at, \
         h.expires_at, h.closed_at, h.key_id, h.budget_day, h.budget_month"
    };
}

/// A hold and its client account, both locked.
macro_rules! hold_and_account {
    () => {
        concat!(
            "SELECT ",
            $crate::ledger::rows::hold_columns!(),
            ", a.balance, a.held, \
             (SELECT w.kind FROM accounts w WHERE w.id = $2) AS worker_kind \
             FROM holds h JOIN accounts a ON a.id = h.account_id WHERE h.job_id = $1"
        )
    };
}

/// Columns of `charges` that [`receipt_from_row`] reads.
macro_rules! charge_columns {
    () => {
        "job_id, transaction_id, client_id, worker_id, model, prompt_tokens, \
         cached_prompt_tokens, completion_tokens, reasoning_tokens, coefficient, cost, charge, \
         worker_amount, fee, shortfall, held, created_at"
    };
}
pub(crate) use {charge_columns, hold_and_account, hold_columns};

pub(crate) fn parse_job(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| Error::Corrupt(format!("job id {s:?}")))
}

pub(crate) fn hold_from_row(row: &AnyRow) -> Result<Hold> {
    Ok(Hold {
        job_id: parse_job(row.try_get("job_id")?)?,
        client: AccountId(row.try_get("account_id")?),
        model: row.try_get("model")?,
        amount: row.try_get("amount")?,
        price: Price {
            prompt: row.try_get("price_prompt")?,
            cached_prompt: row.try_get("price_cached_prompt")?,
            completion: row.try_get("price_completion")?,
            reasoning: row.try_get("price_reasoning")?,
        },
        fee_bps: get_u32(row, "fee_bps")?,
        status: HoldStatus::parse(row.try_get("status")?)?,
        created_at_ms: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        closed_at_ms: row.try_get("closed_at")?,
        key_id: row.try_get("key_id")?,
        budget_day: row.try_get("budget_day")?,
        budget_month: row.try_get("budget_month")?,
    })
}

pub(crate) fn receipt_from_row(row: &AnyRow) -> Result<Receipt> {
    Ok(Receipt {
        job_id: parse_job(row.try_get("job_id")?)?,
        client: AccountId(row.try_get("client_id")?),
        worker: AccountId(row.try_get("worker_id")?),
        model: row.try_get("model")?,
        usage: Usage {
            prompt_tokens: get_u64(row, "prompt_tokens")?,
            cached_prompt_tokens: get_u64(row, "cached_prompt_tokens")?,
            completion_tokens: get_u64(row, "completion_tokens")?,
            reasoning_tokens: get_u64(row, "reasoning_tokens")?,
        },
        coefficient: get_u32(row, "coefficient")?,
        cost: row.try_get("cost")?,
        billed: Breakdown {
            charge: row.try_get("charge")?,
            worker: row.try_get("worker_amount")?,
            fee: row.try_get("fee")?,
        },
        shortfall: row.try_get("shortfall")?,
        held: row.try_get("held")?,
        transaction: row.try_get("transaction_id")?,
        at_ms: row.try_get("created_at")?,
    })
}
