//! NVIDIA RIMs (Reference Integrity Manifests): the golden GPU measurements NVIDIA publishes
//! per driver and per VBIOS build, as SWID tags (ISO 19770-2 XML) signed with an enveloped
//! XML-DSig signature (ECDSA P-384) whose certificate chain ends at NVIDIA's RIM root
//! ([`NVIDIA_RIM_ROOT_PEM`]).
//!
//! There is no maintained pure-Rust XML-DSig verifier, so the signature is checked by Debian's
//! `xmlsec1` ([`verify_rim_signature`]), once, offline, by `cocoon policy import-rim`, which
//! writes the golden values into `[attestation.policy.gpu]`. The router never reads a RIM: it
//! trusts only that policy.
//!
//! What makes reading the values after `xmlsec1` sound ([`parse_rim`], checked before
//! `xmlsec1` runs): no DTD (so no entities that two parsers could expand differently), exactly
//! one `ds:Signature`, the last child of the root, with exactly one `Reference` whose `URI=""`
//! and whose transforms are enveloped-signature then a canonicalisation. Such a reference
//! covers the whole document except that signature, so every value read here is signed. We
//! read attributes only (canonicalisation keeps them; comments, which it drops, are ignored).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::nvidia::{GoldenValue, GpuGolden};

/// "NVIDIA CoRIM signing Root CA", the root RIM signing chains end at. Copied from
/// `nv-local-gpu-verifier` 2.7.3, `verifier/certs/verifier_RIM_root.pem`.
pub const NVIDIA_RIM_ROOT_PEM: &str = include_str!("nvidia_rim_root.pem");

/// Largest RIM read (NVIDIA's are about 20 KB).
pub const MAX_RIM_BYTES: usize = 1024 * 1024;

const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// The namespace of the `HashN` attributes (`HopperSettings.HashFunctionNamespace`).
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const C14N: [&str; 4] = [
    "http://www.w3.org/2006/12/xml-c14n11",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2006/12/xml-c14n11#WithComments",
];
/// Most alternatives per measurement and measurements per RIM read (Hopper RIMs: 1 and 64).
const MAX_ALTERNATIVES: usize = 16;
const MAX_MEASUREMENTS: usize = 256;

/// Why a RIM was refused. [`RimError::rule`] gives a stable label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RimError {
    #[error("malformed RIM: {0}")]
    Malformed(String),
    #[error("RIM signature does not verify against the RIM root: {0}")]
    Signature(String),
    #[error("cannot check the RIM's XML signature: {0}")]
    XmlsecUnavailable(String),
    #[error("RIMs conflict: {0}")]
    Conflict(String),
}

impl RimError {
    pub fn rule(&self) -> &'static str {
        match self {
            RimError::Malformed(_) => "rim_malformed",
            RimError::Signature(_) => "rim_signature",
            RimError::XmlsecUnavailable(_) => "rim_xmlsec_unavailable",
            RimError::Conflict(_) => "rim_conflict",
        }
    }
}

fn malformed(s: impl Into<String>) -> RimError {
    RimError::Malformed(s.into())
}

/// Which component a RIM describes. NVIDIA names a driver RIM by the driver version
/// (`545.00`) and a VBIOS RIM by the VBIOS version (`96.00.5E.00.01`, five parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RimKind {
    Driver,
    Vbios,
}

impl std::fmt::Display for RimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RimKind::Driver => "driver",
            RimKind::Vbios => "VBIOS",
        })
    }
}

/// One `Resource` of the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RimMeasurement {
    /// The RIM's index: 0-based; SPDM measurement block `index + 1` (NVIDIA's verifier
    /// compares golden `i` with `measurement_list[i]`, filled from block `i + 1`).
    pub index: u8,
    pub name: String,
    pub active: bool,
    /// Allowed values, lower-case hex, each `size` bytes.
    pub values: Vec<String>,
}

/// A parsed RIM. Its values mean nothing until [`verify_rim_signature`] accepted the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rim {
    pub kind: RimKind,
    /// `Meta@colloquialVersion`, lower case (as NVIDIA's verifier compares it).
    pub version: String,
    /// `Meta@product`, e.g. `GH100`.
    pub product: String,
    pub tag_id: String,
    pub measurements: Vec<RimMeasurement>,
}

