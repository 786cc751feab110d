//! The dashboard: a web app at `/dashboard` (clients: balance, deposits, usage, keys; GPU
//! owners: workers, earnings, payouts) and its API under `/v1/dashboard` (in the OpenAPI
//! spec).
//!
//! Sign-in: a Telegram Mini App's `initData` ([`telegram`]) or a TON Connect `ton_proof`
//! ([`ton_proof`]) opens a short-lived session ([`session`]); an API key works too. A
//! Telegram user or a TON wallet signs into a client account of its own (`tg:<user id>`,
//! `ton:<raw address>`); a TON wallet also operates the workers whose payout address it is,
//! and an operator's API key (account `worker:<id>`, `cocoon keys create --worker ID`)
//! operates that worker. Everything an API call
//! reads or changes is the caller's own: another account's key or worker reads as not found.

pub mod api;
mod assets;
pub mod config;
pub mod session;
pub mod telegram;
pub mod ton_proof;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, patch, post};
use billing::Ledger;
use hmac::Mac;
use rand::RngCore;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::{CorsConfig, DashboardConfig, TelegramSignIn, TonProofSignIn};
use session::{Sessions, SignInMethod};
use telegram::TelegramVerifier;
use ton_proof::TonProofPolicy;
use workers::WorkerTracker;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// What the dashboard needs to know that the gateway does not configure itself.
#[derive(Clone, Debug, Default)]
pub struct DashboardContext {
    /// Where clients send TON to top up (user-friendly form), when TON deposits are on.
    pub deposit_address: Option<String>,
    /// `ton.network = testnet`.
    pub testnet: bool,
}

pub struct Dashboard {
    pub cfg: DashboardConfig,
    pub db: Ledger,
    pub sessions: Sessions,
    pub telegram: Option<TelegramVerifier>,
    /// `None`: TON sign-in is off (no domain configured).
    pub ton_proof: Option<TonProofPolicy>,
    pub workers: Arc<WorkerTracker>,
    pub ctx: DashboardContext,
    /// Key of the HMAC that authenticates the `ton_proof` payloads this server issues.
    payload_key: [u8; 32],
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()));
    for p in parts {
        m.update(p);
    }
    m
}

/// `ton_proof` payloads: 12 random bytes, the expiry (u32 Unix seconds, big endian) and 16
/// bytes of HMAC over both, hex. The server keeps nothing until one is used, so issuing them
/// costs no write; using one records it (single use, across replicas).
const PAYLOAD_RANDOM: usize = 12;
const PAYLOAD_TAG: usize = 16;
const PAYLOAD_PURPOSE: &str = "ton_proof";

