//! Intel TDX quotes, verified with `dcap-qvl` fully offline: the Intel collateral (TCB info,
//! QE identity, CRLs and their issuer chains) is passed in, cached from a file, or attached to
//! the evidence, and `now` is injected. The online PCCS fetch of `dcap-qvl` (its `report`
//! feature) is not compiled in: it pulls an HTTP stack this crate does not need.

use std::collections::HashMap;
use std::path::Path;

use dcap_qvl::quote::{Quote, Report, TDAttributes};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::{QuoteClaims, QuoteCollateralV3};
use serde::Deserialize;
use x509_cert::der::Decode;

use crate::claims::{Measurement, TdxMeasurements, TeeClaims, TeeDetails};
use crate::error::AttestationError;
use crate::evidence::{TdxEvidence, TeeKind, MAX_TDX_QUOTE_BYTES};

/// Intel SGX Root CA (DER), the production trust anchor for DCAP quotes. SHA-256 fingerprint
/// 44:A0:19:6B:2B:99:F8:89:B8:E1:49:E9:5B:80:7A:35:0E:74:24:96:43:99:E8:85:A7:CB:B8:CC:FA:B6:74:D3.
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");

const TEE_TYPE_TDX: u32 = 0x81;
const KIND: TeeKind = TeeKind::Tdx;

/// Intel collateral for TDX quotes, keyed by platform FMSPC. Loaded from a JSON cache file
/// (one collateral object, or an array of them, in `dcap-qvl`'s `QuoteCollateralV3` format)
/// or filled by whoever fetched it from a PCCS.
#[derive(Clone, Debug, Default)]
pub struct CollateralStore {
    /// FMSPC (upper-case hex) -> (TCB info issue date, collateral); the newest wins.
    by_fmspc: HashMap<String, (u64, QuoteCollateralV3)>,
}

#[derive(Deserialize)]
struct CollateralJsonHead {
    #[serde(rename = "issueDate")]
    issue_date: String,
    #[serde(rename = "nextUpdate")]
    next_update: String,
    #[serde(default)]
    fmspc: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CollateralFile {
    One(Box<QuoteCollateralV3>),
    Many(Vec<QuoteCollateralV3>),
}

impl CollateralStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds collateral, replacing older collateral for the same FMSPC.
    pub fn insert(&mut self, collateral: QuoteCollateralV3) -> Result<(), String> {
        let head: CollateralJsonHead = serde_json::from_str(&collateral.tcb_info)
            .map_err(|e| format!("collateral TCB info is not valid JSON: {e}"))?;
        let fmspc = head
            .fmspc
            .ok_or("collateral TCB info has no fmspc")?
            .to_ascii_uppercase();
        let issued = rfc3339(&head.issue_date)?;
        match self.by_fmspc.get(&fmspc) {
            Some((existing, _)) if *existing > issued => {}
            _ => {
                self.by_fmspc.insert(fmspc, (issued, collateral));
            }
        }
        Ok(())
    }

    /// Loads a cache file: one `QuoteCollateralV3` JSON object or an array of them.
    pub fn load_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let parsed: CollateralFile = serde_json::from_slice(&text)
            .map_err(|e| format!("parsing collateral cache {}: {e}", path.display()))?;
        let mut store = Self::new();
        match parsed {
            CollateralFile::One(c) => store.insert(*c)?,
            CollateralFile::Many(list) => {
                for c in list {
                    store.insert(c)?;
                }
            }
        }
        Ok(store)
    }

    /// Writes every entry as a JSON array (the format [`Self::load_file`] reads).
    pub fn save_file(&self, path: &Path) -> Result<(), String> {
        let all: Vec<&QuoteCollateralV3> = self.by_fmspc.values().map(|(_, c)| c).collect();
        let json = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    pub fn get(&self, fmspc: &[u8; 6]) -> Option<&QuoteCollateralV3> {
        self.by_fmspc.get(&hex::encode_upper(fmspc)).map(|(_, c)| c)
    }

    pub fn len(&self) -> usize {
        self.by_fmspc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fmspc.is_empty()
    }
}

