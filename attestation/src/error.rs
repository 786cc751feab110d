//! Why evidence was rejected. Every rule has its own variant, and each message names the rule
//! that failed and the values involved, so a log line or a `cocoon verify` verdict says exactly
//! what to fix. [`AttestationError::rule`] gives a short stable label for metrics.

use crate::evidence::TeeKind;

/// A rejected attestation: the evidence itself, its chain of trust, the policy, the key binding
/// or the freshness rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    // ---- evidence shape ----
    #[error("{kind} evidence is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        kind: TeeKind,
        len: usize,
        max: usize,
    },
    #[error("malformed {kind} evidence: {reason}")]
    Malformed { kind: TeeKind, reason: String },
    #[error("unsupported TDX quote: {0}")]
    UnsupportedQuote(String),

    // ---- chain of trust ----
    #[error("{kind} evidence does not chain to a trusted root CA: {detail}")]
    UntrustedRoot { kind: TeeKind, detail: String },
    #[error("{what} expired: valid until {not_after} (unix s), verification time is {now}")]
    CollateralExpired {
        what: String,
        not_after: u64,
        now: u64,
    },
    #[error(
        "{what} is not valid yet: valid from {not_before} (unix s), verification time is {now}"
    )]
    CollateralNotYetValid {
        what: String,
        not_before: u64,
        now: u64,
    },
    #[error("no TDX collateral for FMSPC {fmspc}: attach it to the evidence or load it into the verifier's collateral cache")]
    CollateralMissing { fmspc: String },
    #[error("{kind} signature check failed: {detail}")]
    BadSignature { kind: TeeKind, detail: String },
    #[error("TDX TCB status is Revoked: the platform's attestation keys are revoked ({detail})")]
    TcbRevoked { detail: String },
    #[error("TDX platform TCB is older than every level Intel's TCB info lists, so no status applies and no policy can accept it ({detail})")]
    TcbOutdated { detail: String },
    #[error("TDX quote verification failed: {0}")]
    TdxVerification(String),
    #[error("SEV-SNP VCEK does not match the report: {0}")]
    SnpVcekMismatch(String),

    // ---- policy ----
    #[error("TDX TCB status {status} is not acceptable by policy (acceptable: {acceptable})")]
    TcbStatusNotAllowed { status: String, acceptable: String },
    #[error("TDX advisory {id} is rejected by policy")]
    AdvisoryRejected { id: String },
    #[error("TDX TCB evaluation data number {got} is below the policy's minimum {min}")]
    TcbEvaluationTooOld { got: u32, min: u32 },
    #[error("{kind} guest runs with debug enabled ({detail}); policy forbids debug")]
    DebugEnabled { kind: TeeKind, detail: String },
    #[error("{kind} measurement is not in the policy's allowed list: {detail}")]
    MeasurementNotAllowed { kind: TeeKind, detail: String },
    #[error("SEV-SNP product {product} is not allowed by policy (allowed: {allowed})")]
    SnpProductNotAllowed { product: String, allowed: String },
    #[error("SEV-SNP report is for VMPL {vmpl}, above the policy's maximum VMPL {max}")]
    SnpVmplNotAllowed { vmpl: u32, max: u32 },
    #[error("SEV-SNP reported TCB {component} SVN {got} is below the policy's minimum {min}")]
    SnpTcbTooLow {
        component: &'static str,
        got: u8,
        min: u8,
    },
    #[error("evidence comes from a simulated TEE (insecure_simulated: true) and allow_insecure_simulated_tee is false")]
    SimulatedNotAllowed,
    #[error(
        "simulated TEE evidence is signed by key {key}, which is not listed in simulated_tee_keys"
    )]
    SimulatedKeyNotTrusted { key: String },

    // ---- binding and freshness ----
    #[error("report_data does not bind the presented keys and nonce: expected {expected}, evidence carries {actual}")]
    ReportDataMismatch { expected: String, actual: String },
    #[error("attestation answers nonce {got}, but nonce {expected} was asked for")]
    NonceMismatch { expected: String, got: String },
    #[error("nonce {nonce} was already used: replayed attestation")]
    NonceReplayed { nonce: String },
    #[error("nonce {nonce} was not issued by this verifier, or its window has passed")]
    NonceUnknown { nonce: String },
    #[error("evidence is {age_secs} s old, over the policy's max_evidence_age_secs {max_secs}")]
    EvidenceTooOld { age_secs: u64, max_secs: u64 },
    #[error("evidence claims to be produced at {produced_at} (unix s), in the future of verification time {now}")]
    EvidenceFromFuture { produced_at: u64, now: u64 },
    #[error(
        "the connection's TLS key (SPKI SHA-256 {presented}) is not the attested one ({attested})"
    )]
    TlsKeyMismatch { presented: String, attested: String },
    #[error("nonce store failed: {0}")]
    NonceStore(String),

    // ---- collateral fetched by the verifier (see `collateral`) ----
    #[error("no usable {kind} collateral for {id}: {detail}")]
    CollateralUnavailable {
        kind: TeeKind,
        id: String,
        detail: String,
    },
    #[error("cached TDX collateral for FMSPC {id} is stale: its {what} expired at {not_after} (unix s, verification time {now}) and refreshing it failed: {detail}")]
    CollateralStale {
        id: String,
        what: String,
        not_after: u64,
        now: u64,
        detail: String,
    },
    #[error("SEV-SNP report is signed with a VLEK (a cloud provider's key, chaining to AMD's ASVK); only VCEK-signed reports are supported")]
    SnpVlekNotSupported,

    // ---- NVIDIA GPU evidence (see `nvidia`) ----
    #[error("NVIDIA GPU evidence rejected: {0}")]
    Gpu(#[from] crate::nvidia::GpuError),
}

