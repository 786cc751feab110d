//! TON settlement in the books: deposit codes, deposits seen on chain (credited exactly once
//! by `(tx hash, lt)`), the deposit watcher's cursor, worker payout addresses and the payout
//! outbox with its batches.
//!
//! The chain side (parsing transactions, signing wallet messages, talking to a TON HTTP
//! API) lives in the `ton` crate; this module only decides and records, each step in one
//! database transaction, so that the watcher and the sender can crash anywhere and resume.
//!
//! # Deposits
//! [`Ledger::record_deposit`] is the one entry point: it credits through
//! [`Ledger::credit`] with the idempotency key `ton:<tx hash>:<lt>` and then writes the
//! deposit row, so a crash between the two is repaired by the next attempt (the credit
//! answers `AlreadyApplied`, the row is written) and money is never credited twice.
//!
//! # Payouts
//! [`Ledger::create_payouts`] turns each worker balance at or above a threshold into a
//! `pending` payout and debits it from the worker (to the clearing account) in the same
//! database transaction. The sender then moves payouts through batches:
//!
//! ```text
//! pending --prepare_payout_batch--> sending --mark_payout_batch_sent--> sent
//!    ^                                 |                                  |
//!    |                                 +------ settle_payout_batch -------+
//!    |                                 |   Landed: delivered -> confirmed (tx hash)
//!    +---------------------------------+   others, Expired, Superseded -> pending
//! pending --cancel_payout--> cancelled (money back to the worker)
//! ```
//!
//! A batch row (the signed message, its seqno and `valid_until`) is written *before* the
//! message is sent, and at most one batch per wallet is open, so after a crash the sender
//! finds it and settles it from what the chain shows instead of sending anything new.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{now_ms, Ledger};
use crate::error::{Error, Result};
use crate::types::{AccountId, AccountKind, CreditOutcome, UnixMillis};

/// Characters of a deposit code (Crockford base32: no I, L, O, U).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of a deposit code: 40 random bits.
pub const DEPOSIT_CODE_LEN: usize = 8;
/// Most payouts in one batch: the wallet v5r1 action list holds at most 255 actions.
pub const MAX_BATCH_PAYOUTS: usize = 255;
/// Comments are stored for review up to this many characters.
const STORED_COMMENT_CHARS: usize = 256;

/// The idempotency key under which a deposit is credited.
pub fn deposit_key(tx_hash: &str, lt: u64) -> String {
    format!("ton:{tx_hash}:{lt}")
}

/// The deposit code a user meant, if `comment` has the shape of one: surrounding
/// whitespace, inner spaces and dashes are dropped, case is ignored, and the letters
/// Crockford base32 reads as digits (O → 0, I/L → 1) are mapped. `None` if what remains is
/// not exactly [`DEPOSIT_CODE_LEN`] code characters.
pub fn normalize_deposit_code(comment: &str) -> Option<String> {
    let mut code = String::with_capacity(DEPOSIT_CODE_LEN);
    for c in comment.trim().chars() {
        let c = match c.to_ascii_uppercase() {
            ' ' | '-' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) || code.len() >= DEPOSIT_CODE_LEN {
            return None;
        }
        code.push(c);
    }
    (code.len() == DEPOSIT_CODE_LEN).then_some(code)
}

fn random_code() -> String {
    // A v4 UUID's first six bytes are all random.
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u64 = 0;
    for b in &bytes[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..DEPOSIT_CODE_LEN)
        .rev()
        .map(|i| char::from(CODE_ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// Whether `s` is a raw TON address as the `ton` crate writes it: workchain 0 or -1, a
/// colon, 64 lowercase hex digits, not all zero (the zero address is nobody's wallet).
pub fn is_raw_address(s: &str) -> bool {
    let Some((wc, hash)) = s.split_once(':') else {
        return false;
    };
    matches!(wc, "0" | "-1")
        && hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hash.bytes().any(|b| b != b'0')
}

// ---------------------------------------------------------------------------------------
// Deposits

/// Why an incoming transfer was not credited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The message is a bounce (of one of our own payouts): not a top-up.
    Bounced,
    /// The transaction was aborted or a phase failed: the value did not stay with us.
    Failed,
    /// Nothing to credit.
    ZeroValue,
    /// The value does not parse or does not fit an i64 nanoTON.
    BadAmount,
    /// No body, or a body that is not a text comment (op ≠ 0).
    NotAComment,
    /// A text comment that is not valid UTF-8 or not a well-formed snake.
    BadComment,
    /// A text comment longer than any deposit code could be.
    CommentTooLong,
    /// A text comment that is not a deposit code, or a code no account has.
    UnknownCode,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Bounced => "bounced",
            RejectReason::Failed => "failed",
            RejectReason::ZeroValue => "zero_value",
            RejectReason::BadAmount => "bad_amount",
            RejectReason::NotAComment => "not_a_comment",
            RejectReason::BadComment => "bad_comment",
            RejectReason::CommentTooLong => "comment_too_long",
            RejectReason::UnknownCode => "unknown_code",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "bounced" => RejectReason::Bounced,
            "failed" => RejectReason::Failed,
            "zero_value" => RejectReason::ZeroValue,
            "bad_amount" => RejectReason::BadAmount,
            "not_a_comment" => RejectReason::NotAComment,
            "bad_comment" => RejectReason::BadComment,
            "comment_too_long" => RejectReason::CommentTooLong,
            "unknown_code" => RejectReason::UnknownCode,
            other => return Err(Error::Corrupt(format!("deposit reason {other:?}"))),
        })
    }

    /// Whether money arrived and stayed that an operator may still credit by hand
    /// ([`Ledger::resolve_deposit`]).
    pub fn resolvable(self) -> bool {
        matches!(
            self,
            RejectReason::NotAComment
                | RejectReason::BadComment
                | RejectReason::CommentTooLong
                | RejectReason::UnknownCode
        )
    }
}

/// The caller's verdict on a transfer it will not let be credited, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

/// What the row of a decided transfer records.
enum DepositRow<'a> {
    Rejected(&'a Rejection),
    Credited { account: AccountId, transaction: i64 },
}

/// An incoming transfer to the service wallet, as the watcher saw it on chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositInput {
    /// Transaction hash, as the API spells it (it is only compared, never decoded).
    pub tx_hash: String,
    /// Logical time of the transaction. Must fit an i64.
    pub lt: u64,
    /// Sender, raw form, if known.
    pub source: Option<String>,
    /// Value in nanoTON, decimal, as the chain reported it.
    pub value: String,
    /// The decoded text comment, if the body is one.
    pub comment: Option<String>,
    /// Transaction time (Unix seconds).
    pub utime: i64,
    /// Set when the caller already knows the transfer must not be credited (bounced,
    /// failed, not a comment...); otherwise the ledger decides from value and comment.
    pub rejection: Option<Rejection>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepositStatus {
    Credited,
    Rejected,
}

impl DepositStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DepositStatus::Credited => "credited",
            DepositStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "credited" => Ok(DepositStatus::Credited),
            "rejected" => Ok(DepositStatus::Rejected),
            other => Err(Error::Corrupt(format!("deposit status {other:?}"))),
        }
    }
}

