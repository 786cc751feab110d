//! Connected workers and how one is chosen for a job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use attestation::{HpkePublicKey, LinkSealer, ResponseOpener, SealedChunk, VerifiedWorker};
use bytes::Bytes;
use protocol::{wire, JobError, JobEvent, Load, ModelInfo, RouterToWorker, WorkerInfo, WorkerToRouter};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::attest::{AdmitError, Attestor};
use crate::circuit::{Admission, Circuit};
use crate::config::RouterConfig;

/// Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: RouterConfig,
    pub(crate) attestor: Arc<Attestor>,
    /// `cfg.max_price_coefficient`, or what the policy registry publishes (live).
    max_price_coefficient: std::sync::atomic::AtomicU32,
    workers: RwLock<Workers>,
    next_conn: AtomicU64,
    next_attest_request: AtomicU64,
    /// The whole fleet as of the last Redis sync (`None` without `router.redis_url`).
    fleet: RwLock<Option<crate::fleet::FleetView>>,
    /// Jobs waiting for a free slot, per model.
    pub(crate) queues: Arc<crate::queue::Queues>,
    /// Which identity key holds which worker id.
    identities: RwLock<Arc<dyn crate::identities::IdentityRegistry>>,
}

/// A job in flight on one worker: where its events go and, for a sealed job, the opener of
/// its response stream (authenticated, in order, truncation-checked).
pub(crate) struct JobSlot {
    /// Bounded by the job's flow-control window (see [`protocol::JOB_EVENT_WINDOW`]).
    pub(crate) tx: mpsc::Sender<JobEvent>,
    pub(crate) opener: Option<ResponseOpener>,
    /// Set when the router ends the job itself and could not queue the failure event.
    pub(crate) closed: Arc<Mutex<Option<JobError>>>,
}

impl JobSlot {
    /// Ends the job with `error`: as its terminal event if the channel has room, else (the
    /// consumer is behind) as the reason the stream reads when the channel closes.
    fn fail(&self, error: JobError) {
        if let Err(e) = self.tx.try_send(JobEvent::Failed { error, usage: None }) {
            if let JobEvent::Failed { error, .. } = e.into_inner() {
                *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
            }
        }
    }
}

type AttestReply = oneshot::Sender<Result<Bytes, String>>;

pub(crate) struct WorkerEntry {
    /// Unique per connection, so a reconnecting worker never inherits a stale entry's jobs.
    pub(crate) conn_id: u64,
    pub(crate) info: WorkerInfo,
    pub(crate) tx: mpsc::Sender<RouterToWorker>,
    pub(crate) jobs: Mutex<HashMap<Uuid, JobSlot>>,
    /// The attested HPKE key jobs are sealed to (fixed for the connection).
    pub(crate) hpke_public_key: HpkePublicKey,
    /// This link's HPKE context to `hpke_public_key` (per-job keys are exported from it);
    /// `None` when the router sends jobs in clear.
    pub(crate) sealer: Option<LinkSealer>,
    /// Latest verification of this worker; `expires_at` (unix seconds) mirrors it for the
    /// lock-free eligibility check.
    pub(crate) verified: Mutex<VerifiedWorker>,
    pub(crate) expires_at: AtomicU64,
    pub(crate) insecure_simulated: bool,
    /// The identity key the worker attested (signs its receipts).
    pub(crate) identity_key: Option<attestation::receipt::IdentityPublicKey>,
    /// The worker's last heartbeat (engine queue, slots, KV-cache use where reported).
    pub(crate) last_load: Mutex<Load>,
    attest_requests: Mutex<HashMap<u64, AttestReply>>,
    pub(crate) running: AtomicU32,
    /// Jobs other gateway replicas run on this worker (from the Redis fleet view).
    pub(crate) remote_running: AtomicU32,
    pub(crate) available: AtomicBool,
    pub(crate) connected: AtomicBool,
    /// Time to first event, exponentially weighted, in microseconds (0 = no sample yet).
    pub(crate) ewma_ttft_us: AtomicU64,
    /// When `ewma_ttft_us` last took a sample, ms since [`clock_ms`]'s start.
    ttft_sampled_ms: AtomicU64,
    pub(crate) circuit: Circuit,
}

const TTFT_FLOOR_US: u64 = 1_000;
/// A TTFT average without new samples halves its excess over the floor every this long.
/// What a job asks of a worker beyond serving its model: a price cap and capabilities.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fit {
    pub max_price: Option<u32>,
    pub needs: protocol::Needs,
}

/// Samples come only from jobs a worker gets, so without decay a worker that was slow once
/// (say, queued under a burst) keeps losing every comparison and never gets the job that
/// would correct its average: `scripts/scale-out` saw one of three lightly loaded workers run
/// 9 of 12,857 jobs.
const TTFT_HALF_LIFE_MS: u64 = 1_000;

/// Milliseconds since this process first asked (monotonic).
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `ewma` aged by `age_ms` without samples: its excess over the floor halved per half-life.
fn decayed_ttft(ewma: u64, age_ms: u64) -> u64 {
    let ewma = ewma.max(TTFT_FLOOR_US);
    let halvings = u32::try_from(age_ms / TTFT_HALF_LIFE_MS).unwrap_or(u32::MAX);
    TTFT_FLOOR_US + (ewma - TTFT_FLOOR_US).checked_shr(halvings).unwrap_or(0)
}

