//! NVIDIA GPU evidence (Hopper, confidential-computing mode): the SPDM 1.1 GET_MEASUREMENTS
//! request and signed response that NVML's `nvmlDeviceGetConfComputeGpuAttestationReport`
//! returns, and the device certificate chain (PEM) from
//! `nvmlDeviceGetConfComputeGpuCertificate`.
//!
//! Verified here, in Rust and offline, following NVIDIA's local verifier
//! (`nv-local-gpu-verifier` 2.7.3, `verifier/attestation/*.py`, `cc_admin_utils.py`):
//!
//! * the report parses with every length checked and nothing left over: request (37 bytes),
//!   then the response header, measurement record, responder nonce, opaque data and a
//!   96-byte ECDSA P-384 signature;
//! * the chain goes leaf first up to NVIDIA's Device Identity CA ([`NVIDIA_DEVICE_ROOT_PEM`],
//!   replaceable): names chain, each signature verifies (ECDSA P-384 / SHA-384), issuers are CAs
//!   allowed to sign certificates, no unknown critical extension, every certificate valid at
//!   the verification time;
//! * the leaf's key signs SHA-384 over request ‖ response without its signature (as
//!   `AttestationReport.verify_signature` does);
//! * the request's nonce is the one the verifier expects ([`gpu_nonce`]);
//! * [`GpuPolicy`]: golden measurements per block index, allowed driver and VBIOS versions
//!   (read from the signed opaque data).
//!
//! RIMs are not read here: `cocoon policy import-rim` checks their signatures once, offline
//! ([`crate::nvidia_rim`]), and writes their golden values into [`GpuPolicy`]. Not verified:
//! OCSP revocation of the chain, and any debug or devtools flag (the Hopper report carries
//! none that NVIDIA's verifier reads; CC mode itself is implied, see [`GpuClaims::cc_mode`]).
//! Simulated evidence (`insecure_simulated`, [`crate::nvidia_sim`]) runs through the same
//! checks against the root in its own chain, and only when the policy allows the simulated
//! TEE. See `docs/gpu-attestation.md`.

use std::collections::{BTreeMap, BTreeSet};

use p384::ecdsa::signature::Verifier as _;
use p384::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::Certificate;

use crate::binding::ReportDataBinding;
use crate::serde_bytes::b64;

/// NVIDIA's Device Identity CA (PEM), the root every GPU's device chain ends at. Copied from
/// `nv-local-gpu-verifier` 2.7.3, `verifier/certs/verifier_device_root.pem`.
pub const NVIDIA_DEVICE_ROOT_PEM: &str = include_str!("nvidia_device_root.pem");

/// Largest report accepted (a Hopper report with 64 SHA-384 blocks is 4117 bytes).
pub const MAX_GPU_REPORT_BYTES: usize = 16 * 1024;
/// Largest PEM chain accepted (the Hopper chain, root included, is about 4.8 KB).
pub const MAX_GPU_CERT_CHAIN_BYTES: usize = 16 * 1024;
/// Most certificates in a chain (Hopper: leaf, BROM, provisioner ICA, GH100 identity, root).
const MAX_CHAIN_CERTS: usize = 8;

/// Domain tag of [`gpu_nonce`].
pub const GPU_NONCE_DOMAIN_TAG: &[u8] = b"cocoon-rs/attestation/gpu-nonce/v1\0";

const SPDM_GET_MEASUREMENTS: u8 = 0xE0;
const SPDM_MEASUREMENTS: u8 = 0x60;
/// SPDM 1.1, the version Hopper speaks.
const SPDM_VERSION_1_1: u8 = 0x11;
const REQUEST_LEN: usize = 37;
const NONCE_LEN: usize = 32;
/// Hopper signs with ECDSA P-384: r ‖ s, 48 bytes each (`HopperSettings.signature_length`).
const SIGNATURE_LEN: usize = 96;
/// Measurement blocks in DMTF format (SPDM 1.1, MeasurementSpecification bit 0).
const DMTF_MEASUREMENT_SPEC: u8 = 1;

/// Opaque data field types the verifier reads (`OpaqueData.OPAQUE_DATA_TYPES`).
const OPAQUE_DRIVER_VERSION: u16 = 3;
const OPAQUE_VBIOS_VERSION: u16 = 6;
const OPAQUE_CHIP_SKU: u16 = 15;
const OPAQUE_PROJECT: u16 = 17;
const OPAQUE_PROJECT_SKU: u16 = 18;
/// OPAQUE_DATA_VERSION: 1 and later carry FEATURE_FLAG (`config.py`,
/// `MIN_OPAQUE_DATA_VERSION_TO_SUPPORT_FEATURE_FLAG`).
const OPAQUE_DATA_VERSION: u16 = 34;
const OPAQUE_FEATURE_FLAG: u16 = 36;

const OID_ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

