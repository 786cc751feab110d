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
    /// The policy registry to hold the gateway to: its rules are read from the chain by
    /// this client, applied on top of `policy`, and the gateway's report must claim
    /// exactly them, at the same version.
    pub registry: Option<RegistryCheck>,
}

/// Where `cocoon verify --registry` reads the chain.
pub struct RegistryCheck {
    pub address: String,
    pub network: ton::Network,
    /// A toncenter v3 API (`…/api/v3/runGetMethod` is called below it).
    pub api_url: String,
    pub api_key: Option<String>,
}

/// Reads the registry; prints what it holds.
async fn read_registry(r: &RegistryCheck, timeout: Duration, out: &mut impl std::io::Write) -> anyhow::Result<ton::RegistryPolicy> {
    let address = ton::parse_address(&r.address, r.network)?.address;
    let api = ton::TonApi::new(&r.api_url, r.api_key.clone(), timeout)?;
    let reg = ton::RegistryReader::new(api, address)
        .read()
        .await
        .with_context(|| format!("reading the policy registry {} through {}", r.address, r.api_url))?;
    writeln!(
        out,
        "registry {}: version {}, owner {}; {} TDX image(s), {} SEV-SNP measurement(s), {} pinned model(s), max price coefficient {}, fee {} bps",
        address.to_raw(),
        reg.version,
        reg.owner,
        reg.tdx.len(),
        reg.snp.len(),
        reg.models.len(),
        reg.max_price_coefficient,
        reg.fee_bps
    )?;
    Ok(reg)
}

/// Whether the report claims exactly the registry's rules at its version; the reasons it
/// does not, one line each.
fn registry_mismatches(body: &serde_json::Value, address: &str, reg: &ton::RegistryPolicy) -> anyhow::Result<Vec<String>> {
    let mut why = Vec::new();
    let origin = &body["policy_origin"];
    if origin["source"] != "chain" {
        why.push(format!("the gateway does not apply the registry: its policy comes from {}", origin["source"]));
        return Ok(why);
    }
    if origin["address"].as_str().map(str::to_ascii_lowercase) != Some(address.to_ascii_lowercase()) {
        why.push(format!("the gateway applies registry {} instead of {address}", origin["address"]));
    }
    if origin["version"].as_u64() != Some(u64::from(reg.version)) {
        why.push(format!(
            "the gateway applies registry version {} but the chain is at version {} (a gateway re-reads it every attestation.registry.refresh_secs: retry shortly)",
            origin["version"], reg.version
        ));
    }
    let claimed: Policy = serde_json::from_value(body["policy"].clone()).context("the report's policy")?;
    if let Some(d) = crate::registry::differences(&claimed, reg)? {
        why.push(format!("the gateway's policy differs from the registry's: {d}"));
    }
    if body["max_price_coefficient"].as_u64() != Some(u64::from(reg.max_price_coefficient)) {
        why.push(format!(
            "the gateway admits price coefficients up to {} but the registry says {}",
            body["max_price_coefficient"], reg.max_price_coefficient
        ));
    }
    Ok(why)
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
    let mut policy = load_policy(args.policy.as_deref(), args.allow_simulated)?;
    let registry = match &args.registry {
        Some(r) => {
            let reg = read_registry(r, args.timeout, out).await?;
            // The chain's rules, not the operator's word, are what the workers must meet.
            policy = crate::registry::to_policy(&policy, &reg)?;
            Some((ton::parse_address(&r.address, r.network)?.address.to_raw(), reg))
        }
        None => None,
    };
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
    if let Some((address, reg)) = &registry {
        let raw: serde_json::Value = serde_json::from_slice(&body)?;
        let why = registry_mismatches(&raw, address, reg)?;
        if !why.is_empty() {
            for w in &why {
                writeln!(out, "FAILED (registry): {w}")?;
            }
            return Ok(false);
        }
        writeln!(out, "the gateway applies this registry's rules at version {}", reg.version)?;
        // The registry publishes the network's gateways; one not listed may still apply
        // the rules, but it is not one the owner vouches for. (The TLS key fingerprints
        // are published for clients that pin; this command does not pin.)
        let gateways: Vec<&str> =
            reg.endpoints.iter().filter(|e| e.role == ton::registry::Role::Gateway).map(|e| e.url.as_str()).collect();
        let base = args.base_url.trim_end_matches('/');
        if !gateways.is_empty() && !gateways.iter().any(|g| g.trim_end_matches('/') == base) {
            writeln!(out, "WARNING: {base} is not among the registry's gateway endpoints ({})", gateways.join(", "))?;
        }
    }
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
