//! Where one job's events go: sealed with the job's response keys when the job came sealed
//! (every event, terminal one flagged last), in clear otherwise. Non-terminal events spend
//! the job's flow-control credit ([`protocol::JOB_EVENT_WINDOW`] at the start, more as the
//! router's client reads): with none left, the job waits, so it stops reading its engine
//! stream and the engine is pushed back too.
//!
//! Every job that produced something ends with its signed receipt just before the terminal
//! event. An end-to-end job's answer is sealed to the client as frames here, inside the TEE:
//! the router and gateway get the frames as opaque chunks, then the receipt and the usage.

use std::sync::Arc;

use attestation::e2e::{Frame, ResponseWriter};
use attestation::ResponseSealer;
use bytes::Bytes;
use protocol::{wire, JobEvent, Usage, WorkerToRouter};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::receipts::ReceiptBuilder;

/// An end-to-end job's answer in the making.
pub(crate) struct E2eAnswer {
    pub writer: ResponseWriter,
    pub client_wants_usage: bool,
    /// Sent before the first frame (magic and the response nonce).
    pub header_sent: bool,
}

pub(crate) struct EventSink {
    job_id: Uuid,
    tx: mpsc::Sender<WorkerToRouter>,
    sealer: Option<ResponseSealer>,
    credits: Arc<tokio::sync::Semaphore>,
    receipt: Option<ReceiptBuilder>,
    e2e: Option<E2eAnswer>,
}

impl EventSink {
    pub(crate) fn new(
        job_id: Uuid,
        tx: mpsc::Sender<WorkerToRouter>,
        sealer: Option<ResponseSealer>,
        credits: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Self { job_id, tx, sealer, credits, receipt: None, e2e: None }
    }

    pub(crate) fn with_receipt(mut self, r: ReceiptBuilder) -> Self {
        self.receipt = Some(r);
        self
    }

    pub(crate) fn with_e2e(mut self, e: E2eAnswer) -> Self {
        self.e2e = Some(e);
        self
    }

    /// Sends one event as the engine produced it; false when the router link is gone (or
    /// sealing failed), so the job should stop.
    pub(crate) async fn emit(&mut self, event: JobEvent) -> bool {
        if self.e2e.is_some() {
            return self.emit_e2e(event).await;
        }
        match &event {
            JobEvent::Chunk { data } => {
                if let Some(r) = self.receipt.as_mut() {
                    r.chunk(data);
                }
            }
            JobEvent::Response { body, usage } => {
                if let Some(r) = self.receipt.as_mut() {
                    r.bytes(body);
                }
                if !self.send_receipt(usage.as_ref()).await {
                    return false;
                }
            }
            JobEvent::Done { usage } | JobEvent::Failed { usage, .. } => {
                if !self.send_receipt(usage.as_ref()).await {
                    return false;
                }
            }
            JobEvent::Receipt { .. } => {}
        }
        self.send(event).await
    }

    async fn send_receipt(&mut self, usage: Option<&Usage>) -> bool {
        let Some(signed) = self.receipt.take().and_then(|r| r.sign(usage)) else { return true };
        match serde_json::to_vec(&signed) {
            Ok(json) => self.send(JobEvent::Receipt { receipt: Bytes::from(json) }).await,
            Err(e) => {
                tracing::error!(job_id = %self.job_id, error = %e, "encoding a receipt failed");
                true
            }
        }
    }

    /// End-to-end: engine output becomes frames sealed to the client; the job ends with the
    /// final frame (frame count, transcript, receipt), then the receipt and usage in clear.
    async fn emit_e2e(&mut self, event: JobEvent) -> bool {
        let (frame, end): (Option<Frame>, Option<Option<Usage>>) = match event {
            JobEvent::Chunk { data } => {
                let drop_it = self.e2e.as_ref().is_some_and(|e| !e.client_wants_usage) && crate::e2e::is_usage_only(&data);
                ((!drop_it).then(|| Frame::Data { data: data.to_vec() }), None)
            }
            JobEvent::Response { body, usage } => (Some(Frame::Data { data: body.to_vec() }), Some(usage)),
            JobEvent::Done { usage } => (None, Some(usage)),
            JobEvent::Failed { error, usage } => {
                let body = error.body.map_or_else(
                    || serde_json::json!({"error": {"message": error.message, "type": "server_error", "param": null, "code": null}}).to_string().into_bytes(),
                    |b| b.to_vec(),
                );
                (Some(Frame::Error { status: error.status, body }), Some(usage))
            }
            JobEvent::Receipt { .. } => return true,
        };
        let mut out = Vec::new();
        let sealed = (|| {
            let Some(e) = self.e2e.as_mut() else { return Ok(()) };
            if (frame.is_some() || end.is_some()) && !e.header_sent {
                e.header_sent = true;
                out.extend_from_slice(&e.writer.header());
            }
            if let Some(f) = &frame {
                out.extend_from_slice(&e.writer.frame(f)?);
            }
            Ok::<(), attestation::SealError>(())
        })();
        if let Err(err) = sealed {
            tracing::error!(job_id = %self.job_id, error = %err, "sealing an end-to-end frame failed");
            return false;
        }
        if let (Some(r), Some(e)) = (self.receipt.as_mut(), self.e2e.as_ref()) {
            r.frames(e.writer.transcript(), e.header_sent);
        }
        let Some(usage) = end else {
            return out.is_empty() || self.send(JobEvent::Chunk { data: Bytes::from(out) }).await;
        };
        // The receipt covers every byte before the final frame, and travels inside it too.
        let signed = self.receipt.take().and_then(|r| r.sign(usage.as_ref()));
        match self.e2e.as_mut().map(|e| e.writer.finish(signed.clone())) {
            Some(Ok(fin)) => out.extend_from_slice(&fin),
            Some(Err(err)) => {
                tracing::error!(job_id = %self.job_id, error = %err, "sealing the final frame failed");
                return false;
            }
            None => {}
        }
        if !self.send(JobEvent::Chunk { data: Bytes::from(out) }).await {
            return false;
        }
        if let Some(json) = signed.and_then(|s| serde_json::to_vec(&s).ok()) {
            if !self.send(JobEvent::Receipt { receipt: Bytes::from(json) }).await {
                return false;
            }
        }
        self.send(JobEvent::Done { usage }).await
    }

    async fn send(&mut self, event: JobEvent) -> bool {
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
