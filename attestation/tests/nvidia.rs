//! Must-pass and must-fail cases on a REAL NVIDIA H100 (Hopper) attestation report and its
//! device certificate chain (samples of nv-local-gpu-verifier 2.7.3; see
//! testdata/nvidia/README.md). Each case asserts the rule that rejected it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::nvidia::{
    parse_gpu_report, verify_gpu_evidence, GoldenValue, GpuArchitecture, GpuClaims, GpuError, GpuEvidence, GpuGolden,
    GpuPolicy, NVIDIA_DEVICE_ROOT_PEM,
};
use attestation::{AttestationError, Policy};

/// The nonce of the sample's SPDM request: NVIDIA's own tests use it with this report
/// (e.g. nvtrust `TEST_GPU_NONCE`). Not `BaseSettings.NONCE` of the same package.
const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
/// 2025-01-01T00:00:00Z: inside every certificate's validity.
const NOW: u64 = 1_735_689_600;
/// Every certificate of the chain is valid until 9999-12-31T23:59:59Z.
const NOT_AFTER: u64 = 253_402_300_799;
/// Offsets in the sample (request 37 bytes, response header 8 bytes, record 3520 bytes).
const REQUEST_NONCE_AT: usize = 4;
const FIRST_BLOCK_VALUE_AT: usize = 37 + 8 + 4 + 3;
const SIGNATURE_AT: usize = 4117 - 96;

fn sample() -> GpuEvidence {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nvidia/");
    let hex_text = std::fs::read_to_string(format!("{dir}hopperAttestationReport.txt")).unwrap();
    GpuEvidence {
        report: hex::decode(hex_text.trim()).unwrap(),
        cert_chain_pem: std::fs::read_to_string(format!("{dir}hopperCertChain.txt")).unwrap(),
        insecure_simulated: false,
    }
}

fn nonce() -> [u8; 32] {
    hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap()
}

fn verify(ev: &GpuEvidence, now: u64) -> Result<GpuClaims, GpuError> {
    verify_gpu_evidence(ev, &nonce(), NVIDIA_DEVICE_ROOT_PEM, now)
}

/// A policy pinning every block of the sample to its own value (the sample's RIMs in the
/// package are for other driver/VBIOS builds, so they cannot supply golden values here).
fn policy_allowing(claims: &GpuClaims) -> GpuPolicy {
    GpuPolicy {
        require: true,
        allowed_driver_versions: vec![claims.driver_version.clone()],
        allowed_vbios_versions: vec![claims.vbios_version.clone()],
        measurements: claims
            .measurements
            .iter()
            .map(|m| GpuGolden { index: m.index, allowed: vec![GoldenValue(m.value.clone())], source: None })
            .collect(),
        ..GpuPolicy::default()
    }
}

fn full(ev: &GpuEvidence, now: u64) -> Result<GpuClaims, GpuError> {
    static POLICY: std::sync::OnceLock<GpuPolicy> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| policy_allowing(&verify(&sample(), NOW).unwrap()))
        .verify(Some(ev), &nonce(), NVIDIA_DEVICE_ROOT_PEM, false, now).map(Option::unwrap)
}

fn rule(r: Result<GpuClaims, GpuError>) -> &'static str {
    shown(r.expect_err("must fail")).rule()
}

/// Prints a rejection (`--no-capture`), for the list of reasons in the issue's resolve note.
fn shown(e: GpuError) -> GpuError {
    println!("MUST-FAIL [{}] {e}", e.rule());
    e
}

fn with_report(f: impl FnOnce(&mut Vec<u8>)) -> GpuEvidence {
    let mut ev = sample();
    f(&mut ev.report);
    ev
}

/// The chain's certificates (DER), leaf first, and back to PEM.
fn chain_der(ev: &GpuEvidence) -> Vec<Vec<u8>> {
    use x509_cert::der::Encode;
    x509_cert::Certificate::load_pem_chain(ev.cert_chain_pem.as_bytes())
        .unwrap()
        .iter()
        .map(|c| c.to_der().unwrap())
        .collect()
}

fn to_pem(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| x509_cert::der::pem::encode_string("CERTIFICATE", x509_cert::der::pem::LineEnding::LF, d).unwrap())
        .collect()
}

