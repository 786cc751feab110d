//! `cocoon dev`: the whole network on one machine. Gateway + router + one worker-agent + an
//! engine (the built-in test engine unless configured otherwise), all in one process, talking
//! over loopback HTTP exactly as separate processes would at the gateway and engine edges.
//! With `router.worker_listen` set, networked workers (`cocoon worker`) can join it too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use router::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EngineKind};
use crate::engine::InstalledEngine;
use crate::roles;

/// Name of the API key `cocoon dev` creates at each start (older ones are revoked).
pub const DEV_KEY_NAME: &str = "dev";
/// The account the dev key bills.
pub const DEV_ACCOUNT: &str = "dev";

/// Dev only: a price for every served model that has none, and one initial credit of the
/// dev account (idempotent by key, so restarts do not mint more).
async fn seed_dev_ledger(ledger: &billing::Ledger, cfg: &Config, models: &[String]) -> anyhow::Result<()> {
    let p = cfg.billing.dev_price_per_million;
    for m in models {
        if ledger.price(m).await?.is_none() {
            ledger
                .set_price(m, billing::Price { prompt: p, cached_prompt: p / 2, completion: p, reasoning: p })
                .await?;
        }
    }
    let acct = ledger.ensure_account(billing::AccountKind::Client, DEV_ACCOUNT).await?;
    if cfg.billing.dev_credit_nanoton > 0 {
        ledger
            .credit(acct, cfg.billing.dev_credit_nanoton, "cocoon-dev-initial-credit", "cocoon dev starting balance")
            .await?;
    }
    Ok(())
}

pub struct DevNetwork {
    /// OpenAI SDK base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub gateway_addr: SocketAddr,
    /// The engine's own URL (for tests and benchmarks that talk to it direct).
    pub engine_url: String,
    /// A ready key for this run.
    pub api_key: String,
    pub engine: Option<Arc<test_engine::TestEngine>>,
    /// Which engine serves (said at start): the built-in test engine or a real one.
    pub engine_description: String,
    /// The gateway's `/metrics`, when `gateway.metrics_listen` is set.
    pub gateway_metrics_addr: Option<SocketAddr>,
    /// The worker's `/metrics`, when `worker.metrics_listen` is set.
    pub worker_metrics_addr: Option<SocketAddr>,
    pub router: Router,
    /// Set when `router.worker_listen` is: where networked workers connect, and the pin.
    pub worker_listener: Option<(SocketAddr, String)>,
    pub state_file: PathBuf,
    /// The ledger behind the gateway, when billing is enabled.
    pub ledger: Option<billing::Ledger>,
    /// The gateway's API keys (in its database).
    pub keys: std::sync::Arc<gateway::keys::KeyStore>,
    shutdown: CancellationToken,
    worker_shutdown: CancellationToken,
    gateway_task: JoinHandle<std::io::Result<()>>,
    worker_task: JoinHandle<()>,
    listener_task: Option<JoinHandle<()>>,
    engine_handle: roles::EngineHandle,
}

