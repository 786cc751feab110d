//! The service wallet: its key (from a 24-word mnemonic), its address, and signed
//! external messages carrying transfers. The key is never logged: `Debug` prints the
//! address only and errors never quote the mnemonic.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use num_bigint::BigUint;
use tonlib_core::cell::{ArcCell, Cell};
use tonlib_core::message::{CommonMsgInfo, InternalMessage, TonMessage, TransferMessage};
use tonlib_core::wallet::mnemonic::Mnemonic;
use tonlib_core::wallet::ton_wallet::TonWallet;
use tonlib_core::wallet::wallet_version::WalletVersion;
use tonlib_core::TonAddress;

use crate::address::Address;
use crate::cell::{comment_cell, to_boc_b64};
use crate::config::{MnemonicSource, Network, WalletKind};
use crate::error::{Error, Result};

/// v4r2's default subwallet id (the same on every network).
const V4R2_WALLET_ID: i32 = 698_983_191;

/// One outgoing transfer of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub to: Address,
    /// nanoTON, > 0.
    pub amount: i64,
    /// Bounce back if the destination fails; false for destinations not deployed yet.
    pub bounce: bool,
    pub comment: String,
}

/// A message to a contract: any body, and the contract's state init when it deploys it
/// (the registry's owner messages, `ton::registry::messages`).
#[derive(Clone, Debug)]
pub struct Call {
    pub to: Address,
    /// nanoTON, > 0 (it pays the contract's gas).
    pub amount: i64,
    pub bounce: bool,
    pub body: Cell,
    pub state_init: Option<Cell>,
}

/// A signed external message, ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMessage {
    /// Base64 BOC for `POST /api/v3/message`.
    pub boc: String,
    /// Cell hash of the message, lowercase hex: how it is found on chain.
    pub hash: String,
    pub seqno: u32,
    pub valid_until: u32,
}

/// The service wallet.
#[derive(Clone)]
pub struct ServiceWallet {
    inner: TonWallet,
    kind: WalletKind,
    network: Network,
}