#[test]
fn sample_passes_at_its_time_with_its_nonce() {
    let claims = full(&sample(), NOW).unwrap();
    assert_eq!(claims.architecture, GpuArchitecture::Hopper);
    // The values `nvmlHandlerTest.py` expects for this sample.
    assert_eq!(claims.driver_version, "550.90.07");
    assert_eq!(claims.vbios_version, "96.00.9f.00.01");
    assert_eq!(claims.nonce, SAMPLE_NONCE);
    assert_eq!(claims.measurements.len(), 64);
    assert!(claims.measurements.iter().all(|m| m.value.len() == 96), "SHA-384 values");
    assert_eq!(claims.measurements[1].value[..16], *"8048dfd18fe229bf");
    assert_eq!(claims.project.as_deref(), Some("1010"));
    assert_eq!(claims.project_sku.as_deref(), Some("0200"));
    assert_eq!(claims.chip_sku.as_deref(), Some("882"));
    assert!(claims.device_subject.contains("GH100 A01 GSP FMC LF"), "{}", claims.device_subject);
    assert_eq!(claims.valid_until, NOT_AFTER);
    // The last second of validity still passes.
    full(&sample(), NOT_AFTER - 1).unwrap();
}

#[test]
fn flipped_signature_byte_fails() {
    for at in [SIGNATURE_AT, SIGNATURE_AT + 50, 4116] {
        let ev = with_report(|r| r[at] ^= 1);
        assert_eq!(rule(full(&ev, NOW)), "gpu_report_signature", "byte {at}");
    }
}

#[test]
fn flipped_signed_byte_fails() {
    // A measurement value, the request nonce, the responder nonce, an opaque byte (driver).
    let report = sample().report;
    let driver = report.windows(9).position(|w| w == b"550.90.07").unwrap();
    for at in [FIRST_BLOCK_VALUE_AT + 47, REQUEST_NONCE_AT, 37 + 8 + 3520 + 5, driver + 2] {
        let ev = with_report(|r| r[at] ^= 1);
        assert_eq!(rule(full(&ev, NOW)), "gpu_report_signature", "byte {at}");
    }
}

#[test]
fn wrong_nonce_fails() {
    let claims = verify(&sample(), NOW).unwrap();
    let err = policy_allowing(&claims).verify(Some(&sample()), &[7; 32], NVIDIA_DEVICE_ROOT_PEM, false, NOW).map_err(shown).unwrap_err();
    assert_eq!(err.rule(), "gpu_nonce");
    assert!(err.to_string().contains(SAMPLE_NONCE), "{err}");
    // Wrapped for the router's verdicts, the rule is kept.
    assert_eq!(AttestationError::from(err).rule(), "gpu_nonce");
}

#[test]
fn flipped_certificate_byte_fails() {
    let ev = sample();
    let ders = chain_der(&ev);
    for (cert, needle) in [(0usize, b"FMC LF".as_slice()), (1, b"GSP BROM"), (2, b"Provisioner"), (3, b"GH100 Identity")] {
        let mut ders = ders.clone();
        let at = ders[cert].windows(needle.len()).position(|w| w == needle).unwrap();
        ders[cert][at] ^= 0x20; // a letter's case: still a valid name, no longer the signed one
        let mut bad = ev.clone();
        bad.cert_chain_pem = to_pem(&ders);
        let r = full(&bad, NOW);
        // Changing a subject breaks the issuer link below it, or the signature over it.
        assert!(matches!(rule(r.clone()), "gpu_cert_signature" | "gpu_chain_structure" | "gpu_untrusted_root"), "cert {cert}: {r:?}");
    }
    // A byte of the leaf's public key: the certificate's own signature fails.
    let mut ders = ders.clone();
    let len = ders[0].len();
    ders[0][len - 120] ^= 1;
    let mut bad = ev.clone();
    bad.cert_chain_pem = to_pem(&ders);
    let r = full(&bad, NOW);
    assert!(matches!(rule(r.clone()), "gpu_cert_signature" | "gpu_malformed_chain"), "{r:?}");
}

#[test]
fn leaf_subject_flip_is_a_certificate_signature_failure() {
    let ev = sample();
    let mut ders = chain_der(&ev);
    let at = ders[0].windows(6).position(|w| w == b"FMC LF").unwrap();
    ders[0][at] ^= 0x20;
    let mut bad = ev.clone();
    bad.cert_chain_pem = to_pem(&ders);
    let err = full(&bad, NOW).map_err(shown).unwrap_err();
    assert_eq!(err.rule(), "gpu_cert_signature", "{err}");
}

