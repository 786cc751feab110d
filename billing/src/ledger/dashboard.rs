//! What the dashboard reads and writes besides keys: sign-in identities (a Telegram user or a
//! TON wallet mapped to a client account), single-use server nonces (TON Connect `ton_proof`
//! payloads), usage summed by day and model, and the workers paid out to a TON address.

use sqlx::Row;

use super::{now_ms, Ledger};
use crate::error::{Error, Result};
use crate::types::{AccountId, UnixMillis};

/// How someone signed into the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityProvider {
    /// A Telegram user id (from Mini App `initData`).
    Telegram,
    /// A TON wallet address in raw form `wc:hex` (from a TON Connect `ton_proof`).
    Ton,
}

impl IdentityProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityProvider::Telegram => "telegram",
            IdentityProvider::Ton => "ton",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "telegram" => Ok(IdentityProvider::Telegram),
            "ton" => Ok(IdentityProvider::Ton),
            other => Err(Error::Corrupt(format!("identity provider {other:?}"))),
        }
    }
}

/// A sign-in identity and the client account it opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub provider: IdentityProvider,
    pub subject: String,
    pub account: String,
    pub label: String,
    pub created_at_ms: UnixMillis,
    pub last_login_at_ms: UnixMillis,
}

/// A client's charges of one UTC day for one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyUsage {
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// nanoTON taken from the account.
    pub charge: i64,
}

impl Ledger {
    /// The client account `subject` signs into: the one it was linked to before, else
    /// `new_account` (linked now). Updates the label and the last sign-in time.
    pub async fn sign_in_identity(
        &self,
        provider: IdentityProvider,
        subject: &str,
        new_account: &str,
        label: &str,
    ) -> Result<Identity> {
        self.retrying("sign_in_identity", || async {
            let now = now_ms();
            let row = sqlx::query(
                "INSERT INTO dashboard_identities \
                   (provider, subject, account, label, created_at, last_login_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (provider, subject) DO UPDATE SET \
                   label = excluded.label, last_login_at = excluded.last_login_at \
                 RETURNING provider, subject, account, label, created_at, last_login_at",
            )
            .bind(provider.as_str())
            .bind(subject)
            .bind(new_account)
            .bind(label)
            .bind(now)
            .fetch_one(&self.write)
            .await?;
            identity_from_row(&row)
        })
        .await
    }

    /// The identities that sign into `account`.
    pub async fn identities(&self, account: &str) -> Result<Vec<Identity>> {
        sqlx::query(
            "SELECT provider, subject, account, label, created_at, last_login_at \
             FROM dashboard_identities WHERE account = $1 ORDER BY created_at, provider",
        )
        .bind(account)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(identity_from_row)
        .collect()
    }

    /// Marks the single-use value `nonce` (e.g. a `ton_proof` payload the gateway issued
    /// and authenticated itself) as used until `expires_at_ms`: true the first time, false
    /// every later time, on any replica. Rows past their expiry are dropped on the way (the
    /// issuer refuses expired values anyway).
    pub async fn use_nonce(&self, nonce: &str, purpose: &str, expires_at_ms: UnixMillis) -> Result<bool> {
        self.retrying("use_nonce", || async {
            let now = now_ms();
            sqlx::query("DELETE FROM dashboard_nonces WHERE expires_at < $1")
                .bind(now)
                .execute(&self.write)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO dashboard_nonces (nonce, purpose, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
            )
            .bind(nonce)
            .bind(purpose)
            .bind(now)
            .bind(expires_at_ms)
            .fetch_optional(&self.write)
            .await?;
            Ok(inserted.is_some())
        })
        .await
    }

    /// `client`'s charges since `since_ms`, summed by UTC day and model, oldest day first.
    pub async fn daily_usage(&self, client: AccountId, since_ms: UnixMillis) -> Result<Vec<DailyUsage>> {
        // Sums are cast: Postgres widens SUM(bigint) to numeric, which the Any driver cannot read.
        sqlx::query(
            "SELECT created_at / 86400000 AS day, model, COUNT(*) AS requests, \
                    CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
                    CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
                    CAST(SUM(charge) AS BIGINT) AS charge \
             FROM charges WHERE client_id = $1 AND created_at >= $2 \
             GROUP BY day, model ORDER BY day, model",
        )
        .bind(client.0)
        .bind(since_ms)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| {
            Ok(DailyUsage {
                day: r.try_get("day")?,
                model: r.try_get("model")?,
                requests: r.try_get("requests")?,
                prompt_tokens: r.try_get("prompt_tokens")?,
                completion_tokens: r.try_get("completion_tokens")?,
                charge: r.try_get("charge")?,
            })
        })
        .collect()
    }

    /// The worker accounts (their names: worker ids) whose payout address is `address`
    /// (raw form `wc:hex`), by name.
    pub async fn workers_paid_to(&self, address: &str) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT a.external_id FROM payout_addresses p JOIN accounts a ON a.id = p.account_id \
             WHERE p.address = $1 AND a.kind = 'worker' ORDER BY a.external_id",
        )
        .bind(address)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
    }
}

fn identity_from_row(r: &sqlx::any::AnyRow) -> Result<Identity> {
    Ok(Identity {
        provider: IdentityProvider::parse(r.try_get("provider")?)?,
        subject: r.try_get("subject")?,
        account: r.try_get("account")?,
        label: r.try_get("label")?,
        created_at_ms: r.try_get("created_at")?,
        last_login_at_ms: r.try_get("last_login_at")?,
    })
}