impl fmt::Debug for ServiceWallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceWallet")
            .field("kind", &self.kind)
            .field("network", &self.network)
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl ServiceWallet {
    /// The wallet of `words` (24 words separated by any whitespace) on workchain 0 with the
    /// network's default wallet id.
    pub fn from_mnemonic(words: &str, kind: WalletKind, network: Network) -> Result<Self> {
        let words: Vec<&str> = words.split_whitespace().collect();
        // Only the count and position of a bad word are reported, never a word.
        let mnemonic = Mnemonic::new(words.clone(), &None).map_err(|e| {
            use tonlib_core::wallet::error::MnemonicError as M;
            Error::Mnemonic(match e {
                M::UnexpectedWordCount(n) => format!("expected 24 words, found {n}"),
                M::InvalidWord(w) => {
                    let at = words
                        .iter()
                        .position(|x| x.to_lowercase() == w)
                        .map_or(0, |i| i + 1);
                    format!("word #{at} is not in the word list")
                }
                _ => "not a valid TON mnemonic (checksum)".to_owned(),
            })
        })?;
        let key_pair = mnemonic
            .to_key_pair()
            .map_err(|_| Error::Mnemonic("key derivation failed".into()))?;
        let (version, wallet_id) = match kind {
            WalletKind::V5r1 => (WalletVersion::V5R1, network.v5r1_wallet_id()),
            WalletKind::V4r2 => (WalletVersion::V4R2, V4R2_WALLET_ID),
        };
        let inner = TonWallet::new_with_params(version, key_pair, 0, wallet_id)
            .map_err(|e| Error::Message(e.to_string()))?;
        Ok(ServiceWallet {
            inner,
            kind,
            network,
        })
    }

    /// Loads the mnemonic from the environment or a file.
    pub fn load(source: &MnemonicSource, kind: WalletKind, network: Network) -> Result<Self> {
        let words = match source {
            MnemonicSource::Env(var) => std::env::var(var)
                .map_err(|_| Error::Mnemonic(format!("environment variable {var} is not set")))?,
            MnemonicSource::File(path) => read_secret_file(path)?,
        };
        Self::from_mnemonic(&words, kind, network)
    }

    pub fn address(&self) -> Address {
        Address::from_ton(&self.inner.address)
    }

    pub fn kind(&self) -> WalletKind {
        self.kind
    }

    pub fn network(&self) -> Network {
        self.network
    }

    pub fn wallet_id(&self) -> i32 {
        self.inner.wallet_id
    }

    pub fn public_key(&self) -> &[u8] {
        &self.inner.key_pair.public_key
    }

    /// One external message with `transfers` (at most the wallet's limit), signed, for
    /// `seqno`, refused by the wallet after `valid_until` (Unix seconds). With
    /// `with_state_init` the message also deploys the wallet (its first message).
    /// Every transfer is sent with mode 3 (pay fees separately, ignore errors: wallet v5r1
    /// refuses external actions without the ignore-errors bit).
    pub fn sign_transfers(
        &self,
        transfers: &[Transfer],
        seqno: u32,
        valid_until: u32,
        with_state_init: bool,
    ) -> Result<SignedMessage> {
        if transfers.is_empty() || transfers.len() > self.kind.max_transfers() {
            return Err(Error::Message(format!(
                "{} transfers in one message (1..={} allowed)",
                transfers.len(),
                self.kind.max_transfers()
            )));
        }
        let msgs: Vec<ArcCell> = transfers
            .iter()
            .map(|t| internal_message(t).map(Arc::new))
            .collect::<Result<_>>()?;
        self.sign_messages(msgs, seqno, valid_until, with_state_init)
    }

    /// One external message carrying `calls` (mode 3, like transfers), signed for `seqno`.
    pub fn sign_calls(&self, calls: &[Call], seqno: u32, valid_until: u32) -> Result<SignedMessage> {
        if calls.is_empty() || calls.len() > self.kind.max_transfers() {
            return Err(Error::Message(format!(
                "{} messages in one external message (1..={} allowed)",
                calls.len(),
                self.kind.max_transfers()
            )));
        }
        let msgs: Vec<ArcCell> = calls
            .iter()
            .map(|c| {
                if c.amount <= 0 {
                    return Err(Error::Message(format!("message carrying {} nanoTON", c.amount)));
                }
                let mut m = TransferMessage::new(internal_info(c.to, c.amount, c.bounce)?, Arc::new(c.body.clone()));
                if let Some(init) = &c.state_init {
                    m.with_state_init(init.clone());
                }
                m.build().map(Arc::new).map_err(|e| Error::Message(e.to_string()))
            })
            .collect::<Result<_>>()?;
        self.sign_messages(msgs, seqno, valid_until, false)
    }

    /// The message that deploys the wallet: seqno 0, its state init, and one zero-value,
    /// non-bounceable transfer to itself with comment `comment` (the action list is not
    /// empty, and nothing leaves the wallet but fees). Refused by the contract once the
    /// wallet is deployed (seqno 0 is used).
    pub fn sign_deploy(&self, valid_until: u32, comment: &str) -> Result<SignedMessage> {
        let to_self = Transfer {
            to: self.address(),
            amount: 0,
            bounce: false,
            comment: comment.to_owned(),
        };
        let msg = build_internal(&to_self)?;
        self.sign_messages(vec![Arc::new(msg)], 0, valid_until, true)
    }

    fn sign_messages(
        &self,
        msgs: Vec<ArcCell>,
        seqno: u32,
        valid_until: u32,
        with_state_init: bool,
    ) -> Result<SignedMessage> {
        let ext = self
            .inner
            .create_external_msg(valid_until, seqno, with_state_init, msgs)
            .map_err(|e| Error::Message(e.to_string()))?;
        Ok(SignedMessage {
            boc: to_boc_b64(&ext)?,
            hash: hex::encode(ext.cell_hash().as_slice()),
            seqno,
            valid_until,
        })
    }
}

/// An internal message (not an external one: the inner message of a wallet transfer is
/// `int_msg_info`) from the wallet to `t.to` with `t.comment` as body.
fn internal_message(t: &Transfer) -> Result<Cell> {
    if t.amount <= 0 {
        return Err(Error::Message(format!("transfer of {} nanoTON", t.amount)));
    }
    build_internal(t)
}

/// [`internal_message`] without the positive-amount check (the deploy's self-transfer).
fn build_internal(t: &Transfer) -> Result<Cell> {
    let body = Arc::new(comment_cell(&t.comment)?);
    TransferMessage::new(internal_info(t.to, t.amount, t.bounce)?, body)
        .build()
        .map_err(|e| Error::Message(e.to_string()))
}

/// `int_msg_info` from the wallet (which fills in its own address) to `to`.
fn internal_info(to: Address, amount: i64, bounce: bool) -> Result<CommonMsgInfo> {
    if amount < 0 {
        return Err(Error::Message(format!("transfer of {amount} nanoTON")));
    }
    let dest = to.to_ton();
    if dest == TonAddress::NULL {
        return Err(Error::Message("transfer to the zero address".into()));
    }
    Ok(CommonMsgInfo::InternalMessage(InternalMessage {
        ihr_disabled: true,
        bounce,
        bounced: false,
        src: TonAddress::NULL,
        dest,
        value: BigUint::from(amount.unsigned_abs()),
        ihr_fee: BigUint::default(),
        fwd_fee: BigUint::default(),
        created_lt: 0,
        created_at: 0,
    }))
}

