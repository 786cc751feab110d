//! TON Connect `ton_proof`: proof that the caller controls a TON wallet.
//!
//! As specified by TON Connect (ton-blockchain/ton-connect, requests-responses.md, "Address
//! proof signature (ton_proof)") and checked like its reference backend
//! (ton-connect/demo-dapp-with-react-ui, src/server/services/ton-proof-service.ts):
//!
//! ```text
//! message   = "ton-proof-item-v2/" ++ workchain (int32, big endian) ++ address hash (32 bytes)
//!             ++ domain length (uint32, little endian) ++ domain ++ timestamp (uint64, LE)
//!             ++ payload
//! signature = Ed25519(sha256(0xffff ++ "ton-connect" ++ sha256(message)))
//! ```
//!
//! The checks, in order: the address is raw `wc:hex`; the state init (the wallet's
//! `walletStateInit`) hashes to that address; its code is a known wallet contract (v2 to v5r1,
//! as `tonlib-core` lists them) whose data gives the public key; a `public_key` sent along
//! must be that key; the domain is on the allow-list and its stated length is its length;
//! the timestamp is at most `max_age_secs` old and not ahead of our clock by more than a
//! minute; the signature verifies. The payload must be one this server issued and not used
//! before: the caller takes it (single use, across replicas) after these checks pass, so a
//! forged proof cannot burn someone else's payload.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
// `Cell::cell_hash` by path: the TLB trait (imported for `from_cell`) has a `cell_hash` too.
use tonlib_core::cell::{ArcCell, BagOfCells, Cell};
use tonlib_core::tlb_types::block::state_init::StateInit;
use tonlib_core::tlb_types::tlb::TLB;
use tonlib_core::wallet::version_helper::VersionHelper;
use tonlib_core::wallet::versioned::v1_v2::WalletDataV1V2;
use tonlib_core::wallet::versioned::v3::WalletDataV3;
use tonlib_core::wallet::versioned::v4::WalletDataV4;
use tonlib_core::wallet::versioned::v5::WalletDataV5;
use tonlib_core::wallet::wallet_version::WalletVersion;
use utoipa::ToSchema;

const PROOF_PREFIX: &[u8] = b"ton-proof-item-v2/";
const CONNECT_PREFIX: &[u8] = b"ton-connect";
const FUTURE_SKEW_SECS: u64 = 60;
/// A wallet state init is a few hundred bytes; refuse anything absurd before parsing.
const MAX_STATE_INIT_CHARS: usize = 16 * 1024;
const MAX_PAYLOAD_CHARS: usize = 256;

/// `ton_proof` as the TON Connect SDK hands it to the app, with the wallet's state init.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TonProofRequest {
    /// The wallet address, raw form `wc:hex` (TON Connect's `account.address`).
    #[schema(example = "0:479b77d14c03de264068a3ea75881706116fc871c7590104dd515c79fd3b7b7f")]
    pub address: String,
    /// TON Connect's `account.chain`: `-239` mainnet, `-3` testnet. Informational.
    #[serde(default)]
    pub network: Option<String>,
    /// TON Connect's `account.publicKey` (hex); when sent it must be the state init's key.
    #[serde(default)]
    pub public_key: Option<String>,
    pub proof: TonProof,
}

/// The `ton_proof` item of a TON Connect connect event, plus `state_init`
/// (`account.walletStateInit`, base64 BoC).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TonProof {
    /// Unix seconds when the wallet signed.
    pub timestamp: u64,
    pub domain: TonProofDomain,
    /// The payload this server issued (`POST /v1/dashboard/auth/ton/payload`).
    pub payload: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
    /// Base64 BoC of the wallet's StateInit.
    pub state_init: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TonProofDomain {
    #[serde(rename = "lengthBytes")]
    pub length_bytes: u32,
    pub value: String,
}

