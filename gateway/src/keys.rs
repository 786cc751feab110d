//! API keys: `sk-cocoon-` + 12-char lookup id + 40-char secret (base62).
//!
//! Only the SHA-256 of the full key is stored, in the ledger's database (`api_keys`, see
//! `billing::Ledger::insert_api_key`), so every gateway replica and the `cocoon keys` CLI see
//! the same keys. The id is public within the store (it names the key in listings and finds
//! the record without scanning); the secret carries ~238 bits of entropy, so a fast hash is
//! enough (no password-style stretching). Presented keys are compared in constant time.
//!
//! # Caching and how fast a change reaches every replica
//! Each [`KeyStore`] keeps every key in memory, so checking a key costs no database round
//! trip. It catches up with the database by asking for the rows changed since the last
//! version it saw (one indexed query):
//! - every `gateway.keys_poll_ms` (default 250 ms) in the background: a revocation made on
//!   any replica or by the CLI stops the key everywhere within that interval plus one query;
//! - at once when a key with an unknown id is presented (a key just created elsewhere), with
//!   concurrent misses sharing one query and at most one such query per 50 ms, so a flood of
//!   made-up keys cannot turn into a flood of queries.
//!
//! If the database cannot be reached the store keeps serving the keys it has and logs it;
//! a revocation made meanwhile takes effect once it is back.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use billing::{ApiKeyRow, Ledger, NewApiKey};
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::ratelimit::Limits;

pub const KEY_PREFIX: &str = "sk-cocoon-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const KEY_LEN: usize = KEY_PREFIX.len() + ID_LEN + SECRET_LEN;
/// Longest key label, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Shortest spacing between two catch-up queries caused by unknown key ids.
const MISS_REFRESH_SPACING: Duration = Duration::from_millis(50);
/// Rows per catch-up query: loading 100,000 keys at start reads them a page at a time, so
/// only one page of database rows is in memory beside the cache. Reading them in one query
/// left the process 148 MB larger instead of 66 MB (`scripts/bench-keys-scale`).
const REFRESH_PAGE: u32 = 1_000;

/// Per-key controls stored with the key. Enforced: the model allow-list (other models are
/// answered 404 `model_not_found` and left out of `/v1/models`) and the price-coefficient
/// cap (applied when a request sets none), spend budgets per UTC day and month (enforced in
/// the ledger hold's transaction: `billing::KeyBudget`). `None` = no restriction.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyControls {
    pub allowed_models: Option<Vec<String>>,
    pub daily_budget_nanoton: Option<i64>,
    pub monthly_budget_nanoton: Option<i64>,
    pub max_price_coefficient: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The 12-char lookup id (public part of the key).
    pub id: String,
    /// Hex of sha256(full key).
    pub sha256: String,
    /// The label.
    pub name: String,
    /// The client account the key bills and manages.
    pub account: String,
    /// `cli`, `dashboard`, `import`, `dev`.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    pub limits: Option<Limits>,
    pub revoked: bool,
    /// Unix seconds.
    pub revoked_at: Option<u64>,
    pub controls: KeyControls,
}

