//! Sending one job to a worker: admission (at once: a slot, a place in the queue, or a
//! refusal), waiting in the model's queue, retries before the first event, and the stream of
//! the job's events with flow control and cancel-on-drop.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use attestation::JobContext;
use bytes::Bytes;
use futures::Stream;
use protocol::{Job, JobEnvelope, JobError, JobEvent, Payload, RouterToWorker, JOB_EVENT_WINDOW};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::circuit::Admission;
use crate::queue::Waiter;
use crate::registry::{JobSlot, Router, WorkerEntry};

#[derive(Clone, Debug, Default)]
pub struct DispatchOptions {
    /// Highest worker price coefficient (thousandths) the client accepts.
    pub max_price_coefficient: Option<u32>,
    /// Whose request it is: the queue takes turns across accounts.
    pub account: String,
    /// Only this worker (an end-to-end sealed request can be opened by no other): no
    /// retry on another worker, and its own queue.
    pub worker: Option<String>,
    /// What the request needs of the engine (tools, json_schema, …): workers that report
    /// lacking it are passed over.
    pub needs: protocol::Needs,
}

impl DispatchOptions {
    pub(crate) fn fit(&self) -> crate::registry::Fit {
        crate::registry::Fit { max_price: self.max_price_coefficient, needs: self.needs }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("The model `{0}` does not exist or no worker serves it")]
    ModelNotFound(String),
    /// No worker could take the job even once a slot frees (all unavailable, or all above
    /// the client's price cap).
    #[error("No worker can take model `{0}` right now; retry shortly")]
    NoCapacity(String),
    #[error("Too many requests are waiting for model `{model}` (queue limit {limit}); retry shortly")]
    QueueFull { model: String, limit: usize },
    #[error("No worker for model `{model}` became free within {waited:?}; retry shortly")]
    QueueTimeout { model: String, waited: Duration },
    /// The worker a sealed request names is not connected (or does not serve the model).
    #[error("Worker `{worker}` is not available for model `{model}`: fetch a fresh attestation report and seal to another worker")]
    WorkerUnavailable { worker: String, model: String },
    /// Every attempt failed; the last worker's error.
    #[error("{0}")]
    Job(JobError),
}

impl RouteError {
    /// Seconds a client should wait before retrying, for errors that are about capacity.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RouteError::NoCapacity(_) | RouteError::QueueFull { .. } => Some(1),
            RouteError::QueueTimeout { .. } => Some(2),
            _ => None,
        }
    }
}

/// A job admitted for a model: it either has a place in the model's queue or may take a
/// free slot at once. Admission answers immediately, so a streaming client gets its response
/// headers before any waiting; [`Ticket::dispatch`] then does the waiting.
pub struct Ticket {
    router: Router,
    model: String,
    opts: DispatchOptions,
    waiter: Option<Waiter>,
    admitted: Instant,
}

impl Ticket {
    /// Whether the job had to queue at admission.
    pub fn queued(&self) -> bool {
        self.waiter.is_some()
    }
}

impl Router {
    /// Admits a job for `model`: refuses at once when no worker serves it, none could take it,
    /// or the model's queue is full; otherwise the job may take a free slot or wait its turn.
    pub fn admit(&self, model: &str, opts: DispatchOptions) -> Result<Ticket, RouteError> {
        if !self.knows_model(model) {
            return Err(RouteError::ModelNotFound(model.to_string()));
        }
        let only = opts.worker.as_deref();
        if let Some(w) = only {
            if !self.worker_serves(w, model) {
                return Err(RouteError::WorkerUnavailable { worker: w.to_string(), model: model.to_string() });
            }
        }
        let queues = &self.inner.queues;
        let key = crate::registry::queue_key(model, only);
        let waiter = if queues.has_waiters(&key) || !self.has_free_slot(model, opts.fit(), &[], only) {
            if !self.could_serve(model, opts.fit(), &[], only) {
                return Err(match only {
                    Some(w) => RouteError::WorkerUnavailable { worker: w.to_string(), model: model.to_string() },
                    None => RouteError::NoCapacity(model.to_string()),
                });
            }
            let limit = self.inner.cfg.max_queued_per_model;
            let w = queues.join(&key, &opts.account, limit).map_err(|f| {
                metrics::counter!("cocoon_router_queue_rejected_total", "reason" => "full").increment(1);
                RouteError::QueueFull { model: model.to_string(), limit: f.limit }
            })?;
            Some(w)
        } else {
            None
        };
        Ok(Ticket {
            router: self.clone(),
            model: model.to_string(),
            opts,
            waiter,
            admitted: Instant::now(),
        })
    }