/// A recorded deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    pub id: i64,
    pub tx_hash: String,
    pub lt: u64,
    pub source: Option<String>,
    pub value: String,
    /// `value` when it fits an i64.
    pub amount: Option<i64>,
    /// At most 256 characters of the comment.
    pub comment: Option<String>,
    pub utime: i64,
    pub status: DepositStatus,
    pub reason: Option<RejectReason>,
    pub detail: Option<String>,
    /// The credited client (credited deposits).
    pub account: Option<AccountId>,
    /// The ledger transaction of the credit.
    pub transaction: Option<i64>,
    pub created_at_ms: UnixMillis,
    /// When an operator credited it by hand.
    pub resolved_at_ms: Option<UnixMillis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DepositOutcome {
    /// Credited now.
    Credited(Deposit),
    /// This `(tx hash, lt)` was decided before (credited or rejected); nothing changed.
    Duplicate(Deposit),
    /// Recorded for review now; nothing credited.
    Rejected(Deposit),
}

impl DepositOutcome {
    pub fn deposit(&self) -> &Deposit {
        match self {
            DepositOutcome::Credited(d)
            | DepositOutcome::Duplicate(d)
            | DepositOutcome::Rejected(d) => d,
        }
    }
}

/// Which deposits [`Ledger::list_deposits`] returns, newest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct DepositFilter {
    pub status: Option<DepositStatus>,
    pub account: Option<AccountId>,
    /// Only ids below this (paging).
    pub before_id: Option<i64>,
    /// At most this many (0 = 100).
    pub limit: u32,
}

/// Where a watcher resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TonCursor {
    pub lt: u64,
    pub tx_hash: String,
    pub updated_at_ms: UnixMillis,
}

// ---------------------------------------------------------------------------------------
// Payouts

/// A worker's payout address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutAddress {
    /// Raw form `wc:hex`.
    pub address: String,
    /// Whether the owner gave a bounceable form. Messages to a destination that is not
    /// deployed go non-bounceable whatever this says.
    pub bounceable: bool,
    pub updated_at_ms: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    /// In the outbox, in no open batch.
    Pending,
    /// In a batch whose message was signed and saved but is not known to be broadcast.
    Sending,
    /// In a batch whose message was broadcast; not seen on chain yet.
    Sent,
    /// Its transfer is on chain (`tx_hash`).
    Confirmed,
    /// Cancelled before it was sent; the amount went back to the worker.
    Cancelled,
}

impl PayoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutStatus::Pending => "pending",
            PayoutStatus::Sending => "sending",
            PayoutStatus::Sent => "sent",
            PayoutStatus::Confirmed => "confirmed",
            PayoutStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => PayoutStatus::Pending,
            "sending" => PayoutStatus::Sending,
            "sent" => PayoutStatus::Sent,
            "confirmed" => PayoutStatus::Confirmed,
            "cancelled" => PayoutStatus::Cancelled,
            other => return Err(Error::Corrupt(format!("payout status {other:?}"))),
        })
    }
}

/// One payout of the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub id: i64,
    pub worker: AccountId,
    /// The worker account's external id.
    pub worker_name: String,
    /// Destination, raw form.
    pub address: String,
    pub bounceable: bool,
    pub amount: i64,
    pub status: PayoutStatus,
    /// The batch it is in (sending, sent) or landed with (confirmed).
    pub batch_id: Option<i64>,
    /// That batch's wallet seqno.
    pub seqno: Option<u32>,
    /// Hash of the wallet transaction that sent it (confirmed).
    pub tx_hash: Option<String>,
    /// The ledger transaction that debited the worker.
    pub transaction: i64,
    pub created_at_ms: UnixMillis,
    pub sent_at_ms: Option<UnixMillis>,
    pub confirmed_at_ms: Option<UnixMillis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Signed and saved; maybe broadcast (a crash may have come between).
    Prepared,
    /// Broadcast at least once.
    Sent,
    /// Landed on chain.
    Confirmed,
    /// Its `valid_until` passed on chain with the seqno unused: it can never land.
    Expired,
    /// Its seqno was used by another message: it can never land.
    Superseded,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Prepared => "prepared",
            BatchStatus::Sent => "sent",
            BatchStatus::Confirmed => "confirmed",
            BatchStatus::Expired => "expired",
            BatchStatus::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "prepared" => BatchStatus::Prepared,
            "sent" => BatchStatus::Sent,
            "confirmed" => BatchStatus::Confirmed,
            "expired" => BatchStatus::Expired,
            "superseded" => BatchStatus::Superseded,
            other => return Err(Error::Corrupt(format!("batch status {other:?}"))),
        })
    }

    /// Prepared or sent: may still land.
    pub fn is_open(self) -> bool {
        matches!(self, BatchStatus::Prepared | BatchStatus::Sent)
    }
}

/// A payout in a batch, with the bounce flag its message used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    pub payout_id: i64,
    pub bounce: bool,
}

/// One signed wallet message carrying payouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutBatch {
    pub id: i64,
    /// The service wallet, raw form.
    pub wallet: String,
    pub seqno: u32,
    /// Unix seconds after which the wallet refuses the message.
    pub valid_until: u32,
    /// The wallet's last transaction lt before the message was built.
    pub prev_lt: u64,
    /// The signed external message, base64 BOC.
    pub boc: String,
    /// Its cell hash, hex.
    pub msg_hash: String,
    pub status: BatchStatus,
    /// The wallet transaction that executed it (confirmed).
    pub tx_hash: Option<String>,
    pub tx_lt: Option<u64>,
    pub created_at_ms: UnixMillis,
    /// Last broadcast.
    pub sent_at_ms: Option<UnixMillis>,
    pub closed_at_ms: Option<UnixMillis>,
    pub items: Vec<BatchItem>,
}

/// What [`Ledger::prepare_payout_batch`] records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBatch {
    pub wallet: String,
    pub seqno: u32,
    pub valid_until: u32,
    pub prev_lt: u64,
    pub boc: String,
    pub msg_hash: String,
    pub items: Vec<BatchItem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Recorded; its payouts are `sending`. Broadcast it now.
    Prepared(PayoutBatch),
    /// The wallet already has an open batch (this one): settle it first. Nothing written.
    Busy(PayoutBatch),
    /// A payout is no longer pending (cancelled, or taken by another sender). Nothing
    /// written; pick payouts again.
    Stale,
}

/// What the chain shows about an open batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchResult {
    /// The message landed in wallet transaction `tx_hash`/`tx_lt`; `delivered` are the
    /// payouts whose transfer is among its outgoing messages. The others (an action that
    /// failed) can no longer be sent by this message and go back to pending.
    Landed {
        tx_hash: String,
        tx_lt: u64,
        delivered: Vec<i64>,
    },
    /// `valid_until` has passed on chain and the seqno is unused.
    Expired,
    /// Another message used the seqno.
    Superseded,
}

/// Which payouts [`Ledger::list_payouts`] returns, newest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct PayoutFilter {
    pub status: Option<PayoutStatus>,
    pub worker: Option<AccountId>,
    pub before_id: Option<i64>,
    /// At most this many (0 = 100).
    pub limit: u32,
}

/// A broken invariant of the TON tables, found by [`Ledger::check_ton`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum TonViolation {
    /// A payout whose ledger transaction (or reversal) is not exactly worker −amount,
    /// clearing +amount (or the opposite).
    PayoutEntriesMismatch { payout: i64, detail: String },
    /// A worker whose entries sum below zero (paid out more than it earned).
    NegativeWorkerBalance { account: AccountId, balance: i64 },
    /// A payout whose status disagrees with its batch's.
    PayoutBatchMismatch { payout: i64, detail: String },
    /// A credited deposit whose ledger transaction does not credit its account its amount.
    DepositEntriesMismatch { deposit: i64, detail: String },
}

