//! Signed receipts: every job ends with a statement of what the worker did, signed by its
//! identity key, which its attestation binds (`report_data` covers the key). The router
//! checks the signature before it captures; the client gets the receipt with the answer; the
//! worker can later prove what it is owed from its own receipts.
//!
//! The signature covers the receipt's JSON exactly as transmitted (`receipt` holds those
//! bytes), so no canonical re-serialisation is needed to verify it, in any language:
//! `Ed25519(key, "cocoon-rs/receipt/v1\0" ‖ receipt_json)`.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::binding::random_bytes;
use crate::serde_bytes::{b64, hex_array};

const SIGNING_TAG: &[u8] = b"cocoon-rs/receipt/v1\0";
/// Receipts larger than this are refused unread.
pub const MAX_RECEIPT_BYTES: usize = 16 * 1024;

/// A worker's long-lived identity: an Ed25519 key made inside its TEE and kept in its data
/// directory. Its public half is bound into every attestation, so a receipt signed with it
/// is attributable to an attested worker, and a worker id is tied to it.
pub struct IdentityKey {
    key: SigningKey,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey").field("public", &self.public()).finish_non_exhaustive()
    }
}

/// The public half of an [`IdentityKey`], hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityPublicKey(#[serde(with = "hex_array")] pub [u8; 32]);

impl IdentityPublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Short, for logs: the first 8 bytes of SHA-256 of the key, hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

impl std::fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityPublicKey({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("identity key file {path}: {detail}")]
    KeyFile { path: String, detail: String },
    #[error("receipt is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("receipt signature is invalid for key {key}: not signed by this worker, or altered")]
    BadSignature { key: String },
    #[error("receipt is malformed: {0}")]
    Malformed(String),
    #[error("receipt signing failed: {0}")]
    Sign(String),
}

impl IdentityKey {
    pub fn generate() -> Result<Self, ReceiptError> {
        let seed: [u8; 32] = random_bytes().map_err(|e| ReceiptError::Sign(e.to_string()))?;
        Ok(Self { key: SigningKey::from_bytes(&seed) })
    }

    /// Loads the key from `path` (32 raw bytes), or makes one there (mode 0600) on first
    /// start. Inside a confidential VM the data directory is the VM's own encrypted disk.
    pub fn load_or_create(path: &Path) -> Result<Self, ReceiptError> {
        let err = |detail: String| ReceiptError::KeyFile { path: path.display().to_string(), detail };
        match std::fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| err(format!("{} bytes, expected 32", bytes.len())))?;
                Ok(Self { key: SigningKey::from_bytes(&seed) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                let tmp = path.with_extension("tmp");
                write_private(&tmp, &k.key.to_bytes()).map_err(|e| err(e.to_string()))?;
                std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
                Ok(k)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `receipt`.
    pub fn sign(&self, receipt: &Receipt) -> Result<SignedReceipt, ReceiptError> {
        let json = serde_json::to_vec(receipt).map_err(|e| ReceiptError::Sign(e.to_string()))?;
        let mut msg = Vec::with_capacity(SIGNING_TAG.len() + json.len());
        msg.extend_from_slice(SIGNING_TAG);
        msg.extend_from_slice(&json);
        let signature = self.key.sign(&msg).to_bytes().to_vec();
        Ok(SignedReceipt { receipt: json, signature, signer: self.public() })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Tokens by class, as the engine counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptUsage {
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

/// What a worker states about one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Always 1 for this format.
    pub version: u32,
    /// The network's job id (the ledger's key).
    pub job_id: Uuid,
    /// The client's request id, for an end-to-end sealed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
    pub worker_id: String,
    pub model: String,
    /// API path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// SHA-256 (hex) of the request body exactly as the worker received it (for a sealed
    /// end-to-end request: the sealed bytes).
    pub request_sha256: String,
    /// SHA-256 (hex) of the whole response as the worker emitted it (the body; for a
    /// stream, every `data:` payload in order, each followed by `\n`; for an end-to-end
    /// answer, its frames before the final one).
    pub response_sha256: String,
    pub usage: ReceiptUsage,
    /// The worker's price coefficient, thousandths.
    pub price_coefficient: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// A receipt with its signature. `receipt` holds the signed JSON bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    #[serde(with = "b64")]
    pub receipt: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// The key that signed, for the reader's convenience: a verifier must check it against
    /// the attested key it expects, never trust it on its own.
    pub signer: IdentityPublicKey,
}

impl SignedReceipt {
    /// Checks the signature against `key` (the worker's attested identity) and parses the
    /// receipt.
    pub fn verify(&self, key: &IdentityPublicKey) -> Result<Receipt, ReceiptError> {
        if self.receipt.len() > MAX_RECEIPT_BYTES {
            return Err(ReceiptError::TooLarge { len: self.receipt.len(), max: MAX_RECEIPT_BYTES });
        }
        let bad = || ReceiptError::BadSignature { key: key.fingerprint() };
        let vk = verifying_key(key).ok_or_else(bad)?;
        let sig = Signature::from_slice(&self.signature).map_err(|_| bad())?;
        let mut msg = Vec::with_capacity(SIGNING_TAG.len() + self.receipt.len());
        msg.extend_from_slice(SIGNING_TAG);
        msg.extend_from_slice(&self.receipt);
        vk.verify(&msg, &sig).map_err(|_| bad())?;
        let r: Receipt = serde_json::from_slice(&self.receipt).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if r.version != 1 {
            return Err(ReceiptError::Malformed(format!("version {} (expected 1)", r.version)));
        }
        Ok(r)
    }

    /// SHA-256 of the signed bytes (what the ledger stores with the capture).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.receipt).into()
    }

    /// The receipt as one header value: URL-safe base64 of its JSON.
    pub fn to_header(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn from_header(v: &str) -> Result<Self, ReceiptError> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.trim())
            .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if raw.len() > 4 * MAX_RECEIPT_BYTES {
            return Err(ReceiptError::TooLarge { len: raw.len(), max: 4 * MAX_RECEIPT_BYTES });
        }
        serde_json::from_slice(&raw).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }
}

/// Most decompressed keys [`verifying_key`] keeps; past it the cache starts over (a key
/// missing from it is only decompressed again). A network has as many keys as workers.
const KEY_CACHE_MAX: usize = 4096;

/// `key` as a point, or `None` when its bytes are not one. Decompressing a point (a field
/// square root) was ~9 % of the router's receipt check (perf, 2026-12-06), and each worker
/// signs every job with the same key, so keys that decompressed are kept; one that did not
/// is never cached, and is refused again on every try.
fn verifying_key(key: &IdentityPublicKey) -> Option<VerifyingKey> {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    static KEYS: OnceLock<RwLock<HashMap<[u8; 32], VerifyingKey>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    if let Some(vk) = keys.read().unwrap_or_else(|p| p.into_inner()).get(&key.0) {
        return Some(*vk);
    }
    let vk = VerifyingKey::from_bytes(&key.0).ok()?;
    let mut keys = keys.write().unwrap_or_else(|p| p.into_inner());
    if keys.len() >= KEY_CACHE_MAX {
        keys.clear();
    }
    keys.insert(key.0, vk);
    Some(vk)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            version: 1,
            job_id: Uuid::new_v4(),
            request_id: None,
            worker_id: "w1".into(),
            model: "m".into(),
            endpoint: "/v1/chat/completions".into(),
            request_sha256: "00".repeat(32),
            response_sha256: "11".repeat(32),
            usage: ReceiptUsage { prompt_tokens: 5, completion_tokens: 7, ..Default::default() },
            price_coefficient: 1000,
            started_at_ms: 1,
            finished_at_ms: 2,
        }
    }

