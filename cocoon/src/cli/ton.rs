//! `cocoon ton`: the service wallet on chain.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::ConfigArg;

#[derive(Args)]
pub struct TonArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: TonCmd,
}

#[derive(Subcommand)]
enum TonCmd {
    /// Deploy the service wallet (its state init with a zero-value transfer to itself), so
    /// that deposits reach a wallet with code: until then bounceable deposits bounce back.
    /// The wallet must hold a little TON first (send it to its non-bounceable address).
    /// Does nothing when the wallet is already active.
    DeployWallet {
        /// How long to wait for the wallet to show as active (0: send and return).
        #[arg(long, default_value_t = 180)]
        wait_secs: u64,
    },
}

pub async fn run(args: TonArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    let t = &cfg.ton;
    let errors = t.validate();
    anyhow::ensure!(errors.is_empty(), "invalid [ton] configuration: {}", errors.join("; "));
    for w in t.warnings() {
        eprintln!("warning: {w}");
    }
    match args.cmd {
        TonCmd::DeployWallet { wait_secs } => {
            let wallet = ton::ServiceWallet::load(&t.mnemonic_source(), t.wallet, t.network)
                .context("the service wallet's mnemonic")?;
            let api = ton::TonApi::new(t.api_url(), t.api_key.clone(), t.api_timeout())?
                .with_requests_per_sec(t.requests_per_sec());
            let testnet = t.network == ton::Network::Testnet;
            let address = wallet.address().to_friendly(false, testnet);
            let opts = ton::DeployOptions {
                wait: Duration::from_secs(wait_secs),
                ..ton::DeployOptions::default()
            };
            match ton::deploy_wallet(&api, &wallet, opts).await? {
                ton::DeployOutcome::AlreadyDeployed { seqno } => {
                    println!("{address} is already deployed (seqno {seqno}); nothing sent");
                }
                ton::DeployOutcome::Deployed { seqno, msg_hash } => {
                    println!("{address} is deployed (seqno {seqno}; message {msg_hash})");
                }
                ton::DeployOutcome::Sent { msg_hash, valid_until } => {
                    println!(
                        "deploy message {msg_hash} sent for {address}; not active yet (valid until {valid_until}): \
                         run this command again to check"
                    );
                }
            }
        }
    }
    Ok(())
}
