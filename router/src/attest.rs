//! Which workers may join: each link starts with a router nonce (`Challenge`), the worker
//! answers with evidence binding its HPKE key, its TLS key and that nonce (`Hello`), and the
//! router admits it only if the evidence verifies against the policy. Verification happens
//! once per connection and again before the verified result expires (re-challenge on the
//! live link), never per request.
//!
//! Collateral (Intel TDX collateral per FMSPC, SEV-SNP VCEK per chip and TCB) comes from the
//! [`CollateralService`] when one is configured: fetched, checked, cached and refreshed by
//! the router itself ([`spawn_collateral_refresher`]), shared by replicas through Redis
//! ([`RedisCollateralShare`]). The policy can be replaced while running
//! ([`Attestor::set_policy`]); workers already admitted meet the new rules at their next
//! re-challenge.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use attestation::{
    AttestationError, CollateralService, CollateralStatus, Freshness, MemoryNonceStore, Nonce,
    NonceStore, Policy, SharedCollateral, VerifiedWorker, Verifier, WorkerAttestation,
};
use protocol::WorkerInfo;
use tokio_util::sync::CancellationToken;

/// Why a worker was not admitted. The message names the rule that failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("the worker's hello carries no attestation")]
    Missing,
    #[error("the worker's attestation is malformed: {0}")]
    Malformed(String),
    #[error("attestation rejected ({rule}): {source}")]
    Rejected {
        rule: &'static str,
        #[source]
        source: AttestationError,
    },
    #[error("re-attestation presented another HPKE key ({got}) than the connection's ({had})")]
    KeyChanged { had: String, got: String },
    /// The worker's self-description breaks a rule the router enforces (price above the
    /// network's maximum, no slots, too many models).
    #[error("worker refused ({rule}): {message}")]
    Declared { rule: &'static str, message: String },
}

impl AdmitError {
    /// The rule that refused, as the `rule` label of `cocoon_router_workers_refused_total`.
    pub fn rule(&self) -> &'static str {
        match self {
            AdmitError::Missing => "missing",
            AdmitError::Malformed(_) => "malformed",
            AdmitError::Rejected { rule, .. } | AdmitError::Declared { rule, .. } => rule,
            AdmitError::KeyChanged { .. } => "key_changed",
        }
    }
}

impl From<AttestationError> for AdmitError {
    fn from(source: AttestationError) -> Self {
        AdmitError::Rejected {
            rule: source.rule(),
            source,
        }
    }
}

/// Where the policy in force came from, as `/v1/attestation/report` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum PolicyOrigin {
    /// `[attestation.policy]` of the operator's config file.
    #[default]
    File,
    /// The on-chain policy registry at `address` (raw form), version `version`.
    Chain { address: String, version: u32 },
}

/// The router's attestation policy, nonce store, collateral and sealing switch.
pub struct Attestor {
    verifier: RwLock<Arc<Verifier>>,
    origin: RwLock<PolicyOrigin>,
    /// Bumped on every policy change: admitted workers' links re-challenge at once.
    generation: tokio::sync::watch::Sender<u64>,
    nonces: Arc<dyn NonceStore>,
    seal_jobs: bool,
    collateral: Option<Arc<CollateralService>>,
}

impl Attestor {
    pub fn new(verifier: Verifier, nonces: Arc<dyn NonceStore>, seal_jobs: bool) -> Self {
        Self {
            verifier: RwLock::new(Arc::new(verifier)),
            origin: RwLock::new(PolicyOrigin::File),
            generation: tokio::sync::watch::Sender::new(0),
            nonces,
            seal_jobs,
            collateral: None,
        }
    }

    /// Accepts the insecure simulated TEE, in-memory nonces, jobs sealed. Tests and the
    /// embedded dev network only; production config refuses the simulated TEE.
    pub fn insecure_dev() -> Self {
        let policy = Policy {
            allow_insecure_simulated_tee: true,
            ..Policy::default()
        };
        Self::new(Verifier::new(policy), Arc::new(MemoryNonceStore::new()), true)
    }

    /// Sends jobs in clear (benchmarking the sealing's own cost only).
    pub fn with_sealing(mut self, seal_jobs: bool) -> Self {
        self.seal_jobs = seal_jobs;
        self
    }

    /// Resolves every worker's collateral through `svc` (fetch, cache, refresh).
    pub fn with_collateral(mut self, svc: Arc<CollateralService>) -> Self {
        self.collateral = Some(svc);
        self
    }

    pub fn collateral(&self) -> Option<&Arc<CollateralService>> {
        self.collateral.as_ref()
    }

    fn verifier(&self) -> Arc<Verifier> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy in force (a copy: it may be replaced at any time).
    pub fn policy(&self) -> Policy {
        self.verifier().policy().clone()
    }

    /// Replaces the policy without a restart. New links use it at once; admitted workers are
    /// judged by it at their next re-challenge.
    pub fn set_policy(&self, policy: Policy) {
        let next = Arc::new(self.verifier().with_policy(policy));
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = next;
        tracing::info!("attestation policy replaced: admitted workers meet it at their next re-challenge");
    }

