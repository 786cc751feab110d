//! `cocoon accounts`: client and worker accounts in the ledger.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{print_payout, ConfigArg};

#[derive(Args)]
pub struct AccountsArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: AccountsCmd,
}

#[derive(Subcommand)]
enum AccountsCmd {
    /// Create a client account (idempotent).
    Create { name: String },
    /// Credit a client account (idempotent by --key).
    Credit {
        name: String,
        #[arg(long)]
        nanoton: i64,
        /// Idempotency key: the same key never credits twice.
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "manual credit")]
        memo: String,
    },
    /// Balance (total, held, available) and recent usage.
    Show {
        name: String,
        #[arg(long)]
        worker: bool,
    },
}

pub async fn run(args: AccountsArgs) -> anyhow::Result<()> {
    let l = args.config.ledger().await?;
    match args.cmd {
        AccountsCmd::Create { name } => {
            let id = l.ensure_account(billing::AccountKind::Client, &name).await?;
            println!("account {name} (id {})", id.0);
        }
        AccountsCmd::Credit { name, nanoton, key, memo } => {
            let id = l.ensure_account(billing::AccountKind::Client, &name).await?;
            let out = l.credit(id, nanoton, &key, &memo).await?;
            println!("{out:?}");
            let b = l.balance(id).await?;
            println!("balance: total {} held {} available {} nanoTON", b.total, b.held, b.available);
        }
        AccountsCmd::Show { name, worker } => {
            let kind = if worker { billing::AccountKind::Worker } else { billing::AccountKind::Client };
            let acct = l
                .find_account(kind, &name)
                .await?
                .with_context(|| format!("no {} account {name:?}", kind.as_str()))?;
            if worker {
                println!("{:?}", l.worker_earnings(acct.id).await?);
                for p in l.payouts_for_worker(acct.id, 20).await? {
                    print_payout(&p);
                }
            } else {
                let b = l.balance(acct.id).await?;
                println!("balance: total {} held {} available {} nanoTON", b.total, b.held, b.available);
                println!(
                    "deposit code: {} (send TON to the service wallet with this as the comment)",
                    l.deposit_code(acct.id).await?
                );
                for r in l.usage(acct.id, 20).await? {
                    println!(
                        "{}\t{}\tprompt={} completion={}\tcharged={} nanoTON",
                        r.job_id, r.model, r.usage.prompt_tokens, r.usage.completion_tokens, r.billed.charge
                    );
                }
            }
        }
    }
    Ok(())
}
