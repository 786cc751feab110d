//! API keys in the ledger's database, so that every gateway replica sees a new or revoked key.
//!
//! The ledger stores what the gateway gives it (lookup id, SHA-256 of the whole key, account,
//! label, limits) and never sees a key's secret. Every change takes the next value of one
//! counter (`api_keys_version`) inside its own transaction: on Postgres the counter row stays
//! locked until commit, on SQLite the single writer serialises anyway, so versions become
//! visible in order and a replica that has seen version `v` catches up with
//! [`Ledger::api_keys_since`]`(v)` without missing a change.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{now_ms, Ledger};
use crate::error::{Error, Result};
use crate::types::UnixMillis;

/// Per-key controls kept with the key (model allow-list, budgets, price cap); the gateway
/// enforces the allow-list and the price cap, the ledger the budgets (in the hold,
/// `ledger::budgets`). `None` = no restriction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyControls {
    /// JSON array of the model ids the key may use, as stored.
    pub allowed_models: Option<String>,
    pub daily_budget_nanoton: Option<i64>,
    pub monthly_budget_nanoton: Option<i64>,
    /// Default cap on the worker price coefficient (thousandths).
    pub max_price_coefficient: Option<i64>,
}

/// One stored API key (no secret: only its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// The 12-character lookup id.
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    /// The client account the key bills and manages.
    pub account: String,
    pub name: String,
    /// `cli`, `dashboard`, `import`, `dev`.
    pub created_by: String,
    pub created_at_ms: UnixMillis,
    pub revoked_at_ms: Option<UnixMillis>,
    /// The change counter's value when this row last changed.
    pub version: i64,
    /// Requests and tokens per minute; `None` = the gateway's defaults.
    pub limits: Option<(u64, u64)>,
    pub controls: KeyControls,
}

/// What [`Ledger::insert_api_key`] stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApiKey {
    pub id: String,
    pub sha256: String,
    pub account: String,
    pub name: String,
    pub created_by: String,
    pub created_at_ms: UnixMillis,
    /// Set for keys imported already revoked.
    pub revoked_at_ms: Option<UnixMillis>,
    pub limits: Option<(u64, u64)>,
    pub controls: KeyControls,
}

/// The columns every query returns, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, sha256, account, name, created_by, created_at, revoked_at, version, \
         requests_per_minute, tokens_per_minute, allowed_models, daily_budget_nanoton, \
         monthly_budget_nanoton, max_price_coefficient"
    };
}

fn row_to_key(r: &AnyRow) -> Result<ApiKeyRow> {
    let rpm: Option<i64> = r.try_get("requests_per_minute")?;
    let tpm: Option<i64> = r.try_get("tokens_per_minute")?;
    let limits = match (rpm, tpm) {
        (Some(a), Some(b)) => Some((
            u64::try_from(a).map_err(|_| Error::Corrupt(format!("requests_per_minute = {a}")))?,
            u64::try_from(b).map_err(|_| Error::Corrupt(format!("tokens_per_minute = {b}")))?,
        )),
        _ => None,
    };
    Ok(ApiKeyRow {
        id: r.try_get("id")?,
        sha256: r.try_get("sha256")?,
        account: r.try_get("account")?,
        name: r.try_get("name")?,
        created_by: r.try_get("created_by")?,
        created_at_ms: r.try_get("created_at")?,
        revoked_at_ms: r.try_get("revoked_at")?,
        version: r.try_get("version")?,
        limits,
        controls: KeyControls {
            allowed_models: r.try_get("allowed_models")?,
            daily_budget_nanoton: r.try_get("daily_budget_nanoton")?,
            monthly_budget_nanoton: r.try_get("monthly_budget_nanoton")?,
            max_price_coefficient: r.try_get("max_price_coefficient")?,
        },
    })
}

fn limit_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidInput(format!("{what} {v} is too large")))
}