impl Rim {
    /// How golden values from this RIM are labelled in the policy.
    pub fn source(&self) -> String {
        let tag: String = self.tag_id.chars().take(16).collect();
        format!("NVIDIA {} {} RIM {} (tagId {tag}…)", self.product, self.kind, self.version)
    }
}

/// Parses a RIM and checks that its one signature covers the whole document (see the module
/// doc). Does not check the signature itself.
pub fn parse_rim(xml: &str) -> Result<Rim, RimError> {
    if xml.len() > MAX_RIM_BYTES {
        return Err(malformed(format!("{} bytes, over the {MAX_RIM_BYTES}-byte limit", xml.len())));
    }
    // roxmltree refuses a DTD unless allowed: no entity can change what either parser reads.
    let doc = roxmltree::Document::parse(xml).map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(SWID_NS) || root.tag_name().name() != "SoftwareIdentity" {
        return Err(malformed("the root element is not a SWID SoftwareIdentity"));
    }
    check_signature_shape(&doc, root)?;

    let child = |name: &str| {
        let mut it = root.children().filter(|n| n.is_element() && n.tag_name().namespace() == Some(SWID_NS) && n.tag_name().name() == name);
        match (it.next(), it.next()) {
            (Some(n), None) => Ok(n),
            (None, _) => Err(malformed(format!("no {name} element"))),
            (Some(_), Some(_)) => Err(malformed(format!("more than one {name} element"))),
        }
    };
    let meta = child("Meta")?;
    let version = attr(meta, "colloquialVersion")?.to_ascii_lowercase();
    let kind = if version.split('.').count() == 5 { RimKind::Vbios } else { RimKind::Driver };
    let product = attr(meta, "product")?.to_string();
    let tag_id = attr(root, "tagId")?.to_string();

    let payload = child("Payload")?;
    let mut measurements = Vec::new();
    let mut seen = BTreeMap::new();
    for r in payload.children().filter(|n| n.is_element()) {
        if r.tag_name().namespace() != Some(SWID_NS) || r.tag_name().name() != "Resource" {
            return Err(malformed(format!("unexpected element {:?} in Payload", r.tag_name().name())));
        }
        if measurements.len() == MAX_MEASUREMENTS {
            return Err(malformed(format!("more than {MAX_MEASUREMENTS} measurements")));
        }
        if attr(r, "type")? != "Measurement" {
            return Err(malformed("a Resource is not of type Measurement"));
        }
        let name = attr(r, "name")?.to_string();
        let number = |a: &str| -> Result<usize, RimError> {
            attr(r, a)?.parse::<usize>().map_err(|_| malformed(format!("{name}: {a} is not a number")))
        };
        let index = u8::try_from(number("index")?)
            .ok()
            .filter(|i| *i < u8::MAX)
            .ok_or_else(|| malformed(format!("{name}: index out of range")))?;
        if seen.insert(index, ()).is_some() {
            return Err(malformed(format!("index {index} appears twice")));
        }
        let active = match attr(r, "active")? {
            "True" | "true" => true,
            "False" | "false" => false,
            other => return Err(malformed(format!("{name}: active is {other:?}"))),
        };
        let size = number("size")?;
        if size == 0 || size > 64 {
            return Err(malformed(format!("{name}: size {size} is not 1 to 64 bytes")));
        }
        let alternatives = number("alternatives")?;
        if alternatives == 0 || alternatives > MAX_ALTERNATIVES {
            return Err(malformed(format!("{name}: {alternatives} alternatives (1 to {MAX_ALTERNATIVES})")));
        }
        let mut values = Vec::with_capacity(alternatives);
        for i in 0..alternatives {
            let v = r
                .attribute((SHA384_NS, format!("Hash{i}").as_str()))
                .ok_or_else(|| malformed(format!("{name}: no SHA-384 Hash{i}")))?;
            match hex::decode(v) {
                Ok(b) if b.len() == size => values.push(v.to_ascii_lowercase()),
                _ => return Err(malformed(format!("{name}: Hash{i} is not {size} bytes of hex"))),
            }
        }
        measurements.push(RimMeasurement { index, name, active, values });
    }
    if !measurements.iter().any(|m| m.active) {
        return Err(malformed("no active measurements"));
    }
    Ok(Rim { kind, version, product, tag_id, measurements })
}

