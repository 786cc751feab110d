//! The router of a gateway process: its attestation admission, and, with `router.redis_url`,
//! the registry, load and nonces it shares with the other gateway replicas.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use attestation::receipt::IdentityPublicKey;
use router::fleet::{FleetSync, RedisNonceStore};
use router::identities::{BindError, IdentityRegistry};
use router::Router;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Builds the router (and starts its Redis fleet sync, stopped by `stop`). Worker-id
/// bindings live in the gateway's database from the start, before any worker can attach.
pub async fn start_router(cfg: &Config, stop: CancellationToken) -> anyhow::Result<Router> {
    let router = build_router(cfg, stop).await?;
    let db = crate::roles::open_database(cfg).await?;
    router.set_identity_registry(Arc::new(LedgerIdentities(db)));
    Ok(router)
}

/// [`router::identities::IdentityRegistry`] on the gateway's database (table
/// `worker_identities`): one binding per worker id for every replica, kept across restarts.
pub struct LedgerIdentities(pub billing::Ledger);

#[async_trait::async_trait]
impl IdentityRegistry for LedgerIdentities {
    async fn bind(&self, worker_id: &str, identity: &IdentityPublicKey) -> Result<(), BindError> {
        let claimant = identity.to_hex();
        let holder = self
            .0
            .bind_worker_identity(worker_id, &claimant)
            .await
            .map_err(|e| BindError::Unavailable(e.to_string()))?;
        if holder == claimant {
            return Ok(());
        }
        let holder = <[u8; 32]>::try_from(hex::decode(&holder).unwrap_or_default().as_slice())
            .map(|k| IdentityPublicKey(k).fingerprint())
            .unwrap_or(holder);
        Err(BindError::Taken { worker_id: worker_id.to_string(), holder, claimant: identity.fingerprint() })
    }
}

async fn build_router(cfg: &Config, stop: CancellationToken) -> anyhow::Result<Router> {
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