/// A verified proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTonProof {
    /// Raw form `wc:hex`, lowercase.
    pub address: String,
    pub workchain: i32,
    pub public_key: [u8; 32],
    pub wallet: WalletVersion,
    pub payload: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TonProofError {
    #[error("ton_proof is malformed: {0}")]
    Malformed(String),
    #[error("ton_proof domain {0:?} is not one this dashboard accepts")]
    Domain(String),
    #[error("ton_proof is too old: signed {age_secs} s ago, the limit is {max_age_secs} s")]
    Expired { age_secs: u64, max_age_secs: u64 },
    #[error("ton_proof timestamp is in the future")]
    FromTheFuture,
    #[error("the wallet state init does not belong to the address {0}")]
    StateInitMismatch(String),
    #[error("the wallet state init is not a known wallet contract")]
    UnknownWallet,
    #[error("public_key is not the key in the wallet's state init")]
    PublicKeyMismatch,
    #[error("ton_proof signature does not verify")]
    Signature,
    #[error("ton_proof payload was not issued by this server, has expired or was used already")]
    Payload,
}

impl TonProofError {
    /// Short stable name (tests, logs, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            TonProofError::Malformed(_) => "malformed",
            TonProofError::Domain(_) => "domain",
            TonProofError::Expired { .. } => "expired",
            TonProofError::FromTheFuture => "future",
            TonProofError::StateInitMismatch(_) => "state_init_mismatch",
            TonProofError::UnknownWallet => "unknown_wallet",
            TonProofError::PublicKeyMismatch => "public_key_mismatch",
            TonProofError::Signature => "signature",
            TonProofError::Payload => "payload",
        }
    }
}

/// What a proof must satisfy.
#[derive(Clone, Debug)]
pub struct TonProofPolicy {
    /// Exactly as wallets report them (`host` or `host:port`), compared case-insensitively.
    pub domains: Vec<String>,
    pub max_age: Duration,
}

fn malformed(what: impl Into<String>) -> TonProofError {
    TonProofError::Malformed(what.into())
}

/// `wc:hex` → (workchain, hash).
pub fn parse_raw_address(s: &str) -> Result<(i32, [u8; 32]), TonProofError> {
    let (wc, hex_part) = s
        .split_once(':')
        .ok_or_else(|| malformed("address must be raw form wc:hex"))?;
    let wc: i32 = wc.parse().map_err(|_| malformed("address workchain is not a number"))?;
    if wc != 0 && wc != -1 {
        return Err(malformed("address workchain must be 0 or -1"));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).map_err(|_| malformed("address hash must be 64 hex characters"))?;
    Ok((wc, hash))
}

/// Most cells a state init may have (a wallet's has a few dozen).
const MAX_BOC_CELLS: usize = 1024;

