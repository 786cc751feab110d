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
    /// The policy registry contract (address): its rules are read from the chain by this
    /// command and applied on top of --policy; the gateway must claim exactly them, at the
    /// chain's version, or verification fails.
    #[arg(long)]
    registry: Option<String>,
    /// TON network of --registry.
    #[arg(long, default_value = "mainnet", value_parser = ["mainnet", "testnet"])]
    ton_network: String,
    /// toncenter v3 API to read --registry through; default toncenter's for --ton-network.
    #[arg(long)]
    ton_api: Option<String>,
    /// toncenter API key (optional; raises the rate limit).
    #[arg(long, env = "TONCENTER_API_KEY")]
    ton_api_key: Option<String>,
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
        registry: a.registry.map(|address| {
            let network = if a.ton_network == "testnet" { ton::Network::Testnet } else { ton::Network::Mainnet };
            cocoon::verify::RegistryCheck {
                address,
                network,
                api_url: a.ton_api.unwrap_or_else(|| network.default_api_url().to_owned()),
                api_key: a.ton_api_key,
            }
        }),
    };
    let ok = cocoon::verify::run(args, &mut std::io::stdout()).await?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