/// The nonce a worker must pass to NVML for this session: SHA-256 of
/// [`GPU_NONCE_DOMAIN_TAG`] ‖ the CPU evidence's `report_data`. The `report_data` already
/// binds the verifier's nonce and the worker's keys, so GPU evidence made for another
/// session, or by another worker, answers a different nonce and fails.
pub fn gpu_nonce(binding: &ReportDataBinding) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GPU_NONCE_DOMAIN_TAG);
    h.update(binding.report_data());
    h.finalize().into()
}

/// GPU evidence as it travels: NVML's attestation report and the device chain, as returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuEvidence {
    /// SPDM GET_MEASUREMENTS request ‖ response (`attestationReport`).
    #[serde(with = "b64")]
    pub report: Vec<u8>,
    /// The device certificate chain, PEM, leaf first (`attestationCertChain`).
    pub cert_chain_pem: String,
    /// Made by [`crate::nvidia_sim::SimulatedGpu`] (dev only): the chain ends at a root of
    /// its own, which only a policy allowing the simulated TEE accepts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_simulated: bool,
}

/// Why GPU evidence was rejected. [`GpuError::rule`] gives a stable label per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    #[error("GPU {what} is {len} bytes, over the {max}-byte limit")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("malformed GPU attestation report: {0}")]
    Malformed(String),
    #[error("malformed GPU certificate chain: {0}")]
    MalformedChain(String),
    #[error("GPU certificate chain is not well formed: {0}")]
    ChainStructure(String),
    #[error("GPU certificate chain does not end at the trusted NVIDIA root: {0}")]
    UntrustedRoot(String),
    #[error("GPU certificate {subject:?} is not signed by its issuer {issuer:?}")]
    CertSignature { subject: String, issuer: String },
    #[error("GPU certificate {subject:?} expired: valid until {not_after} (unix s), verification time is {now}")]
    CertExpired { subject: String, not_after: u64, now: u64 },
    #[error("GPU certificate {subject:?} is not valid yet: valid from {not_before} (unix s), verification time is {now}")]
    CertNotYetValid { subject: String, not_before: u64, now: u64 },
    #[error("GPU architecture not supported: {0} (only Hopper GH100 is)")]
    UnsupportedArchitecture(String),
    #[error("GPU attestation report signature does not verify with the device leaf key")]
    ReportSignature,
    #[error("GPU attestation report answers nonce {got}, but nonce {expected} was asked for")]
    NonceMismatch { expected: String, got: String },
    #[error("GPU measurement block {index}: {detail}")]
    MeasurementNotAllowed { index: u8, detail: String },
    #[error("GPU driver version {got:?} is not allowed by policy (allowed: {allowed})")]
    DriverNotAllowed { got: String, allowed: String },
    #[error("GPU VBIOS version {got:?} is not allowed by policy (allowed: {allowed})")]
    VbiosNotAllowed { got: String, allowed: String },
    #[error("policy requires NVIDIA GPU evidence (attestation.policy.gpu.require = true) and the worker sent none")]
    Missing,
    #[error("simulated GPU evidence is refused: it is not backed by a GPU (allow_insecure_simulated_tee is off)")]
    SimulatedNotAllowed,
    #[error("GPU architecture {got} is not allowed by policy (allowed: {allowed})")]
    ArchitectureNotAllowed { got: String, allowed: String },
    #[error("GPU protection mode {got} is not allowed by policy (allowed: {allowed})")]
    ProtectionModeNotAllowed { got: String, allowed: String },
}

impl GpuError {
    /// A short, stable label of the failed rule (for metrics and logs).
    pub fn rule(&self) -> &'static str {
        use GpuError::*;
        match self {
            TooLarge { .. } => "gpu_too_large",
            Malformed(_) => "gpu_malformed",
            MalformedChain(_) => "gpu_malformed_chain",
            ChainStructure(_) => "gpu_chain_structure",
            UntrustedRoot(_) => "gpu_untrusted_root",
            CertSignature { .. } => "gpu_cert_signature",
            CertExpired { .. } => "gpu_cert_expired",
            CertNotYetValid { .. } => "gpu_cert_not_yet_valid",
            UnsupportedArchitecture(_) => "gpu_architecture",
            ReportSignature => "gpu_report_signature",
            NonceMismatch { .. } => "gpu_nonce",
            MeasurementNotAllowed { .. } => "gpu_measurement",
            DriverNotAllowed { .. } => "gpu_driver_version",
            VbiosNotAllowed { .. } => "gpu_vbios_version",
            Missing => "gpu_missing",
            SimulatedNotAllowed => "gpu_simulated_not_allowed",
            ArchitectureNotAllowed { .. } => "gpu_architecture_not_allowed",
            ProtectionModeNotAllowed { .. } => "gpu_protection_mode",
        }
    }
}

fn malformed(reason: impl Into<String>) -> GpuError {
    GpuError::Malformed(reason.into())
}

