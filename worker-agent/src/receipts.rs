//! The receipt of one job, built as its events go out and signed with the worker's identity
//! key (docs/e2e.md, "Receipts"): what was asked (the request body's hash), what was answered
//! (the response's hash), the usage, the price and the times.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use attestation::receipt::{IdentityKey, Receipt, ReceiptUsage, SignedReceipt};
use protocol::Usage;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The worker's own copy of every receipt it signs, one per line as the `x-cocoon-receipt`
/// value, appended as each job ends: what the worker can later present to prove what it is
/// owed (`cocoon receipt verify --receipt <this file> --report <saved report>` checks each
/// signature and sums the tokens). Appends are best effort: a full disk costs the worker its
/// own record, never the client's answer.
pub struct ReceiptLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl ReceiptLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, signed: &SignedReceipt) {
        let line = format!("{}\n", signed.to_header());
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not keep a receipt in the worker's receipt log");
        }
    }
}

/// What a receipt needs besides what the job produces.
pub(crate) struct ReceiptBuilder {
    key: Arc<IdentityKey>,
    log: Option<Arc<ReceiptLog>>,
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
    pub(crate) fn new(key: Arc<IdentityKey>, log: Option<Arc<ReceiptLog>>, f: JobFacts<'_>) -> Self {
        Self {
            key,
            log,
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
        let signed = self
            .key
            .sign(&receipt)
            .map_err(|e| tracing::error!(job_id = %receipt.job_id, error = %e, "signing a receipt failed"))
            .ok()?;
        if let Some(log) = &self.log {
            log.append(&signed);
        }
        Some(signed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every signed receipt lands in the worker's log, verifiable under its identity key, so
    /// the worker holds its own proof of what it served.
    #[test]
    fn the_worker_keeps_each_receipt_it_signs() {
        let dir = std::env::temp_dir().join(format!("receipt_log_{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = Arc::new(ReceiptLog::open(&dir.join("receipts.log")).unwrap());
        let key = Arc::new(IdentityKey::generate().unwrap());
        let mut jobs = Vec::new();
        for _ in 0..2 {
            let job_id = Uuid::new_v4();
            let facts = JobFacts {
                job_id,
                request_id: None,
                worker_id: "w1",
                model: "m",
                endpoint: "/v1/chat/completions",
                request_body: b"{}",
                price_coefficient: 1000,
            };
            let mut b = ReceiptBuilder::new(key.clone(), Some(log.clone()), facts);
            b.bytes(b"answer");
            let usage = Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, ..Default::default() };
            b.sign(Some(&usage)).unwrap();
            jobs.push(job_id);
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        let kept: Vec<Receipt> = text
            .lines()
            .map(|l| SignedReceipt::from_header(l).unwrap().verify(&key.public()).unwrap())
            .collect();
        assert_eq!(kept.iter().map(|r| r.job_id).collect::<Vec<_>>(), jobs);
        assert!(kept.iter().all(|r| r.usage.completion_tokens == 4));
        let _ = std::fs::remove_dir_all(dir);
    }
}