#[test]
fn wrong_root_fails() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nvidia/");
    let rim_root = std::fs::read_to_string(format!("{dir}verifier_RIM_root.pem")).unwrap();
    // The verifier trusting another root (NVIDIA's RIM root).
    let err = verify_gpu_evidence(&sample(), &nonce(), &rim_root, NOW).map_err(shown).unwrap_err();
    assert_eq!(err.rule(), "gpu_untrusted_root", "{err}");
    // A chain whose top is replaced by another self-signed root.
    let mut ders = chain_der(&sample());
    ders.pop();
    ders.pop();
    ders.push(chain_der(&GpuEvidence { report: vec![], cert_chain_pem: rim_root, insecure_simulated: false })[0].clone());
    let mut bad = sample();
    bad.cert_chain_pem = to_pem(&ders);
    assert_eq!(rule(full(&bad, NOW)), "gpu_untrusted_root");
    // A chain cut below the GH100 identity CA does not reach the root either.
    let mut bad = sample();
    bad.cert_chain_pem = to_pem(&chain_der(&sample())[..3]);
    assert_eq!(rule(full(&bad, NOW)), "gpu_untrusted_root");
}

#[test]
fn expired_and_not_yet_valid_certificates_fail() {
    let err = full(&sample(), NOT_AFTER + 1).map_err(shown).unwrap_err();
    assert_eq!(err.rule(), "gpu_cert_expired", "{err}");
    assert!(err.to_string().contains(&NOT_AFTER.to_string()), "{err}");
    // Before the leaf's notBefore (2020-10-17) and the provisioner CA's (2022-03-01).
    assert_eq!(rule(full(&sample(), 1_600_000_000)), "gpu_cert_not_yet_valid");
}

#[test]
fn driver_and_vbios_not_allowed_fail() {
    let claims = verify(&sample(), NOW).unwrap();
    let mut p = policy_allowing(&claims);
    p.allowed_driver_versions = vec!["570.86.15".into()];
    let err = p.check(&claims).map_err(shown).unwrap_err();
    assert_eq!(err.rule(), "gpu_driver_version");
    assert!(err.to_string().contains("550.90.07"), "{err}");
    let mut p = policy_allowing(&claims);
    p.allowed_vbios_versions = vec!["96.00.5e.00.01".into()];
    assert_eq!(p.check(&claims).map_err(shown).unwrap_err().rule(), "gpu_vbios_version");
    // Case does not matter; an empty list allows any.
    let mut p = policy_allowing(&claims);
    p.allowed_vbios_versions = vec!["96.00.9F.00.01".into()];
    p.allowed_driver_versions.clear();
    p.check(&claims).unwrap();
}

#[test]
fn measurement_not_allowed_fails() {
    let claims = verify(&sample(), NOW).unwrap();
    let mut p = policy_allowing(&claims);
    p.measurements[1].allowed = vec![GoldenValue("00".repeat(48))];
    let err = p.check(&claims).map_err(shown).unwrap_err();
    assert_eq!(err.rule(), "gpu_measurement");
    assert!(err.to_string().contains("block 2"), "{err}");
    // A pinned index the report lacks.
    let mut p = policy_allowing(&claims);
    p.measurements.push(GpuGolden { index: 65, allowed: vec![GoldenValue("00".into())], source: None });
    assert_eq!(p.check(&claims).map_err(shown).unwrap_err().rule(), "gpu_measurement");
    // No golden values at all: nothing is accepted.
    let mut p = policy_allowing(&claims);
    p.measurements.clear();
    assert_eq!(p.check(&claims).map_err(shown).unwrap_err().rule(), "gpu_measurement");
}

#[test]
fn required_evidence_missing_fails() {
    let claims = verify(&sample(), NOW).unwrap();
    let p = policy_allowing(&claims);
    assert_eq!(p.verify(None, &nonce(), NVIDIA_DEVICE_ROOT_PEM, false, NOW).map_err(shown).unwrap_err().rule(), "gpu_missing");
    let p = GpuPolicy::default();
    assert_eq!(p.verify(None, &nonce(), NVIDIA_DEVICE_ROOT_PEM, false, NOW).unwrap(), None);
}

