//! NVIDIA GPU evidence: the SPDM report parser, then full verification (chain, signature,
//! nonce, policy) of the fuzzed report with the real Hopper chain. The first byte picks what
//! the rest is: a report (with the sample chain) or a PEM chain (for the sample report).
#![no_main]

use attestation::nvidia::{parse_gpu_report, verify_gpu_evidence, GpuEvidence, NVIDIA_DEVICE_ROOT_PEM};
use libfuzzer_sys::fuzz_target;

const REPORT_HEX: &str = include_str!("../../testdata/nvidia/hopperAttestationReport.txt");
const CHAIN: &str = include_str!("../../testdata/nvidia/hopperCertChain.txt");
const NONCE: [u8; 32] = [
    0x93, 0x1d, 0x8d, 0xd0, 0xad, 0xd2, 0x03, 0xac, 0x3d, 0x8b, 0x4f, 0xbd, 0xe7, 0x5e, 0x11, 0x52,
    0x78, 0xee, 0xfc, 0xdc, 0xea, 0xc5, 0xb8, 0x76, 0x71, 0xa7, 0x48, 0xf3, 0x23, 0x64, 0xdf, 0xcb,
];
const NOW: u64 = 1_735_689_600;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let _ = parse_gpu_report(rest);
    let ev = if selector & 1 == 0 {
        GpuEvidence { report: rest.to_vec(), cert_chain_pem: CHAIN.to_string(), insecure_simulated: false }
    } else {
        GpuEvidence {
            report: hex::decode(REPORT_HEX.trim()).unwrap_or_default(),
            cert_chain_pem: String::from_utf8_lossy(rest).into_owned(),
            insecure_simulated: false,
        }
    };
    let _ = verify_gpu_evidence(&ev, &NONCE, NVIDIA_DEVICE_ROOT_PEM, NOW);
});
