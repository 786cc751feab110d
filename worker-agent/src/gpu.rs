//! NVIDIA GPU evidence on the worker: NVML's attestation report for the session's
//! [`attestation::gpu_nonce`] and the device certificate chain, sent in `Hello` next to the
//! CPU evidence (`WorkerAttestation.gpu`).
//!
//! The NVML calls sit behind [`NvmlCalls`], so how their failures become refusals is tested
//! here without a GPU; the real implementation ([`nvml::Nvml`]) needs the `nvidia` feature and
//! libnvidia-ml at run time.

use attestation::nvidia::{GpuEvidence, MAX_GPU_CERT_CHAIN_BYTES, MAX_GPU_REPORT_BYTES};

/// How an NVML call failed, as far as the mapping below cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlFailure {
    /// libnvidia-ml could not be loaded or lacks the symbol (no driver, or one too old).
    Unavailable(String),
    /// `NVML_ERROR_UNKNOWN`: what `nvmlDeviceGetConfComputeGpuAttestationReport` returns on a
    /// GPU whose confidential-computing mode is off.
    Unknown,
    /// `NVML_ERROR_NOT_SUPPORTED`: a GPU without confidential computing (pre-Hopper).
    NotSupported,
    Other(String),
}

/// The two NVML calls GPU evidence needs, on one device.
pub trait NvmlCalls: Send + Sync {
    /// `nvmlDeviceGetConfComputeGpuAttestationReport(nonce)`: the report bytes.
    fn attestation_report(&self, nonce: [u8; 32]) -> Result<Vec<u8>, NvmlFailure>;
    /// `nvmlDeviceGetConfComputeGpuCertificate`: `attestationCertChain` (PEM, NUL-padded).
    fn attestation_cert_chain(&self) -> Result<Vec<u8>, NvmlFailure>;
    /// True only for [`SimulatedNvml`]: its evidence is flagged `insecure_simulated`.
    fn insecure_simulated(&self) -> bool {
        false
    }
}

/// The simulated GPU of `cocoon dev` ([`attestation::nvidia_sim::SimulatedGpu`]) behind the
/// same calls as NVML, so the collection path is the real one. Its evidence says
/// `insecure_simulated: true`; only a router allowing the simulated TEE accepts it.
pub struct SimulatedNvml(attestation::nvidia_sim::SimulatedGpu);

impl SimulatedNvml {
    /// This run's simulated device key and chain.
    pub fn generate() -> Result<Self, String> {
        attestation::nvidia_sim::SimulatedGpu::generate().map(Self)
    }
}

impl NvmlCalls for SimulatedNvml {
    fn attestation_report(&self, nonce: [u8; 32]) -> Result<Vec<u8>, NvmlFailure> {
        self.0.report(nonce).map_err(NvmlFailure::Other)
    }

    fn attestation_cert_chain(&self) -> Result<Vec<u8>, NvmlFailure> {
        Ok(self.0.cert_chain_pem().as_bytes().to_vec())
    }

    fn insecure_simulated(&self) -> bool {
        true
    }
}