#[test]
fn every_truncation_is_refused_without_panic() {
    let report = sample().report;
    for len in 0..report.len() {
        let err = parse_gpu_report(&report[..len]).unwrap_err();
        assert_eq!(err.rule(), "gpu_malformed", "length {len}");
    }
    let chain = sample().cert_chain_pem;
    let mut ev = sample();
    for len in 0..chain.len() {
        ev.cert_chain_pem = chain[..len].to_string();
        // Only a cut right after the 4th certificate (dropping the optional copy of the root)
        // leaves a valid chain.
        if verify(&ev, NOW).is_ok() {
            assert_eq!(ev.cert_chain_pem.matches("-----END CERTIFICATE-----").count(), 4, "chain cut at {len}");
        }
    }
}

#[test]
fn oversized_and_trailing_input_is_refused() {
    let ev = with_report(|r| r.push(0));
    assert_eq!(rule(full(&ev, NOW)), "gpu_malformed");
    let ev = with_report(|r| r.resize(64 * 1024, 0));
    assert_eq!(rule(full(&ev, NOW)), "gpu_too_large");
    let mut ev = sample();
    ev.cert_chain_pem = ev.cert_chain_pem.repeat(4);
    assert_eq!(rule(full(&ev, NOW)), "gpu_too_large");
    // Length fields pointing past the end: NumberOfBlocks, MeasurementRecordLength.
    let ev = with_report(|r| r[37 + 4] = 65);
    assert_eq!(rule(full(&ev, NOW)), "gpu_malformed");
    let ev = with_report(|r| r[37 + 7] = 0xff);
    assert_eq!(rule(full(&ev, NOW)), "gpu_malformed");
}

#[test]
fn policy_section_parses_and_rejects_unknown_keys() {
    let h = "ab".repeat(48);
    let p: Policy = toml::from_str(&format!(
        r#"
        [gpu]
        require = true
        allowed_driver_versions = ["550.90.07"]
        allowed_vbios_versions = ["96.00.9f.00.01"]
        measurements = [{{ index = 2, allowed = ["{h}"] }}]
        "#
    ))
    .unwrap();
    assert!(p.gpu.require);
    assert_eq!(p.gpu.measurements[0].index, 2);
    assert!(toml::from_str::<Policy>("[gpu]\nallow_debug = true").is_err());
    assert!(toml::from_str::<Policy>("[gpu]\nmeasurements = [{ index = 1, allowed = [\"xyz\"] }]").is_err());
    assert!(!Policy::default().gpu.require);
}

/// The router's path: GPU evidence rides in the worker's attestation and must answer
/// `gpu_nonce` of its binding. The sample answers NVIDIA's test nonce, so for any session
/// of ours it is evidence from another session, and must fail on the nonce (after its
/// chain and signature verified).
#[test]
fn worker_attestation_requires_gpu_evidence_for_this_session() {
    use attestation::{gpu_nonce, EvidenceProducer, JobOpener, Nonce, Verifier};
    let claims = verify(&sample(), NOW).unwrap();
    let mut policy = Policy::insecure_dev();
    policy.gpu = policy_allowing(&claims);
    let v = Verifier::new(policy);
    let keys = JobOpener::generate().unwrap();
    let nonce = Nonce::random().unwrap();
    let mut att = EvidenceProducer::simulated().unwrap().attest(keys.public_key(), b"spki", nonce, NOW).unwrap();

    // Required and absent.
    let err = v.verify_attestation(&att, &nonce, NOW).unwrap_err();
    assert_eq!(err.rule(), "gpu_missing", "{err}");

    // Present, genuine, but made for another nonce.
    att.gpu = Some(sample());
    let err = v.verify_attestation(&att, &nonce, NOW).unwrap_err();
    assert_eq!(err.rule(), "gpu_nonce", "{err}");
    assert!(err.to_string().contains(&hex::encode(gpu_nonce(&att.binding()))), "{err}");

    // Not required and absent: the CPU verdict stands, and says there is no GPU evidence.
    let mut policy = Policy::insecure_dev();
    policy.gpu.require = false;
    att.gpu = None;
    let w = Verifier::new(policy).verify_attestation(&att, &nonce, NOW).unwrap();
    assert_eq!(w.gpu, None);
    assert!(w.describe().contains("GPU: no GPU evidence"), "{}", w.describe());

    // The evidence travels in the attestation's JSON.
    att.gpu = Some(sample());
    let json = serde_json::to_string(&att).unwrap();
    let back: attestation::WorkerAttestation = serde_json::from_str(&json).unwrap();
    assert_eq!(back, att);
}

