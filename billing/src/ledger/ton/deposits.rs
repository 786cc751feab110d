//! Deposits: incoming transfers to the service wallet as the watcher saw them, each decided
//! once by `(tx hash, lt)` (credited to the client whose deposit code is the comment, or
//! kept as rejected for an operator to resolve), and the watcher's cursor.
//!
//! [`Ledger::record_deposit`] is the one entry point: it credits through
//! [`Ledger::credit`] with the idempotency key `ton:<tx hash>:<lt>` and then writes the
//! deposit row, so a crash between the two is repaired by the next attempt (the credit
//! answers `AlreadyApplied`, the row is written) and money is never credited twice.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::codes::normalize_deposit_code;
use super::{get_u64, limit_of, lt_i64, truncate_chars};
use crate::error::{Error, Result};
use crate::ledger::{now_ms, Ledger};
use crate::types::{AccountId, CreditOutcome, UnixMillis};

/// Comments are stored for review up to this many characters.
const STORED_COMMENT_CHARS: usize = 256;

/// The idempotency key under which a deposit is credited.
pub fn deposit_key(tx_hash: &str, lt: u64) -> String {
    format!("ton:{tx_hash}:{lt}")
}

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
    Credited {
        account: AccountId,
        transaction: i64,
    },
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

const DEPOSIT_COLUMNS: &str = "id, tx_hash, lt, source, value, amount, comment, utime, status, \
     reason, detail, account_id, transaction_id, created_at, resolved_at";

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

impl Ledger {
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
                    .insert_deposit_row(
                        input,
                        amount,
                        comment.as_deref(),
                        DepositRow::Rejected(&rejection),
                    )
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
                    DepositRow::Credited {
                        account,
                        transaction: tx_id,
                    },
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
            DepositRow::Credited {
                account,
                transaction,
            } => ("credited", None, None, Some(account.0), Some(transaction)),
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
}
