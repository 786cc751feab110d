//! The verifier: evidence -> claims -> policy -> binding, plus nonce freshness for the router
//! and [`verify_report`] for clients (`cocoon verify`).

use serde::{Deserialize, Serialize};

use crate::binding::{HpkePublicKey, Nonce};
use crate::claims::{TeeClaims, TeeDetails};
use crate::error::AttestationError;
use crate::evidence::{Evidence, WorkerAttestation};
use crate::nonce::{NonceStore, NonceTake};
use crate::policy::Policy;
use crate::serde_bytes::hex_array;
use crate::tdx::{CollateralStore, INTEL_SGX_ROOT_CA_DER};
use crate::{simulated, snp, tdx};

/// A worker whose evidence, policy and key binding all checked out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedWorker {
    pub claims: TeeClaims,
    pub hpke_public_key: HpkePublicKey,
    #[serde(with = "hex_array")]
    pub tls_spki_sha256: [u8; 32],
    /// The worker's identity key (signs its receipts), when its evidence binds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<crate::receipt::IdentityPublicKey>,
    /// What its evidence commits to about its models ([`crate::models_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::evidence::opt_hex32")]
    pub models_digest: Option<[u8; 32]>,
    /// Unix seconds.
    pub verified_at: u64,
    /// Unix seconds after which the worker must attest again (cache TTL, capped by the expiry
    /// of the collateral or certificates used).
    pub expires_at: u64,
    /// The collateral the verifier chose, when a [`crate::CollateralService`] resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral: Option<crate::collateral::CollateralUsed>,
    /// The GPU's verdict, when the worker sent GPU evidence and it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::nvidia::GpuClaims>,
}

impl VerifiedWorker {
    pub fn is_insecure_simulated(&self) -> bool {
        self.claims.insecure_simulated
    }

    /// Multi-line, human-readable verdict (for `cocoon verify` and logs).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self.claims.insecure_simulated {
            out.push_str(
                "WARNING: SIMULATED TEE - no hardware backs this evidence; do not send secrets\n",
            );
        }
        out.push_str(&format!("TEE: {}\n", self.claims.kind));
        match &self.claims.details {
            TeeDetails::Tdx {
                quote_version,
                measurements: m,
                tcb_status,
                advisory_ids,
                ..
            } => {
                out.push_str(&format!(
                    "quote version: {quote_version}\nTCB status: {tcb_status}\n"
                ));
                if !advisory_ids.is_empty() {
                    out.push_str(&format!("advisories: {}\n", advisory_ids.join(", ")));
                }
                out.push_str(&format!(
                    "MRTD:  {}\nRTMR0: {}\nRTMR1: {}\nRTMR2: {}\nRTMR3: {}\n",
                    m.mrtd, m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3
                ));
            }
            TeeDetails::SevSnp {
                product,
                measurement,
                vmpl,
                reported_tcb: t,
                ..
            } => {
                out.push_str(&format!(
                    "product: {product}\nVMPL: {vmpl}\nreported TCB: bootloader {} tee {} snp {} microcode {}\nMEASUREMENT: {measurement}\n",
                    t.bootloader, t.tee, t.snp, t.microcode
                ));
            }
            TeeDetails::Simulated {
                measurements: m,
                signer,
                ..
            } => {
                out.push_str(&format!(
                    "simulated TEE key: {}\nMRTD: {} (fixed simulated value)\n",
                    hex::encode(signer),
                    m.mrtd
                ));
            }
        }
        out.push_str(&format!(
            "HPKE key fingerprint: {}\nTLS SPKI SHA-256: {}\nvalid until: {} (unix s)\n",
            self.hpke_public_key.fingerprint(),
            hex::encode(self.tls_spki_sha256),
            self.expires_at
        ));
        if let Some(c) = &self.collateral {
            out.push_str(&format!("collateral: {}\n", c.describe(self.verified_at)));
        }
        match &self.gpu {
            Some(g) => out.push_str(&g.describe()),
            None => out.push_str("GPU: no GPU evidence\n"),
        }
        out
    }
}

/// Verifies evidence against a policy. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Verifier {
    policy: Policy,
    intel_root_ca_der: Vec<u8>,
    collateral: CollateralStore,
    nvidia_root_pem: String,
}