impl std::fmt::Display for TonViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TonViolation::PayoutEntriesMismatch { payout, detail } => {
                write!(f, "payout {payout}: {detail}")
            }
            TonViolation::NegativeWorkerBalance { account, balance } => {
                write!(f, "worker account {account}: balance {balance} < 0")
            }
            TonViolation::PayoutBatchMismatch { payout, detail } => {
                write!(f, "payout {payout}: {detail}")
            }
            TonViolation::DepositEntriesMismatch { deposit, detail } => {
                write!(f, "deposit {deposit}: {detail}")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Row readers

const DEPOSIT_COLUMNS: &str = "id, tx_hash, lt, source, value, amount, comment, utime, status, \
     reason, detail, account_id, transaction_id, created_at, resolved_at";

const PAYOUT_COLUMNS: &str = "p.id, p.account_id, a.external_id, p.address, p.bounceable, \
     p.amount, p.status, p.batch_id, b.seqno, p.tx_hash, p.transaction_id, p.created_at, \
     p.sent_at, p.confirmed_at";
const PAYOUT_FROM: &str = "FROM payouts p JOIN accounts a ON a.id = p.account_id \
     LEFT JOIN payout_batches b ON b.id = p.batch_id";

const BATCH_COLUMNS: &str = "id, wallet, seqno, valid_until, prev_lt, boc, msg_hash, status, \
     tx_hash, tx_lt, created_at, sent_at, closed_at";

fn get_u64(row: &AnyRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{col} = {v}")))
}

fn get_u32(row: &AnyRow, col: &str) -> Result<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{col} = {v}")))
}

fn get_flag(row: &AnyRow, col: &str) -> Result<bool> {
    match row.try_get::<i64, _>(col)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Error::Corrupt(format!("{col} = {v}"))),
    }
}

fn lt_i64(lt: u64) -> Result<i64> {
    i64::try_from(lt).map_err(|_| Error::Overflow("lt exceeds i64"))
}

fn deposit_from_row(row: &AnyRow) -> Result<Deposit> {
    Ok(Deposit {
        id: row.try_get("id")?,
        tx_hash: row.try_get("tx_hash")?,
        lt: get_u64(row, "lt")?,
        source: row.try_get("source")?,
        value: row.try_get("value")?,
        amount: row.try_get("amount")?,
        comment: row.try_get("comment")?,
        utime: row.try_get("utime")?,
        status: DepositStatus::parse(row.try_get("status")?)?,
        reason: row
            .try_get::<Option<String>, _>("reason")?
            .map(|r| RejectReason::parse(&r))
            .transpose()?,
        detail: row.try_get("detail")?,
        account: row.try_get::<Option<i64>, _>("account_id")?.map(AccountId),
        transaction: row.try_get("transaction_id")?,
        created_at_ms: row.try_get("created_at")?,
        resolved_at_ms: row.try_get("resolved_at")?,
    })
}

fn payout_from_row(row: &AnyRow) -> Result<Payout> {
    let seqno = row
        .try_get::<Option<i64>, _>("seqno")?
        .map(|s| u32::try_from(s).map_err(|_| Error::Corrupt(format!("seqno = {s}"))))
        .transpose()?;
    Ok(Payout {
        id: row.try_get("id")?,
        worker: AccountId(row.try_get("account_id")?),
        worker_name: row.try_get("external_id")?,
        address: row.try_get("address")?,
        bounceable: get_flag(row, "bounceable")?,
        amount: row.try_get("amount")?,
        status: PayoutStatus::parse(row.try_get("status")?)?,
        batch_id: row.try_get("batch_id")?,
        seqno,
        tx_hash: row.try_get("tx_hash")?,
        transaction: row.try_get("transaction_id")?,
        created_at_ms: row.try_get("created_at")?,
        sent_at_ms: row.try_get("sent_at")?,
        confirmed_at_ms: row.try_get("confirmed_at")?,
    })
}

fn batch_from_row(row: &AnyRow, items: Vec<BatchItem>) -> Result<PayoutBatch> {
    Ok(PayoutBatch {
        id: row.try_get("id")?,
        wallet: row.try_get("wallet")?,
        seqno: get_u32(row, "seqno")?,
        valid_until: get_u32(row, "valid_until")?,
        prev_lt: get_u64(row, "prev_lt")?,
        boc: row.try_get("boc")?,
        msg_hash: row.try_get("msg_hash")?,
        status: BatchStatus::parse(row.try_get("status")?)?,
        tx_hash: row.try_get("tx_hash")?,
        tx_lt: row
            .try_get::<Option<i64>, _>("tx_lt")?
            .map(|v| u64::try_from(v).map_err(|_| Error::Corrupt(format!("tx_lt = {v}"))))
            .transpose()?,
        created_at_ms: row.try_get("created_at")?,
        sent_at_ms: row.try_get("sent_at")?,
        closed_at_ms: row.try_get("closed_at")?,
        items,
    })
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

fn limit_of(limit: u32) -> i64 {
    i64::from(if limit == 0 { 100 } else { limit })
}

/// Locks (Postgres) and reads the clearing account's cached balance and the kind of
/// `account`, lowest id first like every other writer.
async fn lock_clearing_and(
    ledger: &Ledger,
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
) -> Result<(i64, AccountKind)> {
    let rows = sqlx::query(ledger.pick(
        "SELECT id, kind, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
        "SELECT id, kind, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id",
    ))
    .bind(account.0)
    .bind(ledger.clearing_account.0)
    .fetch_all(&mut **tx)
    .await?;
    let mut clearing = None;
    let mut kind = None;
    for row in &rows {
        let id = AccountId(row.try_get("id")?);
        if id == ledger.clearing_account {
            clearing = Some(row.try_get::<i64, _>("balance")?);
        } else {
            kind = Some(AccountKind::parse(row.try_get("kind")?)?);
        }
    }
    let clearing = clearing.ok_or_else(|| Error::Corrupt("clearing account missing".into()))?;
    let kind = kind.ok_or(Error::UnknownAccount(account))?;
    Ok((clearing, kind))
}

/// A ledger transaction moving `amount` from `from` to `to`, one of them the clearing
/// account, whose cached balance becomes `new_clearing`.
struct Movement<'a> {
    kind: &'a str,
    memo: &'a str,
    from: AccountId,
    to: AccountId,
    amount: i64,
    new_clearing: i64,
}

/// Writes `m`; returns the transaction id.
async fn write_transfer(
    ledger: &Ledger,
    tx: &mut Transaction<'static, Any>,
    m: Movement<'_>,
) -> Result<i64> {
    let Movement {
        kind,
        memo,
        from,
        to,
        amount,
        new_clearing,
    } = m;
    let tx_id: i64 = sqlx::query(
        "INSERT INTO transactions (kind, memo, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(kind)
    .bind(memo)
    .bind(now_ms())
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    sqlx::query(
        "INSERT INTO entries (transaction_id, account_id, amount) VALUES ($1, $2, $3), ($1, $4, $5)",
    )
    .bind(tx_id)
    .bind(from.0)
    .bind(-amount)
    .bind(to.0)
    .bind(amount)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
        .bind(new_clearing)
        .bind(ledger.clearing_account.0)
        .execute(&mut **tx)
        .await?;
    Ok(tx_id)
}

async fn worker_balance(tx: &mut Transaction<'static, Any>, worker: AccountId) -> Result<i64> {
    Ok(sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM entries WHERE account_id = $1",
    )
    .bind(worker.0)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?)
}

