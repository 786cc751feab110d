//! SEV-SNP report and VCEK parsers and the full verifier (real Milan VCEK). The first byte
//! picks what the rest is: a report verified with the sample VCEK, or a VCEK for the sample
//! report.
#![no_main]

use attestation::{Evidence, Policy, SnpEvidence, Verifier};
use libfuzzer_sys::fuzz_target;

const REPORT_HEX: &str = include_str!("../../testdata/report_milan.hex");
const VCEK: &[u8] = include_bytes!("../../testdata/vcek_milan.der");
const NOW: u64 = 1_760_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let _ = attestation::parse_snp_report(rest);
    let _ = attestation::parse_vcek(rest);
    let sample_report = hex::decode(REPORT_HEX.trim()).unwrap_or_default();
    let ev = if selector & 1 == 0 {
        SnpEvidence {
            report: rest.to_vec(),
            vcek: VCEK.to_vec(),
        }
    } else {
        SnpEvidence {
            report: sample_report,
            vcek: rest.to_vec(),
        }
    };
    let _ = Verifier::new(Policy::default()).verify_evidence(&Evidence::SevSnp(ev), NOW);
});
