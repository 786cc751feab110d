//! `[ton]` settings: network, HTTP API, service wallet key, deposit watcher and payout
//! sender. Every field has a default; [`TonConfig::validate`] reports every mistake at once.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which TON network: decides the wallet id, the address flags accepted and the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Mainnet,
    #[default]
    Testnet,
}

impl Network {
    /// The network's global id (signature domain of wallet v5r1's wallet id).
    pub fn global_id(self) -> i32 {
        match self {
            Network::Mainnet => -239,
            Network::Testnet => -3,
        }
    }

    /// Wallet v5r1's default wallet id on this network for workchain 0, subwallet 0:
    /// `global_id XOR (1 << 31 | workchain << 23 | version 0 << 15 | subwallet 0)`.
    pub fn v5r1_wallet_id(self) -> i32 {
        // (1 << 31) as i32 is i32::MIN; the context bits are all zero for wc 0, v5r1, sub 0.
        self.global_id() ^ i32::MIN
    }

    pub fn is_testnet(self) -> bool {
        self == Network::Testnet
    }

    /// toncenter's endpoint for this network.
    pub fn default_api_url(self) -> &'static str {
        match self {
            Network::Mainnet => "https://toncenter.com",
            Network::Testnet => "https://testnet.toncenter.com",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
        })
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mainnet" => Ok(Network::Mainnet),
            "testnet" => Ok(Network::Testnet),
            other => Err(format!("unknown TON network {other:?} (mainnet | testnet)")),
        }
    }
}

/// Which wallet contract holds the service key's funds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalletKind {
    /// Up to 255 transfers per message.
    #[default]
    V5r1,
    /// Up to 4 transfers per message.
    V4r2,
}

impl WalletKind {
    /// Most transfers one external message may carry.
    pub fn max_transfers(self) -> usize {
        match self {
            WalletKind::V5r1 => 255,
            WalletKind::V4r2 => 4,
        }
    }
}

/// Where the service wallet's 24-word mnemonic comes from. It is never read from the
/// config file itself and never logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MnemonicSource {
    /// The named environment variable.
    Env(String),
    /// A file (a warning is logged when others can read it).
    File(PathBuf),
}

/// `[ton]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TonConfig {
    /// Run the deposit watcher and the payout sender.
    pub enabled: bool,
    pub network: Network,
    /// TON HTTP API (toncenter v3 shape); default toncenter for `network`.
    pub api_url: Option<String>,
    /// Sent as `X-API-Key`. Better set through the environment than in the file.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    pub api_timeout_secs: u64,
    /// Client-side pace of all API calls (deposit watcher and payout sender together);
    /// default [`DEFAULT_RPS_WITHOUT_KEY`] without `api_key`, [`DEFAULT_RPS_WITH_KEY`]
    /// with one. A 429 is retried after the limiter's delay.
    pub api_requests_per_sec: Option<f64>,
    pub wallet: WalletKind,
    /// Environment variable holding the mnemonic (default `COCOON_TON_MNEMONIC`)...
    pub mnemonic_env: Option<String>,
    /// ...or a file holding it. Set at most one of the two.
    pub mnemonic_file: Option<PathBuf>,
    pub deposits: DepositConfig,
    pub payouts: PayoutConfig,
}

/// `[ton.deposits]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DepositConfig {
    /// Address to watch; default the service wallet.
    pub address: Option<String>,
    /// Masterchain blocks that must follow a transaction's block before it is credited.
    pub confirmations: u32,
    pub poll_interval_secs: u64,
    /// Transactions per API page (toncenter allows up to 1000).
    pub page_size: u32,
    /// Where a watcher without a cursor starts (0: the wallet's whole history).
    pub start_lt: u64,
    /// Name of the persisted cursor (one per watched address).
    pub cursor: String,
}