    /// Replaces the policy and says where it came from, then re-challenges every admitted
    /// worker at once: a worker the new policy refuses (or whose price now exceeds the
    /// maximum) is detached, and its in-flight jobs fail over as when a worker dies.
    pub fn set_policy_from(&self, policy: Policy, origin: PolicyOrigin) {
        let next = Arc::new(self.verifier().with_policy(policy));
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = next;
        tracing::info!(?origin, "attestation policy replaced: admitted workers re-attest now");
        *self.origin.write().unwrap_or_else(|p| p.into_inner()) = origin;
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn policy_origin(&self) -> PolicyOrigin {
        self.origin.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes whenever [`Attestor::set_policy_from`] replaces the policy.
    pub fn policy_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn seal_jobs(&self) -> bool {
        self.seal_jobs
    }

    /// A fresh single-use nonce for a worker to attest to.
    pub async fn challenge(&self) -> Result<Nonce, AttestationError> {
        self.verifier()
            .issue_nonce(&*self.nonces, attestation::unix_now())
            .await
    }

    /// Verifies the attestation in a worker's hello against the connection's TLS key, the
    /// nonce store and the policy.
    pub async fn admit(
        &self,
        info: &WorkerInfo,
        connection_tls_spki_sha256: &[u8; 32],
    ) -> Result<VerifiedWorker, AdmitError> {
        let raw = info.attestation.as_ref().ok_or(AdmitError::Missing)?;
        let att: WorkerAttestation =
            serde_json::from_slice(raw).map_err(|e| AdmitError::Malformed(e.to_string()))?;
        let now = attestation::unix_now();
        let verifier = self.verifier();
        let (att, used) = match &self.collateral {
            Some(svc) => {
                let products = &verifier.policy().snp.allowed_products;
                let (evidence, used) = svc.resolve(&att.evidence, products, now).await?;
                (WorkerAttestation { evidence, ..att }, used)
            }
            None => (att, None),
        };
        let mut verified = verifier
            .verify_worker(&att, connection_tls_spki_sha256, &*self.nonces, now)
            .await?;
        verified.collateral = used;
        Ok(verified)
    }
}

/// Refreshes collateral that is due every `check_interval_secs` and publishes its freshness
/// on `/metrics`, until `stop`.
pub fn spawn_collateral_refresher(
    svc: Arc<CollateralService>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    describe_metrics();
    let every = Duration::from_secs(svc.config().check_interval_secs.max(1));
    tokio::spawn(async move {
        loop {
            let now = attestation::unix_now();
            for (fmspc, outcome) in svc.refresh_due(now).await {
                match outcome {
                    Ok(()) => tracing::info!(%fmspc, "TDX collateral refreshed"),
                    Err(e) => {
                        metrics::counter!("cocoon_attestation_collateral_refresh_failures_total", "kind" => "tdx")
                            .increment(1);
                        tracing::warn!(%fmspc, error = %e, "TDX collateral refresh failed");
                    }
                }
            }
            publish_metrics(&svc.status(attestation::unix_now()), attestation::unix_now());
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "cocoon_attestation_collateral_age_seconds",
        metrics::Unit::Seconds,
        "Time since each cached collateral item (TDX per FMSPC, SEV-SNP VCEK per chip and TCB) was fetched"
    );
    metrics::describe_gauge!(
        "cocoon_attestation_collateral_next_update_seconds",
        metrics::Unit::Seconds,
        "Time until the earliest nextUpdate of each cached collateral item (negative: past)"
    );
    metrics::describe_gauge!(
        "cocoon_attestation_collateral_expiry_seconds",
        metrics::Unit::Seconds,
        "Time until each cached collateral item expires (negative: expired, its workers are refused)"
    );
    metrics::describe_gauge!(
        "cocoon_attestation_collateral_next_expiry_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time of the earliest expiry over all cached collateral"
    );
    metrics::describe_gauge!(
        "cocoon_attestation_collateral_stale",
        "1 while a collateral item's refresh fails and its cached copy is used until it expires"
    );
}

/// Sets the collateral gauges from a status snapshot.
pub fn publish_metrics(status: &[CollateralStatus], now: u64) {
    let signed = |t: u64| t as f64 - now as f64;
    for s in status {
        let labels = vec![
            metrics::Label::new("kind", s.kind.to_string()),
            metrics::Label::new("id", s.id.clone()),
        ];
        metrics::gauge!("cocoon_attestation_collateral_age_seconds", labels.clone())
            .set(now.saturating_sub(s.fetched_at) as f64);
        metrics::gauge!("cocoon_attestation_collateral_next_update_seconds", labels.clone())
            .set(signed(s.next_update));
        metrics::gauge!("cocoon_attestation_collateral_expiry_seconds", labels.clone())
            .set(signed(s.expires_at));
        metrics::gauge!("cocoon_attestation_collateral_stale", labels)
            .set(if s.state == Freshness::Stale { 1.0 } else { 0.0 });
    }
    if let Some(min) = status.iter().map(|s| s.expires_at).min() {
        metrics::gauge!("cocoon_attestation_collateral_next_expiry_timestamp_seconds").set(min as f64);
    }
}

/// The collateral cache replicas share: `{prefix}:collateral:{key}` holds the entry (JSON),
/// `{prefix}:collateral-lock:{key}` elects the one replica that fetches (`SET NX PX` with a
/// random token; released by a compare-and-delete script so a slow fetcher cannot release a
/// lock that already passed to another).
pub struct RedisCollateralShare {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    unlock: redis::Script,
}

const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RedisCollateralShare {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2));
        Ok(Self {
            conn: redis::aio::ConnectionManager::new_with_config(client, cfg).await?,
            prefix: prefix.to_string(),
            unlock: redis::Script::new(UNLOCK_LUA),
        })
    }
}

#[async_trait]
impl SharedCollateral for RedisCollateralShare {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(format!("{}:collateral:{key}", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    async fn put(&self, key: &str, value: &[u8], ttl_secs: u64) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}:collateral:{key}", self.prefix))
            .arg(value)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    async fn try_lock(&self, key: &str, ttl_ms: u64) -> Result<Option<String>, String> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:collateral-lock:{key}", self.prefix))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(set.map(|_| token))
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), String> {
        let mut conn = self.conn.clone();
        self.unlock
            .key(format!("{}:collateral-lock:{key}", self.prefix))
            .arg(token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| format!("redis: {e}"))
    }
}
