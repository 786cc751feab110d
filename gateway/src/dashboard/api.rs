//! `/v1/dashboard/*`: sign-in, the caller's keys, balance and deposits, usage by day, and
//! the workers the caller operates. Every handler reads or changes the caller's own data
//! only; another account's key or worker is "not found".

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use billing::{AccountKind, IdentityProvider};
use protocol::ErrorBody;
use serde::{Deserialize, Serialize};
use tonlib_core::cell::{BagOfCells, CellBuilder};
use utoipa::{IntoParams, ToSchema};

use super::session::SignInMethod;
use super::ton_proof::{self, TonProofRequest};
use super::workers::WorkerStatus;
use super::{dashboard, Dashboard, DashboardUser};
use crate::account::{earnings_response, ledger_error, meter, ton_string, usage_record, BalanceResponse, EarningsResponse, UsageRecordResponse};
use crate::error::ApiError;
use crate::keys::{KeyControls, KeyRecord, KeyStoreError};
use crate::ratelimit::Limits;
use crate::state::AppState;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn db_error(e: billing::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| ApiError::InvalidRequest {
        message: format!("Invalid request body: {}", e.body_text()),
        param: None,
        code: Some("invalid_json"),
    })
}

// ---------------------------------------------------------------------------------------
// Public configuration

/// What the dashboard page needs before anyone signs in.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DashboardInfo {
    /// Always `dashboard.config`.
    pub object: String,
    pub app_name: String,
    /// Telegram Mini App sign-in is configured.
    pub telegram_sign_in: bool,
    /// The bot's @username, when configured.
    pub telegram_bot_username: Option<String>,
    /// TON Connect sign-in is configured (a `ton_proof` domain is set).
    pub ton_sign_in: bool,
    /// `mainnet` or `testnet`.
    pub ton_network: String,
    /// Where to send TON to top up, when deposits are on.
    pub deposit_address: Option<String>,
    /// Block explorer link of a transaction, `{hash}` = its hash.
    pub explorer_tx_url: String,
    /// Balances, usage and earnings exist (the gateway has a ledger).
    pub billing_enabled: bool,
}

#[utoipa::path(
    get, path = "/v1/dashboard/config", tag = "dashboard",
    responses(
        (status = 200, description = "Which sign-in methods and features this gateway's dashboard offers", body = DashboardInfo),
        (status = 404, description = "The dashboard is disabled (`dashboard_disabled`)", body = ErrorBody),
    )
)]
pub async fn config(State(state): State<AppState>) -> Result<Json<DashboardInfo>, ApiError> {
    let d = dashboard(&state)?;
    Ok(Json(DashboardInfo {
        object: "dashboard.config".into(),
        app_name: d.cfg.app_name.clone(),
        telegram_sign_in: d.telegram.is_some(),
        telegram_bot_username: d.cfg.telegram.bot_username.clone(),
        ton_sign_in: d.ton_proof.is_some(),
        ton_network: if d.ctx.testnet { "testnet" } else { "mainnet" }.into(),
        deposit_address: d.ctx.deposit_address.clone(),
        explorer_tx_url: d.explorer_tx_url(),
        billing_enabled: state.meter.is_some(),
    }))
}

// ---------------------------------------------------------------------------------------
// Sign-in

/// A new dashboard session. Send `token` as `Authorization: Bearer <token>`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// Always `dashboard.session`.
    pub object: String,
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The client account signed into.
    pub account: String,
    pub via: SignInMethod,
    pub label: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TelegramSignInRequest {
    /// `Telegram.WebApp.initData`: the raw query string the Mini App was launched with.
    pub init_data: String,
}

fn session_response(d: &Dashboard, account: &str, via: SignInMethod, ton: Option<String>, tg: Option<i64>, label: &str) -> Result<Json<SessionResponse>, ApiError> {
    let (token, expires_at) = d
        .sessions
        .issue(account, via, ton, tg, label)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(SessionResponse {
        object: "dashboard.session".into(),
        token,
        expires_at,
        account: account.to_owned(),
        via,
        label: label.to_owned(),
    }))
}

