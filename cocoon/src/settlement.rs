//! TON settlement next to the gateway: the deposit watcher (credits clients) and the payout
//! sender (pays workers), both on the gateway's ledger, when `ton.enabled`.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Starts both loops; `None` when TON is off. Errors (bad mnemonic, bad address) stop start-up.
pub fn start(cfg: &Config, ledger: &billing::Ledger, stop: CancellationToken) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !cfg.ton.enabled {
        return Ok(None);
    }
    let (watcher, sender) = ton::from_config(&cfg.ton, ledger.clone())?;
    tracing::info!(
        network = %cfg.ton.network,
        service_wallet = %sender.wallet().address().to_friendly(true, cfg.ton.network.is_testnet()),
        watched = %watcher.wallet().to_friendly(true, cfg.ton.network.is_testnet()),
        "TON settlement on: watching deposits, sending payouts"
    );
    let (s1, s2) = (stop.clone(), stop);
    let deposits = tokio::spawn(watcher.run(async move { s1.cancelled().await }));
    let payouts = tokio::spawn(sender.run(async move { s2.cancelled().await }));
    Ok(Some(tokio::spawn(async move {
        let _ = deposits.await;
        let _ = payouts.await;
    })))
}
