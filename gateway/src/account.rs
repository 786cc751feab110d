//! Money endpoints: a client's balance and usage history, a worker's earnings and payouts.
//!
//! Authenticated like the inference routes (API key or JWT); the account read is always the
//! caller's own. A worker's earnings are readable by its operator: a principal whose account
//! name is the worker's id (`cocoon keys create --account <worker_id>`, or a JWT with that
//! `sub`); for anyone else the worker does not exist (404 `worker_not_found`), so worker ids
//! cannot be probed. Amounts are integers in nanoTON; the `*_ton` strings are the same amounts
//! as exact decimals in TON, for display. A gateway without a ledger answers 404
//! `billing_disabled`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use protocol::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::billing::{Meter, MeterError, PayoutStatus};
use crate::error::ApiError;
use crate::state::AppState;

/// Rows `GET /v1/account/usage` returns when `limit` is not given.
pub const DEFAULT_USAGE_LIMIT: u32 = 20;
/// The most rows one `GET /v1/account/usage` returns.
pub const MAX_USAGE_LIMIT: u32 = 100;

const NANOTON_PER_TON: u64 = 1_000_000_000;

/// `nanoton` as an exact decimal in TON: `1500000000` → `"1.5"`, `-1` → `"-0.000000001"`.
pub fn ton_string(nanoton: i64) -> String {
    let sign = if nanoton < 0 { "-" } else { "" };
    // unsigned_abs: i64::MIN has no positive i64.
    let abs = nanoton.unsigned_abs();
    let (whole, frac) = (abs / NANOTON_PER_TON, abs % NANOTON_PER_TON);
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// The ledger, or 404 `billing_disabled` when this gateway runs without one.
pub(crate) fn meter(state: &AppState) -> Result<&dyn Meter, ApiError> {
    state.meter.as_deref().ok_or(ApiError::BillingDisabled)
}

pub(crate) fn ledger_error(e: MeterError) -> ApiError {
    // Reads fail only when the ledger cannot be reached: 503 with Retry-After; the detail
    // is logged, not shown.
    tracing::error!(error = %e, "account read failed: the ledger is unavailable");
    ApiError::LedgerUnavailable(e.to_string())
}

/// `GET /v1/account/balance`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BalanceResponse {
    /// Always `account.balance`.
    #[schema(example = "account.balance")]
    pub object: String,
    /// The account the presented key or JWT bills.
    pub account: String,
    /// Sum of the account's ledger entries, nanoTON.
    pub total: i64,
    /// Reserved by requests in flight (each holds its worst case until it ends), nanoTON.
    pub held: i64,
    /// `total - held`: what new requests may reserve, nanoTON.
    pub available: i64,
    #[schema(example = "1000.5")]
    pub total_ton: String,
    pub held_ton: String,
    pub available_ton: String,
}

