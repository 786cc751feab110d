//! `[gateway.dashboard]` and `[gateway.cors]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::telegram::TelegramEnvironment;

/// `[gateway.dashboard]`: the web dashboard at `/dashboard` and its API under `/v1/dashboard`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the dashboard and its API.
    pub enabled: bool,
    /// The built dashboard (`scripts/build-dashboard` writes `dashboard/dist`); relative paths
    /// are relative to the working directory. Without it `/dashboard` says how to build it.
    pub assets_dir: PathBuf,
    /// Where people open the dashboard, e.g. `https://cocoon.example` (TON Connect manifest
    /// `url`; its host is the default `ton_proof` domain). Unset: taken from the request.
    pub public_url: Option<String>,
    /// Name shown in wallets (TON Connect manifest `name`).
    pub app_name: String,
    /// HMAC key of session tokens, at least 32 bytes; every replica needs the same one.
    /// Unset: a random key per process (sessions then work on this process only), refused
    /// in production.
    #[serde(skip_serializing)]
    pub session_secret: Option<String>,
    pub session_ttl_secs: u64,
    pub telegram: TelegramSignIn,
    pub ton_proof: TonProofSignIn,
    /// Link of a transaction in a block explorer, `{hash}` replaced by the hex hash. Unset:
    /// tonviewer.com for mainnet, testnet.tonviewer.com for testnet (`ton.network`).
    pub explorer_tx_url: Option<String>,
}

/// `[gateway.dashboard.telegram]`: sign-in from a Telegram Mini App.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramSignIn {
    /// The bot's token: `initData` must carry its HMAC (`hash`). Better set through the
    /// environment (`COCOON__GATEWAY__DASHBOARD__TELEGRAM__BOT_TOKEN`).
    #[serde(skip_serializing)]
    pub bot_token: Option<String>,
    /// The bot's id, for checking Telegram's Ed25519 `signature` without the token (third-party
    /// validation). Taken from the token when unset.
    pub bot_id: Option<i64>,
    /// Whose key signs `signature`: `production` or `test` (Telegram's test environment).
    pub environment: TelegramEnvironment,
    /// With a bot token: check the Ed25519 `signature` as well as the HMAC.
    pub require_signature: bool,
    /// `initData` older than this (by `auth_date`) is refused.
    pub max_age_secs: u64,
    /// The bot's @username, to offer "open in Telegram" on the sign-in page.
    pub bot_username: Option<String>,
}

/// `[gateway.dashboard.ton_proof]`: sign-in and payout addresses with TON Connect.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TonProofSignIn {
    /// Domains (`host` or `host:port`, as wallets report the page's) a proof may be for.
    /// Empty: the host of `public_url`; neither set: TON sign-in is off.
    pub domains: Vec<String>,
    /// A proof signed longer ago than this is refused.
    pub max_age_secs: u64,
    /// How long an issued payload can be used (once).
    pub payload_ttl_secs: u64,
}

/// `[gateway.cors]`: which web origins may call the API from a browser.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins like `https://app.example`; `["*"]` allows any. Empty: no CORS headers (only
    /// same-origin pages, such as `/dashboard`, can call the API from a browser).
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            assets_dir: PathBuf::from("dashboard/dist"),
            public_url: None,
            app_name: "Cocoon".into(),
            session_secret: None,
            session_ttl_secs: 3600,
            telegram: TelegramSignIn::default(),
            ton_proof: TonProofSignIn::default(),
            explorer_tx_url: None,
        }
    }
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

impl Default for TelegramSignIn {
    fn default() -> Self {
        Self {
            bot_token: None,
            bot_id: None,
            environment: TelegramEnvironment::Production,
            require_signature: false,
            max_age_secs: 3600,
            bot_username: None,
        }
    }
}

impl Default for TonProofSignIn {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            max_age_secs: 900,
            payload_ttl_secs: 900,
        }
    }
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardConfig")
            .field("enabled", &self.enabled)
            .field("assets_dir", &self.assets_dir)
            .field("public_url", &self.public_url)
            .field("session_secret", &self.session_secret.as_ref().map(|_| "<redacted>"))
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("telegram", &self.telegram)
            .field("ton_proof", &self.ton_proof)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TelegramSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramSignIn")
            .field("bot_token", &self.bot_token.as_ref().map(|_| "<redacted>"))
            .field("bot_id", &self.bot_id)
            .field("environment", &self.environment)
            .field("require_signature", &self.require_signature)
            .field("max_age_secs", &self.max_age_secs)
            .finish_non_exhaustive()
    }
}

impl DashboardConfig {
    /// The `ton_proof` domains in force: the configured ones, else `public_url`'s host.
    pub fn ton_proof_domains(&self) -> Vec<String> {
        if !self.ton_proof.domains.is_empty() {
            return self.ton_proof.domains.clone();
        }
        self.public_url
            .as_deref()
            .and_then(|u| u.split_once("://").map(|(_, rest)| rest))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
            .filter(|h| !h.is_empty())
            .into_iter()
            .collect()
    }

    /// One message per mistake, naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(s) = &self.session_secret {
            if s.len() < 32 {
                errs.push("gateway.dashboard.session_secret must be at least 32 bytes".into());
            }
        }
        if self.session_ttl_secs == 0 || self.session_ttl_secs > 7 * 86_400 {
            errs.push(format!(
                "gateway.dashboard.session_ttl_secs must be within 1..=604800, got {}",
                self.session_ttl_secs
            ));
        }
        if let Some(u) = &self.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                errs.push(format!("gateway.dashboard.public_url must be an http(s) URL, got {u:?}"));
            }
        }
        if let Some(t) = &self.telegram.bot_token {
            if super::telegram::bot_id_of_token(t).is_none() {
                errs.push("gateway.dashboard.telegram.bot_token does not look like a bot token (<id>:<secret>)".into());
            }
        }
        if self.telegram.require_signature && self.telegram.bot_token.is_none() && self.telegram.bot_id.is_none() {
            errs.push("gateway.dashboard.telegram.require_signature needs bot_token or bot_id".into());
        }
        if self.telegram.max_age_secs == 0 {
            errs.push("gateway.dashboard.telegram.max_age_secs must be > 0".into());
        }
        if self.ton_proof.max_age_secs == 0 || self.ton_proof.payload_ttl_secs == 0 {
            errs.push("gateway.dashboard.ton_proof.max_age_secs and payload_ttl_secs must be > 0".into());
        }
        if let Some(x) = &self.explorer_tx_url {
            if !x.contains("{hash}") {
                errs.push("gateway.dashboard.explorer_tx_url must contain {hash}".into());
            }
        }
        errs
    }
}

impl CorsConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for o in &self.allowed_origins {
            let ok = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/') && !o.contains(' '));
            if !ok {
                errs.push(format!(
                    "gateway.cors.allowed_origins: {o:?} is not an origin like https://app.example (no path, no trailing /) or \"*\""
                ));
            }
        }
        errs
    }
}