/// One DMTF measurement block of the response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMeasurement {
    /// Block index (1-based, unique).
    pub index: u8,
    /// DMTFSpecMeasurementValueType.
    pub value_type: u8,
    /// The measurement value, hex (SHA-384 digests on Hopper).
    pub value: String,
}

/// A parsed (not yet verified) GPU attestation report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport {
    pub spdm_version: u8,
    /// Request Param1 (bit 0: signature requested) and Param2 (0xFF: all blocks).
    pub request_param1: u8,
    pub request_param2: u8,
    /// The requester's nonce: the one the verifier chose.
    pub request_nonce: [u8; NONCE_LEN],
    pub slot_id: u8,
    /// The responder's own nonce (in the signed response).
    pub response_nonce: [u8; NONCE_LEN],
    pub measurements: Vec<GpuMeasurement>,
    /// Opaque data fields by type, raw.
    pub opaque: BTreeMap<u16, Vec<u8>>,
    /// r ‖ s.
    pub signature: [u8; SIGNATURE_LEN],
    /// Everything the signature covers: request ‖ response up to the signature.
    signed_len: usize,
}

impl GpuReport {
    /// The driver version from the opaque data (NUL padding removed).
    pub fn driver_version(&self) -> Option<String> {
        self.opaque.get(&OPAQUE_DRIVER_VERSION).map(|v| c_string(v))
    }

    /// The VBIOS version from the opaque data, formatted as NVIDIA's verifier does
    /// (`format_vbios_version`): `96.00.9f.00.01`.
    /// The protection mode from FEATURE_FLAG, read as NVIDIA's `parse_feature_flag` does
    /// (little-endian integer: 0 SPT, 1 MPT, 2 PPCIE) when OPAQUE_DATA_VERSION >= 1. `Ok(None)`:
    /// firmware that reports none (such as the 2.7.3 sample); an unknown value is malformed.
    pub fn protection_mode(&self) -> Result<Option<GpuProtectionMode>, GpuError> {
        let int = |v: &[u8]| -> Option<u64> {
            (v.len() <= 8).then(|| v.iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
        };
        let version = match self.opaque.get(&OPAQUE_DATA_VERSION) {
            None => return Ok(None),
            Some(v) => int(v).ok_or_else(|| malformed("OPAQUE_DATA_VERSION is longer than 8 bytes"))?,
        };
        if version < 1 {
            return Ok(None);
        }
        let Some(flag) = self.opaque.get(&OPAQUE_FEATURE_FLAG) else { return Ok(None) };
        match int(flag) {
            Some(0) => Ok(Some(GpuProtectionMode::Spt)),
            Some(1) => Ok(Some(GpuProtectionMode::Mpt)),
            Some(2) => Ok(Some(GpuProtectionMode::Ppcie)),
            _ => Err(malformed(format!("unknown FEATURE_FLAG {}", hex::encode(flag)))),
        }
    }

    pub fn vbios_version(&self) -> Option<String> {
        let v = self.opaque.get(&OPAQUE_VBIOS_VERSION)?;
        // The 8 bytes read little-endian as 0x0000_00mm_aabb_ccdd give "aa.bb.cc.dd.mm".
        let b: &[u8; 8] = v.as_slice().try_into().ok()?;
        Some(format!("{:02x}.{:02x}.{:02x}.{:02x}.{:02x}", b[3], b[2], b[1], b[0], b[4]))
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A bounds-checked reader: every read either returns the bytes or a `Malformed` naming the
/// field, never panics.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GpuError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            malformed(format!(
                "{field} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.data.len().saturating_sub(self.pos)
            ))
        })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, GpuError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, GpuError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, field: &str) -> Result<usize, GpuError> {
        let b = self.take(3, field)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GpuError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
}