#[utoipa::path(
    post, path = "/v1/dashboard/auth/telegram", tag = "dashboard",
    request_body = TelegramSignInRequest,
    responses(
        (status = 200, description = "Signed in: a session for the Telegram user's account (`tg:<user id>` on first sign-in)", body = SessionResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "The initData did not verify: wrong hash or signature, too old, no user (`invalid_init_data`)", body = ErrorBody),
        (status = 404, description = "Telegram sign-in is not configured (`telegram_sign_in_disabled`)", body = ErrorBody),
    )
)]
pub async fn sign_in_telegram(
    State(state): State<AppState>,
    body: Result<Json<TelegramSignInRequest>, JsonRejection>,
) -> Result<Json<SessionResponse>, ApiError> {
    let d = dashboard(&state)?;
    let req = json_body(body)?;
    let verifier = d.telegram.as_ref().ok_or_else(|| ApiError::NotFound {
        message: "Telegram sign-in is not configured (gateway.dashboard.telegram.bot_token or bot_id)".into(),
        code: "telegram_sign_in_disabled",
    })?;
    let ok = verifier.verify(&req.init_data, now_secs()).map_err(|e| ApiError::SignInFailed {
        message: e.to_string(),
        code: "invalid_init_data",
    })?;
    let label = ok.user.label();
    let identity = d
        .db
        .sign_in_identity(IdentityProvider::Telegram, &ok.user.id.to_string(), &format!("tg:{}", ok.user.id), &label)
        .await
        .map_err(db_error)?;
    tracing::info!(account = %identity.account, "dashboard sign-in with Telegram");
    session_response(d, &identity.account, SignInMethod::Telegram, None, Some(ok.user.id), &label)
}

/// A payload to put in TON Connect's `ton_proof` request.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TonPayloadResponse {
    /// Always `dashboard.ton_proof_payload`.
    pub object: String,
    pub payload: String,
    /// Unix seconds; the proof must come back before then, and only once.
    pub expires_at: u64,
}

fn ton_disabled() -> ApiError {
    ApiError::NotFound {
        message: "TON Connect sign-in is not configured (gateway.dashboard.ton_proof.domains or public_url)".into(),
        code: "ton_sign_in_disabled",
    }
}

#[utoipa::path(
    post, path = "/v1/dashboard/auth/ton/payload", tag = "dashboard",
    responses(
        (status = 200, description = "A fresh single-use payload for TON Connect's `ton_proof` request", body = TonPayloadResponse),
        (status = 404, description = "TON sign-in is not configured (`ton_sign_in_disabled`)", body = ErrorBody),
    )
)]
pub async fn ton_payload(State(state): State<AppState>) -> Result<Json<TonPayloadResponse>, ApiError> {
    let d = dashboard(&state)?;
    if d.ton_proof.is_none() {
        return Err(ton_disabled());
    }
    let (payload, expires_at) = d.issue_payload(now_secs());
    Ok(Json(TonPayloadResponse {
        object: "dashboard.ton_proof_payload".into(),
        payload,
        expires_at,
    }))
}

/// Verifies `req` fully: the proof, then the payload (ours, fresh, first use).
async fn verified_proof(d: &Dashboard, req: &TonProofRequest) -> Result<ton_proof::VerifiedTonProof, ApiError> {
    let policy = d.ton_proof.as_ref().ok_or_else(ton_disabled)?;
    let now = now_secs();
    let fail = |e: ton_proof::TonProofError| ApiError::SignInFailed {
        message: e.to_string(),
        code: "invalid_ton_proof",
    };
    let proof = ton_proof::verify(req, policy, now).map_err(fail)?;
    let expires_at = d.check_payload(&proof.payload, now).ok_or_else(|| fail(ton_proof::TonProofError::Payload))?;
    if !d.use_payload(&proof.payload, expires_at).await.map_err(db_error)? {
        return Err(fail(ton_proof::TonProofError::Payload));
    }
    Ok(proof)
}

/// The wallet's user-friendly form (non-bounceable, as wallets show themselves).
fn friendly(raw: &str, testnet: bool) -> String {
    tonlib_core::TonAddress::from_hex_str(raw).map_or_else(|_| raw.to_owned(), |a| a.to_base64_url_flags(true, testnet))
}

