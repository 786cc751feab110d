//! The worker-agent: runs next to an OpenAI-compatible engine (inside the confidential VM in
//! production), takes jobs from the router, runs them against the engine over loopback HTTP and
//! streams the engine's answer back as [`protocol::JobEvent`]s. It never logs prompts or outputs.

pub mod config;
pub mod engine;
pub mod engine_load;
pub mod engine_log;
pub mod engine_policy;
pub mod gpu;
pub mod measure;
pub mod metrics;
pub mod net;
mod e2e;
mod normalize;
mod receipts;
pub use receipts::ReceiptLog;
mod responses;
mod responses_native;
mod sink;
mod sse;
mod tool_stream;
pub mod supervisor;
pub mod tee;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{JobEnvelope, JobError, JobEvent, Load, RouterToWorker, WorkerInfo, WorkerToRouter};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::WorkerConfig;
pub use engine::{EngineClient, EngineError};
pub use tee::WorkerTee;

use crate::sink::EventSink;

/// A job this worker runs: the link it came on, its task, and its flow-control credit.
struct RunningJob {
    link: u64,
    task: AbortHandle,
    credits: Arc<tokio::sync::Semaphore>,
}

/// What this worker's evidence commits to about its models (ids and weight digests).
pub fn models_digest(info: &WorkerInfo) -> [u8; 32] {
    attestation::models_digest(info.models.iter().map(|m| (m.id.as_str(), m.digest.as_deref())))
}

pub struct WorkerAgent {
    /// Weight digests by model id, measured by this worker (see [`measure`]).
    model_digests: std::sync::RwLock<HashMap<String, String>>,
    cfg: WorkerConfig,
    engine: EngineClient,
    tee: Arc<WorkerTee>,
    /// Running jobs, with the link they came on.
    jobs: Mutex<HashMap<Uuid, RunningJob>>,
    running: AtomicU32,
}

/// What one router link needs besides its channels.
#[derive(Clone, Debug)]
pub struct LinkIdentity {
    /// This worker's description for `Hello` (its attestation is added per challenge).
    pub info: WorkerInfo,
    /// Distinguishes this link's jobs from those of the worker's other links (one per
    /// gateway replica).
    pub link_id: u64,
    /// SubjectPublicKeyInfo (DER) of the TLS key this worker presents on the link; empty
    /// for the in-process link, which has no TLS.
    pub tls_spki_der: Arc<Vec<u8>>,
}

impl WorkerAgent {
    pub fn new(cfg: WorkerConfig, tee: WorkerTee) -> Result<Arc<Self>, EngineError> {
        let engine = EngineClient::new(&cfg.engine_url)?;
        Ok(Self::with_engine(cfg, tee, engine))
    }

    /// For an engine this worker supervises: it reports itself unavailable while the engine
    /// is down, and shares the supervisor's metrics.
    pub fn supervised(
        mut cfg: WorkerConfig,
        tee: WorkerTee,
        sup: &supervisor::EngineSupervisor,
    ) -> Result<Arc<Self>, EngineError> {
        cfg.engine_url = sup.url().to_string();
        let engine = EngineClient::supervised(sup)?;
        Ok(Self::with_engine(cfg, tee, engine))
    }

    fn with_engine(cfg: WorkerConfig, tee: WorkerTee, engine: EngineClient) -> Arc<Self> {
        Arc::new(Self {
            model_digests: std::sync::RwLock::new(HashMap::new()),
            cfg,
            engine,
            tee: Arc::new(tee),
            jobs: Mutex::new(HashMap::new()),
            running: AtomicU32::new(0),
        })
    }

    /// Records the digest of the weights served as `model` (measured by the caller, see
    /// [`measure::digest_cached`]); it goes into the hello and the evidence.
    pub fn set_model_digest(&self, model: &str, digest: String) {
        self.model_digests.write().unwrap_or_else(|p| p.into_inner()).insert(model.to_string(), digest);
    }

    pub fn engine(&self) -> &EngineClient {
        &self.engine
    }

