//! `[attestation]`: which workers the router admits (policy, collateral), whether jobs are
//! sealed, and where a worker's own evidence comes from.
//!
//! ```toml
//! [attestation]
//! seal_jobs = true          # HPKE to the worker's attested key; false only to measure its cost
//! worker_tee = "auto"       # auto | hardware | simulated
//! [attestation.collateral]  # fetched, cached and refreshed by the router (attestation::CollateralConfig)
//! pccs_url = "https://api.trustedservices.intel.com"
//! [attestation.policy]      # see attestation::Policy
//! allow_insecure_simulated_tee = false
//! ```
//!
//! The policy can be changed without a restart: `cocoon gateway` re-reads its config file on
//! SIGHUP and applies the new `[attestation.policy]` ([`reload_policy`]); admitted workers meet
//! it at their next re-challenge.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use attestation::{
    CollateralConfig, CollateralService, CollateralStore, MemoryNonceStore, NonceStore, Policy,
    SharedCollateral, Verifier,
};
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
    /// Attach INSECURE simulated NVIDIA GPU evidence ([`worker_agent::gpu::SimulatedNvml`])
    /// when the worker runs in the simulated TEE. Unset: on in `cocoon dev`, off elsewhere;
    /// `true` is refused in production. A build with the `nvidia` feature ignores it: it
    /// always collects real evidence through NVML.
    pub simulated_gpu: Option<bool>,
    /// A fixed TDX collateral file (JSON written by `CollateralStore::save_file`), used only
    /// with `collateral.enabled = false` (an air-gapped router); never refreshed.
    pub collateral_file: Option<PathBuf>,
    /// Where the router fetches TDX collateral and SEV-SNP VCEKs, and how it keeps them fresh.
    /// `cache_dir` defaults to `<data_dir>/collateral`.
    pub collateral: CollateralConfig,
    /// `file`: `[attestation.policy]` below; `chain`: the policy registry contract at
    /// `[attestation.registry] address` decides the rules it holds ([`crate::registry`]).
    pub policy_source: crate::registry::PolicySource,
    pub registry: crate::registry::RegistrySection,
    pub policy: Policy,
}

impl Default for AttestationSection {
    fn default() -> Self {
        Self {
            seal_jobs: true,
            worker_tee: WorkerTeeMode::Auto,
            simulated_gpu: None,
            collateral_file: None,
            collateral: CollateralConfig::default(),
            policy_source: crate::registry::PolicySource::File,
            registry: crate::registry::RegistrySection::default(),
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
            if self.simulated_gpu == Some(true) {
                errs.push("attestation.simulated_gpu = true is refused in production: simulated GPU evidence is not backed by any GPU".into());
            }
            if self.worker_tee == WorkerTeeMode::Simulated {
                errs.push("attestation.worker_tee = \"simulated\" is refused in production: simulated evidence is not backed by any hardware".into());
            }
        }
        if self.policy.max_evidence_age_secs == 0 {
            errs.push("attestation.policy.max_evidence_age_secs must be > 0".into());
        }
        if self.collateral.enabled {
            errs.extend(self.collateral.validate("attestation.collateral"));
        }
        if self.policy.cache_ttl_secs < 60 {
            errs.push(format!(
                "attestation.policy.cache_ttl_secs must be >= 60 (workers re-attest at 3/4 of it), got {}",
                self.policy.cache_ttl_secs
            ));
        }
        errs
    }

    /// The collateral service (none when `collateral.enabled = false`), its disk cache under
    /// `data_dir` unless configured, shared with other replicas through `shared`.
    pub fn collateral_service(
        &self,
        data_dir: &Path,
        shared: Option<Arc<dyn SharedCollateral>>,
    ) -> anyhow::Result<Option<Arc<CollateralService>>> {
        if !self.collateral.enabled {
            return Ok(None);
        }
        let mut cfg = self.collateral.clone();
        cfg.cache_dir.get_or_insert_with(|| data_dir.join("collateral"));
        let mut svc = CollateralService::new(cfg).map_err(anyhow::Error::msg).context("starting the collateral service")?;
        if let Some(shared) = shared {
            svc = svc.with_shared(shared);
        }
        Ok(Some(Arc::new(svc)))
    }

    /// The router's admission: policy, collateral, nonces (`nonces`, shared by replicas, or
    /// in memory) and sealing; collateral from `collateral` when given.
    pub fn attestor_with(
        &self,
        nonces: Option<Arc<dyn NonceStore>>,
        collateral: Option<Arc<CollateralService>>,
    ) -> anyhow::Result<Arc<Attestor>> {
        let attestor = self.build_attestor(nonces)?;
        Ok(Arc::new(match collateral {
            Some(c) => attestor.with_collateral(c),
            None => attestor,
        }))
    }

    /// The router's admission: policy, collateral file, nonces (`nonces`, shared by replicas,
    /// or in memory) and sealing.
    pub fn attestor(&self, nonces: Option<Arc<dyn NonceStore>>) -> anyhow::Result<Arc<Attestor>> {
        self.build_attestor(nonces).map(Arc::new)
    }

    fn build_attestor(&self, nonces: Option<Arc<dyn NonceStore>>) -> anyhow::Result<Attestor> {
        let mut verifier = Verifier::new(self.policy.clone());
        if self.collateral_file.is_some() && self.collateral.enabled {
            tracing::warn!("attestation.collateral_file is ignored while attestation.collateral.enabled = true (collateral is fetched and refreshed instead)");
        }
        if let Some(path) = self.collateral_file.as_ref().filter(|_| !self.collateral.enabled) {
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
        Ok(Attestor::new(
            verifier,
            nonces.unwrap_or_else(|| Arc::new(MemoryNonceStore::new())),
            self.seal_jobs,
        ))
    }

    /// Re-reads `[attestation.policy]` from the config file (and the environment) and applies
    /// it to `attestor`: how a TCB recovery raises `min_tcb_evaluation_data_number` without a
    /// restart. A config that does not validate is refused and the policy in force stays.
    /// With the policy registry in force (`chain`), the file's policy becomes the base
    /// under the registry's rules, which stay.
    pub fn reload_policy(
        path: Option<&Path>,
        production: bool,
        attestor: &Attestor,
        chain: Option<&crate::registry::ChainPolicy>,
    ) -> anyhow::Result<()> {
        let mut cfg = crate::config::Config::from_env_and_file(path, crate::config::Role::Gateway)?;
        if production {
            cfg.environment = crate::config::Environment::Production;
            cfg.validate()?;
        }
        match chain {
            Some(c) => c.set_base(cfg.attestation.policy)?,
            None => attestor.set_policy(cfg.attestation.policy),
        }
        Ok(())
    }

    /// On SIGHUP, [`Self::reload_policy`] into `router`'s attestor, until `stop`.
    pub fn spawn_policy_reload(
        config_path: Option<PathBuf>,
        production: bool,
        router: router::Router,
        chain: Option<Arc<crate::registry::ChainPolicy>>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        #[cfg(unix)]
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP: the attestation policy reloads only with a restart");
                return;
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                match Self::reload_policy(config_path.as_deref(), production, router.attestor(), chain.as_deref()) {
                    Ok(()) => tracing::info!("SIGHUP: attestation policy reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is refused; the policy in force stays"),
                }
            }
        });
        #[cfg(not(unix))]
        let _ = (config_path, production, router, chain, stop);
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
