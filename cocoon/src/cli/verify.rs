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
}

/// Exits 1 (after printing why) when any worker fails verification.
pub async fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let args = cocoon::verify::VerifyArgs {
        base_url: a.base_url,
        model: a.model,
        policy: a.policy,
        allow_simulated: a.allow_simulated,
        timeout: std::time::Duration::from_secs(a.timeout_secs),
    };
    let ok = cocoon::verify::run(args, &mut std::io::stdout()).await?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