/// Parses NVML's attestation report (request ‖ response), checking every length; bytes
/// before, inside or after the signed structure that no field accounts for are refused.
pub fn parse_gpu_report(raw: &[u8]) -> Result<GpuReport, GpuError> {
    if raw.len() > MAX_GPU_REPORT_BYTES {
        return Err(GpuError::TooLarge { what: "attestation report", len: raw.len(), max: MAX_GPU_REPORT_BYTES });
    }
    let mut r = Reader { data: raw, pos: 0 };
    // Request (SpdmMeasurementRequestMessage): version, code, param1, param2, nonce, slot.
    let spdm_version = r.u8("request SPDMVersion")?;
    if spdm_version != SPDM_VERSION_1_1 {
        return Err(malformed(format!("request SPDM version {spdm_version:#04x}, expected 0x11 (SPDM 1.1)")));
    }
    let code = r.u8("request code")?;
    if code != SPDM_GET_MEASUREMENTS {
        return Err(malformed(format!("request code {code:#04x} is not GET_MEASUREMENTS (0xe0)")));
    }
    let request_param1 = r.u8("request Param1")?;
    if request_param1 & 1 == 0 {
        return Err(malformed("the request did not ask for a signature (Param1 bit 0 clear)"));
    }
    let request_param2 = r.u8("request Param2")?;
    let request_nonce = r.array::<NONCE_LEN>("request nonce")?;
    let slot_id = r.u8("request SlotIDParam")?;
    debug_assert_eq!(r.pos, REQUEST_LEN);

    // Response (SpdmMeasurementResponseMessage).
    let version = r.u8("response SPDMVersion")?;
    if version != spdm_version {
        return Err(malformed(format!("response SPDM version {version:#04x} differs from the request's")));
    }
    let code = r.u8("response code")?;
    if code != SPDM_MEASUREMENTS {
        return Err(malformed(format!("response code {code:#04x} is not MEASUREMENTS (0x60)")));
    }
    r.take(2, "response Param1/Param2")?;
    let blocks = r.u8("NumberOfBlocks")?;
    if blocks == 0 {
        return Err(malformed("the response has no measurement blocks"));
    }
    let record_len = r.u24("MeasurementRecordLength")?;
    let record = r.take(record_len, "MeasurementRecord")?;
    let measurements = parse_record(record, blocks)?;
    let response_nonce = r.array::<NONCE_LEN>("response nonce")?;
    let opaque_len = usize::from(r.u16("OpaqueLength")?);
    let opaque = parse_opaque(r.take(opaque_len, "OpaqueData")?)?;
    let signed_len = r.pos;
    if r.remaining() != SIGNATURE_LEN {
        return Err(malformed(format!(
            "{} bytes follow the opaque data; the signature is exactly {SIGNATURE_LEN}",
            r.remaining()
        )));
    }
    let signature = r.array::<SIGNATURE_LEN>("signature")?;
    Ok(GpuReport {
        spdm_version,
        request_param1,
        request_param2,
        request_nonce,
        slot_id,
        response_nonce,
        measurements,
        opaque,
        signature,
        signed_len,
    })
}

fn parse_record(record: &[u8], blocks: u8) -> Result<Vec<GpuMeasurement>, GpuError> {
    let mut r = Reader { data: record, pos: 0 };
    let mut out = Vec::with_capacity(usize::from(blocks));
    let mut seen = BTreeSet::new();
    for _ in 0..blocks {
        let index = r.u8("measurement block Index")?;
        if index == 0 || !seen.insert(index) {
            return Err(malformed(format!("measurement block index {index} is zero or repeated")));
        }
        let spec = r.u8("MeasurementSpecification")?;
        if spec != DMTF_MEASUREMENT_SPEC {
            return Err(malformed(format!("measurement block {index} is not in DMTF format (specification {spec})")));
        }
        let size = usize::from(r.u16("MeasurementSize")?);
        let mut m = Reader { data: r.take(size, "Measurement")?, pos: 0 };
        let value_type = m.u8("DMTFSpecMeasurementValueType")?;
        let value_size = usize::from(m.u16("DMTFSpecMeasurementValueSize")?);
        let value = m.take(value_size, "DMTFSpecMeasurementValue")?;
        if m.remaining() != 0 {
            return Err(malformed(format!("measurement block {index} has {} bytes after its value", m.remaining())));
        }
        out.push(GpuMeasurement { index, value_type, value: hex::encode(value) });
    }
    if r.remaining() != 0 {
        return Err(malformed(format!("{} bytes of the measurement record follow its {blocks} blocks", r.remaining())));
    }
    Ok(out)
}

fn parse_opaque(data: &[u8]) -> Result<BTreeMap<u16, Vec<u8>>, GpuError> {
    let mut r = Reader { data, pos: 0 };
    let mut out = BTreeMap::new();
    while r.remaining() > 0 {
        let kind = r.u16("opaque DataType")?;
        let size = usize::from(r.u16("opaque DataSize")?);
        let value = r.take(size, "opaque Data")?;
        // NVIDIA's parser keeps the last of repeated fields; refusing them removes the doubt.
        if out.insert(kind, value.to_vec()).is_some() {
            return Err(malformed(format!("opaque data field {kind} appears twice")));
        }
    }
    Ok(out)
}

/// Supported GPU architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuArchitecture {
    Hopper,
}

impl std::fmt::Display for GpuArchitecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuArchitecture::Hopper => "Hopper",
        })
    }
}

/// The GPU's protection mode, signed in the report's FEATURE_FLAG (newer firmware only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuProtectionMode {
    /// Single GPU passthrough (confidential computing, one GPU per VM).
    Spt,
    /// Multi-GPU passthrough (confidential computing, several GPUs per VM).
    Mpt,
    /// Protected PCIe (several GPUs with NVSwitch, link encryption off).
    Ppcie,
}

impl GpuProtectionMode {
    /// The FEATURE_FLAG value.
    pub fn flag(self) -> u8 {
        match self {
            GpuProtectionMode::Spt => 0,
            GpuProtectionMode::Mpt => 1,
            GpuProtectionMode::Ppcie => 2,
        }
    }
}