/// A non-empty attribute, or `Malformed` naming it.
fn attr<'a>(n: roxmltree::Node<'a, '_>, a: &str) -> Result<&'a str, RimError> {
    n.attribute(a).filter(|v| !v.is_empty()).ok_or_else(|| malformed(format!("{} has no {a}", n.tag_name().name())))
}

fn check_signature_shape(doc: &roxmltree::Document, root: roxmltree::Node) -> Result<(), RimError> {
    let is = |n: &roxmltree::Node, name: &str| {
        n.is_element() && n.tag_name().namespace() == Some(DSIG_NS) && n.tag_name().name() == name
    };
    let sigs: Vec<_> = doc.descendants().filter(|n| is(n, "Signature")).collect();
    let [sig] = sigs.as_slice() else {
        return Err(malformed(format!("{} ds:Signature elements; exactly one is accepted", sigs.len())));
    };
    if sig.parent() != Some(root) || root.last_element_child() != Some(*sig) {
        return Err(malformed("the signature is not the last child of the root element"));
    }
    let refs: Vec<_> = sig.descendants().filter(|n| is(n, "Reference")).collect();
    let [reference] = refs.as_slice() else {
        return Err(malformed(format!("{} signed references; exactly one is accepted", refs.len())));
    };
    if reference.attribute("URI") != Some("") {
        return Err(malformed("the signed reference is not the whole document (URI=\"\")"));
    }
    let transforms: Vec<&str> = reference
        .descendants()
        .filter(|n| is(n, "Transform"))
        .map(|n| n.attribute("Algorithm").unwrap_or(""))
        .collect();
    match transforms.as_slice() {
        [ENVELOPED] => Ok(()),
        [ENVELOPED, c] if C14N.contains(c) => Ok(()),
        other => Err(malformed(format!("unexpected signature transforms {other:?}"))),
    }
}