    /// Admits and dispatches in one call (non-streaming callers and tests).
    pub async fn dispatch(&self, job: Job, opts: DispatchOptions) -> Result<JobStream, RouteError> {
        self.admit(&job.model, opts)?.dispatch(job).await
    }
}

impl Ticket {
    /// Sends `job` to a worker, waiting in the model's queue for a slot if needed (up to
    /// `router.queue_timeout_ms` from admission), and waits for its first event, retrying
    /// on other workers while nothing has been produced. On success the stream yields that
    /// first event and the rest.
    pub async fn dispatch(mut self, job: Job) -> Result<JobStream, RouteError> {
        let router = self.router.clone();
        let cfg = &router.inner.cfg;
        let mut tried: Vec<u64> = Vec::new();
        let mut last_err: Option<JobError> = None;
        // A job for one named worker has nowhere else to go.
        let attempts = if self.opts.worker.is_some() { 1 } else { cfg.max_attempts };
        for attempt in 0..attempts {
            let (worker, admission) = match self.acquire(&tried).await {
                Ok(w) => w,
                Err(e) => return Err(last_err.map_or(e, RouteError::Job)),
            };
            tried.push(worker.conn_id);
            if attempt > 0 {
                metrics::counter!("cocoon_router_retries_total").increment(1);
            }
            match router.try_worker(&worker, &job).await {
                Ok(stream) => {
                    if admission == Admission::Probe {
                        tracing::info!(worker = %worker.info.worker_id, "half-open probe succeeded");
                    }
                    return Ok(stream);
                }
                Err(e) => {
                    let opened = worker.circuit.on_failure(Instant::now(), cfg.circuit_failure_threshold, cfg.circuit_open());
                    if opened {
                        metrics::counter!("cocoon_router_circuit_opened_total").increment(1);
                        tracing::warn!(worker = %worker.info.worker_id, "circuit opened");
                    }
                    tracing::warn!(
                        worker = %worker.info.worker_id,
                        job_id = %job.id,
                        attempt,
                        retryable = e.retryable,
                        error = %e.message,
                        "job failed before its first event"
                    );
                    let retryable = e.retryable;
                    last_err = Some(e);
                    if !retryable {
                        break;
                    }
                }
            }
        }
        Err(match last_err {
            Some(e) => RouteError::Job(e),
            None => RouteError::NoCapacity(job.model),
        })
    }

    /// A worker with a free slot for this job: at once when the job needs not queue, else
    /// when it is the job's turn in the queue and a slot is free.
    async fn acquire(&mut self, tried: &[u64]) -> Result<(Arc<WorkerEntry>, Admission), RouteError> {
        let router = self.router.clone();
        let cfg = &router.inner.cfg;
        let (model, price) = (self.model.clone(), self.opts.fit());
        let only = self.opts.worker.clone();
        let key = crate::registry::queue_key(&model, only.as_deref());
        let deadline = self.admitted + cfg.queue_timeout();
        loop {
            let my_turn = match &self.waiter {
                Some(w) => w.is_turn(),
                None => !router.inner.queues.has_waiters(&key),
            };
            if my_turn {
                if let Some(found) = router.pick(&model, price, tried, only.as_deref()) {
                    if let Some(w) = self.waiter.take() {
                        w.served();
                        metrics::histogram!("cocoon_router_queue_wait_seconds").record(self.admitted.elapsed().as_secs_f64());
                    }
                    return Ok(found);
                }
            }
            if !router.could_serve(&model, price, tried, only.as_deref()) {
                return Err(match only {
                    Some(worker) => RouteError::WorkerUnavailable { worker, model },
                    None => RouteError::NoCapacity(model),
                });
            }
            if self.waiter.is_none() {
                let w = router.inner.queues.join(&key, &self.opts.account, cfg.max_queued_per_model).map_err(|f| {
                    metrics::counter!("cocoon_router_queue_rejected_total", "reason" => "full").increment(1);
                    RouteError::QueueFull { model: model.clone(), limit: f.limit }
                })?;
                self.waiter = Some(w);
                continue;
            }
            let Some(w) = &self.waiter else { continue };
            tokio::select! {
                () = w.woken() => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    metrics::counter!("cocoon_router_queue_rejected_total", "reason" => "timeout").increment(1);
                    return Err(RouteError::QueueTimeout { model, waited: self.admitted.elapsed() });
                }
            }
        }
    }
}