#[utoipa::path(
    get, path = "/v1/account/balance", tag = "account",
    responses(
        (status = 200, description = "The caller's balance: total, held by requests in flight, and available", body = BalanceResponse),
        (status = 401, description = "Missing or invalid API key / JWT", body = ErrorBody),
        (status = 404, description = "Billing is disabled on this gateway (`billing_disabled`)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be reached (`billing_unavailable`); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn balance(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<BalanceResponse>, ApiError> {
    let b = meter(&state)?
        .balance(&principal.account)
        .await
        .map_err(ledger_error)?;
    Ok(Json(BalanceResponse {
        object: "account.balance".into(),
        account: principal.account,
        total: b.total,
        held: b.held,
        available: b.available,
        total_ton: ton_string(b.total),
        held_ton: ton_string(b.held),
        available_ton: ton_string(b.available),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// How many records, newest first: 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Tokens billed for one request, by class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BilledTokens {
    pub prompt_tokens: u64,
    /// Prompt tokens served from the engine's cache (billed at the cached price).
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

/// One charged request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecordResponse {
    /// Always `account.usage`.
    #[schema(example = "account.usage")]
    pub object: String,
    /// The request's job id: its `x-request-id`.
    #[schema(value_type = String, example = "0193f5b2-7c1e-7d35-9a8e-4c1f0e2b6a10")]
    pub job_id: Uuid,
    pub model: String,
    pub usage: BilledTokens,
    /// The serving worker's price coefficient in thousandths (1000 = 1.0×).
    pub worker_coefficient: u32,
    /// What the account was charged, nanoTON: the response's `x-cocoon-cost-nanoton`.
    pub charge: i64,
    pub charge_ton: String,
    /// Full cost by the price, nanoTON. Above `charge` only when a request cost more than
    /// the account could cover; the difference was written off.
    pub cost: i64,
    /// When it was charged, Unix seconds.
    pub created_at: i64,
    /// When it was charged, Unix milliseconds.
    pub created_at_ms: i64,
    /// The serving worker's signed receipt for this request, as it came with the answer
    /// (`x-cocoon-receipt`): base64url of its JSON. Verify it with `cocoon receipt verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// `GET /v1/account/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageList {
    /// Always `list`.
    #[schema(example = "list")]
    pub object: String,
    /// Newest first.
    pub data: Vec<UsageRecordResponse>,
    /// Older records exist beyond `limit`.
    pub has_more: bool,
}

#[utoipa::path(
    get, path = "/v1/account/usage", tag = "account",
    params(UsageQuery),
    responses(
        (status = 200, description = "The caller's charged requests, newest first", body = UsageList),
        (status = 400, description = "`limit` out of range (`param` = `limit`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key / JWT", body = ErrorBody),
        (status = 404, description = "Billing is disabled on this gateway (`billing_disabled`)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be reached (`billing_unavailable`); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageList>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid("limit", format!("Invalid query string: {}", e.body_text()))
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_USAGE_LIMIT);
    if !(1..=MAX_USAGE_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and {MAX_USAGE_LIMIT}, got {limit}"),
        ));
    }
    // One more than asked tells whether there are more.
    let mut rows = meter(&state)?
        .usage(&principal.account, limit + 1)
        .await
        .map_err(ledger_error)?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let data = rows.into_iter().map(usage_record).collect();
    Ok(Json(UsageList {
        object: "list".into(),
        data,
        has_more,
    }))
}

/// The response shape of one charged request.
pub(crate) fn usage_record(r: crate::billing::UsageRecord) -> UsageRecordResponse {
    UsageRecordResponse {
        object: "account.usage".into(),
        job_id: r.job_id,
        model: r.model,
        usage: BilledTokens {
            prompt_tokens: r.prompt_tokens,
            cached_prompt_tokens: r.cached_prompt_tokens,
            completion_tokens: r.completion_tokens,
            reasoning_tokens: r.reasoning_tokens,
        },
        worker_coefficient: r.coefficient,
        charge: r.charge,
        charge_ton: ton_string(r.charge),
        cost: r.cost,
        created_at: r.at_ms.div_euclid(1000),
        created_at_ms: r.at_ms,
        receipt: r.receipt,
    }
}

/// One payout of a worker's balance to its TON wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PayoutResponse {
    pub id: i64,
    /// nanoTON.
    pub amount: i64,
    pub amount_ton: String,
    pub status: PayoutStatus,
    /// Destination wallet, raw form `wc:hex`.
    pub address: String,
    /// Hash of the wallet transaction that carried it, once confirmed.
    pub tx_hash: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub confirmed_at_ms: Option<i64>,
}

/// `GET /v1/workers/{worker_id}/earnings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EarningsResponse {
    /// Always `worker.earnings`.
    #[schema(example = "worker.earnings")]
    pub object: String,
    pub worker_id: String,
    /// Owed to the worker now (earned minus paid out), nanoTON.
    pub balance: i64,
    /// Earned over all time (charges minus the network fee), nanoTON.
    pub earned: i64,
    /// Requests charged with this worker as the server.
    pub jobs: i64,
    pub balance_ton: String,
    pub earned_ton: String,
    /// Where payouts go (raw form `wc:hex`); none until the operator sets one.
    pub payout_address: Option<String>,
    /// The most recent payouts (at most 20), newest first, with their on-chain state.
    pub payouts: Vec<PayoutResponse>,
}

#[utoipa::path(
    get, path = "/v1/workers/{worker_id}/earnings", tag = "account",
    params(("worker_id" = String, Path, description = "The worker's id (`worker.worker_id`); the caller's account must be this id")),
    responses(
        (status = 200, description = "The worker's balance, lifetime earnings, charged jobs and payouts", body = EarningsResponse),
        (status = 401, description = "Missing or invalid API key / JWT", body = ErrorBody),
        (status = 404, description = "Not the caller's worker (`worker_not_found`), or billing is disabled (`billing_disabled`)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be reached (`billing_unavailable`); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn worker_earnings(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EarningsResponse>, ApiError> {
    let Path(worker_id) = path.map_err(|e| ApiError::invalid("worker_id", e.body_text()))?;
    let meter = meter(&state)?;
    // Worker operators hold keys in their own namespace (`worker:<id>`): a client account
    // that happens to share a worker's name reads nothing of it.
    if principal.worker() != Some(worker_id.as_str()) {
        return Err(ApiError::WorkerNotFound(worker_id));
    }
    let e = meter
        .worker_earnings(&worker_id)
        .await
        .map_err(ledger_error)?;
    Ok(Json(earnings_response(worker_id, e)))
}

/// The response shape of a worker's earnings (also shown on the dashboard).
pub fn earnings_response(worker_id: String, e: crate::billing::WorkerEarnings) -> EarningsResponse {
    EarningsResponse {
        object: "worker.earnings".into(),
        balance: e.balance,
        earned: e.earned,
        jobs: e.jobs,
        balance_ton: ton_string(e.balance),
        earned_ton: ton_string(e.earned),
        payout_address: e.payout_address,
        payouts: e
            .payouts
            .into_iter()
            .map(|p| PayoutResponse {
                amount_ton: ton_string(p.amount),
                id: p.id,
                amount: p.amount,
                status: p.status,
                address: p.address,
                tx_hash: p.tx_hash,
                created_at_ms: p.created_at_ms,
                sent_at_ms: p.sent_at_ms,
                confirmed_at_ms: p.confirmed_at_ms,
            })
            .collect(),
        worker_id,
    }
}

#[cfg(test)]
mod tests {
    use super::ton_string;

    #[test]
    fn ton_strings_are_exact() {
        assert_eq!(ton_string(0), "0");
        assert_eq!(ton_string(1), "0.000000001");
        assert_eq!(ton_string(1_500_000_000), "1.5");
        assert_eq!(ton_string(2_000_000_000), "2");
        assert_eq!(ton_string(-1_000_000_001), "-1.000000001");
        assert_eq!(ton_string(i64::MAX), "9223372036.854775807");
        assert_eq!(ton_string(i64::MIN), "-9223372036.854775808");
    }
}