fn read_secret_file(path: &Path) -> Result<String> {
    let words = std::fs::read_to_string(path)
        .map_err(|e| Error::Mnemonic(format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the TON mnemonic file is readable by other users; chmod 600 it");
            }
        }
    }
    Ok(words)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonlib_core::tlb_types::tlb::TLB;
    use tonlib_core::wallet::versioned::v5::WalletExtMsgBodyV5;

    // tonlib-core's own v5 test mnemonic and the address it expects (mainnet, v5r1).
    const V5_WORDS: &str = "section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug";
    const V5_ADDRESS: &str = "UQDv2YSmlrlLH3hLNOVxC8FcQf4F9eGNs4vb2zKma4txo6i3";

    #[test]
    fn derives_the_known_address_and_hides_the_key() {
        let w = ServiceWallet::from_mnemonic(
            &V5_WORDS.replace(' ', "\n  "),
            WalletKind::V5r1,
            Network::Mainnet,
        )
        .unwrap();
        assert_eq!(w.address().to_friendly(false, false), V5_ADDRESS);
        assert_eq!(w.wallet_id(), 0x7FFF_FF11);
        let dbg = format!("{w:?}");
        assert!(
            !dbg.contains("secret") && !dbg.contains(&hex::encode(&w.inner.key_pair.secret_key))
        );

        let bad = V5_WORDS.replacen("garden", "gardenx", 1);
        let e = ServiceWallet::from_mnemonic(&bad, WalletKind::V5r1, Network::Mainnet).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service wallet mnemonic: word #2 is not in the word list"
        );
        let e = ServiceWallet::from_mnemonic("section garden", WalletKind::V5r1, Network::Mainnet)
            .unwrap_err();
        assert!(e.to_string().contains("expected 24 words, found 2"));
        let swapped = V5_WORDS.replacen("section garden", "garden section", 1);
        let e =
            ServiceWallet::from_mnemonic(&swapped, WalletKind::V5r1, Network::Mainnet).unwrap_err();
        assert!(!e.to_string().contains("garden"), "{e}");

        let e = ServiceWallet::load(
            &MnemonicSource::Env("TON_TEST_UNSET_VAR_X".into()),
            WalletKind::V5r1,
            Network::Mainnet,
        )
        .unwrap_err();
        assert!(e.to_string().contains("TON_TEST_UNSET_VAR_X"));
    }

    #[test]
    fn signs_a_batch() {
        let w = ServiceWallet::from_mnemonic(V5_WORDS, WalletKind::V5r1, Network::Testnet).unwrap();
        let to = Address {
            workchain: 0,
            hash: [9; 32],
        };
        let transfers: Vec<Transfer> = (0..3)
            .map(|i| Transfer {
                to,
                amount: 1_000 + i,
                bounce: i % 2 == 0,
                comment: format!("cocoon payout {i}"),
            })
            .collect();
        let m = w
            .sign_transfers(&transfers, 7, 1_700_000_000, false)
            .unwrap();
        assert_eq!(m.hash.len(), 64);
        let root = crate::cell::parse_boc(&m.boc).unwrap();
        assert_eq!(hex::encode(Cell::cell_hash(&root).as_slice()), m.hash);
        let msg = tonlib_core::tlb_types::block::message::Message::from_cell(&root).unwrap();
        let body = msg.body.value;
        let parsed = WalletExtMsgBodyV5::from_cell(&body).unwrap();
        assert_eq!(
            (parsed.wallet_id, parsed.msg_seqno, parsed.valid_until),
            (0x7FFF_FFFD, 7, 1_700_000_000)
        );
        assert_eq!(parsed.msgs_modes, vec![3, 3, 3]);
        // Built from the end of the out list: reversed order.
        let mut comments: Vec<String> = parsed
            .msgs
            .iter()
            .map(|c| {
                let t = TransferMessage::parse(c).unwrap();
                crate::cell::decode_comment(&t.body).unwrap().unwrap()
            })
            .collect();
        comments.sort();
        assert_eq!(
            comments,
            vec!["cocoon payout 0", "cocoon payout 1", "cocoon payout 2"]
        );
        assert!(w.sign_transfers(&[], 1, 1, false).is_err());
        let too_many = vec![transfers[0].clone(); 256];
        assert!(w.sign_transfers(&too_many, 1, 1, false).is_err());
        let zero = Transfer {
            amount: 0,
            ..transfers[0].clone()
        };
        assert!(w.sign_transfers(&[zero], 1, 1, false).is_err());
    }
}
