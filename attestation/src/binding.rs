//! The binding between evidence and a worker's keys:
//! `report_data = SHA-512(REPORT_DATA_DOMAIN_TAG_V2 ‖ hpke_pk ‖ SHA-256(tls_spki) ‖ nonce ‖
//! identity_pk ‖ models_digest)` for a worker (its identity key signs its receipts; the
//! models digest commits to the model ids and weight digests it serves), or the v1 layout
//! `SHA-512(REPORT_DATA_DOMAIN_TAG ‖ hpke_pk ‖ SHA-256(tls_spki) ‖ nonce)` for evidence that
//! binds no identity (a gateway's own, older workers). Every input has a fixed length and
//! the tags differ, so neither concatenation is ambiguous.

use rand_core::{OsRng, TryRngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::error::{AttestationError, EvidenceError};
use crate::serde_bytes::{hex_array, parse_hex_array};

/// Domain separation tag hashed first into `report_data`.
pub const REPORT_DATA_DOMAIN_TAG: &[u8] = b"cocoon-rs/attestation/report-data/v1\0";

/// Domain tag of the worker layout (with identity key and models digest).
pub const REPORT_DATA_DOMAIN_TAG_V2: &[u8] = b"cocoon-rs/attestation/report-data/v2\0";
const MODELS_TAG: &[u8] = b"cocoon-rs/attestation/models/v1\0";

/// SHA-256 over the models a worker serves: id and weights digest (hex, or empty when not
/// measured) of each, sorted by id, length-prefixed. The router recomputes it from the
/// worker's hello, so the list it routes by is the list the evidence commits to.
pub fn models_digest<'a>(models: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> [u8; 32] {
    let mut list: Vec<(&str, &str)> = models.into_iter().map(|(id, d)| (id, d.unwrap_or(""))).collect();
    list.sort_unstable();
    let mut h = Sha256::new();
    h.update(MODELS_TAG);
    for (id, digest) in list {
        for part in [id, digest] {
            h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize().into()
}

/// A verifier's challenge: 32 random bytes, hex in JSON and URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nonce(#[serde(with = "hex_array")] pub [u8; 32]);

impl Nonce {
    /// A fresh nonce from the operating system's RNG.
    pub fn random() -> Result<Self, EvidenceError> {
        Ok(Self(random_bytes()?))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::str::FromStr for Nonce {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex_array(s).map(Self)
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

impl std::fmt::Display for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A worker's HPKE public key (X25519, 32 bytes), hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HpkePublicKey(#[serde(with = "hex_array")] pub [u8; 32]);

impl HpkePublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// First 8 bytes of SHA-256 of the key, hex: short enough for logs and verdicts.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

impl std::fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HpkePublicKey({})", self.to_hex())
    }
}

/// SHA-256 of a TLS certificate's SubjectPublicKeyInfo (DER).
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// The SubjectPublicKeyInfo (DER) of an X.509 certificate (DER): what the binding hashes
/// for the TLS key of a worker's connection.
pub fn cert_spki_der(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("TLS certificate is not valid DER X.509: {e}"))?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("re-encoding the certificate's public key: {e}"))
}

/// The keys and nonce a piece of evidence must be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportDataBinding {
    pub hpke_public_key: HpkePublicKey,
    pub tls_spki_sha256: [u8; 32],
    pub nonce: Nonce,
    /// A worker's identity key and models digest (the v2 layout); `None`: v1.
    pub worker: Option<(crate::receipt::IdentityPublicKey, [u8; 32])>,
}

impl ReportDataBinding {
    /// Binding for a TLS SPKI given in DER (hashed here).
    pub fn new(hpke_public_key: HpkePublicKey, tls_spki_der: &[u8], nonce: Nonce) -> Self {
        Self {
            hpke_public_key,
            tls_spki_sha256: spki_sha256(tls_spki_der),
            nonce,
            worker: None,
        }
    }

    /// The worker layout: also binds its identity key and the digest of its models.
    pub fn with_worker(mut self, identity: crate::receipt::IdentityPublicKey, models_digest: [u8; 32]) -> Self {
        self.worker = Some((identity, models_digest));
        self
    }

