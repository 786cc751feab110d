//! Simulated TEE, for development and tests only. A per-run Ed25519 key signs a report with the
//! same `report_data` binding as real hardware and fixed, recognisable measurements. Nothing
//! about it is backed by hardware: the evidence says `insecure_simulated: true`, and verifiers
//! reject it unless `allow_insecure_simulated_tee = true`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::binding::random_bytes;
use crate::claims::{Measurement, TdxMeasurements, TeeClaims, TeeDetails};
use crate::error::{AttestationError, EvidenceError};
use crate::evidence::TeeKind;
use crate::serde_bytes::hex_array;

/// Domain tag of the signed message.
const SIGNING_TAG: &[u8] = b"cocoon-rs/simulated-tee/report/v1\0";
/// How long a verified simulated attestation may be cached (there is no collateral to expire).
const SIMULATED_VALIDITY_SECS: u64 = 24 * 3600;

const fn padded(text: &[u8]) -> Measurement {
    let mut out = [0u8; 48];
    let mut i = 0;
    while i < text.len() && i < 48 {
        out[i] = text[i];
        i += 1;
    }
    Measurement(out)
}

/// The measurements every simulated report carries: ASCII labels, zero-padded to 48 bytes, so
/// they are recognisable in hex (`494e5345435552452d53494d...` = "INSECURE-SIM...").
pub const SIMULATED_MEASUREMENTS: TdxMeasurements = TdxMeasurements {
    mrtd: padded(b"INSECURE-SIMULATED-TEE:MRTD"),
    rtmr0: padded(b"INSECURE-SIMULATED-TEE:RTMR0"),
    rtmr1: padded(b"INSECURE-SIMULATED-TEE:RTMR1"),
    rtmr2: padded(b"INSECURE-SIMULATED-TEE:RTMR2"),
    rtmr3: padded(b"INSECURE-SIMULATED-TEE:RTMR3"),
};

/// The signed part of a simulated report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatedReport {
    pub measurements: TdxMeasurements,
    pub debug: bool,
    /// Unix seconds when the report was produced.
    pub produced_at: u64,
    #[serde(with = "hex_array")]
    pub report_data: [u8; 64],
}

impl SimulatedReport {
    /// Fixed-layout encoding that is signed (no JSON canonicalisation questions).
    fn signed_bytes(&self) -> Vec<u8> {
        let m = &self.measurements;
        let mut out = Vec::with_capacity(SIGNING_TAG.len() + 9 + 5 * 48 + 64);
        out.extend_from_slice(SIGNING_TAG);
        out.push(u8::from(self.debug));
        out.extend_from_slice(&self.produced_at.to_be_bytes());
        for r in [m.mrtd, m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3] {
            out.extend_from_slice(&r.0);
        }
        out.extend_from_slice(&self.report_data);
        out
    }
}

/// Simulated evidence as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatedEvidence {
    /// Always true; a reminder to whoever reads the JSON.
    pub insecure_simulated: bool,
    pub report: SimulatedReport,
    /// Ed25519 public key of this run's simulated TEE.
    #[serde(with = "hex_array")]
    pub public_key: [u8; 32],
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

/// A simulated TEE holding this run's signing key.
pub struct SimulatedTee {
    key: SigningKey,
}

impl std::fmt::Debug for SimulatedTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedTee")
            .field("public_key", &hex::encode(self.public_key()))
            .finish()
    }
}

impl SimulatedTee {
    /// A fresh per-run key.
    pub fn generate() -> Result<Self, EvidenceError> {
        Ok(Self {
            key: SigningKey::from_bytes(&random_bytes::<32>()?),
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Evidence with the fixed simulated measurements, debug off, for `report_data`.
    pub fn produce(&self, report_data: [u8; 64], now: u64) -> SimulatedEvidence {
        self.sign(SimulatedReport {
            measurements: SIMULATED_MEASUREMENTS,
            debug: false,
            produced_at: now,
            report_data,
        })
    }

    /// Signs an arbitrary report (tests use it for debug or foreign measurements).
    pub fn sign(&self, report: SimulatedReport) -> SimulatedEvidence {
        SimulatedEvidence {
            insecure_simulated: true,
            report,
            public_key: self.public_key(),
            signature: self.key.sign(&report.signed_bytes()).to_bytes(),
        }
    }
}

/// Checks the signature and returns the claims (policy not applied).
pub(crate) fn verify(ev: &SimulatedEvidence) -> Result<TeeClaims, AttestationError> {
    let kind = TeeKind::Simulated;
    if !ev.insecure_simulated {
        return Err(AttestationError::Malformed {
            kind,
            reason: "simulated evidence must say insecure_simulated: true".into(),
        });
    }
    let key =
        VerifyingKey::from_bytes(&ev.public_key).map_err(|e| AttestationError::Malformed {
            kind,
            reason: format!("bad Ed25519 public key: {e}"),
        })?;
    key.verify_strict(
        &ev.report.signed_bytes(),
        &Signature::from_bytes(&ev.signature),
    )
    .map_err(|e| AttestationError::BadSignature {
        kind,
        detail: format!("simulated report signature does not verify: {e}"),
    })?;
    Ok(TeeClaims {
        kind,
        insecure_simulated: true,
        report_data: ev.report.report_data,
        debug: ev.report.debug,
        valid_until: ev
            .report
            .produced_at
            .saturating_add(SIMULATED_VALIDITY_SECS),
        details: TeeDetails::Simulated {
            measurements: ev.report.measurements,
            produced_at: ev.report.produced_at,
            signer: ev.public_key,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn measurements_are_recognisable() {
        let hex = SIMULATED_MEASUREMENTS.mrtd.to_hex();
        assert!(
            hex.starts_with(&hex::encode("INSECURE-SIMULATED-TEE:MRTD")),
            "{hex}"
        );
        assert_ne!(SIMULATED_MEASUREMENTS.rtmr0, SIMULATED_MEASUREMENTS.rtmr1);
    }

    #[test]
    fn signature_covers_every_field() {
        let tee = SimulatedTee::generate().unwrap();
        let ev = tee.produce([7; 64], 1000);
        assert!(verify(&ev).is_ok());
        let mut cases = Vec::new();
        let mut e = ev.clone();
        e.report.debug = true;
        cases.push(e);
        let mut e = ev.clone();
        e.report.produced_at += 1;
        cases.push(e);
        let mut e = ev.clone();
        e.report.report_data[63] ^= 1;
        cases.push(e);
        let mut e = ev.clone();
        e.report.measurements.rtmr3.0[0] ^= 1;
        cases.push(e);
        let mut e = ev.clone();
        e.public_key = SimulatedTee::generate().unwrap().public_key();
        cases.push(e);
        for e in cases {
            assert_eq!(verify(&e).unwrap_err().rule(), "bad_signature");
        }
        let mut e = ev;
        e.insecure_simulated = false;
        assert_eq!(verify(&e).unwrap_err().rule(), "malformed");
    }
}
