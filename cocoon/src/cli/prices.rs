//! `cocoon prices`: per-model prices in nanoTON per 1M tokens.

use clap::{Args, Subcommand};

use super::ConfigArg;

#[derive(Args)]
pub struct PricesArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: PricesCmd,
}

#[derive(Subcommand)]
enum PricesCmd {
    Set {
        model: String,
        #[arg(long)]
        prompt: i64,
        #[arg(long)]
        completion: i64,
        /// Defaults to the prompt price.
        #[arg(long)]
        cached_prompt: Option<i64>,
        /// Defaults to the completion price.
        #[arg(long)]
        reasoning: Option<i64>,
    },
    List,
}

pub async fn run(args: PricesArgs) -> anyhow::Result<()> {
    let l = args.config.ledger().await?;
    match args.cmd {
        PricesCmd::Set { model, prompt, completion, cached_prompt, reasoning } => {
            let p = billing::Price {
                prompt,
                cached_prompt: cached_prompt.unwrap_or(prompt),
                completion,
                reasoning: reasoning.unwrap_or(completion),
            };
            l.set_price(&model, p).await?;
            println!("{model}: {p:?} nanoTON per 1M tokens");
        }
        PricesCmd::List => {
            for p in l.prices().await? {
                println!("{p:?}");
            }
        }
    }
    Ok(())
}