/// `[ton.payouts]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayoutConfig {
    /// A worker balance at or above this becomes a payout (Cocoon pays out at 10 TON).
    pub threshold_nanoton: i64,
    /// Payouts per batch message (capped by the wallet's limit).
    pub max_batch: usize,
    /// `valid_until` = chain time + this.
    pub message_ttl_secs: u64,
    /// A batch is given up only when the chain's time is this far past its `valid_until`.
    pub expiry_grace_secs: u64,
    /// An unconfirmed batch is broadcast again after this long.
    pub resend_after_secs: u64,
    pub poll_interval_secs: u64,
    /// Kept on the wallet per transfer for fees; a batch the balance cannot cover waits.
    pub fee_reserve_nanoton: i64,
}

impl Default for TonConfig {
    fn default() -> Self {
        TonConfig {
            enabled: false,
            network: Network::Testnet,
            api_url: None,
            api_key: None,
            api_timeout_secs: 15,
            api_requests_per_sec: None,
            wallet: WalletKind::V5r1,
            mnemonic_env: None,
            mnemonic_file: None,
            deposits: DepositConfig::default(),
            payouts: PayoutConfig::default(),
        }
    }
}

impl Default for DepositConfig {
    fn default() -> Self {
        DepositConfig {
            address: None,
            confirmations: 3,
            poll_interval_secs: 10,
            page_size: 100,
            start_lt: 0,
            cursor: "deposits".into(),
        }
    }
}

impl Default for PayoutConfig {
    fn default() -> Self {
        PayoutConfig {
            threshold_nanoton: 10_000_000_000,
            max_batch: 100,
            message_ttl_secs: 120,
            expiry_grace_secs: 60,
            resend_after_secs: 20,
            poll_interval_secs: 15,
            fee_reserve_nanoton: 10_000_000,
        }
    }
}

/// toncenter's limit without an API key.
pub const DEFAULT_RPS_WITHOUT_KEY: f64 = 1.0;
/// toncenter's limit for a free API key (paid plans allow more: set
/// `api_requests_per_sec`).
pub const DEFAULT_RPS_WITH_KEY: f64 = 10.0;

/// The default environment variable of the mnemonic.
pub const DEFAULT_MNEMONIC_ENV: &str = "COCOON_TON_MNEMONIC";

impl TonConfig {
    pub fn api_url(&self) -> &str {
        self.api_url
            .as_deref()
            .unwrap_or_else(|| self.network.default_api_url())
    }

    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_secs)
    }

    /// The pace of API calls: `api_requests_per_sec`, else the default for having a key.
    pub fn requests_per_sec(&self) -> f64 {
        self.api_requests_per_sec
            .unwrap_or(if self.api_key.is_some() {
                DEFAULT_RPS_WITH_KEY
            } else {
                DEFAULT_RPS_WITHOUT_KEY
            })
    }

    /// What deserves a warning at start (not an error).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.enabled && self.network == Network::Mainnet && self.api_key.is_none() {
            w.push(format!(
                "ton: mainnet without ton.api_key: toncenter allows {DEFAULT_RPS_WITHOUT_KEY} request/s \
                 without a key, shared by the deposit watcher and the payout sender; deposits \
                 and payouts will be slow (set COCOON__TON__API_KEY)"
            ));
        }
        w
    }

    pub fn mnemonic_source(&self) -> MnemonicSource {
        match (&self.mnemonic_file, &self.mnemonic_env) {
            (Some(path), _) => MnemonicSource::File(path.clone()),
            (None, Some(var)) => MnemonicSource::Env(var.clone()),
            (None, None) => MnemonicSource::Env(DEFAULT_MNEMONIC_ENV.into()),
        }
    }

    /// Every mistake, one line each, naming the key (empty = valid).
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let url = self.api_url();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            errors.push(format!("ton.api_url must be an http(s) URL, got {url:?}"));
        }
        if self.api_timeout_secs == 0 {
            errors.push("ton.api_timeout_secs must be > 0".into());
        }
        if let Some(r) = self.api_requests_per_sec {
            if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
                errors.push(format!(
                    "ton.api_requests_per_sec must be within (0, 1000], got {r}"
                ));
            }
        }
        if self.mnemonic_env.is_some() && self.mnemonic_file.is_some() {
            errors.push("ton.mnemonic_env and ton.mnemonic_file: set at most one".into());
        }
        if let Some(a) = &self.deposits.address {
            if let Err(e) = crate::address::parse_address(a, self.network) {
                errors.push(format!("ton.deposits.address: {e}"));
            }
        }
        if !(1..=1000).contains(&self.deposits.page_size) {
            errors.push("ton.deposits.page_size must be within 1..=1000".into());
        }
        if self.deposits.poll_interval_secs == 0 {
            errors.push("ton.deposits.poll_interval_secs must be > 0".into());
        }
        if self.deposits.cursor.is_empty() {
            errors.push("ton.deposits.cursor must not be empty".into());
        }
        let p = &self.payouts;
        if p.threshold_nanoton <= 0 {
            errors.push("ton.payouts.threshold_nanoton must be > 0".into());
        }
        if p.max_batch == 0 || p.max_batch > self.wallet.max_transfers() {
            errors.push(format!(
                "ton.payouts.max_batch must be within 1..={} for wallet {:?}",
                self.wallet.max_transfers(),
                self.wallet
            ));
        }
        if p.message_ttl_secs < 10 || p.message_ttl_secs > 3600 {
            errors.push("ton.payouts.message_ttl_secs must be within 10..=3600".into());
        }
        if p.poll_interval_secs == 0 {
            errors.push("ton.payouts.poll_interval_secs must be > 0".into());
        }
        if p.fee_reserve_nanoton < 0 {
            errors.push("ton.payouts.fee_reserve_nanoton must be >= 0".into());
        }
        errors
    }
}

