//! Evidence and attestation JSON as received from the network.
#![no_main]

use attestation::{AttestationReport, Evidence, Policy, Verifier, WorkerAttestation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::new(Policy::insecure_dev());
    if let Ok(ev) = serde_json::from_slice::<Evidence>(data) {
        let _ = verifier.verify_evidence(&ev, 1_760_000_000);
    }
    if let Ok(att) = serde_json::from_slice::<WorkerAttestation>(data) {
        let _ = verifier.verify_attestation(&att, &att.nonce, 1_760_000_000);
    }
    let _ = serde_json::from_slice::<AttestationReport>(data);
});
