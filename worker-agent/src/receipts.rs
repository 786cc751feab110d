//! The receipt of one job, built as its events go out and signed with the worker's identity
//! key (docs/e2e.md, "Receipts"): what was asked (the request body's hash), what was answered
//! (the response's hash), the usage, the price and the times.

use std::sync::Arc;

use attestation::receipt::{IdentityKey, Receipt, ReceiptUsage, SignedReceipt};
use protocol::Usage;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// What a receipt needs besides what the job produces.
pub(crate) struct ReceiptBuilder {
    key: Arc<IdentityKey>,
    job_id: Uuid,
    request_id: Option<Uuid>,
    worker_id: String,
    model: String,
    endpoint: &'static str,
    request_sha256: [u8; 32],
    price_coefficient: u32,
    started_at_ms: u64,
    response: Sha256,
    /// For an end-to-end answer: the transcript of its frames, which replaces `response`.
    response_digest: Option<[u8; 32]>,
    produced: bool,
}

pub(crate) struct JobFacts<'a> {
    pub job_id: Uuid,
    pub request_id: Option<Uuid>,
    pub worker_id: &'a str,
    pub model: &'a str,
    pub endpoint: &'static str,
    /// The request body exactly as this worker received it.
    pub request_body: &'a [u8],
    pub price_coefficient: u32,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl ReceiptBuilder {
    pub(crate) fn new(key: Arc<IdentityKey>, f: JobFacts<'_>) -> Self {
        Self {
            key,
            job_id: f.job_id,
            request_id: f.request_id,
            worker_id: f.worker_id.to_string(),
            model: f.model.to_string(),
            endpoint: f.endpoint,
            request_sha256: Sha256::digest(f.request_body).into(),
            price_coefficient: f.price_coefficient,
            started_at_ms: now_ms(),
            response: Sha256::new(),
            response_digest: None,
            produced: false,
        }
    }

    /// A stream's `data:` payload as emitted (each followed by `\n` in the hash).
    pub(crate) fn chunk(&mut self, data: &[u8]) {
        self.response.update(data);
        self.response.update(b"\n");
        self.produced = true;
    }

    /// A whole answer's body.
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        self.response.update(data);
        self.produced = true;
    }

    /// An end-to-end answer: the digest of its frames before the final one (what the final
    /// frame's transcript hash covers, so the client can match the two).
    pub(crate) fn frames(&mut self, transcript: [u8; 32], any: bool) {
        self.response_digest = Some(transcript);
        self.produced |= any;
    }

    /// The signed receipt for a job that ends with `usage`; `None` when it produced
    /// nothing and counted nothing (there is nothing to bill or prove).
    pub(crate) fn sign(self, usage: Option<&Usage>) -> Option<SignedReceipt> {
        if !self.produced && usage.is_none() {
            return None;
        }
        let u = usage.copied().unwrap_or_default();
        let receipt = Receipt {
            version: 1,
            job_id: self.job_id,
            request_id: self.request_id,
            worker_id: self.worker_id,
            model: self.model,
            endpoint: self.endpoint.to_string(),
            request_sha256: hex::encode(self.request_sha256),
            response_sha256: hex::encode(self.response_digest.unwrap_or_else(|| self.response.finalize().into())),
            usage: ReceiptUsage {
                prompt_tokens: u.prompt_tokens,
                cached_prompt_tokens: u.cached_prompt_tokens(),
                completion_tokens: u.completion_tokens,
                reasoning_tokens: u.reasoning_tokens(),
            },
            price_coefficient: self.price_coefficient,
            started_at_ms: self.started_at_ms,
            finished_at_ms: now_ms(),
        };
        self.key
            .sign(&receipt)
            .map_err(|e| tracing::error!(job_id = %receipt.job_id, error = %e, "signing a receipt failed"))
            .ok()
    }
}
