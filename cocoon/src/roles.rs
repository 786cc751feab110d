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

use crate::config::{Config, EngineKind};

pub struct EngineHandle {
    pub url: String,
    pub engine: Option<Arc<test_engine::TestEngine>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The built-in test engine on loopback, or the configured external engine's URL.
pub async fn start_engine(cfg: &Config, stop: CancellationToken) -> anyhow::Result<EngineHandle> {
    match cfg.engine.kind {
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
            let task = tokio::spawn(test_engine::serve(listener, engine.clone(), async move {
                stop.cancelled().await
            }));
            Ok(EngineHandle {
                url: format!("http://{addr}"),
                engine: Some(engine),
                task: Some(task),
            })
        }
        EngineKind::External => Ok(EngineHandle {
            url: cfg.worker.engine_url.clone(),
            engine: None,
            task: None,
        }),
    }
}

pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub keys: Arc<KeyStore>,
    pub meter: Option<Arc<crate::metering::LedgerMeter>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Opens the ledger (migrating it) when billing is enabled.
pub async fn open_ledger(cfg: &Config) -> anyhow::Result<Option<billing::Ledger>> {
    if !cfg.billing.enabled {
        return Ok(None);
    }
    let url = cfg.ledger_url();
    let opts = billing::LedgerOptions {
        fee_bps: cfg.billing.fee_bps,
        ..Default::default()
    };
    let ledger = billing::Ledger::connect(&url, opts)
        .await
        .with_context(|| format!("opening the ledger at {url}"))?;
    Ok(Some(ledger))
}

pub async fn start_gateway(cfg: &Config, router: Router, stop: CancellationToken) -> anyhow::Result<GatewayHandle> {
    let keys = Arc::new(KeyStore::open(cfg.keys_file())?);
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
    let mut state = gateway::AppState::new(cfg.gateway.clone(), router, keys.clone(), jwt, limiter);
    let meter = match open_ledger(cfg).await? {
        Some(ledger) => {
            let meter = Arc::new(crate::metering::LedgerMeter::new(
                ledger,
                Duration::from_secs(cfg.billing.hold_ttl_secs),
            ));
            meter.spawn_reaper(Duration::from_secs(cfg.billing.reap_interval_secs.max(1)), stop.clone());
            state = state.with_meter(meter.clone());
            Some(meter)
        }
        None => None,
    };
    let listener = TcpListener::bind(&cfg.gateway.listen)
        .await
        .with_context(|| format!("binding the gateway on {}", cfg.gateway.listen))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(gateway::server::serve(
        listener,
        state,
        async move { stop.cancelled().await },
        cfg.gateway.drain_timeout(),
    ));
    Ok(GatewayHandle { addr, keys, meter, task })
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
