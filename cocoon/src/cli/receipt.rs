//! `cocoon receipt verify`: check workers' signed receipts offline against a saved
//! attestation report, and sum what they state.

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ReceiptArgs {
    #[command(subcommand)]
    cmd: ReceiptCmd,
}

#[derive(Subcommand)]
enum ReceiptCmd {
    /// Verify receipts (one per line: the `x-cocoon-receipt` value, a `: cocoon-receipt …`
    /// SSE comment, or the JSON) against a saved `/v1/attestation/report` answer. Exits 1 on
    /// the first receipt that fails; prints the totals per worker otherwise.
    Verify {
        #[arg(long)]
        receipt: std::path::PathBuf,
        #[arg(long)]
        report: std::path::PathBuf,
        /// Attestation policy (TOML, as `[attestation.policy]`); strict defaults otherwise.
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
        /// Accept the INSECURE simulated TEE.
        #[arg(long)]
        allow_simulated: bool,
        /// Judge the evidence at this unix time (default: when each receipt's job finished).
        #[arg(long)]
        at: Option<u64>,
    },
}

pub async fn run(a: ReceiptArgs) -> anyhow::Result<()> {
    match a.cmd {
        ReceiptCmd::Verify { receipt, report, policy, allow_simulated, at } => {
            let policy = cocoon::verify::load_policy(policy.as_deref(), allow_simulated)?;
            let text = std::fs::read_to_string(&receipt).with_context(|| format!("reading {}", receipt.display()))?;
            let report = std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?;
            let receipts = cocoon_client::parse_receipts(&text)?;
            let mut totals: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
            for (i, r) in receipts.iter().enumerate() {
                let ok = cocoon_client::verify_receipt_offline(&report, r, policy.clone(), at)
                    .with_context(|| format!("receipt {} of {}", i + 1, receipts.len()))?;
                let u = ok.receipt.usage;
                println!(
                    "ok  job {}  worker {}  model {}  {}  prompt {} (cached {})  completion {} (reasoning {})  coefficient {}  {} ms",
                    ok.receipt.job_id,
                    ok.worker_id,
                    ok.receipt.model,
                    ok.receipt.endpoint,
                    u.prompt_tokens,
                    u.cached_prompt_tokens,
                    u.completion_tokens,
                    u.reasoning_tokens,
                    ok.receipt.price_coefficient,
                    ok.receipt.finished_at_ms.saturating_sub(ok.receipt.started_at_ms),
                );
                let t = totals.entry(ok.worker_id).or_default();
                t.0 += 1;
                t.1 = t.1.saturating_add(u.prompt_tokens);
                t.2 = t.2.saturating_add(u.completion_tokens);
            }
            for (w, (n, p, c)) in totals {
                println!("total  worker {w}: {n} receipts, {p} prompt tokens, {c} completion tokens");
            }
            Ok(())
        }
    }
}
