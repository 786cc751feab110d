//! Where one job's events go: sealed with the job's response keys when the job came sealed
//! (every event, terminal one flagged last), in clear otherwise. Non-terminal events spend
//! the job's flow-control credit ([`protocol::JOB_EVENT_WINDOW`] at the start, more as the
//! router's client reads): with none left, the job waits, so it stops reading its engine
//! stream and the engine is pushed back too.

use std::sync::Arc;

use attestation::ResponseSealer;
use bytes::Bytes;
use protocol::{wire, JobEvent, WorkerToRouter};
use tokio::sync::mpsc;
use uuid::Uuid;

pub(crate) struct EventSink {
    job_id: Uuid,
    tx: mpsc::Sender<WorkerToRouter>,
    sealer: Option<ResponseSealer>,
    credits: Arc<tokio::sync::Semaphore>,
}

impl EventSink {
    pub(crate) fn new(
        job_id: Uuid,
        tx: mpsc::Sender<WorkerToRouter>,
        sealer: Option<ResponseSealer>,
        credits: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Self { job_id, tx, sealer, credits }
    }

    /// Sends one event; false when the router link is gone (or sealing failed), so the job
    /// should stop.
    pub(crate) async fn emit(&mut self, event: JobEvent) -> bool {
        let job_id = self.job_id;
        if !event.is_terminal() {
            match self.credits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
        }
        let msg = match &mut self.sealer {
            None => WorkerToRouter::Event { job_id, event },
            Some(sealer) => {
                let last = event.is_terminal();
                let sealed = wire::encode(&event)
                    .map_err(|e| e.to_string())
                    .and_then(|plain| sealer.seal(&plain, last).map_err(|e| e.to_string()));
                match sealed {
                    Ok(c) => WorkerToRouter::SealedEvent {
                        job_id,
                        seq: c.seq,
                        last: c.last,
                        ciphertext: Bytes::from(c.ciphertext),
                    },
                    Err(e) => {
                        tracing::error!(%job_id, error = %e, "sealing a response event failed");
                        return false;
                    }
                }
            }
        };
        self.tx.send(msg).await.is_ok()
    }
}
