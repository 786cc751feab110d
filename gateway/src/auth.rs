//! Who is calling: an API key (`sk-cocoon-…`, checked against stored SHA-256 hashes) or a JWT
//! issued by this network (HS256 pinned; issuer, audience and expiry checked).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::jwt::JwtAuth;
use crate::keys::{KeyRecord, KEY_PREFIX};
use crate::ratelimit::Limits;
use crate::state::AppState;

/// Accounts of worker operators: `worker:<worker id>`. Such a key reads its worker's
/// earnings and buys no inference; client accounts never carry the prefix.
pub const WORKER_ACCOUNT_PREFIX: &str = "worker:";

/// The account billed when `gateway.insecure_disable_auth` is on (benchmarks only).
pub const ANONYMOUS_ACCOUNT: &str = "anonymous";

#[derive(Clone, Debug)]
pub struct Principal {
    /// The account billed for the request.
    pub account: String,
    /// The rate-limit bucket: one per API key, one per JWT subject.
    pub rate_key: String,
    pub limits: Limits,
    /// The key's model allow-list (`None`: every model).
    pub allowed_models: Option<std::sync::Arc<[String]>>,
    /// The key's price-coefficient cap, applied when a request sets none.
    pub max_price_coefficient: Option<u32>,
    /// The key's day / month spend budgets, counted in the ledger hold (`None`: no budget).
    pub budget: Option<billing::KeyBudget>,
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::InvalidApiKey(
            "You didn't provide an API key. Provide it in the Authorization header as `Bearer sk-cocoon-…`.".into(),
        ));
    };
    let h = h
        .to_str()
        .map_err(|_| ApiError::InvalidApiKey("The Authorization header is not valid text.".into()))?;
    let token = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::InvalidApiKey("The Authorization header must be `Bearer <API key or JWT>`.".into())
        })?;
    Ok(token)
}

/// Shows enough of a presented key to recognise it, never enough to use it.
fn redact(token: &str) -> String {
    let head: String = token.chars().take(14).collect();
    format!("{head}…")
}

impl Principal {
    /// Whether this key may use `model` (its allow-list, if any, names it).
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|a| a.iter().any(|m| m == model))
    }

    /// The worker this principal operates, for a worker operator's key.
    pub fn worker(&self) -> Option<&str> {
        self.account.strip_prefix(WORKER_ACCOUNT_PREFIX)
    }

    /// The principal of a verified API key; `default_limits` apply when the key has none.
    /// Public so that `examples/auth_scale.rs` times the same per-request path as
    /// [`Self::authenticate`] without building a whole `AppState`.
    pub fn from_key(rec: &KeyRecord, default_limits: Limits) -> Self {
        Principal {
            account: rec.account.clone(),
            rate_key: format!("key:{}", rec.id),
            limits: rec.limits.unwrap_or(default_limits),
            allowed_models: rec.controls.allowed_models.clone().map(Into::into),
            max_price_coefficient: rec.controls.max_price_coefficient,
            budget: billing::KeyBudget::new(&rec.id, rec.controls.daily_budget_nanoton, rec.controls.monthly_budget_nanoton),
        }
    }

    pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Self, ApiError> {
        if state.cfg.insecure_disable_auth {
            return Ok(Principal {
                account: ANONYMOUS_ACCOUNT.to_string(),
                rate_key: ANONYMOUS_ACCOUNT.to_string(),
                limits: state.cfg.default_limits,
                allowed_models: None,
                max_price_coefficient: None,
                budget: None,
            });
        }
        let token = bearer(parts)?;
        if token.starts_with(KEY_PREFIX) {
            return match state.keys.verify(token).await {
                Some(rec) => Ok(Principal::from_key(&rec, state.cfg.default_limits)),
                None => Err(ApiError::InvalidApiKey(format!(
                    "Incorrect API key provided: {}. You can create one with `cocoon keys create` or in the dashboard.",
                    redact(token)
                ))),
            };
        }
        if let Some(jwt) = &state.jwt {
            if JwtAuth::looks_like_jwt(token) {
                return match jwt.verify(token) {
                    Ok(claims) => Ok(Principal {
                        rate_key: format!("jwt:{}", claims.sub),
                        account: claims.sub,
                        limits: claims.limits.unwrap_or(state.cfg.default_limits),
                        allowed_models: None,
                        max_price_coefficient: None,
                        budget: None,
                    }),
                    Err(e) => Err(ApiError::InvalidApiKey(format!("Invalid token: {e}."))),
                };
            }
        }
        Err(ApiError::InvalidApiKey(format!(
            "Incorrect API key provided: {}. Keys look like `sk-cocoon-…`.",
            redact(token)
        )))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Principal::authenticate(state, parts).await
    }
}