/// Why the worker has no GPU evidence to send. Each says its cause: a worker that should
/// attest its GPU and cannot must not start serving as if it had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuCollectError {
    #[error("NVML is unavailable ({0}): is the NVIDIA driver (libnvidia-ml.so.1) installed in this VM?")]
    NvmlUnavailable(String),
    #[error("GPU not in confidential-computing mode: NVML returned Unknown Error for {call} (enable CC mode with NVIDIA's gpu-admin-tools and reboot the VM)")]
    NotInCcMode { call: &'static str },
    #[error("GPU does not support confidential computing: NVML returned Not Supported for {call}")]
    NotSupported { call: &'static str },
    #[error("NVML {call} failed: {detail}")]
    Nvml { call: &'static str, detail: String },
    #[error("NVML returned an unusable {what}: {detail}")]
    Unusable { what: &'static str, detail: String },
}

fn map(call: &'static str, f: NvmlFailure) -> GpuCollectError {
    match f {
        NvmlFailure::Unavailable(d) => GpuCollectError::NvmlUnavailable(d),
        NvmlFailure::Unknown => GpuCollectError::NotInCcMode { call },
        NvmlFailure::NotSupported => GpuCollectError::NotSupported { call },
        NvmlFailure::Other(detail) => GpuCollectError::Nvml { call, detail },
    }
}

/// Collects GPU evidence answering `nonce`. Never returns empty evidence: an empty report or
/// chain is an error naming it.
pub fn collect(nvml: &dyn NvmlCalls, nonce: [u8; 32]) -> Result<GpuEvidence, GpuCollectError> {
    let report = nvml
        .attestation_report(nonce)
        .map_err(|f| map("nvmlDeviceGetConfComputeGpuAttestationReport", f))?;
    if report.is_empty() || report.len() > MAX_GPU_REPORT_BYTES {
        return Err(GpuCollectError::Unusable {
            what: "attestation report",
            detail: format!("{} bytes (1 to {MAX_GPU_REPORT_BYTES} expected)", report.len()),
        });
    }
    let chain = nvml
        .attestation_cert_chain()
        .map_err(|f| map("nvmlDeviceGetConfComputeGpuCertificate", f))?;
    // NVML fills a fixed buffer; the PEM ends at the first NUL.
    let end = chain.iter().position(|&b| b == 0).unwrap_or(chain.len());
    let pem = std::str::from_utf8(&chain[..end]).map_err(|e| GpuCollectError::Unusable {
        what: "certificate chain",
        detail: format!("not text: {e}"),
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.len() > MAX_GPU_CERT_CHAIN_BYTES {
        return Err(GpuCollectError::Unusable {
            what: "certificate chain",
            detail: format!("{} bytes without a PEM certificate (or over {MAX_GPU_CERT_CHAIN_BYTES})", pem.len()),
        });
    }
    Ok(GpuEvidence { report, cert_chain_pem: pem.to_string(), insecure_simulated: nvml.insecure_simulated() })
}

/// NVML through the `nvml-wrapper` crate (GPU 0).
#[cfg(feature = "nvidia")]
pub mod nvml {
    use super::{map, GpuCollectError, NvmlCalls, NvmlFailure};
    use nvml_wrapper::error::NvmlError;

    /// An initialised NVML; each call looks up GPU 0 (handles borrow the library).
    pub struct Nvml(nvml_wrapper::Nvml);

    impl Nvml {
        /// Loads libnvidia-ml; where it is missing: "NVML is unavailable (…)".
        pub fn init() -> Result<Self, GpuCollectError> {
            nvml_wrapper::Nvml::init().map(Self).map_err(|e| map("nvmlInit", failure(e)))
        }
    }

    pub(crate) fn failure(e: NvmlError) -> NvmlFailure {
        match e {
            NvmlError::LibloadingError(e) => NvmlFailure::Unavailable(e.to_string()),
            NvmlError::FailedToLoadSymbol(s) => NvmlFailure::Unavailable(format!("symbol {s} missing")),
            NvmlError::DriverNotLoaded | NvmlError::LibraryNotFound => NvmlFailure::Unavailable(e.to_string()),
            NvmlError::Unknown => NvmlFailure::Unknown,
            NvmlError::NotSupported => NvmlFailure::NotSupported,
            other => NvmlFailure::Other(other.to_string()),
        }
    }

    impl NvmlCalls for Nvml {
        fn attestation_report(&self, nonce: [u8; 32]) -> Result<Vec<u8>, NvmlFailure> {
            let dev = self.0.device_by_index(0).map_err(failure)?;
            Ok(dev.confidential_compute_gpu_attestation_report(nonce).map_err(failure)?.attestation_report)
        }

        fn attestation_cert_chain(&self) -> Result<Vec<u8>, NvmlFailure> {
            let dev = self.0.device_by_index(0).map_err(failure)?;
            Ok(dev.confidential_compute_gpu_certificate().map_err(failure)?.attestation_cert_chain)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Fake {
        report: Result<Vec<u8>, NvmlFailure>,
        chain: Result<Vec<u8>, NvmlFailure>,
    }

    impl NvmlCalls for Fake {
        fn attestation_report(&self, _nonce: [u8; 32]) -> Result<Vec<u8>, NvmlFailure> {
            self.report.clone()
        }
        fn attestation_cert_chain(&self) -> Result<Vec<u8>, NvmlFailure> {
            self.chain.clone()
        }
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";

    fn fake(report: Result<Vec<u8>, NvmlFailure>, chain: Result<Vec<u8>, NvmlFailure>) -> Fake {
        Fake { report, chain }
    }

    #[test]
    fn cc_mode_off_is_named() {
        let e = collect(&fake(Err(NvmlFailure::Unknown), Ok(PEM.into())), [0; 32]).unwrap_err();
        assert!(e.to_string().starts_with("GPU not in confidential-computing mode"), "{e}");
        assert!(e.to_string().contains("nvmlDeviceGetConfComputeGpuAttestationReport"), "{e}");
    }

    #[test]
    fn missing_nvml_is_named() {
        let e = collect(&fake(Err(NvmlFailure::Unavailable("libnvidia-ml.so: cannot open".into())), Ok(PEM.into())), [0; 32])
            .unwrap_err();
        assert!(e.to_string().starts_with("NVML is unavailable"), "{e}");
        let e = collect(&fake(Err(NvmlFailure::NotSupported), Ok(PEM.into())), [0; 32]).unwrap_err();
        assert!(e.to_string().contains("does not support confidential computing"), "{e}");
    }

    #[test]
    fn empty_evidence_is_refused_not_sent() {
        let e = collect(&fake(Ok(vec![]), Ok(PEM.into())), [0; 32]).unwrap_err();
        assert!(matches!(e, GpuCollectError::Unusable { what: "attestation report", .. }), "{e}");
        let e = collect(&fake(Ok(vec![1]), Ok(vec![0; 4096])), [0; 32]).unwrap_err();
        assert!(matches!(e, GpuCollectError::Unusable { what: "certificate chain", .. }), "{e}");
        let e = collect(&fake(Ok(vec![1]), Err(NvmlFailure::Unknown)), [0; 32]).unwrap_err();
        assert!(e.to_string().contains("nvmlDeviceGetConfComputeGpuCertificate"), "{e}");
    }

    /// The real NVML binding on a machine without the NVIDIA driver (CI): a named refusal.
    #[cfg(feature = "nvidia")]
    #[test]
    fn without_libnvidia_ml_the_real_binding_says_nvml_is_unavailable() {
        match nvml::Nvml::init() {
            Err(e) => {
                println!("MUST-FAIL {e}");
                assert!(e.to_string().starts_with("NVML is unavailable"), "{e}");
            }
            Ok(_) => eprintln!("NVML loaded: this machine has the NVIDIA driver; nothing to check here"),
        }
    }

    #[test]
    fn real_sample_passes_through_unchanged() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../attestation/testdata/nvidia/");
        let report = hex::decode(std::fs::read_to_string(format!("{dir}hopperAttestationReport.txt")).unwrap().trim()).unwrap();
        let pem = std::fs::read_to_string(format!("{dir}hopperCertChain.txt")).unwrap();
        let mut padded = pem.clone().into_bytes();
        padded.resize(5120, 0); // NVML's fixed-size attestationCertChain buffer
        let ev = collect(&fake(Ok(report.clone()), Ok(padded)), [0; 32]).unwrap();
        assert_eq!(ev, GpuEvidence { report, cert_chain_pem: pem, insecure_simulated: false });
    }

    #[test]
    fn simulated_gpu_evidence_is_flagged_and_verifies_only_where_simulation_is_allowed() {
        let nonce = [9; 32];
        let ev = collect(&SimulatedNvml::generate().unwrap(), nonce).unwrap();
        assert!(ev.insecure_simulated);
        let policy = attestation::GpuPolicy::default();
        let root = attestation::NVIDIA_DEVICE_ROOT_PEM;
        let claims = policy.verify(Some(&ev), &nonce, root, true, attestation::unix_now()).unwrap().unwrap();
        assert!(claims.insecure_simulated);
        assert!(claims.describe().contains("SIMULATED GPU"), "{}", claims.describe());
        let refused = policy.verify(Some(&ev), &nonce, root, false, attestation::unix_now()).unwrap_err();
        assert_eq!(refused.rule(), "gpu_simulated_not_allowed");
    }
}