impl Dashboard {
    pub fn new(cfg: DashboardConfig, db: Ledger, ctx: DashboardContext) -> Self {
        let secret = match &cfg.session_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "gateway.dashboard.session_secret is not set: dashboard sessions use a random key and work on this process only"
                );
                let mut k = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut k);
                k
            }
        };
        // Separate keys for sessions and payloads, both from the one secret.
        let session_key = mac(&secret, &[b"cocoon dashboard sessions"]).finalize().into_bytes();
        let payload_key: [u8; 32] = mac(&secret, &[b"cocoon dashboard ton_proof payloads"]).finalize().into_bytes().into();
        let telegram = TelegramVerifier::new(
            cfg.telegram.bot_token.as_deref(),
            cfg.telegram.bot_id,
            cfg.telegram.environment,
            cfg.telegram.require_signature,
            cfg.telegram.max_age_secs,
        );
        let domains = cfg.ton_proof_domains();
        let ton_proof = (!domains.is_empty()).then(|| TonProofPolicy {
            domains,
            max_age: Duration::from_secs(cfg.ton_proof.max_age_secs),
        });
        Self {
            sessions: Sessions::new(&session_key, cfg.session_ttl_secs),
            cfg,
            db,
            telegram,
            ton_proof,
            workers: WorkerTracker::new(),
            ctx,
            payload_key,
        }
    }

    /// Starts sampling the router for the workers view.
    pub fn spawn_tracker(&self, router: router::Router, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.workers.spawn(router, stop)
    }

    /// The explorer link template (`{hash}` = the transaction hash, hex).
    pub fn explorer_tx_url(&self) -> String {
        self.cfg.explorer_tx_url.clone().unwrap_or_else(|| {
            if self.ctx.testnet {
                "https://testnet.tonviewer.com/transaction/{hash}".into()
            } else {
                "https://tonviewer.com/transaction/{hash}".into()
            }
        })
    }

    /// A fresh `ton_proof` payload valid until `expires_at` (Unix seconds).
    pub fn issue_payload(&self, now: u64) -> (String, u64) {
        let expires_at = now.saturating_add(self.cfg.ton_proof.payload_ttl_secs);
        let mut body = [0u8; PAYLOAD_RANDOM + 4];
        rand::rngs::OsRng.fill_bytes(&mut body[..PAYLOAD_RANDOM]);
        body[PAYLOAD_RANDOM..].copy_from_slice(&u32::try_from(expires_at).unwrap_or(u32::MAX).to_be_bytes());
        let tag = mac(&self.payload_key, &[PAYLOAD_PURPOSE.as_bytes(), &body]).finalize().into_bytes();
        let mut out = body.to_vec();
        out.extend_from_slice(&tag[..PAYLOAD_TAG]);
        (hex::encode(out), expires_at)
    }

    /// The expiry of `payload` if this server issued it and it has not expired (it may still
    /// have been used: see [`Self::use_payload`]).
    pub fn check_payload(&self, payload: &str, now: u64) -> Option<u64> {
        let raw = hex::decode(payload).ok()?;
        if raw.len() != PAYLOAD_RANDOM + 4 + PAYLOAD_TAG {
            return None;
        }
        let (body, tag) = raw.split_at(PAYLOAD_RANDOM + 4);
        mac(&self.payload_key, &[PAYLOAD_PURPOSE.as_bytes(), body]).verify_truncated_left(tag).ok()?;
        let mut exp = [0u8; 4];
        exp.copy_from_slice(&body[PAYLOAD_RANDOM..]);
        let expires_at = u64::from(u32::from_be_bytes(exp));
        (expires_at >= now).then_some(expires_at)
    }

    /// Records `payload` as used: true the first time (on any replica).
    pub async fn use_payload(&self, payload: &str, expires_at: u64) -> Result<bool, billing::Error> {
        let expires_ms = i64::try_from(expires_at).unwrap_or(i64::MAX).saturating_mul(1000);
        self.db.use_nonce(payload, PAYLOAD_PURPOSE, expires_ms).await
    }
}

/// The dashboard of `state`, or 404 `dashboard_disabled`.
pub(crate) fn dashboard(state: &AppState) -> Result<&Arc<Dashboard>, ApiError> {
    state.dashboard.as_ref().ok_or_else(|| ApiError::NotFound {
        message: "The dashboard is disabled on this gateway (gateway.dashboard.enabled = false)".into(),
        code: "dashboard_disabled",
    })
}

/// Who is calling a dashboard endpoint: a dashboard session, or an API key / API JWT.
#[derive(Clone, Debug)]
pub struct DashboardUser {
    /// The client account: what it sees and manages.
    pub account: String,
    pub via: SignInMethod,
    /// The TON wallet that signed in (raw), for `via = ton`.
    pub ton: Option<String>,
    /// The Telegram user id, for `via = telegram`.
    pub tg: Option<i64>,
    pub label: String,
}

fn bearer(parts: &Parts) -> Option<&str> {
    let h = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    h.strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for DashboardUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let dash = dashboard(state)?;
        if let Some(token) = bearer(parts).filter(|t| Sessions::is_session_token(t)) {
            let c = dash.sessions.verify(token).map_err(|e| ApiError::SignInFailed {
                message: e.to_string(),
                code: match e {
                    session::SessionError::Expired => "session_expired",
                    _ => "invalid_session",
                },
            })?;
            return Ok(DashboardUser {
                account: c.sub,
                via: c.via,
                ton: c.ton,
                tg: c.tg,
                label: c.label,
            });
        }
        let p = Principal::authenticate(state, parts).await?;
        Ok(DashboardUser {
            label: p.rate_key.strip_prefix("key:").map_or_else(|| p.account.clone(), |id| format!("key {id}")),
            account: p.account,
            via: SignInMethod::ApiKey,
            ton: None,
            tg: None,
        })
    }
}

