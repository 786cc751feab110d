//! Simulated NVIDIA GPU evidence, for `cocoon dev` and tests only.
//!
//! The evidence has the real format, so the real verifier runs on it: an SPDM 1.1
//! GET_MEASUREMENTS request ‖ MEASUREMENTS response laid out as NVML returns it on Hopper
//! (the layout [`crate::nvidia::parse_gpu_report`] reads, derived from NVIDIA's
//! `nv-local-gpu-verifier` 2.7.3 `verifier/attestation/spdm_msrt_req_msg.py` /
//! `spdm_msrt_resp_msg.py` and checked against its sample report), signed with ECDSA P-384
//! by a per-run device key, and a per-run certificate chain in NVIDIA's shape (device key ←
//! "NVIDIA GH100 Identity" ← root). What differs is the trust: the root is generated here,
//! named [`SIMULATED_GPU_ROOT_CN`], and travels in the evidence, which says
//! `insecure_simulated: true`. A verifier accepts it only with
//! `allow_insecure_simulated_tee = true`, and every verdict shows it as simulated.
//!
//! Measurement blocks carry recognisable ASCII labels (`INSECURE-SIMULATED-GPU:07`), as the
//! simulated CPU TEE's do.

use p384::ecdsa::signature::Signer as _;
use p384::ecdsa::{Signature, SigningKey};

use crate::binding::random_bytes;
use crate::nvidia::{GpuEvidence, GpuProtectionMode};

/// Common name of the per-run root a simulated chain ends at.
pub const SIMULATED_GPU_ROOT_CN: &str = "INSECURE-SIMULATED NVIDIA Device Identity CA";
/// Measurement blocks in a simulated report (a real H100 report has 64).
pub const SIMULATED_GPU_BLOCKS: u8 = 8;

/// What a simulated GPU reports (tests vary it to exercise the policy's rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedGpuSpec {
    pub driver_version: String,
    /// The VBIOS version's 8 opaque bytes (see [`crate::nvidia::GpuReport::vbios_version`]).
    pub vbios_version: [u8; 8],
    /// (block index, value) pairs; values up to 64 bytes.
    pub measurements: Vec<(u8, Vec<u8>)>,
    /// The FEATURE_FLAG opaque field (with OPAQUE_DATA_VERSION 1), or none (as older firmware).
    pub protection_mode: Option<GpuProtectionMode>,
    pub project: String,
}

/// The fixed value of simulated block `index`: its label, zero-padded to 48 bytes.
pub fn simulated_measurement(index: u8) -> Vec<u8> {
    let mut v = format!("INSECURE-SIMULATED-GPU:{index:02}").into_bytes();
    v.resize(48, 0);
    v
}

impl Default for SimulatedGpuSpec {
    fn default() -> Self {
        Self {
            driver_version: "580.00.00-simulated".into(),
            // "96.00.00.00.00" as NVIDIA formats it.
            vbios_version: [0x00, 0x00, 0x00, 0x96, 0x00, 0, 0, 0],
            measurements: (1..=SIMULATED_GPU_BLOCKS).map(|i| (i, simulated_measurement(i))).collect(),
            protection_mode: Some(GpuProtectionMode::Spt),
            project: "INSECURE-SIMULATED".into(),
        }
    }
}

/// A simulated GPU: this run's device key and chain.
pub struct SimulatedGpu {
    key: SigningKey,
    chain_pem: String,
    spec: SimulatedGpuSpec,
}

impl std::fmt::Debug for SimulatedGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedGpu").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// rcgen signs certificates through this (the keys are p384's, so the report and the
/// certificates are signed by the same implementation the verifier checks against).
struct P384Key {
    key: SigningKey,
    public: Vec<u8>,
}

impl P384Key {
    fn generate() -> Result<Self, String> {
        // A random 48-byte string is a valid scalar except with probability ~2^-190.
        let key = loop {
            let bytes = random_bytes::<48>().map_err(|e| e.to_string())?;
            if let Ok(k) = SigningKey::from_slice(&bytes) {
                break k;
            }
        };
        let public = key.verifying_key().to_encoded_point(false).as_bytes().to_vec();
        Ok(Self { key, public })
    }
}

impl rcgen::RemoteKeyPair for P384Key {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: Signature = self.key.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

fn rc(e: rcgen::Error) -> String {
    format!("building the simulated GPU chain: {e}")
}

fn key_pair(k: P384Key) -> Result<rcgen::KeyPair, String> {
    rcgen::KeyPair::from_remote(Box::new(k)).map_err(rc)
}

fn params(cn: &str, ca: bool) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "cocoon-rs (insecure simulated GPU)");
    if ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    } else {
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    }
    p
}