/// `w` is the worker named, or none is.
fn named(w: &WorkerEntry, only: Option<&str>) -> bool {
    only.is_none_or(|id| w.info.worker_id == id)
}

/// The queue a job waits in: its model's, or for a job sealed to one worker, that worker's
/// own for the model (so it never holds up jobs any worker could take).
pub(crate) fn queue_key(model: &str, only: Option<&str>) -> String {
    match only {
        Some(w) => format!("{model}\u{0}{w}"),
        None => model.to_string(),
    }
}

/// Models one worker may declare (label cardinality and routing cost stay bounded).
const MAX_MODELS_PER_WORKER: usize = 256;

/// The attached workers, and per model the ones declaring it with what they declare
/// together. The questions every request asks (does anyone serve the model, its context
/// length, a capability, which worker) read one model's entry, so their cost does not grow
/// with the fleet. A model's entry is rebuilt when one of its workers attaches or detaches:
/// O(its workers), rare next to requests.
#[derive(Default)]
pub(crate) struct Workers {
    all: Vec<Arc<WorkerEntry>>,
    by_model: HashMap<String, ModelWorkers>,
}

/// One model's workers and their declarations, combined.
struct ModelWorkers {
    workers: Vec<Arc<WorkerEntry>>,
    /// The smallest context length reported (`None`: nobody reports one).
    context_len: Option<u32>,
    /// Per [`protocol::Capability::ALL`]: `Some(true)` when one worker reports it, `Some(false)`
    /// when every worker reports lacking it, `None` otherwise.
    capabilities: [Option<bool>; protocol::Capability::ALL.len()],
    /// Some worker serving it runs in the insecure simulated TEE.
    any_simulated: bool,
}

impl ModelWorkers {
    fn new(model: &str, workers: Vec<Arc<WorkerEntry>>) -> Self {
        let infos = || workers.iter().flat_map(|w| w.info.models.iter().filter(|m| m.id == model));
        let capabilities = protocol::Capability::ALL.map(|c| {
            let reports: Vec<Option<bool>> = infos().map(|m| c.of(m)).collect();
            if reports.contains(&Some(true)) {
                Some(true)
            } else if !reports.is_empty() && reports.iter().all(|r| *r == Some(false)) {
                Some(false)
            } else {
                None
            }
        });
        ModelWorkers {
            context_len: infos().filter_map(|m| m.max_model_len).min(),
            capabilities,
            any_simulated: workers.iter().any(|w| w.insecure_simulated),
            workers,
        }
    }

    fn capability(&self, c: protocol::Capability) -> Option<bool> {
        let i = protocol::Capability::ALL.iter().position(|x| *x == c)?;
        self.capabilities[i]
    }
}

impl Workers {
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Arc<WorkerEntry>> {
        self.all.iter()
    }

    /// The workers declaring `model`, in attach order.
    fn serving(&self, model: &str) -> &[Arc<WorkerEntry>] {
        self.by_model.get(model).map_or(&[], |m| &m.workers)
    }

    fn insert(&mut self, entry: Arc<WorkerEntry>) {
        self.all.push(entry.clone());
        self.rebuild(&entry);
    }

    fn remove(&mut self, entry: &Arc<WorkerEntry>) {
        self.all.retain(|w| w.conn_id != entry.conn_id);
        self.rebuild(entry);
    }

    /// Recomputes the entries of `entry`'s models from `all`.
    fn rebuild(&mut self, entry: &WorkerEntry) {
        let mut models: Vec<&str> = entry.info.models.iter().map(|m| m.id.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        for model in models {
            let workers: Vec<Arc<WorkerEntry>> =
                self.all.iter().filter(|w| w.serves(model)).cloned().collect();
            if workers.is_empty() {
                self.by_model.remove(model);
            } else {
                self.by_model.insert(model.to_owned(), ModelWorkers::new(model, workers));
            }
        }
    }
}

/// Random probes before a scan: while most of a model's workers are eligible, a few probes
/// find two and the pick costs the same with 10 or 10,000 workers.
const PICK_PROBES: usize = 8;

/// Two distinct workers drawn uniformly at random among those `ok` admits (or the only one).
/// Probes at random first; when they do not find two (most workers busy, tried or of another
/// price) it scans, which is also the only way to be sure that no worker is eligible. Either
/// way the pair is uniform among the eligible workers, as power of two choices wants.
fn two_eligible<T>(pool: &[T], ok: impl Fn(&T) -> bool) -> Option<(&T, Option<&T>)> {
    let mut rng = rand::thread_rng();
    if pool.len() > PICK_PROBES {
        let mut first: Option<usize> = None;
        for _ in 0..PICK_PROBES {
            let i = rng.gen_range(0..pool.len());
            if first == Some(i) || !ok(&pool[i]) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(f) => return Some((&pool[f], Some(&pool[i]))),
            }
        }
    }
    let eligible: Vec<&T> = pool.iter().filter(|w| ok(w)).collect();
    match eligible.len() {
        0 => None,
        1 => Some((eligible[0], None)),
        n => {
            let i = rng.gen_range(0..n);
            let mut j = rng.gen_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            Some((eligible[i], Some(eligible[j])))
        }
    }
}