/// The dashboard's pages and API, merged into the app by `app::build`.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/dashboard", get(assets::redirect))
        .route("/dashboard/", get(assets::index))
        .route("/dashboard/tonconnect-manifest.json", get(assets::manifest))
        .route("/dashboard/{*path}", get(assets::file))
        .route("/v1/dashboard/config", get(api::config))
        .route("/v1/dashboard/auth/telegram", post(api::sign_in_telegram))
        .route("/v1/dashboard/auth/ton/payload", post(api::ton_payload))
        .route("/v1/dashboard/auth/ton", post(api::sign_in_ton))
        .route("/v1/dashboard/me", get(api::me))
        .route("/v1/dashboard/keys", get(api::list_keys).post(api::create_key))
        .route("/v1/dashboard/keys/{key_id}", patch(api::rename_key))
        .route("/v1/dashboard/keys/{key_id}/revoke", post(api::revoke_key))
        .route("/v1/dashboard/balance", get(api::balance))
        .route("/v1/dashboard/usage", get(api::usage))
        .route("/v1/dashboard/workers", get(api::workers))
        .route("/v1/dashboard/workers/{worker_id}/payout-address", post(api::set_payout_address))
}

/// The CORS layer `[gateway.cors]` asks for; `None` when no origin is allowed.
pub fn cors_layer(cfg: &CorsConfig) -> Option<CorsLayer> {
    if cfg.allowed_origins.is_empty() {
        return None;
    }
    let origin = if cfg.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(cfg.allowed_origins.iter().filter_map(|o| o.parse().ok()))
    };
    use axum::http::{header, Method};
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::HeaderName::from_static("openai-organization"), header::HeaderName::from_static("x-stainless-retry-count")])
            .expose_headers([
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("x-cocoon-cost-nanoton"),
                header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(cfg.max_age_secs)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn payloads_are_authenticated_expire_and_are_single_use() {
        let db = Ledger::connect("sqlite::memory:", billing::LedgerOptions::default()).await.unwrap();
        let cfg = DashboardConfig {
            session_secret: Some("x".repeat(32)),
            ..DashboardConfig::default()
        };
        let d = Dashboard::new(cfg.clone(), db.clone(), DashboardContext::default());
        let (p, exp) = d.issue_payload(1_000);
        assert_eq!(p.len(), 64);
        assert_eq!(d.check_payload(&p, 1_000), Some(exp));
        assert_eq!(d.check_payload(&p, exp + 1), None, "expired");
        // Flip one character: not ours.
        let mut bad = p.clone().into_bytes();
        bad[3] = if bad[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(d.check_payload(std::str::from_utf8(&bad).unwrap(), 1_000), None);
        // Another server secret: not ours either.
        let other = Dashboard::new(DashboardConfig { session_secret: Some("y".repeat(32)), ..cfg.clone() }, db.clone(), DashboardContext::default());
        assert_eq!(other.check_payload(&p, 1_000), None);
        // Same secret (another replica): accepted, and single use across both.
        let replica = Dashboard::new(cfg, db, DashboardContext::default());
        assert_eq!(replica.check_payload(&p, 1_000), Some(exp));
        assert!(d.use_payload(&p, u64::from(u32::MAX)).await.unwrap());
        assert!(!replica.use_payload(&p, u64::from(u32::MAX)).await.unwrap());
    }

    #[test]
    fn ton_proof_domains_default_to_the_public_url() {
        let mut c = DashboardConfig::default();
        assert!(c.ton_proof_domains().is_empty());
        c.public_url = Some("https://cocoon.example:8443/dashboard".into());
        assert_eq!(c.ton_proof_domains(), ["cocoon.example:8443"]);
        c.ton_proof.domains = vec!["a.example".into()];
        assert_eq!(c.ton_proof_domains(), ["a.example"]);
    }
}
