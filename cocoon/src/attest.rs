//! `[attestation]`: which workers the router admits (policy, TDX collateral), whether jobs
//! are sealed, and where a worker's own evidence comes from.
//!
//! ```toml
//! [attestation]
//! seal_jobs = true          # HPKE to the worker's attested key; false only to measure its cost
//! worker_tee = "auto"       # auto | hardware | simulated
//! # collateral_file = "/var/lib/cocoon/tdx-collateral.json"
//! [attestation.policy]      # see attestation::Policy
//! allow_insecure_simulated_tee = false
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use attestation::{CollateralStore, MemoryNonceStore, NonceStore, Policy, Verifier};
use router::Attestor;
use serde::{Deserialize, Serialize};
use worker_agent::WorkerTee;

/// Where a worker's evidence comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerTeeMode {
    /// configfs-tsm (TDX or SEV-SNP) when present; otherwise the simulated TEE, outside
    /// production only.
    #[default]
    Auto,
    /// configfs-tsm or fail.
    Hardware,
    /// The insecure simulated TEE (dev and tests).
    Simulated,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationSection {
    /// Seal jobs (HPKE) to the worker's attested key. `false` sends them in clear and exists
    /// only to measure what sealing costs; production refuses it.
    pub seal_jobs: bool,
    pub worker_tee: WorkerTeeMode,
    /// TDX collateral cache (JSON written by `CollateralStore::save_file`, fetched from a PCCS).
    pub collateral_file: Option<PathBuf>,
    pub policy: Policy,
}

impl Default for AttestationSection {
    fn default() -> Self {
        Self {
            seal_jobs: true,
            worker_tee: WorkerTeeMode::Auto,
            collateral_file: None,
            policy: Policy::default(),
        }
    }
}

impl AttestationSection {
    pub fn validate(&self, production: bool) -> Vec<String> {
        let mut errs = Vec::new();
        if production {
            if let Err(e) = self.policy.ensure_production_safe() {
                errs.push(format!("attestation.policy.{e}"));
            }
            if !self.seal_jobs {
                errs.push("attestation.seal_jobs = false sends prompts in clear to workers and is refused in production".into());
            }
            if self.worker_tee == WorkerTeeMode::Simulated {
                errs.push("attestation.worker_tee = \"simulated\" is refused in production: simulated evidence is not backed by any hardware".into());
            }
        }
        if self.policy.max_evidence_age_secs == 0 {
            errs.push("attestation.policy.max_evidence_age_secs must be > 0".into());
        }
        if self.policy.cache_ttl_secs < 60 {
            errs.push(format!(
                "attestation.policy.cache_ttl_secs must be >= 60 (workers re-attest at 3/4 of it), got {}",
                self.policy.cache_ttl_secs
            ));
        }
        errs
    }

    /// The router's admission: policy, collateral, nonces (`nonces`, shared by replicas, or
    /// in memory) and sealing.
    pub fn attestor(&self, nonces: Option<Arc<dyn NonceStore>>) -> anyhow::Result<Arc<Attestor>> {
        let mut verifier = Verifier::new(self.policy.clone());
        if let Some(path) = &self.collateral_file {
            let store = CollateralStore::load_file(path)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("loading TDX collateral from {}", path.display()))?;
            verifier = verifier.with_collateral(store);
        }
        if self.policy.allow_insecure_simulated_tee {
            tracing::warn!("attestation.policy.allow_insecure_simulated_tee = true: workers WITHOUT any TEE are admitted (dev only)");
        }
        if !self.seal_jobs {
            tracing::warn!("attestation.seal_jobs = false: jobs travel to workers IN CLEAR (benchmarking only)");
        }
        Ok(Arc::new(Attestor::new(
            verifier,
            nonces.unwrap_or_else(|| Arc::new(MemoryNonceStore::new())),
            self.seal_jobs,
        )))
    }

    /// The worker's evidence source and HPKE key.
    pub fn worker_tee(&self, production: bool) -> anyhow::Result<WorkerTee> {
        match self.worker_tee {
            WorkerTeeMode::Simulated => WorkerTee::simulated().map_err(anyhow::Error::from),
            WorkerTeeMode::Hardware => WorkerTee::detect(false).map_err(anyhow::Error::msg),
            WorkerTeeMode::Auto => WorkerTee::detect(!production).map_err(anyhow::Error::msg),
        }
    }
}
