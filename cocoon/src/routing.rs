//! The router of a gateway process: its attestation admission, and, with `router.redis_url`,
//! the registry, load and nonces it shares with the other gateway replicas.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use router::fleet::{FleetSync, RedisNonceStore};
use router::Router;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Builds the router (and starts its Redis fleet sync, stopped by `stop`).
pub async fn start_router(cfg: &Config, stop: CancellationToken) -> anyhow::Result<Router> {
    let rc = &cfg.router;
    let Some(url) = &rc.redis_url else {
        let collateral = cfg.attestation.collateral_service(&cfg.data_dir, None)?;
        if let Some(c) = &collateral {
            router::spawn_collateral_refresher(c.clone(), stop.clone());
        }
        return Ok(Router::new(rc.clone(), cfg.attestation.attestor_with(None, collateral)?));
    };
    let nonces = RedisNonceStore::connect(url, &rc.redis_prefix)
        .await
        .with_context(|| format!("connecting to router.redis_url {url}"))?;
    // One collateral fetch per FMSPC / chip for all replicas.
    let shared = router::RedisCollateralShare::connect(url, &rc.redis_prefix)
        .await
        .with_context(|| format!("connecting to router.redis_url {url}"))?;
    let collateral = cfg.attestation.collateral_service(&cfg.data_dir, Some(Arc::new(shared)))?;
    if let Some(c) = &collateral {
        router::spawn_collateral_refresher(c.clone(), stop.clone());
    }
    let router = Router::new(rc.clone(), cfg.attestation.attestor_with(Some(Arc::new(nonces)), collateral)?);
    let instance = rc
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("gw-{}", uuid::Uuid::new_v4().simple()));
    let sync = FleetSync::connect(url, &rc.redis_prefix, &instance, Duration::from_millis(rc.fleet_sync_ms))
        .await
        .with_context(|| format!("connecting to router.redis_url {url}"))?;
    tracing::info!(%instance, "sharing the worker registry, load and nonces through redis");
    sync.spawn(router.clone(), stop);
    Ok(router)
}
