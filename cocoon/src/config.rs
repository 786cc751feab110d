//! cocoon.toml: one file for every role, each section owned by its crate; then environment
//! overrides `COCOON__SECTION__KEY=value` (e.g. `COCOON__GATEWAY__LISTEN=0.0.0.0:8080`); then
//! validation that reports every mistake at once, one line each, naming the key.

use std::path::{Path, PathBuf};

use gateway::GatewayConfig;
use router::RouterConfig;
use serde::{Deserialize, Serialize};
use worker_agent::WorkerConfig;

pub use crate::engine::{EngineKind, EngineSection};

pub const ENV_PREFIX: &str = "COCOON__";

/// Production refuses every dev-only part (simulated TEE, jobs in clear, disabled auth, the
/// test engine, seconds-long hold TTLs). It is the default for every command but
/// `cocoon dev`: development behaviour must be asked for, and is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    #[default]
    Production,
}

/// Whether the ledger batches holds and captures into shared transactions.
/// `auto` batches every call on SQLite, where one writer pays one fsync per commit and
/// batching measured 8.9x the holds/s. On Postgres it batches only the calls on a client
/// account with two other calls in flight (`LedgerOptions::batch_only_contended`): calls on
/// different accounts run in parallel there and batching them all measured 0.35-0.56x the
/// holds/s, while calls on one hot account queue on its row lock commit by commit and
/// batching them measured 1.7x (BENCHMARKS.md). `on` batches every call, `off` none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupCommit {
    #[default]
    Auto,
    On,
    Off,
}

impl GroupCommit {
    pub fn enabled(self) -> bool {
        self != GroupCommit::Off
    }

    /// Batch only calls on a contended account (`auto` on Postgres).
    pub fn only_contended_for(self, url: &str) -> bool {
        self == GroupCommit::Auto && !url.starts_with("sqlite:")
    }
}

/// Which command reads the configuration: it sets the default environment and which
/// sections must be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// `cocoon dev`: development unless the configuration says otherwise.
    Dev,
    /// `cocoon gateway`: production unless set; runs no engine.
    Gateway,
    /// `cocoon worker`: production unless set.
    Worker,
    /// Every other command (keys, ledger, …): production unless set; runs no engine.
    #[default]
    Tool,
}

impl Role {
    pub fn default_environment(self) -> Environment {
        match self {
            Role::Dev => Environment::Development,
            _ => Environment::Production,
        }
    }

    fn runs_engine(self) -> bool {
        matches!(self, Role::Dev | Role::Worker)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub environment: Environment,
    /// The command this configuration was loaded for (not a key).
    #[serde(skip)]
    pub role: Role,
    /// Keys, dev state and (later) the embedded ledger live here.
    pub data_dir: PathBuf,
    /// tracing filter, e.g. "info" or "gateway=debug,info".
    pub log: String,
    pub gateway: GatewayConfig,
    pub router: RouterConfig,
    pub worker: WorkerConfig,
    pub engine: EngineSection,
    pub billing: BillingSection,
    pub attestation: crate::attest::AttestationSection,
    /// Deposits in and worker payouts out on TON (off by default).
    pub ton: ton::TonConfig,
}

/// `[billing]`: the ledger behind the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSection {
    /// Charge for requests at all. Off serves without holds or captures.
    pub enabled: bool,
    /// `postgres://…` (production) or `sqlite:path` (embedded); default `sqlite:<data_dir>/ledger.db`.
    pub database_url: Option<String>,
    /// Network fee, basis points of each charge.
    pub fee_bps: u32,
    /// A hold not settled by then is released by the reaper (must outlast the longest request).
    pub hold_ttl_secs: u64,
    pub reap_interval_secs: u64,
    /// Group commit of holds and captures: the calls that arrive while a ledger commit is in
    /// flight share the next transaction (one fsync for many requests). See [`GroupCommit`].
    pub group_commit: GroupCommit,
    /// With group commit, how long a batch waits for more calls after its first (µs); 0
    /// waits for none. Bounds the extra delay an answer can get from batching.
    pub commit_window_us: u64,
    /// How long a ledger call waits for a database connection. Past it, a request gets 503
    /// `billing_unavailable` (with `Retry-After`) before anything runs, and a capture goes
    /// to the capture outbox: a database that is down answers fast instead of holding every
    /// request for sqlx's 30 s default.
    pub db_timeout_ms: u64,
    /// `cocoon dev` only: nanoTON credited to the dev account at start (once per data dir),
    /// and the price set for the dev models that have none (nanoTON per 1M tokens).
    pub dev_credit_nanoton: i64,
    pub dev_price_per_million: i64,
}

