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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use attestation::receipt::{IdentityKey, ReceiptUsage};

    use super::*;

    fn receipt(job_id: Uuid) -> Receipt {
        Receipt {
            version: 1,
            job_id,
            request_id: None,
            worker_id: "w1".into(),
            model: "m".into(),
            endpoint: "/v1/chat/completions".into(),
            request_sha256: "00".repeat(32),
            response_sha256: "11".repeat(32),
            usage: ReceiptUsage { prompt_tokens: 5, completion_tokens: 7, ..Default::default() },
            price_coefficient: 1000,
            started_at_ms: 1,
            finished_at_ms: 2,
        }
    }

    fn raw(key: &IdentityKey, r: &Receipt) -> Vec<u8> {
        serde_json::to_vec(&key.sign(r).unwrap()).unwrap()
    }

    fn why(c: ReceiptCheck) -> String {
        match c {
            ReceiptCheck::Invalid(why) => why,
            ReceiptCheck::Valid { .. } => panic!("accepted"),
        }
    }

    /// Each way a receipt can fail the router's check is refused with its reason (and the
    /// gateway then charges nothing for a sealed answer: gateway/src/e2e.rs).
    #[test]
    fn only_a_receipt_from_the_attested_worker_for_this_job_passes() {
        let key = IdentityKey::generate().unwrap();
        let job = Uuid::new_v4();
        let want = Expected { job_id: job, worker_id: "w1", model: "m", coefficient: 1000, identity: Some(key.public()) };
        let ok = check(&raw(&key, &receipt(job)), &want);
        assert!(ok.is_valid(), "{ok:?}");
        let usage = Usage { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12, ..Default::default() };
        assert!(check_usage(ok.clone(), Some(&usage), "w1").is_valid());

        let other = IdentityKey::generate().unwrap();
        assert!(why(check(&raw(&other, &receipt(job)), &want)).contains("signature from another worker"));
        let mut forged = key.sign(&receipt(job)).unwrap();
        forged.signature[0] ^= 1;
        assert!(why(check(&serde_json::to_vec(&forged).unwrap(), &want)).contains("signature"));
        assert!(why(check(&raw(&key, &receipt(Uuid::new_v4())), &want)).contains("receipt is for job"));
        let mut r = receipt(job);
        r.model = "other".into();
        assert!(why(check(&raw(&key, &r), &want)).contains("names model"));
        let mut r = receipt(job);
        r.worker_id = "w2".into();
        assert!(why(check(&raw(&key, &r), &want)).contains("names worker"));
        let mut r = receipt(job);
        r.price_coefficient = 2000;
        assert!(why(check(&raw(&key, &r), &want)).contains("coefficient 2000"));
        assert!(why(check(b"{not json", &want)).contains("malformed receipt"));
        let unattested = Expected { identity: None, ..want };
        assert!(why(check(&raw(&key, &receipt(job)), &unattested)).contains("attested no identity key"));
        let inflated = Usage { prompt_tokens: 5, completion_tokens: 8, total_tokens: 13, ..Default::default() };
        assert!(why(check_usage(ok, Some(&inflated), "w1")).contains("differs from the reported usage"));
    }
}
