//! `cocoon config-check`: validate the configuration without serving.

use clap::Args;

use super::ConfigArg;

#[derive(Args)]
pub struct ConfigCheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Check it as this command reads it: dev | gateway | worker (the default environment
    /// and the engine section depend on it).
    #[arg(long, default_value = "worker")]
    role: String,
}

pub fn run(args: ConfigCheckArgs) -> anyhow::Result<()> {
    let role = match args.role.as_str() {
        "dev" => cocoon::config::Role::Dev,
        "gateway" => cocoon::config::Role::Gateway,
        "worker" => cocoon::config::Role::Worker,
        other => anyhow::bail!("--role must be dev, gateway or worker, got {other:?}"),
    };
    let cfg = args.config.load_for(role)?;
    println!("configuration is valid (environment: {:?}, as `cocoon {}` reads it)", cfg.environment, args.role);
    Ok(())
}