impl std::fmt::Display for GpuProtectionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuProtectionMode::Spt => "spt",
            GpuProtectionMode::Mpt => "mpt",
            GpuProtectionMode::Ppcie => "ppcie",
        })
    }
}

/// What verified GPU evidence says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuClaims {
    pub architecture: GpuArchitecture,
    /// The leaf (device attestation key) certificate's subject, RFC 4514.
    pub device_subject: String,
    pub driver_version: String,
    pub vbios_version: String,
    pub project: Option<String>,
    pub project_sku: Option<String>,
    pub chip_sku: Option<String>,
    /// The nonce the report answers, hex.
    pub nonce: String,
    pub measurements: Vec<GpuMeasurement>,
    /// Unix seconds: the earliest notAfter in the chain.
    pub valid_until: u64,
    /// FEATURE_FLAG, signed; `None` when the firmware reports none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection_mode: Option<GpuProtectionMode>,
    /// Simulated evidence ([`crate::nvidia_sim`]): no GPU backs it.
    #[serde(default)]
    pub insecure_simulated: bool,
}

impl GpuClaims {
    /// The confidential-computing mode this evidence implies: `"ppcie"` when the signed
    /// FEATURE_FLAG says protected PCIe, otherwise `"on"`. Hopper reports carry no signed
    /// CC-mode bit; `"on"` rests on NVML producing a report only with CC mode on (with it off,
    /// `nvmlDeviceGetConfComputeGpuAttestationReport` fails with Unknown Error, as seen on an
    /// H200 with driver 580, and NVIDIA's verifier refuses to collect evidence).
    pub fn cc_mode(&self) -> &'static str {
        match self.protection_mode {
            Some(GpuProtectionMode::Ppcie) => "ppcie",
            _ => "on",
        }
    }

    /// The verdict as `/v1/attestation/report` shows it (what the router verified).
    pub fn verdict(&self) -> serde_json::Value {
        serde_json::json!({
            "architecture": self.architecture,
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "cc_mode": self.cc_mode(),
            "protection_mode": self.protection_mode,
            "device_subject": self.device_subject,
            "measurement_blocks": self.measurements.len(),
            "valid_until": self.valid_until,
            "insecure_simulated": self.insecure_simulated,
        })
    }

    /// Human-readable lines for `cocoon verify` and logs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self.insecure_simulated {
            out.push_str("WARNING: SIMULATED GPU - no GPU backs this evidence (dev only)\n");
        }
        out.push_str(&format!(
            "GPU: NVIDIA {} ({}), driver {}, VBIOS {}, {} measurement blocks\n",
            self.architecture,
            self.device_subject,
            self.driver_version,
            self.vbios_version,
            self.measurements.len()
        ));
        let mode = match self.protection_mode {
            Some(m) => format!("protection mode {m} (signed FEATURE_FLAG)"),
            None => "no protection mode in the report".into(),
        };
        out.push_str(&format!(
            "GPU CC mode: {} (implied: NVML makes this report only in CC mode; not a signed field), {mode}\n",
            self.cc_mode()
        ));
        out
    }
}

/// Verifies GPU evidence against `root_pem` (normally [`NVIDIA_DEVICE_ROOT_PEM`]) at `now`
/// (unix seconds): chain, report signature, nonce. The policy's rules are [`GpuPolicy::check`].
pub fn verify_gpu_evidence(
    ev: &GpuEvidence,
    expected_nonce: &[u8; 32],
    root_pem: &str,
    now: u64,
) -> Result<GpuClaims, GpuError> {
    let report = parse_gpu_report(&ev.report)?;
    let (leaf, architecture, valid_until) = verify_chain(&ev.cert_chain_pem, root_pem, now)?;
    let key = verifying_key(&leaf)?;
    let signature = Signature::from_slice(&report.signature).map_err(|_| GpuError::ReportSignature)?;
    key.verify(&ev.report[..report.signed_len], &signature)
        .map_err(|_| GpuError::ReportSignature)?;
    if &report.request_nonce != expected_nonce {
        return Err(GpuError::NonceMismatch {
            expected: hex::encode(expected_nonce),
            got: hex::encode(report.request_nonce),
        });
    }
    let driver_version = report.driver_version().ok_or_else(|| malformed("no driver version in the opaque data"))?;
    let vbios_version = report.vbios_version().ok_or_else(|| malformed("no 8-byte VBIOS version in the opaque data"))?;
    let field = |kind| report.opaque.get(&kind).map(|v| c_string(v));
    let protection_mode = report.protection_mode()?;
    Ok(GpuClaims {
        architecture,
        device_subject: leaf.tbs_certificate.subject.to_string(),
        driver_version,
        vbios_version,
        project: field(OPAQUE_PROJECT),
        project_sku: field(OPAQUE_PROJECT_SKU),
        chip_sku: field(OPAQUE_CHIP_SKU),
        nonce: hex::encode(report.request_nonce),
        measurements: report.measurements,
        valid_until,
        protection_mode,
        insecure_simulated: false,
    })
}