impl fmt::Debug for TonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonConfig")
            .field("enabled", &self.enabled)
            .field("network", &self.network)
            .field("api_url", &self.api_url())
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("requests_per_sec", &self.requests_per_sec())
            .field("wallet", &self.wallet)
            .field("mnemonic", &self.mnemonic_source())
            .field("deposits", &self.deposits)
            .field("payouts", &self.payouts)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wallet_ids() {
        assert_eq!(Network::Mainnet.v5r1_wallet_id(), 0x7FFF_FF11);
        assert_eq!(Network::Testnet.v5r1_wallet_id(), 0x7FFF_FFFD);
    }

    #[test]
    fn defaults_validate_and_mistakes_are_listed() {
        assert!(TonConfig::default().validate().is_empty());
        let bad: TonConfig = serde_json::from_value(serde_json::json!({
            "network": "mainnet",
            "api_url": "ftp://x",
            "mnemonic_env": "A",
            "mnemonic_file": "/b",
            "deposits": {"page_size": 0, "address": "EQ"},
            "payouts": {"threshold_nanoton": 0, "max_batch": 300}
        }))
        .unwrap();
        let errors = bad.validate();
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert_eq!(bad.requests_per_sec(), DEFAULT_RPS_WITHOUT_KEY);
        let keyed = TonConfig {
            api_key: Some("k".into()),
            ..TonConfig::default()
        };
        assert_eq!(keyed.requests_per_sec(), DEFAULT_RPS_WITH_KEY);
        for bad_rps in [0.0, -1.0, f64::NAN, 1e9] {
            let c = TonConfig {
                api_requests_per_sec: Some(bad_rps),
                ..TonConfig::default()
            };
            assert_eq!(c.validate().len(), 1, "{bad_rps}");
        }
        let mainnet = |key: Option<&str>| TonConfig {
            enabled: true,
            network: Network::Mainnet,
            api_key: key.map(str::to_owned),
            ..TonConfig::default()
        };
        assert_eq!(mainnet(None).warnings().len(), 1);
        assert!(mainnet(Some("k")).warnings().is_empty());
        assert!(TonConfig::default().warnings().is_empty());
        assert!(serde_json::from_value::<TonConfig>(serde_json::json!({"nope": 1})).is_err());
        let dbg = format!(
            "{:?}",
            TonConfig {
                api_key: Some("secret-key".into()),
                ..TonConfig::default()
            }
        );
        assert!(!dbg.contains("secret-key"));
    }
}
