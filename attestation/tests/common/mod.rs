//! Shared fixtures: the real vendor samples in `testdata/` (see testdata/README.md).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use attestation::{
    collateral_window, Evidence, Policy, QuoteCollateralV3, SnpEvidence, TdxAllowed, TdxEvidence,
    TdxMeasurements, TeeClaims, TeeDetails, Verifier,
};

pub const TDX_V4: &[u8] = include_bytes!("../../testdata/tdx_quote");
pub const TDX_V4_COLLATERAL: &[u8] = include_bytes!("../../testdata/tdx_quote_collateral.json");
pub const TDX_V5: &[u8] = include_bytes!("../../testdata/tdx_quote_td15ex");
pub const TDX_V5_COLLATERAL: &[u8] =
    include_bytes!("../../testdata/tdx_quote_td15ex_collateral.json");
pub const TDX_OUTDATED: &[u8] = include_bytes!("../../testdata/tdx_quote_outdated");
pub const TDX_OUTDATED_COLLATERAL: &[u8] =
    include_bytes!("../../testdata/tdx_quote_outdated_collateral.json");
pub const SNP_MILAN_REPORT_HEX: &str = include_str!("../../testdata/report_milan.hex");
pub const SNP_MILAN_VCEK: &[u8] = include_bytes!("../../testdata/vcek_milan.der");

pub struct TdxSample {
    pub name: &'static str,
    pub quote: &'static [u8],
    pub collateral: QuoteCollateralV3,
}

impl TdxSample {
    pub fn evidence(&self) -> Evidence {
        self.evidence_with(self.quote.to_vec())
    }

    pub fn evidence_with(&self, quote: Vec<u8>) -> Evidence {
        Evidence::Tdx(TdxEvidence {
            quote,
            collateral: Some(self.collateral.clone()),
        })
    }

    /// A time inside the collateral's validity window.
    pub fn now(&self) -> u64 {
        let (from, until) = collateral_window(&self.collateral).unwrap();
        assert!(from <= until, "{}: empty collateral window", self.name);
        from + (until - from) / 2
    }

    pub fn window(&self) -> (u64, u64) {
        collateral_window(&self.collateral).unwrap()
    }
}

fn sample(name: &'static str, quote: &'static [u8], collateral: &[u8]) -> TdxSample {
    TdxSample {
        name,
        quote,
        collateral: serde_json::from_slice(collateral).unwrap(),
    }
}

pub fn tdx_v4() -> TdxSample {
    sample("tdx_quote (v4)", TDX_V4, TDX_V4_COLLATERAL)
}

pub fn tdx_v5() -> TdxSample {
    sample("tdx_quote_td15ex (v5)", TDX_V5, TDX_V5_COLLATERAL)
}

pub fn tdx_outdated() -> TdxSample {
    sample("tdx_quote_outdated", TDX_OUTDATED, TDX_OUTDATED_COLLATERAL)
}

pub fn snp_milan() -> SnpEvidence {
    SnpEvidence {
        report: hex::decode(SNP_MILAN_REPORT_HEX.trim()).unwrap(),
        vcek: SNP_MILAN_VCEK.to_vec(),
    }
}

/// The signing time of the Milan sample is unknown; its VCEK is valid 2023-04-03 .. 2030-04-03.
pub const SNP_MILAN_NOW: u64 = 1_760_000_000; // 2025-10-09

pub fn tdx_measurements(claims: &TeeClaims) -> TdxMeasurements {
    match &claims.details {
        TeeDetails::Tdx { measurements, .. } => *measurements,
        other => panic!("not TDX: {other:?}"),
    }
}

/// A policy whose only approved TDX image is the one in `claims` (the vendor sample's).
pub fn policy_allowing(claims: &TeeClaims) -> Policy {
    let mut p = Policy::default();
    match &claims.details {
        TeeDetails::Tdx { measurements, .. } => p.tdx.allowed.push(TdxAllowed::exact(measurements)),
        TeeDetails::SevSnp { measurement, .. } => p.snp.allowed_measurements.push(*measurement),
        TeeDetails::Simulated { .. } => p.allow_insecure_simulated_tee = true,
    }
    p
}

/// A verifier with the default (strict) policy, to get claims first.
pub fn strict() -> Verifier {
    Verifier::new(Policy::default())
}