    #[test]
    fn signed_receipts_verify_only_under_their_key_and_unaltered() {
        let k = IdentityKey::generate().unwrap();
        let s = k.sign(&receipt()).unwrap();
        assert_eq!(s.verify(&k.public()).unwrap(), receipt_with(&s));
        // Another worker's key.
        let other = IdentityKey::generate().unwrap();
        assert!(matches!(s.verify(&other.public()), Err(ReceiptError::BadSignature { .. })));
        // One changed byte of the receipt, or of the signature.
        let mut t = s.clone();
        let i = t.receipt.iter().position(|&b| b == b'7').unwrap();
        t.receipt[i] = b'9';
        assert!(matches!(t.verify(&k.public()), Err(ReceiptError::BadSignature { .. })));
        let mut t = s.clone();
        t.signature[0] ^= 1;
        assert!(matches!(t.verify(&k.public()), Err(ReceiptError::BadSignature { .. })));
        // A header round trip keeps it verifiable.
        let back = SignedReceipt::from_header(&s.to_header()).unwrap();
        assert!(back.verify(&k.public()).is_ok());
    }

    #[test]
    fn the_key_cache_refuses_non_points_every_time_and_survives_its_bound() {
        let k = IdentityKey::generate().unwrap();
        let s = k.sign(&receipt()).unwrap();
        // 32 bytes that are not a curve point: refused, and again (never cached).
        let not_a_point = (0u8..=255)
            .map(|b| [b; 32])
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(s.verify(&IdentityPublicKey(not_a_point)), Err(ReceiptError::BadSignature { .. })));
        }
        // Past the bound the cache starts over; verification is unchanged.
        for _ in 0..=KEY_CACHE_MAX {
            let _ = verifying_key(&IdentityKey::generate().unwrap().public());
        }
        assert!(s.verify(&k.public()).is_ok());
        assert!(s.verify(&IdentityKey::generate().unwrap().public()).is_err());
    }

    fn receipt_with(s: &SignedReceipt) -> Receipt {
        serde_json::from_slice(&s.receipt).unwrap()
    }

    #[test]
    fn the_identity_key_persists_across_starts() {
        let dir = std::env::temp_dir().join(format!("identity-{}", Uuid::new_v4().simple()));
        let path = dir.join("worker-identity.key");
        let a = IdentityKey::load_or_create(&path).unwrap();
        let b = IdentityKey::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(IdentityKey::load_or_create(&path), Err(ReceiptError::KeyFile { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
