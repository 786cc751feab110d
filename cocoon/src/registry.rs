//! `[attestation] policy_source = "chain"`: the network's rules come from the policy
//! registry contract on TON (`contracts/`), not from this host's config file.
//!
//! ```toml
//! [attestation]
//! policy_source = "chain"
//! [attestation.registry]
//! address = "EQ…"         # the registry contract; read through [ton]'s api_url / api_key
//! refresh_secs = 60
//! ```
//!
//! What the registry decides, replacing the file's values: the approved TDX images, the
//! SEV-SNP measurements, the model weight digests, the GPU policy (require, architectures,
//! protection modes, driver and VBIOS versions, golden measurements), the maximum worker
//! price coefficient, the network fee, and the price of each model the registry lists
//! (when it publishes one: all-zero prices leave the ledger's own prices in force). What
//! stays with the operator's file: TCB statuses and advisories, evidence age, cache TTL,
//! the simulated TEE switch (refused in production anyway).
//!
//! The router refuses to start when the registry cannot be read or decoded. Afterwards it
//! re-reads it every `refresh_secs`: a higher version is applied at once (admitted workers
//! re-attest immediately; those refused are detached), a lower one (an API node behind
//! the chain) is ignored, and a failed read keeps the version in force.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use attestation::Policy;
use router::{PolicyOrigin, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use ton::registry::RegistryPolicy;
use ton::RegistryReader;

/// Where the attestation policy comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// `[attestation.policy]` in this file.
    #[default]
    File,
    /// The policy registry contract at `[attestation.registry] address`.
    Chain,
}

/// `[attestation.registry]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// The registry contract (raw or user-friendly form, on `[ton] network`).
    pub address: Option<String>,
    /// How often the registry is re-read.
    pub refresh_secs: u64,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            address: None,
            refresh_secs: 60,
        }
    }
}

impl RegistrySection {
    pub fn validate(&self, source: PolicySource, network: ton::Network) -> Vec<String> {
        let mut errs = Vec::new();
        if source != PolicySource::Chain {
            return errs;
        }
        match &self.address {
            None => errs.push("attestation.policy_source = \"chain\" needs attestation.registry.address".into()),
            Some(a) => {
                if let Err(e) = ton::parse_address(a, network) {
                    errs.push(format!("attestation.registry.address: {e}"));
                }
            }
        }
        if self.refresh_secs < 5 {
            errs.push(format!("attestation.registry.refresh_secs must be >= 5, got {}", self.refresh_secs));
        }
        errs
    }
}

/// `base` with every rule the registry decides replaced by the registry's.
pub fn to_policy(base: &Policy, reg: &RegistryPolicy) -> anyhow::Result<Policy> {
    let mut p = base.clone();
    p.tdx.allowed = reg
        .tdx
        .iter()
        .map(|t| serde_json::to_value(t).and_then(serde_json::from_value))
        .collect::<Result<_, _>>()
        .context("a TDX image of the registry")?;
    p.snp.allowed_measurements = reg
        .snp
        .iter()
        .map(|m| serde_json::from_value(json!(m)))
        .collect::<Result<_, _>>()
        .context("a SEV-SNP measurement of the registry")?;
    p.models = reg.models.clone();
    let g = &reg.gpu;
    p.gpu.require = g.require;
    p.gpu.allowed_architectures = serde_json::from_value(json!(g.allowed_architectures)).context("the registry's GPU architectures")?;
    p.gpu.allowed_protection_modes =
        serde_json::from_value(json!(g.allowed_protection_modes)).context("the registry's GPU protection modes")?;
    p.gpu.allowed_driver_versions = g.allowed_driver_versions.clone();
    p.gpu.allowed_vbios_versions = g.allowed_vbios_versions.clone();
    p.gpu.measurements = g
        .measurements
        .iter()
        .map(|m| {
            serde_json::from_value(json!({
                "index": m.index, "allowed": m.allowed, "source": format!("policy registry v{}", reg.version),
            }))
        })
        .collect::<Result<_, _>>()
        .context("a GPU golden measurement of the registry")?;
    Ok(p)
}