fn verifying_key(cert: &Certificate) -> Result<VerifyingKey, GpuError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).map_err(|_| {
        GpuError::MalformedChain(format!(
            "certificate {:?} does not hold a P-384 public key",
            cert.tbs_certificate.subject.to_string()
        ))
    })
}

/// Parses a PEM chain, leaf first. A trailing copy of the trusted root is dropped.
fn parse_chain(pem: &str, what: &'static str) -> Result<Vec<Certificate>, GpuError> {
    if pem.len() > MAX_GPU_CERT_CHAIN_BYTES {
        return Err(GpuError::TooLarge { what, len: pem.len(), max: MAX_GPU_CERT_CHAIN_BYTES });
    }
    let certs = crate::pem_chain::load_pem_chain(pem, MAX_CHAIN_CERTS)
        .map_err(|e| GpuError::MalformedChain(format!("{what}: {e}")))?;
    if certs.is_empty() || certs.len() > MAX_CHAIN_CERTS {
        return Err(GpuError::MalformedChain(format!(
            "{what} has {} certificates; 1 to {MAX_CHAIN_CERTS} are accepted",
            certs.len()
        )));
    }
    Ok(certs)
}

/// The chain from the leaf to the root: returns the leaf, the architecture its chain names,
/// and the earliest notAfter.
fn verify_chain(
    chain_pem: &str,
    root_pem: &str,
    now: u64,
) -> Result<(Certificate, GpuArchitecture, u64), GpuError> {
    let root = parse_chain(root_pem, "trusted root")?
        .into_iter()
        .next()
        .ok_or_else(|| GpuError::MalformedChain("no trusted root".into()))?;
    let mut certs = parse_chain(chain_pem, "certificate chain")?;
    if certs.len() > 1 && certs.last() == Some(&root) {
        certs.pop();
    }
    let subject = |c: &Certificate| c.tbs_certificate.subject.to_string();
    // The last certificate of the chain must be issued by the trusted root.
    let top = certs.last().ok_or_else(|| GpuError::MalformedChain("empty chain".into()))?;
    if top.tbs_certificate.issuer != root.tbs_certificate.subject {
        return Err(GpuError::UntrustedRoot(format!(
            "the chain ends at {:?}, issued by {:?}, not by the trusted root {:?}",
            subject(top),
            top.tbs_certificate.issuer.to_string(),
            subject(&root)
        )));
    }
    let mut valid_until = u64::MAX;
    let with_root: Vec<&Certificate> = certs.iter().chain(std::iter::once(&root)).collect();
    for (i, cert) in with_root.iter().enumerate() {
        let issuer = with_root.get(i + 1).copied().unwrap_or(&root);
        let is_leaf = i == 0;
        check_extensions(cert, is_leaf)?;
        if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
            return Err(GpuError::ChainStructure(format!(
                "certificate {:?} names issuer {:?}, but the next certificate is {:?}",
                subject(cert),
                cert.tbs_certificate.issuer.to_string(),
                subject(issuer)
            )));
        }
        check_signature(cert, issuer)?;
        let v = &cert.tbs_certificate.validity;
        let (not_before, not_after) =
            (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs());
        if now >= not_after {
            return Err(GpuError::CertExpired { subject: subject(cert), not_after, now });
        }
        if now < not_before {
            return Err(GpuError::CertNotYetValid { subject: subject(cert), not_before, now });
        }
        valid_until = valid_until.min(not_after);
    }
    // Hopper's chain names GH100 in the certificate the root issued ("NVIDIA GH100 Identity"),
    // read once its signature is checked.
    let top = certs.last().map(subject).unwrap_or_default();
    if !top.contains("CN=NVIDIA GH100 ") {
        return Err(GpuError::UnsupportedArchitecture(format!("the device chain is for {top:?}")));
    }
    let architecture = GpuArchitecture::Hopper;
    let leaf = certs.swap_remove(0);
    Ok((leaf, architecture, valid_until))
}

fn check_signature(cert: &Certificate, issuer: &Certificate) -> Result<(), GpuError> {
    let bad = || GpuError::CertSignature {
        subject: cert.tbs_certificate.subject.to_string(),
        issuer: issuer.tbs_certificate.subject.to_string(),
    };
    // RFC 5280 4.1.1.2: the outer algorithm must be the signed one.
    if cert.signature_algorithm.oid != OID_ECDSA_WITH_SHA384
        || cert.signature_algorithm != cert.tbs_certificate.signature
    {
        return Err(GpuError::ChainStructure(format!(
            "certificate {:?} is not signed with ecdsa-with-SHA384",
            cert.tbs_certificate.subject.to_string()
        )));
    }
    let key = verifying_key(issuer)?;
    // DER decoding is strict, so re-encoding the parsed TBS gives back the signed bytes.
    let tbs = cert.tbs_certificate.to_der().map_err(|_| bad())?;
    let sig = Signature::from_der(cert.signature.raw_bytes()).map_err(|_| bad())?;
    key.verify(&tbs, &sig).map_err(|_| bad())
}