impl AttestationError {
    /// A short, stable, low-cardinality label of the failed rule (for metrics and logs).
    pub fn rule(&self) -> &'static str {
        use AttestationError::*;
        match self {
            TooLarge { .. } => "too_large",
            Malformed { .. } => "malformed",
            UnsupportedQuote(_) => "unsupported_quote",
            UntrustedRoot { .. } => "untrusted_root",
            CollateralExpired { .. } => "collateral_expired",
            CollateralNotYetValid { .. } => "collateral_not_yet_valid",
            CollateralMissing { .. } => "collateral_missing",
            BadSignature { .. } => "bad_signature",
            TcbRevoked { .. } => "tcb_revoked",
            TcbOutdated { .. } => "tcb_outdated",
            TdxVerification(_) => "tdx_verification",
            SnpVcekMismatch(_) => "snp_vcek_mismatch",
            TcbStatusNotAllowed { .. } => "tcb_status",
            AdvisoryRejected { .. } => "advisory",
            TcbEvaluationTooOld { .. } => "tcb_evaluation_number",
            DebugEnabled { .. } => "debug",
            MeasurementNotAllowed { .. } => "measurement",
            SnpProductNotAllowed { .. } => "snp_product",
            SnpVmplNotAllowed { .. } => "snp_vmpl",
            SnpTcbTooLow { .. } => "snp_tcb",
            SimulatedNotAllowed => "simulated_not_allowed",
            SimulatedKeyNotTrusted { .. } => "simulated_key",
            ReportDataMismatch { .. } => "report_data",
            NonceMismatch { .. } => "nonce_mismatch",
            NonceReplayed { .. } => "nonce_replayed",
            NonceUnknown { .. } => "nonce_unknown",
            EvidenceTooOld { .. } => "evidence_age",
            EvidenceFromFuture { .. } => "evidence_future",
            TlsKeyMismatch { .. } => "tls_key",
            NonceStore(_) => "nonce_store",
            CollateralUnavailable { .. } => "collateral_unavailable",
            CollateralStale { .. } => "collateral_stale",
            SnpVlekNotSupported => "snp_vlek",
            Gpu(e) => e.rule(),
        }
    }
}

/// Producing evidence inside the TEE failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error(
        "configfs-tsm is not available at {0} (not a TDX/SEV-SNP guest, or configfs not mounted)"
    )]
    TsmUnavailable(String),
    #[error("configfs-tsm {op} {path}: {source}")]
    TsmIo {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configfs-tsm report raced with another writer (generation {got}, expected {expected}); retry")]
    TsmRace { expected: u64, got: u64 },
    #[error("configfs-tsm provider {0:?} is not supported (expected tdx_guest or sev_guest)")]
    UnsupportedProvider(String),
    #[error("SEV-SNP evidence needs the VCEK certificate: the host gave no certificate table (auxblob) and no VCEK file is configured")]
    VcekMissing,
    #[error("SEV-SNP certificate table (auxblob) is malformed: {0}")]
    BadCertTable(String),
    #[error("operating system random number generator failed: {0}")]
    Random(String),
    #[error("configfs-tsm at {0} has no provider (mkdir returned ENXIO): the tdx_guest / sev_guest driver is not loaded, so this is not a usable TDX or SEV-SNP guest")]
    NoTsmProvider(String),
    #[error("TDX quote generation returned {len} bytes after {attempts} attempt(s): no quote-generation service on the host (the host's QGS is not running or the VMM does not forward GetQuote; kernels before 7.0 report this as an empty quote)")]
    NoQuoteService { len: usize, attempts: u32 },
    #[error("configfs-tsm refused privlevel {requested} (its privlevel_floor is {floor}): {source}")]
    PrivlevelRefused {
        requested: u32,
        floor: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("this guest cannot produce an SEV-SNP report below VMPL {floor} (configfs-tsm privlevel_floor), above the maximum VMPL {max} it is configured for")]
    VmplForbidden { floor: u32, max: u32 },
    #[error("worker side: {what} did not finish within {after:?}")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    #[error("vsock quote-generation service: {0}")]
    Qgs(String),
}
