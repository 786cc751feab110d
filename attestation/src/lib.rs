//! Attestation for Cocoon-rs: TEE evidence (Intel TDX quotes v4/v5, AMD SEV-SNP reports with
//! their VCEK, and an insecure simulated TEE for development), its verification against a
//! [`Policy`], the binding of a worker's keys to a verifier nonce, and HPKE (RFC 9180)
//! sealing of jobs and their streamed responses.
//!
//! # Binding
//!
//! `report_data = SHA-512(REPORT_DATA_DOMAIN_TAG ‖ worker HPKE pk ‖ SHA-256(worker TLS SPKI) ‖ nonce)`
//! ([`ReportDataBinding`]). Verification = evidence ([`Verifier::verify_evidence`]) → policy
//! ([`Verifier::check_policy`]) → binding ([`ReportDataBinding::check`]); the steps are public
//! on their own, and [`Verifier::verify_attestation`] / [`Verifier::verify_worker`] do them all.
//! Every rejection is its own [`AttestationError`] variant naming the rule that failed.
//!
//! # Sealing: one HPKE context per link, keys per job
//!
//! The router sets up one HPKE context to the worker's attested key per link
//! ([`LinkSealer`]) and sends its encapsulated key once; every job is sealed with keys
//! exported from it for a fresh salt, the job id and the model ([`LinkSealedJob`]), and the
//! worker's response chunks are sealed with keys exported the same way. (Per-job HPKE,
//! [`JobSealer`] / [`JobOpener::open`], is kept for comparison: it costs ~170 µs per job.)
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use attestation::{JobContext, JobOpener, LinkSealer};
//! let worker = JobOpener::generate()?;                  // worker's HPKE key pair (in the TEE)
//! // Router, once per admitted link, to the attested key; `enc` goes to the worker.
//! let (sealer, enc) = LinkSealer::new(&worker.public_key())?;
//! // Worker, on receiving `enc`:
//! let link = worker.open_link(&enc)?;
//! // Per job: the router seals, the worker opens and seals every response chunk back.
//! let job = JobContext::new(uuid::Uuid::new_v4(), "model-name");
//! let (sealed, mut opener) = sealer.seal(&job, b"{...}")?;
//! let (body, mut response) = link.open(&job, &sealed)?;
//! let chunk = response.seal(b"data: {...}", false)?;
//! let end = response.seal(b"{\"usage\":...}", true)?;  // `last` on the final one
//! assert_eq!(opener.open(&chunk)?, b"data: {...}");     // in order; errors are final
//! opener.open(&end)?;
//! opener.finish()?;                                     // when the stream ends: truncation check
//! # assert_eq!(body, b"{...}");
//! # Ok(()) }
//! ```
//!
//! # Worker side (inside the TEE): evidence
//!
//! ```no_run
//! # fn attest(tls_spki_der: &[u8], nonce: attestation::Nonce, now: u64) -> Result<(), Box<dyn std::error::Error>> {
//! use attestation::{EvidenceProducer, JobOpener};
//! let keys = JobOpener::generate()?;                        // HPKE key pair, never leaves the TEE
//! let producer = EvidenceProducer::detect()                 // configfs-tsm (TDX or SEV-SNP)...
//!     .map_or_else(EvidenceProducer::simulated, Ok)?;       // ...or the simulated TEE in dev
//! // For each verifier nonce (blocking ~50 ms on TDX: use spawn_blocking):
//! let attestation = producer.attest(keys.public_key(), tls_spki_der, nonce, now)?;
//! // ... send `attestation` (serde) to the router in `Hello`.
//! # Ok(()) }
//! ```
//!
//! # Router side: admission
//!
//! ```no_run
//! # async fn admit(attestation: attestation::WorkerAttestation, policy_toml: &str, now: u64, tls_spki_sha256: [u8; 32]) -> Result<(), Box<dyn std::error::Error>> {
//! use attestation::{AttestationCache, CollateralStore, MemoryNonceStore, Policy, Verifier};
//! let policy: Policy = toml::from_str(policy_toml)?;
//! let verifier = Verifier::new(policy)
//!     .with_collateral(CollateralStore::load_file("tdx-collateral.json".as_ref())?);
//! let nonces = MemoryNonceStore::new();                    // or a Redis-backed NonceStore
//! let cache = AttestationCache::new();
//! let nonce = verifier.issue_nonce(&nonces, now).await?;  // send to the worker; it answers `attestation`
//! // TLS key of this connection + nonce single use + age + evidence + policy + binding:
//! let worker = verifier.verify_worker(&attestation, &tls_spki_sha256, &nonces, now).await?;
//! if worker.is_insecure_simulated() { /* add header x-cocoon-tee: simulated */ }
//! cache.insert(worker.clone());                            // valid until worker.expires_at
//! # Ok(()) }
//! ```
//!
//! # Client side (`cocoon verify`)
//!
//! ```no_run
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use attestation::{verify_report, AttestationReport, Nonce, Policy, Verifier};
//! let nonce = Nonce::random()?;
//! # let (created_at, now, body, my_policy) = (0u64, 0u64, "", Policy::default());
//! // GET /v1/attestation/report?model=M&nonce={nonce} -> body
//! let report: AttestationReport = serde_json::from_str(body)?;
//! let verdict = verify_report(&Verifier::new(my_policy), &report, &nonce, created_at, now)?;
//! for w in &verdict.workers {
//!     match &w.result {
//!         Ok(v) => println!("{}", v.describe()),
//!         Err(e) => println!("worker {}: REJECTED: {e}", w.hpke_public_key.fingerprint()),
//!     }
//! }
//! let ok = verdict.all_ok();
//! # Ok(()) }
//! ```
//!
//! # Trust inputs
//!
//! * TDX: Intel SGX Root CA ([`INTEL_SGX_ROOT_CA_DER`], replaceable). Collateral is fetched,
//!   checked, cached and refreshed by [`CollateralService`] (Intel PCS or a PCCS, through
//!   `dcap-qvl`'s client), or loaded from a cache file ([`CollateralStore`]), or attached to
//!   the evidence (checked like fetched collateral); `now` is always passed in. Its usable
//!   window is [`collateral_window`].
//! * SEV-SNP: the AMD ARK/ASK built into the `sev` crate (Milan, Genoa, Turin); the VCEK comes
//!   with the evidence (the host's certificate table) or from AMD KDS ([`CollateralService`]).
//! * NVIDIA GPU (Hopper): NVIDIA's Device Identity CA ([`NVIDIA_DEVICE_ROOT_PEM`],
//!   replaceable); the device chain comes with the evidence. No OCSP, no RIMs: see
//!   [`nvidia`] and `docs/gpu-attestation.md`.
//! * Simulated: a per-run Ed25519 key; accepted only with `allow_insecure_simulated_tee = true`
//!   (optionally pinned with `simulated_tee_keys`).

