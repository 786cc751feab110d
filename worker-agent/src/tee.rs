//! The worker's TEE identity: where its evidence comes from, its identity key (signs
//! receipts) and the HPKE keys jobs are sealed to: one per router link, made when the link
//! is challenged and forgotten when it ends, so a key compromised later cannot open the
//! traffic of links that are gone (forward secrecy per link). Private keys never leave this
//! process (inside the confidential VM).

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;

use attestation::receipt::IdentityKey;
use attestation::{
    EvidenceError, EvidenceProducer, JobContext, JobOpener, LinkOpener, LinkSealedJob, Nonce,
    ResponseSealer, SealError,
};
use bytes::Bytes;
use protocol::{Job, JobEnvelope, Payload};

/// The worker's own bound on producing evidence: above the slowest real producer (SEV-SNP
/// retries a throttled host for up to 60 s; a TDX GetQuote polls for up to 30 s) and below
/// the router's default `hello_timeout_ms` (90 s), so a timeout names the side that gave up.
pub const EVIDENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

pub struct WorkerTee {
    producer: EvidenceProducer,
    /// The HPKE key of each live router link, by link id.
    links: Mutex<HashMap<u64, Arc<JobOpener>>>,
    /// Signs receipts; its public half is bound into the evidence.
    identity: Arc<IdentityKey>,
    receipt_log: Option<Arc<crate::ReceiptLog>>,
    evidence_timeout: std::time::Duration,
    /// Where GPU evidence comes from (NVML, `nvidia` feature); `None`: the worker sends none.
    gpu: Option<Arc<dyn crate::gpu::NvmlCalls>>,
}

impl std::fmt::Debug for WorkerTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerTee")
            .field("simulated", &self.is_insecure_simulated())
            .field("identity", &self.identity.public().fingerprint())
            .finish()
    }
}

impl WorkerTee {
    pub fn new(producer: EvidenceProducer) -> Result<Self, EvidenceError> {
        let identity = IdentityKey::generate().map_err(|e| EvidenceError::Random(e.to_string()))?;
        Ok(Self {
            producer,
            links: Mutex::new(HashMap::new()),
            identity: Arc::new(identity),
            receipt_log: None,
            evidence_timeout: EVIDENCE_TIMEOUT,
            gpu: None,
        })
    }

    /// Sends GPU evidence from `nvml` with every attestation, bound to its session
    /// ([`attestation::gpu_nonce`]). A failure to collect it fails the attestation with its
    /// cause (e.g. "GPU not in confidential-computing mode"): never evidence without the GPU.
    pub fn with_gpu(mut self, nvml: Arc<dyn crate::gpu::NvmlCalls>) -> Self {
        self.gpu = Some(nvml);
        self
    }

    /// Uses `identity` (the worker's persistent key, from its data directory) to sign
    /// receipts instead of a key made for this process.
    pub fn with_identity(mut self, identity: IdentityKey) -> Self {
        self.identity = Arc::new(identity);
        self
    }

    /// Keeps a copy of every receipt this worker signs in `log` (its data directory).
    pub fn with_receipt_log(mut self, log: crate::ReceiptLog) -> Self {
        self.receipt_log = Some(Arc::new(log));
        self
    }

    pub(crate) fn receipt_log(&self) -> Option<Arc<crate::ReceiptLog>> {
        self.receipt_log.clone()
    }

