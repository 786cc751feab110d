//! AMD SEV-SNP reports, verified with the `sev` crate (pure-Rust `crypto_nossl` backend): the
//! VCEK must sign the report, chain to the built-in ARK/ASK of a known product line (ARK
//! self-signed and ARK signs ASK, checked once per process; ASK signs VCEK), be within its
//! validity period, and be issued for this chip (hwID = CHIP_ID) at the TCB the report claims.

use std::sync::OnceLock;

use sev::certs::snp::{builtin, ca, Certificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;

use crate::claims::{Measurement, SnpProduct, SnpTcb, TeeClaims, TeeDetails};
use crate::error::AttestationError;
use crate::evidence::{SnpEvidence, TeeKind, MAX_VCEK_BYTES, SNP_REPORT_BYTES};
use crate::tdx::{cert_validity, check_validity};

const KIND: TeeKind = TeeKind::SevSnp;

const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

fn malformed(reason: impl Into<String>) -> AttestationError {
    AttestationError::Malformed {
        kind: KIND,
        reason: reason.into(),
    }
}

/// Parses a report and checks it is exactly the canonical encoding `sev` re-signs: the
/// signature is checked over a re-encoding, so bytes the parser skips (reserved fields, the
/// unused tail of the signature's r and s) must be zero, or a flipped byte there would go
/// unnoticed.
pub fn parse_report(raw: &[u8]) -> Result<AttestationReport, AttestationError> {
    if raw.len() > SNP_REPORT_BYTES {
        return Err(AttestationError::TooLarge {
            kind: KIND,
            len: raw.len(),
            max: SNP_REPORT_BYTES,
        });
    }
    let report = AttestationReport::from_bytes(raw)
        .map_err(|e| malformed(format!("cannot decode report: {e}")))?;
    let canonical = report
        .to_bytes()
        .map_err(|e| malformed(format!("cannot re-encode report: {e}")))?;
    // P-384 scalars take 48 of the 72 bytes `sev` stores for r and s; the rest is unused
    // by the signature check and must be zero too.
    let sig = &report.signature;
    let padding = sig.r().iter().skip(48).chain(sig.s().iter().skip(48));
    if padding.into_iter().any(|&b| b != 0) {
        return Err(malformed(
            "report signature has non-zero bytes beyond its 48-byte P-384 scalars",
        ));
    }
    if canonical.as_ref() != raw {
        return Err(malformed(
            "report is not in canonical form: reserved bytes are not zero",
        ));
    }
    Ok(report)
}

/// Parses a DER VCEK certificate.
pub fn parse_vcek(der: &[u8]) -> Result<Certificate, AttestationError> {
    if der.len() > MAX_VCEK_BYTES {
        return Err(AttestationError::TooLarge {
            kind: KIND,
            len: der.len(),
            max: MAX_VCEK_BYTES,
        });
    }
    let cert = Certificate::from_der(der)
        .map_err(|e| malformed(format!("VCEK is not a DER certificate: {e}")))?;
    // RFC 5280 4.1.1.2: the outer algorithm must equal the signed one; `sev` only checks the
    // outer OID, so unsigned parameters could otherwise be altered unnoticed.
    let x509: x509_cert::Certificate = cert.clone().into();
    if x509.signature_algorithm != x509.tbs_certificate.signature {
        return Err(malformed(
            "VCEK signatureAlgorithm differs from the signature field of its signed part",
        ));
    }
    Ok(cert)
}

type Builtin = fn() -> std::io::Result<Certificate>;

const PRODUCTS: [(SnpProduct, Builtin, Builtin); 3] = [
    (SnpProduct::Milan, builtin::milan::ark, builtin::milan::ask),
    (SnpProduct::Genoa, builtin::genoa::ark, builtin::genoa::ask),
    (SnpProduct::Turin, builtin::turin::ark, builtin::turin::ask),
];

/// The built-in AMD CA chains (ARK self-signed, ARK signs ASK), checked once per process.
fn ca_chains() -> &'static [(SnpProduct, ca::Chain)] {
    static CHAINS: OnceLock<Vec<(SnpProduct, ca::Chain)>> = OnceLock::new();
    CHAINS.get_or_init(|| {
        PRODUCTS
            .iter()
            .filter_map(|(product, ark, ask)| {
                let chain = ca::Chain { ark: ark().ok()?, ask: ask().ok()? };
                match (&chain).verify() {
                    Ok(_) => Some((*product, chain)),
                    Err(e) => {
                        tracing::error!(%product, error = %e, "built-in AMD CA chain does not verify");
                        None
                    }
                }
            })
            .collect()
    })
}

/// The product line whose built-in ASK signed this VCEK.
fn find_product(vcek: &Certificate) -> Result<SnpProduct, AttestationError> {
    let mut tried = Vec::new();
    for (product, chain) in ca_chains() {
        match (&chain.ask, vcek).verify() {
            Ok(()) => return Ok(*product),
            Err(e) => tried.push(format!("{product}: {e}")),
        }
    }
    Err(AttestationError::UntrustedRoot {
        kind: KIND,
        detail: format!(
            "the VCEK is not signed by the AMD ARK/ASK of any known product ({})",
            tried.join("; ")
        ),
    })
}

