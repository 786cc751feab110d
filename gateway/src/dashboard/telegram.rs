//! Telegram Mini App `initData`: who opened the dashboard inside Telegram.
//!
//! The Telegram client hands the Mini App a query string (`tgWebAppData`) signed twice, as
//! Telegram's Mini Apps documentation (core.telegram.org/bots/webapps, "Validating data
//! received via the Mini App" and "... for third-party use") describes:
//! - `hash`: hex HMAC-SHA-256 of the data-check-string under the key
//!   HMAC-SHA-256(key = "WebAppData", message = bot token). The data-check-string is every
//!   field but `hash`, as `key=value` (values URL-decoded), sorted by key, joined by `\n`.
//! - `signature`: base64url Ed25519 signature by Telegram of
//!   `"<bot_id>:WebAppData\n"` + the same string without `signature` either, checkable with
//!   Telegram's public key (one for production, one for the test environment) and the bot
//!   id alone, without the bot token.
//!
//! With a bot token configured the HMAC must match (and, with `require_signature`, the
//! Ed25519 signature too); with only a bot id the signature must verify. `auth_date` must be
//! within `max_age_secs` of now (and not more than a minute ahead). Comparisons of secrets
//! are constant time (`Mac::verify_slice`); an Ed25519 check is public data.

use std::collections::BTreeMap;

use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Telegram's Ed25519 key for third-party validation of production `initData`.
pub const TELEGRAM_PUBLIC_KEY_PRODUCTION: &str =
    "e7bf03a2fa4602af4580703d88dda5bb59f32ed8b02a56c187fe7d34caed242d";
/// ... and of `initData` issued in Telegram's test environment.
pub const TELEGRAM_PUBLIC_KEY_TEST: &str =
    "40055058a4ee38156a06562e52eece92a771bcd8346a8c4615cb7376eddf72ec";

/// Longest `initData` accepted (real ones are well under 2 KB).
const MAX_INIT_DATA_BYTES: usize = 16 * 1024;
/// How far ahead of our clock `auth_date` may be.
const FUTURE_SKEW_SECS: u64 = 60;

/// Which Telegram environment signs the `initData` (selects the public key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramEnvironment {
    #[default]
    Production,
    Test,
}

impl TelegramEnvironment {
    fn public_key_hex(self) -> &'static str {
        match self {
            TelegramEnvironment::Production => TELEGRAM_PUBLIC_KEY_PRODUCTION,
            TelegramEnvironment::Test => TELEGRAM_PUBLIC_KEY_TEST,
        }
    }
}

/// The Telegram user of a verified `initData`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TelegramUser {
    pub id: i64,
    pub first_name: String,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub language_code: Option<String>,
}

impl TelegramUser {
    /// `@username`, else the name.
    pub fn label(&self) -> String {
        match &self.username {
            Some(u) if !u.is_empty() => format!("@{u}"),
            _ => match &self.last_name {
                Some(l) if !l.is_empty() => format!("{} {l}", self.first_name),
                _ => self.first_name.clone(),
            },
        }
    }
}

