//! `cocoon verify`: check a network's workers yourself.

use clap::Args;

#[derive(Args)]
pub struct VerifyArgs {
    /// e.g. http://127.0.0.1:8080/v1
    #[arg(long)]
    base_url: String,
    #[arg(long)]
    model: String,
    /// Attestation policy (TOML, as `[attestation.policy]`); strict defaults otherwise.
    #[arg(long)]
    policy: Option<std::path::PathBuf>,
    /// Accept the INSECURE simulated TEE (to check a `cocoon dev` network).
    #[arg(long)]
    allow_simulated: bool,
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Where to fetch TDX collateral (Intel PCS v4, or a PCCS).
    #[arg(long, default_value = attestation::collateral::INTEL_PCS_URL)]
    pccs_url: String,
    /// Where to fetch SEV-SNP VCEKs (AMD KDS).
    #[arg(long, default_value = attestation::collateral::AMD_KDS_URL)]
    kds_url: String,
    /// Collateral cache; default ~/.cache/cocoon/collateral.
    #[arg(long)]
    collateral_dir: Option<std::path::PathBuf>,
}

/// Exits 1 (after printing why) when any worker fails verification.
pub async fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let args = cocoon::verify::VerifyArgs {
        base_url: a.base_url,
        model: a.model,
        policy: a.policy,
        allow_simulated: a.allow_simulated,
        timeout: std::time::Duration::from_secs(a.timeout_secs),
        collateral: attestation::CollateralConfig {
            pccs_url: a.pccs_url,
            kds_url: a.kds_url,
            cache_dir: a.collateral_dir.or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/cocoon/collateral"))
            }),
            ..Default::default()
        },
    };
    let ok = cocoon::verify::run(args, &mut std::io::stdout()).await?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