impl Verifier {
    /// Intel's production root CA, an empty collateral cache.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            intel_root_ca_der: INTEL_SGX_ROOT_CA_DER.to_vec(),
            collateral: CollateralStore::new(),
            nvidia_root_pem: crate::nvidia::NVIDIA_DEVICE_ROOT_PEM.to_string(),
        }
    }

    /// Replaces NVIDIA's Device Identity CA (PEM) that GPU chains must end at.
    pub fn with_nvidia_root(mut self, pem: String) -> Self {
        self.nvidia_root_pem = pem;
        self
    }

    /// Replaces the Intel root CA (DER) that TDX collateral must chain to.
    pub fn with_intel_root_ca(mut self, der: Vec<u8>) -> Self {
        self.intel_root_ca_der = der;
        self
    }

    /// Uses this TDX collateral cache (preferred over collateral attached to evidence).
    pub fn with_collateral(mut self, store: CollateralStore) -> Self {
        self.collateral = store;
        self
    }

    pub fn collateral_mut(&mut self) -> &mut CollateralStore {
        &mut self.collateral
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The same verifier (root CA, collateral cache) under another policy: how a running
    /// router raises a rule (e.g. `min_tcb_evaluation_data_number` after a TCB recovery).
    pub fn with_policy(&self, policy: Policy) -> Self {
        Self {
            policy,
            ..self.clone()
        }
    }

    /// Step 1: signatures and chain of trust only, at `now` (unix seconds). Simulated
    /// evidence is refused here already unless the policy allows it.
    pub fn verify_evidence(
        &self,
        evidence: &Evidence,
        now: u64,
    ) -> Result<TeeClaims, AttestationError> {
        match evidence {
            Evidence::Simulated(_) if !self.policy.allow_insecure_simulated_tee => {
                Err(AttestationError::SimulatedNotAllowed)
            }
            Evidence::Simulated(ev) => simulated::verify(ev),
            Evidence::Tdx(ev) => tdx::verify(ev, &self.intel_root_ca_der, &self.collateral, now),
            Evidence::SevSnp(ev) => snp::verify(ev, now),
        }
    }

    /// Step 2: the policy's rules on verified claims.
    pub fn check_policy(&self, claims: &TeeClaims, now: u64) -> Result<(), AttestationError> {
        self.policy.check(claims, now)
    }

    /// Steps 1-3: evidence, policy, and the `report_data` binding of the attestation's keys
    /// to `expected_nonce`. Freshness and single use of the nonce are the caller's (see
    /// [`Self::verify_worker`] and [`verify_report`]).
    pub fn verify_attestation(
        &self,
        att: &WorkerAttestation,
        expected_nonce: &Nonce,
        now: u64,
    ) -> Result<VerifiedWorker, AttestationError> {
        if att.nonce != *expected_nonce {
            return Err(AttestationError::NonceMismatch {
                expected: expected_nonce.to_hex(),
                got: att.nonce.to_hex(),
            });
        }
        let claims = self.verify_evidence(&att.evidence, now)?;
        self.check_policy(&claims, now)?;
        att.binding().check(&claims.report_data)?;
        // The GPU answers a nonce derived from the same binding: same session, same worker.
        let gpu = self.policy.gpu.verify(
            att.gpu.as_ref(),
            &crate::nvidia::gpu_nonce(&att.binding()),
            &self.nvidia_root_pem,
            self.policy.allow_insecure_simulated_tee,
            now,
        )?;
        let expires_at = now
            .saturating_add(self.policy.cache_ttl_secs)
            .min(claims.valid_until)
            .min(gpu.as_ref().map_or(u64::MAX, |g| g.valid_until));
        Ok(VerifiedWorker {
            claims,
            hpke_public_key: att.hpke_public_key,
            tls_spki_sha256: att.tls_spki_sha256,
            identity_key: att.binding().worker.map(|(i, _)| i),
            models_digest: att.binding().worker.map(|(_, m)| m),
            verified_at: now,
            expires_at,
            collateral: None,
            gpu,
        })
    }

    /// Router side: a fresh nonce to send to a worker, remembered in `store`.
    pub async fn issue_nonce(
        &self,
        store: &dyn NonceStore,
        now: u64,
    ) -> Result<Nonce, AttestationError> {
        let nonce = Nonce::random().map_err(|e| AttestationError::NonceStore(e.to_string()))?;
        store
            .issue(
                nonce,
                now,
                now.saturating_add(self.policy.max_evidence_age_secs),
            )
            .await
            .map_err(AttestationError::NonceStore)?;
        Ok(nonce)
    }

    /// Router side, everything: the connection's TLS key is the attested one, the nonce was
    /// issued by `store`, is used for the first time and is not older than
    /// `max_evidence_age_secs`, then [`Self::verify_attestation`]. The nonce is spent even if
    /// verification fails, so each nonce answers exactly one attempt.
    pub async fn verify_worker(
        &self,
        att: &WorkerAttestation,
        connection_tls_spki_sha256: &[u8; 32],
        store: &dyn NonceStore,
        now: u64,
    ) -> Result<VerifiedWorker, AttestationError> {
        if att.tls_spki_sha256 != *connection_tls_spki_sha256 {
            return Err(AttestationError::TlsKeyMismatch {
                presented: hex::encode(connection_tls_spki_sha256),
                attested: hex::encode(att.tls_spki_sha256),
            });
        }
        let nonce = att.nonce.to_hex();
        match store
            .take(&att.nonce, now)
            .await
            .map_err(AttestationError::NonceStore)?
        {
            NonceTake::Unknown => return Err(AttestationError::NonceUnknown { nonce }),
            NonceTake::AlreadyUsed => return Err(AttestationError::NonceReplayed { nonce }),
            NonceTake::Fresh { issued_at } => self.check_age(issued_at, now)?,
        }
        self.verify_attestation(att, &att.nonce, now)
    }

    fn check_age(&self, issued_at: u64, now: u64) -> Result<(), AttestationError> {
        let age = now.saturating_sub(issued_at);
        if age > self.policy.max_evidence_age_secs {
            return Err(AttestationError::EvidenceTooOld {
                age_secs: age,
                max_secs: self.policy.max_evidence_age_secs,
            });
        }
        Ok(())
    }
}

