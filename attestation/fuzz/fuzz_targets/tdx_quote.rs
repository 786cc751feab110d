//! TDX quote parser and full verifier (real Intel collateral, at its validity time).
#![no_main]

use std::sync::OnceLock;

use attestation::{Evidence, Policy, QuoteCollateralV3, TdxEvidence, Verifier};
use libfuzzer_sys::fuzz_target;

const COLLATERAL: &[u8] = include_bytes!("../../testdata/tdx_quote_collateral.json");
/// Inside the sample collateral's window (2025-06-19 .. 2025-07-19).
const NOW: u64 = 1_751_000_000;

fn setup() -> &'static (Verifier, QuoteCollateralV3) {
    static S: OnceLock<(Verifier, QuoteCollateralV3)> = OnceLock::new();
    S.get_or_init(|| {
        let collateral =
            serde_json::from_slice(COLLATERAL).unwrap_or_else(|e| panic!("sample collateral: {e}"));
        (Verifier::new(Policy::default()), collateral)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = attestation::parse_tdx_quote(data);
    let (verifier, collateral) = setup();
    let ev = Evidence::Tdx(TdxEvidence {
        quote: data.to_vec(),
        collateral: Some(collateral.clone()),
    });
    if let Ok(claims) = verifier.verify_evidence(&ev, NOW) {
        let _ = verifier.check_policy(&claims, NOW);
    }
});