/// A freshly created key. `key` is shown once and never stored.
pub struct NewKey {
    pub key: String,
    pub record: KeyRecord,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store: {0}")]
    Db(#[from] billing::Error),
    #[error("no such key: {0}")]
    NotFound(String),
    #[error("invalid key name: {0}")]
    InvalidName(String),
    #[error("reading {path}: {message}")]
    Import { path: String, message: String },
}

fn to_secs(ms: i64) -> u64 {
    u64::try_from(ms.div_euclid(1000)).unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl KeyRecord {
    fn from_row(r: ApiKeyRow) -> Self {
        let allowed_models = r
            .controls
            .allowed_models
            .as_deref()
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok());
        KeyRecord {
            id: r.id,
            sha256: r.sha256,
            name: r.name,
            account: r.account,
            created_by: r.created_by,
            created_at: to_secs(r.created_at_ms),
            limits: r.limits.map(|(rpm, tpm)| Limits {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
            }),
            revoked: r.revoked_at_ms.is_some(),
            revoked_at: r.revoked_at_ms.map(to_secs),
            controls: KeyControls {
                allowed_models,
                daily_budget_nanoton: r.controls.daily_budget_nanoton,
                monthly_budget_nanoton: r.controls.monthly_budget_nanoton,
                max_price_coefficient: r
                    .controls
                    .max_price_coefficient
                    .and_then(|c| u32::try_from(c).ok()),
            },
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A fresh key: its lookup id and the whole key `sk-cocoon-<id><secret>`.
pub fn generate() -> (String, String) {
    let id = Alphanumeric.sample_string(&mut OsRng, ID_LEN);
    let secret = Alphanumeric.sample_string(&mut OsRng, SECRET_LEN);
    let key = format!("{KEY_PREFIX}{id}{secret}");
    (id, key)
}

/// Hex SHA-256 of a whole key: what the store keeps.
pub fn hash_hex(key: &str) -> String {
    hex::encode(sha256(key.as_bytes()))
}

/// Returns the lookup id if `presented` has the exact key shape.
pub fn parse_key(presented: &str) -> Option<&str> {
    if presented.len() != KEY_LEN {
        return None;
    }
    let body = presented.strip_prefix(KEY_PREFIX)?;
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    // All-ASCII body, so byte slicing is on char boundaries.
    body.get(..ID_LEN)
}

/// A label: 1 to 100 characters, no control characters, trimmed.
pub fn check_name(name: &str) -> Result<String, KeyStoreError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(KeyStoreError::InvalidName("a key name must not be empty".into()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(KeyStoreError::InvalidName(format!(
            "a key name has at most {MAX_NAME_CHARS} characters, got {}",
            name.chars().count()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(KeyStoreError::InvalidName(
            "a key name must not contain control characters".into(),
        ));
    }
    Ok(name.to_owned())
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<String, KeyRecord>,
    /// The highest change version applied.
    version: i64,
}

/// When the last catch-up query started (whoever ran it).
struct RefreshState {
    last_started: Option<Instant>,
}

/// What importing a `keys.json` of an older version did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys written to the database.
    pub imported: usize,
    /// Keys whose id was in the database already (imported before).
    pub present: usize,
}

/// The key store: the database behind an in-memory copy. Send + Sync; share one per process.
pub struct KeyStore {
    db: Ledger,
    cache: RwLock<Cache>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Catch-up queries that failed (for `/metrics`-style inspection and tests).
    failures: AtomicU64,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.read().by_id.len())
            .field("version", &self.read().version)
            .finish_non_exhaustive()
    }
}

/// The shape of one record in the `keys.json` file older versions kept.
#[derive(serde::Deserialize)]
struct LegacyRecord {
    id: String,
    sha256: String,
    name: String,
    account: String,
    created_at: u64,
    limits: Option<Limits>,
    #[serde(default)]
    revoked: bool,
}

impl KeyStore {
    /// The store over `db` (migrated by `Ledger::connect`), with every key loaded.
    pub async fn open(db: Ledger) -> Result<Arc<Self>, KeyStoreError> {
        let store = Arc::new(KeyStore {
            db,
            cache: RwLock::new(Cache::default()),
            refresh: tokio::sync::Mutex::new(RefreshState { last_started: None }),
            failures: AtomicU64::new(0),
        });
        store.refresh().await?;
        Ok(store)
    }

    /// A store on a fresh in-memory SQLite database (tests).
    pub async fn in_memory() -> Result<Arc<Self>, KeyStoreError> {
        let db = Ledger::connect("sqlite::memory:", billing::LedgerOptions::default()).await?;
        Self::open(db).await
    }

    pub fn database(&self) -> &Ledger {
        &self.db
    }

    /// Lock helpers: a poisoned lock still guards a consistent map (every mutation is a
    /// single insert), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, rows: Vec<ApiKeyRow>) {
        if rows.is_empty() {
            return;
        }
        let mut cache = self.write();
        for row in rows {
            let version = row.version;
            let rec = KeyRecord::from_row(row);
            cache.version = cache.version.max(version);
            cache.by_id.insert(rec.id.clone(), rec);
        }
    }

    /// Applies one row this process just wrote, without moving the catch-up version (changes
    /// of other processes with lower versions may still be unseen).
    fn apply_own(&self, row: ApiKeyRow) {
        let rec = KeyRecord::from_row(row);
        self.write().by_id.insert(rec.id.clone(), rec);
    }

    /// Catches up with the database: the rows changed since the last version seen.
    pub async fn refresh(&self) -> Result<(), KeyStoreError> {
        let mut state = self.refresh.lock().await;
        self.refresh_locked(&mut state).await
    }

    async fn refresh_locked(&self, state: &mut RefreshState) -> Result<(), KeyStoreError> {
        state.last_started = Some(Instant::now());
        let mut since = self.read().version;
        loop {
            let page = match self.db.api_keys_page(since, REFRESH_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            };
            let full = page.len() == REFRESH_PAGE as usize;
            let rows = match (page.first(), page.last()) {
                // More may share the last row's version: leave those to the next page. A
                // whole page of one version (never written today) is read unpaged.
                (Some(first), Some(last)) if full && first.version == last.version => {
                    match self.db.api_keys_since(since).await {
                        Ok(all) => {
                            self.apply(all);
                            return Ok(());
                        }
                        Err(e) => {
                            self.failures.fetch_add(1, Ordering::Relaxed);
                            return Err(e.into());
                        }
                    }
                }
                (_, Some(last)) if full => {
                    let cut = last.version;
                    page.into_iter().filter(|r| r.version != cut).collect()
                }
                _ => page,
            };
            if let Some(last) = rows.last() {
                since = last.version;
            }
            self.apply(rows);
            if !full {
                return Ok(());
            }
        }
    }

    /// A catch-up for a key id not in memory, started after `arrived`: shares a query another
    /// caller started after `arrived`, and keeps such queries at least 50 ms apart.
    async fn refresh_for_miss(&self, arrived: Instant) {
        let mut state = self.refresh.lock().await;
        if let Some(last) = state.last_started {
            if last >= arrived {
                return; // A query that started after this key was presented has run.
            }
            let next = last + MISS_REFRESH_SPACING;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        if let Err(e) = self.refresh_locked(&mut state).await {
            tracing::warn!(error = %e, "API key catch-up failed; serving the keys already loaded");
        }
    }

    /// Catch-up queries that failed since start.
    pub fn refresh_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Polls the database every `every` until `stop`.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                match this.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("API key store reachable again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "API key store unreachable; serving the keys already loaded");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    fn lookup(&self, id: &str, digest: &[u8; 32]) -> Option<Option<KeyRecord>> {
        let cache = self.read();
        let rec = cache.by_id.get(id)?;
        let mut stored = [0u8; 32];
        let matches = hex::decode_to_slice(&rec.sha256, &mut stored).is_ok()
            && bool::from(stored.ct_eq(digest));
        Some((matches && !rec.revoked).then(|| rec.clone()))
    }

    /// The record of a valid, unrevoked key; `None` for anything else. The hash comparison
    /// is constant time. An unknown id triggers a catch-up (see the module docs).
    pub async fn verify(&self, presented: &str) -> Option<KeyRecord> {
        let arrived = Instant::now();
        let id = parse_key(presented)?;
        let digest = sha256(presented.as_bytes());
        if let Some(found) = self.lookup(id, &digest) {
            return found;
        }
        self.refresh_for_miss(arrived).await;
        self.lookup(id, &digest).flatten()
    }

    /// Creates and stores a new key; the plaintext is only in the result.
    pub async fn create(&self, name: &str, account: &str, limits: Option<Limits>) -> Result<NewKey, KeyStoreError> {
        self.create_by(name, account, limits, "cli").await
    }

    /// [`Self::create`], recording who created it (`cli`, `dashboard`, `dev`).
    pub async fn create_by(
        &self,
        name: &str,
        account: &str,
        limits: Option<Limits>,
        created_by: &str,
    ) -> Result<NewKey, KeyStoreError> {
        self.create_with(name, account, limits, &KeyControls::default(), created_by).await
    }

    /// [`Self::create_by`] with per-key controls.
    pub async fn create_with(
        &self,
        name: &str,
        account: &str,
        limits: Option<Limits>,
        controls: &KeyControls,
        created_by: &str,
    ) -> Result<NewKey, KeyStoreError> {
        let name = check_name(name)?;
        let stored_controls = billing::KeyControls {
            allowed_models: controls.allowed_models.as_ref().map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into())),
            daily_budget_nanoton: controls.daily_budget_nanoton,
            monthly_budget_nanoton: controls.monthly_budget_nanoton,
            max_price_coefficient: controls.max_price_coefficient.map(i64::from),
        };
        // 62^12 ids make a clash practically impossible; the insert reports one anyway.
        for _ in 0..8 {
            let (id, key) = generate();
            let row = NewApiKey {
                id,
                sha256: hash_hex(&key),
                account: account.to_owned(),
                name: name.clone(),
                created_by: created_by.to_owned(),
                created_at_ms: now_ms(),
                revoked_at_ms: None,
                limits: limits.map(|l| (l.requests_per_minute, l.tokens_per_minute)),
                controls: stored_controls.clone(),
            };
            if let Some(stored) = self.db.insert_api_key(&row).await? {
                let record = KeyRecord::from_row(stored.clone());
                self.apply_own(stored);
                return Ok(NewKey { key, record });
            }
        }
        Err(KeyStoreError::Db(billing::Error::Corrupt("no free key id after 8 tries".into())))
    }

    /// Revokes a key (idempotent); with `account`, only that account's key. The record stays.
    pub async fn revoke(&self, id: &str, account: Option<&str>) -> Result<KeyRecord, KeyStoreError> {
        let row = self
            .db
            .revoke_api_key(id, account)
            .await?
            .ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
        let rec = KeyRecord::from_row(row.clone());
        self.apply_own(row);
        Ok(rec)
    }

    /// Renames a key; with `account`, only that account's key.
    pub async fn rename(&self, id: &str, account: Option<&str>, name: &str) -> Result<KeyRecord, KeyStoreError> {
        let name = check_name(name)?;
        let row = self
            .db
            .rename_api_key(id, account, &name)
            .await?
            .ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
        let rec = KeyRecord::from_row(row.clone());
        self.apply_own(row);
        Ok(rec)
    }

    /// The keys of `account` (every key when `None`), oldest first, read from the database.
    pub async fn list(&self, account: Option<&str>) -> Result<Vec<KeyRecord>, KeyStoreError> {
        Ok(self
            .db
            .api_keys(account)
            .await?
            .into_iter()
            .map(KeyRecord::from_row)
            .collect())
    }

    /// Imports the `keys.json` file older versions kept the keys in (an array of records
    /// with `id`, `sha256`, `name`, `account`, `created_at`, `limits`, `revoked`). Keys whose
    /// id is stored already are left alone, so running it at every start imports a file once
    /// and later edits of the file change nothing. A missing file imports nothing.
    pub async fn import_legacy_file(&self, path: &Path) -> Result<ImportReport, KeyStoreError> {
        let import_err = |message: String| KeyStoreError::Import {
            path: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ImportReport::default()),
            Err(e) => return Err(import_err(e.to_string())),
        };
        let records: Vec<LegacyRecord> =
            serde_json::from_str(&text).map_err(|e| import_err(format!("invalid JSON: {e}")))?;
        let mut report = ImportReport::default();
        for r in records {
            if r.id.len() != ID_LEN || !r.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(import_err(format!("key id {:?} is not 12 letters or digits", r.id)));
            }
            let created_at_ms = i64::try_from(r.created_at).unwrap_or(0).saturating_mul(1000);
            let row = NewApiKey {
                id: r.id,
                sha256: r.sha256,
                account: r.account,
                name: r.name,
                created_by: "import".into(),
                created_at_ms,
                revoked_at_ms: r.revoked.then(now_ms),
                limits: r.limits.map(|l| (l.requests_per_minute, l.tokens_per_minute)),
                controls: billing::KeyControls::default(),
            };
            match self.db.insert_api_key(&row).await? {
                Some(stored) => {
                    report.imported += 1;
                    self.apply_own(stored);
                }
                None => report.present += 1,
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        requests_per_minute: 10,
        tokens_per_minute: 1000,
    };

    #[tokio::test]
    async fn key_format() {
        let s = KeyStore::in_memory().await.unwrap();
        let k = s.create("n", "acct", None).await.unwrap();
        assert_eq!(k.key.len(), 62);
        assert!(k.key.starts_with(KEY_PREFIX));
        assert!(k.key[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(&k.key[10..22], k.record.id);
        assert_eq!(k.record.sha256.len(), 64);
        let k2 = s.create("n", "acct", None).await.unwrap();
        assert_ne!(k.key, k2.key);
        assert_ne!(k.record.id, k2.record.id);
        // Debug never shows the key.
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.key[22..]));
        assert!(dbg.contains("redacted"));
    }

    #[tokio::test]
    async fn create_and_verify() {
        let s = KeyStore::in_memory().await.unwrap();
        let k = s.create("laptop", "alice", Some(LIM)).await.unwrap();
        let rec = s.verify(&k.key).await.unwrap();
        assert_eq!(rec, k.record);
        assert_eq!(rec.account, "alice");
        assert_eq!(rec.limits, Some(LIM));
        assert_eq!(s.list(None).await.unwrap(), vec![k.record.clone()]);
    }

    #[tokio::test]
    async fn wrong_secret_with_right_id_rejected() {
        let s = KeyStore::in_memory().await.unwrap();
        let k = s.create("n", "a", None).await.unwrap();
        let mut bad = k.key.clone();
        let last = if bad.ends_with('A') { "B" } else { "A" };
        bad.replace_range(61.., last);
        assert_eq!(bad.len(), 62);
        assert!(s.verify(&bad).await.is_none());
        // Another valid key's secret with this id also fails.
        let k2 = s.create("n", "a", None).await.unwrap();
        let mixed = format!("{}{}", &k.key[..22], &k2.key[22..]);
        assert!(s.verify(&mixed).await.is_none());
    }

    #[tokio::test]
    async fn malformed_keys_rejected() {
        let s = KeyStore::in_memory().await.unwrap();
        let k = s.create("n", "a", None).await.unwrap();
        assert!(s.verify(&k.key[..61]).await.is_none());
        assert!(s.verify(&format!("{}x", k.key)).await.is_none());
        assert!(s.verify(&k.key.replacen("sk-cocoon-", "sk-cocoom-", 1)).await.is_none());
        assert!(s.verify(&k.key.replacen("sk-cocoon-", "sk-COCOON-", 1)).await.is_none());
        assert!(s.verify(&format!(" {}", &k.key[1..])).await.is_none());
        assert!(s.verify("").await.is_none());
        assert!(s.verify("sk-cocoon-").await.is_none());
        // Non-alphanumeric / multi-byte characters of the right byte length.
        let mut odd = k.key.clone();
        odd.replace_range(30..32, "é");
        assert_eq!(odd.len(), 62);
        assert!(s.verify(&odd).await.is_none());
        let mut dash = k.key.clone();
        dash.replace_range(15..16, "-");
        assert!(s.verify(&dash).await.is_none());
    }

    #[tokio::test]
    async fn revoked_rejected_and_accounts_are_separate() {
        let s = KeyStore::in_memory().await.unwrap();
        let k = s.create("n", "a", None).await.unwrap();
        let k2 = s.create("n", "a", None).await.unwrap();
        assert!(matches!(s.revoke(&k.record.id, Some("b")).await, Err(KeyStoreError::NotFound(_))));
        assert!(s.verify(&k.key).await.is_some());
        s.revoke(&k.record.id, Some("a")).await.unwrap();
        assert!(s.verify(&k.key).await.is_none());
        assert!(s.verify(&k2.key).await.is_some());
        assert!(s.list(Some("a")).await.unwrap().iter().any(|r| r.id == k.record.id && r.revoked));
        s.revoke(&k.record.id, None).await.unwrap(); // idempotent
        assert!(matches!(s.revoke("nope", None).await, Err(KeyStoreError::NotFound(_))));
        let renamed = s.rename(&k2.record.id, Some("a"), "  ci  ").await.unwrap();
        assert_eq!(renamed.name, "ci");
        assert!(matches!(s.rename(&k2.record.id, Some("a"), "\u{7}").await, Err(KeyStoreError::InvalidName(_))));
        assert!(matches!(s.create("", "a", None).await, Err(KeyStoreError::InvalidName(_))));
        assert!(matches!(s.create(&"x".repeat(101), "a", None).await, Err(KeyStoreError::InvalidName(_))));
    }

    /// Two stores on one database (two replicas): a key made on one works on the other at
    /// once (catch-up on the unknown id); a revocation reaches the other at its next poll.
    #[tokio::test]
    async fn replicas_share_keys_through_the_database() {
        let dir = tempfile_dir("replicas");
        let url = format!("sqlite:{}", dir.join("ledger.db").display());
        let opts = billing::LedgerOptions::default();
        let a = KeyStore::open(Ledger::connect(&url, opts).await.unwrap()).await.unwrap();
        let b = KeyStore::open(Ledger::connect(&url, opts).await.unwrap()).await.unwrap();
        let k = a.create("n", "acct", None).await.unwrap();
        assert_eq!(b.verify(&k.key).await.unwrap().id, k.record.id);
        a.revoke(&k.record.id, None).await.unwrap();
        // Still cached on b until it catches up.
        assert!(b.verify(&k.key).await.is_some());
        b.refresh().await.unwrap();
        assert!(b.verify(&k.key).await.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// More keys than one catch-up page: a store opened on them loads every one, and a
    /// second store catches up on changes that span pages.
    #[tokio::test]
    async fn loading_and_catching_up_span_pages() {
        let dir = tempfile_dir("pages");
        let url = format!("sqlite:{}", dir.join("ledger.db").display());
        let opts = billing::LedgerOptions::default();
        let a = KeyStore::open(Ledger::connect(&url, opts).await.unwrap()).await.unwrap();
        let b = KeyStore::open(Ledger::connect(&url, opts).await.unwrap()).await.unwrap();
        let n = REFRESH_PAGE as usize * 2 + 7;
        let mut keys = Vec::new();
        for i in 0..n {
            keys.push(a.create(&format!("k{i}"), "acct", None).await.unwrap());
        }
        let c = KeyStore::open(Ledger::connect(&url, opts).await.unwrap()).await.unwrap();
        b.refresh().await.unwrap();
        let newest = a.database().api_keys_since(0).await.unwrap().last().unwrap().version;
        for store in [&b, &c] {
            assert_eq!(store.read().by_id.len(), n);
            assert_eq!(store.read().version, newest);
        }
        for k in [&keys[0], &keys[REFRESH_PAGE as usize], &keys[n - 1]] {
            assert_eq!(c.verify(&k.key).await.unwrap().id, k.record.id);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Made-up keys share catch-up queries: a burst of 50 unknown ids costs a handful.
    #[tokio::test]
    async fn unknown_ids_share_catch_up_queries() {
        let s = KeyStore::in_memory().await.unwrap();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let bogus = format!("{KEY_PREFIX}{:0>52}", i);
                s.verify(&bogus).await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_none());
        }
        let versions_seen = s.read().version;
        assert_eq!(versions_seen, 0);
        // Queries are >= 50 ms apart unless shared: 50 callers in well under 50 x 50 ms.
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn imports_an_old_keys_json_once() {
        let dir = tempfile_dir("import");
        let path = dir.join("keys.json");
        // Written by the file-based store of earlier versions (gateway/src/keys.rs before the
        // database): a key "sk-cocoon-abcdefghijklSECRET..." and a revoked one.
        let key = format!("{KEY_PREFIX}abcdefghijkl{}", "s".repeat(40));
        let revoked = format!("{KEY_PREFIX}mnopqrstuvwx{}", "t".repeat(40));
        let json = format!(
            r#"[{{"id":"abcdefghijkl","sha256":"{}","name":"ci","account":"bob","created_at":1700000000,"limits":{{"requests_per_minute":5,"tokens_per_minute":0}}}},
               {{"id":"mnopqrstuvwx","sha256":"{}","name":"old","account":"bob","created_at":1700000001,"limits":null,"revoked":true}}]"#,
            hex::encode(sha256(key.as_bytes())),
            hex::encode(sha256(revoked.as_bytes()))
        );
        std::fs::write(&path, json).unwrap();
        let s = KeyStore::in_memory().await.unwrap();
        let r = s.import_legacy_file(&path).await.unwrap();
        assert_eq!(r, ImportReport { imported: 2, present: 0 });
        let rec = s.verify(&key).await.unwrap();
        assert_eq!((rec.account.as_str(), rec.name.as_str(), rec.created_at), ("bob", "ci", 1_700_000_000));
        assert_eq!(rec.limits, Some(Limits { requests_per_minute: 5, tokens_per_minute: 0 }));
        assert_eq!(rec.created_by, "import");
        assert!(s.verify(&revoked).await.is_none());
        // Again: nothing new; a revocation made since is not undone.
        s.revoke("abcdefghijkl", None).await.unwrap();
        assert_eq!(s.import_legacy_file(&path).await.unwrap(), ImportReport { imported: 0, present: 2 });
        assert!(s.verify(&key).await.is_none());
        assert_eq!(s.import_legacy_file(&dir.join("absent.json")).await.unwrap(), ImportReport::default());
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(s.import_legacy_file(&path).await, Err(KeyStoreError::Import { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cocoon-keys-test-{tag}-{}",
            Alphanumeric.sample_string(&mut OsRng, 10)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<KeyStore>();
    }
}