    pub fn tee(&self) -> &WorkerTee {
        &self.tee
    }

    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Waits until the engine answers and describes this worker with the models it serves.
    /// `slots` is the engine's real parallelism (vLLM's `--max-num-seqs`, which the worker
    /// set to `worker.slots`; llama-server's `/props` `total_slots`), capped by `worker.slots`.
    pub async fn info(&self, wait: Duration) -> Result<WorkerInfo, EngineError> {
        let mut models = self.engine.wait_for_models(wait).await?;
        {
            let digests = self.model_digests.read().unwrap_or_else(|p| p.into_inner());
            for m in &mut models {
                m.digest = digests.get(&m.id).cloned();
            }
        }
        let parallelism = self.engine.parallelism().await;
        let slots = parallelism.map_or(self.cfg.slots, |p| p.min(self.cfg.slots)).max(1);
        if parallelism.is_some_and(|p| p < self.cfg.slots) {
            tracing::info!(
                engine_slots = parallelism,
                worker_slots = self.cfg.slots,
                "advertising the engine's parallelism as this worker's slots"
            );
        }
        if let Some(tools) = self.engine.tool_calls().await {
            for m in &mut models {
                m.tool_calls = Some(tools);
            }
        }
        let (json_schema, logprobs, multiple_choices) = self.engine.capabilities();
        for m in &mut models {
            m.json_schema = json_schema;
            m.logprobs = logprobs;
            m.multiple_choices = multiple_choices;
        }
        Ok(WorkerInfo {
            worker_id: self.cfg.worker_id.clone(),
            models,
            gpu: self.cfg.gpu.clone(),
            slots,
            price_coefficient: self.cfg.price_coefficient,
            attestation: None,
        })
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RunningJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one router connection until it closes or `shutdown` fires: answers the
    /// router's challenges with evidence (`Hello`), runs jobs, answers attestation requests.
    /// On shutdown it tells the router it takes no more jobs, lets running jobs finish (up to
    /// the drain timeout), then returns.
    pub async fn run(
        self: Arc<Self>,
        link: LinkIdentity,
        mut from_router: mpsc::Receiver<RouterToWorker>,
        to_router: mpsc::Sender<WorkerToRouter>,
        shutdown: CancellationToken,
    ) {
        let health = tokio::spawn(self.clone().health_loop(to_router.clone(), shutdown.clone()));
        // This link's HPKE context, from the router's `Session` right after admission.
        let mut session: Option<Arc<attestation::LinkOpener>> = None;
        loop {
            tokio::select! {
                msg = from_router.recv() => match msg {
                    Some(RouterToWorker::Session { enc }) => match self.tee.open_link(link.link_id, &enc) {
                        Ok(o) => session = Some(Arc::new(o)),
                        // Jobs on this link will fail to open (and be retried elsewhere).
                        Err(e) => tracing::error!(error = %e, "cannot open the link's HPKE session"),
                    },
                    Some(RouterToWorker::Job(job)) => self.start_job(link.link_id, job, session.as_deref(), to_router.clone()),
                    Some(RouterToWorker::Cancel { job_id }) => self.cancel(job_id),
                    Some(RouterToWorker::Credit { job_id, events }) => self.credit(job_id, events),
                    Some(RouterToWorker::Challenge { nonce }) => self.answer_challenge(&link, nonce, to_router.clone()),
                    Some(RouterToWorker::Attest { request_id, nonce }) => self.answer_attest(&link, request_id, nonce, to_router.clone()),
                    Some(RouterToWorker::Refused { reason }) => {
                        tracing::error!(%reason, "the router refused this worker");
                        break;
                    }
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
        // The link is over: its HPKE key goes (jobs on it were already failed over).
        self.tee.drop_link(link.link_id);
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
                    Some(RouterToWorker::Credit { job_id, events }) => self.credit(job_id, events),
                    Some(_) => {}
                    None => break,
                },
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(running = self.running(), "drain timeout; aborting remaining jobs");
                    for (_, j) in self.lock_jobs().drain() { j.task.abort(); }
                    break;
                }
            }
        }
    }

    fn load(&self, available: bool) -> Load {
        Load {
            running: self.running(),
            available,
            ..Load::default()
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
            let mut load = self.load(ok);
            if ok {
                let parallelism = self.engine.facts().parallelism;
                engine_load::fetch(self.engine.http(), self.engine.base_url(), self.engine.kind(), parallelism)
                    .await
                    .apply(&mut load);
            }
            if to_router.send(WorkerToRouter::Load(load)).await.is_err() {
                return;
            }
        }
    }

