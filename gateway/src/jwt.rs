//! JWT bearer tokens (HS256 only). The algorithm is pinned on verification
//! so a token cannot choose a weaker or different scheme (`alg: none`,
//! HS384/HS512 with the same secret, or an asymmetric algorithm).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::ratelimit::Limits;

const MIN_SECRET_LEN: usize = 32;
const LEEWAY_SECS: u64 = 30;
/// Real tokens are a few hundred bytes; refuse to parse anything absurd.
const MAX_TOKEN_LEN: usize = 8 * 1024;

fn default_ttl() -> u64 {
    3600
}

#[derive(Clone, serde::Deserialize, serde::Serialize)]
pub struct JwtConfig {
    /// HMAC key (raw bytes of the string), at least 32 bytes.
    pub secret: String,
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

// Manual Debug so configs can be logged without leaking the secret.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Claims {
    /// Account the token acts for.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// Verification errors carry messages safe to return to a client: they name
/// the failed check but never echo token contents or key material.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("invalid issuer")]
    InvalidIssuer,
    #[error("invalid audience")]
    InvalidAudience,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("unsupported token algorithm")]
    InvalidAlgorithm,
    #[error("missing required claim: {0}")]
    MissingClaim(String),
    #[error("token not yet valid")]
    NotYetValid,
    #[error("malformed token")]
    Malformed,
    /// Server-side configuration problem (from `new`).
    #[error("invalid JWT configuration: {0}")]
    Config(&'static str),
    /// Signing failed (from `issue`).
    #[error("failed to sign token")]
    Sign,
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::InvalidIssuer => JwtError::InvalidIssuer,
            ErrorKind::InvalidAudience => JwtError::InvalidAudience,
            ErrorKind::InvalidSignature => JwtError::InvalidSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => JwtError::InvalidAlgorithm,
            // Claim names come from the fixed set we require, never from the token.
            ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            _ => JwtError::Malformed,
        }
    }
}

/// Issues and verifies HS256 tokens for one issuer/audience.
pub struct JwtAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtAuth {
    /// Rejects secrets shorter than 32 bytes (brute-forceable offline from
    /// any captured token), empty issuer/audience and a zero TTL.
    pub fn new(cfg: &JwtConfig) -> Result<Self, JwtError> {
        if cfg.secret.len() < MIN_SECRET_LEN {
            return Err(JwtError::Config("secret must be at least 32 bytes"));
        }
        if cfg.issuer.is_empty() || cfg.audience.is_empty() {
            return Err(JwtError::Config("issuer and audience must be set"));
        }
        if cfg.ttl_secs == 0 {
            return Err(JwtError::Config("ttl_secs must be positive"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        Ok(JwtAuth {
            encoding: EncodingKey::from_secret(cfg.secret.as_bytes()),
            decoding: DecodingKey::from_secret(cfg.secret.as_bytes()),
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl_secs: cfg.ttl_secs,
        })
    }

    /// Signs a token for account `sub`, valid for the configured TTL.
    pub fn issue(&self, sub: &str, limits: Option<Limits>) -> Result<String, JwtError> {
        let iat = now_unix();
        let claims = Claims {
            sub: sub.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: iat.saturating_add(self.ttl_secs),
            iat,
            limits,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| JwtError::Sign)
    }

    /// Verifies signature (HS256 only), exp (30 s leeway), iss and aud.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?;
        Ok(data.claims)
    }

    /// Cheap shape test used to route a bearer credential: three base64url
    /// segments separated by '.', the first decoding to a JSON object with
    /// "alg". Says nothing about validity (an `alg: none` token still
    /// "looks like" a JWT, so it gets a JWT rejection rather than an API-key one).
    pub fn looks_like_jwt(token: &str) -> bool {
        if token.len() > MAX_TOKEN_LEN {
            return false;
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let b64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // The signature is empty for unsigned tokens.
        if header.is_empty()
            || payload.is_empty()
            || !b64url(header)
            || !b64url(payload)
            || !b64url(sig)
        {
            return false;
        }
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
            return false;
        };
        matches!(
            serde_json::from_slice::<serde_json::Value>(&raw),
            Ok(serde_json::Value::Object(m)) if m.contains_key("alg")
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn cfg() -> JwtConfig {
        JwtConfig {
            secret: SECRET.into(),
            issuer: "cocoon".into(),
            audience: "cocoon-api".into(),
            ttl_secs: 600,
        }
    }

    fn auth() -> JwtAuth {
        JwtAuth::new(&cfg()).unwrap()
    }

    fn claims(exp_offset: i64) -> Claims {
        let now = now_unix();
        Claims {
            sub: "acct".into(),
            iss: "cocoon".into(),
            aud: "cocoon-api".into(),
            exp: now.saturating_add_signed(exp_offset),
            iat: now,
            limits: None,
        }
    }

    fn sign(alg: Algorithm, c: &Claims, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let a = auth();
        let lim = Limits {
            requests_per_minute: 5,
            tokens_per_minute: 500,
        };
        let t = a.issue("alice", Some(lim)).unwrap();
        assert!(JwtAuth::looks_like_jwt(&t));
        let c = a.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.iss, "cocoon");
        assert_eq!(c.aud, "cocoon-api");
        assert_eq!(c.limits, Some(lim));
        assert_eq!(c.exp - c.iat, 600);
        // Without limits the claim is omitted and parses back as None.
        let t = a.issue("bob", None).unwrap();
        let payload = URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap();
        assert!(!String::from_utf8(payload).unwrap().contains("limits"));
        assert_eq!(a.verify(&t).unwrap().limits, None);
    }

    #[test]
    fn expired() {
        let a = auth();
        let t = sign(Algorithm::HS256, &claims(-120), SECRET);
        assert!(matches!(a.verify(&t), Err(JwtError::Expired)));
        assert_eq!(JwtError::Expired.to_string(), "token expired");
        // Within the 30 s leeway it is still accepted.
        let t = sign(Algorithm::HS256, &claims(-10), SECRET);
        assert!(a.verify(&t).is_ok());
    }

    #[test]
    fn wrong_issuer_and_audience() {
        let a = auth();
        let mut c = claims(300);
        c.iss = "someone-else".into();
        let err = a.verify(&sign(Algorithm::HS256, &c, SECRET)).unwrap_err();
        assert!(matches!(err, JwtError::InvalidIssuer));
        assert_eq!(err.to_string(), "invalid issuer");
        let mut c = claims(300);
        c.aud = "other-api".into();
        let err = a.verify(&sign(Algorithm::HS256, &c, SECRET)).unwrap_err();
        assert!(matches!(err, JwtError::InvalidAudience));
        assert_eq!(err.to_string(), "invalid audience");
    }

    #[test]
    fn missing_claims_rejected() {
        let a = auth();
        #[derive(serde::Serialize)]
        struct NoIss {
            sub: String,
            aud: String,
            exp: u64,
            iat: u64,
        }
        let now = now_unix();
        let c = NoIss {
            sub: "a".into(),
            aud: "cocoon-api".into(),
            exp: now + 300,
            iat: now,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(a.verify(&t).is_err());
    }

    #[test]
    fn alg_none_rejected() {
        let a = auth();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(300)).unwrap());
        for t in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(a.verify(&t).is_err(), "{t}");
        }
        // Still routed to JWT verification rather than treated as an API key.
        assert!(JwtAuth::looks_like_jwt(&format!("{header}.{payload}.")));
        // "None" spelled as the library's own variant name is rejected too.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"None"}"#);
        assert!(a.verify(&format!("{header}.{payload}.")).is_err());
    }

    #[test]
    fn other_hmac_algorithms_rejected() {
        let a = auth();
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = sign(alg, &claims(300), SECRET);
            assert!(
                matches!(a.verify(&t), Err(JwtError::InvalidAlgorithm)),
                "{alg:?}"
            );
        }
        // Header swapped to HS384 on an HS256 signature: still rejected.
        let t = sign(Algorithm::HS256, &claims(300), SECRET);
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS384","typ":"JWT"}"#);
        assert!(a.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn tampered_signature_and_payload_rejected() {
        let a = auth();
        let t = a.issue("alice", None).unwrap();
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig_bytes[0] ^= 1;
        let bad = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
        assert!(matches!(a.verify(&bad), Err(JwtError::InvalidSignature)));
        // Payload changed (sub -> mallory), signature kept.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        c.sub = "mallory".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert!(matches!(
            a.verify(&parts.join(".")),
            Err(JwtError::InvalidSignature)
        ));
        // Signed with a different secret.
        let other = sign(
            Algorithm::HS256,
            &claims(300),
            "another-secret-that-is-32-bytes-long!!",
        );
        assert!(matches!(a.verify(&other), Err(JwtError::InvalidSignature)));
    }

