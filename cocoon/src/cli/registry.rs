//! `cocoon registry`: publish the network's rules in the policy registry contract on TON
//! (`contracts/registry.tolk`). The owner is the `[ton]` service wallet; every change is
//! one signed message from it, and the command waits until the registry's version moves.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ton::registry::{messages, owner, Endpoint, Item, Params, Prices, Role, TdxImage};

use super::ConfigArg;

#[derive(Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The registry contract; default `[attestation.registry] address`.
    #[arg(long, global = true)]
    address: Option<String>,
    /// How long to wait for a change to show on chain (0: send and return).
    #[arg(long, global = true, default_value_t = 120)]
    wait_secs: u64,
    #[command(subcommand)]
    cmd: RegistryCmd,
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Deploy a registry owned by the service wallet (which must be deployed and funded).
    /// Starts with no approved measurement or model, the max price coefficient of
    /// `[router]`, the fee of `[billing]` and no prices.
    Deploy,
    /// Print the policy the registry holds (JSON).
    Show,
    /// Add (or with --remove, remove) an approved TDX image or SEV-SNP measurement.
    SetMeasurement {
        #[command(subcommand)]
        what: Measurement,
        #[arg(long, global = true)]
        remove: bool,
    },
    /// Add (or remove) an allowed weight digest of a model id.
    SetModel {
        #[arg(long)]
        model: String,
        /// SHA-256 of the weights, as the worker measures them (64 hex).
        #[arg(long)]
        sha256: String,
        #[arg(long)]
        remove: bool,
    },
    /// Set prices (nanoTON per 1M tokens), and optionally the max price coefficient and
    /// the fee. Unnamed values stay as they are.
    SetPrices {
        #[arg(long)]
        prompt: Option<u64>,
        #[arg(long)]
        cached_prompt: Option<u64>,
        #[arg(long)]
        completion: Option<u64>,
        #[arg(long)]
        reasoning: Option<u64>,
        #[arg(long)]
        max_price_coefficient: Option<u32>,
        #[arg(long)]
        fee_bps: Option<u16>,
    },
    /// GPU policy: whether GPU evidence is required, architectures and protection modes.
    SetGpu {
        #[arg(long)]
        require: Option<bool>,
        /// e.g. hopper (empty: any)
        #[arg(long, value_delimiter = ',')]
        architectures: Option<Vec<String>>,
        /// spt, mpt, ppcie (empty: any)
        #[arg(long, value_delimiter = ',')]
        protection_modes: Option<Vec<String>>,
    },
    /// Add (or remove) an allowed GPU driver version, VBIOS version, or golden measurement
    /// value (`--index` of the SPDM block, value in hex).
    SetGpuValue {
        #[arg(long, value_parser = ["driver", "vbios", "golden"])]
        kind: String,
        #[arg(long)]
        value: String,
        /// The measurement block (golden values only).
        #[arg(long)]
        index: Option<u8>,
        #[arg(long)]
        remove: bool,
    },
    /// Add (or remove) a gateway or router endpoint with its TLS key's SHA-256.
    SetEndpoint {
        #[arg(long, value_parser = ["gateway", "router"])]
        role: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        tls_sha256: String,
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Subcommand, Clone)]
enum Measurement {
    Tdx {
        #[arg(long)]
        mrtd: String,
        /// 96 hex digits, or "any"
        #[arg(long)]
        rtmr0: String,
        #[arg(long)]
        rtmr1: String,
        #[arg(long)]
        rtmr2: String,
        #[arg(long)]
        rtmr3: String,
    },
    Snp {
        #[arg(long)]
        measurement: String,
    },
}

