//! Must-pass and must-fail cases on REAL Intel TDX quotes and collateral (vendor samples
//! shipped with dcap-qvl 0.7.1; see testdata/README.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use attestation::{
    check_report_data, AttestationError, CollateralStore, Evidence, HpkePublicKey, JobOpener,
    MemoryNonceStore, Nonce, NonceStore, Policy, TcbStatus, TdxEvidence, TeeDetails, Verifier,
    WorkerAttestation,
};
use common::*;

/// Offsets in a v4 quote: 48-byte header, then the 584-byte TD report.
const TD_ATTRIBUTES: usize = 48 + 120;
const MRTD: usize = 48 + 136;
const RTMR1: usize = 48 + 424 - 48;
const REPORT_DATA: usize = 48 + 520;
const SIGNED_LEN_V4: usize = 48 + 584;

fn verify_all(
    v: &Verifier,
    ev: &Evidence,
    now: u64,
) -> Result<attestation::TeeClaims, AttestationError> {
    let claims = v.verify_evidence(ev, now)?;
    v.check_policy(&claims, now)?;
    Ok(claims)
}

/// A verifier whose policy approves exactly the sample's image.
fn approving(s: &TdxSample) -> (Verifier, attestation::TeeClaims) {
    let claims = strict().verify_evidence(&s.evidence(), s.now()).unwrap();
    (Verifier::new(policy_allowing(&claims)), claims)
}

// ---------------------------------------------------------------- must pass

#[test]
fn up_to_date_v4_quote_passes_at_its_collateral_time() {
    let s = tdx_v4();
    let (v, claims) = approving(&s);
    let (from, until) = s.window();
    for now in [from, s.now(), until - 1] {
        let got = verify_all(&v, &s.evidence(), now).unwrap();
        assert_eq!(got, claims);
    }
    let TeeDetails::Tdx {
        quote_version,
        tcb_status,
        ..
    } = &claims.details
    else {
        panic!()
    };
    assert_eq!(*quote_version, 4);
    assert_eq!(*tcb_status, TcbStatus::UpToDate);
    assert!(!claims.debug);
    assert_eq!(claims.valid_until, until);
    // The sample carries its own report_data: the binding check against it passes...
    let own: [u8; 64] = s.quote[REPORT_DATA..REPORT_DATA + 64].try_into().unwrap();
    check_report_data(&own, &claims.report_data).unwrap();
}

#[test]
fn up_to_date_v5_quote_passes_at_its_collateral_time() {
    let s = tdx_v5();
    let (v, claims) = approving(&s);
    verify_all(&v, &s.evidence(), s.now()).unwrap();
    assert!(matches!(
        claims.details,
        TeeDetails::Tdx {
            quote_version: 5,
            tcb_status: TcbStatus::UpToDate,
            ..
        }
    ));
}

#[test]
fn collateral_from_the_verifier_cache_file_is_used() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    let bare = Evidence::Tdx(TdxEvidence {
        quote: s.quote.to_vec(),
        collateral: None,
    });
    let err = verify_all(&v, &bare, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_missing", "{err}");
    assert!(err.to_string().contains("B0C06F000000"), "{err}");

    let path = std::env::temp_dir().join(format!(
        "attestation-collateral-{}.json",
        std::process::id()
    ));
    let mut store = CollateralStore::new();
    store.insert(s.collateral.clone()).unwrap();
    store.save_file(&path).unwrap();
    let loaded = CollateralStore::load_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.len(), 1);
    let v = v.with_collateral(loaded);
    verify_all(&v, &bare, s.now()).unwrap();
    // The shipped single-object file loads too.
    let one = CollateralStore::load_file("testdata/tdx_quote_collateral.json".as_ref()).unwrap();
    assert_eq!(one.len(), 1);
}

#[test]
fn zero_padding_after_the_quote_is_accepted() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    let mut padded = s.quote.to_vec();
    padded.extend_from_slice(&[0; 100]);
    verify_all(&v, &s.evidence_with(padded), s.now()).unwrap();
}

// ---------------------------------------------------------------- must fail

#[test]
fn one_flipped_byte_in_the_signed_region_is_rejected_as_bad_signature() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    // qe_svn, pce_svn, header user data, TEE_TCB_SVN, MRSIGNERSEAM, TD_ATTRIBUTES (debug bit),
    // MRTD, RTMR1, REPORTDATA, last signed byte.
    for pos in [
        8,
        10,
        30,
        47,
        48,
        112,
        TD_ATTRIBUTES,
        MRTD + 5,
        RTMR1 + 47,
        REPORT_DATA,
        SIGNED_LEN_V4 - 1,
    ] {
        for mask in [0x01u8, 0x80] {
            let mut q = s.quote.to_vec();
            q[pos] ^= mask;
            let err = verify_all(&v, &s.evidence_with(q), s.now()).unwrap_err();
            println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
            assert_eq!(err.rule(), "bad_signature", "byte {pos} ^ {mask:#x}: {err}");
            assert!(
                err.to_string()
                    .contains("ISV enclave report signature is invalid"),
                "{err}"
            );
        }
    }
}

