//! RIM import (`cocoon policy import-rim`'s library half): NVIDIA's real signed RIMs
//! (nv-local-gpu-verifier 2.7.3 samples) and a test-signed RIM carrying the sample report's
//! own measurements (testdata/nvidia/rim/make-test-rim). Needs Debian's `xmlsec1`
//! (scripts/test installs it); without it every test here says so and returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use attestation::nvidia::{GpuEvidence, GpuPolicy, NVIDIA_DEVICE_ROOT_PEM};
use attestation::nvidia_rim::{golden_from_rims, verify_rim_file, RimError, VerifiedRim};

const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
/// 2025-01-01T00:00:00Z, the time the device chain is checked at.
const NOW: u64 = 1_735_689_600;
/// 2024-01-01T00:00:00Z: inside the validity of the NVIDIA RIM signers (2023-06 to 2025-06).
const RIM_TIME: u64 = 1_704_067_200;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nvidia").join(p)
}
const VBIOS: &str = "rim/1010_0200_882_96005E0001_PROD.swidtag";
const DRIVER: &str = "rim/Driver_RIM_test_no_gpu.swidtag";
const TEST_RIM: &str = "rim/test-rim.swidtag";

fn xmlsec1() -> bool {
    let ok = std::process::Command::new("xmlsec1").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: xmlsec1 is not installed (apt-get install xmlsec1); RIM signatures cannot be checked");
    }
    ok
}

fn nvidia_root() -> PathBuf {
    data("verifier_RIM_root.pem")
}

fn import(rim: &Path, root: &Path, at: Option<u64>) -> Result<VerifiedRim, RimError> {
    verify_rim_file(rim, root, at).inspect_err(|e| println!("MUST-FAIL [{}] {e}", e.rule()))
}

fn sample() -> GpuEvidence {
    GpuEvidence {
        report: hex::decode(std::fs::read_to_string(data("hopperAttestationReport.txt")).unwrap().trim()).unwrap(),
        cert_chain_pem: std::fs::read_to_string(data("hopperCertChain.txt")).unwrap(),
        insecure_simulated: false,
    }
}

fn check_sample(policy: &GpuPolicy) -> Result<(), attestation::GpuError> {
    let nonce: [u8; 32] = hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap();
    policy.verify(Some(&sample()), &nonce, NVIDIA_DEVICE_ROOT_PEM, false, NOW).map(|_| ())
}

#[test]
fn nvidia_rims_verify_against_the_rim_root() {
    if !xmlsec1() {
        return;
    }
    let v = import(&data(VBIOS), &nvidia_root(), Some(RIM_TIME)).unwrap();
    assert_eq!(v.rim.version, "96.00.5e.00.01");
    let d = import(&data(DRIVER), &nvidia_root(), Some(RIM_TIME)).unwrap();
    assert_eq!(d.rim.version, "545.00");
    // NVIDIA's verifier refuses a driver and a VBIOS RIM that both claim an index; these two
    // sample RIMs (different builds) do not.
    let golden = golden_from_rims(&[d, v]).unwrap();
    assert!(golden.iter().all(|g| g.source.as_deref().is_some_and(|s| s.contains("RIM"))));
}

#[test]
fn a_broken_rim_signature_is_refused() {
    if !xmlsec1() {
        return;
    }
    let xml = std::fs::read_to_string(data(VBIOS)).unwrap();
    let dir = std::env::temp_dir().join(format!("cocoon-rim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One golden value changed (index 1 FSP): the signed digest no longer matches.
    let tampered = dir.join("tampered.swidtag");
    std::fs::write(&tampered, xml.replacen("c3f65ef79a19c029", "c3f65ef79a19c028", 1)).unwrap();
    assert_eq!(import(&tampered, &nvidia_root(), Some(RIM_TIME)).unwrap_err().rule(), "rim_signature");
    // The signature value itself flipped.
    let sig = xml.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len() + 10;
    let mut bad = xml.clone();
    let c = if &xml[sig..sig + 1] == "A" { "B" } else { "A" };
    bad.replace_range(sig..sig + 1, c);
    let flipped = dir.join("flipped.swidtag");
    std::fs::write(&flipped, bad).unwrap();
    assert_eq!(import(&flipped, &nvidia_root(), Some(RIM_TIME)).unwrap_err().rule(), "rim_signature");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_wrong_root_or_an_expired_signer_is_refused() {
    if !xmlsec1() {
        return;
    }
    // NVIDIA's RIM under our test root, and our test RIM under NVIDIA's root.
    assert_eq!(import(&data(VBIOS), &data("rim/test-rim-root.pem"), Some(RIM_TIME)).unwrap_err().rule(), "rim_signature");
    assert_eq!(import(&data(TEST_RIM), &nvidia_root(), None).unwrap_err().rule(), "rim_signature");
    // The device root is not the RIM root.
    assert_eq!(import(&data(VBIOS), &data("verifier_device_root.pem"), Some(RIM_TIME)).unwrap_err().rule(), "rim_signature");
    // Now (after 2025-06): the sample RIMs' signer has expired.
    let e = import(&data(VBIOS), &nvidia_root(), Some(1_767_225_600)).unwrap_err();
    assert_eq!(e.rule(), "rim_signature");
    assert!(e.to_string().contains("expired"), "{e}");
}

#[test]
fn golden_values_from_a_verified_rim_accept_the_matching_report() {
    if !xmlsec1() {
        return;
    }
    let rim = import(&data(TEST_RIM), &data("rim/test-rim-root.pem"), None).unwrap();
    let policy = GpuPolicy { require: true, measurements: golden_from_rims(&[rim]).unwrap(), ..GpuPolicy::default() };
    assert_eq!(policy.measurements.len(), 64);
    check_sample(&policy).unwrap();
}

#[test]
fn a_measurement_not_matching_the_rim_is_refused() {
    if !xmlsec1() {
        return;
    }
    // NVIDIA's real VBIOS RIM (96.00.5E.00.01) against NVIDIA's real report (96.00.9f.00.01).
    let rim = import(&data(VBIOS), &nvidia_root(), Some(RIM_TIME)).unwrap();
    let policy = GpuPolicy { measurements: golden_from_rims(&[rim]).unwrap(), ..GpuPolicy::default() };
    let e = check_sample(&policy).unwrap_err();
    println!("MUST-FAIL [{}] {e}", e.rule());
    assert_eq!(e.rule(), "gpu_measurement");
    assert!(e.to_string().contains("VBIOS RIM 96.00.5e.00.01"), "{e}");
    // And the test RIM with one value changed after signing never gets that far.
    let xml = std::fs::read_to_string(data(TEST_RIM)).unwrap();
    let p = std::env::temp_dir().join(format!("cocoon-rim-test2-{}.swidtag", std::process::id()));
    std::fs::write(&p, xml.replacen("8048dfd18fe229bf", "8048dfd18fe229be", 1)).unwrap();
    assert_eq!(import(&p, &data("rim/test-rim-root.pem"), None).unwrap_err().rule(), "rim_signature");
    std::fs::remove_file(&p).unwrap();
}