/// One dated item of a collateral bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollateralItemValidity {
    pub what: String,
    pub not_before: u64,
    pub not_after: u64,
}

/// Validity of every dated item of a collateral bundle (TCB info, QE identity, both CRLs, the
/// issuer chains' certificates). The bundle is usable while `latest not_before <= now <
/// earliest not_after`; see [`collateral_window`].
pub fn collateral_validity(c: &QuoteCollateralV3) -> Result<Vec<CollateralItemValidity>, String> {
    let mut items = Vec::new();
    for (what, json) in [("TCB info", &c.tcb_info), ("QE identity", &c.qe_identity)] {
        let head: CollateralJsonHead =
            serde_json::from_str(json).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
        items.push(CollateralItemValidity {
            what: what.into(),
            not_before: rfc3339(&head.issue_date)?,
            not_after: rfc3339(&head.next_update)?,
        });
    }
    for (what, der) in [("root CA CRL", &c.root_ca_crl), ("PCK CRL", &c.pck_crl)] {
        let crl = x509_cert::crl::CertificateList::from_der(der)
            .map_err(|e| format!("{what} is not a DER CRL: {e}"))?;
        let next = crl
            .tbs_cert_list
            .next_update
            .ok_or_else(|| format!("{what} has no nextUpdate"))?;
        items.push(CollateralItemValidity {
            what: what.into(),
            not_before: crl.tbs_cert_list.this_update.to_unix_duration().as_secs(),
            not_after: next.to_unix_duration().as_secs(),
        });
    }
    let chains = [
        ("TCB info issuer chain", Some(&c.tcb_info_issuer_chain)),
        (
            "QE identity issuer chain",
            Some(&c.qe_identity_issuer_chain),
        ),
        ("PCK CRL issuer chain", Some(&c.pck_crl_issuer_chain)),
        ("PCK certificate chain", c.pck_certificate_chain.as_ref()),
    ];
    for (what, pem) in chains {
        let Some(pem) = pem else { continue };
        // Intel's PCCS chains sometimes end with a NUL byte.
        let pem = pem.trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
        let certs = crate::pem_chain::load_pem_chain(pem, 16)
            .map_err(|e| format!("{what} is not a PEM certificate chain: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{what} is empty"));
        }
        items.extend(certs.iter().map(|cert| cert_validity(what, cert)));
    }
    Ok(items)
}

/// `(latest not_before, earliest not_after)` over a collateral bundle: it verifies at
/// `from <= now < until`. Refresh the cache before `until`.
pub fn collateral_window(c: &QuoteCollateralV3) -> Result<(u64, u64), String> {
    let items = collateral_validity(c)?;
    let from = items.iter().map(|i| i.not_before).max().unwrap_or(0);
    let until = items.iter().map(|i| i.not_after).min().unwrap_or(0);
    Ok((from, until))
}

pub(crate) fn cert_validity(what: &str, cert: &x509_cert::Certificate) -> CollateralItemValidity {
    let v = &cert.tbs_certificate.validity;
    CollateralItemValidity {
        what: format!("{what} certificate \"{}\"", cert.tbs_certificate.subject),
        not_before: v.not_before.to_unix_duration().as_secs(),
        not_after: v.not_after.to_unix_duration().as_secs(),
    }
}

/// Rejects `now` outside any item's validity (`not_before <= now < not_after`, as webpki
/// treats CRLs), naming the item that expired first.
pub(crate) fn check_validity(
    items: &[CollateralItemValidity],
    now: u64,
) -> Result<(), AttestationError> {
    if let Some(i) = items
        .iter()
        .filter(|i| now >= i.not_after)
        .min_by_key(|i| i.not_after)
    {
        return Err(AttestationError::CollateralExpired {
            what: i.what.clone(),
            not_after: i.not_after,
            now,
        });
    }
    if let Some(i) = items
        .iter()
        .filter(|i| now < i.not_before)
        .max_by_key(|i| i.not_before)
    {
        return Err(AttestationError::CollateralNotYetValid {
            what: i.what.clone(),
            not_before: i.not_before,
            now,
        });
    }
    Ok(())
}

