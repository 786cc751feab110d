//! TON settlement for Cocoon-rs: clients top up by sending TON with their deposit code as
//! the comment; workers are paid in TON automatically. Pure Rust: `tonlib-core` for keys,
//! addresses, cells and wallet messages, a TON HTTP API in the toncenter v3 shape for the
//! chain (no C++ tonlib).
//!
//! # Public API (what `cocoon` wires)
//!
//! ```text
//! // config: [ton] in cocoon.toml
//! TonConfig { enabled, network: Mainnet | Testnet, api_url, api_key, api_timeout_secs,
//!             api_requests_per_sec, wallet: V5r1 | V4r2, mnemonic_env | mnemonic_file,
//!             deposits: DepositConfig { address, confirmations, poll_interval_secs,
//!                                       page_size, start_lt, cursor },
//!             payouts: PayoutConfig { threshold_nanoton, max_batch, message_ttl_secs,
//!                                     expiry_grace_secs, resend_after_secs,
//!                                     poll_interval_secs, fee_reserve_nanoton } }
//! TonConfig::validate(&self) -> Vec<String>       // every mistake, one line each
//! TonConfig::warnings(&self) -> Vec<String>       // logged by from_config (mainnet, no key)
//!
//! // wiring: validates, loads the mnemonic, watches the service wallet unless
//! // deposits.address names another
//! let (watcher, sender) = ton::from_config(&cfg, ledger.clone())?;
//! tokio::spawn(watcher.run(shutdown.clone()));     // or .poll_once() -> PollReport
//! tokio::spawn(sender.run(shutdown));              // or .run_once() -> RoundReport
//! sender.wallet().address().to_friendly(false, testnet)   // where clients send deposits
//!
//! // addresses (e.g. `cocoon accounts set-payout-address`)
//! parse_address(s, network) -> Result<ParsedAddress { address, bounceable, testnet_only }, AddressError>
//! Address::to_raw() / Address::to_friendly(bounceable, testnet)
//! ledger.set_payout_address(worker, &parsed.address.to_raw(), parsed.bounceable_or_default())
//!
//! // deploy the service wallet before taking deposits (`cocoon ton deploy-wallet`)
//! deploy_wallet(&api, &wallet, DeployOptions::default()) -> DeployOutcome
//!
//! // comments
//! payout_comment(id) / parse_payout_comment(s); comment_cell(text) / decode_comment(cell)
//! ```
//!
//! The ledger side (deposit codes, deposits, cursor, payout outbox and batches) is in
//! `billing` (`Ledger::deposit_code`, `record_deposit`, `list_payouts`, ...). How exactly-once
//! is kept: [`deposits`] and [`payouts`] module docs.

pub mod address;
pub mod api;
pub mod cell;
pub mod config;
pub mod deploy;
pub mod deposits;
pub mod error;
pub mod limiter;
pub mod payouts;
pub mod registry;
pub mod wallet;

pub use address::{parse_address, Address, AddressError, ParsedAddress};
pub use api::TonApi;
pub use cell::{comment_cell, decode_comment, CommentError};
pub use config::{DepositConfig, MnemonicSource, Network, PayoutConfig, TonConfig, WalletKind};
pub use deploy::{deploy_wallet, DeployOptions, DeployOutcome};
pub use deposits::{classify, Classified, DepositWatcher, PollReport};
pub use error::{Error, Result};
pub use limiter::RateLimiter;
pub use payouts::{parse_payout_comment, payout_comment, PayoutSender, RoundReport, Step};
pub use registry::{RegistryPolicy, RegistryReader};
pub use wallet::{Call, ServiceWallet, SignedMessage, Transfer};

/// The deposit watcher and the payout sender `config` describes: validated, the service
/// wallet's mnemonic loaded, deposits watched on the service wallet unless
/// `deposits.address` names another address.
pub fn from_config(
    config: &TonConfig,
    ledger: billing::Ledger,
) -> Result<(DepositWatcher, PayoutSender)> {
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(Error::Config(errors.join("; ")));
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    // One API (and so one rate limiter) for the watcher and the sender: toncenter counts
    // their calls together.
    let api = TonApi::new(
        config.api_url(),
        config.api_key.clone(),
        config.api_timeout(),
    )?
    .with_requests_per_sec(config.requests_per_sec());
    let wallet = ServiceWallet::load(&config.mnemonic_source(), config.wallet, config.network)?;
    let watched = match &config.deposits.address {
        Some(a) => parse_address(a, config.network)?.address,
        None => wallet.address(),
    };
    let watcher = DepositWatcher::new(
        api.clone(),
        ledger.clone(),
        watched,
        config.deposits.clone(),
    );
    let sender = PayoutSender::new(api, ledger, wallet, config.payouts.clone());
    Ok((watcher, sender))
}