#[utoipa::path(
    post, path = "/v1/dashboard/auth/ton", tag = "dashboard",
    request_body = TonProofRequest,
    responses(
        (status = 200, description = "Signed in: a session for the wallet's account (`ton:<raw address>` on first sign-in), operating the workers paid out to it", body = SessionResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "The proof did not verify: state init, signature, domain, age, or a payload not issued here or used before (`invalid_ton_proof`)", body = ErrorBody),
        (status = 404, description = "TON sign-in is not configured (`ton_sign_in_disabled`)", body = ErrorBody),
    )
)]
pub async fn sign_in_ton(
    State(state): State<AppState>,
    body: Result<Json<TonProofRequest>, JsonRejection>,
) -> Result<Json<SessionResponse>, ApiError> {
    let d = dashboard(&state)?;
    let req = json_body(body)?;
    let proof = verified_proof(d, &req).await?;
    let label = friendly(&proof.address, d.ctx.testnet);
    let identity = d
        .db
        .sign_in_identity(IdentityProvider::Ton, &proof.address, &format!("ton:{}", proof.address), &label)
        .await
        .map_err(db_error)?;
    tracing::info!(account = %identity.account, "dashboard sign-in with TON Connect");
    session_response(d, &identity.account, SignInMethod::Ton, Some(proof.address), None, &label)
}

// ---------------------------------------------------------------------------------------
// Who am I

/// One way of signing into the account.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentityView {
    /// `telegram` or `ton`.
    pub provider: String,
    /// Telegram user id, or the wallet's raw address.
    pub subject: String,
    pub label: String,
    /// Unix milliseconds.
    pub last_login_at_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MeResponse {
    /// Always `dashboard.me`.
    pub object: String,
    pub account: String,
    pub via: SignInMethod,
    pub label: String,
    /// The signed-in wallet (raw form), for TON sign-in.
    pub ton_address: Option<String>,
    pub telegram_user_id: Option<i64>,
    pub identities: Vec<IdentityView>,
    /// Ids of the workers this caller operates.
    pub workers: Vec<String>,
}

/// The workers `user` operates: the one an operator's API key is for (account
/// `worker:<id>`), and those whose payout address is its wallet (TON sign-in).
async fn operated_workers(state: &AppState, d: &Dashboard, user: &DashboardUser) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    if let (SignInMethod::ApiKey, Some(worker)) = (user.via, user.account.strip_prefix(crate::auth::WORKER_ACCOUNT_PREFIX)) {
        let known = d.db.find_account(AccountKind::Worker, worker).await.map_err(db_error)?.is_some()
            || state.router.snapshot().iter().any(|w| w.worker_id == worker);
        if known {
            ids.push(worker.to_string());
        }
    }
    if let Some(addr) = &user.ton {
        for w in d.db.workers_paid_to(addr).await.map_err(db_error)? {
            if !ids.contains(&w) {
                ids.push(w);
            }
        }
    }
    Ok(ids)
}

#[utoipa::path(
    get, path = "/v1/dashboard/me", tag = "dashboard",
    responses(
        (status = 200, description = "The signed-in account, how it signed in, and the workers it operates", body = MeResponse),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn me(State(state): State<AppState>, user: DashboardUser) -> Result<Json<MeResponse>, ApiError> {
    let d = dashboard(&state)?;
    let identities = d
        .db
        .identities(&user.account)
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|i| IdentityView {
            provider: i.provider.as_str().into(),
            subject: i.subject,
            label: i.label,
            last_login_at_ms: i.last_login_at_ms,
        })
        .collect();
    let workers = operated_workers(&state, d, &user).await?;
    Ok(Json(MeResponse {
        object: "dashboard.me".into(),
        account: user.account,
        via: user.via,
        label: user.label,
        ton_address: user.ton,
        telegram_user_id: user.tg,
        identities,
        workers,
    }))
}

// ---------------------------------------------------------------------------------------
// Keys

/// An API key as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Always `api_key`.
    pub object: String,
    /// The lookup id: characters 11-22 of the key.
    pub id: String,
    /// How the key starts, for recognising it: `sk-cocoon-<id>…`.
    pub prefix: String,
    pub name: String,
    /// `cli`, `dashboard`, `import`, `dev`.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    pub revoked: bool,
    /// Unix seconds.
    pub revoked_at: Option<u64>,
    /// Requests and tokens per minute; `null` = the gateway's defaults.
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Limits>,
    /// Per-key controls (model allow-list, day / month budgets, price cap), all enforced.
    #[schema(value_type = Object)]
    pub controls: KeyControls,
}