// ---- Simulated GPU evidence (`attestation::nvidia_sim`, what `cocoon dev` sends) ----
//
// Same format and the same verifier as the real sample; what differs is the root (generated
// per run, travelling in the evidence) and so the rule that only a policy allowing the
// simulated TEE accepts it. The spec is varied to exercise the rules the real sample cannot
// (its firmware reports no protection mode).

mod simulated {
    use super::*;
    use attestation::nvidia_sim::{simulated_measurement, SimulatedGpu, SimulatedGpuSpec};
    use attestation::GpuProtectionMode;

    fn now() -> u64 {
        attestation::unix_now()
    }

    fn check(policy: &GpuPolicy, ev: &GpuEvidence, nonce: &[u8; 32], allow: bool) -> Result<GpuClaims, GpuError> {
        policy.verify(Some(ev), nonce, NVIDIA_DEVICE_ROOT_PEM, allow, now()).map(Option::unwrap)
    }

    #[test]
    fn passes_the_real_verifier_flagged_and_only_where_simulation_is_allowed() {
        let gpu = SimulatedGpu::generate().unwrap();
        let nonce = [3; 32];
        let ev = gpu.evidence(nonce).unwrap();
        let claims = check(&GpuPolicy::default(), &ev, &nonce, true).unwrap();
        assert!(claims.insecure_simulated);
        assert_eq!(claims.architecture.to_string(), "Hopper");
        assert_eq!(claims.protection_mode, Some(GpuProtectionMode::Spt));
        assert_eq!(claims.cc_mode(), "on");
        assert_eq!(claims.vbios_version, "96.00.00.00.00");
        assert_eq!(claims.measurements.len(), 8);
        assert_eq!(claims.measurements[6].value, hex::encode(simulated_measurement(7)));
        let v = claims.verdict();
        assert_eq!(v["insecure_simulated"], true);
        assert_eq!(v["cc_mode"], "on");
        assert_eq!(v["protection_mode"], "spt");
        assert!(claims.describe().starts_with("WARNING: SIMULATED GPU"), "{}", claims.describe());

        assert_eq!(rule(check(&GpuPolicy::default(), &ev, &nonce, false)), "gpu_simulated_not_allowed");
        // Another session's nonce, a flipped signed byte, a flipped signature byte.
        assert_eq!(rule(check(&GpuPolicy::default(), &ev, &[4; 32], true)), "gpu_nonce");
        let mut bad = ev.clone();
        bad.report[40] ^= 1;
        assert_eq!(rule(check(&GpuPolicy::default(), &bad, &nonce, true)), "gpu_report_signature");
        let mut bad = ev.clone();
        let last = bad.report.len() - 1;
        bad.report[last] ^= 1;
        assert_eq!(rule(check(&GpuPolicy::default(), &bad, &nonce, true)), "gpu_report_signature");
        // Unflagged, it is checked against NVIDIA's root, which did not sign it.
        let mut bad = ev.clone();
        bad.insecure_simulated = false;
        assert_eq!(rule(check(&GpuPolicy::default(), &bad, &nonce, true)), "gpu_untrusted_root");
        // Another run's chain (another device key) with this report.
        let mut bad = ev.clone();
        bad.cert_chain_pem = SimulatedGpu::generate().unwrap().cert_chain_pem().to_string();
        assert_eq!(rule(check(&GpuPolicy::default(), &bad, &nonce, true)), "gpu_report_signature");
        // NVIDIA's real chain flagged simulated: a simulated chain must end at a simulated root.
        let mut bad = sample();
        bad.insecure_simulated = true;
        assert_eq!(rule(check(&GpuPolicy::default(), &bad, &super::nonce(), true)), "gpu_untrusted_root");
    }

