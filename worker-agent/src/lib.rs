//! The worker-agent: runs next to an OpenAI-compatible engine (inside the confidential VM in
//! production), takes jobs from the router, runs them against the engine over loopback HTTP and
//! streams the engine's answer back as [`protocol::JobEvent`]s. It never logs prompts or outputs.

pub mod config;
pub mod engine;
pub mod net;
mod sse;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Job, JobError, JobEvent, Load, RouterToWorker, WorkerInfo, WorkerToRouter};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::WorkerConfig;
pub use engine::{EngineClient, EngineError};

pub struct WorkerAgent {
    cfg: WorkerConfig,
    engine: EngineClient,
    jobs: Mutex<HashMap<Uuid, AbortHandle>>,
    running: AtomicU32,
}

impl WorkerAgent {
    pub fn new(cfg: WorkerConfig) -> Result<Arc<Self>, EngineError> {
        let engine = EngineClient::new(&cfg.engine_url)?;
        Ok(Arc::new(Self {
            cfg,
            engine,
            jobs: Mutex::new(HashMap::new()),
            running: AtomicU32::new(0),
        }))
    }

    pub fn engine(&self) -> &EngineClient {
        &self.engine
    }

    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Waits until the engine answers and describes this worker with the models it serves.
    pub async fn info(&self, wait: Duration) -> Result<WorkerInfo, EngineError> {
        let models = self.engine.wait_for_models(wait).await?;
        Ok(WorkerInfo {
            worker_id: self.cfg.worker_id.clone(),
            models,
            gpu: self.cfg.gpu.clone(),
            slots: self.cfg.slots,
            price_coefficient: self.cfg.price_coefficient,
        })
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, AbortHandle>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one router connection until it closes or `shutdown` fires. On shutdown it tells
    /// the router it takes no more jobs, lets running jobs finish (up to the drain timeout),
    /// then returns.
    pub async fn run(
        self: Arc<Self>,
        mut from_router: mpsc::Receiver<RouterToWorker>,
        to_router: mpsc::Sender<WorkerToRouter>,
        shutdown: CancellationToken,
    ) {
        let health = tokio::spawn(self.clone().health_loop(to_router.clone(), shutdown.clone()));
        loop {
            tokio::select! {
                msg = from_router.recv() => match msg {
                    Some(RouterToWorker::Job(job)) => self.start_job(job, to_router.clone()),
                    Some(RouterToWorker::Cancel { job_id }) => self.cancel(job_id),
                    None => break,
                },
                () = shutdown.cancelled() => {
                    let _ = to_router.send(WorkerToRouter::Load(self.load(false))).await;
                    self.drain(&mut from_router, &to_router).await;
                    break;
                }
            }
        }
        health.abort();
    }

    /// Finishes running jobs; new jobs are refused (retryable, so the router goes elsewhere).
    async fn drain(
        &self,
        from_router: &mut mpsc::Receiver<RouterToWorker>,
        to_router: &mpsc::Sender<WorkerToRouter>,
    ) {
        let deadline = tokio::time::Instant::now() + self.cfg.drain_timeout();
        tracing::info!(running = self.running(), "draining");
        while self.running() > 0 {
            tokio::select! {
                msg = from_router.recv() => match msg {
                    Some(RouterToWorker::Job(job)) => {
                        let _ = to_router.send(WorkerToRouter::Event {
                            job_id: job.id,
                            event: JobEvent::Failed { error: JobError::new(503, "worker is draining", true), usage: None },
                        }).await;
                    }
                    Some(RouterToWorker::Cancel { job_id }) => self.cancel(job_id),
                    None => break,
                },
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(running = self.running(), "drain timeout; aborting remaining jobs");
                    for (_, h) in self.lock_jobs().drain() { h.abort(); }
                    break;
                }
            }
        }
    }

    fn load(&self, available: bool) -> Load {
        Load {
            running: self.running(),
            queued: 0,
            available,
        }
    }

    async fn health_loop(self: Arc<Self>, to_router: mpsc::Sender<WorkerToRouter>, shutdown: CancellationToken) {
        let mut last = true;
        let mut tick = tokio::time::interval(self.cfg.health_interval());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let ok = self.engine.healthy().await;
            if ok != last {
                tracing::warn!(healthy = ok, "engine health changed");
            }
            last = ok;
            if to_router.send(WorkerToRouter::Load(self.load(ok))).await.is_err() {
                return;
            }
        }
    }

    /// Aborts every running job (the router link dropped; the router already failed them over).
    pub fn abort_all(&self) {
        for (_, h) in self.lock_jobs().drain() {
            h.abort();
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn cancel(&self, job_id: Uuid) {
        if let Some(h) = self.lock_jobs().remove(&job_id) {
            // Aborting drops the engine response, which closes its connection: the engine
            // sees the client go away and stops generating.
            h.abort();
            self.running.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(%job_id, "job cancelled");
        }
    }

    fn start_job(self: &Arc<Self>, job: Job, to_router: mpsc::Sender<WorkerToRouter>) {
        let job_id = job.id;
        if self.running() >= self.cfg.slots {
            let _ = to_router.try_send(WorkerToRouter::Event {
                job_id,
                event: JobEvent::Failed {
                    error: JobError::new(503, "worker has no free slot", true),
                    usage: None,
                },
            });
            return;
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        // Hold the map lock across spawn so a fast job cannot finish before it is registered.
        let mut jobs = self.lock_jobs();
        let handle = tokio::spawn(async move {
            let engine = this.engine.clone();
            engine::run_job(&engine, job, &to_router).await;
            if this.lock_jobs().remove(&job_id).is_some() {
                this.running.fetch_sub(1, Ordering::Relaxed);
            }
        });
        jobs.insert(job_id, handle.abort_handle());
    }
}