impl From<KeyRecord> for KeyView {
    fn from(k: KeyRecord) -> Self {
        KeyView {
            object: "api_key".into(),
            prefix: format!("{}{}…", crate::keys::KEY_PREFIX, k.id),
            id: k.id,
            name: k.name,
            created_by: k.created_by,
            created_at: k.created_at,
            revoked: k.revoked,
            revoked_at: k.revoked_at,
            limits: k.limits,
            controls: k.controls,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Always `list`.
    pub object: String,
    /// Oldest first, revoked ones included.
    pub data: Vec<KeyView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateKeyRequest {
    /// A label, 1 to 100 characters.
    pub name: String,
}

/// A new key. `key` is shown this once: only its hash is stored.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// Always `api_key.created`.
    pub object: String,
    /// The secret key, `sk-cocoon-…`.
    pub key: String,
    pub record: KeyView,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RenameKeyRequest {
    /// The new label, 1 to 100 characters.
    pub name: String,
}

fn key_error(e: KeyStoreError) -> ApiError {
    match e {
        KeyStoreError::NotFound(id) => ApiError::NotFound {
            message: format!("No API key `{}` on this account", id.chars().take(40).collect::<String>()),
            code: "key_not_found",
        },
        KeyStoreError::InvalidName(m) => ApiError::invalid("name", m),
        other => ApiError::Internal(other.to_string()),
    }
}

#[utoipa::path(
    get, path = "/v1/dashboard/keys", tag = "dashboard",
    responses(
        (status = 200, description = "The account's API keys, revoked ones included", body = KeyList),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_keys(State(state): State<AppState>, user: DashboardUser) -> Result<Json<KeyList>, ApiError> {
    let keys = state.keys.list(Some(&user.account)).await.map_err(key_error)?;
    Ok(Json(KeyList {
        object: "list".into(),
        data: keys.into_iter().map(KeyView::from).collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/dashboard/keys", tag = "dashboard",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Created; the secret is in `key` and is not shown again", body = CreatedKey),
        (status = 400, description = "Bad name (`param` = `name`) or malformed body", body = ErrorBody),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    user: DashboardUser,
    body: Result<Json<CreateKeyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let req = json_body(body)?;
    let new = state.keys.create_by(&req.name, &user.account, None, "dashboard").await.map_err(key_error)?;
    tracing::info!(account = %user.account, key = %new.record.id, "API key created in the dashboard");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            object: "api_key.created".into(),
            key: new.key,
            record: new.record.into(),
        }),
    ))
}

fn key_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|e| ApiError::invalid("key_id", e.body_text()))
}

