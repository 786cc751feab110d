//! `cocoon`: one binary, one subcommand per role or chore. Each is a few lines over the crates.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cocoon::config::Config;
use gateway::keys::KeyStore;
use gateway::ratelimit::Limits;

#[derive(Parser)]
#[command(name = "cocoon", version, about = "Cocoon-rs: confidential OpenAI-compatible inference")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// cocoon.toml; every key can also be set as COCOON__SECTION__KEY.
    #[arg(long, short, env = "COCOON_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::from_env_and_file(self.config.as_deref())?)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole network on this machine: gateway + router + worker + engine.
    Dev {
        #[command(flatten)]
        config: ConfigArg,
        /// Gateway address (overrides gateway.listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the gateway and router; networked workers connect to `router.worker_listen`.
    Gateway {
        #[command(flatten)]
        config: ConfigArg,
        /// Same as `environment = "production"`: refuses the simulated TEE, unsealed jobs and
        /// other dev-only settings.
        #[arg(long)]
        production: bool,
    },
    /// TON payouts to workers.
    Payouts {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: PayoutsCmd,
    },
    /// Verify a network's workers yourself: fetch `/v1/attestation/report` with a random nonce
    /// and check every worker's evidence locally. Exits non-zero on any failure.
    Verify {
        /// e.g. http://127.0.0.1:8080/v1
        #[arg(long)]
        base_url: String,
        #[arg(long)]
        model: String,
        /// Attestation policy (TOML, as `[attestation.policy]`); strict defaults otherwise.
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
        /// Accept the INSECURE simulated TEE (to check a `cocoon dev` network).
        #[arg(long)]
        allow_simulated: bool,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Run a worker-agent that connects out to the router at `worker.router_url`, with its
    /// engine: vllm / llama-server / command run as a supervised child process, external is
    /// reached at `worker.engine_url`, builtin (and auto) is the in-process test engine.
    Worker {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage API keys (stored as SHA-256 hashes in the keys file).
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Client and worker accounts in the ledger.
    Accounts {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: AccountsCmd,
    },
    /// Per-model prices (nanoTON per 1M tokens).
    Prices {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: PricesCmd,
    },
    /// Ledger maintenance.
    Ledger {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: LedgerCmd,
    },
    /// Print the OpenAPI document generated from the gateway's handlers.
    Openapi,
    /// Validate the configuration and exit (non-zero with one line per mistake).
    ConfigCheck {
        #[command(flatten)]
        config: ConfigArg,
    },
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

#[derive(Subcommand)]
enum LedgerCmd {
    /// Verify every invariant; exits non-zero and lists the offending rows.
    Check,
}

async fn ledger(config: &ConfigArg) -> anyhow::Result<billing::Ledger> {
    let cfg = config.load()?;
    cocoon::roles::open_ledger(&cfg)
        .await?
        .context("billing is disabled (billing.enabled = false)")
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key and print it once.
    Create {
        #[arg(long, default_value = "default")]
        name: String,
        /// Account billed for the key's requests.
        #[arg(long, default_value = "default")]
        account: String,
        /// Requests per minute (0 = unlimited); with --tpm overrides gateway.default_limits.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute (0 = unlimited).
        #[arg(long)]
        tpm: Option<u64>,
    },
    List,
    Revoke { id: String },
    /// Issue a JWT for an account (needs [gateway.jwt]).
    Jwt {
        #[arg(long)]
        sub: String,
    },
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn banner(net: &cocoon::dev::DevNetwork, engine_desc: &str) {
    let model = net.router.models().first().map(|m| m.id.clone()).unwrap_or_default();
    if net.router.snapshot().iter().any(|w| w.insecure_simulated) {
        eprintln!(
            r#"
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! INSECURE SIMULATED TEE (dev only). The worker attests with a per-run software key:  !!
!! jobs are sealed end to end (HPKE), but NO HARDWARE protects them. Every answer says  !!
!! so in the header `x-cocoon-tee: simulated`. Never send real secrets to this network. !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
  check it yourself: cocoon verify --base-url {base} --model {model} --allow-simulated"#,
            base = net.base_url,
        );
    }
    println!(
        r#"
Cocoon-rs dev network is up.
  engine:   {engine_desc}
  base URL: {base}
  API key:  {key}
  model:    {model}

Try it (pip install openai):

python3 - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}", api_key="{key}")
stream = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Say hello"}}],
    stream=True,
    stream_options={{"include_usage": True}},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print("\nusage:", chunk.usage)
PY

or: curl {base}/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
      -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}'

Ctrl-C stops it (in-flight streams finish first)."#,
        base = net.base_url,
        key = net.api_key,
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Dev { config, listen } => {
            let mut cfg = config.load()?;
            if let Some(l) = listen {
                cfg.gateway.listen = l;
                cfg.validate()?;
            }
            init_tracing(&cfg.log);
            let net = cocoon::dev::DevNetwork::start(cfg).await?;
            banner(&net, &net.engine_description);
            wait_for_signal().await;
            eprintln!("stopping: draining in-flight requests");
            net.shutdown().await;
            Ok(())
        }
        Cmd::Verify { base_url, model, policy, allow_simulated, timeout_secs } => {
            let args = cocoon::verify::VerifyArgs {
                base_url,
                model,
                policy,
                allow_simulated,
                timeout: std::time::Duration::from_secs(timeout_secs),
            };
            let ok = cocoon::verify::run(args, &mut std::io::stdout()).await?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Gateway { config, production } => {
            let mut cfg = config.load()?;
            if production {
                cfg.environment = cocoon::config::Environment::Production;
                cfg.validate()?;
            }
            init_tracing(&cfg.log);
            let stop = tokio_util::sync::CancellationToken::new();
            let router = cocoon::routing::start_router(&cfg, stop.clone()).await?;
            let listener = cocoon::roles::start_worker_listener(&cfg, router.clone(), stop.clone())
                .await?
                .context("cocoon gateway needs router.worker_listen (where workers connect)")?;
            let gw = cocoon::roles::start_gateway(&cfg, router, stop.clone()).await?;
            let settlement = match &gw.meter {
                Some(m) => cocoon::settlement::start(&cfg, m.ledger(), stop.clone())?,
                None => None,
            };
            println!("gateway:  http://{}/v1", gw.addr);
            println!("workers:  wss://{}/v1/worker", listener.addr);
            println!("router certificate SHA-256 (set as worker.router_cert_sha256): {}", listener.cert_sha256);
            wait_for_signal().await;
            eprintln!("stopping: draining in-flight requests");
            stop.cancel();
            let _ = gw.task.await;
            let _ = listener.task.await;
            if let Some(t) = settlement {
                let _ = t.await;
            }
            Ok(())
        }
        Cmd::Worker { config } => {
            let cfg = config.load()?;
            init_tracing(&cfg.log);
            let (Some(url), Some(pin)) = (cfg.worker.router_url.clone(), cfg.worker.router_cert_sha256.clone()) else {
                anyhow::bail!("cocoon worker needs worker.router_url and worker.router_cert_sha256");
            };
            let engine_stop = tokio_util::sync::CancellationToken::new();
            let engine = cocoon::roles::start_engine(&cfg, engine_stop.clone()).await?;
            eprintln!("engine: {}", engine.description);
            let production = cfg.environment == cocoon::config::Environment::Production;
            let agent = engine.agent(cfg.worker.clone(), cfg.attestation.worker_tee(production)?)?;
            let stop = tokio_util::sync::CancellationToken::new();
            if let Some(listen) = &cfg.worker.metrics_listen {
                let (addr, _) = worker_agent::metrics::spawn(listen, agent.engine().metrics().clone(), cfg.worker.worker_id.clone(), stop.clone())
                    .await
                    .with_context(|| format!("binding worker.metrics_listen {listen}"))?;
                eprintln!("worker metrics: http://{addr}/metrics");
            }
            // One link per gateway replica; all share the agent (its slots and jobs).
            let runs: Vec<_> = std::iter::once(url)
                .chain(cfg.worker.router_urls.iter().cloned())
                .map(|url| {
                    let link = worker_agent::net::RouterLink { url, cert_sha256: pin.clone() };
                    tokio::spawn(worker_agent::net::run(agent.clone(), link, std::time::Duration::from_secs(600), stop.clone()))
                })
                .collect();
            eprintln!("worker {} serving engine {} ", cfg.worker.worker_id, engine.url);
            wait_for_signal().await;
            eprintln!("stopping: draining running jobs");
            stop.cancel();
            for run in runs {
                if let Ok(Err(e)) = run.await {
                    eprintln!("worker link: {e}");
                }
            }
            // Running jobs are drained; now the engine (its whole process group) goes.
            engine_stop.cancel();
            engine.stop().await;
            Ok(())
        }
        Cmd::Keys { config, cmd } => {
            let cfg = config.load()?;
            let store = KeyStore::open(cfg.keys_file())?;
            match cmd {
                KeysCmd::Create { name, account, rpm, tpm } => {
                    let limits = match (rpm, tpm) {
                        (None, None) => None,
                        (r, t) => Some(Limits {
                            requests_per_minute: r.unwrap_or(cfg.gateway.default_limits.requests_per_minute),
                            tokens_per_minute: t.unwrap_or(cfg.gateway.default_limits.tokens_per_minute),
                        }),
                    };
                    let new = store.create(&name, &account, limits)?;
                    eprintln!(
                        "created key {} ({name}, account {account}); it is shown once:",
                        new.record.id
                    );
                    println!("{}", new.key);
                }
                KeysCmd::List => {
                    for k in store.list() {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            k.id,
                            k.name,
                            k.account,
                            k.limits.map_or("default limits".to_string(), |l| format!(
                                "rpm={} tpm={}",
                                l.requests_per_minute, l.tokens_per_minute
                            )),
                            if k.revoked { "revoked" } else { "active" }
                        );
                    }
                }
                KeysCmd::Revoke { id } => {
                    store.revoke(&id)?;
                    eprintln!("revoked {id}");
                }
                KeysCmd::Jwt { sub } => {
                    let jwt = cfg
                        .gateway
                        .jwt
                        .as_ref()
                        .context("no [gateway.jwt] section: set gateway.jwt.secret, issuer and audience")?;
                    println!("{}", gateway::jwt::JwtAuth::new(jwt)?.issue(&sub, None)?);
                }
            }
            Ok(())
        }
        Cmd::Accounts { config, cmd } => {
            let l = ledger(&config).await?;
            match cmd {
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
        Cmd::Prices { config, cmd } => {
            let l = ledger(&config).await?;
            match cmd {
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
        Cmd::Ledger { config, cmd: LedgerCmd::Check } => {
            let l = ledger(&config).await?;
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
        Cmd::Payouts { config, cmd } => {
            let cfg = config.load()?;
            let l = cocoon::roles::open_ledger(&cfg)
                .await?
                .context("billing is disabled (billing.enabled = false)")?;
            match cmd {
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
                    let parsed = ton::parse_address(&address, cfg.ton.network)
                        .with_context(|| format!("payout address for {worker}"))?;
                    let acct = l.ensure_account(billing::AccountKind::Worker, &worker).await?;
                    let raw = parsed.address.to_raw();
                    l.set_payout_address(acct, &raw, parsed.bounceable_or_default()).await?;
                    println!("{worker} is paid at {raw} (bounceable: {})", parsed.bounceable_or_default());
                }
            }
            Ok(())
        }
        Cmd::Openapi => {
            print!("{}", gateway::openapi::spec_json());
            Ok(())
        }
        Cmd::ConfigCheck { config } => {
            config.load()?;
            println!("configuration is valid");
            Ok(())
        }
    }
}

fn print_payout(p: &billing::Payout) {
    println!(
        "payout {}\t{}\t{} nanoTON\t{}\t{}\tseqno {}\ttx {}\tcomment {:?}",
        p.id,
        p.worker_name,
        p.amount,
        p.status.as_str(),
        p.address,
        p.seqno.map_or("-".to_string(), |s| s.to_string()),
        p.tx_hash.as_deref().unwrap_or("-"),
        ton::payout_comment(p.id),
    );
}