/// What the registry knows about one worker (for `/readyz`, logs and tests).
#[derive(Clone, Debug)]
pub struct WorkerSnapshot {
    pub worker_id: String,
    pub models: Vec<String>,
    /// Each model id with the SHA-256 (hex) of its weights, as the worker's evidence commits
    /// to them (`attestation::models_digest`): what a client needs to check the binding.
    pub model_weights: Vec<(String, Option<String>)>,
    pub running: u32,
    /// Jobs other replicas run on it (shared registry), included in the choice.
    pub remote_running: u32,
    pub slots: u32,
    pub available: bool,
    pub circuit_open: bool,
    pub ewma_ttft_us: u64,
    /// "tdx", "sev-snp" or "simulated".
    pub tee: String,
    pub insecure_simulated: bool,
    /// Unix seconds when the worker's verified attestation expires.
    pub attestation_expires_at: u64,
    /// The launch measurement its evidence proved, hex: MRTD (TDX, simulated) or the
    /// SEV-SNP MEASUREMENT.
    pub measurement: String,
    /// The worker's last heartbeat as it reported it.
    pub last_load: Load,
}

impl WorkerEntry {
    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, JobSlot>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_attest(&self) -> std::sync::MutexGuard<'_, HashMap<u64, AttestReply>> {
        self.attest_requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_job(&self, id: Uuid, slot: JobSlot) {
        self.lock_jobs().insert(id, slot);
    }

    pub(crate) fn unregister_job(&self, id: &Uuid) {
        self.lock_jobs().remove(id);
    }

    pub(crate) fn serves(&self, model: &str) -> bool {
        self.info.models.iter().any(|m| m.id == model)
    }

    pub(crate) fn record_ttft(&self, micros: u64) {
        // alpha = 1/5; racing updates lose a sample at worst.
        let old = self.ewma_ttft_us.load(Ordering::Relaxed);
        let new = if old == 0 { micros } else { (old * 4 + micros) / 5 };
        self.ewma_ttft_us.store(new.max(1), Ordering::Relaxed);
        self.ttft_sampled_ms.store(clock_ms(), Ordering::Relaxed);
    }

    /// Jobs on this worker from every replica.
    fn load(&self) -> u32 {
        self.running
            .load(Ordering::Relaxed)
            .saturating_add(self.remote_running.load(Ordering::Relaxed))
    }

    fn score(&self) -> u128 {
        let running = u128::from(self.load()) + 1;
        // TTFT differences under a millisecond are jitter, not a slower worker: flooring keeps
        // them from outweighing load. Unsampled workers sit at the floor, so they get traffic,
        // and so, in time, do workers whose last samples were slow (see TTFT_HALF_LIFE_MS).
        let age = clock_ms().saturating_sub(self.ttft_sampled_ms.load(Ordering::Relaxed));
        let ttft = u128::from(decayed_ttft(self.ewma_ttft_us.load(Ordering::Relaxed), age));
        running * ttft
    }

    pub(crate) fn attested(&self) -> bool {
        attestation::unix_now() < self.expires_at.load(Ordering::Relaxed)
    }

    fn eligible(&self, model: &str, fit: Fit, now: Instant) -> bool {
        self.candidate(model, fit) && self.load() < self.info.slots && self.circuit.would_admit(now)
    }

    /// Could take a job for `model` at this price, with what it needs (free slot and
    /// circuit aside).
    fn candidate(&self, model: &str, fit: Fit) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.attested()
            && self.available.load(Ordering::Relaxed)
            && fit.max_price.is_none_or(|cap| self.info.price_coefficient <= cap)
            && self.info.models.iter().any(|m| m.id == model && (fit.needs.is_empty() || fit.needs.met_by(m)))
    }
}