async fn batch_items(
    conn: impl sqlx::Executor<'_, Database = Any>,
    batch: i64,
) -> Result<Vec<BatchItem>> {
    sqlx::query(
        "SELECT payout_id, bounce FROM payout_batch_items WHERE batch_id = $1 ORDER BY payout_id",
    )
    .bind(batch)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(BatchItem {
            payout_id: r.try_get("payout_id")?,
            bounce: get_flag(r, "bounce")?,
        })
    })
    .collect()
}

impl Ledger {
    // -----------------------------------------------------------------------------------
    // Deposit codes

    /// The deposit code of client account `client`, created on first use. Codes are 8
    /// Crockford base32 characters (40 random bits), unique, and never change.
    pub async fn deposit_code(&self, client: AccountId) -> Result<String> {
        if let Some(code) = self.existing_code(client).await? {
            return Ok(code);
        }
        match self.account(client).await? {
            None => return Err(Error::UnknownAccount(client)),
            Some(a) if a.kind != AccountKind::Client => {
                return Err(Error::WrongAccountKind {
                    id: client,
                    actual: a.kind,
                    expected: AccountKind::Client,
                })
            }
            Some(_) => {}
        }
        // A collision with another account's code (or a concurrent call for this one)
        // inserts nothing; try again with a fresh code.
        for _ in 0..8 {
            let inserted = self
                .retrying("deposit_code", || async {
                    Ok(sqlx::query(
                        "INSERT INTO deposit_codes (account_id, code, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING RETURNING code",
                    )
                    .bind(client.0)
                    .bind(random_code())
                    .bind(now_ms())
                    .fetch_optional(&self.write)
                    .await?)
                })
                .await?;
            if let Some(row) = inserted {
                return Ok(row.try_get(0)?);
            }
            if let Some(code) = self.existing_code(client).await? {
                return Ok(code);
            }
        }
        Err(Error::Corrupt("could not find a free deposit code".into()))
    }