impl DevNetwork {
    pub async fn start(mut cfg: Config) -> anyhow::Result<Self> {
        // The dev network runs its worker in the simulated TEE (unless this machine is a real
        // confidential VM) and so must admit it; production config can never get here.
        anyhow::ensure!(
            cfg.environment != crate::config::Environment::Production,
            "cocoon dev runs the insecure simulated TEE and refuses environment = \"production\""
        );
        cfg.attestation.policy.allow_insecure_simulated_tee = true;
        cfg.attestation.simulated_gpu.get_or_insert(true);
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let shutdown = CancellationToken::new();
        let worker_shutdown = CancellationToken::new();

        // `auto`: the real engine when scripts/install-engine has installed it.
        if cfg.engine.kind == EngineKind::Auto && InstalledEngine::find().is_some() {
            cfg.engine.kind = EngineKind::LlamaServer;
        }
        let engine = roles::start_engine(&cfg, worker_shutdown.clone()).await?;

        // Router and the worker next to the engine, linked in-process.
        let router = crate::routing::start_router(&cfg, worker_shutdown.clone()).await?;
        // `policy_source = "chain"`: the registry's rules are in force before the worker joins.
        let chain = crate::registry::ChainPolicy::start(&cfg, router.clone(), worker_shutdown.clone()).await?;
        let agent = engine.agent(cfg.worker.clone(), cfg.worker_tee()?)?;
        let worker_metrics_addr = match &cfg.worker.metrics_listen {
            Some(listen) => Some(
                worker_agent::metrics::spawn(listen, agent.engine().metrics().clone(), cfg.worker.worker_id.clone(), worker_shutdown.clone())
                    .await
                    .with_context(|| format!("binding worker.metrics_listen {listen}"))?
                    .0,
            ),
            None => None,
        };
        let worker_task = crate::link::attach_local_worker(
            &router,
            agent,
            worker_shutdown.clone(),
            Duration::from_secs(60),
        )
        .await
        .context("starting the worker-agent")?;
        let listener = roles::start_worker_listener(&cfg, router.clone(), worker_shutdown.clone()).await?;

        let gw = roles::start_gateway(&cfg, router.clone(), shutdown.clone()).await?;
        for old in gw
            .keys
            .list(Some(DEV_ACCOUNT))
            .await?
            .into_iter()
            .filter(|k| k.name == DEV_KEY_NAME && matches!(k.created_by.as_str(), "dev" | "import") && !k.revoked)
        {
            gw.keys.revoke(&old.id, None).await?;
        }
        let api_key = gw.keys.create_by(DEV_KEY_NAME, DEV_ACCOUNT, None, "dev").await?.key;
        if let (Some(c), Some(m)) = (&chain, &gw.meter) {
            c.attach_ledger(m.ledger().clone()).await?;
        }
        if let Some(meter) = &gw.meter {
            seed_dev_ledger(meter.ledger(), &cfg, &router.models().iter().map(|m| m.id.clone()).collect::<Vec<_>>()).await?;
        }

        let base_url = format!("http://{}/v1", gw.addr);
        let state_file = cfg.data_dir.join("dev.json");
        write_private(
            &state_file,
            &serde_json::to_vec_pretty(&serde_json::json!({
                "base_url": base_url,
                "api_key": api_key,
                "engine_url": engine.url,
                "metrics_url": gw.metrics_addr.map(|a| format!("http://{a}/metrics")),
                "models": router.models().iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                "worker_url": listener.as_ref().map(|l| format!("wss://{}/v1/worker", l.addr)),
                "router_cert_sha256": listener.as_ref().map(|l| l.cert_sha256.clone()),
            }))?,
        )?;
        Ok(Self {
            base_url,
            gateway_addr: gw.addr,
            gateway_metrics_addr: gw.metrics_addr,
            engine_url: engine.url.clone(),
            api_key,
            engine: engine.engine.clone(),
            engine_description: engine.description.clone(),
            worker_metrics_addr,
            router,
            worker_listener: listener.as_ref().map(|l| (l.addr, l.cert_sha256.clone())),
            state_file,
            ledger: gw.meter.as_ref().map(|m| m.ledger().clone()),
            keys: gw.keys.clone(),
            shutdown,
            worker_shutdown,
            gateway_task: gw.task,
            worker_task,
            listener_task: listener.map(|l| l.task),
            engine_handle: engine,
        })
    }

    /// Process group of the supervised engine's current process (tests kill it to simulate
    /// a crash), if the engine is a child process.
    pub fn engine_pgid(&self) -> Option<i32> {
        self.engine_handle.supervisor.as_ref().and_then(|s| s.pgid())
    }

    /// Drains the gateway (in-flight streams finish), then stops the worker and the engine.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        match self.gateway_task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "gateway stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "gateway task failed"),
            Ok(Ok(())) => {}
        }
        self.worker_shutdown.cancel();
        let _ = self.worker_task.await;
        if let Some(t) = self.listener_task {
            let _ = t.await;
        }
        self.engine_handle.stop().await;
        let _ = std::fs::remove_file(&self.state_file);
    }
}

pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}