    /// Aborts the running jobs of one link (it dropped; the router already failed them over).
    pub fn abort_link(&self, link_id: u64) {
        let mut jobs = self.lock_jobs();
        jobs.retain(|_, j| {
            if j.link == link_id {
                j.task.abort();
                self.running.fetch_sub(1, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
    }

    fn cancel(&self, job_id: Uuid) {
        if let Some(j) = self.lock_jobs().remove(&job_id) {
            // Aborting drops the engine response, which closes its connection: the engine
            // sees the client go away and stops generating.
            j.task.abort();
            self.running.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(%job_id, "job cancelled");
        }
    }

    /// The router's client read more of this job's events: it may send that many more.
    fn credit(&self, job_id: Uuid, events: u32) {
        if let Some(j) = self.lock_jobs().get(&job_id) {
            // Bounded so a misbehaving router cannot overflow the semaphore.
            let room = protocol::JOB_EVENT_WINDOW as usize * 4;
            let add = (events as usize).min(room.saturating_sub(j.credits.available_permits()));
            j.credits.add_permits(add);
        }
    }

    fn answer_challenge(&self, link: &LinkIdentity, nonce: bytes::Bytes, to_router: mpsc::Sender<WorkerToRouter>) {
        let (tee, link) = (self.tee.clone(), link.clone());
        tokio::spawn(async move {
            let models = models_digest(&link.info);
            match tee.attest(link.link_id, models, link.tls_spki_der.clone(), &nonce).await {
                Ok(att) => {
                    let mut info = link.info;
                    info.attestation = Some(att);
                    let _ = to_router.send(WorkerToRouter::Hello(info)).await;
                }
                // The router times the challenge out and closes the link; we reconnect.
                Err(e) => tracing::error!(error = %e, "producing attestation evidence failed"),
            }
        });
    }

    fn answer_attest(&self, link: &LinkIdentity, request_id: u64, nonce: bytes::Bytes, to_router: mpsc::Sender<WorkerToRouter>) {
        let (tee, spki, link_id, models) = (self.tee.clone(), link.tls_spki_der.clone(), link.link_id, models_digest(&link.info));
        tokio::spawn(async move {
            let (attestation, error) = match tee.attest(link_id, models, spki, &nonce).await {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(e)),
            };
            let _ = to_router
                .send(WorkerToRouter::Attestation { request_id, attestation, error })
                .await;
        });
    }

    fn start_job(
        self: &Arc<Self>,
        link_id: u64,
        envelope: JobEnvelope,
        session: Option<&attestation::LinkOpener>,
        to_router: mpsc::Sender<WorkerToRouter>,
    ) {
        let job_id = envelope.id;
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
        let (job, sealer) = match self.tee.open(envelope, session) {
            Ok(x) => x,
            Err(e) => {
                // Not this worker's key, or altered in transit; another worker gets it sealed afresh.
                tracing::warn!(%job_id, error = %e, "cannot open sealed job");
                let _ = to_router.try_send(WorkerToRouter::Event {
                    job_id,
                    event: JobEvent::Failed { error: JobError::new(502, "worker could not open the sealed job", true), usage: None },
                });
                return;
            }
        };
        let credits = Arc::new(tokio::sync::Semaphore::new(protocol::JOB_EVENT_WINDOW as usize));
        let request_body = job.body.clone();
        let (job, e2e) = match job.e2e {
            None => (job, None),
            Some(_) => match e2e::open(job, &self.cfg.worker_id, &self.tee.openers().iter().map(|k| &**k).collect::<Vec<_>>()) {
                Ok(o) => {
                    let answer = sink::E2eAnswer { writer: o.writer, client_wants_usage: o.client_wants_usage, header_sent: false };
                    (o.job, Some((answer, o.request_id)))
                }
                Err(error) => {
                    tracing::warn!(%job_id, error = %error.message, "refused an end-to-end request");
                    let _ = to_router.try_send(WorkerToRouter::Event { job_id, event: JobEvent::Failed { error, usage: None } });
                    return;
                }
            },
        };
        let receipt = receipts::ReceiptBuilder::new(
            self.tee.identity(),
            self.tee.receipt_log(),
            receipts::JobFacts {
                job_id,
                request_id: e2e.as_ref().map(|(_, id)| *id),
                worker_id: &self.cfg.worker_id,
                model: &job.model,
                endpoint: job.endpoint.path(),
                request_body: &request_body,
                price_coefficient: self.cfg.price_coefficient,
            },
        );
        let mut sink = EventSink::new(job_id, to_router, sealer, credits.clone()).with_receipt(receipt);
        if let Some((answer, _)) = e2e {
            sink = sink.with_e2e(answer);
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        // Hold the map lock across spawn so a fast job cannot finish before it is registered.
        let mut jobs = self.lock_jobs();
        let handle = tokio::spawn(async move {
            let engine = this.engine.clone();
            engine::run_job(&engine, job, &mut sink).await;
            if this.lock_jobs().remove(&job_id).is_some() {
                this.running.fetch_sub(1, Ordering::Relaxed);
            }
        });
        jobs.insert(job_id, RunningJob { link: link_id, task: handle.abort_handle(), credits });
    }
}
