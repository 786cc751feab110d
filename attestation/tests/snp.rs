//! Must-pass and must-fail cases on a REAL AMD SEV-SNP report (Milan) and its VCEK (vendor
//! samples shipped with the sev 8.0.0 crate; see testdata/README.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use attestation::{
    check_report_data, Evidence, Policy, SnpEvidence, SnpProduct, SnpTcb, TeeClaims, TeeDetails,
    Verifier,
};
use common::*;

const SIGNED_LEN: usize = 0x2A0;
const REPORT_DATA: usize = 0x50;
const MEASUREMENT: usize = 0x90;

fn verify_all(
    v: &Verifier,
    ev: SnpEvidence,
    now: u64,
) -> Result<TeeClaims, attestation::AttestationError> {
    let ev = Evidence::SevSnp(ev);
    let claims = v.verify_evidence(&ev, now)?;
    v.check_policy(&claims, now)?;
    Ok(claims)
}

fn approving() -> (Verifier, TeeClaims) {
    let claims = strict()
        .verify_evidence(&Evidence::SevSnp(snp_milan()), SNP_MILAN_NOW)
        .unwrap();
    (Verifier::new(policy_allowing(&claims)), claims)
}

fn with_report(f: impl FnOnce(&mut Vec<u8>)) -> SnpEvidence {
    let mut ev = snp_milan();
    f(&mut ev.report);
    ev
}

#[test]
fn milan_report_passes() {
    let (v, claims) = approving();
    let got = verify_all(&v, snp_milan(), SNP_MILAN_NOW).unwrap();
    assert_eq!(got, claims);
    let TeeDetails::SevSnp {
        product,
        vmpl,
        reported_tcb,
        ..
    } = &claims.details
    else {
        panic!()
    };
    assert_eq!(*product, SnpProduct::Milan);
    assert_eq!(*vmpl, 0);
    assert_eq!(
        *reported_tcb,
        SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115
        }
    );
    assert!(!claims.debug);
    let report = snp_milan().report;
    let own: [u8; 64] = report[REPORT_DATA..REPORT_DATA + 64].try_into().unwrap();
    check_report_data(&own, &claims.report_data).unwrap();
    assert!(check_report_data(&[0; 64], &claims.report_data).is_err());
}

#[test]
fn one_flipped_byte_in_the_signed_region_is_rejected() {
    let (v, _) = approving();
    // policy, family id, VMPL, report_data, MEASUREMENT, host data, report id, REPORTED_TCB,
    // CHIP_ID, committed TCB, launch TCB.
    for pos in [
        8,
        20,
        0x30,
        REPORT_DATA,
        MEASUREMENT + 7,
        0xC8,
        0x148,
        0x180,
        0x1A4,
        0x1E0,
        0x1F0,
    ] {
        let err = verify_all(&v, with_report(|r| r[pos] ^= 0x04), SNP_MILAN_NOW).unwrap_err();
        println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
        assert_eq!(err.rule(), "bad_signature", "byte {pos:#x}: {err}");
        assert!(
            err.to_string()
                .contains("the VCEK does not sign this report"),
            "{err}"
        );
    }
    // A reserved byte: the parser skips it, so the canonical-form check catches it.
    let err = verify_all(&v, with_report(|r| r[SIGNED_LEN - 1] ^= 1), SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "malformed SEV-SNP evidence: cannot decode report: Skipped bytes were expected to be zeroed."
    );
    // The unused tail of the signature's r scalar.
    let err = verify_all(&v, with_report(|r| r[0x2A0 + 50] ^= 1), SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "malformed SEV-SNP evidence: report signature has non-zero bytes beyond its 48-byte P-384 scalars"
    );
}

#[test]
fn every_byte_of_the_report_is_protected() {
    let (v, _) = approving();
    for pos in 0..attestation::SNP_REPORT_BYTES {
        let err = verify_all(&v, with_report(|r| r[pos] ^= 0x10), SNP_MILAN_NOW)
            .expect_err(&format!("flipped byte {pos:#x} accepted"));
        assert!(
            ["bad_signature", "malformed"].contains(&err.rule()),
            "byte {pos:#x}: {err}"
        );
    }
}

