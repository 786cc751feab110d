//! Which verified evidence is acceptable. Deserialised from TOML (every table rejects unknown
//! keys, so a misspelt rule fails loudly instead of being ignored):
//!
//! ```toml
//! allow_insecure_simulated_tee = false   # dev only; production refuses it
//! max_evidence_age_secs = 300            # nonce issued -> evidence verified
//! cache_ttl_secs = 3600                  # how long a verified worker key stays trusted
//!
//! [tdx]
//! acceptable_tcb_statuses = ["UpToDate"] # opt in to e.g. "SWHardeningNeeded"
//! rejected_advisory_ids = []
//! # min_tcb_evaluation_data_number = 17
//! [[tdx.allowed]]                        # one entry per approved image
//! mrtd  = "<96 hex digits>"
//! rtmr0 = "<96 hex digits>"
//! rtmr1 = "<96 hex digits>"
//! rtmr2 = "<96 hex digits>"
//! rtmr3 = "any"                          # "any" skips one RTMR, explicitly
//!
//! [snp]
//! allowed_products = ["milan", "genoa"]
//! allowed_measurements = ["<96 hex digits>"]
//! max_vmpl = 0
//! min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
//!
//! [gpu]                                  # NVIDIA GPU evidence, see `nvidia::GpuPolicy`
//! require = false
//! allowed_driver_versions = []           # empty: any
//! allowed_vbios_versions = []            # empty: any
//! measurements = []                      # [{ index = 2, allowed = ["<hex>"] }]; empty: none accepted
//! ```
//!
//! Debug guests are always rejected: there is no switch for it.

use serde::{Deserialize, Serialize};

use crate::claims::{Measurement, SnpProduct, SnpTcb, TdxMeasurements, TeeClaims, TeeDetails};
use crate::error::AttestationError;
use crate::evidence::TeeKind;
use crate::serde_bytes::hex_array;
use crate::simulated::SIMULATED_MEASUREMENTS;

/// How far in the future a simulated report's timestamp may be (clock skew).
const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// The attestation policy in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Accept simulated (unbacked, dev-only) evidence. Production must refuse this.
    pub allow_insecure_simulated_tee: bool,
    /// If non-empty, simulated evidence must be signed by one of these Ed25519 keys (hex).
    pub simulated_tee_keys: Vec<SimulatedKey>,
    /// Longest time from issuing a nonce to verifying the evidence that answers it (and, for
    /// simulated evidence, from its signed timestamp). Nonces are single-use within this window.
    pub max_evidence_age_secs: u64,
    /// How long a verified worker key stays trusted without fresh evidence (capped by the
    /// expiry of the collateral or certificates it was verified with).
    pub cache_ttl_secs: u64,
    pub tdx: TdxPolicy,
    pub snp: SnpPolicy,
    /// NVIDIA GPU evidence ([`crate::nvidia::GpuPolicy`]).
    pub gpu: crate::nvidia::GpuPolicy,
    /// Allowed weight digests (SHA-256 hex, as the worker measures them) per model id. A
    /// worker serving a listed id must have measured one of its digests, or it is refused;
    /// ids not listed are not pinned.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_insecure_simulated_tee: false,
            simulated_tee_keys: Vec::new(),
            max_evidence_age_secs: 300,
            cache_ttl_secs: 3600,
            tdx: TdxPolicy::default(),
            snp: SnpPolicy::default(),
            gpu: crate::nvidia::GpuPolicy::default(),
            models: std::collections::BTreeMap::new(),
        }
    }
}

/// An Ed25519 public key (hex) trusted to sign simulated evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SimulatedKey(#[serde(with = "hex_array")] pub [u8; 32]);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TdxPolicy {
    /// Converged TCB statuses to accept. Default: only `UpToDate`.
    pub acceptable_tcb_statuses: Vec<dcap_qvl::TcbStatus>,
    /// Intel security advisories (e.g. "INTEL-SA-00837") that make a quote unacceptable.
    pub rejected_advisory_ids: Vec<String>,
    /// Reject collateral older than this TCB evaluation data number (TCB recovery events).
    pub min_tcb_evaluation_data_number: Option<u32>,
    /// Approved images. Empty: no TDX evidence is accepted.
    pub allowed: Vec<TdxAllowed>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self {
            acceptable_tcb_statuses: vec![dcap_qvl::TcbStatus::UpToDate],
            rejected_advisory_ids: Vec::new(),
            min_tcb_evaluation_data_number: None,
            allowed: Vec::new(),
        }
    }
}