    #[test]
    fn policy_rules_apply_to_simulated_evidence_too() {
        let nonce = [5; 32];
        let ev = SimulatedGpu::generate().unwrap().evidence(nonce).unwrap();
        let allow = |p: GpuPolicy| check(&p, &ev, &nonce, true);
        let hopper: Vec<attestation::nvidia::GpuArchitecture> = serde_json::from_str(r#"["hopper"]"#).unwrap();
        assert!(allow(GpuPolicy { allowed_architectures: hopper, ..GpuPolicy::default() }).is_ok());
        assert!(allow(GpuPolicy { allowed_protection_modes: vec![GpuProtectionMode::Spt], ..GpuPolicy::default() }).is_ok());
        let e = allow(GpuPolicy { allowed_protection_modes: vec![GpuProtectionMode::Mpt], ..GpuPolicy::default() });
        assert_eq!(rule(e), "gpu_protection_mode");
        let e = allow(GpuPolicy { allowed_driver_versions: vec!["550.90.07".into()], ..GpuPolicy::default() });
        assert_eq!(rule(e), "gpu_driver_version");
        // Golden values listed: checked, as for real evidence.
        let golden = |v: Vec<u8>| GpuPolicy {
            measurements: vec![GpuGolden { index: 3, allowed: vec![GoldenValue(hex::encode(v))], source: None }],
            ..GpuPolicy::default()
        };
        assert!(allow(golden(simulated_measurement(3))).is_ok());
        assert_eq!(rule(allow(golden(simulated_measurement(4)))), "gpu_measurement");
    }

    #[test]
    fn protection_mode_is_read_from_the_signed_feature_flag() {
        let nonce = [6; 32];
        for mode in [GpuProtectionMode::Spt, GpuProtectionMode::Mpt, GpuProtectionMode::Ppcie] {
            let spec = SimulatedGpuSpec { protection_mode: Some(mode), ..SimulatedGpuSpec::default() };
            let ev = SimulatedGpu::with_spec(spec).unwrap().evidence(nonce).unwrap();
            let claims = check(&GpuPolicy::default(), &ev, &nonce, true).unwrap();
            assert_eq!(claims.protection_mode, Some(mode));
            assert_eq!(claims.cc_mode(), if mode == GpuProtectionMode::Ppcie { "ppcie" } else { "on" });
        }
        // Firmware that reports no mode (as the real 2.7.3 sample): none, and a policy
        // requiring one refuses it.
        let spec = SimulatedGpuSpec { protection_mode: None, ..SimulatedGpuSpec::default() };
        let ev = SimulatedGpu::with_spec(spec).unwrap().evidence(nonce).unwrap();
        assert_eq!(check(&GpuPolicy::default(), &ev, &nonce, true).unwrap().protection_mode, None);
        let p = GpuPolicy { allowed_protection_modes: vec![GpuProtectionMode::Spt], ..GpuPolicy::default() };
        let e = check(&p, &ev, &nonce, true).map_err(shown).unwrap_err();
        assert_eq!(e.rule(), "gpu_protection_mode");
        assert!(e.to_string().contains("(none reported)"), "{e}");
        assert_eq!(verify(&sample(), NOW).unwrap().protection_mode, None);
    }

    #[test]
    fn a_worker_in_the_simulated_tee_with_a_simulated_gpu_verifies_end_to_end() {
        use attestation::{gpu_nonce, EvidenceProducer, JobOpener, Nonce, Verifier};
        let gpu = SimulatedGpu::generate().unwrap();
        let keys = JobOpener::generate().unwrap();
        let nonce = Nonce::random().unwrap();
        let mut att = EvidenceProducer::simulated().unwrap().attest(keys.public_key(), b"spki", nonce, now()).unwrap();
        att.gpu = Some(gpu.evidence(gpu_nonce(&att.binding())).unwrap());
        let w = Verifier::new(Policy::insecure_dev()).verify_attestation(&att, &nonce, now()).unwrap();
        let g = w.gpu.as_ref().unwrap();
        assert!(g.insecure_simulated);
        assert!(w.describe().contains("WARNING: SIMULATED GPU"), "{}", w.describe());
        // The strict default policy refuses the simulated CPU TEE before the GPU is looked at.
        let e = Verifier::new(Policy::default()).verify_attestation(&att, &nonce, now()).unwrap_err();
        assert_eq!(e.rule(), "simulated_not_allowed", "{e}");
    }
}
