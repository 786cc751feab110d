//! Checking a worker's receipt before the gateway captures: signed by the identity key the
//! worker attested, for this job, this worker, this model, and the usage the job reports.

use attestation::receipt::{IdentityPublicKey, Receipt, SignedReceipt};
use protocol::Usage;
use uuid::Uuid;

/// What the router concluded about a job's receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptCheck {
    /// Signed by the worker's attested identity and consistent with the job.
    Valid { signed: SignedReceipt, receipt: Receipt },
    /// Present but not acceptable, or absent; the reason names the rule.
    Invalid(String),
}

impl ReceiptCheck {
    pub fn is_valid(&self) -> bool {
        matches!(self, ReceiptCheck::Valid { .. })
    }

    /// The rule that failed, for metrics (low cardinality).
    fn reason_label(reason: &str) -> &'static str {
        if reason.starts_with("no receipt") {
            "missing"
        } else if reason.contains("signature") {
            "signature"
        } else if reason.contains("identity") {
            "no_identity"
        } else if reason.contains("usage") {
            "usage"
        } else {
            "mismatch"
        }
    }

    pub(crate) fn invalid(why: String, worker: &str) -> Self {
        metrics::counter!("cocoon_router_receipts_rejected_total", "reason" => Self::reason_label(&why)).increment(1);
        tracing::error!(%worker, reason = %why, "receipt rejected");
        ReceiptCheck::Invalid(why)
    }
}

/// Who the receipt must be from and for.
pub(crate) struct Expected<'a> {
    pub job_id: Uuid,
    pub worker_id: &'a str,
    pub model: &'a str,
    pub coefficient: u32,
    pub identity: Option<IdentityPublicKey>,
}

/// Checks a raw receipt (JSON of [`SignedReceipt`]) against what the job is.
pub(crate) fn check(raw: &[u8], want: &Expected<'_>) -> ReceiptCheck {
    let result = (|| {
        let signed: SignedReceipt = serde_json::from_slice(raw).map_err(|e| format!("malformed receipt: {e}"))?;
        let key = want
            .identity
            .ok_or_else(|| "the worker attested no identity key, so its receipts cannot be checked".to_string())?;
        if signed.signer != key {
            return Err(format!(
                "receipt signed by key {} but the worker attested {}: signature from another worker",
                signed.signer.fingerprint(),
                key.fingerprint()
            ));
        }
        let receipt = signed.verify(&key).map_err(|e| e.to_string())?;
        if receipt.job_id != want.job_id {
            return Err(format!("receipt is for job {} not {}", receipt.job_id, want.job_id));
        }
        if receipt.worker_id != want.worker_id {
            return Err(format!("receipt names worker {:?} not {:?}", receipt.worker_id, want.worker_id));
        }
        if receipt.model != want.model {
            return Err(format!("receipt names model {:?} not {:?}", receipt.model, want.model));
        }
        if receipt.price_coefficient != want.coefficient {
            return Err(format!(
                "receipt states coefficient {} but the worker was admitted at {}",
                receipt.price_coefficient, want.coefficient
            ));
        }
        Ok(ReceiptCheck::Valid { signed, receipt })
    })();
    result.unwrap_or_else(|why| ReceiptCheck::invalid(why, want.worker_id))
}

/// A valid receipt must state exactly the usage the job's terminal event reports.
pub(crate) fn check_usage(check: ReceiptCheck, usage: Option<&Usage>, worker: &str) -> ReceiptCheck {
    let ReceiptCheck::Valid { receipt, .. } = &check else { return check };
    let u = usage.copied().unwrap_or_default();
    let r = receipt.usage;
    let same = r.prompt_tokens == u.prompt_tokens
        && r.completion_tokens == u.completion_tokens
        && r.cached_prompt_tokens == u.cached_prompt_tokens()
        && r.reasoning_tokens == u.reasoning_tokens();
    if same {
        check
    } else {
        ReceiptCheck::invalid(
            format!(
                "receipt usage (prompt {}, completion {}) differs from the reported usage (prompt {}, completion {})",
                r.prompt_tokens, r.completion_tokens, u.prompt_tokens, u.completion_tokens
            ),
            worker,
        )
    }
}