/// One approved TDX image: MRTD and RTMR0..3. Every field must be given; `"any"` skips an RTMR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxAllowed {
    pub mrtd: Measurement,
    pub rtmr0: MeasurementPattern,
    pub rtmr1: MeasurementPattern,
    pub rtmr2: MeasurementPattern,
    pub rtmr3: MeasurementPattern,
}

impl TdxAllowed {
    /// An entry matching exactly these measurements.
    pub fn exact(m: &TdxMeasurements) -> Self {
        Self {
            mrtd: m.mrtd,
            rtmr0: MeasurementPattern::Exact(m.rtmr0),
            rtmr1: MeasurementPattern::Exact(m.rtmr1),
            rtmr2: MeasurementPattern::Exact(m.rtmr2),
            rtmr3: MeasurementPattern::Exact(m.rtmr3),
        }
    }

    /// The first register that does not match, with its value, or `None` when all match.
    fn mismatch(&self, m: &TdxMeasurements) -> Option<(&'static str, Measurement)> {
        if self.mrtd != m.mrtd {
            return Some(("MRTD", m.mrtd));
        }
        [
            ("RTMR0", &self.rtmr0, m.rtmr0),
            ("RTMR1", &self.rtmr1, m.rtmr1),
            ("RTMR2", &self.rtmr2, m.rtmr2),
            ("RTMR3", &self.rtmr3, m.rtmr3),
        ]
        .into_iter()
        .find(|(_, want, got)| !want.matches(got))
        .map(|(name, _, got)| (name, got))
    }
}

/// A measurement value, or `"any"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasurementPattern {
    Any,
    Exact(Measurement),
}

impl MeasurementPattern {
    pub fn matches(&self, m: &Measurement) -> bool {
        match self {
            MeasurementPattern::Any => true,
            MeasurementPattern::Exact(want) => want == m,
        }
    }
}

impl Serialize for MeasurementPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MeasurementPattern::Any => s.serialize_str("any"),
            MeasurementPattern::Exact(m) => m.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MeasurementPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.eq_ignore_ascii_case("any") {
            Ok(MeasurementPattern::Any)
        } else {
            text.parse()
                .map(MeasurementPattern::Exact)
                .map_err(serde::de::Error::custom)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpPolicy {
    /// Product lines whose AMD root may vouch for the VCEK. Default: Milan and Genoa.
    pub allowed_products: Vec<SnpProduct>,
    /// Approved launch measurements. Empty: no SEV-SNP evidence is accepted.
    pub allowed_measurements: Vec<Measurement>,
    /// Highest VMPL the report may come from (0 = the most privileged, the usual choice).
    pub max_vmpl: u32,
    /// Minimum REPORTED_TCB component SVNs.
    pub min_tcb: SnpTcb,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        Self {
            allowed_products: vec![SnpProduct::Milan, SnpProduct::Genoa],
            allowed_measurements: Vec::new(),
            max_vmpl: 0,
            min_tcb: SnpTcb::default(),
        }
    }
}

impl Policy {
    /// A policy suitable for `cocoon dev`: accepts the simulated TEE, nothing else changed.
    pub fn insecure_dev() -> Self {
        Self {
            allow_insecure_simulated_tee: true,
            ..Self::default()
        }
    }

    /// Refuses settings that must never reach production (the simulated TEE).
    pub fn ensure_production_safe(&self) -> Result<(), String> {
        if self.allow_insecure_simulated_tee {
            return Err("allow_insecure_simulated_tee = true is refused in production: simulated evidence is not backed by any hardware".into());
        }
        Ok(())
    }

