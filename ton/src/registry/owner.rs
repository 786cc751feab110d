//! Sending the owner's messages from the service wallet.

use tonlib_core::cell::Cell;

use crate::address::Address;
use crate::api::TonApi;
use crate::error::{Error, Result};
use crate::wallet::{Call, ServiceWallet, SignedMessage};

/// TON attached to an update: it pays the registry's gas (the dearest update measured
/// 15,110 gas in @ton/sandbox, `tests/ton/registry.test.js`: about 0.006 TON at 400
/// nanoTON per unit); the rest stays on the registry and pays its storage.
pub const UPDATE_VALUE: i64 = 50_000_000;
/// TON sent with the deploy: gas plus a reserve for storage fees (not sized against a
/// measured storage cost: top the registry up as its lists grow).
pub const DEPLOY_VALUE: i64 = 500_000_000;
/// How long a signed owner message stays valid (chain time).
const TTL_SECS: u32 = 120;

/// Signs `body` (and `state_init` when deploying) to `registry` with the wallet's current
/// seqno and broadcasts it. The wallet must be deployed. It is the same wallet that sends
/// payouts: if a payout batch takes the seqno first, this message is refused by the
/// wallet and nothing changes (the caller sees the version unchanged and sends again).
pub async fn send(
    api: &TonApi,
    wallet: &ServiceWallet,
    registry: Address,
    body: Cell,
    state_init: Option<Cell>,
    amount: i64,
) -> Result<SignedMessage> {
    let raw = wallet.address().to_raw();
    let info = api.wallet_information(&raw).await?;
    if info.status.as_deref() != Some("active") {
        return Err(Error::Registry(format!(
            "the owner wallet {raw} is not deployed (status {}): run `cocoon ton deploy-wallet` first",
            info.status.as_deref().unwrap_or("unknown")
        )));
    }
    let seqno = info
        .seqno
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or_default();
    let now = api.masterchain_info().await?.gen_utime.unwrap_or(0);
    let now = u32::try_from(now).map_err(|_| Error::BadResponse {
        endpoint: "/api/v3/masterchainInfo",
        detail: format!("gen_utime {now}"),
    })?;
    let call = Call {
        to: registry,
        amount,
        // Bounce: a refused update returns its TON to the owner.
        bounce: state_init.is_none(),
        body,
        state_init,
    };
    let signed = wallet.sign_calls(&[call], seqno, now.saturating_add(TTL_SECS))?;
    api.send_boc(&signed.boc).await?;
    Ok(signed)
}
