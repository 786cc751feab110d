//! What verified evidence says, normalised across TEE kinds. Produced only by the verifier
//! after every signature checked out; the policy is then applied to it.

use serde::{Deserialize, Serialize};

use crate::evidence::TeeKind;
use crate::serde_bytes::{hex_array, parse_hex_array};

/// A 48-byte measurement register (TDX MRTD/RTMR, SNP MEASUREMENT), hex in JSON and TOML.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Measurement(#[serde(with = "hex_array")] pub [u8; 48]);

impl Measurement {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::str::FromStr for Measurement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex_array(s).map(Self)
    }
}

impl std::fmt::Debug for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Display for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// TDX build-time and runtime measurements (also used, with fixed values, by the simulated TEE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxMeasurements {
    pub mrtd: Measurement,
    pub rtmr0: Measurement,
    pub rtmr1: Measurement,
    pub rtmr2: Measurement,
    pub rtmr3: Measurement,
}

/// SEV-SNP TCB component SVNs (from the report's REPORTED_TCB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpTcb {
    #[serde(default)]
    pub bootloader: u8,
    #[serde(default)]
    pub tee: u8,
    #[serde(default)]
    pub snp: u8,
    #[serde(default)]
    pub microcode: u8,
}

/// AMD EPYC product line whose built-in ARK/ASK signed the VCEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnpProduct {
    Milan,
    Genoa,
    Turin,
}

impl std::fmt::Display for SnpProduct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnpProduct::Milan => "milan",
            SnpProduct::Genoa => "genoa",
            SnpProduct::Turin => "turin",
        })
    }
}

/// Kind-specific verified facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TeeDetails {
    Tdx {
        /// Quote version (4 or 5).
        quote_version: u16,
        measurements: TdxMeasurements,
        /// TD_ATTRIBUTES, hex.
        #[serde(with = "hex_array")]
        td_attributes: [u8; 8],
        /// Converged platform + QE + TDX module TCB status (Intel's name, e.g. "UpToDate").
        tcb_status: dcap_qvl::TcbStatus,
        advisory_ids: Vec<String>,
        /// TCB evaluation data number of the collateral used.
        tcb_evaluation_data_number: u32,
        #[serde(with = "hex_array")]
        fmspc: [u8; 6],
    },
    SevSnp {
        product: SnpProduct,
        report_version: u32,
        measurement: Measurement,
        vmpl: u32,
        /// Guest policy bits (debug is bit 19).
        guest_policy: u64,
        reported_tcb: SnpTcb,
        #[serde(with = "hex_array")]
        chip_id: [u8; 64],
        #[serde(with = "hex_array")]
        host_data: [u8; 32],
    },
    Simulated {
        measurements: TdxMeasurements,
        /// Unix seconds, signed by the simulated TEE key.
        produced_at: u64,
        /// The simulated TEE's Ed25519 public key, hex.
        #[serde(with = "hex_array")]
        signer: [u8; 32],
    },
}

/// Facts established by verifying evidence (before policy and binding checks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeeClaims {
    pub kind: TeeKind,
    /// True only for simulated evidence: nothing here is backed by hardware.
    pub insecure_simulated: bool,
    /// The report_data the hardware (or simulated key) signed.
    #[serde(with = "hex_array")]
    pub report_data: [u8; 64],
    /// Whether the guest allows debugging (TDX TD_ATTRIBUTES.TUD, SNP POLICY.DEBUG).
    pub debug: bool,
    /// Unix seconds after which the trust inputs (collateral, certificates) are no longer valid.
    pub valid_until: u64,
    pub details: TeeDetails,
}

impl TeeClaims {
    /// One-line human summary: kind and main measurement.
    pub fn summary(&self) -> String {
        match &self.details {
            TeeDetails::Tdx {
                measurements,
                tcb_status,
                ..
            } => {
                format!("TDX, MRTD {}, TCB {tcb_status}", measurements.mrtd)
            }
            TeeDetails::SevSnp {
                product,
                measurement,
                ..
            } => {
                format!("SEV-SNP ({product}), MEASUREMENT {measurement}")
            }
            TeeDetails::Simulated { measurements, .. } => {
                format!("SIMULATED TEE (insecure), MRTD {}", measurements.mrtd)
            }
        }
    }
}
