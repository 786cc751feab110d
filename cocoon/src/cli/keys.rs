//! `cocoon keys`: API keys (stored as SHA-256 hashes in the gateway's database) and JWTs.
//!
//! The keys live in the database `billing.database_url` names (default
//! `sqlite:<data_dir>/ledger.db`), the one every gateway replica reads: a key created or
//! revoked here works or stops on every replica within `gateway.keys_poll_ms`. A `keys.json`
//! of an older version is imported first.

use anyhow::Context;
use clap::{Args, Subcommand};
use gateway::ratelimit::Limits;

use super::ConfigArg;

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    cmd: KeysCmd,
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
        /// A worker operator's key instead: reads this worker's earnings (account
        /// `worker:<id>`) and buys no inference.
        #[arg(long, conflicts_with = "account")]
        worker: Option<String>,
        /// Requests per minute (0 = unlimited); with --tpm overrides gateway.default_limits.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute (0 = unlimited).
        #[arg(long)]
        tpm: Option<u64>,
        /// Comma-separated model ids the key may use; others get 404 `model_not_found` and are
        /// left out of its `/v1/models` (default: every model).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Highest worker price coefficient (thousandths, 1000 = 1.0x) for the key's requests
        /// that set none themselves.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1000..=1_000_000))]
        max_price_coefficient: Option<u32>,
        /// Spend budget per UTC day, nanoTON: once its charges and in-flight holds reach it,
        /// requests get 402 `budget_exceeded` until midnight UTC.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        daily_budget_nanoton: Option<i64>,
        /// Spend budget per UTC calendar month, nanoTON (402 until the 1st, 00:00 UTC).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        monthly_budget_nanoton: Option<i64>,
    },
    /// List keys: id, name, account, limits, controls, created by, state.
    List {
        /// Only this account's keys.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a key by id (every replica refuses it within gateway.keys_poll_ms).
    Revoke { id: String },
    /// Rename a key.
    Rename { id: String, name: String },
    /// Issue a JWT for an account (needs [gateway.jwt]).
    Jwt {
        #[arg(long)]
        sub: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    if let KeysCmd::Jwt { sub } = &args.cmd {
        let jwt = cfg
            .gateway
            .jwt
            .as_ref()
            .context("no [gateway.jwt] section: set gateway.jwt.secret, issuer and audience")?;
        println!("{}", gateway::jwt::JwtAuth::new(jwt)?.issue(sub, None)?);
        return Ok(());
    }
    let db = cocoon::roles::open_database(&cfg).await?;
    let store = cocoon::roles::open_key_store(&cfg, db.clone()).await?;
    match args.cmd {
        KeysCmd::Create { name, account, worker, rpm, tpm, models, max_price_coefficient, daily_budget_nanoton, monthly_budget_nanoton } => {
            let account = match worker {
                Some(w) => format!("{}{w}", gateway::auth::WORKER_ACCOUNT_PREFIX),
                None if account.starts_with(gateway::auth::WORKER_ACCOUNT_PREFIX) => {
                    anyhow::bail!("client accounts cannot start with `worker:`; use --worker ID for an operator key")
                }
                None => account,
            };
            let limits = match (rpm, tpm) {
                (None, None) => None,
                (r, t) => Some(Limits {
                    requests_per_minute: r.unwrap_or(cfg.gateway.default_limits.requests_per_minute),
                    tokens_per_minute: t.unwrap_or(cfg.gateway.default_limits.tokens_per_minute),
                }),
            };
            let models: Option<Vec<String>> = models.map(|m| m.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
            if models.as_ref().is_some_and(Vec::is_empty) {
                anyhow::bail!("--models names no model");
            }
            let controls = gateway::keys::KeyControls { allowed_models: models, max_price_coefficient, daily_budget_nanoton, monthly_budget_nanoton };
            let new = store.create_with(&name, &account, limits, &controls, "cli").await?;
            eprintln!("created key {} ({name}, account {account}); it is shown once:", new.record.id);
            println!("{}", new.key);
        }
        KeysCmd::List { account } => {
            for k in store.list(account.as_deref()).await? {
                let mut controls = Vec::new();
                if let Some(m) = &k.controls.allowed_models {
                    controls.push(format!("models={}", m.join(",")));
                }
                if let Some(c) = k.controls.max_price_coefficient {
                    controls.push(format!("max_price_coefficient={c}"));
                }
                if let Some(b) = k.controls.daily_budget_nanoton {
                    controls.push(format!("daily_budget_nanoton={b}"));
                }
                if let Some(b) = k.controls.monthly_budget_nanoton {
                    controls.push(format!("monthly_budget_nanoton={b}"));
                }
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    k.account,
                    k.limits.map_or("default limits".to_string(), |l| format!(
                        "rpm={} tpm={}",
                        l.requests_per_minute, l.tokens_per_minute
                    )),
                    if controls.is_empty() { "all models".to_string() } else { controls.join(" ") },
                    k.created_by,
                    if k.revoked { "revoked" } else { "active" }
                );
            }
        }
        KeysCmd::Revoke { id } => {
            store.revoke(&id, None).await?;
            eprintln!("revoked {id}");
        }
        KeysCmd::Rename { id, name } => {
            let k = store.rename(&id, None, &name).await?;
            eprintln!("renamed {id} to {:?}", k.name);
        }
        KeysCmd::Jwt { .. } => {}
    }
    db.close().await;
    Ok(())
}
