//! `cocoon config-check`: validate the configuration without serving.

use clap::Args;

use super::ConfigArg;

#[derive(Args)]
pub struct ConfigCheckArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: ConfigCheckArgs) -> anyhow::Result<()> {
    args.config.load()?;
    println!("configuration is valid");
    Ok(())
}