    async fn existing_code(&self, client: AccountId) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT code FROM deposit_codes WHERE account_id = $1")
                .bind(client.0)
                .fetch_optional(&self.write)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?,
        )
    }

    /// The client account whose deposit code `comment` is (normalised as by
    /// [`normalize_deposit_code`]), if any.
    pub async fn deposit_code_owner(&self, comment: &str) -> Result<Option<AccountId>> {
        let Some(code) = normalize_deposit_code(comment) else {
            return Ok(None);
        };
        Ok(
            sqlx::query("SELECT account_id FROM deposit_codes WHERE code = $1")
                .bind(code)
                .fetch_optional(&self.read)
                .await?
                .map(|r| r.try_get(0).map(AccountId))
                .transpose()?,
        )
    }

    // -----------------------------------------------------------------------------------
    // Deposits

    /// Decides an incoming transfer once: credits the client whose deposit code is the
    /// comment, or records why not. Keyed by `(tx_hash, lt)`: the same transfer again
    /// changes nothing and answers [`DepositOutcome::Duplicate`] with what was decided.
    ///
    /// Not credited (recorded as rejected): a `rejection` given by the caller, a zero or
    /// unparsable value, no comment, a comment that is not a known deposit code.
    pub async fn record_deposit(&self, input: &DepositInput) -> Result<DepositOutcome> {
        if let Some(d) = self.find_deposit(&input.tx_hash, input.lt).await? {
            return Ok(DepositOutcome::Duplicate(d));
        }
        let amount: Option<i64> = input
            .value
            .trim()
            .parse::<u128>()
            .ok()
            .and_then(|v| i64::try_from(v).ok());
        let verdict = match (&input.rejection, amount) {
            (Some(r), _) => Err(r.clone()),
            (None, None) => Err(Rejection {
                reason: RejectReason::BadAmount,
                detail: format!(
                    "value {:?} is not an i64 nanoTON amount",
                    truncate_chars(&input.value, 40)
                ),
            }),
            (None, Some(0)) => Err(Rejection {
                reason: RejectReason::ZeroValue,
                detail: "zero value".into(),
            }),
            (None, Some(amount)) => match &input.comment {
                None => Err(Rejection {
                    reason: RejectReason::NotAComment,
                    detail: "no text comment".into(),
                }),
                Some(comment) => match self.deposit_code_owner(comment).await? {
                    Some(account) => Ok((account, amount)),
                    None => Err(Rejection {
                        reason: RejectReason::UnknownCode,
                        detail: if normalize_deposit_code(comment).is_some() {
                            "no account has this deposit code".into()
                        } else {
                            "comment is not a deposit code".into()
                        },
                    }),
                },
            },
        };
        let comment = input
            .comment
            .as_deref()
            .map(|c| truncate_chars(c, STORED_COMMENT_CHARS));
        match verdict {
            Err(rejection) => {
                let inserted = self
                    .insert_deposit_row(input, amount, comment.as_deref(), DepositRow::Rejected(&rejection))
                    .await?;
                let d = self.stored_deposit(&input.tx_hash, input.lt).await?;
                Ok(if inserted {
                    tracing::info!(tx_hash = %input.tx_hash, lt = input.lt, reason = rejection.reason.as_str(), "TON deposit rejected for review");
                    DepositOutcome::Rejected(d)
                } else {
                    DepositOutcome::Duplicate(d)
                })
            }
            Ok((account, amount)) => {
                let memo = format!("TON deposit {} lt {}", input.tx_hash, input.lt);
                let credit = self
                    .credit(
                        account,
                        amount,
                        &deposit_key(&input.tx_hash, input.lt),
                        &memo,
                    )
                    .await?;
                let tx_id = match credit {
                    CreditOutcome::Credited(t) | CreditOutcome::AlreadyApplied(t) => t,
                };
                // Either racing call may write the row; both write the same one.
                self.insert_deposit_row(
                    input,
                    Some(amount),
                    comment.as_deref(),
                    DepositRow::Credited { account, transaction: tx_id },
                )
                .await?;
                let d = self.stored_deposit(&input.tx_hash, input.lt).await?;
                // Money moved only if this call's credit did; a credit applied by an
                // earlier, interrupted attempt (or a racing watcher) is a duplicate.
                Ok(match credit {
                    CreditOutcome::Credited(_) => {
                        tracing::info!(tx_hash = %input.tx_hash, lt = input.lt, account = %account, amount, "TON deposit credited");
                        DepositOutcome::Credited(d)
                    }
                    _ => DepositOutcome::Duplicate(d),
                })
            }
        }
    }

    /// Writes the one row of a transfer's decision; false if a row for (tx hash, lt) was
    /// already there.
    async fn insert_deposit_row(
        &self,
        input: &DepositInput,
        amount: Option<i64>,
        comment: Option<&str>,
        row: DepositRow<'_>,
    ) -> Result<bool> {
        let lt = lt_i64(input.lt)?;
        let (status, reason, detail, account, transaction) = match row {
            DepositRow::Rejected(r) => (
                "rejected",
                Some(r.reason.as_str()),
                Some(truncate_chars(&r.detail, 512)),
                None,
                None,
            ),
            DepositRow::Credited { account, transaction } => {
                ("credited", None, None, Some(account.0), Some(transaction))
            }
        };
        let inserted = self
            .retrying("record_deposit", || async {
                Ok(sqlx::query(
                    "INSERT INTO ton_deposits (tx_hash, lt, source, value, amount, comment, \
                       utime, status, reason, detail, account_id, transaction_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (tx_hash, lt) DO NOTHING RETURNING id",
                )
                .bind(&input.tx_hash)
                .bind(lt)
                .bind(input.source.as_deref())
                .bind(truncate_chars(&input.value, 80))
                .bind(amount)
                .bind(comment)
                .bind(input.utime)
                .bind(status)
                .bind(reason)
                .bind(detail.as_deref())
                .bind(account)
                .bind(transaction)
                .bind(now_ms())
                .fetch_optional(&self.write)
                .await?)
            })
            .await?;
        Ok(inserted.is_some())
    }

    async fn stored_deposit(&self, tx_hash: &str, lt: u64) -> Result<Deposit> {
        // From the writer: on SQLite a reader could lag the commit just made.
        sqlx::query(&format!(
            "SELECT {DEPOSIT_COLUMNS} FROM ton_deposits WHERE tx_hash = $1 AND lt = $2"
        ))
        .bind(tx_hash)
        .bind(lt_i64(lt)?)
        .fetch_optional(&self.write)
        .await?
        .map(|r| deposit_from_row(&r))
        .transpose()?
        .ok_or_else(|| Error::Corrupt(format!("deposit {tx_hash}:{lt} vanished")))
    }

    /// The deposit recorded for `(tx_hash, lt)`, if any.
    pub async fn find_deposit(&self, tx_hash: &str, lt: u64) -> Result<Option<Deposit>> {
        sqlx::query(&format!(
            "SELECT {DEPOSIT_COLUMNS} FROM ton_deposits WHERE tx_hash = $1 AND lt = $2"
        ))
        .bind(tx_hash)
        .bind(lt_i64(lt)?)
        .fetch_optional(&self.write)
        .await?
        .map(|r| deposit_from_row(&r))
        .transpose()
    }

    /// Recorded deposits, newest first.
    pub async fn list_deposits(&self, filter: DepositFilter) -> Result<Vec<Deposit>> {
        sqlx::query(&format!(
            "SELECT {DEPOSIT_COLUMNS} FROM ton_deposits \
             WHERE ($1 = '' OR status = $1) AND ($2 = 0 OR account_id = $2) AND id < $3 \
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(filter.status.map(DepositStatus::as_str).unwrap_or(""))
        .bind(filter.account.map(|a| a.0).unwrap_or(0))
        .bind(filter.before_id.unwrap_or(i64::MAX))
        .bind(limit_of(filter.limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(deposit_from_row)
        .collect()
    }

    /// Credits rejected deposit `id` to `client` by hand (an operator matched it), with
    /// the same idempotency key the watcher would have used. Only deposits whose money
    /// stayed with us can be resolved ([`RejectReason::resolvable`]). Resolving a
    /// credited deposit to the same client changes nothing.
    pub async fn resolve_deposit(&self, id: i64, client: AccountId) -> Result<Deposit> {
        let d = sqlx::query(&format!(
            "SELECT {DEPOSIT_COLUMNS} FROM ton_deposits WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.write)
        .await?
        .map(|r| deposit_from_row(&r))
        .transpose()?
        .ok_or_else(|| Error::InvalidInput(format!("no deposit {id}")))?;
        if d.status == DepositStatus::Credited {
            return if d.account == Some(client) {
                Ok(d)
            } else {
                Err(Error::InvalidInput(format!(
                    "deposit {id} was already credited to another account"
                )))
            };
        }
        let reason = d
            .reason
            .ok_or_else(|| Error::Corrupt(format!("rejected deposit {id} without reason")))?;
        let amount = match d.amount {
            Some(a) if a > 0 && reason.resolvable() => a,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "deposit {id} ({}) cannot be credited",
                    reason.as_str()
                )))
            }
        };
        let memo = format!("TON deposit {} lt {} (resolved by hand)", d.tx_hash, d.lt);
        let tx_id = match self
            .credit(client, amount, &deposit_key(&d.tx_hash, d.lt), &memo)
            .await?
        {
            CreditOutcome::Credited(t) | CreditOutcome::AlreadyApplied(t) => t,
        };
        self.retrying("resolve_deposit", || async {
            sqlx::query(
                "UPDATE ton_deposits SET status = 'credited', reason = NULL, account_id = $2, \
                   transaction_id = $3, resolved_at = $4 WHERE id = $1 AND status = 'rejected'",
            )
            .bind(id)
            .bind(client.0)
            .bind(tx_id)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
            Ok(())
        })
        .await?;
        self.stored_deposit(&d.tx_hash, d.lt).await
    }

    // -----------------------------------------------------------------------------------
    // Watcher cursor

    /// The cursor named `name`, if it was ever set.
    pub async fn ton_cursor(&self, name: &str) -> Result<Option<TonCursor>> {
        sqlx::query("SELECT lt, tx_hash, updated_at FROM ton_cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.write)
            .await?
            .map(|r| {
                Ok(TonCursor {
                    lt: get_u64(&r, "lt")?,
                    tx_hash: r.try_get("tx_hash")?,
                    updated_at_ms: r.try_get("updated_at")?,
                })
            })
            .transpose()
    }

    /// Moves cursor `name` to `(lt, tx_hash)` if that is past where it is; returns whether
    /// it moved. A cursor never goes back, so a late or repeated call is harmless.
    pub async fn advance_ton_cursor(&self, name: &str, lt: u64, tx_hash: &str) -> Result<bool> {
        let lt = lt_i64(lt)?;
        self.retrying("advance_ton_cursor", || async {
            let done = sqlx::query(
                "INSERT INTO ton_cursors (name, lt, tx_hash, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET lt = excluded.lt, tx_hash = excluded.tx_hash, \
                   updated_at = excluded.updated_at WHERE ton_cursors.lt < excluded.lt",
            )
            .bind(name)
            .bind(lt)
            .bind(tx_hash)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    // -----------------------------------------------------------------------------------
    // Payout addresses

    /// Sets worker `worker`'s payout address: raw form (`0:…` or `-1:…`, lowercase hex, as
    /// `ton::Address::to_raw` writes it), and whether the owner gave a bounceable form.
    /// Payouts already created keep the address they were created with.
    pub async fn set_payout_address(
        &self,
        worker: AccountId,
        address: &str,
        bounceable: bool,
    ) -> Result<()> {
        if !is_raw_address(address) {
            return Err(Error::InvalidInput(format!(
                "payout address {:?} is not a raw address (wc:64 lowercase hex)",
                truncate_chars(address, 80)
            )));
        }
        match self.account(worker).await? {
            None => return Err(Error::UnknownAccount(worker)),
            Some(a) if a.kind != AccountKind::Worker => {
                return Err(Error::WrongAccountKind {
                    id: worker,
                    actual: a.kind,
                    expected: AccountKind::Worker,
                })
            }
            Some(_) => {}
        }
        self.retrying("set_payout_address", || async {
            sqlx::query(
                "INSERT INTO payout_addresses (account_id, address, bounceable, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE SET \
                   address = excluded.address, bounceable = excluded.bounceable, \
                   updated_at = excluded.updated_at",
            )
            .bind(worker.0)
            .bind(address)
            .bind(i64::from(bounceable))
            .bind(now_ms())
            .execute(&self.write)
            .await?;
            Ok(())
        })
        .await
    }

    /// Worker `worker`'s payout address, if set.
    pub async fn payout_address(&self, worker: AccountId) -> Result<Option<PayoutAddress>> {
        sqlx::query(
            "SELECT address, bounceable, updated_at FROM payout_addresses WHERE account_id = $1",
        )
        .bind(worker.0)
        .fetch_optional(&self.read)
        .await?
        .map(|r| {
            Ok(PayoutAddress {
                address: r.try_get("address")?,
                bounceable: get_flag(&r, "bounceable")?,
                updated_at_ms: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    // -----------------------------------------------------------------------------------
    // Payout outbox

    /// Turns every worker balance of at least `threshold` nanoTON into a pending payout of
    /// the whole balance to the worker's payout address (workers without one are skipped),
    /// debiting the worker in the same database transaction. Returns the new payouts.
    /// Safe to run at any time and concurrently: a worker's balance is re-read under its
    /// row lock, so it is never paid out twice.
    pub async fn create_payouts(&self, threshold: i64) -> Result<Vec<Payout>> {
        if threshold <= 0 {
            return Err(Error::InvalidAmount(threshold));
        }
        let candidates = sqlx::query(
            "SELECT a.id FROM accounts a JOIN payout_addresses p ON p.account_id = a.id \
             WHERE a.kind = 'worker' AND (SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) \
               FROM entries e WHERE e.account_id = a.id) >= $1 ORDER BY a.id",
        )
        .bind(threshold)
        .fetch_all(&self.read)
        .await?;
        let mut created = Vec::new();
        for row in candidates {
            let worker = AccountId(row.try_get(0)?);
            if let Some(id) = self
                .retrying("create_payout", || {
                    self.create_payout_once(worker, threshold)
                })
                .await?
            {
                created.push(self.stored_payout(id).await?);
            }
        }
        Ok(created)
    }

    async fn create_payout_once(&self, worker: AccountId, threshold: i64) -> Result<Option<i64>> {
        let mut tx = self.begin().await?;
        let (clearing, kind) = lock_clearing_and(self, &mut tx, worker).await?;
        if kind != AccountKind::Worker {
            return Err(Error::WrongAccountKind {
                id: worker,
                actual: kind,
                expected: AccountKind::Worker,
            });
        }
        let balance = worker_balance(&mut tx, worker).await?;
        let address =
            sqlx::query("SELECT address, bounceable FROM payout_addresses WHERE account_id = $1")
                .bind(worker.0)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(address) = address.filter(|_| balance >= threshold) else {
            tx.rollback().await?;
            return Ok(None);
        };
        let new_clearing = clearing
            .checked_add(balance)
            .ok_or(Error::Overflow("clearing balance"))?;
        let dest: String = address.try_get("address")?;
        let bounceable: i64 = address.try_get("bounceable")?;
        let memo = format!("TON payout to {dest}");
        let tx_id = write_transfer(
            self,
            &mut tx,
            Movement {
                kind: "payout",
                memo: &memo,
                from: worker,
                to: self.clearing_account,
                amount: balance,
                new_clearing,
            },
        )
        .await?;
        let id: i64 = sqlx::query(
            "INSERT INTO payouts (account_id, address, bounceable, amount, status, transaction_id, \
               created_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6) RETURNING id",
        )
        .bind(worker.0)
        .bind(&dest)
        .bind(bounceable)
        .bind(balance)
        .bind(tx_id)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        tx.commit().await?;
        tracing::info!(payout = id, worker = %worker, amount = balance, "payout created");
        Ok(Some(id))
    }

    /// Cancels pending payout `id`: the amount goes back to the worker. Payouts in a batch
    /// cannot be cancelled (their message may still land); cancelling a cancelled payout
    /// changes nothing.
    pub async fn cancel_payout(&self, id: i64) -> Result<Payout> {
        self.retrying("cancel_payout", || self.cancel_payout_once(id))
            .await?;
        self.stored_payout(id).await
    }

    async fn cancel_payout_once(&self, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(self.pick(
            "SELECT account_id, amount, status FROM payouts WHERE id = $1 FOR UPDATE",
            "SELECT account_id, amount, status FROM payouts WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::InvalidInput(format!("no payout {id}")))?;
        let status = PayoutStatus::parse(row.try_get("status")?)?;
        match status {
            PayoutStatus::Pending => {}
            PayoutStatus::Cancelled => {
                tx.rollback().await?;
                return Ok(());
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "payout {id} is {}: only pending payouts can be cancelled",
                    other.as_str()
                )))
            }
        }
        let worker = AccountId(row.try_get("account_id")?);
        let amount: i64 = row.try_get("amount")?;
        let (clearing, _) = lock_clearing_and(self, &mut tx, worker).await?;
        let new_clearing = clearing
            .checked_sub(amount)
            .ok_or(Error::Overflow("clearing balance"))?;
        let tx_id = write_transfer(
            self,
            &mut tx,
            Movement {
                kind: "payout_reversal",
                memo: &format!("cancelled payout {id}"),
                from: self.clearing_account,
                to: worker,
                amount,
                new_clearing,
            },
        )
        .await?;
        sqlx::query("UPDATE payouts SET status = 'cancelled', reversal_id = $2 WHERE id = $1")
            .bind(id)
            .bind(tx_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(payout = id, worker = %worker, amount, "payout cancelled");
        Ok(())
    }

    async fn stored_payout(&self, id: i64) -> Result<Payout> {
        self.payout_on(&self.write, id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("payout {id} vanished")))
    }

    async fn payout_on(&self, pool: &sqlx::AnyPool, id: i64) -> Result<Option<Payout>> {
        sqlx::query(&format!(
            "SELECT {PAYOUT_COLUMNS} {PAYOUT_FROM} WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| payout_from_row(&r))
        .transpose()
    }

    /// Payout `id`, if any.
    pub async fn payout(&self, id: i64) -> Result<Option<Payout>> {
        self.payout_on(&self.read, id).await
    }

    /// Pending payouts, oldest first, at most `limit` (0 = 100).
    pub async fn pending_payouts(&self, limit: u32) -> Result<Vec<Payout>> {
        sqlx::query(&format!(
            "SELECT {PAYOUT_COLUMNS} {PAYOUT_FROM} WHERE p.status = 'pending' ORDER BY p.id LIMIT $1"
        ))
        .bind(limit_of(limit))
        .fetch_all(&self.write)
        .await?
        .iter()
        .map(payout_from_row)
        .collect()
    }

    /// Payouts, newest first (`cocoon payouts list`).
    pub async fn list_payouts(&self, filter: PayoutFilter) -> Result<Vec<Payout>> {
        sqlx::query(&format!(
            "SELECT {PAYOUT_COLUMNS} {PAYOUT_FROM} \
             WHERE ($1 = '' OR p.status = $1) AND ($2 = 0 OR p.account_id = $2) AND p.id < $3 \
             ORDER BY p.id DESC LIMIT $4"
        ))
        .bind(filter.status.map(PayoutStatus::as_str).unwrap_or(""))
        .bind(filter.worker.map(|a| a.0).unwrap_or(0))
        .bind(filter.before_id.unwrap_or(i64::MAX))
        .bind(limit_of(filter.limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(payout_from_row)
        .collect()
    }

    /// Worker `worker`'s payouts, newest first, at most `limit` (0 = 100): the worker's
    /// earnings endpoint.
    pub async fn payouts_for_worker(&self, worker: AccountId, limit: u32) -> Result<Vec<Payout>> {
        self.list_payouts(PayoutFilter {
            worker: Some(worker),
            limit,
            ..PayoutFilter::default()
        })
        .await
    }

    // -----------------------------------------------------------------------------------
    // Batches

    /// Records a signed batch message before it is sent: the batch row and its items, and
    /// its payouts become `sending`. Refused (nothing written) while `wallet` has another
    /// open batch ([`PrepareOutcome::Busy`]) or when a payout is no longer pending
    /// ([`PrepareOutcome::Stale`]).
    pub async fn prepare_payout_batch(&self, batch: &NewBatch) -> Result<PrepareOutcome> {
        if batch.items.is_empty() || batch.items.len() > MAX_BATCH_PAYOUTS {
            return Err(Error::InvalidInput(format!(
                "a batch carries 1..={MAX_BATCH_PAYOUTS} payouts, not {}",
                batch.items.len()
            )));
        }
        let mut ids: Vec<i64> = batch.items.iter().map(|i| i.payout_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != batch.items.len() {
            return Err(Error::InvalidInput(
                "a payout appears twice in the batch".into(),
            ));
        }
        let outcome = self
            .retrying("prepare_payout_batch", || self.prepare_once(batch, &ids))
            .await;
        match outcome {
            // Another sender inserted an open batch between our check and insert.
            Err(Error::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                match self.open_payout_batch(&batch.wallet).await? {
                    Some(open) => Ok(PrepareOutcome::Busy(open)),
                    None => Err(Error::Database(sqlx::Error::Database(e))),
                }
            }
            other => other,
        }
    }

    async fn prepare_once(&self, batch: &NewBatch, ids: &[i64]) -> Result<PrepareOutcome> {
        let mut tx = self.begin().await?;
        let open = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM payout_batches WHERE wallet = $1 \
             AND status IN ('prepared', 'sent')"
        ))
        .bind(&batch.wallet)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = open {
            let id: i64 = row.try_get("id")?;
            let items = batch_items(&mut *tx, id).await?;
            let open = batch_from_row(&row, items)?;
            tx.rollback().await?;
            return Ok(PrepareOutcome::Busy(open));
        }
        // Lock the payouts (Postgres) and check that every one is still pending.
        let mut pending = 0usize;
        for id in ids {
            let status: Option<String> = sqlx::query(self.pick(
                "SELECT status FROM payouts WHERE id = $1 FOR UPDATE",
                "SELECT status FROM payouts WHERE id = $1",
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            pending += usize::from(status.as_deref() == Some("pending"));
        }
        if pending != ids.len() {
            tx.rollback().await?;
            return Ok(PrepareOutcome::Stale);
        }
        let now = now_ms();
        let batch_id: i64 = sqlx::query(
            "INSERT INTO payout_batches (wallet, seqno, valid_until, prev_lt, boc, msg_hash, status, \
               created_at) VALUES ($1, $2, $3, $4, $5, $6, 'prepared', $7) RETURNING id",
        )
        .bind(&batch.wallet)
        .bind(i64::from(batch.seqno))
        .bind(i64::from(batch.valid_until))
        .bind(lt_i64(batch.prev_lt)?)
        .bind(&batch.boc)
        .bind(&batch.msg_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        for item in &batch.items {
            sqlx::query(
                "INSERT INTO payout_batch_items (batch_id, payout_id, bounce) VALUES ($1, $2, $3)",
            )
            .bind(batch_id)
            .bind(item.payout_id)
            .bind(i64::from(item.bounce))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE payouts SET status = 'sending', batch_id = $2 WHERE id = $1")
                .bind(item.payout_id)
                .bind(batch_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let stored = self
            .payout_batch(batch_id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("batch {batch_id} vanished")))?;
        Ok(PrepareOutcome::Prepared(stored))
    }

    /// Batch `id` with its items, if any.
    pub async fn payout_batch(&self, id: i64) -> Result<Option<PayoutBatch>> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM payout_batches WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.write)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let items = batch_items(&self.write, id).await?;
                Ok(Some(batch_from_row(&row, items)?))
            }
        }
    }

    /// The open (prepared or sent) batch of `wallet`, if any: what a sender must settle
    /// before it may build a new one.
    pub async fn open_payout_batch(&self, wallet: &str) -> Result<Option<PayoutBatch>> {
        let id = sqlx::query(
            "SELECT id FROM payout_batches WHERE wallet = $1 AND status IN ('prepared', 'sent')",
        )
        .bind(wallet)
        .fetch_optional(&self.write)
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?;
        match id {
            Some(id) => self.payout_batch(id).await,
            None => Ok(None),
        }
    }

    /// Notes that batch `id` was broadcast (again): `sent`, its payouts `sent`. A closed
    /// batch is left as it is.
    pub async fn mark_payout_batch_sent(&self, id: i64) -> Result<PayoutBatch> {
        self.retrying("mark_payout_batch_sent", || async {
            let mut tx = self.begin().await?;
            let now = now_ms();
            let done = sqlx::query(
                "UPDATE payout_batches SET status = 'sent', sent_at = $2 \
                 WHERE id = $1 AND status IN ('prepared', 'sent')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                sqlx::query(
                    "UPDATE payouts SET status = 'sent', sent_at = $2 \
                     WHERE batch_id = $1 AND status IN ('sending', 'sent')",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
        self.payout_batch(id)
            .await?
            .ok_or_else(|| Error::InvalidInput(format!("no payout batch {id}")))
    }

    /// Closes open batch `id` with what the chain shows (see [`BatchResult`]): delivered
    /// payouts become `confirmed` with the transaction hash, every other payout of the
    /// batch goes back to `pending` for a new batch. Settling a closed batch changes
    /// nothing and returns it as it is.
    pub async fn settle_payout_batch(&self, id: i64, result: &BatchResult) -> Result<PayoutBatch> {
        self.retrying("settle_payout_batch", || self.settle_once(id, result))
            .await?;
        self.payout_batch(id)
            .await?
            .ok_or_else(|| Error::InvalidInput(format!("no payout batch {id}")))
    }

    async fn settle_once(&self, id: i64, result: &BatchResult) -> Result<()> {
        let mut tx = self.begin().await?;
        let status: String = sqlx::query(self.pick(
            "SELECT status FROM payout_batches WHERE id = $1 FOR UPDATE",
            "SELECT status FROM payout_batches WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::InvalidInput(format!("no payout batch {id}")))?
        .try_get(0)?;
        if !BatchStatus::parse(&status)?.is_open() {
            tx.rollback().await?;
            return Ok(());
        }
        let items = batch_items(&mut *tx, id).await?;
        let now = now_ms();
        let (new_status, delivered, tx_hash, tx_lt): (
            BatchStatus,
            &[i64],
            Option<&str>,
            Option<i64>,
        ) = match result {
            BatchResult::Landed {
                tx_hash,
                tx_lt,
                delivered,
            } => (
                BatchStatus::Confirmed,
                delivered.as_slice(),
                Some(tx_hash.as_str()),
                Some(lt_i64(*tx_lt)?),
            ),
            BatchResult::Expired => (BatchStatus::Expired, &[], None, None),
            BatchResult::Superseded => (BatchStatus::Superseded, &[], None, None),
        };
        if let Some(stray) = delivered
            .iter()
            .find(|d| !items.iter().any(|i| i.payout_id == **d))
        {
            return Err(Error::InvalidInput(format!(
                "payout {stray} is not in batch {id}"
            )));
        }
        sqlx::query(
            "UPDATE payout_batches SET status = $2, tx_hash = $3, tx_lt = $4, closed_at = $5 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(new_status.as_str())
        .bind(tx_hash)
        .bind(tx_lt)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for item in &items {
            if delivered.contains(&item.payout_id) {
                sqlx::query(
                    "UPDATE payouts SET status = 'confirmed', tx_hash = $2, confirmed_at = $3 \
                     WHERE id = $1 AND batch_id = $4",
                )
                .bind(item.payout_id)
                .bind(tx_hash)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE payouts SET status = 'pending', batch_id = NULL, sent_at = NULL \
                     WHERE id = $1 AND batch_id = $2",
                )
                .bind(item.payout_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        tracing::info!(
            batch = id,
            status = new_status.as_str(),
            delivered = delivered.len(),
            of = items.len(),
            "payout batch settled"
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Invariants

    /// Verifies the TON tables against the books (empty = healthy); complements
    /// [`Ledger::check`]:
    /// - each payout's transaction moves exactly its amount from the worker to the
    ///   clearing account, and a cancelled payout's reversal moves it back;
    /// - no worker balance is below zero;
    /// - sending/sent payouts are in an open batch, confirmed ones in a confirmed batch;
    /// - each credited deposit's transaction credits its account exactly its amount.
    pub async fn check_ton(&self) -> Result<Vec<TonViolation>> {
        let mut found = Vec::new();
        let amount_in = "(SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM entries e \
                         WHERE e.transaction_id = {tx} AND e.account_id = {acc})";
        let q = format!(
            "SELECT p.id, p.amount, {w} AS w, {c} AS c, \
               (SELECT COUNT(*) FROM entries e WHERE e.transaction_id = p.transaction_id) AS n, \
               (SELECT t.kind FROM transactions t WHERE t.id = p.transaction_id) AS kind, \
               COALESCE({rw}, 0) AS rw, COALESCE({rc}, 0) AS rc, p.status, p.reversal_id \
             FROM payouts p ORDER BY p.id",
            w = amount_in
                .replace("{tx}", "p.transaction_id")
                .replace("{acc}", "p.account_id"),
            c = amount_in
                .replace("{tx}", "p.transaction_id")
                .replace("{acc}", "$1"),
            rw = amount_in
                .replace("{tx}", "p.reversal_id")
                .replace("{acc}", "p.account_id"),
            rc = amount_in
                .replace("{tx}", "p.reversal_id")
                .replace("{acc}", "$1"),
        );
        for row in sqlx::query(&q)
            .bind(self.clearing_account.0)
            .fetch_all(&self.read)
            .await?
        {
            let id: i64 = row.try_get("id")?;
            let amount: i64 = row.try_get("amount")?;
            let (w, c, n): (i64, i64, i64) =
                (row.try_get("w")?, row.try_get("c")?, row.try_get("n")?);
            let kind: Option<String> = row.try_get("kind")?;
            if w != -amount || c != amount || n != 2 || kind.as_deref() != Some("payout") {
                found.push(TonViolation::PayoutEntriesMismatch {
                    payout: id,
                    detail: format!(
                        "amount {amount}: {kind:?} transaction with {n} entries, worker {w}, clearing {c}"
                    ),
                });
            }
            let cancelled = row.try_get::<String, _>("status")? == "cancelled";
            let (rw, rc): (i64, i64) = (row.try_get("rw")?, row.try_get("rc")?);
            let expected = if cancelled { (amount, -amount) } else { (0, 0) };
            if (rw, rc) != expected {
                found.push(TonViolation::PayoutEntriesMismatch {
                    payout: id,
                    detail: format!(
                        "reversal moves worker {rw}, clearing {rc}; expected {expected:?}"
                    ),
                });
            }
        }
        for row in sqlx::query(
            "SELECT a.id, CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) AS s FROM accounts a \
             JOIN entries e ON e.account_id = a.id WHERE a.kind = 'worker' \
             GROUP BY a.id HAVING SUM(e.amount) < 0 ORDER BY a.id",
        )
        .fetch_all(&self.read)
        .await?
        {
            found.push(TonViolation::NegativeWorkerBalance {
                account: AccountId(row.try_get("id")?),
                balance: row.try_get("s")?,
            });
        }
        for row in sqlx::query(
            "SELECT p.id, p.status, b.status AS batch_status FROM payouts p \
             LEFT JOIN payout_batches b ON b.id = p.batch_id \
             WHERE (p.status IN ('sending', 'sent') AND (b.status IS NULL OR b.status NOT IN ('prepared', 'sent'))) \
                OR (p.status = 'confirmed' AND (b.status IS NULL OR b.status <> 'confirmed')) \
                OR (p.status IN ('pending', 'cancelled') AND p.batch_id IS NOT NULL) \
             ORDER BY p.id",
        )
        .fetch_all(&self.read)
        .await?
        {
            let status: String = row.try_get("status")?;
            let batch: Option<String> = row.try_get("batch_status")?;
            found.push(TonViolation::PayoutBatchMismatch {
                payout: row.try_get("id")?,
                detail: format!("payout {status}, batch {batch:?}"),
            });
        }
        let q = format!(
            "SELECT d.id, d.amount, {got} AS got FROM ton_deposits d \
             WHERE d.status = 'credited' AND {got} <> d.amount ORDER BY d.id",
            got = amount_in
                .replace("{tx}", "d.transaction_id")
                .replace("{acc}", "d.account_id"),
        );
        for row in sqlx::query(&q).fetch_all(&self.read).await? {
            let amount: Option<i64> = row.try_get("amount")?;
            let got: i64 = row.try_get("got")?;
            found.push(TonViolation::DepositEntriesMismatch {
                deposit: row.try_get("id")?,
                detail: format!("amount {amount:?}, credited {got}"),
            });
        }
        Ok(found)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_normalise() {
        assert_eq!(
            normalize_deposit_code(" ab12-cd34 ").as_deref(),
            Some("AB12CD34")
        );
        assert_eq!(
            normalize_deposit_code("oil0 IL10").as_deref(),
            Some("01101110")
        );
        assert_eq!(normalize_deposit_code("AB12CD3"), None);
        assert_eq!(normalize_deposit_code("AB12CD345"), None);
        assert_eq!(normalize_deposit_code("AB12CD3U"), None); // U is not a code letter
        assert_eq!(normalize_deposit_code("AB12CD3é"), None);
        assert_eq!(normalize_deposit_code(""), None);
        assert_eq!(normalize_deposit_code(&"A".repeat(10_000)), None);
    }

    #[test]
    fn random_codes_are_codes() {
        for _ in 0..1000 {
            let c = random_code();
            assert_eq!(normalize_deposit_code(&c).as_deref(), Some(c.as_str()));
        }
    }

    #[test]
    fn raw_addresses() {
        let h = "ab".repeat(32);
        assert!(is_raw_address(&format!("0:{h}")));
        assert!(is_raw_address(&format!("-1:{h}")));
        assert!(!is_raw_address(&format!("1:{h}")));
        assert!(!is_raw_address(&format!("0:{}", h.to_uppercase())));
        assert!(!is_raw_address(&format!("0:{}", &h[2..])));
        assert!(!is_raw_address("EQ..."));
        assert!(!is_raw_address(&format!("0:{}", "0".repeat(64))));
    }
}