pub(crate) fn rfc3339(text: &str) -> Result<u64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("bad date {text:?}: {e}"))?;
    u64::try_from(t.timestamp()).map_err(|_| format!("date {text:?} is before 1970"))
}

fn malformed(reason: impl Into<String>) -> AttestationError {
    AttestationError::Malformed {
        kind: KIND,
        reason: reason.into(),
    }
}

/// Parses a quote and checks its framing: size limit, TDX v4/v5, nothing but zero padding
/// after the structure.
pub fn parse_quote(raw: &[u8]) -> Result<Quote, AttestationError> {
    if raw.len() > MAX_TDX_QUOTE_BYTES {
        return Err(AttestationError::TooLarge {
            kind: KIND,
            len: raw.len(),
            max: MAX_TDX_QUOTE_BYTES,
        });
    }
    let quote = Quote::parse(raw)
        .map_err(|e| malformed(format!("cannot decode quote ({} bytes): {e}", raw.len())))?;
    if quote.header.tee_type != TEE_TYPE_TDX {
        return Err(AttestationError::UnsupportedQuote(format!(
            "TEE type {:#x} is not TDX (0x81)",
            quote.header.tee_type
        )));
    }
    if !matches!(quote.header.version, 4 | 5) {
        return Err(AttestationError::UnsupportedQuote(format!(
            "version {} (TDX quotes are v4 or v5)",
            quote.header.version
        )));
    }
    // Signed header + body, then a u32 length and the signature data: nothing may follow.
    let signed = quote.signed_length();
    let auth_len = raw
        .get(signed..signed.saturating_add(4))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| malformed("quote ends inside its signature data length"))?;
    let expected = usize::try_from(auth_len)
        .ok()
        .and_then(|l| signed.checked_add(4)?.checked_add(l))
        .ok_or_else(|| malformed("signature data length overflows"))?;
    // Quote producers may pad the buffer with zeros (the Intel sample quotes are); anything
    // else after the structure is refused.
    let trailing = raw.get(expected..).ok_or_else(|| {
        malformed(format!(
            "quote is {} bytes but its structure needs {expected}",
            raw.len()
        ))
    })?;
    if trailing.iter().any(|&b| b != 0) {
        return Err(malformed(format!(
            "quote has {} non-zero trailing bytes after its {expected}-byte structure",
            trailing.len()
        )));
    }
    Ok(quote)
}

/// Accepts every quote: policy is applied afterwards by [`crate::Policy`], to our own claims.
struct ClaimsOnly;