impl Router {
    async fn try_worker(&self, worker: &Arc<WorkerEntry>, job: &Job) -> Result<JobStream, JobError> {
        // Sealed under this link's HPKE context (to the worker's attested key) with keys bound
        // to a fresh salt, this job id and model: a retry on another worker seals afresh.
        let (payload, opener) = match &worker.sealer {
            Some(sealer) => {
                let (sealed, opener) = sealer
                    .seal(&JobContext::new(job.id, job.model.clone()), &job.body)
                    .map_err(|e| JobError::new(500, format!("sealing the job failed: {e}"), true))?;
                metrics::counter!("cocoon_router_jobs_sealed_total").increment(1);
                let payload = Payload::LinkSealed {
                    salt: Bytes::copy_from_slice(&sealed.salt),
                    ciphertext: Bytes::from(sealed.ciphertext),
                };
                (payload, Some(opener))
            }
            None => (Payload::Plain { body: job.body.clone() }, None),
        };
        let envelope = JobEnvelope {
            id: job.id,
            endpoint: job.endpoint,
            model: job.model.clone(),
            stream: job.stream,
            payload,
            e2e: job.e2e.clone(),
        };
        // Bounded: the worker may send at most the window (plus the terminal event) before
        // the router grants more, so this never holds more than that.
        let (tx, rx) = mpsc::channel(JOB_EVENT_WINDOW as usize + 1);
        let closed = Arc::new(Mutex::new(None));
        worker.register_job(job.id, JobSlot { tx, opener, closed: closed.clone() });
        worker.running.fetch_add(1, Ordering::Relaxed);
        // From here on the guard undoes the registration, whatever happens.
        let mut guard = JobGuard {
            router: self.clone(),
            worker: worker.clone(),
            job_id: job.id,
            finished: false,
        };
        let started = Instant::now();
        if worker.tx.try_send(RouterToWorker::Job(envelope)).is_err() {
            guard.finished = true;
            return Err(JobError::new(503, "worker queue full or closed", true));
        }
        // A stream's first event is its first token; a non-streaming job's only event is the
        // whole answer, which on a large model may take minutes: separate bounds.
        let (limit, what) = if job.stream {
            (self.inner.cfg.first_token_timeout(), "before the first token")
        } else {
            (self.inner.cfg.non_stream_timeout(), "before finishing the answer")
        };
        let mut rx = rx;
        let deadline = tokio::time::Instant::now() + limit;
        // A receipt comes just before a terminal event: look past it to see whether the job
        // failed before producing anything (and may be retried elsewhere).
        let mut early_receipt = None;
        let first = loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(JobEvent::Receipt { receipt })) => early_receipt = Some(receipt),
                Ok(Some(ev)) => break ev,
                Ok(None) => {
                    guard.finished = true;
                    let e = take_closed(&closed).unwrap_or_else(|| JobError::new(502, "worker went away before answering", true));
                    return Err(e);
                }
                Err(_) => {
                    // Guard drop sends the cancel.
                    return Err(JobError::new(504, format!("worker timed out {what} ({limit:?})"), true));
                }
            }
        };
        if let JobEvent::Failed { error, .. } = first {
            guard.finished = true;
            return Err(error);
        }
        worker.record_ttft(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        worker.circuit.on_success();
        if first.is_terminal() {
            guard.finished = true;
        }
        let mut stream = JobStream {
            first: Some(first),
            rx,
            closed,
            guard,
            consumed: 1,
            model: job.model.clone(),
            identity_key: worker.identity_key,
            receipt: None,
            worker_id: worker.info.worker_id.clone(),
            circuit_threshold: self.inner.cfg.circuit_failure_threshold,
            circuit_open: self.inner.cfg.circuit_open(),
            price_coefficient: worker.info.price_coefficient,
            insecure_simulated: worker.insecure_simulated,
            sealed: worker.sealer.is_some(),
        };
        if let Some(r) = early_receipt {
            stream.on_receipt(&r);
        }
        Ok(stream)
    }
}

fn take_closed(closed: &Mutex<Option<JobError>>) -> Option<JobError> {
    closed.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Undoes a job's registration on drop; cancels it at the worker if it had not ended, and
/// tells the queue that a slot freed.
struct JobGuard {
    router: Router,
    worker: Arc<WorkerEntry>,
    job_id: Uuid,
    finished: bool,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.worker.unregister_job(&self.job_id);
        self.worker.running.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            metrics::counter!("cocoon_router_cancels_total").increment(1);
            let _ = self.worker.tx.try_send(RouterToWorker::Cancel { job_id: self.job_id });
        }
        self.router.capacity_changed(&self.worker);
    }
}