    /// A worker's served models against the pins in [`Policy::models`]: `(id, digest)` pairs
    /// as its hello (which its evidence commits to) lists them.
    pub fn check_models<'a>(&self, models: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<(), String> {
        for (id, digest) in models {
            let Some(allowed) = self.models.get(id) else { continue };
            match digest {
                None => return Err(format!("model {id:?} is pinned by policy but the worker measured no digest for it")),
                Some(d) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(d)) => {
                    return Err(format!("model {id:?} is served with weights {d}, which the policy does not allow for it"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Applies every rule to verified claims. `now` is unix seconds.
    pub fn check(&self, claims: &TeeClaims, now: u64) -> Result<(), AttestationError> {
        match &claims.details {
            TeeDetails::Tdx { .. } => self.check_tdx(claims),
            TeeDetails::SevSnp { .. } => self.check_snp(claims),
            TeeDetails::Simulated { .. } => self.check_simulated(claims, now),
        }
    }

    fn check_tdx(&self, claims: &TeeClaims) -> Result<(), AttestationError> {
        let TeeDetails::Tdx {
            measurements,
            td_attributes,
            tcb_status,
            advisory_ids,
            tcb_evaluation_data_number,
            ..
        } = &claims.details
        else {
            return Ok(());
        };
        let p = &self.tdx;
        if !p.acceptable_tcb_statuses.contains(tcb_status) {
            return Err(AttestationError::TcbStatusNotAllowed {
                status: tcb_status.to_string(),
                acceptable: join(&p.acceptable_tcb_statuses),
            });
        }
        if let Some(id) = advisory_ids.iter().find(|id| {
            p.rejected_advisory_ids
                .iter()
                .any(|r| r.eq_ignore_ascii_case(id))
        }) {
            return Err(AttestationError::AdvisoryRejected { id: id.clone() });
        }
        if let Some(min) = p.min_tcb_evaluation_data_number {
            if *tcb_evaluation_data_number < min {
                return Err(AttestationError::TcbEvaluationTooOld {
                    got: *tcb_evaluation_data_number,
                    min,
                });
            }
        }
        if claims.debug {
            return Err(AttestationError::DebugEnabled {
                kind: TeeKind::Tdx,
                detail: format!(
                    "TD_ATTRIBUTES {} has a TUD bit set",
                    hex::encode(td_attributes)
                ),
            });
        }
        check_tdx_measurements(TeeKind::Tdx, &p.allowed, measurements)
    }

    fn check_snp(&self, claims: &TeeClaims) -> Result<(), AttestationError> {
        let TeeDetails::SevSnp {
            product,
            measurement,
            vmpl,
            guest_policy,
            reported_tcb,
            ..
        } = &claims.details
        else {
            return Ok(());
        };
        let p = &self.snp;
        if !p.allowed_products.contains(product) {
            return Err(AttestationError::SnpProductNotAllowed {
                product: product.to_string(),
                allowed: join(&p.allowed_products),
            });
        }
        if *vmpl > p.max_vmpl {
            return Err(AttestationError::SnpVmplNotAllowed {
                vmpl: *vmpl,
                max: p.max_vmpl,
            });
        }
        let min = p.min_tcb;
        for (component, got, min) in [
            ("bootloader", reported_tcb.bootloader, min.bootloader),
            ("tee", reported_tcb.tee, min.tee),
            ("snp", reported_tcb.snp, min.snp),
            ("microcode", reported_tcb.microcode, min.microcode),
        ] {
            if got < min {
                return Err(AttestationError::SnpTcbTooLow {
                    component,
                    got,
                    min,
                });
            }
        }
        if claims.debug {
            return Err(AttestationError::DebugEnabled {
                kind: TeeKind::SevSnp,
                detail: format!("guest POLICY {guest_policy:#x} has DEBUG (bit 19) set"),
            });
        }
        if !p.allowed_measurements.contains(measurement) {
            return Err(AttestationError::MeasurementNotAllowed {
                kind: TeeKind::SevSnp,
                detail: if p.allowed_measurements.is_empty() {
                    format!("MEASUREMENT {measurement}: the policy allows no SEV-SNP measurement")
                } else {
                    format!(
                        "MEASUREMENT {measurement} is not among the {} allowed",
                        p.allowed_measurements.len()
                    )
                },
            });
        }
        Ok(())
    }

    fn check_simulated(&self, claims: &TeeClaims, now: u64) -> Result<(), AttestationError> {
        let TeeDetails::Simulated {
            measurements,
            produced_at,
            signer,
        } = &claims.details
        else {
            return Ok(());
        };
        if !self.allow_insecure_simulated_tee {
            return Err(AttestationError::SimulatedNotAllowed);
        }
        if !self.simulated_tee_keys.is_empty()
            && !self.simulated_tee_keys.iter().any(|k| &k.0 == signer)
        {
            return Err(AttestationError::SimulatedKeyNotTrusted {
                key: hex::encode(signer),
            });
        }
        if *produced_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(AttestationError::EvidenceFromFuture {
                produced_at: *produced_at,
                now,
            });
        }
        let age = now.saturating_sub(*produced_at);
        if age > self.max_evidence_age_secs {
            return Err(AttestationError::EvidenceTooOld {
                age_secs: age,
                max_secs: self.max_evidence_age_secs,
            });
        }
        if claims.debug {
            return Err(AttestationError::DebugEnabled {
                kind: TeeKind::Simulated,
                detail: "the simulated report has debug = true".into(),
            });
        }
        check_tdx_measurements(
            TeeKind::Simulated,
            &[TdxAllowed::exact(&SIMULATED_MEASUREMENTS)],
            measurements,
        )
    }
}

fn check_tdx_measurements(
    kind: TeeKind,
    allowed: &[TdxAllowed],
    m: &TdxMeasurements,
) -> Result<(), AttestationError> {
    if allowed.iter().any(|a| a.mismatch(m).is_none()) {
        return Ok(());
    }
    let detail = if allowed.is_empty() {
        format!("MRTD {}: the policy allows no {kind} image", m.mrtd)
    } else if let Some((reg, got)) = allowed
        .iter()
        .filter(|a| a.mrtd == m.mrtd)
        .find_map(|a| a.mismatch(m))
    {
        format!(
            "MRTD {} is allowed but {reg} {got} does not match its entry",
            m.mrtd
        )
    } else {
        format!(
            "MRTD {} is not among the {} allowed images",
            m.mrtd,
            allowed.len()
        )
    };
    Err(AttestationError::MeasurementNotAllowed { kind, detail })
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_strict() {
        let p: Policy = toml::from_str("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(!p.allow_insecure_simulated_tee);
        assert_eq!(
            p.tdx.acceptable_tcb_statuses,
            vec![dcap_qvl::TcbStatus::UpToDate]
        );
        assert!(p.tdx.allowed.is_empty());
        assert!(p.ensure_production_safe().is_ok());
        assert!(Policy::insecure_dev().ensure_production_safe().is_err());
    }

    #[test]
    fn parses_the_documented_toml() {
        let h = "ab".repeat(48);
        let text = format!(
            r#"
            allow_insecure_simulated_tee = false
            max_evidence_age_secs = 120
            [tdx]
            acceptable_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
            rejected_advisory_ids = ["INTEL-SA-00837"]
            [[tdx.allowed]]
            mrtd = "{h}"
            rtmr0 = "{h}"
            rtmr1 = "{h}"
            rtmr2 = "{h}"
            rtmr3 = "any"
            [snp]
            allowed_products = ["genoa"]
            allowed_measurements = ["{h}"]
            min_tcb = {{ bootloader = 3, snp = 8 }}
            "#
        );
        let p: Policy = toml::from_str(&text).unwrap();
        assert_eq!(p.max_evidence_age_secs, 120);
        assert_eq!(p.tdx.acceptable_tcb_statuses.len(), 2);
        assert_eq!(p.tdx.allowed[0].rtmr3, MeasurementPattern::Any);
        assert_eq!(p.snp.allowed_products, vec![SnpProduct::Genoa]);
        assert_eq!(p.snp.min_tcb.snp, 8);
        // Round trip through TOML.
        let back: Policy = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn rejects_unknown_and_incomplete_rules() {
        assert!(toml::from_str::<Policy>("allow_debug = true").is_err());
        assert!(toml::from_str::<Policy>("[tdx]\nacceptable_tcb_statuses = [\"Fine\"]").is_err());
        let h = "ab".repeat(48);
        // An entry without rtmr3 must not silently mean "any".
        let text = format!(
            "[[tdx.allowed]]\nmrtd = \"{h}\"\nrtmr0 = \"{h}\"\nrtmr1 = \"{h}\"\nrtmr2 = \"{h}\""
        );
        assert!(toml::from_str::<Policy>(&text).is_err());
        let text = format!("[snp]\nallowed_measurements = [\"{}\"]", "ab".repeat(47));
        assert!(toml::from_str::<Policy>(&text).is_err());
    }
}