    pub fn identity(&self) -> Arc<IdentityKey> {
        self.identity.clone()
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<JobOpener>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HPKE key of link `link_id`, made on first use (its first challenge).
    pub(crate) fn link_key(&self, link_id: u64) -> Result<Arc<JobOpener>, EvidenceError> {
        let mut links = self.lock_links();
        if let Some(k) = links.get(&link_id) {
            return Ok(k.clone());
        }
        let k = Arc::new(JobOpener::generate()?);
        links.insert(link_id, k.clone());
        Ok(k)
    }

    /// The link ended: its key is forgotten.
    pub(crate) fn drop_link(&self, link_id: u64) {
        self.lock_links().remove(&link_id);
    }

    /// The HPKE keys end-to-end requests may be sealed to (every live link's).
    pub(crate) fn openers(&self) -> Vec<Arc<JobOpener>> {
        self.lock_links().values().cloned().collect()
    }

    /// The insecure simulated TEE (dev and tests only; a production router refuses it).
    pub fn simulated() -> Result<Self, EvidenceError> {
        Self::new(EvidenceProducer::simulated()?)
    }

    /// Real TDX / SEV-SNP evidence through configfs-tsm when this is a confidential VM;
    /// otherwise the simulated TEE if `allow_simulated`, else an error saying why.
    /// "TEE present" means configfs-tsm makes a report directory and names a TDX or SEV-SNP
    /// provider, not merely that the directory exists (it does whenever the module is loaded).
    pub fn detect(allow_simulated: bool) -> Result<Self, String> {
        match EvidenceProducer::detect_at(attestation::ConfigfsTsm::default()) {
            Ok(p) => Self::new(p).map_err(|e| e.to_string()),
            Err(why) if allow_simulated => {
                tracing::warn!(reason = %why, "no TEE found: using the INSECURE SIMULATED TEE");
                Self::simulated().map_err(|e| e.to_string())
            }
            Err(why) => Err(format!(
                "no TEE evidence source ({why}) and the simulated TEE is not allowed"
            )),
        }
    }

    /// Gives up on producing evidence after `after` (default [`EVIDENCE_TIMEOUT`]), so the
    /// worker reports its own timeout before the router's `hello_timeout_ms` runs out.
    pub fn with_evidence_timeout(mut self, after: std::time::Duration) -> Self {
        self.evidence_timeout = after;
        self
    }

    pub fn is_insecure_simulated(&self) -> bool {
        self.producer.is_insecure_simulated()
    }

    /// Evidence binding link `link_id`'s HPKE key, `tls_spki_der`, `nonce`, this worker's
    /// identity key and `models_digest`, as JSON for the wire. Producing a TDX quote takes
    /// tens of milliseconds, so it runs on the blocking pool.
    pub(crate) async fn attest(
        self: &Arc<Self>,
        link_id: u64,
        models_digest: [u8; 32],
        tls_spki_der: Arc<Vec<u8>>,
        nonce: &[u8],
    ) -> Result<Bytes, String> {
        let nonce: [u8; 32] = nonce
            .try_into()
            .map_err(|_| format!("nonce must be 32 bytes, got {}", nonce.len()))?;
        let key = self.link_key(link_id).map_err(|e| e.to_string())?.public_key();
        let this = self.clone();
        let after = self.evidence_timeout;
        // A read stuck in the kernel keeps its blocking thread until the kernel returns; the
        // link does not wait for it.
        let task = tokio::task::spawn_blocking(move || {
            let mut att = this
                .producer
                .attest_worker(key, &tls_spki_der, Nonce(nonce), this.identity.public(), models_digest, attestation::unix_now())
                .map_err(|e| e.to_string())?;
            if let Some(nvml) = &this.gpu {
                let gpu_nonce = attestation::gpu_nonce(&att.binding());
                att.gpu = Some(crate::gpu::collect(nvml.as_ref(), gpu_nonce).map_err(|e| e.to_string())?);
            }
            serde_json::to_vec(&att).map(Bytes::from).map_err(|e| e.to_string())
        });
        match tokio::time::timeout(after, task).await {
            Ok(joined) => joined.map_err(|e| format!("evidence task: {e}"))?,
            Err(_) => Err(attestation::EvidenceError::Timeout { what: "producing TEE evidence", after }.to_string()),
        }
    }

    /// Opens the HPKE context the router set up for link `link_id` (`RouterToWorker::Session`).
    pub(crate) fn open_link(&self, link_id: u64, enc: &[u8]) -> Result<LinkOpener, SealError> {
        let enc: [u8; 32] = enc.try_into().map_err(|_| SealError::Hpke {
            op: "session",
            detail: format!("encapsulated key must be 32 bytes, got {}", enc.len()),
        })?;
        let key = self.link_key(link_id).map_err(|e| SealError::Hpke { op: "session", detail: e.to_string() })?;
        key.open_link(&enc)
    }

    /// Opens a job: the body in clear for the engine and, for a sealed job, the sealer of its
    /// response stream. `link` is this link's context (for `Payload::LinkSealed`).
    pub(crate) fn open(&self, env: JobEnvelope, link: Option<&LinkOpener>) -> Result<(Job, Option<ResponseSealer>), SealError> {
        let (body, sealer) = match env.payload {
            Payload::Plain { body } => (body, None),
            Payload::LinkSealed { salt, ciphertext } => {
                let ctx = JobContext::new(env.id, env.model.clone());
                let fail = || SealError::JobOpen { job_id: env.id, model: env.model.clone() };
                let link = link.ok_or_else(fail)?;
                let sealed = LinkSealedJob {
                    salt: salt.as_ref().try_into().map_err(|_| fail())?,
                    ciphertext: ciphertext.to_vec(),
                };
                let (body, sealer) = link.open(&ctx, &sealed)?;
                (Bytes::from(body), Some(sealer))
            }
        };
        let job = Job {
            id: env.id,
            endpoint: env.endpoint,
            model: env.model,
            stream: env.stream,
            body,
            e2e: env.e2e,
        };
        Ok((job, sealer))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod link_key_tests {
    use super::*;

    /// Forward secrecy per link, as the README states it: each link gets its own HPKE key,
    /// re-challenges on a live link reuse it, and a link that ended is forgotten, so the same
    /// link id later (a reconnect) gets a new key.
    #[test]
    fn each_link_has_its_own_key_and_a_reconnect_gets_a_new_one() {
        let tee = WorkerTee::simulated().unwrap();
        let one = tee.link_key(1).unwrap().public_key();
        let two = tee.link_key(2).unwrap().public_key();
        assert_ne!(one.0, two.0, "two links, two keys");
        assert_eq!(tee.link_key(1).unwrap().public_key().0, one.0, "a re-challenge keeps the link's key");
        tee.drop_link(1);
        assert_eq!(tee.openers().len(), 1, "the ended link's key is gone");
        assert_ne!(tee.link_key(1).unwrap().public_key().0, one.0, "a reconnect gets a new key");
    }
}