/// Body of `GET /v1/attestation/report?model=M&nonce=N`: the serving workers' evidence bound
/// to the client's nonce, and the policy the network applies (informational: a client should
/// verify against its own expectations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationReport {
    pub nonce: Nonce,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub policy: Policy,
    pub workers: Vec<WorkerAttestation>,
    /// The gateway's own evidence, when it runs in a TEE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<WorkerAttestation>,
}

/// The outcome for one attestation in a report.
#[derive(Debug)]
pub struct WorkerVerdict {
    pub hpke_public_key: HpkePublicKey,
    pub result: Result<VerifiedWorker, AttestationError>,
}

/// The outcome of [`verify_report`].
#[derive(Debug)]
pub struct ReportVerdict {
    pub workers: Vec<WorkerVerdict>,
    pub gateway: Option<WorkerVerdict>,
}

impl ReportVerdict {
    /// At least one worker, and every attestation (workers and gateway) verified.
    pub fn all_ok(&self) -> bool {
        !self.workers.is_empty()
            && self
                .workers
                .iter()
                .chain(self.gateway.iter())
                .all(|v| v.result.is_ok())
    }

    /// Whether any verified attestation comes from the simulated TEE.
    pub fn any_simulated(&self) -> bool {
        self.workers
            .iter()
            .chain(self.gateway.iter())
            .any(|v| v.result.as_ref().is_ok_and(|w| w.is_insecure_simulated()))
    }
}

/// Client side (`cocoon verify`): checks that the report answers `nonce` (created by the
/// client at `nonce_created_at`, unix seconds) within the policy's `max_evidence_age_secs`,
/// then verifies every attestation in it with `verifier`.
pub fn verify_report(
    verifier: &Verifier,
    report: &AttestationReport,
    nonce: &Nonce,
    nonce_created_at: u64,
    now: u64,
) -> Result<ReportVerdict, AttestationError> {
    if report.nonce != *nonce {
        return Err(AttestationError::NonceMismatch {
            expected: nonce.to_hex(),
            got: report.nonce.to_hex(),
        });
    }
    verifier.check_age(nonce_created_at, now)?;
    let check = |att: &WorkerAttestation| WorkerVerdict {
        hpke_public_key: att.hpke_public_key,
        result: verifier.verify_attestation(att, nonce, now),
    };
    Ok(ReportVerdict {
        workers: report.workers.iter().map(check).collect(),
        gateway: report.gateway.as_ref().map(check),
    })
}
