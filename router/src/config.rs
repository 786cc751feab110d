use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Router tuning. All durations in milliseconds in config files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Streams: give up on a worker that has sent no event for this long after taking the
    /// job (prefill included) and retry elsewhere.
    pub first_token_timeout_ms: u64,
    /// Non-streaming requests: the whole answer's bound (a long generation on a large model
    /// takes minutes; it is not held to the first-token timeout).
    pub non_stream_timeout_ms: u64,
    /// How long a request may wait in its model's queue for a free slot before it gets 503
    /// with `Retry-After`.
    pub queue_timeout_ms: u64,
    /// Requests that may wait per model on this replica; beyond it, 503 with `Retry-After`
    /// at once.
    pub max_queued_per_model: usize,
    /// Workers tried per job, the first included.
    pub max_attempts: u32,
    /// Consecutive failures that open a worker's circuit.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit stays open before one probe job is let through.
    pub circuit_open_ms: u64,
    /// Messages buffered towards one worker before it counts as unable to take jobs.
    pub worker_queue: usize,
    /// Where networked workers connect (TLS + WebSocket); none = only in-process workers.
    pub worker_listen: Option<String>,
    /// PEM certificate and key for the worker listener; a self-signed pair is generated
    /// at start when unset (workers pin its fingerprint, printed at start).
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// A worker silent for this long (no load report, no event) is dropped.
    pub worker_liveness_ms: u64,
    /// Share the worker registry, load and attestation nonces with other gateway replicas
    /// through this Redis (e.g. `redis://127.0.0.1:6379/`); unset = in-process only.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (one per network).
    pub redis_prefix: String,
    /// This replica's name in the shared registry; default: a random id per start.
    pub instance_id: Option<String>,
    /// How often the replica publishes its workers' load and reads the others'.
    pub fleet_sync_ms: u64,
    /// The highest price coefficient (thousandths) a worker may declare; a worker above it
    /// is refused at admission, whatever its clients would accept.
    pub max_price_coefficient: u32,
    /// Worker connections that have not been admitted yet (TLS, WebSocket, challenge and
    /// verification in progress); beyond it new connections are closed at once, so a flood
    /// cannot crowd out the workers that attest.
    pub max_unattested_links: usize,
    /// Bytes a connection may send before it is admitted (its hello with evidence fits
    /// many times over); a connection past it is closed.
    pub pre_auth_bytes: u64,
    /// How long a worker has to answer a challenge with its evidence. Sized from the slowest
    /// real producer: an SEV-SNP guest whose host throttles report requests retries for up
    /// to 60 s (sev-guest driver), a TDX GetQuote polls for up to 30 s (tdx-guest
    /// `getquote_timeout`); the worker gives up on its own evidence at 75 s, so the router
    /// waits 90 s and a timeout here means the worker (or the network) was silent.
    pub hello_timeout_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            first_token_timeout_ms: 30_000,
            non_stream_timeout_ms: 600_000,
            queue_timeout_ms: 30_000,
            max_queued_per_model: 1024,
            max_attempts: 3,
            circuit_failure_threshold: 3,
            circuit_open_ms: 10_000,
            worker_queue: 1024,
            worker_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            worker_liveness_ms: 6_000,
            redis_url: None,
            redis_prefix: "cocoon".into(),
            instance_id: None,
            fleet_sync_ms: 200,
            max_price_coefficient: 4000,
            max_unattested_links: 64,
            pre_auth_bytes: 1 << 20,
            hello_timeout_ms: 90_000,
        }
    }
}

impl RouterConfig {
    pub fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.first_token_timeout_ms)
    }
    pub fn non_stream_timeout(&self) -> Duration {
        Duration::from_millis(self.non_stream_timeout_ms)
    }
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
    pub fn worker_liveness(&self) -> Duration {
        Duration::from_millis(self.worker_liveness_ms)
    }
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }
    pub fn circuit_open(&self) -> Duration {
        Duration::from_millis(self.circuit_open_ms)
    }

    /// One message per mistake, naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.first_token_timeout_ms == 0 {
            errs.push("router.first_token_timeout_ms must be > 0".to_string());
        }
        if self.non_stream_timeout_ms == 0 {
            errs.push("router.non_stream_timeout_ms must be > 0".to_string());
        }
        if self.max_queued_per_model == 0 {
            errs.push("router.max_queued_per_model must be > 0 (it bounds the queue; use a small number to refuse early)".to_string());
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            errs.push(format!(
                "router.max_attempts must be in 1..=10, got {}",
                self.max_attempts
            ));
        }
        if self.circuit_failure_threshold == 0 {
            errs.push("router.circuit_failure_threshold must be > 0".to_string());
        }
        if let Some(l) = &self.worker_listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                errs.push(format!("router.worker_listen {l:?} is not an address like 0.0.0.0:7443"));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            errs.push("router.tls_cert_file and router.tls_key_file must be set together".to_string());
        }
        if self.worker_liveness_ms < 100 {
            errs.push(format!("router.worker_liveness_ms must be >= 100, got {}", self.worker_liveness_ms));
        }
        if let Some(u) = &self.redis_url {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                errs.push(format!("router.redis_url must start with redis:// or rediss://, got {u:?}"));
            }
        }
        if !(20..=10_000).contains(&self.fleet_sync_ms) {
            errs.push(format!("router.fleet_sync_ms must be in 20..=10000, got {}", self.fleet_sync_ms));
        }
        if self.redis_prefix.is_empty() {
            errs.push("router.redis_prefix must not be empty".to_string());
        }
        if !(1000..=1_000_000).contains(&self.max_price_coefficient) {
            errs.push(format!("router.max_price_coefficient must be in 1000..=1000000, got {}", self.max_price_coefficient));
        }
        if self.max_unattested_links == 0 {
            errs.push("router.max_unattested_links must be > 0".to_string());
        }
        if self.pre_auth_bytes < 64 * 1024 {
            errs.push(format!("router.pre_auth_bytes must be at least 65536 (a hello with evidence), got {}", self.pre_auth_bytes));
        }
        if !(1_000..=600_000).contains(&self.hello_timeout_ms) {
            errs.push(format!("router.hello_timeout_ms must be in 1000..=600000, got {}", self.hello_timeout_ms));
        }
        if self.worker_queue == 0 {
            errs.push("router.worker_queue must be > 0".to_string());
        }
        errs
    }
}