/// A query id for the owner's message: the time in milliseconds (only for tracing it).
fn query_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    let t = &cfg.ton;
    let api = ton::TonApi::new(t.api_url(), t.api_key.clone(), t.api_timeout())?.with_requests_per_sec(t.requests_per_sec());
    let address_text = args.address.clone().or_else(|| cfg.attestation.registry.address.clone());
    let wait = Duration::from_secs(args.wait_secs);
    if let RegistryCmd::Deploy = args.cmd {
        let wallet = ton::ServiceWallet::load(&t.mnemonic_source(), t.wallet, t.network).context("the service wallet's mnemonic")?;
        let params = Params {
            max_price_coefficient: cfg.router.max_price_coefficient,
            fee_bps: u16::try_from(cfg.billing.fee_bps).context("billing.fee_bps")?,
            ..Params::default()
        };
        let d = messages::deploy(&wallet.address(), &params)?;
        let testnet = t.network.is_testnet();
        let friendly = d.address.to_friendly(true, testnet);
        let reader = ton::RegistryReader::new(api.clone(), d.address);
        if let Ok(v) = reader.version().await {
            println!("registry {friendly} is already deployed (version {v}); nothing sent");
            return Ok(());
        }
        let body = messages::empty()?;
        let sent = owner::send(&api, &wallet, d.address, body, Some(d.state_init), owner::DEPLOY_VALUE).await?;
        println!("deploy message {} sent for registry {friendly} ({})", sent.hash, d.address.to_raw());
        if wait_for(&reader, None, wait).await?.is_some() {
            println!("deployed; set [attestation.registry] address = \"{friendly}\" and policy_source = \"chain\"");
        } else {
            println!("not visible yet: run `cocoon registry show --address {friendly}` later");
        }
        return Ok(());
    }
    let text = address_text.context("no registry: pass --address or set [attestation.registry] address")?;
    let address = ton::parse_address(&text, t.network)?.address;
    let reader = ton::RegistryReader::new(api.clone(), address);
    let current = reader.read().await.with_context(|| format!("reading the registry {text}"))?;
    let body = match args.cmd {
        RegistryCmd::Deploy => unreachable!("handled above"),
        RegistryCmd::Show => {
            println!("{}", serde_json::to_string_pretty(&current)?);
            return Ok(());
        }
        RegistryCmd::SetMeasurement { what, remove } => {
            let item = match what {
                Measurement::Tdx { mrtd, rtmr0, rtmr1, rtmr2, rtmr3 } => {
                    let l = |s: String| if s.eq_ignore_ascii_case("any") { "any".into() } else { s.to_ascii_lowercase() };
                    Item::Tdx(TdxImage { mrtd: l(mrtd), rtmr0: l(rtmr0), rtmr1: l(rtmr1), rtmr2: l(rtmr2), rtmr3: l(rtmr3) })
                }
                Measurement::Snp { measurement } => Item::Snp(measurement.to_ascii_lowercase()),
            };
            item_body(&item, remove)?
        }
        RegistryCmd::SetModel { model, sha256, remove } => item_body(&Item::Model { id: model, sha256: sha256.to_ascii_lowercase() }, remove)?,
        RegistryCmd::SetGpuValue { kind, value, index, remove } => {
            let item = match kind.as_str() {
                "driver" => Item::GpuDriver(value),
                "vbios" => Item::GpuVbios(value),
                _ => Item::GpuGolden { index: index.context("--index is required for a golden value")?, value: value.to_ascii_lowercase() },
            };
            item_body(&item, remove)?
        }
        RegistryCmd::SetEndpoint { role, url, tls_sha256, remove } => {
            let role = if role == "router" { Role::Router } else { Role::Gateway };
            item_body(&Item::Endpoint(Endpoint { role, url, tls_sha256: tls_sha256.to_ascii_lowercase() }), remove)?
        }
        RegistryCmd::SetPrices { prompt, cached_prompt, completion, reasoning, max_price_coefficient, fee_bps } => {
            let mut p = params_of(&current);
            let old = p.prices;
            p.prices = Prices {
                prompt: prompt.unwrap_or(old.prompt),
                cached_prompt: cached_prompt.unwrap_or(old.cached_prompt),
                completion: completion.unwrap_or(old.completion),
                reasoning: reasoning.unwrap_or(old.reasoning),
            };
            p.max_price_coefficient = max_price_coefficient.unwrap_or(p.max_price_coefficient);
            p.fee_bps = fee_bps.unwrap_or(p.fee_bps);
            messages::set_params(query_id(), &p)?
        }
        RegistryCmd::SetGpu { require, architectures, protection_modes } => {
            let mut p = params_of(&current);
            p.gpu_require = require.unwrap_or(p.gpu_require);
            if let Some(a) = architectures {
                p.gpu_architectures = a.into_iter().filter(|s| !s.is_empty()).collect();
            }
            if let Some(m) = protection_modes {
                p.gpu_protection_modes = m.into_iter().filter(|s| !s.is_empty()).collect();
            }
            messages::set_params(query_id(), &p)?
        }
    };
    let wallet = ton::ServiceWallet::load(&t.mnemonic_source(), t.wallet, t.network).context("the service wallet's mnemonic")?;
    anyhow::ensure!(
        current.owner == wallet.address().to_raw().to_ascii_lowercase(),
        "the registry's owner is {}, not this service wallet ({}): the contract would refuse the update (exit code 401)",
        current.owner,
        wallet.address().to_raw()
    );
    let sent = owner::send(&api, &wallet, address, body, None, owner::UPDATE_VALUE).await?;
    println!("update {} sent (registry version {})", sent.hash, current.version);
    match wait_for(&reader, Some(current.version), wait).await? {
        Some(v) => println!("registry is at version {v}"),
        None => println!("version unchanged so far: check with `cocoon registry show` (a refused update bounces its TON back)"),
    }
    Ok(())
}

fn item_body(item: &Item, remove: bool) -> anyhow::Result<messages::Cell> {
    Ok(if remove {
        messages::remove_item(query_id(), item.kind(), item.key()?)?
    } else {
        messages::add_item(query_id(), item)?
    })
}

fn params_of(p: &ton::RegistryPolicy) -> Params {
    Params {
        prices: p.prices,
        max_price_coefficient: p.max_price_coefficient,
        fee_bps: p.fee_bps,
        gpu_require: p.gpu.require,
        gpu_architectures: p.gpu.allowed_architectures.clone(),
        gpu_protection_modes: p.gpu.allowed_protection_modes.clone(),
    }
}

/// Polls the registry's version until it differs from `before` (`None`: until it can be
/// read at all), for up to `wait`.
async fn wait_for(reader: &ton::RegistryReader, before: Option<u32>, wait: Duration) -> anyhow::Result<Option<u32>> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Ok(v) = reader.version().await {
            if Some(v) != before {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}