impl Ledger {
    /// The next change version; the counter row stays locked (Postgres) until `tx` ends.
    async fn next_key_version(tx: &mut Transaction<'static, Any>) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE api_keys_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Stores a new key. `None` when a key with this id exists already (nothing written): the
    /// caller picks another id, or, importing, skips a key it imported before.
    pub async fn insert_api_key(&self, key: &NewApiKey) -> Result<Option<ApiKeyRow>> {
        if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput("sha256 must be 64 hex characters".into()));
        }
        let (rpm, tpm) = match key.limits {
            Some((r, t)) => (
                Some(limit_i64(r, "requests_per_minute")?),
                Some(limit_i64(t, "tokens_per_minute")?),
            ),
            None => (None, None),
        };
        self.retrying("insert_api_key", || async {
            let mut tx = self.begin().await?;
            let version = Self::next_key_version(&mut tx).await?;
            let row = sqlx::query(concat!(
                "INSERT INTO api_keys (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (id) DO NOTHING RETURNING ",
                columns!()
            ))
            .bind(&key.id)
            .bind(key.sha256.to_ascii_lowercase())
            .bind(&key.account)
            .bind(&key.name)
            .bind(&key.created_by)
            .bind(key.created_at_ms)
            .bind(key.revoked_at_ms)
            .bind(version)
            .bind(rpm)
            .bind(tpm)
            .bind(key.controls.allowed_models.as_deref())
            .bind(key.controls.daily_budget_nanoton)
            .bind(key.controls.monthly_budget_nanoton)
            .bind(key.controls.max_price_coefficient)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(r) => {
                    let out = row_to_key(&r)?;
                    tx.commit().await?;
                    Ok(Some(out))
                }
                // Nothing changed: give the version back.
                None => {
                    tx.rollback().await?;
                    Ok(None)
                }
            }
        })
        .await
    }

    /// Revokes key `id` (of `account`, when given: a key of another account is not found).
    /// Idempotent: an already revoked key is returned unchanged. `None` = no such key.
    pub async fn revoke_api_key(&self, id: &str, account: Option<&str>) -> Result<Option<ApiKeyRow>> {
        self.update_api_key(id, account, None).await
    }

    /// Renames key `id` (of `account`, when given). `None` = no such key.
    pub async fn rename_api_key(
        &self,
        id: &str,
        account: Option<&str>,
        name: &str,
    ) -> Result<Option<ApiKeyRow>> {
        self.update_api_key(id, account, Some(name)).await
    }

    /// Renames the key to `name`, or revokes it when `name` is `None`.
    async fn update_api_key(
        &self,
        id: &str,
        account: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<ApiKeyRow>> {
        self.retrying("update_api_key", || async {
            let mut tx = self.begin().await?;
            let current = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE id = $1 AND ($2 = '' OR account = $2)"
            ))
            .bind(id)
            .bind(account.unwrap_or(""))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(current) = current else {
                tx.rollback().await?;
                return Ok(None);
            };
            let current = row_to_key(&current)?;
            let unchanged = match name {
                Some(name) => current.name == name,
                None => current.revoked_at_ms.is_some(),
            };
            if unchanged {
                tx.rollback().await?;
                return Ok(Some(current));
            }
            let version = Self::next_key_version(&mut tx).await?;
            let update = match name {
                Some(name) => sqlx::query(concat!(
                    "UPDATE api_keys SET name = $3, version = $2 WHERE id = $1 RETURNING ",
                    columns!()
                ))
                .bind(id)
                .bind(version)
                .bind(name.to_owned()),
                None => sqlx::query(concat!(
                    "UPDATE api_keys SET revoked_at = $3, version = $2 WHERE id = $1 RETURNING ",
                    columns!()
                ))
                .bind(id)
                .bind(version)
                .bind(now_ms()),
            };
            let row = update.fetch_one(&mut *tx).await?;
            let out = row_to_key(&row)?;
            tx.commit().await?;
            Ok(Some(out))
        })
        .await
    }

    /// Key `id`, if stored.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>> {
        sqlx::query(concat!("SELECT ", columns!(), " FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|r| row_to_key(&r))
            .transpose()
    }

    /// Every key of `account` (all keys when `None`), oldest first.
    pub async fn api_keys(&self, account: Option<&str>) -> Result<Vec<ApiKeyRow>> {
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys WHERE ($1 = '' OR account = $1) ORDER BY created_at, id"
        ))
        .bind(account.unwrap_or(""))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(row_to_key)
        .collect()
    }

    /// Keys changed after version `since` (created, revoked or renamed), in version order.
    /// `api_keys_since(0)` is every key.
    pub async fn api_keys_since(&self, since: i64) -> Result<Vec<ApiKeyRow>> {
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys WHERE version > $1 ORDER BY version"
        ))
        .bind(since)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(row_to_key)
        .collect()
    }

    /// The first `limit` rows of [`Self::api_keys_since`]`(since)`: a gateway loading
    /// every key at start holds one page of rows at a time instead of all of them. Versions
    /// come from one counter, one per change, so they do not repeat; a caller paging on
    /// `version > last` still drops a full page's trailing rows of its last version and
    /// reads them with the next page (see `gateway::keys`).
    pub async fn api_keys_page(&self, since: i64, limit: u32) -> Result<Vec<ApiKeyRow>> {
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys WHERE version > $1 ORDER BY version LIMIT $2"
        ))
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(row_to_key)
        .collect()
    }
}