    #[test]
    fn garbage_rejected_without_panic() {
        let a = auth();
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "sk-cocoon-abc",
            "ey.ey.ey",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(a.verify(t).is_err(), "{t}");
        }
        assert_eq!(
            a.verify("a.b.c").unwrap_err().to_string(),
            "malformed token"
        );
    }

    #[test]
    fn config_validation() {
        let mut c = cfg();
        c.secret = "x".repeat(31);
        assert!(matches!(JwtAuth::new(&c), Err(JwtError::Config(_))));
        c.secret = "x".repeat(32);
        assert!(JwtAuth::new(&c).is_ok());
        let mut c = cfg();
        c.issuer.clear();
        assert!(JwtAuth::new(&c).is_err());
        let mut c = cfg();
        c.ttl_secs = 0;
        assert!(JwtAuth::new(&c).is_err());
        // ttl defaults; Debug hides the secret.
        let c: JwtConfig = serde_json::from_str(&format!(
            r#"{{"secret":"{SECRET}","issuer":"i","audience":"a"}}"#
        ))
        .unwrap();
        assert_eq!(c.ttl_secs, 3600);
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn looks_like_jwt_shapes() {
        let t = auth().issue("a", None).unwrap();
        assert!(JwtAuth::looks_like_jwt(&t));
        assert!(!JwtAuth::looks_like_jwt(
            "sk-cocoon-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRST"
        ));
        assert!(!JwtAuth::looks_like_jwt("a.b"));
        assert!(!JwtAuth::looks_like_jwt("a.b.c.d"));
        assert!(!JwtAuth::looks_like_jwt("a.b.c"));
        let no_alg = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT"}"#);
        assert!(!JwtAuth::looks_like_jwt(&format!("{no_alg}.e30.sig")));
        let not_obj = URL_SAFE_NO_PAD.encode(br#"["alg"]"#);
        assert!(!JwtAuth::looks_like_jwt(&format!("{not_obj}.e30.sig")));
        let alg = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        assert!(!JwtAuth::looks_like_jwt(&format!("{alg}.e30.s+g")));
        assert!(!JwtAuth::looks_like_jwt(&format!("{alg}..sig")));
        assert!(JwtAuth::looks_like_jwt(&format!("{alg}.e30.sig")));
    }
}