impl dcap_qvl::Policy for ClaimsOnly {
    fn validate(&self, _: &QuoteClaims) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Verifies a TDX quote's full chain of trust (Intel root -> collateral -> PCK -> QE -> quote)
/// at `now`. The policy is not applied here.
pub(crate) fn verify(
    ev: &TdxEvidence,
    root_ca_der: &[u8],
    store: &CollateralStore,
    now: u64,
) -> Result<TeeClaims, AttestationError> {
    let quote = parse_quote(&ev.quote)?;
    let fmspc = quote_fmspc(&quote)?;
    let collateral = store
        .get(&fmspc)
        .or(ev.collateral.as_ref())
        .ok_or_else(|| AttestationError::CollateralMissing {
            fmspc: hex::encode_upper(fmspc),
        })?;
    verify_with(&ev.quote, &quote, collateral, root_ca_der, now)
}

/// The FMSPC of the platform, from the quote's PCK certificate.
pub(crate) fn quote_fmspc(quote: &Quote) -> Result<[u8; 6], AttestationError> {
    dcap_qvl::intel::quote_fmspc(quote).map_err(|e| {
        malformed(format!(
            "cannot read FMSPC from the quote's PCK certificate: {e:#}"
        ))
    })
}

/// Verifies a parsed quote against exactly this collateral.
pub(crate) fn verify_with(
    raw: &[u8],
    quote: &Quote,
    collateral: &QuoteCollateralV3,
    root_ca_der: &[u8],
    now: u64,
) -> Result<TeeClaims, AttestationError> {
    // Dates first, so that an expired bundle is reported as such, not as a chain error.
    let mut items =
        collateral_validity(collateral).map_err(|e| malformed(format!("collateral: {e}")))?;
    if collateral.pck_certificate_chain.is_none() {
        for der in dcap_qvl::intel::extract_cert_chain(quote).unwrap_or_default() {
            if let Ok(cert) = x509_cert::Certificate::from_der(&der) {
                items.push(cert_validity("PCK certificate chain", &cert));
            }
        }
    }
    check_validity(&items, now)?;

    let claims = QuoteVerifier::new(root_ca_der.to_vec())
        // Debug is judged by our policy, with its own error.
        .allow_debug(true)
        .verify_with_policy(raw, collateral, now, &ClaimsOnly)
        .map_err(classify)?;
    claims_from(quote, &claims)
}

fn claims_from(quote: &Quote, c: &QuoteClaims) -> Result<TeeClaims, AttestationError> {
    let td = match &c.report {
        Report::TD10(r) => r,
        Report::TD15(r) => &r.base,
        Report::TD15Ex(r) => &r.base.base,
        Report::SgxEnclave(_) => {
            return Err(AttestationError::UnsupportedQuote(
                "SGX enclave report, not a TD report".into(),
            ))
        }
    };
    let attrs = TDAttributes::parse(td.td_attributes)
        .map_err(|e| malformed(format!("TD attributes: {e}")))?;
    Ok(TeeClaims {
        kind: KIND,
        insecure_simulated: false,
        report_data: td.report_data,
        debug: attrs.tud != 0,
        valid_until: c.earliest_expiration_date,
        details: TeeDetails::Tdx {
            quote_version: quote.header.version,
            measurements: TdxMeasurements {
                mrtd: Measurement(td.mr_td),
                rtmr0: Measurement(td.rt_mr0),
                rtmr1: Measurement(td.rt_mr1),
                rtmr2: Measurement(td.rt_mr2),
                rtmr3: Measurement(td.rt_mr3),
            },
            td_attributes: td.td_attributes,
            tcb_status: c.tcb.status,
            advisory_ids: c.tcb.advisory_ids.clone(),
            tcb_evaluation_data_number: c.tcb.eval_data_number,
            fmspc: c.platform.pck.fmspc,
        },
    })
}

/// Maps a `dcap-qvl` failure (an `anyhow` chain) onto our rules. Expiry was checked before.
fn classify(err: anyhow::Error) -> AttestationError {
    let detail = format!("{err:#}");
    let lower = detail.to_ascii_lowercase();
    let has = |s: &str| lower.contains(s);
    if has("root ca crl")
        || has("unknownissuer")
        || has("failed to load root ca")
        || has("issued directly by the root")
    {
        AttestationError::UntrustedRoot { kind: KIND, detail }
    } else if has("no matching tcb level") || has("below minimum required") {
        AttestationError::TcbOutdated { detail }
    } else if has("revoked") {
        AttestationError::TcbRevoked { detail }
    } else if has("signature") || has("hash mismatch") {
        AttestationError::BadSignature { kind: KIND, detail }
    } else if has("decode") || has("invalid body size") {
        AttestationError::Malformed {
            kind: KIND,
            reason: detail,
        }
    } else {
        AttestationError::TdxVerification(detail)
    }
}
