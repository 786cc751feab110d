//! `cocoon payouts`: TON payouts to workers.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{print_payout, ConfigArg};

#[derive(Args)]
pub struct PayoutsArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: PayoutsCmd,
}

#[derive(Subcommand)]
enum PayoutsCmd {
    /// Payouts (TON transfers to workers): pending, sending, sent, confirmed with tx hash.
    List {
        /// Only this worker's.
        #[arg(long)]
        worker: Option<String>,
        /// pending | sending | sent | confirmed | cancelled
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Where a worker is paid: any TON address form (raw, or user-friendly; its bounce flag
    /// is kept). Checked against `ton.network`.
    SetAddress { worker: String, address: String },
}

pub async fn run(args: PayoutsArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    let l = args.config.ledger().await?;
    match args.cmd {
        PayoutsCmd::List { worker, status, limit } => {
            let worker = match worker {
                Some(w) => Some(
                    l.find_account(billing::AccountKind::Worker, &w)
                        .await?
                        .with_context(|| format!("no worker account {w:?}"))?
                        .id,
                ),
                None => None,
            };
            let status = status
                .map(|s| billing::PayoutStatus::parse(&s))
                .transpose()
                .context("--status must be pending, sending, sent, confirmed or cancelled")?;
            for p in l.list_payouts(billing::PayoutFilter { status, worker, before_id: None, limit }).await? {
                print_payout(&p);
            }
        }
        PayoutsCmd::SetAddress { worker, address } => {
            let parsed = ton::parse_address(&address, cfg.ton.network).with_context(|| format!("payout address for {worker}"))?;
            let acct = l.ensure_account(billing::AccountKind::Worker, &worker).await?;
            let raw = parsed.address.to_raw();
            l.set_payout_address(acct, &raw, parsed.bounceable_or_default()).await?;
            println!("{worker} is paid at {raw} (bounceable: {})", parsed.bounceable_or_default());
        }
    }
    Ok(())
}