#[test]
fn wrong_root_is_rejected() {
    let (v, _) = approving();
    // A VCEK whose signature no AMD ASK verifies.
    let mut ev = snp_milan();
    let last = ev.vcek.len() - 10;
    ev.vcek[last] ^= 0xff;
    let err = verify_all(&v, ev, SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "untrusted_root", "{err}");
    assert!(
        err.to_string()
            .starts_with("SEV-SNP evidence does not chain to a trusted root CA: the VCEK is not signed by the AMD ARK/ASK of any known product"),
        "{err}"
    );
    // A genuine Milan chain when the policy only trusts Genoa.
    let mut p = v.policy().clone();
    p.snp.allowed_products = vec![SnpProduct::Genoa];
    let err = verify_all(&Verifier::new(p), snp_milan(), SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "SEV-SNP product milan is not allowed by policy (allowed: genoa)"
    );
}

#[test]
fn vcek_outside_its_validity_is_rejected() {
    let (v, _) = approving();
    let not_after = 1_901_474_623; // 2030-04-03T19:23:43Z
    let err = verify_all(&v, snp_milan(), not_after).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_expired", "{err}");
    assert!(err.to_string().starts_with("VCEK certificate \""), "{err}");
    let err = verify_all(&v, snp_milan(), 1_600_000_000).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_not_yet_valid", "{err}");
}

#[test]
fn old_tcb_vmpl_and_measurement_are_rejected() {
    let (v, claims) = approving();
    let mut p = v.policy().clone();
    p.snp.min_tcb.microcode = 116;
    let err = Verifier::new(p)
        .check_policy(&claims, SNP_MILAN_NOW)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "SEV-SNP reported TCB microcode SVN 115 is below the policy's minimum 116"
    );

    let mut p = v.policy().clone();
    p.snp.min_tcb.snp = 9;
    let err = Verifier::new(p)
        .check_policy(&claims, SNP_MILAN_NOW)
        .unwrap_err();
    assert_eq!(err.rule(), "snp_tcb");

    let mut high_vmpl = claims.clone();
    if let TeeDetails::SevSnp { vmpl, .. } = &mut high_vmpl.details {
        *vmpl = 2;
    }
    let err = v.check_policy(&high_vmpl, SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "SEV-SNP report is for VMPL 2, above the policy's maximum VMPL 0"
    );

    let err = strict().check_policy(&claims, SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "measurement");
    assert!(
        err.to_string()
            .contains("the policy allows no SEV-SNP measurement"),
        "{err}"
    );
    let mut p = Policy::default();
    p.snp
        .allowed_measurements
        .push("00".repeat(48).parse().unwrap());
    let err = Verifier::new(p)
        .check_policy(&claims, SNP_MILAN_NOW)
        .unwrap_err();
    assert!(
        err.to_string().contains("is not among the 1 allowed"),
        "{err}"
    );
}

#[test]
fn debug_policy_bit_is_rejected() {
    let (v, claims) = approving();
    let mut debug = claims.clone();
    debug.debug = true;
    if let TeeDetails::SevSnp { guest_policy, .. } = &mut debug.details {
        *guest_policy |= 1 << 19;
    }
    let err = v.check_policy(&debug, SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "SEV-SNP guest runs with debug enabled (guest POLICY 0xb0000 has DEBUG (bit 19) set); policy forbids debug"
    );
    // Setting DEBUG in the real report breaks its signature.
    let err = verify_all(&v, with_report(|r| r[10] |= 0x08), SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "bad_signature", "{err}");
}

#[test]
fn truncated_and_oversized_input_is_rejected_without_panic() {
    let (v, _) = approving();
    let report = snp_milan().report;
    for len in 0..report.len() {
        let err = verify_all(&v, with_report(|r| r.truncate(len)), SNP_MILAN_NOW).unwrap_err();
        println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
        assert_eq!(err.rule(), "malformed", "{len}: {err}");
    }
    let err = verify_all(&v, with_report(|r| r.push(0)), SNP_MILAN_NOW).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "SEV-SNP evidence is 1185 bytes, over the 1184-byte limit"
    );
    let vcek = snp_milan().vcek;
    for len in 0..vcek.len() {
        let mut ev = snp_milan();
        ev.vcek.truncate(len);
        assert!(
            verify_all(&v, ev, SNP_MILAN_NOW).is_err(),
            "VCEK truncated to {len} accepted"
        );
    }
    let mut ev = snp_milan();
    ev.vcek = vec![0x30; attestation::MAX_VCEK_BYTES + 1];
    assert_eq!(
        verify_all(&v, ev, SNP_MILAN_NOW).unwrap_err().rule(),
        "too_large"
    );
}
