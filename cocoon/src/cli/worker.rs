//! `cocoon worker`: a worker-agent that dials out to the router, with its engine.

use anyhow::Context;
use clap::Args;

use super::{announce_environment, init_tracing, wait_for_signal, ConfigArg};

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let cfg = args.config.load_for(cocoon::config::Role::Worker)?;
    init_tracing(&cfg.log);
    announce_environment(&cfg, "cocoon worker");
    let (Some(url), Some(pin)) = (cfg.worker.router_url.clone(), cfg.worker.router_cert_sha256.clone()) else {
        anyhow::bail!("cocoon worker needs worker.router_url and worker.router_cert_sha256");
    };
    let engine_stop = tokio_util::sync::CancellationToken::new();
    let engine = cocoon::roles::start_engine(&cfg, engine_stop.clone()).await?;
    eprintln!("engine: {}", engine.description);
    let agent = engine.agent(cfg.worker.clone(), cfg.worker_tee()?)?;
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(listen) = &cfg.worker.metrics_listen {
        let (addr, _) = worker_agent::metrics::spawn(listen, agent.engine().metrics().clone(), cfg.worker.worker_id.clone(), stop.clone())
            .await
            .with_context(|| format!("binding worker.metrics_listen {listen}"))?;
        eprintln!("worker metrics: http://{addr}/metrics");
    }
    // One link per gateway replica; all share the agent (its slots and jobs).
    let runs: Vec<_> = std::iter::once(url)
        .chain(cfg.worker.router_urls.iter().cloned())
        .map(|url| {
            let link = worker_agent::net::RouterLink { url, cert_sha256: pin.clone() };
            tokio::spawn(worker_agent::net::run(agent.clone(), link, std::time::Duration::from_secs(600), stop.clone()))
        })
        .collect();
    eprintln!("worker {} serving engine {} ", cfg.worker.worker_id, engine.url);
    wait_for_signal().await;
    eprintln!("stopping: draining running jobs");
    stop.cancel();
    for run in runs {
        if let Ok(Err(e)) = run.await {
            eprintln!("worker link: {e}");
        }
    }
    // Running jobs are drained; now the engine (its whole process group) goes.
    engine_stop.cancel();
    engine.stop().await;
    Ok(())
}
