//! Deploying the service wallet. Until it is deployed the wallet has no code: deposits
//! into it are aborted with the compute phase skipped, non-bounceable ones are kept (and
//! credited, see [`crate::deposits`]) and bounceable ones bounce back to the client. A
//! network should deploy its wallet before it takes deposits; otherwise the first payout
//! batch deploys it (it carries the state init).
//!
//! The deploy is the wallet's first external message: seqno 0, its state init, and one
//! zero-value transfer to itself. If the payout sender's first batch (also seqno 0) lands
//! first, this message is refused and the wallet is deployed all the same; if this one
//! lands first, the sender sees its batch superseded and rebuilds it (see
//! [`crate::payouts`]): nothing is paid twice.

use std::time::Duration;

use crate::api::TonApi;
use crate::error::{Error, Result};
use crate::wallet::ServiceWallet;

/// Least balance deploy_wallet asks for: the deploy and its self-transfer cost about
/// 5.9 million nanoTON in fees in @ton/sandbox for wallet v5r1 (2 TON before, 1.994132799
/// after: tests/fixtures/sandbox, transactions 2 and 3); a margin for storage.
pub const MIN_DEPLOY_BALANCE: i64 = 10_000_000;
/// The comment of the deploy's self-transfer.
pub const DEPLOY_COMMENT: &str = "cocoon: deploy service wallet";

/// How long the deploy message is valid and how it is waited for.
#[derive(Clone, Copy, Debug)]
pub struct DeployOptions {
    /// `valid_until` = chain time + this.
    pub ttl_secs: u32,
    /// How long to wait for the wallet to show as active (0: do not wait).
    pub wait: Duration,
    /// Between two looks at the wallet while waiting.
    pub poll: Duration,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            ttl_secs: 120,
            wait: Duration::from_secs(180),
            poll: Duration::from_secs(5),
        }
    }
}

/// What [`deploy_wallet`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployOutcome {
    /// The wallet was already active; nothing was sent.
    AlreadyDeployed { seqno: u32 },
    /// The deploy message was broadcast and the wallet is now active.
    Deployed { seqno: u32, msg_hash: String },
    /// Broadcast, but not active yet after `wait` (or not waited for).
    Sent { msg_hash: String, valid_until: u32 },
}

fn seqno_of(info: &crate::api::WalletInformation) -> u32 {
    info.seqno
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or_default()
}

/// Deploys `wallet` unless it is active: needs at least [`MIN_DEPLOY_BALANCE`] on it
/// (send TON to its non-bounceable address first).
pub async fn deploy_wallet(
    api: &TonApi,
    wallet: &ServiceWallet,
    opts: DeployOptions,
) -> Result<DeployOutcome> {
    let raw = wallet.address().to_raw();
    let info = api.wallet_information(&raw).await?;
    if info.status.as_deref() == Some("active") {
        return Ok(DeployOutcome::AlreadyDeployed {
            seqno: seqno_of(&info),
        });
    }
    let balance = info
        .balance
        .as_deref()
        .and_then(|b| b.parse::<i128>().ok())
        .unwrap_or(0);
    if balance < i128::from(MIN_DEPLOY_BALANCE) {
        return Err(Error::Deploy(format!(
            "the wallet holds {balance} nanoTON; send it at least {MIN_DEPLOY_BALANCE} \
             (non-bounceable) first"
        )));
    }
    let now = api.masterchain_info().await?.gen_utime.unwrap_or(0);
    let now = u32::try_from(now).map_err(|_| Error::BadResponse {
        endpoint: "/api/v3/masterchainInfo",
        detail: format!("gen_utime {now}"),
    })?;
    let valid_until = now.saturating_add(opts.ttl_secs);
    let signed = wallet.sign_deploy(valid_until, DEPLOY_COMMENT)?;
    api.send_boc(&signed.boc).await?;
    let deadline = tokio::time::Instant::now() + opts.wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(opts.poll).await;
        let info = api.wallet_information(&raw).await?;
        if info.status.as_deref() == Some("active") {
            return Ok(DeployOutcome::Deployed {
                seqno: seqno_of(&info),
                msg_hash: signed.hash,
            });
        }
    }
    Ok(DeployOutcome::Sent {
        msg_hash: signed.hash,
        valid_until,
    })
}