impl Default for BillingSection {
    fn default() -> Self {
        Self {
            enabled: true,
            database_url: None,
            fee_bps: 500,
            hold_ttl_secs: 7200,
            reap_interval_secs: 30,
            group_commit: GroupCommit::Auto,
            commit_window_us: 0,
            db_timeout_ms: 5_000,
            dev_credit_nanoton: 1_000_000_000_000,
            dev_price_per_million: 100_000_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            environment: Environment::Production,
            role: Role::Tool,
            data_dir: PathBuf::from(".cocoon"),
            log: "info".into(),
            gateway: GatewayConfig::default(),
            router: RouterConfig::default(),
            worker: WorkerConfig::default(),
            engine: EngineSection::default(),
            billing: BillingSection::default(),
            attestation: crate::attest::AttestationSection::default(),
            ton: ton::TonConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Field { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Env values are read as TOML scalars/arrays when they parse as such, else as strings.
fn env_value(raw: &str) -> toml::Value {
    let parsed: Result<toml::Table, _> = format!("v = {raw}").parse();
    match parsed.ok().and_then(|mut t| t.remove("v")) {
        Some(v) => v,
        None => toml::Value::String(raw.to_string()),
    }
}

fn apply_env(table: &mut toml::Table, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty path segment (use COCOON__SECTION__KEY)".into(),
            });
        }
        let mut cur = &mut *table;
        for seg in &path[..path.len() - 1] {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{seg}` is not a section"),
                    })
                }
            };
        }
        if let Some(last) = path.last() {
            cur.insert(last.clone(), env_value(&raw));
        }
    }
    Ok(())
}

impl Config {
    /// File (optional) + environment overrides + validation, for a command that runs no
    /// engine (production unless set).
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::load_for(path, env, Role::Tool)
    }

    /// As [`Config::load`], for `role`: its default environment applies when neither the
    /// file nor the environment sets one.
    pub fn load_for(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        role: Role,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        if !table.contains_key("environment") {
            let name = match role.default_environment() {
                Environment::Development => "development",
                Environment::Production => "production",
            };
            table.insert("environment".into(), toml::Value::String(name.into()));
        }
        if role == Role::Dev {
            // Several dev networks (and test runs) share a machine: an ephemeral port,
            // printed at start and written to dev.json, unless one is configured.
            let gw = table.entry("gateway").or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(gw) = gw {
                gw.entry("metrics_listen").or_insert_with(|| toml::Value::String("127.0.0.1:0".into()));
            }
        }
        let mut cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            ConfigError::Field {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            }
        })?;
        cfg.role = role;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_env_and_file(path: Option<&Path>, role: Role) -> Result<Self, ConfigError> {
        Self::load_for(path, std::env::vars(), role)
    }

    /// The worker's TEE, with its identity key kept in `<data_dir>/worker-identity.key` so a
    /// restarted worker keeps its identity (and with it its worker id and earnings), and every
    /// receipt it signs appended to `<data_dir>/receipts.log` (its proof of what it served).
    pub fn worker_tee(&self) -> anyhow::Result<worker_agent::WorkerTee> {
        let tee = self.attestation.worker_tee(self.is_production())?;
        let path = self.data_dir.join("worker-identity.key");
        let identity = attestation::receipt::IdentityKey::load_or_create(&path)?;
        // Built with `nvidia`: the worker attests its GPU too, or refuses to start saying why.
        #[cfg(feature = "nvidia")]
        let tee = tee.with_gpu(std::sync::Arc::new(worker_agent::gpu::nvml::Nvml::init()?));
        // A simulated CPU TEE may carry a simulated GPU (flagged as such), so dev networks
        // exercise the GPU path end to end.
        #[cfg(not(feature = "nvidia"))]
        let tee = if tee.is_insecure_simulated() && self.attestation.simulated_gpu == Some(true) {
            let gpu = worker_agent::gpu::SimulatedNvml::generate().map_err(|e| anyhow::anyhow!("simulated GPU: {e}"))?;
            tee.with_gpu(std::sync::Arc::new(gpu))
        } else {
            tee
        };
        let log_path = self.data_dir.join("receipts.log");
        let log = worker_agent::ReceiptLog::open(&log_path)
            .map_err(|e| anyhow::anyhow!("opening the worker's receipt log {}: {e}", log_path.display()))?;
        Ok(tee.with_identity(identity).with_receipt_log(log))
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        errs.extend(self.gateway.validate());
        errs.extend(self.router.validate());
        errs.extend(self.worker.validate());
        errs.extend(self.attestation.validate(self.environment == Environment::Production));
        errs.extend(self.attestation.registry.validate(self.attestation.policy_source, self.ton.network));
        if self.ton.enabled {
            errs.extend(self.ton.validate().into_iter().map(|e| format!("ton: {e}")));
            if !self.billing.enabled {
                errs.push("ton.enabled needs billing.enabled (deposits and payouts live in the ledger)".into());
            }
        }
        if self.role.runs_engine() {
            errs.extend(self.engine.validate_with_worker(self.worker.slots, self.environment == Environment::Production));
        }
        if self.environment == Environment::Production && self.gateway.insecure_disable_auth {
            errs.push("gateway.insecure_disable_auth serves without authentication and is refused when environment = \"production\"".into());
        }
        if self.billing.fee_bps > 10_000 {
            errs.push(format!("billing.fee_bps must be <= 10000, got {}", self.billing.fee_bps));
        }
        // Seconds-long TTLs exist for crash tests; in production a hold must outlast the
        // longest request (a hold reaped before its capture leaves the request unpaid).
        let min_ttl = if self.environment == Environment::Production { 60 } else { 1 };
        if self.billing.hold_ttl_secs < min_ttl {
            errs.push(format!(
                "billing.hold_ttl_secs must be >= {min_ttl}, got {}",
                self.billing.hold_ttl_secs
            ));
        }
        if self.billing.commit_window_us > 10_000 {
            errs.push(format!(
                "billing.commit_window_us must be <= 10000 (it delays every ledger answer by up to that), got {}",
                self.billing.commit_window_us
            ));
        }
        if !(100..=60_000).contains(&self.billing.db_timeout_ms) {
            errs.push(format!("billing.db_timeout_ms must be in 100..=60000, got {}", self.billing.db_timeout_ms));
        }
        if let Some(u) = &self.billing.database_url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://") || u.starts_with("sqlite:")) {
                errs.push(format!("billing.database_url must be postgres://… or sqlite:…, got {u:?}"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    pub fn ledger_url(&self) -> String {
        self.billing
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("ledger.db").display()))
    }

    pub fn keys_file(&self) -> PathBuf {
        self.gateway
            .keys_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys.json"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn example_config_is_valid() {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../cocoon.example.toml"));
        Config::load(Some(p), no_env()).unwrap();
    }

    /// Every key that has a default appears in cocoon.example.toml with exactly that default
    /// (commented-out keys are the optional ones without a default), so the file cannot
    /// drift from the types again.
    #[test]
    fn example_lists_every_key_with_its_default() {
        fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, toml::Value>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        flatten(&p, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_string(), other.clone());
                }
            }
        }
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../cocoon.example.toml")).unwrap();
        let example: toml::Value = text.parse::<toml::Table>().map(toml::Value::Table).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut ex, mut def) = (Default::default(), Default::default());
        flatten("", &example, &mut ex);
        flatten("", &defaults, &mut def);
        let missing: Vec<&String> = def.keys().filter(|k| !ex.contains_key(*k)).collect();
        assert!(missing.is_empty(), "keys with a default missing from cocoon.example.toml: {missing:?}");
        let differ: Vec<String> = ex
            .iter()
            .filter_map(|(k, v)| match def.get(k) {
                Some(d) if d != v => Some(format!("{k}: example {v}, default {d}")),
                None => Some(format!("{k}: in the example but not a key with a default")),
                _ => None,
            })
            .collect();
        assert!(differ.is_empty(), "cocoon.example.toml disagrees with the defaults:\n{}", differ.join("\n"));
    }

    #[test]
    fn defaults_are_valid_and_production_but_for_cocoon_dev() {
        let gw = Config::load_for(None, no_env(), Role::Gateway).unwrap();
        assert_eq!(gw.environment, Environment::Production);
        assert_eq!(Config::load(None, no_env()).unwrap().environment, Environment::Production);
        let dev = Config::load_for(None, no_env(), Role::Dev).unwrap();
        assert_eq!(dev.environment, Environment::Development);
        // A worker must name its engine in production: the default picks a dev engine.
        let e = Config::load_for(None, no_env(), Role::Worker).unwrap_err().to_string();
        assert!(e.contains("engine.kind"), "{e}");
        let w = Config::load_for(None, vec![("COCOON__ENVIRONMENT".into(), "development".into())], Role::Worker).unwrap();
        assert_eq!(w.environment, Environment::Development);
    }

    #[test]
    fn file_then_env_overrides() {
        let f = file("[gateway]\nlisten = \"127.0.0.1:9000\"\nmax_in_flight = 10\n");
        let cfg = Config::load(
            Some(f.path()),
            vec![
                ("COCOON__GATEWAY__MAX_IN_FLIGHT".into(), "77".into()),
                ("COCOON__GATEWAY__REDIS_URL".into(), "redis://127.0.0.1:6379".into()),
                ("COCOON__ENGINE__MODELS".into(), "[\"a\", \"b\"]".into()),
                ("UNRELATED".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.gateway.listen, "127.0.0.1:9000");
        assert_eq!(cfg.gateway.max_in_flight, 77);
        assert_eq!(cfg.gateway.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(cfg.engine.models, vec!["a", "b"]);
    }

    #[test]
    fn unknown_key_is_named() {
        let f = file("[gateway]\nlisen = \"x\"\n");
        let e = Config::load(Some(f.path()), no_env()).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let f = file("[router]\nmax_attempts = \"three\"\n");
        let e = Config::load(Some(f.path()), no_env()).unwrap_err().to_string();
        assert!(e.contains("router.max_attempts"), "{e}");
    }

    #[test]
    fn broken_toml_names_the_file_and_line() {
        let f = file("[gateway\n");
        let e = Config::load(Some(f.path()), no_env()).unwrap_err().to_string();
        assert!(e.contains("not valid TOML") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn every_mistake_is_reported_once() {
        let f = file(
            "environment = \"production\"\n[gateway]\nlisten = \"nope\"\nmax_in_flight = 0\nredis_url = \"http://x\"\n[worker]\nslots = 0\nprice_coefficient = 9000\n[router]\nmax_attempts = 0\n",
        );
        let e = Config::load_for(Some(f.path()), no_env(), Role::Dev).unwrap_err();
        let ConfigError::Invalid(list) = e else { panic!("{e}") };
        let joined = list.join("\n");
        for needle in [
            "gateway.listen",
            "gateway.max_in_flight",
            "gateway.redis_url",
            "worker.slots",
            "worker.price_coefficient",
            "router.max_attempts",
            "production",
        ] {
            assert_eq!(list.iter().filter(|l| l.contains(needle)).count(), 1, "{needle} in:\n{joined}");
        }
    }

    #[test]
    fn disabling_auth_is_refused_in_production() {
        let env = |prod: bool| {
            let mut v = vec![("COCOON__GATEWAY__INSECURE_DISABLE_AUTH".to_string(), "true".to_string())];
            v.push(("COCOON__ENVIRONMENT".into(), if prod { "production" } else { "development" }.into()));
            v
        };
        assert!(Config::load(None, env(false)).unwrap().gateway.insecure_disable_auth);
        let e = Config::load(None, env(true)).unwrap_err().to_string();
        assert!(e.contains("gateway.insecure_disable_auth"), "{e}");
    }

    #[test]
    fn short_hold_ttls_only_outside_production() {
        let env = |prod: bool| {
            let mut v = vec![("COCOON__BILLING__HOLD_TTL_SECS".to_string(), "5".to_string())];
            v.push(("COCOON__ENVIRONMENT".into(), if prod { "production" } else { "development" }.into()));
            v
        };
        assert_eq!(Config::load(None, env(false)).unwrap().billing.hold_ttl_secs, 5);
        let e = Config::load(None, env(true)).unwrap_err().to_string();
        assert!(e.contains("billing.hold_ttl_secs must be >= 60"), "{e}");
    }

    #[test]
    fn env_with_a_bad_path_is_refused() {
        let e = Config::load(None, vec![("COCOON__GATEWAY____X".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("COCOON__GATEWAY____X"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load(Some(Path::new("/nonexistent/cocoon.toml")), no_env()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cocoon.toml"), "{e}");
    }
}