/// Checks the layout of a bag of cells before `tonlib-core` reads it: its reader trusts the
/// cell count for an allocation and the reference indexes for slice indexing, so a crafted
/// BoC could abort or panic the process. Mirrors `tonlib_core::cell::RawBagOfCells::parse`
/// (and the `serialized_boc#b5ee9c72` layout of TON's crypto/tl/boc.tlb): one root, no absent
/// cells, at most 1024 cells, every reference pointing forward to an existing cell.
fn check_boc_layout(b: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let end = at.checked_add(n).filter(|&e| e <= b.len()).ok_or("truncated")?;
        let s = &b[at..end];
        at = end;
        Ok(s)
    };
    let uint = |bytes: &[u8]| bytes.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
    if take(4)? != [0xb5, 0xee, 0x9c, 0x72] {
        return Err("not a BoC (magic)".into());
    }
    let flags = take(1)?[0];
    let (has_idx, has_crc) = (flags & 0x80 != 0, flags & 0x40 != 0);
    let size = usize::from(flags & 0x07);
    if !(1..=4).contains(&size) {
        return Err(format!("reference size {size} (must be 1 to 4)"));
    }
    let off_bytes = usize::from(take(1)?[0]);
    if !(1..=8).contains(&off_bytes) {
        return Err(format!("offset size {off_bytes} (must be 1 to 8)"));
    }
    let cells = uint(take(size)?);
    let roots = uint(take(size)?);
    let absent = uint(take(size)?);
    take(off_bytes)?; // tot_cells_size
    if cells == 0 || cells > MAX_BOC_CELLS {
        return Err(format!("{cells} cells (at most {MAX_BOC_CELLS})"));
    }
    if roots != 1 || absent != 0 {
        return Err("must have exactly one root and no absent cells".into());
    }
    if uint(take(size)?) >= cells {
        return Err("root index out of range".into());
    }
    if has_idx {
        take(cells.checked_mul(off_bytes).ok_or("index too large")?)?;
    }
    for i in 0..cells {
        let (d1, d2) = (take(1)?[0], take(1)?[0]);
        let refs = usize::from(d1 & 0x07);
        if refs > 4 {
            return Err(format!("cell {i} has {refs} references"));
        }
        if d1 & 0x10 != 0 {
            // Stored hashes and depths: (levels + 1) x (32 + 2) bytes.
            let levels = (d1 >> 5).count_ones() as usize;
            take((levels + 1) * 34)?;
        }
        let data = take(usize::from((d2 >> 1) + (d2 & 1)))?;
        if d2 & 1 == 1 && data.last() == Some(&0) {
            return Err(format!("cell {i}: padded data ends in a zero byte"));
        }
        for _ in 0..refs {
            let r = uint(take(size)?);
            if r <= i || r >= cells {
                return Err(format!("cell {i} refers to cell {r}"));
            }
        }
    }
    if has_crc {
        take(4)?;
    }
    Ok(())
}

fn parse_boc(b64: &str) -> Result<ArcCell, TonProofError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| malformed("state_init is not base64"))?;
    check_boc_layout(&bytes).map_err(|e| malformed(format!("state_init is not a valid BoC: {e}")))?;
    BagOfCells::parse(&bytes)
        .and_then(|b| b.single_root())
        .map_err(|e| malformed(format!("state_init is not a BoC with one root: {e}")))
}

/// The wallet version and public key of a state init `code`/`data`.
fn wallet_key(init: &StateInit) -> Result<(WalletVersion, [u8; 32]), TonProofError> {
    let (Some(code), Some(data)) = (&init.code, &init.data) else {
        return Err(TonProofError::UnknownWallet);
    };
    let version = *VersionHelper::get_version(&Cell::cell_hash(&code.0)).map_err(|_| TonProofError::UnknownWallet)?;
    let data: &ArcCell = &data.0;
    let key = match version {
        WalletVersion::V1R1 | WalletVersion::V1R2 | WalletVersion::V1R3 | WalletVersion::V2R1 | WalletVersion::V2R2 => {
            WalletDataV1V2::from_cell(data).map(|d| d.public_key)
        }
        WalletVersion::V3R1 | WalletVersion::V3R2 => WalletDataV3::from_cell(data).map(|d| d.public_key),
        WalletVersion::V4R1 | WalletVersion::V4R2 => WalletDataV4::from_cell(data).map(|d| d.public_key),
        WalletVersion::V5R1 => WalletDataV5::from_cell(data).map(|d| d.public_key),
        // Highload wallets are not user wallets; TON Connect wallets never send them.
        _ => return Err(TonProofError::UnknownWallet),
    }
    .map_err(|_| TonProofError::UnknownWallet)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(key.as_slice());
    Ok((version, out))
}

