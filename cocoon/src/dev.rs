//! `cocoon dev`: the whole network on one machine. Gateway + router + one worker-agent + an
//! engine (the built-in test engine unless configured otherwise), all in one process, talking
//! over loopback HTTP exactly as separate processes would at the gateway and engine edges.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway::jwt::JwtAuth;
use gateway::keys::KeyStore;
use gateway::ratelimit::RateLimiter;
use router::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker_agent::WorkerAgent;

use crate::config::{Config, EngineKind};

/// Name of the API key `cocoon dev` creates at each start (older ones are revoked).
pub const DEV_KEY_NAME: &str = "dev";

pub struct DevNetwork {
    /// OpenAI SDK base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub gateway_addr: SocketAddr,
    /// The engine's own URL (for tests and benchmarks that talk to it direct).
    pub engine_url: String,
    /// A ready key for this run.
    pub api_key: String,
    pub engine: Option<Arc<test_engine::TestEngine>>,
    pub router: Router,
    pub state_file: PathBuf,
    shutdown: CancellationToken,
    worker_shutdown: CancellationToken,
    gateway_task: JoinHandle<std::io::Result<()>>,
    worker_task: JoinHandle<()>,
    engine_task: Option<JoinHandle<std::io::Result<()>>>,
}

impl DevNetwork {
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let shutdown = CancellationToken::new();
        let worker_shutdown = CancellationToken::new();

        // Engine.
        let (engine, engine_url, engine_task) = match cfg.engine.kind {
            EngineKind::Builtin => {
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
                let stop = worker_shutdown.clone();
                let task = tokio::spawn(test_engine::serve(listener, engine.clone(), async move {
                    stop.cancelled().await
                }));
                (Some(engine), format!("http://{addr}"), Some(task))
            }
            EngineKind::External => (None, cfg.worker.engine_url.clone(), None),
        };

        // Router and the worker next to the engine.
        let router = Router::new(cfg.router.clone());
        let mut wcfg = cfg.worker.clone();
        wcfg.engine_url = engine_url.clone();
        let agent = WorkerAgent::new(wcfg)?;
        let worker_task = crate::link::attach_local_worker(
            &router,
            agent,
            worker_shutdown.clone(),
            Duration::from_secs(60),
        )
        .await
        .context("starting the worker-agent")?;

        // Gateway.
        let keys = Arc::new(KeyStore::open(cfg.keys_file())?);
        for old in keys.list().into_iter().filter(|k| k.name == DEV_KEY_NAME && !k.revoked) {
            keys.revoke(&old.id)?;
        }
        let api_key = keys.create(DEV_KEY_NAME, "dev", None)?.key;
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
        let state = gateway::AppState::new(cfg.gateway.clone(), router.clone(), keys, jwt, limiter);
        let listener = TcpListener::bind(&cfg.gateway.listen)
            .await
            .with_context(|| format!("binding the gateway on {}", cfg.gateway.listen))?;
        let gateway_addr = listener.local_addr()?;
        let stop = shutdown.clone();
        let gateway_task = tokio::spawn(gateway::server::serve(
            listener,
            state,
            async move { stop.cancelled().await },
            cfg.gateway.drain_timeout(),
        ));

        let base_url = format!("http://{gateway_addr}/v1");
        let state_file = cfg.data_dir.join("dev.json");
        write_private(
            &state_file,
            &serde_json::to_vec_pretty(&serde_json::json!({
                "base_url": base_url,
                "api_key": api_key,
                "engine_url": engine_url,
                "models": cfg.engine.models,
            }))?,
        )?;
        Ok(Self {
            base_url,
            gateway_addr,
            engine_url,
            api_key,
            engine,
            router,
            state_file,
            shutdown,
            worker_shutdown,
            gateway_task,
            worker_task,
            engine_task,
        })
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
        if let Some(t) = self.engine_task {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.state_file);
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
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
