//! Dashboard sessions: a short-lived JWT the dashboard sends as `Authorization: Bearer`.
//!
//! Why a bearer token and not a cookie: inside Telegram the dashboard runs in an iframe
//! (Telegram Web) or a webview, where cookies of the dashboard's site are third-party cookies
//! and browsers drop them; a header works everywhere. A bearer token is not sent by the
//! browser on its own, so a cross-site request cannot ride on it (no CSRF), and the page keeps
//! it in `sessionStorage` only (gone when the tab closes). Signed with HS256 under
//! `gateway.dashboard.session_secret`, algorithm pinned, `kid = "dashboard"`, its own issuer
//! and audience, so neither an API JWT nor a session token passes for the other.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// `kid` and audience of session tokens.
pub const SESSION_KID: &str = "dashboard";
const ISSUER: &str = "cocoon-dashboard";
const AUDIENCE: &str = "cocoon-dashboard";
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How the session was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignInMethod {
    /// Telegram Mini App `initData`.
    Telegram,
    /// TON Connect `ton_proof`.
    Ton,
    /// An API key (or API JWT) in the Authorization header.
    ApiKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The client account.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub via: SignInMethod,
    /// The wallet that signed in (raw `wc:hex`), for `via = ton`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ton: Option<String>,
    /// The Telegram user id, for `via = telegram`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tg: Option<i64>,
    /// Display name.
    #[serde(default)]
    pub label: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the dashboard session has expired; sign in again")]
    Expired,
    #[error("not a valid dashboard session")]
    Invalid,
    #[error("signing the session failed")]
    Sign,
}

pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl_secs", &self.ttl_secs).finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Sessions {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A session for `account`; returns the token and its expiry (Unix seconds).
    pub fn issue(
        &self,
        account: &str,
        via: SignInMethod,
        ton: Option<String>,
        tg: Option<i64>,
        label: &str,
    ) -> Result<(String, u64), SessionError> {
        let iat = now_unix();
        let exp = iat.saturating_add(self.ttl_secs);
        let claims = SessionClaims {
            sub: account.to_owned(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp,
            iat,
            via,
            ton,
            tg,
            label: label.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(SESSION_KID.into());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|_| SessionError::Sign)?;
        Ok((token, exp))
    }

    /// Whether `token` is meant to be a session (its header says `kid: dashboard`); says
    /// nothing about validity.
    pub fn is_session_token(token: &str) -> bool {
        token.len() <= MAX_TOKEN_LEN
            && jsonwebtoken::decode_header(token).is_ok_and(|h| h.kid.as_deref() == Some(SESSION_KID))
    }

    pub fn verify(&self, token: &str) -> Result<SessionClaims, SessionError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(SessionError::Invalid);
        }
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => SessionError::Expired,
                _ => SessionError::Invalid,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = Sessions::new(&[7u8; 32], 60);
        let (tok, exp) = s.issue("ton:0:ab", SignInMethod::Ton, Some("0:ab".into()), None, "EQ..").unwrap();
        assert!(Sessions::is_session_token(&tok));
        let c = s.verify(&tok).unwrap();
        assert_eq!((c.sub.as_str(), c.via, c.ton.as_deref(), c.exp), ("ton:0:ab", SignInMethod::Ton, Some("0:ab"), exp));
        // Another secret, an edited payload, an expired token, an API JWT: refused.
        assert!(Sessions::new(&[8u8; 32], 60).verify(&tok).is_err());
        let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(s.verify(&parts.join(".")).is_err());
        let old = Sessions::new(&[7u8; 32], 0);
        let (t, _) = old.issue("a", SignInMethod::Telegram, None, Some(1), "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        // exp = iat, within the 5 s leeway it is still valid; a token from long ago is not.
        assert!(old.verify(&t).is_ok());
        let claims = SessionClaims {
            sub: "a".into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: 1000,
            iat: 1,
            via: SignInMethod::Telegram,
            ton: None,
            tg: Some(1),
            label: String::new(),
        };
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(SESSION_KID.into());
        let expired = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&[7u8; 32])).unwrap();
        assert!(matches!(s.verify(&expired), Err(SessionError::Expired)));
        let api_jwt = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&[7u8; 32])).unwrap();
        assert!(!Sessions::is_session_token(&api_jwt));
    }
}