/// Whether `report_policy` (what a gateway says it applies) holds exactly the registry's
/// rules: `None` when it does, else the first difference. The `source` labels of GPU
/// golden values are ignored (they name the version, checked separately).
pub fn differences(report_policy: &Policy, reg: &RegistryPolicy) -> anyhow::Result<Option<String>> {
    let want = to_policy(report_policy, reg)?;
    let strip = |p: &Policy| {
        let mut p = p.clone();
        p.gpu.measurements.iter_mut().for_each(|m| m.source = None);
        p
    };
    let (want, got) = (strip(&want), strip(report_policy));
    if want == got {
        return Ok(None);
    }
    let (w, g) = (serde_json::to_value(&want)?, serde_json::to_value(&got)?);
    for key in ["tdx", "snp", "models", "gpu"] {
        if w[key] != g[key] {
            return Ok(Some(format!("{key}: the registry says {} but the gateway applies {}", w[key], g[key])));
        }
    }
    Ok(Some("the policies differ".into()))
}

/// The registry policy in force on this router, kept current.
pub struct ChainPolicy {
    reader: RegistryReader,
    router: Router,
    /// The file's policy: what the registry does not decide.
    base: RwLock<Policy>,
    in_force: RwLock<Option<RegistryPolicy>>,
    ledger: RwLock<Option<billing::Ledger>>,
}

impl ChainPolicy {
    /// Reads the registry and applies it to `router`, then keeps it current until `stop`.
    /// `None` with `policy_source = "file"`. An unreadable registry is an error: the
    /// router must not start on rules nobody published.
    pub async fn start(
        cfg: &crate::config::Config,
        router: Router,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Option<Arc<ChainPolicy>>> {
        let a = &cfg.attestation;
        if a.policy_source != PolicySource::Chain {
            return Ok(None);
        }
        let errs = a.registry.validate(a.policy_source, cfg.ton.network);
        anyhow::ensure!(errs.is_empty(), "{}", errs.join("; "));
        let text = a.registry.address.clone().unwrap_or_default();
        let address = ton::parse_address(&text, cfg.ton.network)?.address;
        let api = ton::TonApi::new(cfg.ton.api_url(), cfg.ton.api_key.clone(), cfg.ton.api_timeout())?
            .with_requests_per_sec(cfg.ton.requests_per_sec());
        let reader = RegistryReader::new(api, address);
        let reg = reader.read().await.with_context(|| {
            format!("reading the policy registry {text} through {} (attestation.policy_source = \"chain\" does not start without it)", cfg.ton.api_url())
        })?;
        let me = Arc::new(ChainPolicy {
            reader,
            router,
            base: RwLock::new(a.policy.clone()),
            in_force: RwLock::new(None),
            ledger: RwLock::new(None),
        });
        me.apply(reg).await.context("applying the policy registry")?;
        let every = Duration::from_secs(a.registry.refresh_secs);
        let task = me.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                task.refresh().await;
            }
        });
        Ok(Some(me))
    }

    /// The registry address (raw) and the version in force.
    pub fn in_force(&self) -> Option<(String, u32)> {
        let g = self.in_force.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|r| (self.reader.address().to_raw(), r.version))
    }

    /// Reads the registry once and applies a newer version.
    pub async fn refresh(&self) {
        let current = self.in_force().map_or(0, |(_, v)| v);
        match self.reader.read().await {
            Ok(reg) if reg.version > current => {
                let version = reg.version;
                if let Err(e) = self.apply(reg).await {
                    metrics::counter!("cocoon_policy_registry_failures_total", "stage" => "apply").increment(1);
                    tracing::error!(version, error = %format!("{e:#}"), "the policy registry's new version cannot be applied; the one in force stays");
                }
            }
            Ok(reg) if reg.version < current => {
                tracing::warn!(seen = reg.version, in_force = current, "the TON API returned an older registry version (a node behind the chain); ignored");
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("cocoon_policy_registry_failures_total", "stage" => "read").increment(1);
                tracing::warn!(error = %e, in_force = current, "could not read the policy registry; the version in force stays");
            }
        }
    }

    async fn apply(&self, reg: RegistryPolicy) -> anyhow::Result<()> {
        let base = self.base.read().unwrap_or_else(|p| p.into_inner()).clone();
        let policy = to_policy(&base, &reg)?;
        let ledger = self.ledger.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(l) = &ledger {
            apply_to_ledger(l, &reg).await?;
        }
        self.router.set_max_price_coefficient(reg.max_price_coefficient);
        let origin = PolicyOrigin::Chain { address: self.reader.address().to_raw(), version: reg.version };
        self.router.attestor().set_policy_from(policy, origin);
        metrics::gauge!("cocoon_policy_registry_version").set(f64::from(reg.version));
        tracing::info!(version = reg.version, "policy registry applied");
        *self.in_force.write().unwrap_or_else(|p| p.into_inner()) = Some(reg);
        Ok(())
    }

    /// From now on the registry's fee and prices also go into `ledger` (now and at every
    /// new version).
    pub async fn attach_ledger(&self, ledger: billing::Ledger) -> anyhow::Result<()> {
        let reg = self.in_force.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reg) = reg {
            apply_to_ledger(&ledger, &reg).await?;
        }
        *self.ledger.write().unwrap_or_else(|p| p.into_inner()) = Some(ledger);
        Ok(())
    }

    /// A reloaded config file (SIGHUP): its policy is the new base, the registry's rules
    /// stay on top of it.
    pub fn set_base(&self, base: Policy) -> anyhow::Result<()> {
        let reg = self.in_force.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(reg) = reg else { anyhow::bail!("no registry version in force") };
        let policy = to_policy(&base, &reg)?;
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = base;
        let origin = PolicyOrigin::Chain { address: self.reader.address().to_raw(), version: reg.version };
        self.router.attestor().set_policy_from(policy, origin);
        Ok(())
    }
}