fn check_extensions(cert: &Certificate, is_leaf: bool) -> Result<(), GpuError> {
    let name = cert.tbs_certificate.subject.to_string();
    let mut ca = false;
    let mut usage = None;
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        if ext.extn_id == OID_BASIC_CONSTRAINTS {
            ca = BasicConstraints::from_der(value)
                .map_err(|e| GpuError::MalformedChain(format!("{name:?} basicConstraints: {e}")))?
                .ca;
        } else if ext.extn_id == OID_KEY_USAGE {
            usage = Some(
                KeyUsage::from_der(value)
                    .map_err(|e| GpuError::MalformedChain(format!("{name:?} keyUsage: {e}")))?,
            );
        } else if ext.critical {
            return Err(GpuError::ChainStructure(format!(
                "certificate {name:?} has an unknown critical extension {}",
                ext.extn_id
            )));
        }
    }
    if is_leaf {
        if usage.is_some_and(|u| !u.digital_signature()) {
            return Err(GpuError::ChainStructure(format!("leaf {name:?} may not sign (keyUsage)")));
        }
    } else if !ca || usage.is_some_and(|u| !u.key_cert_sign()) {
        return Err(GpuError::ChainStructure(format!("issuer {name:?} is not a CA allowed to sign certificates")));
    }
    Ok(())
}

/// `[attestation.policy.gpu]`: which NVIDIA GPU evidence is acceptable.
///
/// ```toml
/// require = false                  # true: a worker without GPU evidence is refused
/// allowed_architectures = []       # e.g. ["hopper"]; empty: any the verifier supports
/// allowed_protection_modes = []    # e.g. ["spt"]; empty: any, also none reported
/// allowed_driver_versions = []     # e.g. ["550.90.07"]; empty: any
/// allowed_vbios_versions = []      # e.g. ["96.00.9f.00.01"]; empty: any
/// measurements = []                # [{ index = 2, allowed = ["<hex>", ...] }, ...]
/// ```
///
/// GPU evidence that is present is always verified; its measurements must match: every
/// listed index must be in the report with one of its allowed values. With no measurements
/// listed, no GPU evidence is accepted (as with an empty TDX image list), except simulated
/// evidence under a policy that allows the simulated TEE: its blocks are fixed labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuPolicy {
    pub require: bool,
    /// Empty: any architecture the verifier supports (Hopper).
    pub allowed_architectures: Vec<GpuArchitecture>,
    /// FEATURE_FLAG modes accepted; when set, a report naming no mode is refused too.
    pub allowed_protection_modes: Vec<GpuProtectionMode>,
    pub allowed_driver_versions: Vec<String>,
    pub allowed_vbios_versions: Vec<String>,
    pub measurements: Vec<GpuGolden>,
}

/// Golden values of one measurement block (e.g. from NVIDIA's RIM for the driver or VBIOS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuGolden {
    pub index: u8,
    /// Hex values, any of which is accepted.
    pub allowed: Vec<GoldenValue>,
    /// Where the values come from (`cocoon policy import-rim` names the RIM it verified);
    /// shown when a measurement does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A measurement value in hex (1 to 64 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenValue(pub String);

impl Serialize for GoldenValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GoldenValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match hex::decode(&text) {
            Ok(b) if !b.is_empty() && b.len() <= 64 => Ok(Self(text.to_ascii_lowercase())),
            _ => Err(serde::de::Error::custom(format!("{text:?} is not 1 to 64 bytes of hex"))),
        }
    }
}