/// Verifies an SEV-SNP report and its VCEK at `now`. The policy is not applied here.
pub(crate) fn verify(ev: &SnpEvidence, now: u64) -> Result<TeeClaims, AttestationError> {
    let report = parse_report(&ev.report)?;
    check_signing_key(&report)?;
    if ev.vcek.is_empty() {
        return Err(AttestationError::CollateralUnavailable {
            kind: KIND,
            id: format!("chip {}", hex::encode(&report.chip_id[..8])),
            detail: "the evidence carries no VCEK (the host's certificate table was empty) and this verifier has no collateral service to fetch it from AMD KDS".into(),
        });
    }
    let vcek = parse_vcek(&ev.vcek)?;
    // The cheap ECDSA check first, then the chain: both must pass.
    (&vcek, &report)
        .verify()
        .map_err(|e| AttestationError::BadSignature {
            kind: KIND,
            detail: format!("the VCEK does not sign this report: {e}"),
        })?;
    let product = find_product(&vcek)?;
    let x509: x509_cert::Certificate = vcek.into();
    check_validity(&[cert_validity("VCEK", &x509)], now)?;
    check_vcek_matches(&x509, &report)?;

    let tcb = SnpTcb {
        bootloader: report.reported_tcb.bootloader,
        tee: report.reported_tcb.tee,
        snp: report.reported_tcb.snp,
        microcode: report.reported_tcb.microcode,
    };
    Ok(TeeClaims {
        kind: KIND,
        insecure_simulated: false,
        report_data: report.report_data,
        debug: report.policy.debug_allowed(),
        valid_until: x509
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs(),
        details: TeeDetails::SevSnp {
            product,
            report_version: report.version,
            measurement: Measurement(report.measurement),
            vmpl: report.vmpl,
            guest_policy: report.policy.0,
            reported_tcb: tcb,
            chip_id: report.chip_id,
            host_data: report.host_data,
        },
    })
}

/// SIGNING_KEY (KEY_INFO bits 4:2): 0 = VCEK, 1 = VLEK, 7 = none. Only VCEK-signed reports are
/// verified; a VLEK is refused by name rather than as a chain failure.
pub(crate) fn check_signing_key(report: &AttestationReport) -> Result<(), AttestationError> {
    match report.key_info.signing_key() {
        0 => Ok(()),
        1 => Err(AttestationError::SnpVlekNotSupported),
        other => Err(malformed(format!(
            "report KEY_INFO.SIGNING_KEY is {other}: the report is not signed by a VCEK"
        ))),
    }
}

/// The product line a report names through its CPUID fields (report version 3 and later:
/// family 19h models 00-0Fh Milan, 10-1Fh and A0-AFh Genoa; family 1Ah models 00-11h Turin).
/// `None` for older reports, which do not say.
pub(crate) fn product_hint(report: &AttestationReport) -> Option<SnpProduct> {
    let (family, model) = (report.cpuid_fam_id?, report.cpuid_mod_id?);
    match (family, model) {
        (0x19, 0x00..=0x0f) => Some(SnpProduct::Milan),
        (0x19, 0x10..=0x1f) | (0x19, 0xa0..=0xaf) => Some(SnpProduct::Genoa),
        (0x1a, 0x00..=0x11) => Some(SnpProduct::Turin),
        _ => None,
    }
}

/// The VCEK is issued for one chip at one TCB: both must be the report's.
fn check_vcek_matches(
    cert: &x509_cert::Certificate,
    report: &AttestationReport,
) -> Result<(), AttestationError> {
    let ext = |oid: ObjectIdentifier| {
        cert.tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    };
    let mismatch = |s: String| AttestationError::SnpVcekMismatch(s);

    if let Some(hw_id) = ext(OID_HW_ID) {
        let chip = &report.chip_id[..];
        let matches = match hw_id.len() {
            64 => hw_id == chip,
            8 => chip.get(..8) == Some(hw_id),
            n => return Err(mismatch(format!("VCEK hwID has unexpected length {n}"))),
        };
        if !matches {
            return Err(mismatch(format!(
                "VCEK is for chip {}, the report is from chip {}",
                hex::encode(hw_id),
                hex::encode(chip)
            )));
        }
    } else {
        return Err(mismatch(
            "VCEK has no hwID extension (a VLEK is not supported)".into(),
        ));
    }

    let r = &report.reported_tcb;
    for (name, oid, got) in [
        ("bootloader", OID_BL_SPL, r.bootloader),
        ("tee", OID_TEE_SPL, r.tee),
        ("snp", OID_SNP_SPL, r.snp),
        ("microcode", OID_UCODE_SPL, r.microcode),
    ] {
        let der = ext(oid).ok_or_else(|| mismatch(format!("VCEK has no {name} SPL extension")))?;
        let spl = u8::from_der(der)
            .map_err(|e| mismatch(format!("VCEK {name} SPL is not a small INTEGER: {e}")))?;
        if spl != got {
            return Err(mismatch(format!(
                "VCEK is issued for {name} SVN {spl}, the report's REPORTED_TCB has {got}"
            )));
        }
    }
    Ok(())
}
