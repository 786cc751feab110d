//! State shared by gateway replicas through Redis (`router.redis_url`): the fleet registry
//! (which worker is attached to which replica, with its load) and attestation nonces.
//!
//! Replicas are stateless peers behind a load balancer. A worker keeps one link to each
//! replica (`worker.router_urls`), so every replica can route to every worker; what a replica
//! cannot see locally is the load the *other* replicas put on a worker. Each replica publishes
//! its attached workers and their running jobs every `fleet_sync_ms`, reads everyone else's,
//! and the router's choice (free slots, power of two choices on load × latency) counts both.
//! Nonces live in Redis too, so an evidence answer cannot be replayed at another replica.
//!
//! Without `redis_url` the in-process registry alone is used (the embedded default).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use attestation::{Nonce, NonceStore, NonceTake};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Router;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

async fn connect(url: &str) -> Result<redis::aio::ConnectionManager, FleetError> {
    let client = redis::Client::open(url)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2));
    Ok(redis::aio::ConnectionManager::new_with_config(client, cfg).await?)
}

/// Issued nonces shared by all replicas: `SET key issued_at NX EX window` to issue; taking is
/// one Lua script (read, then mark used keeping the TTL), so two replicas taking the same
/// nonce at once cannot both see it fresh.
pub struct RedisNonceStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    take: redis::Script,
}

const TAKE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if v == 'used' then return -2 end
redis.call('SET', KEYS[1], 'used', 'KEEPTTL')
return tonumber(v)
";

impl RedisNonceStore {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, FleetError> {
        Ok(Self {
            conn: connect(url).await?,
            prefix: prefix.to_string(),
            take: redis::Script::new(TAKE_LUA),
        })
    }

    fn key(&self, nonce: &Nonce) -> String {
        format!("{}:nonce:{}", self.prefix, nonce.to_hex())
    }
}

#[async_trait]
impl NonceStore for RedisNonceStore {
    async fn issue(&self, nonce: Nonce, issued_at: u64, expires_at: u64) -> Result<(), String> {
        let ttl = expires_at.saturating_sub(issued_at).max(1);
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&nonce))
            .arg(issued_at)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        match set {
            Some(_) => Ok(()),
            None => Err("nonce collision: this nonce was already issued".into()),
        }
    }

    async fn take(&self, nonce: &Nonce, _now: u64) -> Result<NonceTake, String> {
        let mut conn = self.conn.clone();
        let v: i64 = self
            .take
            .key(self.key(nonce))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(match v {
            -1 => NonceTake::Unknown,
            -2 => NonceTake::AlreadyUsed,
            t => NonceTake::Fresh {
                issued_at: u64::try_from(t).unwrap_or(0),
            },
        })
    }
}

/// One worker as one replica sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FleetWorker {
    pub worker_id: String,
    pub models: Vec<String>,
    pub running: u32,
    pub slots: u32,
    pub available: bool,
    pub tee: String,
}

/// The fleet as of the last sync: per replica, its attached workers.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    pub replicas: HashMap<String, Vec<FleetWorker>>,
}

impl FleetView {
    /// Distinct workers anywhere in the fleet.
    pub fn workers(&self) -> usize {
        let mut ids: Vec<&str> = self
            .replicas
            .values()
            .flatten()
            .map(|w| w.worker_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

/// Publishes this replica's workers and reads the others', every `every`, until `stop`.
pub struct FleetSync {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    instance: String,
    every: Duration,
}

impl FleetSync {
    pub async fn connect(url: &str, prefix: &str, instance: &str, every: Duration) -> Result<Self, FleetError> {
        Ok(Self {
            conn: connect(url).await?,
            prefix: prefix.to_string(),
            instance: instance.to_string(),
            every,
        })
    }

    fn replicas_key(&self) -> String {
        format!("{}:fleet:replicas", self.prefix)
    }

    fn replica_key(&self, instance: &str) -> String {
        format!("{}:fleet:replica:{instance}", self.prefix)
    }

    /// One round: write ours, read theirs. Returns the whole fleet.
    pub async fn sync_once(&mut self, router: &Router) -> Result<FleetView, FleetError> {
        let ours: Vec<FleetWorker> = router
            .snapshot()
            .into_iter()
            .map(|w| FleetWorker {
                worker_id: w.worker_id,
                models: w.models,
                running: w.running,
                slots: w.slots,
                available: w.available,
                tee: w.tee,
            })
            .collect();
        let ttl_ms = u64::try_from(self.every.as_millis().saturating_mul(4)).unwrap_or(u64::MAX);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let body = serde_json::to_string(&ours).unwrap_or_else(|_| "[]".into());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.replica_key(&self.instance))
            .arg(&body)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(self.replicas_key())
            .arg(now_ms)
            .arg(&self.instance)
            .ignore()
            // Replicas silent for a while are forgotten.
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.replicas_key())
            .arg("-inf")
            .arg(now_ms.saturating_sub(ttl_ms))
            .ignore()
            .cmd("ZRANGE")
            .arg(self.replicas_key())
            .arg(0)
            .arg(-1);
        let (replicas,): (Vec<String>,) = pipe.query_async(&mut self.conn).await?;
        let keys: Vec<String> = replicas.iter().map(|r| self.replica_key(r)).collect();
        let bodies: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET").arg(&keys).query_async(&mut self.conn).await?
        };
        let mut view = FleetView::default();
        for (replica, body) in replicas.into_iter().zip(bodies) {
            let workers = body
                .and_then(|b| serde_json::from_str::<Vec<FleetWorker>>(&b).ok())
                .unwrap_or_default();
            view.replicas.insert(replica, workers);
        }
        // Load the other replicas put on each of our workers.
        let mut remote: HashMap<&str, u32> = HashMap::new();
        for (replica, workers) in &view.replicas {
            if *replica == self.instance {
                continue;
            }
            for w in workers {
                *remote.entry(w.worker_id.as_str()).or_default() += w.running;
            }
        }
        router.set_remote_load(|worker_id| remote.get(worker_id).copied().unwrap_or(0));
        Ok(view)
    }

    /// Runs [`Self::sync_once`] every interval; a Redis outage keeps the last view for a few
    /// rounds, then forgets remote load (routing on local load alone beats routing on stale
    /// load).
    pub fn spawn(mut self, router: Router, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                match self.sync_once(&router).await {
                    Ok(view) => {
                        failures = 0;
                        metrics::gauge!("cocoon_router_fleet_replicas").set(view.replicas.len() as f64);
                        metrics::gauge!("cocoon_router_fleet_workers").set(view.workers() as f64);
                        router.set_fleet(view);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "fleet sync with redis failed");
                        if failures == 4 {
                            router.set_remote_load(|_| 0);
                        }
                    }
                }
            }
        })
    }
}
