use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Worker-agent settings (`[worker]` in cocoon.toml).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub worker_id: String,
    /// Base URL of the OpenAI-compatible engine on loopback, without `/v1`.
    pub engine_url: String,
    /// GPU class advertised to the router, e.g. "H100-80GB" or "cpu".
    pub gpu: String,
    pub slots: u32,
    /// Price multiplier in thousandths (1000 = 1.0x).
    pub price_coefficient: u32,
    pub health_interval_ms: u64,
    /// How long SIGTERM waits for running jobs before aborting them.
    pub drain_timeout_ms: u64,
    /// `cocoon worker`: the router's worker endpoint, e.g. wss://router.example:7443/v1/worker.
    pub router_url: Option<String>,
    /// Hex SHA-256 of the router's TLS certificate (printed by the router at start).
    pub router_cert_sha256: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: "worker-1".to_string(),
            engine_url: "http://127.0.0.1:8000".to_string(),
            gpu: "cpu".to_string(),
            slots: 256,
            price_coefficient: 1000,
            health_interval_ms: 2_000,
            drain_timeout_ms: 30_000,
            router_url: None,
            router_cert_sha256: None,
        }
    }
}

impl WorkerConfig {
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.worker_id.trim().is_empty() {
            errs.push("worker.worker_id must not be empty".to_string());
        }
        if !(self.engine_url.starts_with("http://") || self.engine_url.starts_with("https://")) {
            errs.push(format!(
                "worker.engine_url must be an http(s) URL, got {:?}",
                self.engine_url
            ));
        }
        if let Some(u) = &self.router_url {
            if !u.starts_with("wss://") {
                errs.push(format!("worker.router_url must start with wss://, got {u:?}"));
            }
            if self.router_cert_sha256.as_ref().is_none_or(|p| p.len() != 64 || !p.chars().all(|c| c.is_ascii_hexdigit())) {
                errs.push("worker.router_cert_sha256 must be the router certificate's SHA-256 as 64 hex characters".to_string());
            }
        }
        if self.slots == 0 {
            errs.push("worker.slots must be > 0".to_string());
        }
        if !(1000..=4000).contains(&self.price_coefficient) {
            errs.push(format!(
                "worker.price_coefficient must be in 1000..=4000 (thousandths: 1.0x-4.0x), got {}",
                self.price_coefficient
            ));
        }
        errs
    }
}
