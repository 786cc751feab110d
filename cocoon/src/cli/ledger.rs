//! `cocoon ledger`: ledger maintenance.

use clap::{Args, Subcommand};

use super::ConfigArg;

#[derive(Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: LedgerCmd,
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Verify every invariant; exits non-zero and lists the offending rows.
    Check,
}

pub async fn run(args: LedgerArgs) -> anyhow::Result<()> {
    let l = args.config.ledger().await?;
    match args.cmd {
        LedgerCmd::Check => {
            let mut violations: Vec<String> = l.check().await?.iter().map(|v| format!("{v:?}")).collect();
            violations.extend(l.check_ton().await?.iter().map(|v| format!("{v:?}")));
            if violations.is_empty() {
                println!("ledger check: every invariant holds");
                Ok(())
            } else {
                for v in &violations {
                    println!("VIOLATION: {v}");
                }
                anyhow::bail!("{} invariant violation(s)", violations.len())
            }
        }
    }
}
