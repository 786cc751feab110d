//! `cocoon verify --base-url URL --model M`: a client's own check of a network. Fetches
//! `/v1/attestation/report` with a fresh random nonce and verifies every worker's evidence
//! locally with the `attestation` crate against the client's policy (not the server's).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use attestation::{verify_report, AttestationReport, Nonce, Policy, Verifier};

pub struct VerifyArgs {
    pub base_url: String,
    pub model: String,
    /// TOML policy file (`attestation::Policy`); strict defaults otherwise.
    pub policy: Option<PathBuf>,
    /// Accept the insecure simulated TEE (to check a `cocoon dev` network).
    pub allow_simulated: bool,
    pub timeout: Duration,
    /// Where this client fetches TDX collateral and SEV-SNP VCEKs itself (it does not take
    /// the operator's word for them), and caches them.
    pub collateral: attestation::CollateralConfig,
}

/// The report URL for a base URL given with or without its `/v1`.
pub fn report_url(base_url: &str, model: &str, nonce: &Nonce) -> String {
    let base = base_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    let model: String = model
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{base}/v1/attestation/report?model={model}&nonce={}", nonce.to_hex())
}

/// The client's policy: a TOML file (as `[attestation.policy]`) or the strict defaults, and
/// the simulated TEE only when asked for (to check a `cocoon dev` network).
pub fn load_policy(path: Option<&std::path::Path>, allow_simulated: bool) -> anyhow::Result<Policy> {
    let mut policy = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<Policy>(&text).with_context(|| format!("parsing policy {}", p.display()))?
        }
        None => Policy::default(),
    };
    if allow_simulated {
        policy.allow_insecure_simulated_tee = true;
    }
    Ok(policy)
}

/// Prints a verdict per worker; `Ok(true)` when every worker verified.
pub async fn run(args: VerifyArgs, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let policy = load_policy(args.policy.as_deref(), args.allow_simulated)?;
    let nonce = Nonce::random().context("drawing a nonce")?;
    let created = attestation::unix_now();
    let url = report_url(&args.base_url, &args.model, &nonce);
    let resp = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading the report")?;
    anyhow::ensure!(
        status.is_success(),
        "GET {url} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let report: AttestationReport =
        serde_json::from_slice(&body).context("the report is not a valid attestation report")?;
    let now = attestation::unix_now();
    // Collateral: fetched and cached by this client, like the router does; collateral a
    // worker attached is checked the same way and used only when fetching fails.
    let svc = attestation::CollateralService::new(args.collateral.clone()).map_err(anyhow::Error::msg)?;
    let mut report = report;
    let mut used = Vec::with_capacity(report.workers.len());
    for w in &mut report.workers {
        match svc.resolve(&w.evidence, &policy.snp.allowed_products, now).await {
            Ok((evidence, u)) => {
                w.evidence = evidence;
                used.push(Ok(u));
            }
            Err(e) => used.push(Err(e)),
        }
    }
    let verifier = Verifier::new(policy);
    let verdict = match verify_report(&verifier, &report, &nonce, created, now) {
        Ok(v) => v,
        Err(e) => {
            writeln!(out, "FAILED: the report as a whole is rejected ({}): {e}", e.rule())?;
            return Ok(false);
        }
    };
    writeln!(out, "model {}: {} worker(s), nonce {}", args.model, verdict.workers.len(), nonce.to_hex())?;
    let mut verdict = verdict;
    for (w, u) in verdict.workers.iter_mut().zip(used) {
        match (&mut w.result, u) {
            (Ok(v), Ok(u)) => v.collateral = u,
            // Without usable collateral the verification failed too: say why there was none.
            (Err(e), Err(why)) => *e = why,
            _ => {}
        }
    }
    for (i, w) in verdict.workers.iter().enumerate() {
        writeln!(out, "\n--- worker {} (HPKE key {}) ---", i + 1, w.hpke_public_key.fingerprint())?;
        match &w.result {
            Ok(v) => write!(out, "{}", v.describe())?,
            Err(e) => writeln!(out, "REJECTED ({}): {e}", e.rule())?,
        }
    }
    let ok = verdict.all_ok();
    if ok && verdict.any_simulated() {
        writeln!(out, "\nWARNING: the evidence comes from the INSECURE SIMULATED TEE: nothing protects prompts on this network (dev only).")?;
    }
    let simulated_gpu = verdict
        .workers
        .iter()
        .any(|w| w.result.as_ref().is_ok_and(|v| v.gpu.as_ref().is_some_and(|g| g.insecure_simulated)));
    if ok && simulated_gpu {
        writeln!(out, "WARNING: the GPU evidence is SIMULATED: no GPU and no confidential-computing mode is proven (dev only).")?;
    }
    writeln!(out, "\nverdict: {}", if ok { "OK: every worker verified" } else { "FAILED" })?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_urls() {
        let n = Nonce([0xab; 32]);
        let u = report_url("http://h:1/v1/", "a b/c", &n);
        assert!(u.starts_with("http://h:1/v1/attestation/report?model=a%20b%2Fc&nonce=abab"), "{u}");
        assert_eq!(report_url("http://h:1", "m", &n), report_url("http://h:1/v1", "m", &n));
    }
}