/// A verified `initData`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedInitData {
    pub user: TelegramUser,
    /// Unix seconds.
    pub auth_date: u64,
    /// Whether the Ed25519 signature was checked (and held).
    pub signature_checked: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitDataError {
    #[error("initData is malformed: {0}")]
    Malformed(String),
    #[error("initData has no `hash`")]
    MissingHash,
    #[error("initData has no `signature`")]
    MissingSignature,
    #[error("initData `hash` does not match (not signed with this bot's token)")]
    BadHash,
    #[error("initData `signature` does not verify with Telegram's {0} key for this bot")]
    BadSignature(&'static str),
    #[error("initData has no valid `auth_date`")]
    MissingAuthDate,
    #[error("initData is too old: signed {age_secs} s ago, the limit is {max_age_secs} s")]
    Expired { age_secs: u64, max_age_secs: u64 },
    #[error("initData `auth_date` is in the future")]
    FromTheFuture,
    #[error("initData has no `user`")]
    NoUser,
}

/// Checks `initData` for one bot.
#[derive(Clone)]
pub struct TelegramVerifier {
    /// HMAC-SHA-256("WebAppData", bot token): the key of the `hash`.
    secret: Option<[u8; 32]>,
    bot_id: Option<i64>,
    environment: TelegramEnvironment,
    require_signature: bool,
    max_age_secs: u64,
}

impl std::fmt::Debug for TelegramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramVerifier")
            .field("bot_id", &self.bot_id)
            .field("hmac", &self.secret.is_some())
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so `new_from_slice` never fails; the fallback (an
    // all-zero key) only keeps this free of a panic path.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()));
    mac.update(msg);
    mac
}

/// The bot id is the token's part before `:` (`123456:ABC...`).
pub fn bot_id_of_token(token: &str) -> Option<i64> {
    token.split_once(':').and_then(|(id, _)| id.parse().ok())
}

impl TelegramVerifier {
    /// `bot_token` enables the HMAC check; `bot_id` (or the token's prefix) the Ed25519 one.
    /// `None` when neither is given (Telegram sign-in off).
    pub fn new(
        bot_token: Option<&str>,
        bot_id: Option<i64>,
        environment: TelegramEnvironment,
        require_signature: bool,
        max_age_secs: u64,
    ) -> Option<Self> {
        let secret = bot_token.map(|t| hmac(b"WebAppData", t.as_bytes()).finalize().into_bytes().into());
        let bot_id = bot_id.or_else(|| bot_token.and_then(bot_id_of_token));
        if secret.is_none() && bot_id.is_none() {
            return None;
        }
        Some(Self {
            secret,
            bot_id,
            environment,
            require_signature,
            max_age_secs,
        })
    }

    /// Verifies `init_data` (the raw query string) at `now` (Unix seconds).
    pub fn verify(&self, init_data: &str, now: u64) -> Result<VerifiedInitData, InitDataError> {
        if init_data.len() > MAX_INIT_DATA_BYTES {
            return Err(InitDataError::Malformed(format!("longer than {MAX_INIT_DATA_BYTES} bytes")));
        }
        let mut fields = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(init_data.as_bytes()) {
            if fields.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                return Err(InitDataError::Malformed(format!("field `{k}` appears twice")));
            }
        }
        let hash = fields.remove("hash");
        // `key=value` sorted by key (BTreeMap order: bytes, which for Telegram's ASCII keys is
        // the alphabetical order of the docs and of URLSearchParams sorting).
        let check_string = |skip_signature: bool| {
            fields
                .iter()
                .filter(|(k, _)| !(skip_signature && k.as_str() == "signature"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n")
        };

        let mut signature_checked = false;
        if let Some(secret) = &self.secret {
            let hash = hash.ok_or(InitDataError::MissingHash)?;
            let given = hex::decode(hash.trim()).map_err(|_| InitDataError::BadHash)?;
            hmac(secret, check_string(false).as_bytes())
                .verify_slice(&given)
                .map_err(|_| InitDataError::BadHash)?;
        }
        if self.secret.is_none() || self.require_signature {
            let bot_id = self.bot_id.ok_or(InitDataError::MissingSignature)?;
            let sig = fields.get("signature").filter(|s| !s.is_empty()).ok_or(InitDataError::MissingSignature)?;
            self.check_signature(bot_id, sig, &check_string(true))?;
            signature_checked = true;
        }

        let auth_date: u64 = fields
            .get("auth_date")
            .and_then(|v| v.parse().ok())
            .ok_or(InitDataError::MissingAuthDate)?;
        if auth_date > now.saturating_add(FUTURE_SKEW_SECS) {
            return Err(InitDataError::FromTheFuture);
        }
        let age_secs = now.saturating_sub(auth_date);
        if age_secs > self.max_age_secs {
            return Err(InitDataError::Expired {
                age_secs,
                max_age_secs: self.max_age_secs,
            });
        }
        let user: TelegramUser = serde_json::from_str(fields.get("user").ok_or(InitDataError::NoUser)?)
            .map_err(|e| InitDataError::Malformed(format!("`user` is not a Telegram user: {e}")))?;
        Ok(VerifiedInitData {
            user,
            auth_date,
            signature_checked,
        })
    }

    fn check_signature(&self, bot_id: i64, sig: &str, check_string: &str) -> Result<(), InitDataError> {
        let env = match self.environment {
            TelegramEnvironment::Production => "production",
            TelegramEnvironment::Test => "test",
        };
        let bad = || InitDataError::BadSignature(env);
        // Telegram sends it base64url without padding; accept padding too.
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig.trim_end_matches('='))
            .map_err(|_| bad())?;
        let sig = Signature::from_slice(&raw).map_err(|_| bad())?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(self.environment.public_key_hex(), &mut key).map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
        let message = format!("{bot_id}:WebAppData\n{check_string}");
        key.verify_strict(message.as_bytes(), &sig).map_err(|_| bad())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Vectors: `testdata/telegram/init_data.json`, written by
    //! `testdata/telegram/generate.mjs` with `@telegram-apps/init-data-node` (the library
    //! signs with a test bot token and validates every case itself), plus a real `initData`
    //! signed by Telegram's production key, from that library's own test suite.

    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        bot_token: String,
        now: u64,
        valid: Vec<Case>,
        invalid: Vec<BadCase>,
        third_party: ThirdParty,
    }
    #[derive(Deserialize)]
    struct Case {
        name: String,
        init_data: String,
        user_id: i64,
    }
    #[derive(Deserialize)]
    struct BadCase {
        name: String,
        init_data: String,
        error: String,
    }
    #[derive(Deserialize)]
    struct ThirdParty {
        bot_id: i64,
        init_data: String,
        auth_date: u64,
        user_id: i64,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../../testdata/telegram/init_data.json")).unwrap()
    }

    fn kind(e: &InitDataError) -> &'static str {
        match e {
            InitDataError::Malformed(_) => "malformed",
            InitDataError::MissingHash => "missing_hash",
            InitDataError::MissingSignature => "missing_signature",
            InitDataError::BadHash => "bad_hash",
            InitDataError::BadSignature(_) => "bad_signature",
            InitDataError::MissingAuthDate => "missing_auth_date",
            InitDataError::Expired { .. } => "expired",
            InitDataError::FromTheFuture => "future",
            InitDataError::NoUser => "no_user",
        }
    }

    #[test]
    fn library_signed_init_data_verifies_with_the_bot_token() {
        let v = vectors();
        let verifier = TelegramVerifier::new(Some(&v.bot_token), None, TelegramEnvironment::Production, false, 3600).unwrap();
        for c in &v.valid {
            let ok = verifier.verify(&c.init_data, v.now).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(ok.user.id, c.user_id, "{}", c.name);
            assert!(!ok.signature_checked);
        }
        for c in &v.invalid {
            let err = verifier.verify(&c.init_data, v.now).expect_err(&c.name);
            assert_eq!(kind(&err), c.error, "{}: {err}", c.name);
        }
        // Another bot's token does not verify them.
        let other = TelegramVerifier::new(Some("1234567:AAother"), None, TelegramEnvironment::Production, false, 3600).unwrap();
        assert_eq!(other.verify(&v.valid[0].init_data, v.now), Err(InitDataError::BadHash));
    }

    #[test]
    fn telegram_signed_init_data_verifies_with_the_public_key() {
        let t = vectors().third_party;
        let now = t.auth_date + 10;
        let prod = TelegramVerifier::new(None, Some(t.bot_id), TelegramEnvironment::Production, false, 3600).unwrap();
        let ok = prod.verify(&t.init_data, now).unwrap();
        assert_eq!(ok.user.id, t.user_id);
        assert!(ok.signature_checked);
        // The wrong bot id, the test environment's key, or an edited field: refused.
        let wrong_bot = TelegramVerifier::new(None, Some(t.bot_id + 1), TelegramEnvironment::Production, false, 3600).unwrap();
        assert_eq!(wrong_bot.verify(&t.init_data, now), Err(InitDataError::BadSignature("production")));
        let test_env = TelegramVerifier::new(None, Some(t.bot_id), TelegramEnvironment::Test, false, 3600).unwrap();
        assert_eq!(test_env.verify(&t.init_data, now), Err(InitDataError::BadSignature("test")));
        let edited = t.init_data.replace("chat_type=private", "chat_type=group");
        assert_ne!(edited, t.init_data);
        assert_eq!(prod.verify(&edited, now), Err(InitDataError::BadSignature("production")));
        let unsigned = t.init_data.split('&').filter(|p| !p.starts_with("signature=")).collect::<Vec<_>>().join("&");
        assert_eq!(prod.verify(&unsigned, now), Err(InitDataError::MissingSignature));
        // Freshness still applies.
        assert!(matches!(prod.verify(&t.init_data, t.auth_date + 3601), Err(InitDataError::Expired { .. })));
        // The HMAC is bot-token-only: this initData was signed for a bot whose token we lack.
        let hmac_only = TelegramVerifier::new(Some(&format!("{}:AAnotthetoken", t.bot_id)), None, TelegramEnvironment::Production, true, 3600).unwrap();
        assert_eq!(hmac_only.verify(&t.init_data, now), Err(InitDataError::BadHash));
    }

    #[test]
    fn require_signature_needs_both() {
        let v = vectors();
        // The library's HMAC-signed vectors carry an empty `signature`: fine for the HMAC
        // check alone, refused when the Ed25519 signature is required as well.
        let both = TelegramVerifier::new(Some(&v.bot_token), None, TelegramEnvironment::Production, true, 3600).unwrap();
        assert_eq!(both.verify(&v.valid[0].init_data, v.now), Err(InitDataError::MissingSignature));
    }

    #[test]
    fn nothing_configured_is_off() {
        assert!(TelegramVerifier::new(None, None, TelegramEnvironment::Production, false, 1).is_none());
        assert_eq!(bot_id_of_token("7342037359:AAH"), Some(7_342_037_359));
        assert_eq!(bot_id_of_token("nocolon"), None);
    }

    #[test]
    fn oversized_and_duplicated_fields_are_refused() {
        let verifier = TelegramVerifier::new(Some("1:x"), None, TelegramEnvironment::Production, false, 3600).unwrap();
        assert!(matches!(verifier.verify(&"a".repeat(20_000), 0), Err(InitDataError::Malformed(_))));
        assert!(matches!(verifier.verify("a=1&a=2&hash=00", 0), Err(InitDataError::Malformed(_))));
    }
}