impl GpuPolicy {
    /// The rules on verified claims.
    pub fn check(&self, claims: &GpuClaims) -> Result<(), GpuError> {
        let listed = |l: &[String], v: &str| l.is_empty() || l.iter().any(|a| a.eq_ignore_ascii_case(v));
        let names = |l: &[String]| l.join(", ");
        if !self.allowed_architectures.is_empty() && !self.allowed_architectures.contains(&claims.architecture) {
            return Err(GpuError::ArchitectureNotAllowed {
                got: claims.architecture.to_string(),
                allowed: names(&self.allowed_architectures.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
            });
        }
        if !self.allowed_protection_modes.is_empty()
            && !claims.protection_mode.is_some_and(|m| self.allowed_protection_modes.contains(&m))
        {
            return Err(GpuError::ProtectionModeNotAllowed {
                got: claims.protection_mode.map_or_else(|| "(none reported)".to_string(), |m| m.to_string()),
                allowed: names(&self.allowed_protection_modes.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
            });
        }
        if !listed(&self.allowed_driver_versions, &claims.driver_version) {
            return Err(GpuError::DriverNotAllowed {
                got: claims.driver_version.clone(),
                allowed: self.allowed_driver_versions.join(", "),
            });
        }
        if !listed(&self.allowed_vbios_versions, &claims.vbios_version) {
            return Err(GpuError::VbiosNotAllowed {
                got: claims.vbios_version.clone(),
                allowed: self.allowed_vbios_versions.join(", "),
            });
        }
        if self.measurements.is_empty() && claims.insecure_simulated {
            return Ok(());
        }
        if self.measurements.is_empty() {
            return Err(GpuError::MeasurementNotAllowed {
                index: 0,
                detail: "the policy lists no golden GPU measurements, so no GPU evidence is accepted".into(),
            });
        }
        for golden in &self.measurements {
            let Some(m) = claims.measurements.iter().find(|m| m.index == golden.index) else {
                return Err(GpuError::MeasurementNotAllowed {
                    index: golden.index,
                    detail: "the policy pins it but the report has no such block".into(),
                });
            };
            if !golden.allowed.iter().any(|a| a.0 == m.value) {
                return Err(GpuError::MeasurementNotAllowed {
                    index: golden.index,
                    detail: format!(
                        "value {} is not among the {} allowed{}",
                        m.value,
                        golden.allowed.len(),
                        golden.source.as_deref().map(|s| format!(" by {s}")).unwrap_or_default()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The whole GPU step for a worker: evidence required or not, verified against
    /// `root_pem` at `now` for the session's [`gpu_nonce`], then the rules. `Ok(None)`: no
    /// evidence and none required. Simulated evidence needs `allow_simulated` and is checked
    /// against the root its own chain ends with.
    pub fn verify(
        &self,
        evidence: Option<&GpuEvidence>,
        nonce: &[u8; 32],
        root_pem: &str,
        allow_simulated: bool,
        now: u64,
    ) -> Result<Option<GpuClaims>, GpuError> {
        let Some(ev) = evidence else {
            return if self.require { Err(GpuError::Missing) } else { Ok(None) };
        };
        let claims = if ev.insecure_simulated {
            if !allow_simulated {
                return Err(GpuError::SimulatedNotAllowed);
            }
            let root = simulated_root(&ev.cert_chain_pem)?;
            GpuClaims { insecure_simulated: true, ..verify_gpu_evidence(ev, nonce, &root, now)? }
        } else {
            verify_gpu_evidence(ev, nonce, root_pem, now)?
        };
        self.check(&claims)?;
        Ok(Some(claims))
    }
}

/// The root of a simulated chain: its last certificate, which must carry the simulated
/// root's name (so no real-looking chain passes as simulated by accident).
fn simulated_root(chain_pem: &str) -> Result<String, GpuError> {
    let certs = parse_chain(chain_pem, "simulated certificate chain")?;
    let root = certs.last().ok_or_else(|| GpuError::MalformedChain("empty simulated chain".into()))?;
    let subject = root.tbs_certificate.subject.to_string();
    if !subject.contains(&format!("CN={}", crate::nvidia_sim::SIMULATED_GPU_ROOT_CN)) {
        return Err(GpuError::UntrustedRoot(format!("a simulated chain must end at its simulated root, not {subject:?}")));
    }
    let der = root.to_der().map_err(|e| GpuError::MalformedChain(format!("re-encoding the simulated root: {e}")))?;
    Ok(pem_encode(&der))
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vbios_version_is_formatted_as_nvidia_does() {
        let mut opaque = BTreeMap::new();
        opaque.insert(OPAQUE_VBIOS_VERSION, vec![0x00, 0x9f, 0x00, 0x96, 0x01, 0, 0, 0]);
        opaque.insert(OPAQUE_DRIVER_VERSION, b"550.90.07\0".to_vec());
        let r = GpuReport {
            spdm_version: 0x11,
            request_param1: 1,
            request_param2: 0xff,
            request_nonce: [0; 32],
            slot_id: 0,
            response_nonce: [0; 32],
            measurements: vec![],
            opaque,
            signature: [0; 96],
            signed_len: 0,
        };
        // `nvmlHandlerTest.py`: the sample's VBIOS is "96.00.9f.00.01", driver "550.90.07".
        assert_eq!(r.vbios_version().unwrap(), "96.00.9f.00.01");
        assert_eq!(r.driver_version().unwrap(), "550.90.07");
    }

    #[test]
    fn gpu_nonce_follows_report_data() {
        use crate::binding::{HpkePublicKey, Nonce};
        let b = ReportDataBinding::new(HpkePublicKey([1; 32]), b"spki", Nonce([2; 32]));
        let n = gpu_nonce(&b);
        let mut input = GPU_NONCE_DOMAIN_TAG.to_vec();
        input.extend_from_slice(&b.report_data());
        assert_eq!(n, <[u8; 32]>::from(Sha256::digest(&input)));
        let mut other = b;
        other.nonce.0[0] ^= 1;
        assert_ne!(gpu_nonce(&other), n, "another session");
        let mut other = b;
        other.hpke_public_key.0[0] ^= 1;
        assert_ne!(gpu_nonce(&other), n, "another worker");
    }
}
