//! Sending one job to a worker, with retries before the first event, and the stream of its
//! events with cancel-on-drop.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use attestation::JobContext;
use bytes::Bytes;
use futures::Stream;
use protocol::{Job, JobEnvelope, JobError, JobEvent, Payload, RouterToWorker};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::circuit::Admission;
use crate::registry::{JobSlot, Router, WorkerEntry};

#[derive(Clone, Copy, Debug, Default)]
pub struct DispatchOptions {
    /// Highest worker price coefficient (thousandths) the client accepts.
    pub max_price_coefficient: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("The model `{0}` does not exist or no worker serves it")]
    ModelNotFound(String),
    #[error("No worker can take model `{0}` right now; retry shortly")]
    NoCapacity(String),
    /// Every attempt failed; the last worker's error.
    #[error("{0}")]
    Job(JobError),
}

impl Router {
    /// Sends `job` to a worker and waits for its first event, retrying on other workers while
    /// nothing has been produced. On success the stream yields that first event and the rest.
    pub async fn dispatch(&self, job: Job, opts: DispatchOptions) -> Result<JobStream, RouteError> {
        let cfg = &self.inner.cfg;
        let mut tried: Vec<u64> = Vec::new();
        let mut last_err: Option<JobError> = None;
        for attempt in 0..cfg.max_attempts {
            let Some((worker, admission)) =
                self.pick(&job.model, opts.max_price_coefficient, &tried)
            else {
                break;
            };
            tried.push(worker.conn_id);
            if attempt > 0 {
                metrics::counter!("cocoon_router_retries_total").increment(1);
            }
            match self.try_worker(&worker, &job).await {
                Ok(stream) => {
                    if admission == Admission::Probe {
                        tracing::info!(worker = %worker.info.worker_id, "half-open probe succeeded");
                    }
                    return Ok(stream);
                }
                Err(e) => {
                    let opened = worker.circuit.on_failure(
                        Instant::now(),
                        cfg.circuit_failure_threshold,
                        cfg.circuit_open(),
                    );
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
        match last_err {
            Some(e) => Err(RouteError::Job(e)),
            None if !self.knows_model(&job.model) => Err(RouteError::ModelNotFound(job.model)),
            None => Err(RouteError::NoCapacity(job.model)),
        }
    }

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
        };
        let (tx, rx) = mpsc::unbounded_channel();
        worker.register_job(job.id, JobSlot { tx, opener });
        worker.running.fetch_add(1, Ordering::Relaxed);
        // From here on the guard undoes the registration, whatever happens.
        let mut guard = JobGuard {
            worker: worker.clone(),
            job_id: job.id,
            finished: false,
        };
        let started = Instant::now();
        if worker.tx.try_send(RouterToWorker::Job(envelope)).is_err() {
            guard.finished = true;
            return Err(JobError::new(503, "worker queue full or closed", true));
        }
        let mut rx = rx;
        let first = match tokio::time::timeout(self.inner.cfg.first_token_timeout(), rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                guard.finished = true;
                return Err(JobError::new(502, "worker went away before answering", true));
            }
            Err(_) => {
                // Guard drop sends the cancel.
                return Err(JobError::new(504, "worker timed out before the first token", true));
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
        Ok(JobStream {
            first: Some(first),
            rx,
            guard,
            worker_id: worker.info.worker_id.clone(),
            circuit_threshold: self.inner.cfg.circuit_failure_threshold,
            circuit_open: self.inner.cfg.circuit_open(),
            price_coefficient: worker.info.price_coefficient,
            insecure_simulated: worker.insecure_simulated,
            sealed: worker.sealer.is_some(),
        })
    }
}

/// Undoes a job's registration on drop; cancels it at the worker if it had not ended.
struct JobGuard {
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
            let _ = self
                .worker
                .tx
                .try_send(RouterToWorker::Cancel { job_id: self.job_id });
        }
    }
}

/// A dispatched job's events, first one included. Ends after the terminal event.
/// Dropping it early cancels the job at the worker.
pub struct JobStream {
    first: Option<JobEvent>,
    rx: mpsc::UnboundedReceiver<JobEvent>,
    guard: JobGuard,
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
}

impl Stream for JobStream {
    type Item = JobEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobEvent>> {
        let this = self.get_mut();
        if this.guard.finished && this.first.is_none() {
            return Poll::Ready(None);
        }
        let ev = match this.first.take() {
            Some(ev) => ev,
            None => match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ev)) => ev,
                // Sender gone without a terminal event: the worker vanished mid-stream.
                Poll::Ready(None) => JobEvent::Failed {
                    error: JobError::new(502, "worker disconnected mid-stream", false),
                    usage: None,
                },
            },
        };
        if ev.is_terminal() {
            this.guard.finished = true;
            if matches!(ev, JobEvent::Failed { .. }) {
                // A mid-stream failure counts against the worker like an early one.
                this.guard.worker.circuit.on_failure(
                    Instant::now(),
                    this.circuit_threshold,
                    this.circuit_open,
                );
            }
        }
        Poll::Ready(Some(ev))
    }
}