mod binding;
mod cache;
mod claims;
pub mod e2e;
pub mod collateral;
mod error;
mod evidence;
mod link_sealing;
mod nonce;
pub mod nvidia;
pub mod nvidia_rim;
pub mod nvidia_sim;
mod pem_chain;
mod policy;
pub mod receipt;
pub mod qgs;
mod sealing;
mod serde_bytes;
mod simulated;
mod snp;
mod tdx;
mod tsm;
mod verifier;

pub use binding::{
    cert_spki_der, check_report_data, models_digest, spki_sha256, HpkePublicKey, Nonce, ReportDataBinding, REPORT_DATA_DOMAIN_TAG,
    REPORT_DATA_DOMAIN_TAG_V2,
};
pub use cache::AttestationCache;
pub use collateral::{
    CollateralConfig, CollateralService, CollateralStatus, CollateralUsed, Freshness, SharedCollateral,
};
pub use claims::{Measurement, SnpProduct, SnpTcb, TdxMeasurements, TeeClaims, TeeDetails};
pub use error::{AttestationError, EvidenceError};
pub use evidence::{
    Evidence, SnpEvidence, TdxEvidence, TeeKind, WorkerAttestation, MAX_TDX_QUOTE_BYTES,
    MAX_VCEK_BYTES, SNP_REPORT_BYTES,
};
pub use link_sealing::{LinkOpener, LinkSealedJob, LinkSealer};
pub use nvidia::{
    gpu_nonce, GpuClaims, GpuError, GpuEvidence, GpuPolicy, GpuProtectionMode, NVIDIA_DEVICE_ROOT_PEM,
};
pub use nonce::{MemoryNonceStore, NonceStore, NonceTake};
pub use policy::{MeasurementPattern, Policy, SimulatedKey, SnpPolicy, TdxAllowed, TdxPolicy};
pub use sealing::{
    JobContext, JobOpener, JobSealer, ResponseOpener, ResponseSealer, SealError, SealedChunk,
    SealedJob, HPKE_SUITE,
};
pub use simulated::{SimulatedEvidence, SimulatedReport, SimulatedTee, SIMULATED_MEASUREMENTS};
pub use snp::{parse_report as parse_snp_report, parse_vcek};
pub use tdx::{
    collateral_validity, collateral_window, parse_quote as parse_tdx_quote, CollateralItemValidity,
    CollateralStore, INTEL_SGX_ROOT_CA_DER,
};
pub use tsm::{
    vcek_from_cert_table, ConfigfsTsm, EvidenceProducer, StdFs, TsmFs, TsmOptions, TsmReport,
    CONFIGFS_TSM_REPORT, MIN_TDX_QUOTE_BYTES,
};
pub use verifier::{
    verify_report, AttestationReport, ReportVerdict, VerifiedWorker, Verifier, WorkerVerdict,
};

/// Re-exported so callers can name collateral and TCB statuses without depending on `dcap-qvl`.
pub use dcap_qvl::{QuoteCollateralV3, TcbStatus};

/// Current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