#[utoipa::path(
    patch, path = "/v1/dashboard/keys/{key_id}", tag = "dashboard",
    params(("key_id" = String, Path, description = "The key's id (`id` in the list)")),
    request_body = RenameKeyRequest,
    responses(
        (status = 200, description = "Renamed", body = KeyView),
        (status = 400, description = "Bad name (`param` = `name`)", body = ErrorBody),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
        (status = 404, description = "No such key on this account (`key_not_found`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rename_key(
    State(state): State<AppState>,
    user: DashboardUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<RenameKeyRequest>, JsonRejection>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(path)?;
    let req = json_body(body)?;
    let rec = state.keys.rename(&id, Some(&user.account), &req.name).await.map_err(key_error)?;
    Ok(Json(rec.into()))
}

#[utoipa::path(
    post, path = "/v1/dashboard/keys/{key_id}/revoke", tag = "dashboard",
    params(("key_id" = String, Path, description = "The key's id (`id` in the list)")),
    responses(
        (status = 200, description = "Revoked (idempotent); every gateway replica refuses it within `gateway.keys_poll_ms`", body = KeyView),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
        (status = 404, description = "No such key on this account (`key_not_found`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    user: DashboardUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(path)?;
    let rec = state.keys.revoke(&id, Some(&user.account)).await.map_err(key_error)?;
    tracing::info!(account = %user.account, key = %rec.id, "API key revoked in the dashboard");
    Ok(Json(rec.into()))
}

// ---------------------------------------------------------------------------------------
// Balance and deposits

/// How to top up with TON.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DepositInfo {
    /// The account's deposit code: the comment of a transfer to `address`.
    pub code: String,
    /// The service wallet (user-friendly form); `null` when TON deposits are off.
    pub address: Option<String>,
    /// The comment as a base64 BoC cell (32-bit zero opcode + the code), for TON Connect's
    /// `sendTransaction` `payload`.
    pub payload_boc: String,
    /// `mainnet` or `testnet`.
    pub network: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DashboardBalance {
    /// Always `dashboard.balance`.
    pub object: String,
    pub balance: BalanceResponse,
    pub deposit: DepositInfo,
}

/// A text comment cell (TEP-74: 32 zero bits, then the text), base64 BoC.
fn comment_boc(text: &str) -> Result<String, ApiError> {
    let mut b = CellBuilder::new();
    b.store_u32(32, 0).map_err(|e| ApiError::Internal(e.to_string()))?;
    b.store_slice(text.as_bytes()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let cell = b.build().map_err(|e| ApiError::Internal(e.to_string()))?;
    BagOfCells::from_root(cell)
        .serialize(false)
        .map(|bytes| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[utoipa::path(
    get, path = "/v1/dashboard/balance", tag = "dashboard",
    responses(
        (status = 200, description = "The account's balance and how to top it up", body = DashboardBalance),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
        (status = 404, description = "Billing is disabled (`billing_disabled`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn balance(State(state): State<AppState>, user: DashboardUser) -> Result<Json<DashboardBalance>, ApiError> {
    let d = dashboard(&state)?;
    let b = meter(&state)?.balance(&user.account).await.map_err(ledger_error)?;
    // The code needs the account row; asking how to pay in is reason enough to create it.
    let client = d.db.ensure_account(AccountKind::Client, &user.account).await.map_err(db_error)?;
    let code = d.db.deposit_code(client).await.map_err(db_error)?;
    Ok(Json(DashboardBalance {
        object: "dashboard.balance".into(),
        balance: BalanceResponse {
            object: "account.balance".into(),
            account: user.account,
            total: b.total,
            held: b.held,
            available: b.available,
            total_ton: ton_string(b.total),
            held_ton: ton_string(b.held),
            available_ton: ton_string(b.available),
        },
        deposit: DepositInfo {
            payload_boc: comment_boc(&code)?,
            code,
            address: d.ctx.deposit_address.clone(),
            network: if d.ctx.testnet { "testnet" } else { "mainnet" }.into(),
        },
    }))
}

// ---------------------------------------------------------------------------------------
// Usage

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Days back from today (UTC), 1 to 90, default 30.
    #[param(minimum = 1, maximum = 90)]
    pub days: Option<u32>,
}

/// One model's charges on one UTC day.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DailyUsageView {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// nanoTON.
    pub charge: i64,
    pub charge_ton: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DashboardUsage {
    /// Always `dashboard.usage`.
    pub object: String,
    pub days: u32,
    /// Oldest day first; days without charges are left out.
    pub daily: Vec<DailyUsageView>,
    /// The 20 most recent charged requests, newest first.
    pub recent: Vec<UsageRecordResponse>,
}

/// Days since the epoch → `YYYY-MM-DD` (proleptic Gregorian, UTC).
pub fn date_of_day(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[utoipa::path(
    get, path = "/v1/dashboard/usage", tag = "dashboard",
    params(UsageParams),
    responses(
        (status = 200, description = "Charges by day and model, and the latest charged requests", body = DashboardUsage),
        (status = 400, description = "`days` out of range (`param` = `days`)", body = ErrorBody),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
        (status = 404, description = "Billing is disabled (`billing_disabled`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    user: DashboardUser,
    query: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<DashboardUsage>, ApiError> {
    let d = dashboard(&state)?;
    let Query(q) = query.map_err(|e| ApiError::invalid("days", format!("Invalid query string: {}", e.body_text())))?;
    let days = q.days.unwrap_or(30);
    if !(1..=90).contains(&days) {
        return Err(ApiError::invalid("days", format!("days must be between 1 and 90, got {days}")));
    }
    let m = meter(&state)?;
    let recent = m.usage(&user.account, 20).await.map_err(ledger_error)?.into_iter().map(usage_record).collect();
    let today = i64::try_from(now_secs() / 86_400).unwrap_or(0);
    let since_ms = (today - i64::from(days) + 1) * 86_400_000;
    let daily = match d.db.find_account(AccountKind::Client, &user.account).await.map_err(db_error)? {
        None => Vec::new(),
        Some(a) => d
            .db
            .daily_usage(a.id, since_ms)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|r| DailyUsageView {
                date: date_of_day(r.day),
                model: r.model,
                requests: r.requests,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                charge_ton: ton_string(r.charge),
                charge: r.charge,
            })
            .collect(),
    };
    Ok(Json(DashboardUsage {
        object: "dashboard.usage".into(),
        days,
        daily,
        recent,
    }))
}

// ---------------------------------------------------------------------------------------
// Workers

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    /// Always `dashboard.worker`.
    pub object: String,
    pub status: WorkerStatus,
    /// Balance, earnings and payouts; `null` when billing is disabled.
    pub earnings: Option<EarningsResponse>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<WorkerView>,
}

async fn worker_view(state: &AppState, d: &Dashboard, worker_id: &str) -> Result<WorkerView, ApiError> {
    let status = d.workers.status(worker_id, &state.router.snapshot());
    let earnings = match state.meter.as_deref() {
        Some(m) => Some(earnings_response(
            worker_id.to_owned(),
            m.worker_earnings(worker_id).await.map_err(ledger_error)?,
        )),
        None => None,
    };
    Ok(WorkerView {
        object: "dashboard.worker".into(),
        status,
        earnings,
    })
}

#[utoipa::path(
    get, path = "/v1/dashboard/workers", tag = "dashboard",
    responses(
        (status = 200, description = "The workers the caller operates: live state, attestation, load, earnings and payouts", body = WorkerList),
        (status = 401, description = "No valid session or API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn workers(State(state): State<AppState>, user: DashboardUser) -> Result<Json<WorkerList>, ApiError> {
    let d = dashboard(&state)?;
    let mut data = Vec::new();
    for id in operated_workers(&state, d, &user).await? {
        data.push(worker_view(&state, d, &id).await?);
    }
    Ok(Json(WorkerList {
        object: "list".into(),
        data,
    }))
}

#[utoipa::path(
    post, path = "/v1/dashboard/workers/{worker_id}/payout-address", tag = "dashboard",
    params(("worker_id" = String, Path, description = "A worker the caller operates")),
    request_body(content = TonProofRequest, description = "A `ton_proof` from the new payout wallet, over a payload from `POST /v1/dashboard/auth/ton/payload`"),
    responses(
        (status = 200, description = "Payouts now go to the wallet that signed the proof", body = WorkerView),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No valid session or API key, or the proof did not verify (`invalid_ton_proof`)", body = ErrorBody),
        (status = 404, description = "Not a worker the caller operates (`worker_not_found`), billing or TON sign-in off", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_payout_address(
    State(state): State<AppState>,
    user: DashboardUser,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<TonProofRequest>, JsonRejection>,
) -> Result<Json<WorkerView>, ApiError> {
    let d = dashboard(&state)?;
    let worker_id = path.map(|Path(w)| w).map_err(|e| ApiError::invalid("worker_id", e.body_text()))?;
    meter(&state)?;
    if !operated_workers(&state, d, &user).await?.contains(&worker_id) {
        return Err(ApiError::WorkerNotFound(worker_id));
    }
    let req = json_body(body)?;
    let proof = verified_proof(d, &req).await?;
    let account = d.db.ensure_account(AccountKind::Worker, &worker_id).await.map_err(db_error)?;
    // Non-bounceable: a wallet that has only signed a proof may not be deployed yet, and a
    // bounceable transfer to it would come back.
    d.db.set_payout_address(account, &proof.address, false).await.map_err(db_error)?;
    tracing::info!(worker = %worker_id, address = %proof.address, "payout address set from the dashboard (ton_proof)");
    Ok(Json(worker_view(&state, d, &worker_id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_of_day(0), "1970-01-01");
        assert_eq!(date_of_day(19_723), "2024-01-01");
        assert_eq!(date_of_day(20_254), "2025-06-15");
        assert_eq!(date_of_day(-1), "1969-12-31");
    }

    #[test]
    fn comment_cell_is_the_tep74_text_comment() {
        // te6cck... of a cell with 32 zero bits then "ABCD1234": built here and parsed back.
        let boc = comment_boc("ABCD1234").unwrap_or_default();
        let cell = BagOfCells::parse_base64(&boc).and_then(|b| b.single_root());
        let cell = match cell {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let mut p = cell.parser();
        assert_eq!(p.load_u32(32).ok(), Some(0));
        assert_eq!(p.load_bits(64).ok().as_deref(), Some(&b"ABCD1234"[..]));
    }
}
