//! `cocoon attest collateral fetch|show|refresh`: the router's collateral cache (TDX
//! collateral per FMSPC, SEV-SNP VCEK per chip and TCB), as `[attestation.collateral]`
//! configures it: the same disk cache, and the replicas' Redis when `router.redis_url` is set.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use attestation::collateral::rfc3339;
use attestation::{CollateralService, CollateralStatus, Evidence, SnpEvidence, TdxEvidence};
use clap::{Args, Subcommand};

use super::ConfigArg;

#[derive(Args)]
pub struct AttestArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: AttestCmd,
}

#[derive(Subcommand)]
enum AttestCmd {
    /// TDX collateral and SEV-SNP VCEKs the router fetches, caches and refreshes.
    #[command(subcommand)]
    Collateral(CollateralCmd),
}

#[derive(Subcommand)]
enum CollateralCmd {
    /// Fetch (and check) collateral for one piece of evidence now: a TDX quote or an SEV-SNP
    /// report, as a binary or hex file.
    Fetch {
        #[arg(long, conflicts_with = "snp_report", required_unless_present = "snp_report")]
        quote: Option<PathBuf>,
        #[arg(long)]
        snp_report: Option<PathBuf>,
    },
    /// Print every cached item: source, fetch time, next update, expiry and status.
    Show,
    /// Re-fetch every cached TDX entry now (checked against the last quote it verified).
    Refresh,
}

pub async fn run(args: AttestArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    super::init_tracing("warn");
    let AttestCmd::Collateral(cmd) = args.cmd;
    let shared: Option<Arc<dyn attestation::SharedCollateral>> = match &cfg.router.redis_url {
        Some(url) => Some(Arc::new(
            router::RedisCollateralShare::connect(url, &cfg.router.redis_prefix)
                .await
                .with_context(|| format!("connecting to router.redis_url {url}"))?,
        )),
        None => None,
    };
    let svc = cfg
        .attestation
        .collateral_service(&cfg.data_dir, shared)?
        .context("attestation.collateral.enabled = false: there is no collateral cache")?;
    let now = attestation::unix_now();
    let products = cfg.attestation.policy.snp.allowed_products.clone();
    match cmd {
        CollateralCmd::Fetch { quote, snp_report } => {
            let evidence = match (quote, snp_report) {
                (Some(q), _) => Evidence::Tdx(TdxEvidence { quote: read_blob(&q)?, collateral: None }),
                (None, Some(r)) => Evidence::SevSnp(SnpEvidence { report: read_blob(&r)?, vcek: Vec::new() }),
                (None, None) => anyhow::bail!("give --quote or --snp-report"),
            };
            svc.fetch_for(&evidence, &products, now).await.map_err(anyhow::Error::msg)?;
            print_status(&svc, now);
        }
        CollateralCmd::Show => print_status(&svc, now),
        CollateralCmd::Refresh => {
            let results = svc.refresh_all(now).await;
            if results.is_empty() {
                println!("no TDX collateral cached yet (it is fetched when the first worker of a platform attests, or with `fetch`)");
            }
            let mut failed = false;
            for (fmspc, r) in results {
                match r {
                    Ok(()) => println!("FMSPC {fmspc}: refreshed"),
                    Err(e) => {
                        failed = true;
                        println!("FMSPC {fmspc}: refresh FAILED: {e}");
                    }
                }
            }
            print_status(&svc, now);
            anyhow::ensure!(!failed, "some collateral could not be refreshed");
        }
    }
    Ok(())
}

/// A file holding evidence as raw bytes or as hex text.
fn read_blob(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed: String = text.split_whitespace().collect();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(&trimmed).with_context(|| format!("{} looks like hex but does not decode", path.display()));
    }
    Ok(bytes)
}

fn print_status(svc: &CollateralService, now: u64) {
    let all = svc.status(now);
    if all.is_empty() {
        println!("collateral cache is empty");
    }
    for s in &all {
        println!("{}", line(s, now));
    }
}

fn line(s: &CollateralStatus, now: u64) -> String {
    let eval = s
        .tcb_evaluation_data_number
        .map(|n| format!("\n  TCB evaluation data number: {n}"))
        .unwrap_or_default();
    let err = s
        .last_error
        .as_ref()
        .map(|e| format!("\n  last error ({} failure(s)): {e}", s.failures))
        .unwrap_or_default();
    format!(
        "{} {}\n  source:      {}\n  fetched:     {} ({} s ago)\n  next update: {}\n  expires:     {}\n  refresh at:  {}{eval}\n  status:      {}{err}",
        s.kind,
        s.id,
        s.source,
        rfc3339(s.fetched_at),
        now.saturating_sub(s.fetched_at),
        rfc3339(s.next_update),
        rfc3339(s.expires_at),
        rfc3339(s.refresh_at),
        s.state
    )
}