/// The bytes the wallet signs (the hash of which it signs, see the module docs).
pub fn signed_hash(workchain: i32, hash: &[u8; 32], domain: &str, timestamp: u64, payload: &str) -> [u8; 32] {
    let mut message = Vec::with_capacity(PROOF_PREFIX.len() + 48 + domain.len() + payload.len());
    message.extend_from_slice(PROOF_PREFIX);
    message.extend_from_slice(&workchain.to_be_bytes());
    message.extend_from_slice(hash);
    message.extend_from_slice(&(domain.len() as u32).to_le_bytes());
    message.extend_from_slice(domain.as_bytes());
    message.extend_from_slice(&timestamp.to_le_bytes());
    message.extend_from_slice(payload.as_bytes());
    let mut full = Vec::with_capacity(2 + CONNECT_PREFIX.len() + 32);
    full.extend_from_slice(&[0xff, 0xff]);
    full.extend_from_slice(CONNECT_PREFIX);
    full.extend_from_slice(&Sha256::digest(&message));
    Sha256::digest(&full).into()
}

/// Checks `req` against `policy` at `now` (Unix seconds). Does not look at whether the
/// payload was issued; the caller takes it afterwards.
pub fn verify(req: &TonProofRequest, policy: &TonProofPolicy, now: u64) -> Result<VerifiedTonProof, TonProofError> {
    let (workchain, hash) = parse_raw_address(req.address.trim())?;
    let proof = &req.proof;
    if proof.payload.is_empty() || proof.payload.len() > MAX_PAYLOAD_CHARS {
        return Err(malformed(format!("payload must be 1 to {MAX_PAYLOAD_CHARS} characters")));
    }
    if proof.state_init.len() > MAX_STATE_INIT_CHARS {
        return Err(malformed("state_init is too large"));
    }

    // The state init must be the address's: an address is the hash of its StateInit cell.
    let root = parse_boc(proof.state_init.trim())?;
    if Cell::cell_hash(&root).as_slice() != hash.as_slice() {
        return Err(TonProofError::StateInitMismatch(req.address.clone()));
    }
    let init = StateInit::from_cell(&root).map_err(|e| malformed(format!("state_init is not a StateInit: {e}")))?;
    let (wallet, public_key) = wallet_key(&init)?;
    if let Some(given) = req.public_key.as_deref().filter(|k| !k.is_empty()) {
        let mut given_key = [0u8; 32];
        hex::decode_to_slice(given.trim(), &mut given_key).map_err(|_| malformed("public_key must be 64 hex characters"))?;
        if given_key != public_key {
            return Err(TonProofError::PublicKeyMismatch);
        }
    }

    let domain = &proof.domain.value;
    if proof.domain.length_bytes as usize != domain.len() {
        return Err(malformed(format!(
            "domain.lengthBytes is {} but the domain is {} bytes",
            proof.domain.length_bytes,
            domain.len()
        )));
    }
    if !policy.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
        return Err(TonProofError::Domain(domain.chars().take(100).collect()));
    }
    if proof.timestamp > now.saturating_add(FUTURE_SKEW_SECS) {
        return Err(TonProofError::FromTheFuture);
    }
    let age_secs = now.saturating_sub(proof.timestamp);
    if age_secs > policy.max_age.as_secs() {
        return Err(TonProofError::Expired {
            age_secs,
            max_age_secs: policy.max_age.as_secs(),
        });
    }

    let sig = base64::engine::general_purpose::STANDARD
        .decode(proof.signature.trim())
        .ok()
        .and_then(|raw| Signature::from_slice(&raw).ok())
        .ok_or(TonProofError::Signature)?;
    let key = VerifyingKey::from_bytes(&public_key).map_err(|_| TonProofError::Signature)?;
    let digest = signed_hash(workchain, &hash, domain, proof.timestamp, &proof.payload);
    key.verify_strict(&digest, &sig).map_err(|_| TonProofError::Signature)?;
    Ok(VerifiedTonProof {
        address: format!("{workchain}:{}", hex::encode(hash)),
        workchain,
        public_key,
        wallet,
        payload: proof.payload.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Vectors: `testdata/ton_proof/proofs.json`, made by `testdata/ton_proof/generate.mjs`
    //! from a real wallet v5r1 / v4r2 key pair with @ton/crypto, @ton/core and @ton/ton.

    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        now: u64,
        allowed_domains: Vec<String>,
        max_age_secs: u64,
        public_key: String,
        valid: Vec<Valid>,
        invalid: Vec<Invalid>,
    }
    #[derive(Deserialize)]
    struct Valid {
        name: String,
        version: String,
        address: String,
        request: TonProofRequest,
    }
    #[derive(Deserialize)]
    struct Invalid {
        name: String,
        error: String,
        request: TonProofRequest,
    }

    fn vectors() -> (Vectors, TonProofPolicy) {
        let v: Vectors = serde_json::from_str(include_str!("../../testdata/ton_proof/proofs.json")).unwrap();
        let policy = TonProofPolicy {
            domains: v.allowed_domains.clone(),
            max_age: Duration::from_secs(v.max_age_secs),
        };
        (v, policy)
    }

    #[test]
    fn proofs_from_real_wallets_verify() {
        let (v, policy) = vectors();
        for c in &v.valid {
            let ok = verify(&c.request, &policy, v.now).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(ok.address, c.address, "{}", c.name);
            assert_eq!(hex::encode(ok.public_key), v.public_key, "{}", c.name);
            let expect = match c.version.as_str() {
                "v5r1" => WalletVersion::V5R1,
                "v4r2" => WalletVersion::V4R2,
                other => panic!("{other}"),
            };
            assert_eq!(ok.wallet, expect, "{}", c.name);
        }
    }

    #[test]
    fn bad_proofs_fail_with_the_right_reason() {
        let (v, policy) = vectors();
        for c in &v.invalid {
            let err = verify(&c.request, &policy, v.now).expect_err(&c.name);
            assert_eq!(err.kind(), c.error, "{}: {err}", c.name);
        }
        // The same valid proof, a minute past its window.
        let late = v.now + policy.max_age.as_secs() + 60;
        assert!(matches!(verify(&v.valid[0].request, &policy, late), Err(TonProofError::Expired { .. })));
        // An empty allow-list accepts no domain.
        let none = TonProofPolicy { domains: vec![], max_age: policy.max_age };
        assert!(matches!(verify(&v.valid[0].request, &none, v.now), Err(TonProofError::Domain(_))));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let (v, policy) = vectors();
        let base = v.valid[0].request.clone();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut refused = 0;
        for i in 0..3000 {
            let mut r = base.clone();
            // xorshift: deterministic "random" edits of the state init's bytes.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut boc = base64::engine::general_purpose::STANDARD.decode(&base.proof.state_init).unwrap();
            let at = (rng as usize) % boc.len();
            boc[at] ^= (rng >> 32) as u8 | 1;
            if i % 3 == 0 {
                boc.truncate(at);
            }
            r.proof.state_init = base64::engine::general_purpose::STANDARD.encode(&boc);
            // Never a panic. An edit the BoC format ignores (a flag, padding) may leave the
            // same cells, and so the same valid proof: only a changed cell tree must fail.
            match verify(&r, &policy, v.now) {
                Err(_) => refused += 1,
                Ok(ok) => assert_eq!(ok.address, v.valid[0].address),
            }
        }
        assert!(refused > 2500, "{refused} of 3000 edits refused");
        for addr in ["", "0:", "0:zz", "2:00", "x:00", &format!("0:{}", "a".repeat(63))] {
            let mut r = base.clone();
            r.address = addr.into();
            assert!(matches!(verify(&r, &policy, v.now), Err(TonProofError::Malformed(_))), "{addr}");
        }
        let mut r = base.clone();
        r.proof.signature = "not base64!".into();
        assert_eq!(verify(&r, &policy, v.now), Err(TonProofError::Signature));
        r = base.clone();
        r.proof.state_init = "AAAA".into();
        assert!(matches!(verify(&r, &policy, v.now), Err(TonProofError::Malformed(_))));
        // A BoC claiming 2^32-1 cells is refused before anything is allocated for them.
        let huge = [0xb5, 0xee, 0x9c, 0x72, 0x04, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        assert!(check_boc_layout(&huge).unwrap_err().contains("cells"));
    }
}
