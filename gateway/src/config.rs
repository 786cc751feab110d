use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jwt::JwtConfig;
use crate::ratelimit::Limits;

/// End-to-end sealed requests (docs/e2e.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2eMode {
    /// Refuse sealed requests.
    Off,
    /// Accept sealed and clear requests.
    #[default]
    Allow,
    /// Accept only sealed requests: the gateway never receives a prompt in clear.
    Require,
}

/// `[gateway]` in cocoon.toml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: String,
    /// Request bodies above this many bytes get 413.
    pub max_body_bytes: usize,
    /// Concurrent inference requests (streams included) before new ones get an immediate 503.
    pub max_in_flight: usize,
    /// Shared rate-limit state for several gateway replicas; in-memory when unset.
    pub redis_url: Option<String>,
    /// The `keys.json` older versions kept API key hashes in (default `<data_dir>/keys.json`):
    /// imported into the database at start if present (keys already there are left alone).
    /// Keys now live in the ledger's database.
    pub keys_file: Option<PathBuf>,
    /// How often each gateway re-reads changed API keys from the database: a key revoked on
    /// any replica or by the CLI stops working everywhere within about this long.
    pub keys_poll_ms: u64,
    /// Limits for keys and tokens that carry none of their own.
    pub default_limits: Limits,
    /// Per-choice generation cap for a chat request that sets none: the hold covers it and
    /// the engine is sent it, so no generation runs past what was reserved. (Text
    /// completions default to 16, as OpenAI's API does.)
    pub default_max_tokens: u64,
    /// On SIGTERM, how long in-flight streams may run before the process exits anyway.
    pub drain_timeout_ms: u64,
    /// Serve requests when the rate-limit store (Redis) is down, rather than refusing them
    /// (503 with `Retry-After`). Off by default: limits that fail open are not limits.
    pub rate_limit_fail_open: bool,
    /// Streams: an SSE comment (`: keep-alive`) after this long without a byte (queued, in
    /// prefill, or a slow engine), so clients and proxies see the stream is alive. SDKs
    /// ignore comments.
    pub sse_keepalive_ms: u64,
    /// A request body must arrive within this long of its headers (408 otherwise).
    pub body_read_timeout_ms: u64,
    /// A client must send a request's headers within this long of connecting or of its
    /// previous request (the connection is closed otherwise).
    pub header_read_timeout_ms: u64,
    /// Where `/metrics` (Prometheus) is served: its own listener, loopback by default, so
    /// it is not public. Unset: no metrics endpoint.
    pub metrics_listen: Option<String>,
    /// Fresh attestation reports (with a client nonce) per client address per minute.
    pub attestation_reports_per_minute: u64,
    /// Reports without a nonce are served from evidence at most this old.
    pub attestation_cache_secs: u64,
    /// End-to-end sealed requests: `off`, `allow` or `require`.
    pub e2e: E2eMode,
    pub jwt: Option<JwtConfig>,
    /// Benchmarks only: skip authentication and bill every request to the account
    /// [`crate::auth::ANONYMOUS_ACCOUNT`] under `default_limits`, so the cost of auth can be
    /// measured. Refused when `environment = "production"`; logged loudly at start.
    pub insecure_disable_auth: bool,
    pub dashboard: crate::dashboard::DashboardConfig,
    pub cors: crate::dashboard::CorsConfig,
    /// Stored Responses API objects (`store: true`, `previous_response_id`).
    pub responses: crate::stored::StoreConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_in_flight: 4096,
            redis_url: None,
            keys_file: None,
            keys_poll_ms: 250,
            default_limits: Limits {
                requests_per_minute: 600,
                tokens_per_minute: 2_000_000,
            },
            default_max_tokens: 4096,
            drain_timeout_ms: 30_000,
            rate_limit_fail_open: false,
            sse_keepalive_ms: 3_000,
            body_read_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
            metrics_listen: Some("127.0.0.1:9464".into()),
            attestation_reports_per_minute: 30,
            attestation_cache_secs: 60,
            e2e: E2eMode::Allow,
            jwt: None,
            insecure_disable_auth: false,
            dashboard: crate::dashboard::DashboardConfig::default(),
            cors: crate::dashboard::CorsConfig::default(),
            responses: crate::stored::StoreConfig::default(),
        }
    }
}

impl GatewayConfig {
    pub fn keys_poll_interval(&self) -> Duration {
        Duration::from_millis(self.keys_poll_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The generation cap for a request to `endpoint` that sets none.
    pub fn default_cap(&self, endpoint: protocol::Endpoint) -> u64 {
        match endpoint {
            // OpenAI's documented default for /v1/completions (vLLM's too).
            protocol::Endpoint::Completions => 16,
            _ => self.default_max_tokens,
        }
    }

    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_millis(self.sse_keepalive_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("gateway.listen {:?} is not an address like 127.0.0.1:8080 ({e})", self.listen))
    }

    /// One message per mistake, naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = self.listen_addr() {
            errs.push(e);
        }
        if self.max_body_bytes < 1024 {
            errs.push(format!(
                "gateway.max_body_bytes must be at least 1024, got {}",
                self.max_body_bytes
            ));
        }
        if !(1..=10_000_000).contains(&self.default_max_tokens) {
            errs.push(format!("gateway.default_max_tokens must be in 1..=10000000, got {}", self.default_max_tokens));
        }
        for (k, v) in [
            ("sse_keepalive_ms", self.sse_keepalive_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
        ] {
            if v < 10 {
                errs.push(format!("gateway.{k} must be at least 10 ms, got {v}"));
            }
        }
        errs.extend(self.responses.validate());
        if let Some(m) = &self.metrics_listen {
            if m.parse::<SocketAddr>().is_err() {
                errs.push(format!("gateway.metrics_listen {m:?} is not an address like 127.0.0.1:9464"));
            }
        }
        if self.max_in_flight == 0 {
            errs.push("gateway.max_in_flight must be > 0".into());
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                errs.push(format!(
                    "gateway.redis_url must start with redis://, rediss:// or unix://, got {url:?}"
                ));
            }
        }
        if !(10..=60_000).contains(&self.keys_poll_ms) {
            errs.push(format!("gateway.keys_poll_ms must be within 10..=60000, got {}", self.keys_poll_ms));
        }
        errs.extend(self.dashboard.validate());
        errs.extend(self.cors.validate());
        if let Some(jwt) = &self.jwt {
            if jwt.secret.len() < 32 {
                errs.push("gateway.jwt.secret must be at least 32 bytes".into());
            }
            if jwt.issuer.is_empty() {
                errs.push("gateway.jwt.issuer must not be empty".into());
            }
            if jwt.audience.is_empty() {
                errs.push("gateway.jwt.audience must not be empty".into());
            }
        }
        errs
    }
}
