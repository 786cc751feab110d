//! `cocoon gateway`: gateway and router; networked workers connect to `router.worker_listen`.

use anyhow::Context;
use clap::Args;

use super::{announce_environment, init_tracing, wait_for_signal, ConfigArg};

#[derive(Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Same as `environment = "production"`: refuses the simulated TEE, unsealed jobs and
    /// other dev-only settings.
    #[arg(long)]
    production: bool,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let mut cfg = args.config.load_for(cocoon::config::Role::Gateway)?;
    if args.production {
        cfg.environment = cocoon::config::Environment::Production;
        cfg.validate()?;
    }
    init_tracing(&cfg.log);
    announce_environment(&cfg, "cocoon gateway");
    // Two stages on SIGTERM (what a Kubernetes rollout sends): `http` stops accepting
    // requests and drains the in-flight ones for up to `gateway.drain_timeout_ms`; only then
    // does `links` end the worker links, the router and settlement, which those in-flight
    // streams still need. One token for both would cut every stream at once.
    let http = tokio_util::sync::CancellationToken::new();
    let links = tokio_util::sync::CancellationToken::new();
    let router = cocoon::routing::start_router(&cfg, links.clone()).await?;
    // The on-chain policy is in force before the first worker can connect.
    let chain = cocoon::registry::ChainPolicy::start(&cfg, router.clone(), links.clone()).await?;
    if let Some((address, version)) = chain.as_ref().and_then(|c| c.in_force()) {
        println!("policy:   registry {address} version {version}");
    }
    let listener = cocoon::roles::start_worker_listener(&cfg, router.clone(), links.clone())
        .await?
        .context("cocoon gateway needs router.worker_listen (where workers connect)")?;
    // SIGHUP applies a changed [attestation.policy] (e.g. a raised TCB evaluation data number).
    cocoon::attest::AttestationSection::spawn_policy_reload(
        args.config.config.clone(),
        cfg.environment == cocoon::config::Environment::Production,
        router.clone(),
        chain.clone(),
        links.clone(),
    );
    let gw = cocoon::roles::start_gateway(&cfg, router, http.clone()).await?;
    if let (Some(c), Some(m)) = (&chain, &gw.meter) {
        c.attach_ledger(m.ledger().clone()).await?;
    }
    let settlement = match &gw.meter {
        Some(m) => cocoon::settlement::start(&cfg, m.ledger(), links.clone())?,
        None => None,
    };
    println!("gateway:  http://{}/v1", gw.addr);
    if let Some(m) = gw.metrics_addr {
        println!("metrics:  http://{m}/metrics");
    }
    println!("workers:  wss://{}/v1/worker", listener.addr);
    println!("router certificate SHA-256 (set as worker.router_cert_sha256): {}", listener.cert_sha256);
    wait_for_signal().await;
    eprintln!(
        "stopping: no new requests; draining in-flight ones for up to {} ms",
        cfg.gateway.drain_timeout_ms
    );
    http.cancel();
    match gw.task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "gateway stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "gateway task failed"),
        Ok(Ok(())) => {}
    }
    eprintln!("stopping: closing worker links");
    links.cancel();
    let _ = listener.task.await;
    if let Some(t) = settlement {
        let _ = t.await;
    }
    Ok(())
}
