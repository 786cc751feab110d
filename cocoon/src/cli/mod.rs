//! One module per `cocoon` subcommand: its clap arguments and its `run`. `main.rs` only parses
//! and dispatches, so adding a command touches one new file and two lines there.

pub mod accounts;
pub mod attest;
pub mod client_proxy;
pub mod config_check;
pub mod dev;
pub mod gateway;
pub mod keys;
pub mod ledger;
pub mod openapi;
pub mod payouts;
pub mod policy;
pub mod prices;
pub mod receipt;
pub mod registry;
pub mod ton;
pub mod verify;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use cocoon::config::{Config, Environment, Role};

#[derive(Args, Clone)]
pub struct ConfigArg {
    /// cocoon.toml; every key can also be set as COCOON__SECTION__KEY.
    #[arg(long, short, env = "COCOON_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// For commands that run no network role (keys, ledger, …): production unless set.
    pub fn load(&self) -> anyhow::Result<Config> {
        self.load_for(Role::Tool)
    }

    pub fn load_for(&self, role: Role) -> anyhow::Result<Config> {
        Ok(Config::from_env_and_file(self.config.as_deref(), role)?)
    }

    /// The ledger this configuration names; an error when billing is off.
    pub async fn ledger(&self) -> anyhow::Result<billing::Ledger> {
        let cfg = self.load()?;
        cocoon::roles::open_ledger(&cfg)
            .await?
            .context("billing is disabled (billing.enabled = false)")
    }
}

/// A gateway or worker started outside production says so, loudly, once.
pub fn announce_environment(cfg: &Config, what: &str) {
    if cfg.environment == Environment::Development {
        eprintln!(
            "WARNING: {what} runs with environment = \"development\": dev-only behaviour (the simulated TEE, \
             jobs in clear, disabled auth, the test engine) is allowed. Never serve real users like this."
        );
        tracing::warn!(role = what, "environment = development: dev-only behaviour allowed");
    }
}

pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
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

pub fn print_payout(p: &billing::Payout) {
    println!(
        "payout {}\t{}\t{} nanoTON\t{}\t{}\tseqno {}\ttx {}\tcomment {:?}",
        p.id,
        p.worker_name,
        p.amount,
        p.status.as_str(),
        p.address,
        p.seqno.map_or("-".to_string(), |s| s.to_string()),
        p.tx_hash.as_deref().unwrap_or("-"),
        ::ton::payout_comment(p.id),
    );
}