#[test]
fn every_byte_of_the_signed_region_is_protected() {
    for s in [tdx_v4(), tdx_v5()] {
        let (v, _) = approving(&s);
        let signed = attestation::parse_tdx_quote(s.quote)
            .unwrap()
            .signed_length();
        for pos in 0..signed {
            let mut q = s.quote.to_vec();
            q[pos] ^= 0x10;
            let err = verify_all(&v, &s.evidence_with(q), s.now())
                .expect_err(&format!("{}: flipped byte {pos} accepted", s.name));
            assert!(
                [
                    "bad_signature",
                    "unsupported_quote",
                    "malformed",
                    "tdx_verification"
                ]
                .contains(&err.rule()),
                "{}: byte {pos}: {err}",
                s.name
            );
        }
    }
}

#[test]
fn outdated_tcb_is_rejected() {
    // Real quote from a platform below every TCB level of its (real) collateral.
    let s = tdx_outdated();
    let v = Verifier::new(Policy::default());
    let err = v.verify_evidence(&s.evidence(), s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "tcb_outdated", "{err}");
    assert!(
        err.to_string().contains("No matching TCB level found"),
        "{err}"
    );
    // Opting in to OutOfDate does not help: Intel lists no status for it.
    let mut p = Policy::default();
    p.tdx.acceptable_tcb_statuses = vec![TcbStatus::UpToDate, TcbStatus::OutOfDate];
    assert_eq!(
        Verifier::new(p)
            .verify_evidence(&s.evidence(), s.now())
            .unwrap_err()
            .rule(),
        "tcb_outdated"
    );
}

#[test]
fn tcb_status_outside_the_policy_is_rejected_and_can_be_opted_in() {
    // The policy rule on real claims whose converged status reads OutOfDate / SWHardeningNeeded.
    let s = tdx_v4();
    let (v, mut claims) = approving(&s);
    for status in [
        TcbStatus::OutOfDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
    ] {
        if let TeeDetails::Tdx { tcb_status, .. } = &mut claims.details {
            *tcb_status = status;
        }
        let err = v.check_policy(&claims, s.now()).unwrap_err();
        println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
        assert_eq!(err.rule(), "tcb_status", "{err}");
        assert_eq!(
            err.to_string(),
            format!("TDX TCB status {status} is not acceptable by policy (acceptable: UpToDate)")
        );
    }
    let mut p = v.policy().clone();
    p.tdx
        .acceptable_tcb_statuses
        .push(TcbStatus::ConfigurationNeeded);
    Verifier::new(p).check_policy(&claims, s.now()).unwrap();
}

#[test]
fn rejected_advisory_and_old_evaluation_number_are_rejected() {
    let s = tdx_v4();
    let (v, mut claims) = approving(&s);
    let mut p = v.policy().clone();
    p.tdx.min_tcb_evaluation_data_number = Some(18);
    let err = Verifier::new(p).check_policy(&claims, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "TDX TCB evaluation data number 17 is below the policy's minimum 18"
    );
    if let TeeDetails::Tdx { advisory_ids, .. } = &mut claims.details {
        advisory_ids.push("INTEL-SA-00837".into());
    }
    let mut p = v.policy().clone();
    p.tdx.rejected_advisory_ids = vec!["intel-sa-00837".into()];
    let err = Verifier::new(p).check_policy(&claims, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "TDX advisory INTEL-SA-00837 is rejected by policy"
    );
}

#[test]
fn wrong_root_ca_is_rejected() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    // AMD's Milan ARK, and Intel's own PCK CA (an intermediate, not the root).
    let amd_ark = sev::certs::snp::builtin::milan::ark()
        .unwrap()
        .to_der()
        .unwrap();
    let intel_intermediate = pem_first_cert(&s.collateral.pck_crl_issuer_chain);
    for root in [amd_ark, intel_intermediate] {
        let v = v.clone().with_intel_root_ca(root);
        let err = verify_all(&v, &s.evidence(), s.now()).unwrap_err();
        println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
        assert_eq!(err.rule(), "untrusted_root", "{err}");
        assert!(
            err.to_string()
                .starts_with("TDX evidence does not chain to a trusted root CA"),
            "{err}"
        );
    }
    // Garbage as the root.
    let err = verify_all(
        &v.clone().with_intel_root_ca(vec![1, 2, 3]),
        &s.evidence(),
        s.now(),
    )
    .unwrap_err();
    assert_eq!(err.rule(), "untrusted_root", "{err}");
}