/// A dispatched job's events, first one included. Ends after the terminal event.
/// Dropping it early cancels the job at the worker.
pub struct JobStream {
    first: Option<JobEvent>,
    rx: mpsc::Receiver<JobEvent>,
    /// Why the router closed this job's channel, when it did (e.g. a broken flow-control
    /// window); read when the channel ends without a terminal event.
    closed: Arc<Mutex<Option<JobError>>>,
    guard: JobGuard,
    /// Events taken since the last credit sent to the worker.
    consumed: u32,
    model: String,
    /// The identity the worker attested; its receipts must be signed by it.
    identity_key: Option<attestation::receipt::IdentityPublicKey>,
    /// The router's verdict on the job's receipt, once it arrived (checked against the
    /// terminal event's usage when that arrives).
    receipt: Option<crate::ReceiptCheck>,
    worker_id: String,
    circuit_threshold: u32,
    circuit_open: std::time::Duration,
    price_coefficient: u32,
    insecure_simulated: bool,
    sealed: bool,
}

impl JobStream {
    /// The serving worker runs in the simulated TEE (dev only): responses say so
    /// (`x-cocoon-tee: simulated`).
    pub fn insecure_simulated(&self) -> bool {
        self.insecure_simulated
    }

    /// Whether the job travelled sealed to the worker's attested key.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The serving worker's price multiplier (thousandths), for billing.
    pub fn price_coefficient(&self) -> u32 {
        self.price_coefficient
    }

    /// The verdict on the job's receipt, once the job ended: valid (signed by the worker's
    /// attested identity, for this job, with the usage the job reported) or why not.
    pub fn receipt(&self) -> Option<&crate::ReceiptCheck> {
        self.receipt.as_ref()
    }

    fn on_receipt(&mut self, raw: &[u8]) {
        let want = crate::receipts::Expected {
            job_id: self.guard.job_id,
            worker_id: &self.worker_id,
            model: &self.model,
            coefficient: self.price_coefficient,
            identity: self.identity_key,
        };
        self.receipt = Some(crate::receipts::check(raw, &want));
    }

    /// At the terminal event: the receipt must state its usage (a missing receipt is
    /// recorded as such).
    fn settle_receipt(&mut self, ev: &JobEvent) {
        let usage = match ev {
            JobEvent::Response { usage, .. } | JobEvent::Done { usage } | JobEvent::Failed { usage, .. } => usage.as_ref(),
            _ => return,
        };
        let check = match self.receipt.take() {
            Some(c) => crate::receipts::check_usage(c, usage, &self.worker_id),
            None => crate::ReceiptCheck::invalid("no receipt came with the job".into(), &self.worker_id),
        };
        self.receipt = Some(check);
    }

    /// Gives the worker back the window this stream's consumer has emptied, in batches of a
    /// quarter window so credits cost one small message per 64 events.
    fn credit(&mut self) {
        self.consumed += 1;
        if self.consumed >= JOB_EVENT_WINDOW / 4 && !self.guard.finished {
            let msg = RouterToWorker::Credit { job_id: self.guard.job_id, events: self.consumed };
            if self.guard.worker.tx.try_send(msg).is_ok() {
                self.consumed = 0;
            }
        }
    }
}

impl Stream for JobStream {
    type Item = JobEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobEvent>> {
        let this = self.get_mut();
        if this.guard.finished && this.first.is_none() {
            return Poll::Ready(None);
        }
        let ev = loop {
            let ev = match this.first.take() {
                Some(ev) => ev,
                None => match this.rx.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(ev)) => {
                        this.credit();
                        ev
                    }
                    // Sender gone without a terminal event: the worker vanished mid-stream, or the
                    // router closed the job (the reason is then recorded).
                    Poll::Ready(None) => JobEvent::Failed {
                        error: take_closed(&this.closed)
                            .unwrap_or_else(|| JobError::new(502, "worker disconnected mid-stream", false)),
                        usage: None,
                    },
                },
            };
            // Receipts are the router's to check; the consumer reads the verdict.
            match ev {
                JobEvent::Receipt { receipt } => this.on_receipt(&receipt),
                ev => break ev,
            }
        };
        if ev.is_terminal() {
            this.settle_receipt(&ev);
            this.guard.finished = true;
            if matches!(ev, JobEvent::Failed { .. }) {
                // A mid-stream failure counts against the worker like an early one.
                this.guard.worker.circuit.on_failure(Instant::now(), this.circuit_threshold, this.circuit_open);
            }
        }
        Poll::Ready(Some(ev))
    }
}
