//! Connected workers and how one is chosen for a job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use protocol::{JobEvent, Load, ModelInfo, RouterToWorker, WorkerInfo, WorkerToRouter};
use rand::Rng;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::circuit::{Admission, Circuit};
use crate::config::RouterConfig;

/// Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: RouterConfig,
    workers: RwLock<Vec<Arc<WorkerEntry>>>,
    next_conn: AtomicU64,
}

pub(crate) struct WorkerEntry {
    /// Unique per connection, so a reconnecting worker never inherits a stale entry's jobs.
    pub(crate) conn_id: u64,
    pub(crate) info: WorkerInfo,
    pub(crate) tx: mpsc::Sender<RouterToWorker>,
    pub(crate) jobs: Mutex<HashMap<Uuid, mpsc::UnboundedSender<JobEvent>>>,
    pub(crate) running: AtomicU32,
    pub(crate) available: AtomicBool,
    pub(crate) connected: AtomicBool,
    /// Time to first event, exponentially weighted, in microseconds (0 = no sample yet).
    pub(crate) ewma_ttft_us: AtomicU64,
    pub(crate) circuit: Circuit,
}

const TTFT_FLOOR_US: u64 = 1_000;

/// What the registry knows about one worker (for `/readyz`, logs and tests).
#[derive(Clone, Debug)]
pub struct WorkerSnapshot {
    pub worker_id: String,
    pub models: Vec<String>,
    pub running: u32,
    pub slots: u32,
    pub available: bool,
    pub circuit_open: bool,
    pub ewma_ttft_us: u64,
}

impl WorkerEntry {
    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, mpsc::UnboundedSender<JobEvent>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_job(&self, id: Uuid, tx: mpsc::UnboundedSender<JobEvent>) {
        self.lock_jobs().insert(id, tx);
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
    }

    fn score(&self) -> u128 {
        let running = u128::from(self.running.load(Ordering::Relaxed)) + 1;
        // TTFT differences under a millisecond are jitter, not a slower worker: flooring keeps
        // them from outweighing load. Unsampled workers sit at the floor, so they get traffic.
        let ttft = u128::from(self.ewma_ttft_us.load(Ordering::Relaxed).max(TTFT_FLOOR_US));
        running * ttft
    }

    fn eligible(&self, model: &str, max_price: Option<u32>, now: Instant) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.available.load(Ordering::Relaxed)
            && self.serves(model)
            && self.running.load(Ordering::Relaxed) < self.info.slots
            && max_price.is_none_or(|cap| self.info.price_coefficient <= cap)
            && self.circuit.would_admit(now)
    }
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                workers: RwLock::new(Vec::new()),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.inner.cfg
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<WorkerEntry>>> {
        self.inner.workers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connected worker. The returned receiver carries jobs and cancels to it;
    /// everything it says goes through [`WorkerSession::handle`]. Dropping the session
    /// removes the worker and fails its in-flight jobs.
    pub fn attach(&self, info: WorkerInfo) -> (WorkerSession, mpsc::Receiver<RouterToWorker>) {
        let (tx, rx) = mpsc::channel(self.inner.cfg.worker_queue);
        let entry = Arc::new(WorkerEntry {
            conn_id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            info,
            tx,
            jobs: Mutex::new(HashMap::new()),
            running: AtomicU32::new(0),
            available: AtomicBool::new(true),
            connected: AtomicBool::new(true),
            ewma_ttft_us: AtomicU64::new(0),
            circuit: Circuit::new(),
        });
        tracing::info!(
            worker = %entry.info.worker_id,
            models = ?entry.info.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            slots = entry.info.slots,
            gpu = %entry.info.gpu,
            "worker attached"
        );
        self.inner
            .workers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.clone());
        metrics::gauge!("cocoon_router_workers").increment(1.0);
        (
            WorkerSession {
                router: self.clone(),
                entry,
            },
            rx,
        )
    }

    fn detach(&self, entry: &Arc<WorkerEntry>) {
        entry.connected.store(false, Ordering::Relaxed);
        self.inner
            .workers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.conn_id != entry.conn_id);
        // Dropping the senders ends every job stream; dispatch turns that into a retry
        // (before the first event) or an error event (after it).
        let jobs = std::mem::take(&mut *entry.lock_jobs());
        for (_, tx) in jobs {
            let _ = tx.send(JobEvent::Failed {
                error: protocol::JobError::new(502, "worker disconnected", true),
                usage: None,
            });
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
        self.read().iter().any(|w| w.serves(model))
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
                running: w.running.load(Ordering::Relaxed),
                slots: w.info.slots,
                available: w.available.load(Ordering::Relaxed),
                circuit_open: w.circuit.is_open(),
                ewma_ttft_us: w.ewma_ttft_us.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Power of two choices among eligible workers not yet tried for this job.
    pub(crate) fn pick(
        &self,
        model: &str,
        max_price: Option<u32>,
        exclude: &[u64],
    ) -> Option<(Arc<WorkerEntry>, Admission)> {
        let now = Instant::now();
        let candidates: Vec<Arc<WorkerEntry>> = self
            .read()
            .iter()
            .filter(|w| !exclude.contains(&w.conn_id) && w.eligible(model, max_price, now))
            .cloned()
            .collect();
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0].clone(),
            n => {
                let mut rng = rand::thread_rng();
                let i = rng.gen_range(0..n);
                let mut j = rng.gen_range(0..n - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (&candidates[i], &candidates[j]);
                let key = |w: &WorkerEntry| (w.score(), w.info.price_coefficient);
                if key(b) < key(a) {
                    b.clone()
                } else {
                    a.clone()
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

    /// Applies one message from the worker. Cheap and non-blocking: called per streamed chunk.
    pub fn handle(&self, msg: WorkerToRouter) {
        match msg {
            WorkerToRouter::Event { job_id, event } => {
                let terminal = event.is_terminal();
                let mut jobs = self.entry.lock_jobs();
                if let Some(tx) = jobs.get(&job_id) {
                    // A closed receiver means the client is gone; the cancel is already on its way.
                    let _ = tx.send(event);
                    if terminal {
                        jobs.remove(&job_id);
                    }
                }
            }
            WorkerToRouter::Load(Load { available, .. }) => {
                self.entry.available.store(available, Ordering::Relaxed);
            }
            WorkerToRouter::Hello(info) => {
                tracing::warn!(worker = %info.worker_id, "duplicate hello ignored");
            }
        }
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.router.detach(&self.entry);
    }
}