fn pem_first_cert(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .unwrap()
        .split("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn expired_collateral_is_rejected() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    let (from, until) = s.window();
    // The first item to expire in this bundle is the PCK CRL (nextUpdate 2025-07-19T10:00:35Z).
    let err = verify_all(&v, &s.evidence(), until).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_expired", "{err}");
    assert_eq!(
        err.to_string(),
        format!("PCK CRL expired: valid until {until} (unix s), verification time is {until}")
    );
    // Past the TCB info's own nextUpdate (2025-07-19T10:16:03Z).
    let tcb_next_update = 1_752_920_163;
    let err = verify_all(&v, &s.evidence(), tcb_next_update + 1).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_expired", "{err}");
    // Far past every nextUpdate: still named, still rejected.
    let err = verify_all(&v, &s.evidence(), until + 400 * 86400).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_expired", "{err}");
    // And before it was issued.
    let err = verify_all(&v, &s.evidence(), from - 1).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "collateral_not_yet_valid", "{err}");
}

#[test]
fn report_data_not_matching_the_keys_is_rejected() {
    let s = tdx_v4();
    let (v, claims) = approving(&s);
    let worker = JobOpener::generate().unwrap();
    let nonce = Nonce::random().unwrap();
    let att = WorkerAttestation {
        evidence: s.evidence(),
        hpke_public_key: worker.public_key(),
        tls_spki_sha256: attestation::spki_sha256(b"some TLS key"),
        nonce,
        identity_key: None,
        models_digest: None,
        gpu: None,
    };
    let err = v.verify_attestation(&att, &nonce, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "report_data", "{err}");
    assert!(
        err.to_string().contains(&hex::encode(claims.report_data)),
        "{err}"
    );
    // The binding check on its own, with keys that do not match.
    let err = att.binding().check(&claims.report_data).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert!(matches!(err, AttestationError::ReportDataMismatch { .. }));
    // Another nonce than the one asked for is refused before anything else.
    let err = v
        .verify_attestation(&att, &Nonce([0; 32]), s.now())
        .unwrap_err();
    assert_eq!(err.rule(), "nonce_mismatch", "{err}");
}

#[tokio::test]
async fn replayed_nonce_is_rejected() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    let store = MemoryNonceStore::new();
    let now = s.now();
    let nonce = v.issue_nonce(&store, now).await.unwrap();
    let att = WorkerAttestation {
        evidence: s.evidence(),
        hpke_public_key: HpkePublicKey([3; 32]),
        tls_spki_sha256: [4; 32],
        nonce,
        identity_key: None,
        models_digest: None,
        gpu: None,
    };
    // First use spends the nonce (the sample's report_data cannot bind our keys)...
    let first = v
        .verify_worker(&att, &[4; 32], &store, now)
        .await
        .unwrap_err();
    assert_eq!(first.rule(), "report_data", "{first}");
    // ...so the same attestation again is a replay.
    let err = v
        .verify_worker(&att, &[4; 32], &store, now + 1)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("nonce {nonce} was already used: replayed attestation")
    );
    // A nonce never issued here.
    let other = WorkerAttestation {
        nonce: Nonce([8; 32]),
        ..att
    };
    assert_eq!(
        v.verify_worker(&other, &[4; 32], &store, now)
            .await
            .unwrap_err()
            .rule(),
        "nonce_unknown"
    );
    // A nonce answered too late.
    store
        .issue(Nonce([9; 32]), now - 1000, now + 1000)
        .await
        .unwrap();
    let late = WorkerAttestation {
        nonce: Nonce([9; 32]),
        ..other
    };
    let err = v
        .verify_worker(&late, &[4; 32], &store, now)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "evidence is 1000 s old, over the policy's max_evidence_age_secs 300"
    );
}

#[test]
fn measurement_not_in_policy_is_rejected() {
    let s = tdx_v4();
    let claims = strict().verify_evidence(&s.evidence(), s.now()).unwrap();
    let m = tdx_measurements(&claims);
    // Default policy: no image approved.
    let err = strict().check_policy(&claims, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "measurement", "{err}");
    assert!(
        err.to_string().contains("the policy allows no TDX image"),
        "{err}"
    );
    // Another image approved.
    let mut other = m;
    other.mrtd.0[0] ^= 1;
    let mut p = Policy::default();
    p.tdx.allowed.push(attestation::TdxAllowed::exact(&other));
    let err = Verifier::new(p).check_policy(&claims, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        format!("TDX measurement is not in the policy's allowed list: MRTD {} is not among the 1 allowed images", m.mrtd)
    );
    // Same MRTD, different RTMR1 (another kernel).
    let mut other = m;
    other.rtmr1.0[47] ^= 1;
    let mut p = Policy::default();
    p.tdx.allowed.push(attestation::TdxAllowed::exact(&other));
    let err = Verifier::new(p.clone())
        .check_policy(&claims, s.now())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("RTMR1 {} does not match", m.rtmr1)),
        "{err}"
    );
    // "any" for RTMR1 accepts it.
    p.tdx.allowed[0].rtmr1 = attestation::MeasurementPattern::Any;
    Verifier::new(p).check_policy(&claims, s.now()).unwrap();
}