async fn apply_to_ledger(ledger: &billing::Ledger, reg: &RegistryPolicy) -> anyhow::Result<()> {
    ledger.set_fee_bps(u32::from(reg.fee_bps))?;
    if !reg.prices.is_unset() {
        let p = &reg.prices;
        let int = |v: u64| i64::try_from(v).context("a registry price above i64");
        let price = billing::Price {
            prompt: int(p.prompt)?,
            cached_prompt: int(p.cached_prompt)?,
            completion: int(p.completion)?,
            reasoning: int(p.reasoning)?,
        };
        for model in reg.models.keys() {
            ledger.set_price(model, price).await.with_context(|| format!("setting the registry's price of {model}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ton::registry::{Item, Params, TdxImage};

    fn reg() -> RegistryPolicy {
        let owner = ton::Address { workchain: 0, hash: [1; 32] };
        let m = |b: u8| hex::encode([b; 48]);
        RegistryPolicy::from_parts(
            3,
            &owner,
            Params {
                gpu_require: true,
                gpu_architectures: vec!["hopper".into()],
                gpu_protection_modes: vec!["ppcie".into()],
                ..Params::default()
            },
            vec![
                Item::Tdx(TdxImage { mrtd: m(1), rtmr0: m(2), rtmr1: m(3), rtmr2: m(4), rtmr3: "any".into() }),
                Item::Snp(m(5)),
                Item::Model { id: "m".into(), sha256: "ab".repeat(32) },
                Item::GpuDriver("550.54.15".into()),
                Item::GpuGolden { index: 2, value: "cd".repeat(48) },
            ],
        )
    }

    #[test]
    fn the_registry_replaces_the_rules_it_holds_and_keeps_the_rest() {
        let base = Policy { max_evidence_age_secs: 77, tdx: attestation::TdxPolicy { rejected_advisory_ids: vec!["INTEL-SA-1".into()], ..Default::default() }, ..Policy::default() };
        let p = to_policy(&base, &reg()).unwrap();
        assert_eq!(p.max_evidence_age_secs, 77);
        assert_eq!(p.tdx.rejected_advisory_ids, vec!["INTEL-SA-1".to_string()]);
        assert_eq!(p.tdx.allowed.len(), 1);
        assert_eq!(p.tdx.allowed[0].rtmr3, attestation::MeasurementPattern::Any);
        assert_eq!(p.snp.allowed_measurements.len(), 1);
        assert_eq!(p.models["m"], vec!["ab".repeat(32)]);
        assert!(p.gpu.require);
        assert_eq!(p.gpu.allowed_driver_versions, vec!["550.54.15".to_string()]);
        assert_eq!(p.gpu.measurements[0].source.as_deref(), Some("policy registry v3"));
        assert_eq!(differences(&p, &reg()).unwrap(), None);

        // A gateway that adds an image of its own, or drops a pin, is caught.
        let mut extra = p.clone();
        extra.tdx.allowed.push(extra.tdx.allowed[0].clone());
        assert!(differences(&extra, &reg()).unwrap().unwrap().starts_with("tdx:"));
        let mut unpinned = p.clone();
        unpinned.models.clear();
        assert!(differences(&unpinned, &reg()).unwrap().unwrap().starts_with("models:"));
    }
}