impl Router {
    /// A router that admits workers per `attestor` (its policy, nonces and sealing switch).
    pub fn new(cfg: RouterConfig, attestor: Arc<Attestor>) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_price_coefficient: std::sync::atomic::AtomicU32::new(cfg.max_price_coefficient),
                cfg,
                attestor,
                workers: RwLock::new(Workers::default()),
                next_conn: AtomicU64::new(1),
                next_attest_request: AtomicU64::new(1),
                fleet: RwLock::new(None),
                queues: Arc::new(crate::queue::Queues::default()),
                identities: RwLock::new(Arc::new(crate::identities::MemoryIdentities::default())),
            }),
        }
    }

    /// Where worker-id bindings live (shared by replicas: the ledger database).
    pub fn set_identity_registry(&self, r: Arc<dyn crate::identities::IdentityRegistry>) {
        *self.inner.identities.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// A worker id belongs to the first identity key that attested under it.
    pub(crate) async fn bind_identity(&self, info: &WorkerInfo, verified: &VerifiedWorker) -> Result<(), AdmitError> {
        let Some(identity) = verified.identity_key else { return Ok(()) };
        let registry = self.inner.identities.read().unwrap_or_else(|p| p.into_inner()).clone();
        registry.bind(&info.worker_id, &identity).await.map_err(|e| AdmitError::Declared {
            rule: "worker_id",
            message: e.to_string(),
        })
    }

    pub fn config(&self) -> &RouterConfig {
        &self.inner.cfg
    }

    /// The highest price coefficient a worker may declare (thousandths).
    pub fn max_price_coefficient(&self) -> u32 {
        self.inner.max_price_coefficient.load(Ordering::Relaxed)
    }

    /// Replaces the maximum price coefficient (the on-chain registry's). Workers joining
    /// are checked against it at once; admitted workers at their next re-attestation,
    /// which [`Attestor::set_policy_from`] triggers at once.
    pub fn set_max_price_coefficient(&self, max: u32) {
        self.inner.max_price_coefficient.store(max, Ordering::Relaxed);
    }

    pub fn attestor(&self) -> &Attestor {
        &self.inner.attestor
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Workers> {
        self.inner.workers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connected worker whose attestation verified. The returned receiver
    /// carries jobs and cancels to it; everything it says goes through
    /// [`WorkerSession::handle`]. Dropping the session removes the worker and fails its
    /// in-flight jobs. Links normally go through [`Router::serve_link`], which does the
    /// challenge and verification first.
    pub fn attach(
        &self,
        info: WorkerInfo,
        verified: VerifiedWorker,
    ) -> Result<(WorkerSession, mpsc::Receiver<RouterToWorker>), AdmitError> {
        let (tx, rx) = mpsc::channel(self.inner.cfg.worker_queue);
        Ok((self.attach_with(info, verified, tx)?, rx))
    }

    pub(crate) fn attach_with(
        &self,
        info: WorkerInfo,
        verified: VerifiedWorker,
        tx: mpsc::Sender<RouterToWorker>,
    ) -> Result<WorkerSession, AdmitError> {
        self.check_declared(&info)?;
        self.check_attested_models(&info, &verified)?;
        let sealer = if self.inner.attestor.seal_jobs() {
            let (sealer, enc) = LinkSealer::new(&verified.hpke_public_key).map_err(|e| {
                AdmitError::Malformed(format!("attested HPKE key unusable: {e}"))
            })?;
            // First message after admission, so it precedes every job on this link.
            tx.try_send(RouterToWorker::Session { enc: Bytes::copy_from_slice(&enc) })
                .map_err(|_| AdmitError::Malformed("worker link closed during admission".into()))?;
            Some(sealer)
        } else {
            None
        };
        let entry = Arc::new(WorkerEntry {
            conn_id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            info,
            tx,
            jobs: Mutex::new(HashMap::new()),
            hpke_public_key: verified.hpke_public_key,
            sealer,
            expires_at: AtomicU64::new(verified.expires_at),
            insecure_simulated: verified.is_insecure_simulated(),
            identity_key: verified.identity_key,
            verified: Mutex::new(verified),
            last_load: Mutex::new(Load::default()),
            attest_requests: Mutex::new(HashMap::new()),
            running: AtomicU32::new(0),
            remote_running: AtomicU32::new(0),
            available: AtomicBool::new(true),
            connected: AtomicBool::new(true),
            ewma_ttft_us: AtomicU64::new(0),
            ttft_sampled_ms: AtomicU64::new(0),
            circuit: Circuit::new(),
        });
        tracing::info!(
            worker = %entry.info.worker_id,
            models = ?entry.info.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            slots = entry.info.slots,
            gpu = %entry.info.gpu,
            tee = %entry.tee_label(),
            hpke_key = %entry.hpke_public_key.fingerprint(),
            "worker attached (attested)"
        );
        if entry.insecure_simulated {
            tracing::warn!(worker = %entry.info.worker_id, "worker runs in the INSECURE SIMULATED TEE: no hardware protects its jobs");
        }
        self.inner
            .workers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.clone());
        metrics::gauge!("cocoon_router_workers").increment(1.0);
        self.capacity_changed(&entry);
        Ok(WorkerSession {
            router: self.clone(),
            entry,
        })
    }

    fn check_price(&self, info: &WorkerInfo) -> Result<(), AdmitError> {
        let max = self.max_price_coefficient();
        if info.price_coefficient == 0 || info.price_coefficient > max {
            return Err(AdmitError::Declared {
                rule: "price_coefficient",
                message: format!("price coefficient {} is outside 1..={max} (router.max_price_coefficient, or the policy registry's)", info.price_coefficient),
            });
        }
        Ok(())
    }

    /// What a worker says about itself is believed only within the network's rules: its price
    /// coefficient is what its jobs are billed at, so it must not exceed the maximum.
    fn check_declared(&self, info: &WorkerInfo) -> Result<(), AdmitError> {
        self.check_price(info)?;
        if info.slots == 0 {
            return Err(AdmitError::Declared { rule: "slots", message: "a worker with no slots can take no job".into() });
        }
        if info.models.is_empty() || info.models.len() > MAX_MODELS_PER_WORKER {
            return Err(AdmitError::Declared {
                rule: "models",
                message: format!("a worker must serve 1..={MAX_MODELS_PER_WORKER} models, it declared {}", info.models.len()),
            });
        }
        if let Some(m) = info.models.iter().find(|m| m.id.is_empty() || m.id.len() > 256) {
            return Err(AdmitError::Declared { rule: "models", message: format!("model id {:?} is empty or over 256 bytes", m.id) });
        }
        if info.worker_id.is_empty() || info.worker_id.len() > 128 {
            return Err(AdmitError::Declared { rule: "worker_id", message: "worker id must be 1..=128 bytes".into() });
        }
        Ok(())
    }

    /// The models a worker routes by are the ones its evidence commits to, and a model id
    /// the policy pins is served with allowed weights. Evidence with no identity (the layout
    /// without one) is accepted only where the policy allows the insecure simulated TEE, for
    /// tests of the older layout; a real worker of this version always binds one.
    fn check_attested_models(&self, info: &WorkerInfo, verified: &VerifiedWorker) -> Result<(), AdmitError> {
        let listed = || info.models.iter().map(|m| (m.id.as_str(), m.digest.as_deref()));
        match verified.models_digest {
            Some(d) if d == attestation::models_digest(listed()) => {}
            Some(_) => {
                return Err(AdmitError::Declared {
                    rule: "models_digest",
                    message: "the models in the hello are not the ones the evidence commits to".into(),
                })
            }
            None if self.inner.attestor.policy().allow_insecure_simulated_tee => {}
            None => {
                return Err(AdmitError::Declared {
                    rule: "identity",
                    message: "the evidence binds no identity key and models digest".into(),
                })
            }
        }
        self.inner
            .attestor
            .policy()
            .check_models(listed())
            .map_err(|message| AdmitError::Declared { rule: "model_digest", message })
    }

    fn detach(&self, entry: &Arc<WorkerEntry>) {
        entry.connected.store(false, Ordering::Relaxed);
        self.inner
            .workers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(entry);
        // Dropping the senders ends every job stream; dispatch turns that into a retry
        // (before the first event) or an error event (after it).
        let jobs = std::mem::take(&mut *entry.lock_jobs());
        // Pending attestation requests see their sender dropped: "worker went away".
        entry.lock_attest().clear();
        for (_, slot) in jobs {
            slot.fail(JobError::new(502, "worker disconnected", true));
        }
        metrics::gauge!("cocoon_router_workers").decrement(1.0);
        tracing::warn!(worker = %entry.info.worker_id, "worker detached");
    }

    /// Models served by at least one connected worker, deduplicated by id.
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut out: Vec<ModelInfo> = Vec::new();
        for w in self.read().iter() {
            for m in &w.info.models {
                if !out.iter().any(|o| o.id == m.id) {
                    out.push(m.clone());
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn knows_model(&self, model: &str) -> bool {
        self.read().by_model.contains_key(model)
    }

    /// Whether `model` can call tools here: `Some(false)` only when every worker serving it
    /// reports it cannot, `Some(true)` when one can, `None` when nobody knows.
    pub fn tool_calls(&self, model: &str) -> Option<bool> {
        self.capability(model, protocol::Capability::ToolCalls)
    }

    /// [`Router::tool_calls`] for any capability: `Some(false)` only when every worker
    /// serving `model` reports lacking it (the request is then refused before anything
    /// runs); otherwise a request needing it is steered to the workers not lacking it.
    pub fn capability(&self, model: &str, c: protocol::Capability) -> Option<bool> {
        self.read().by_model.get(model).and_then(|m| m.capability(c))
    }

    /// The context length (tokens) every worker serving `model` can hold, where they report
    /// one: the smallest.
    pub fn context_len(&self, model: &str) -> Option<u32> {
        self.read().by_model.get(model).and_then(|m| m.context_len)
    }

    /// Whether a job for `model` may be served by a worker in the insecure simulated TEE
    /// (some connected worker serving it is one). A stream's headers go out before its
    /// worker is chosen, so they carry this, the conservative answer.
    pub fn serves_simulated(&self, model: &str) -> bool {
        self.read().by_model.get(model).is_some_and(|m| m.any_simulated)
    }

    /// Workers that would take a job now (any model).
    pub fn available_workers(&self) -> usize {
        let now = Instant::now();
        self.read()
            .iter()
            .filter(|w| {
                w.connected.load(Ordering::Relaxed)
                    && w.available.load(Ordering::Relaxed)
                    && w.circuit.would_admit(now)
            })
            .count()
    }

    pub fn snapshot(&self) -> Vec<WorkerSnapshot> {
        self.read()
            .iter()
            .map(|w| WorkerSnapshot {
                worker_id: w.info.worker_id.clone(),
                models: w.info.models.iter().map(|m| m.id.clone()).collect(),
                model_weights: w.info.models.iter().map(|m| (m.id.clone(), m.digest.clone())).collect(),
                running: w.running.load(Ordering::Relaxed),
                remote_running: w.remote_running.load(Ordering::Relaxed),
                slots: w.info.slots,
                available: w.available.load(Ordering::Relaxed),
                circuit_open: w.circuit.is_open(),
                ewma_ttft_us: w.ewma_ttft_us.load(Ordering::Relaxed),
                tee: w.tee_label(),
                insecure_simulated: w.insecure_simulated,
                attestation_expires_at: w.expires_at.load(Ordering::Relaxed),
                measurement: w.measurement_hex(),
                last_load: *w.last_load.lock().unwrap_or_else(|p| p.into_inner()),
            })
            .collect()
    }

    /// Each attached worker's GPU verdict from its last verified attestation (`None`: it
    /// sent no GPU evidence). Read for attestation reports only, not on the request path.
    pub fn gpu_verdicts(&self) -> std::collections::HashMap<String, Option<attestation::GpuClaims>> {
        self.read()
            .iter()
            .map(|w| (w.info.worker_id.clone(), w.verified.lock().unwrap_or_else(|p| p.into_inner()).gpu.clone()))
            .collect()
    }

    /// Sets, per attached worker, the jobs other replicas run on it.
    pub(crate) fn set_remote_load(&self, remote: impl Fn(&str) -> u32) {
        for w in self.read().iter() {
            w.remote_running.store(remote(&w.info.worker_id), Ordering::Relaxed);
        }
        self.inner.queues.wake_all();
    }

    /// A slot may have freed on `worker` (a job ended, it attached or became available):
    /// the queues of its models get a look, and those of jobs sealed to it.
    pub(crate) fn capacity_changed(&self, worker: &WorkerEntry) {
        for m in &worker.info.models {
            self.inner.queues.wake(&m.id);
            self.inner.queues.wake(&queue_key(&m.id, Some(&worker.info.worker_id)));
        }
    }

    /// Some worker (`only` that one, when named) could take a job for `model` now.
    pub(crate) fn has_free_slot(&self, model: &str, fit: Fit, exclude: &[u64], only: Option<&str>) -> bool {
        let now = Instant::now();
        self.read()
            .serving(model)
            .iter()
            .any(|w| named(w, only) && !exclude.contains(&w.conn_id) && w.eligible(model, fit, now))
    }

    /// Whether worker `id` is connected and serves `model` (for a job sealed to it).
    pub fn worker_serves(&self, id: &str, model: &str) -> bool {
        self.read().serving(model).iter().any(|w| w.info.worker_id == id && w.connected.load(Ordering::Relaxed))
    }

    /// Some worker could take a job for `model` once it has a free slot: the job may wait
    /// in the queue rather than be refused. A worker whose circuit is open does not count
    /// (it is failing; the client hears so at once and may retry).
    pub(crate) fn could_serve(&self, model: &str, fit: Fit, exclude: &[u64], only: Option<&str>) -> bool {
        let now = Instant::now();
        self.read().serving(model).iter().any(|w| {
            named(w, only)
                && !exclude.contains(&w.conn_id)
                && w.candidate(model, fit)
                && w.circuit.would_admit(now)
        })
    }

    /// Jobs waiting for a slot for `model` on this replica.
    pub fn queued(&self, model: &str) -> usize {
        self.inner.queues.waiting(model)
    }

    pub(crate) fn set_fleet(&self, view: crate::fleet::FleetView) {
        *self.inner.fleet.write().unwrap_or_else(|p| p.into_inner()) = Some(view);
    }

    /// The fleet across all replicas as of the last Redis sync; `None` when not shared.
    pub fn fleet(&self) -> Option<crate::fleet::FleetView> {
        self.inner.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks every connected worker serving `model` for fresh evidence bound to `nonce`
    /// (`GET /v1/attestation/report`). Each answer is checked to come from the HPKE key the
    /// worker attested on its connection; the caller (the client) verifies the evidence.
    pub async fn attest_workers(
        &self,
        model: &str,
        nonce: [u8; 32],
        timeout: Duration,
    ) -> Vec<(String, Result<attestation::WorkerAttestation, String>)> {
        let workers: Vec<Arc<WorkerEntry>> = self
            .read()
            .serving(model)
            .iter()
            .filter(|w| w.connected.load(Ordering::Relaxed))
            .cloned()
            .collect();
        let asks = workers.into_iter().map(|w| async move {
            let id = self.inner.next_attest_request.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            w.lock_attest().insert(id, tx);
            let msg = RouterToWorker::Attest {
                request_id: id,
                nonce: Bytes::copy_from_slice(&nonce),
            };
            let result = if w.tx.try_send(msg).is_err() {
                Err("worker queue full or closed".to_string())
            } else {
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err("worker went away".to_string()),
                    Err(_) => Err(format!("no evidence within {timeout:?}")),
                }
            };
            w.lock_attest().remove(&id);
            let result = result.and_then(|raw| w.check_own_key(raw));
            (w.info.worker_id.clone(), result)
        });
        futures::future::join_all(asks).await
    }

    /// Power of two choices among eligible workers not yet tried for this job.
    pub(crate) fn pick(
        &self,
        model: &str,
        fit: Fit,
        exclude: &[u64],
        only: Option<&str>,
    ) -> Option<(Arc<WorkerEntry>, Admission)> {
        let now = Instant::now();
        let chosen = {
            let workers = self.read();
            let ok = |w: &Arc<WorkerEntry>| named(w, only) && !exclude.contains(&w.conn_id) && w.eligible(model, fit, now);
            match two_eligible(workers.serving(model), ok)? {
                (a, None) => a.clone(),
                (a, Some(b)) => {
                    let key = |w: &WorkerEntry| (w.score(), w.info.price_coefficient);
                    if key(b) < key(a) {
                        b.clone()
                    } else {
                        a.clone()
                    }
                }
            }
        };
        match chosen.circuit.admit(now) {
            Admission::Rejected => None,
            adm => Some((chosen, adm)),
        }
    }
}

/// The router's side of one worker connection.
pub struct WorkerSession {
    router: Router,
    entry: Arc<WorkerEntry>,
}

impl WorkerSession {
    pub fn worker_id(&self) -> &str {
        &self.entry.info.worker_id
    }

    /// Unix seconds when this worker's verified attestation runs out.
    pub fn attestation_expires_at(&self) -> u64 {
        self.entry.expires_at.load(Ordering::Relaxed)
    }

    /// A fresh verification on the live link (re-challenge before expiry). The HPKE key must
    /// stay the one jobs are sealed to.
    pub(crate) fn reverified(&self, v: VerifiedWorker) -> Result<(), AdmitError> {
        // The policy may have changed since admission (SIGHUP, the policy registry): the
        // price cap and the model pins are judged again, not only the evidence.
        self.router.check_price(&self.entry.info)?;
        let info = &self.entry.info;
        self.router
            .inner
            .attestor
            .policy()
            .check_models(info.models.iter().map(|m| (m.id.as_str(), m.digest.as_deref())))
            .map_err(|message| AdmitError::Declared { rule: "model_digest", message })?;
        if v.hpke_public_key != self.entry.hpke_public_key {
            return Err(AdmitError::KeyChanged {
                had: self.entry.hpke_public_key.fingerprint(),
                got: v.hpke_public_key.fingerprint(),
            });
        }
        self.entry.expires_at.store(v.expires_at, Ordering::Relaxed);
        *self.entry.verified.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    /// Applies one message from the worker. Cheap and non-blocking: called per streamed chunk.
    pub fn handle(&self, msg: WorkerToRouter) {
        match msg {
            WorkerToRouter::Event { job_id, event } => {
                let mut jobs = self.entry.lock_jobs();
                let Some(slot) = jobs.get(&job_id) else { return };
                // A sealed job's events must come sealed; only a failure may come in clear
                // (e.g. the worker could not open the job), and it carries no completion.
                let event = if slot.opener.is_some() && !matches!(event, JobEvent::Failed { .. }) {
                    self.integrity_failure(job_id, "the worker answered a sealed job in clear".into())
                } else {
                    event
                };
                self.deliver(&mut jobs, job_id, event);
            }
            WorkerToRouter::SealedEvent {
                job_id,
                seq,
                last,
                ciphertext,
            } => {
                let mut jobs = self.entry.lock_jobs();
                let Some(slot) = jobs.get_mut(&job_id) else { return };
                let event = match slot.opener.as_mut() {
                    None => self.integrity_failure(job_id, "the worker sealed a response to a job sent in clear".into()),
                    Some(opener) => {
                        let chunk = SealedChunk { seq, last, ciphertext: ciphertext.to_vec() };
                        match opener.open(&chunk) {
                            Err(e) => self.integrity_failure(job_id, e.to_string()),
                            Ok(plain) => match wire::decode::<JobEvent>(&plain) {
                                Err(e) => self.integrity_failure(job_id, format!("undecodable event: {e}")),
                                // The terminal event must be the chunk flagged last, and only it.
                                Ok(ev) if ev.is_terminal() != last => self.integrity_failure(
                                    job_id,
                                    format!("chunk {seq}: final flag {last} on a {} event", if ev.is_terminal() { "terminal" } else { "non-terminal" }),
                                ),
                                Ok(ev) => ev,
                            },
                        }
                    }
                };
                self.deliver(&mut jobs, job_id, event);
            }
            WorkerToRouter::Attestation {
                request_id,
                attestation,
                error,
            } => {
                if let Some(tx) = self.entry.lock_attest().remove(&request_id) {
                    let r = match (attestation, error) {
                        (Some(a), _) => Ok(a),
                        (None, e) => Err(e.unwrap_or_else(|| "worker produced no evidence".into())),
                    };
                    let _ = tx.send(r);
                }
            }
            WorkerToRouter::Load(load) => {
                let was = self.entry.available.swap(load.available, Ordering::Relaxed);
                *self.entry.last_load.lock().unwrap_or_else(|p| p.into_inner()) = load;
                if load.available && !was {
                    self.router.capacity_changed(&self.entry);
                }
            }
            WorkerToRouter::Hello(info) => {
                // Re-attestation is handled by the link (it is async); here it is out of place.
                tracing::warn!(worker = %info.worker_id, "unexpected hello ignored");
            }
        }
    }

    fn deliver(&self, jobs: &mut HashMap<Uuid, JobSlot>, job_id: Uuid, event: JobEvent) {
        let terminal = event.is_terminal();
        let Some(slot) = jobs.get(&job_id) else { return };
        match slot.tx.try_send(event) {
            // A closed receiver means the client is gone; the cancel is already on its way.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The worker sent more than its window allows: end the job rather than buffer.
                metrics::counter!("cocoon_router_flow_control_violations_total").increment(1);
                tracing::error!(worker = %self.entry.info.worker_id, %job_id, "worker exceeded the job's flow-control window");
                *slot.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(JobError::new(
                    502,
                    "worker exceeded the job's flow-control window",
                    false,
                ));
                let _ = self.entry.tx.try_send(RouterToWorker::Cancel { job_id });
                jobs.remove(&job_id);
                return;
            }
        }
        if terminal {
            jobs.remove(&job_id);
        }
    }

    /// A response that fails authentication ends the job with an error (never relayed) and
    /// stops the worker generating it.
    fn integrity_failure(&self, job_id: Uuid, why: String) -> JobEvent {
        metrics::counter!("cocoon_router_integrity_failures_total").increment(1);
        tracing::error!(worker = %self.entry.info.worker_id, %job_id, error = %why, "response integrity check failed");
        let _ = self.entry.tx.try_send(RouterToWorker::Cancel { job_id });
        JobEvent::Failed {
            error: JobError::new(502, format!("response integrity check failed: {why}"), false),
            usage: None,
        }
    }
}

impl WorkerEntry {
    pub(crate) fn measurement_hex(&self) -> String {
        match &self.verified.lock().unwrap_or_else(|p| p.into_inner()).claims.details {
            attestation::TeeDetails::Tdx { measurements, .. }
            | attestation::TeeDetails::Simulated { measurements, .. } => measurements.mrtd.to_hex(),
            attestation::TeeDetails::SevSnp { measurement, .. } => measurement.to_hex(),
        }
    }

    pub(crate) fn tee_label(&self) -> String {
        if self.insecure_simulated {
            "simulated".to_string()
        } else {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .claims
                .kind
                .to_string()
        }
    }

    /// Evidence in an attestation answer must be for the key this connection attested.
    fn check_own_key(&self, raw: Bytes) -> Result<attestation::WorkerAttestation, String> {
        let att: attestation::WorkerAttestation =
            serde_json::from_slice(&raw).map_err(|e| format!("malformed attestation: {e}"))?;
        if att.hpke_public_key != self.hpke_public_key {
            return Err(format!(
                "evidence is for HPKE key {} but the connection attested {}",
                att.hpke_public_key.fingerprint(),
                self.hpke_public_key.fingerprint()
            ));
        }
        Ok(att)
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.router.detach(&self.entry);
    }
}

#[cfg(test)]
mod ttft_decay_tests {
    use super::*;

    #[test]
    fn a_slow_average_without_samples_decays_to_the_floor() {
        assert_eq!(decayed_ttft(0, 0), TTFT_FLOOR_US, "unsampled: the floor");
        assert_eq!(decayed_ttft(101_000, 0), 101_000, "fresh: as measured");
        assert_eq!(decayed_ttft(101_000, 999), 101_000);
        assert_eq!(decayed_ttft(101_000, 1_000), 51_000, "one half-life");
        assert_eq!(decayed_ttft(101_000, 3_500), 13_500, "three");
        assert_eq!(decayed_ttft(u64::MAX, 10_000_000), TTFT_FLOOR_US, "no overflow, back to the floor");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod pick_tests {
    use super::*;

    #[test]
    fn two_eligible_finds_only_admitted_items_whether_probing_or_scanning() {
        let pool: Vec<u32> = (0..1000).collect();
        assert_eq!(two_eligible(&pool, |_| false), None);
        assert_eq!(two_eligible(&pool, |x| *x == 7), Some((&7, None)), "one among many: found by the scan");
        for _ in 0..200 {
            let (a, b) = two_eligible(&pool, |x| *x % 2 == 0).unwrap();
            let b = *b.unwrap();
            assert!(a % 2 == 0 && b % 2 == 0 && *a != b);
        }
        let small = [1u32, 2];
        let (a, b) = two_eligible(&small, |_| true).unwrap();
        assert_ne!(*a, *b.unwrap());
    }

    #[test]
    fn two_eligible_draws_uniformly() {
        // 100 items, half admitted: each admitted one should come first ~1/50 of the time.
        let pool: Vec<usize> = (0..100).collect();
        let mut first = [0u32; 100];
        let draws = 50_000;
        for _ in 0..draws {
            let (a, _) = two_eligible(&pool, |x| *x >= 50).unwrap();
            first[*a] += 1;
        }
        assert!(first[..50].iter().all(|n| *n == 0));
        let expected = draws as f64 / 50.0;
        for (i, n) in first[50..].iter().enumerate() {
            let dev = (f64::from(*n) - expected).abs() / expected;
            assert!(dev < 0.2, "item {} drawn {n} times, expected ~{expected}", i + 50);
        }
    }
}