#[test]
fn debug_attribute_set_is_rejected() {
    let s = tdx_v4();
    let (v, claims) = approving(&s);
    // A real debug TD's quote would verify cryptographically (dcap-qvl is told to allow debug so
    // that our policy decides): the policy rule on the sample's claims with TUD.DEBUG set.
    let mut debug = claims.clone();
    debug.debug = true;
    if let TeeDetails::Tdx { td_attributes, .. } = &mut debug.details {
        td_attributes[0] |= 1;
    }
    let err = v.check_policy(&debug, s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        "TDX guest runs with debug enabled (TD_ATTRIBUTES 0100001000000000 has a TUD bit set); policy forbids debug"
    );
    // Setting the debug bit in the sample quote itself is caught by the quote signature.
    let mut q = s.quote.to_vec();
    q[TD_ATTRIBUTES] |= 1;
    assert_eq!(
        verify_all(&v, &s.evidence_with(q), s.now())
            .unwrap_err()
            .rule(),
        "bad_signature"
    );
}

#[test]
fn truncated_quotes_are_rejected_without_panic() {
    for s in [tdx_v4(), tdx_v5()] {
        let (v, _) = approving(&s);
        for len in 0..s.quote.len() {
            // Trailing zeros of the sample are padding: a cut inside them is still the full quote.
            if s.quote[len..].iter().all(|&b| b == 0) {
                continue;
            }
            let err = verify_all(&v, &s.evidence_with(s.quote[..len].to_vec()), s.now())
                .expect_err(&format!("{}: truncated to {len} accepted", s.name));
            assert!(
                ["malformed", "unsupported_quote"].contains(&err.rule()),
                "{len}: {err}"
            );
        }
    }
}

#[test]
fn oversized_quotes_are_rejected_without_panic() {
    let s = tdx_v4();
    let (v, _) = approving(&s);
    let mut big = s.quote.to_vec();
    big.resize(attestation::MAX_TDX_QUOTE_BYTES + 1, 0);
    let err = verify_all(&v, &s.evidence_with(big), s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(
        err.to_string(),
        format!(
            "TDX evidence is {} bytes, over the 65536-byte limit",
            attestation::MAX_TDX_QUOTE_BYTES + 1
        )
    );
    let mut trailing = s.quote.to_vec();
    trailing.push(0xAA);
    let err = verify_all(&v, &s.evidence_with(trailing), s.now()).unwrap_err();
    println!("MUST-FAIL {}:{}: [{}] {err}", file!(), line!(), err.rule());
    assert_eq!(err.rule(), "malformed", "{err}");
    assert!(err.to_string().contains("non-zero trailing bytes"), "{err}");
    // A quote that claims a huge signature-data length.
    let mut lying = s.quote.to_vec();
    lying[SIGNED_LEN_V4..SIGNED_LEN_V4 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        verify_all(&v, &s.evidence_with(lying), s.now())
            .unwrap_err()
            .rule(),
        "malformed"
    );
}

#[test]
fn evidence_json_round_trips() {
    let s = tdx_v4();
    let ev = s.evidence();
    let json = serde_json::to_string(&ev).unwrap();
    assert!(
        json.starts_with("{\"kind\":\"tdx\",\"data\":{\"quote\":\""),
        "{}",
        &json[..40]
    );
    let back: Evidence = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ev);
    let (v, _) = approving(&s);
    verify_all(&v, &back, s.now()).unwrap();
}

/// Collateral a worker attaches is input from the network: an empty or whitespace-only
/// issuer chain must be refused, not reach x509-cert 0.2.5's `load_pem_chain`, which
/// underflows (panics in debug builds) on an empty input.
#[test]
fn empty_issuer_chain_in_attached_collateral_is_refused_without_panic() {
    let s = tdx_v4();
    for chain in ["", "\n", "\0", " \r\n\0"] {
        let mut c = s.collateral.clone();
        c.pck_crl_issuer_chain = chain.into();
        let ev = Evidence::Tdx(TdxEvidence { quote: s.quote.to_vec(), collateral: Some(c) });
        let err = strict().verify_evidence(&ev, s.now()).unwrap_err();
        assert_eq!(err.rule(), "malformed", "{chain:?}: {err}");
    }
}