    /// The 64 bytes to place in the TEE report's `report_data`.
    pub fn report_data(&self) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(if self.worker.is_some() { REPORT_DATA_DOMAIN_TAG_V2 } else { REPORT_DATA_DOMAIN_TAG });
        h.update(self.hpke_public_key.0);
        h.update(self.tls_spki_sha256);
        h.update(self.nonce.0);
        if let Some((identity, models)) = &self.worker {
            h.update(identity.0);
            h.update(models);
        }
        h.finalize().into()
    }

    /// Checks that `report_data` (from verified evidence) is this binding's.
    pub fn check(&self, report_data: &[u8; 64]) -> Result<(), AttestationError> {
        check_report_data(&self.report_data(), report_data)
    }
}

/// Constant-time comparison of an expected and an attested `report_data`. Also the check to use
/// for evidence whose `report_data` was not built by [`ReportDataBinding`] (e.g. vendor samples).
pub fn check_report_data(expected: &[u8; 64], actual: &[u8; 64]) -> Result<(), AttestationError> {
    if bool::from(expected.ct_eq(actual)) {
        Ok(())
    } else {
        Err(AttestationError::ReportDataMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        })
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], EvidenceError> {
    let mut out = [0u8; N];
    OsRng
        .try_fill_bytes(&mut out)
        .map_err(|e| EvidenceError::Random(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn binding() -> ReportDataBinding {
        ReportDataBinding::new(HpkePublicKey([1; 32]), b"spki", Nonce([2; 32]))
    }

    #[test]
    fn report_data_changes_with_every_input() {
        let base = binding();
        let rd = base.report_data();
        let mut other = base;
        other.hpke_public_key.0[0] ^= 1;
        assert_ne!(other.report_data(), rd);
        let mut other = base;
        other.tls_spki_sha256[31] ^= 1;
        assert_ne!(other.report_data(), rd);
        let mut other = base;
        other.nonce.0[5] ^= 1;
        assert_ne!(other.report_data(), rd);
        assert!(base.check(&rd).is_ok());
        // The worker layout: identity and models each change it, and differ from v1.
        let id = crate::receipt::IdentityPublicKey([7; 32]);
        let w = base.with_worker(id, [8; 32]);
        assert_ne!(w.report_data(), rd);
        assert_ne!(base.with_worker(crate::receipt::IdentityPublicKey([9; 32]), [8; 32]).report_data(), w.report_data());
        assert_ne!(base.with_worker(id, [0; 32]).report_data(), w.report_data());
    }

    #[test]
    fn models_digest_is_order_free_and_commits_to_ids_and_weights() {
        let a = models_digest([("m1", Some("aa")), ("m2", None)]);
        assert_eq!(a, models_digest([("m2", None), ("m1", Some("aa"))]));
        assert_ne!(a, models_digest([("m1", Some("ab")), ("m2", None)]));
        assert_ne!(a, models_digest([("m1", Some("aa"))]));
        // Length prefixes: moving bytes between id and digest changes it.
        assert_ne!(models_digest([("ab", Some("c"))]), models_digest([("a", Some("bc"))]));
    }

    #[test]
    fn report_data_is_sha512_of_the_documented_layout() {
        let b = binding();
        let mut input = REPORT_DATA_DOMAIN_TAG.to_vec();
        input.extend_from_slice(&[1; 32]);
        input.extend_from_slice(&Sha256::digest(b"spki"));
        input.extend_from_slice(&[2; 32]);
        let want: [u8; 64] = Sha512::digest(&input).into();
        assert_eq!(b.report_data(), want);
    }

    #[test]
    fn mismatch_names_both_values() {
        let err = binding().check(&[0; 64]).unwrap_err();
        assert_eq!(err.rule(), "report_data");
        assert!(err.to_string().contains(&hex::encode([0u8; 64])), "{err}");
    }

    #[test]
    fn nonce_round_trips_as_hex() {
        let n = Nonce::random().unwrap();
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, format!("\"{}\"", n.to_hex()));
        let back: Nonce = serde_json::from_str(&json).unwrap();
        assert_eq!(back, n);
        assert_eq!(n.to_hex().parse::<Nonce>().unwrap(), n);
        assert!("abcd".parse::<Nonce>().is_err());
    }
}