impl SimulatedGpu {
    /// A fresh per-run device key and chain, reporting [`SimulatedGpuSpec::default`].
    pub fn generate() -> Result<Self, String> {
        Self::with_spec(SimulatedGpuSpec::default())
    }

    pub fn with_spec(spec: SimulatedGpuSpec) -> Result<Self, String> {
        let root_key = key_pair(P384Key::generate()?)?;
        let root = params(SIMULATED_GPU_ROOT_CN, true).self_signed(&root_key).map_err(rc)?;
        let identity_key = key_pair(P384Key::generate()?)?;
        // "CN=NVIDIA GH100 Identity" under the root names the architecture, as on real chains.
        let identity = params("NVIDIA GH100 Identity (INSECURE-SIMULATED)", true)
            .signed_by(&identity_key, &root, &root_key)
            .map_err(rc)?;
        let device = P384Key::generate()?;
        let key = device.key.clone();
        let device_key = key_pair(device)?;
        let leaf = params("INSECURE-SIMULATED GH100 device attestation key", false)
            .signed_by(&device_key, &identity, &identity_key)
            .map_err(rc)?;
        let chain_pem = [leaf.pem(), identity.pem(), root.pem()].concat();
        Ok(Self { key, chain_pem, spec })
    }

    /// The device chain, leaf first, ending with this run's root.
    pub fn cert_chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The report answering `nonce`: request ‖ response ‖ signature.
    pub fn report(&self, nonce: [u8; 32]) -> Result<Vec<u8>, String> {
        let responder_nonce = random_bytes::<32>().map_err(|e| e.to_string())?;
        let mut out = unsigned_report(&self.spec, nonce, responder_nonce)?;
        let sig: Signature = self.key.sign(&out);
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }

    /// Evidence as the worker sends it, flagged `insecure_simulated`.
    pub fn evidence(&self, nonce: [u8; 32]) -> Result<GpuEvidence, String> {
        Ok(GpuEvidence { report: self.report(nonce)?, cert_chain_pem: self.chain_pem.clone(), insecure_simulated: true })
    }
}

/// Request ‖ response up to (without) the signature, in the layout NVML returns.
fn unsigned_report(spec: &SimulatedGpuSpec, nonce: [u8; 32], responder_nonce: [u8; 32]) -> Result<Vec<u8>, String> {
    let too_big = |what: &str| format!("simulated GPU {what} does not fit its length field");
    let mut out = Vec::with_capacity(1024);
    // GET_MEASUREMENTS: SPDM 1.1, signature requested (Param1 bit 0), all blocks (0xFF), slot 0.
    out.extend_from_slice(&[0x11, 0xE0, 0x01, 0xFF]);
    out.extend_from_slice(&nonce);
    out.push(0);
    // MEASUREMENTS header.
    out.extend_from_slice(&[0x11, 0x60, 0x00, 0x00]);
    out.push(u8::try_from(spec.measurements.len()).map_err(|_| too_big("block count"))?);
    let mut record = Vec::new();
    for (index, value) in &spec.measurements {
        // DMTF block: index, specification 1, size, then value type 1 (digest), size, value.
        let value_len = u16::try_from(value.len()).map_err(|_| too_big("measurement"))?;
        record.push(*index);
        record.push(1);
        record.extend_from_slice(&(value_len + 3).to_le_bytes());
        record.push(1);
        record.extend_from_slice(&value_len.to_le_bytes());
        record.extend_from_slice(value);
    }
    let record_len = u32::try_from(record.len()).ok().filter(|&l| l < 1 << 24).ok_or_else(|| too_big("measurement record"))?;
    out.extend_from_slice(&record_len.to_le_bytes()[..3]);
    out.extend_from_slice(&record);
    out.extend_from_slice(&responder_nonce);
    let mut opaque = Vec::new();
    let mut field = |kind: u16, data: &[u8]| -> Result<(), String> {
        opaque.extend_from_slice(&kind.to_le_bytes());
        opaque.extend_from_slice(&u16::try_from(data.len()).map_err(|_| too_big("opaque field"))?.to_le_bytes());
        opaque.extend_from_slice(data);
        Ok(())
    };
    let mut driver = spec.driver_version.clone().into_bytes();
    driver.push(0);
    field(3, &driver)?;
    field(6, &spec.vbios_version)?;
    let mut project = spec.project.clone().into_bytes();
    project.push(0);
    field(17, &project)?;
    if let Some(mode) = spec.protection_mode {
        field(34, &1u32.to_le_bytes())?;
        field(36, &u32::from(mode.flag()).to_le_bytes())?;
    }
    out.extend_from_slice(&u16::try_from(opaque.len()).map_err(|_| too_big("opaque data"))?.to_le_bytes());
    out.extend_from_slice(&opaque);
    Ok(out)
}
