//! Evidence as it travels (inside protocol messages, RA-TLS certificates and the JSON report
//! endpoint): a TDX quote, an SEV-SNP report with its VCEK, or a simulated report.

use serde::{Deserialize, Serialize};

use crate::binding::{HpkePublicKey, Nonce, ReportDataBinding};
use crate::serde_bytes::{b64, hex_array};
use crate::simulated::SimulatedEvidence;

/// Largest TDX quote accepted (real ones are about 5 KB, most of it the PCK chain).
pub const MAX_TDX_QUOTE_BYTES: usize = 64 * 1024;
/// An SEV-SNP attestation report is exactly this long (ATT_REP_FW_LEN).
pub const SNP_REPORT_BYTES: usize = 1184;
/// Largest VCEK certificate accepted (real ones are about 1.4 KB).
pub const MAX_VCEK_BYTES: usize = 8 * 1024;

/// Which kind of TEE produced the evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeeKind {
    Tdx,
    SevSnp,
    Simulated,
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKind::Tdx => "TDX",
            TeeKind::SevSnp => "SEV-SNP",
            TeeKind::Simulated => "simulated",
        })
    }
}

/// Hardware (or simulated) evidence whose `report_data` binds a worker's keys to a nonce.
/// JSON: `{"kind": "tdx" | "sev_snp" | "simulated", "data": {...}}`. Adjacently tagged, not
/// internally: serde buffers internally tagged content as if it were human-readable, which
/// breaks `dcap-qvl`'s collateral in binary formats (MessagePack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Evidence {
    Tdx(TdxEvidence),
    SevSnp(SnpEvidence),
    Simulated(SimulatedEvidence),
}

impl Evidence {
    pub fn kind(&self) -> TeeKind {
        match self {
            Evidence::Tdx(_) => TeeKind::Tdx,
            Evidence::SevSnp(_) => TeeKind::SevSnp,
            Evidence::Simulated(_) => TeeKind::Simulated,
        }
    }

    /// Whether this is simulated (insecure, dev-only) evidence.
    pub fn is_insecure_simulated(&self) -> bool {
        matches!(self, Evidence::Simulated(_))
    }
}

/// An Intel TDX quote (v4 or v5), optionally with the Intel collateral it verifies against.
/// Collateral is Intel-signed, so a worker may attach it; a verifier prefers its own cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxEvidence {
    #[serde(with = "b64")]
    pub quote: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral: Option<dcap_qvl::QuoteCollateralV3>,
}

/// An AMD SEV-SNP attestation report and the VCEK certificate (DER) of the chip that signed it.
/// The AMD root (ARK) and signing key (ASK) come from the verifier's built-in copies, never
/// from the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpEvidence {
    #[serde(with = "b64")]
    pub report: Vec<u8>,
    #[serde(with = "b64")]
    pub vcek: Vec<u8>,
}

/// What a worker presents to be trusted: evidence plus the keys and nonce its `report_data`
/// binds. The verifier recomputes the binding from these fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAttestation {
    pub evidence: Evidence,
    /// The worker's HPKE (X25519) public key: jobs are sealed to it.
    pub hpke_public_key: HpkePublicKey,
    /// SHA-256 of the worker's TLS certificate SubjectPublicKeyInfo (DER).
    #[serde(with = "hex_array")]
    pub tls_spki_sha256: [u8; 32],
    /// The verifier's nonce the evidence answers.
    pub nonce: Nonce,
    /// A worker's identity key (signs its receipts), bound with `models_digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<crate::receipt::IdentityPublicKey>,
    /// [`crate::models_digest`] of the models the worker serves.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex32")]
    pub models_digest: Option<[u8; 32]>,
    /// NVIDIA GPU evidence whose SPDM nonce is [`crate::gpu_nonce`] of this attestation's
    /// binding; checked under `[attestation.policy.gpu]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::nvidia::GpuEvidence>,
}

pub(crate) mod opt_hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else { return Ok(None) };
        crate::serde_bytes::parse_hex_array(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

impl WorkerAttestation {
    /// The binding the evidence's `report_data` must carry.
    pub fn binding(&self) -> ReportDataBinding {
        ReportDataBinding {
            hpke_public_key: self.hpke_public_key,
            tls_spki_sha256: self.tls_spki_sha256,
            nonce: self.nonce,
            worker: match (self.identity_key, self.models_digest) {
                (Some(i), Some(m)) => Some((i, m)),
                _ => None,
            },
        }
    }
}
