//! The one error type of the crate.

use crate::address::AddressError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the TON side can fail with. None of the messages contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The TON HTTP API could not be reached, timed out, or answered an error status.
    /// Transient: the watcher and the sender try again on their next round.
    #[error("TON API {endpoint}: {detail}")]
    Api {
        endpoint: &'static str,
        detail: String,
    },
    /// The TON HTTP API answered an error status with its `{"error": ...}` body (e.g.
    /// `walletInformation`'s 409 "not a wallet"). Transient unless the caller knows the
    /// status means something.
    #[error("TON API {endpoint}: HTTP {status}: {error}")]
    Status {
        endpoint: &'static str,
        status: u16,
        error: String,
    },
    /// The TON HTTP API answered something that does not have the documented shape
    /// (a transaction without hash, an lt that is not a number...). Nothing is decided
    /// from such an answer.
    #[error("TON API {endpoint}: unexpected response: {detail}")]
    BadResponse {
        endpoint: &'static str,
        detail: String,
    },
    #[error("ledger: {0}")]
    Ledger(#[from] billing::Error),
    /// Building or signing a wallet message failed.
    #[error("wallet message: {0}")]
    Message(String),
    /// The service wallet's mnemonic could not be loaded (the words are never quoted).
    #[error("service wallet mnemonic: {0}")]
    Mnemonic(String),
    #[error("TON config: {0}")]
    Config(String),
    /// A registry value that the contract would refuse, or a registry state read from
    /// the chain that does not decode (`registry`): nothing is applied from it.
    #[error("policy registry: {0}")]
    Registry(String),
    /// The service wallet cannot be deployed as asked (e.g. it holds too little).
    #[error("deploying the service wallet: {0}")]
    Deploy(String),
}