/// Checks a RIM's XML signature with `xmlsec1`, trusting only `root_pem_path` (the system's
/// CA store is switched off) at `at` (unix seconds; `None`: now). `xmlsec1` follows the
/// certificates in the signature's `X509Data` up to that root and checks each one's validity.
pub fn verify_rim_signature(rim_path: &Path, root_pem_path: &Path, at: Option<u64>) -> Result<(), RimError> {
    let mut cmd = Command::new("xmlsec1");
    cmd.args(["--verify", "--enabled-key-data", "x509", "--enabled-reference-uris", "empty", "--depth", "6"])
        .arg("--trusted-pem")
        .arg(root_pem_path)
        // OpenSSL would also trust its default CA paths; point them at nothing.
        .env("SSL_CERT_FILE", "/nonexistent/cocoon-rim")
        .env("SSL_CERT_DIR", "/nonexistent/cocoon-rim")
        .env("TZ", "UTC");
    if let Some(t) = at {
        let when = chrono::DateTime::from_timestamp(i64::try_from(t).unwrap_or(i64::MAX), 0)
            .ok_or_else(|| RimError::Signature(format!("verification time {t} out of range")))?;
        cmd.arg("--verification-time").arg(when.format("%Y-%m-%d %H:%M:%S").to_string());
    }
    cmd.arg(rim_path);
    let out = cmd.output().map_err(|e| {
        RimError::XmlsecUnavailable(format!(
            "running xmlsec1 failed ({e}); install it (Debian: apt-get install xmlsec1)"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    // xmlsec1 prints a trace of internal frames; the first one says why: `…msg=certificate has
    // expired` or `…:error=12:invalid data:data and digest do not match`.
    fn first(l: &str) -> Option<&str> {
        l.split("msg=").nth(1).or_else(|| l.split(":error=").nth(1).and_then(|r| r.split_once(':').map(|(_, t)| t)))
    }
    let reason = text
        .lines()
        .find_map(first)
        .map_or_else(|| format!("xmlsec1 refused it: {}", text.trim()), |r| format!("xmlsec1: {}", r.trim()));
    Err(RimError::Signature(reason))
}

/// A RIM whose signature verified, and its parsed contents.
#[derive(Clone, Debug)]
pub struct VerifiedRim {
    pub rim: Rim,
}

/// Reads, shape-checks and signature-checks one RIM file.
pub fn verify_rim_file(rim_path: &Path, root_pem_path: &Path, at: Option<u64>) -> Result<VerifiedRim, RimError> {
    let meta = std::fs::metadata(rim_path).map_err(|e| malformed(format!("{}: {e}", rim_path.display())))?;
    if meta.len() > MAX_RIM_BYTES as u64 {
        return Err(malformed(format!("{} bytes, over the {MAX_RIM_BYTES}-byte limit", meta.len())));
    }
    let xml = std::fs::read_to_string(rim_path).map_err(|e| malformed(format!("{}: {e}", rim_path.display())))?;
    let rim = parse_rim(&xml)?;
    verify_rim_signature(rim_path, root_pem_path, at)?;
    Ok(VerifiedRim { rim })
}

/// Golden values for `[attestation.policy.gpu].measurements` from verified RIMs: every active
/// measurement, at SPDM block index RIM index + 1. As NVIDIA's verifier does, two RIMs with an
/// active measurement at the same index are refused.
pub fn golden_from_rims(rims: &[VerifiedRim]) -> Result<Vec<GpuGolden>, RimError> {
    let mut by_block: BTreeMap<u8, (GpuGolden, String)> = BTreeMap::new();
    for v in rims {
        for m in v.rim.measurements.iter().filter(|m| m.active) {
            let block = m.index + 1;
            if let Some((_, other)) = by_block.get(&block) {
                return Err(RimError::Conflict(format!(
                    "{} and {other} both have an active measurement at index {}",
                    v.rim.source(),
                    m.index
                )));
            }
            let golden = GpuGolden {
                index: block,
                allowed: m.values.iter().cloned().map(GoldenValue).collect(),
                source: Some(format!("{} {}", v.rim.source(), m.name)),
            };
            by_block.insert(block, (golden, v.rim.source()));
        }
    }
    Ok(by_block.into_values().map(|(g, _)| g).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VBIOS: &str = include_str!("../testdata/nvidia/rim/1010_0200_882_96005E0001_PROD.swidtag");

    #[test]
    fn parses_nvidia_vbios_rim() {
        let rim = parse_rim(VBIOS).unwrap();
        assert_eq!(rim.kind, RimKind::Vbios);
        assert_eq!(rim.version, "96.00.5e.00.01");
        assert_eq!(rim.product, "GH100");
        assert_eq!(rim.measurements.len(), 64);
        let m1 = &rim.measurements[1];
        assert_eq!((m1.index, m1.active), (1, true));
        assert!(m1.values[0].starts_with("c3f65ef7"));
    }

    #[test]
    fn refuses_shapes_whose_values_would_not_all_be_signed() {
        let cases = [
            ("DTD", VBIOS.replacen("<SoftwareIdentity", "<!DOCTYPE x [<!ENTITY e \"1\">]><SoftwareIdentity", 1)),
            ("second signature", VBIOS.replacen("<ns0:Payload", "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"/><ns0:Payload", 1)),
            ("reference to an id", VBIOS.replacen("<ds:Reference URI=\"\"", "<ds:Reference URI=\"#x\"", 1)),
            ("no enveloped transform", VBIOS.replacen("xmldsig#enveloped-signature", "xmldsig#base64", 1)),
            ("second Payload", VBIOS.replacen("<ns0:Payload", "<ns0:Payload/><ns0:Payload", 1)),
            ("bad hash size", VBIOS.replacen("c3f65ef7", "c3f65e", 1)),
        ];
        for (what, xml) in cases {
            let e = parse_rim(&xml).expect_err(what);
            assert_eq!(e.rule(), "rim_malformed", "{what}: {e}");
        }
    }

    #[test]
    fn rim_index_maps_to_the_next_spdm_block() {
        let rim = parse_rim(VBIOS).unwrap();
        let golden = golden_from_rims(&[VerifiedRim { rim: rim.clone() }]).unwrap();
        let active = rim.measurements.iter().filter(|m| m.active).count();
        assert_eq!(golden.len(), active);
        let g = golden.iter().find(|g| g.index == 2).unwrap();
        assert_eq!(g.allowed[0].0, rim.measurements[1].values[0]);
        let e = golden_from_rims(&[VerifiedRim { rim: rim.clone() }, VerifiedRim { rim }]).unwrap_err();
        assert_eq!(e.rule(), "rim_conflict");
    }
}
