//! Which workers may join: each link starts with a router nonce (`Challenge`), the worker
//! answers with evidence binding its HPKE key, its TLS key and that nonce (`Hello`), and the
//! router admits it only if the evidence verifies against the policy. Verification happens
//! once per connection and again before the verified result expires (re-challenge on the
//! live link), never per request.

use std::sync::Arc;

use attestation::{
    AttestationError, MemoryNonceStore, Nonce, NonceStore, Policy, VerifiedWorker, Verifier,
    WorkerAttestation,
};
use protocol::WorkerInfo;

/// Why a worker was not admitted. The message names the rule that failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("the worker's hello carries no attestation")]
    Missing,
    #[error("the worker's attestation is malformed: {0}")]
    Malformed(String),
    #[error("attestation rejected ({rule}): {source}")]
    Rejected {
        rule: &'static str,
        #[source]
        source: AttestationError,
    },
    #[error("re-attestation presented another HPKE key ({got}) than the connection's ({had})")]
    KeyChanged { had: String, got: String },
    /// The worker's self-description breaks a rule the router enforces (price above the
    /// network's maximum, no slots, too many models).
    #[error("worker refused ({rule}): {message}")]
    Declared { rule: &'static str, message: String },
}

impl From<AttestationError> for AdmitError {
    fn from(source: AttestationError) -> Self {
        AdmitError::Rejected {
            rule: source.rule(),
            source,
        }
    }
}

/// The router's attestation policy, nonce store and sealing switch.
pub struct Attestor {
    verifier: Verifier,
    nonces: Arc<dyn NonceStore>,
    seal_jobs: bool,
}

impl Attestor {
    pub fn new(verifier: Verifier, nonces: Arc<dyn NonceStore>, seal_jobs: bool) -> Self {
        Self {
            verifier,
            nonces,
            seal_jobs,
        }
    }

    /// Accepts the insecure simulated TEE, in-memory nonces, jobs sealed. Tests and the
    /// embedded dev network only; production config refuses the simulated TEE.
    pub fn insecure_dev() -> Self {
        let policy = Policy {
            allow_insecure_simulated_tee: true,
            ..Policy::default()
        };
        Self::new(Verifier::new(policy), Arc::new(MemoryNonceStore::new()), true)
    }

    /// Sends jobs in clear (benchmarking the sealing's own cost only).
    pub fn with_sealing(mut self, seal_jobs: bool) -> Self {
        self.seal_jobs = seal_jobs;
        self
    }

    pub fn policy(&self) -> &Policy {
        self.verifier.policy()
    }

    pub fn seal_jobs(&self) -> bool {
        self.seal_jobs
    }

    /// A fresh single-use nonce for a worker to attest to.
    pub async fn challenge(&self) -> Result<Nonce, AttestationError> {
        self.verifier
            .issue_nonce(&*self.nonces, attestation::unix_now())
            .await
    }

    /// Verifies the attestation in a worker's hello against the connection's TLS key, the
    /// nonce store and the policy.
    pub async fn admit(
        &self,
        info: &WorkerInfo,
        connection_tls_spki_sha256: &[u8; 32],
    ) -> Result<VerifiedWorker, AdmitError> {
        let raw = info.attestation.as_ref().ok_or(AdmitError::Missing)?;
        let att: WorkerAttestation =
            serde_json::from_slice(raw).map_err(|e| AdmitError::Malformed(e.to_string()))?;
        Ok(self
            .verifier
            .verify_worker(
                &att,
                connection_tls_spki_sha256,
                &*self.nonces,
                attestation::unix_now(),
            )
            .await?)
    }
}
