//! API keys: `sk-cocoon-` + 12-char lookup id + 40-char secret (base62).
//!
//! Only the SHA-256 of the full key is stored. The id is public within the
//! store (it names the key in listings and lets us find the record without
//! scanning); the secret part carries ~238 bits of entropy, so a fast hash is
//! sufficient (no password-style stretching needed).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ratelimit::Limits;

pub const KEY_PREFIX: &str = "sk-cocoon-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const KEY_LEN: usize = KEY_PREFIX.len() + ID_LEN + SECRET_LEN;

/// Minimum spacing between disk checks triggered by unknown ids or by
/// hits, so a flood of bogus keys cannot turn into a flood of syscalls.
const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct KeyRecord {
    /// The 12-char lookup id (public part of the key).
    pub id: String,
    /// Hex of sha256(full key).
    pub sha256: String,
    pub name: String,
    pub account: String,
    /// Unix seconds.
    pub created_at: u64,
    pub limits: Option<Limits>,
    #[serde(default)]
    pub revoked: bool,
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
    #[error("key store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key store {}: invalid JSON: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no such key: {0}")]
    NotFound(String),
}

/// Identifies one version of the key file. The inode changes on every
/// atomic replace, so this catches updates even within one mtime tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    mtime: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            mtime: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: meta.ino(),
        }
    }
}

struct State {
    records: Vec<KeyRecord>,
    /// Version of the file `records` was loaded from (None: file absent).
    loaded: Option<Fingerprint>,
    /// Last disk check caused by an unknown id that found nothing new.
    miss_checked: Option<Instant>,
    /// Last disk check caused by a successful lookup (revocation pickup).
    hit_checked: Option<Instant>,
}

/// A set of API keys, optionally persisted to a JSON file shared with the
/// `cocoon keys` CLI. Send + Sync.
pub struct KeyStore {
    path: Option<PathBuf>,
    state: RwLock<State>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Returns the lookup id if `presented` has the exact key shape.
fn parse_key(presented: &str) -> Option<&str> {
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

fn io_err(path: &Path, source: std::io::Error) -> KeyStoreError {
    KeyStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the file; a missing file is an empty store.
fn read_file(path: &Path) -> Result<(Vec<KeyRecord>, Option<Fingerprint>), KeyStoreError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(io_err(path, e)),
    };
    // Fingerprint the handle we read, so a concurrent replace is noticed next time.
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    warn_if_permissive(path, &meta);
    let records: Vec<KeyRecord> =
        serde_json::from_reader(std::io::BufReader::new(file)).map_err(|source| {
            KeyStoreError::Parse {
                path: path.to_owned(),
                source,
            }
        })?;
    Ok((records, Some(Fingerprint::of(&meta))))
}

fn warn_if_permissive(path: &Path, meta: &fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "API key file is readable by group/others; expected mode 0600");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    fs::metadata(path).ok().map(|m| Fingerprint::of(&m))
}

/// Atomically replaces `path` with `records`: write a 0600 temp file in the
/// same directory, fsync, rename over. Readers never see a partial file.
fn write_file(path: &Path, records: &[KeyRecord]) -> Result<Option<Fingerprint>, KeyStoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map_or_else(|| "keys".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        Alphanumeric.sample_string(&mut OsRng, 8)
    ));

    // First `cocoon keys create` on a fresh host: the data dir may not exist yet.
    if !dir.exists() {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&dir).map_err(|e| io_err(&dir, e))?;
    }
    let json = serde_json::to_vec_pretty(records).map_err(|source| KeyStoreError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself; best effort (not all filesystems allow it).
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(fingerprint(path))
}

impl KeyStore {
    /// A JSON file (array of KeyRecord). Missing file = empty store; the file
    /// is created (mode 0600) by the first `create`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, KeyStoreError> {
        let path = path.into();
        let (records, loaded) = read_file(&path)?;
        Ok(KeyStore {
            path: Some(path),
            state: RwLock::new(State {
                records,
                loaded,
                miss_checked: None,
                hit_checked: None,
            }),
        })
    }

    pub fn in_memory() -> Self {
        KeyStore {
            path: None,
            state: RwLock::new(State {
                records: Vec::new(),
                loaded: None,
                miss_checked: None,
                hit_checked: None,
            }),
        }
    }

    /// Lock helpers: a poisoned lock still guards a consistent Vec (every
    /// mutation is a single push/assignment), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the freshest records and persists the result. Re-reading
    /// first keeps us from overwriting keys another process (the CLI) added.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Vec<KeyRecord>) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let mut st = self.write();
        let Some(path) = &self.path else {
            return f(&mut st.records);
        };
        let (mut records, _) = read_file(path)?;
        let out = f(&mut records)?;
        let fp = write_file(path, &records)?;
        st.records = records;
        st.loaded = fp;
        Ok(out)
    }

    /// Creates and persists a new key. The plaintext is only in the result.
    pub fn create(
        &self,
        name: &str,
        account: &str,
        limits: Option<Limits>,
    ) -> Result<NewKey, KeyStoreError> {
        self.mutate(|records| {
            let (id, key) = loop {
                let id = Alphanumeric.sample_string(&mut OsRng, ID_LEN);
                // 62^12 ids make a clash practically impossible; checking is cheap.
                if records.iter().all(|r| r.id != id) {
                    let secret = Alphanumeric.sample_string(&mut OsRng, SECRET_LEN);
                    break (id.clone(), format!("{KEY_PREFIX}{id}{secret}"));
                }
            };
            let record = KeyRecord {
                id,
                sha256: hex::encode(sha256(key.as_bytes())),
                name: name.to_owned(),
                account: account.to_owned(),
                created_at: now_unix(),
                limits,
                revoked: false,
            };
            records.push(record.clone());
            Ok(NewKey { key, record })
        })
    }

    /// Marks a key revoked (idempotent). The record stays for auditing.
    pub fn revoke(&self, id: &str) -> Result<(), KeyStoreError> {
        self.mutate(|records| {
            let rec = records
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
            rec.revoked = true;
            Ok(())
        })
    }

    pub fn list(&self) -> Vec<KeyRecord> {
        self.read().records.clone()
    }

    /// Reloads from disk if the file changed since we loaded it, at most once
    /// per RELOAD_INTERVAL per trigger kind. Returns whether records changed.
    fn refresh(&self, on_miss: bool) -> bool {
        let Some(path) = &self.path else { return false };
        let due = |last: Option<Instant>| last.is_none_or(|t| t.elapsed() >= RELOAD_INTERVAL);
        {
            let st = self.read();
            if !due(if on_miss {
                st.miss_checked
            } else {
                st.hit_checked
            }) {
                return false;
            }
        }
        let mut st = self.write();
        // Re-check under the write lock: another thread may have just done it.
        let last = if on_miss {
            &mut st.miss_checked
        } else {
            &mut st.hit_checked
        };
        if !due(*last) {
            return false;
        }
        *last = Some(Instant::now());
        let current = fingerprint(path);
        if current == st.loaded {
            return false;
        }
        match read_file(path) {
            Ok((records, fp)) => {
                st.records = records;
                st.loaded = fp;
                if on_miss {
                    // Something did change; don't make the next new key wait a second.
                    st.miss_checked = None;
                }
                true
            }
            Err(e) => {
                // Keep serving the last good set (e.g. a hand edit in progress).
                tracing::warn!(error = %e, "failed to reload API key file; keeping previous keys");
                false
            }
        }
    }

    fn lookup(&self, id: &str, digest: &[u8; 32]) -> Option<Option<KeyRecord>> {
        let st = self.read();
        let rec = st.records.iter().find(|r| r.id == id)?;
        let mut stored = [0u8; 32];
        let matches = hex::decode_to_slice(&rec.sha256, &mut stored).is_ok()
            && bool::from(stored.ct_eq(digest));
        Some((matches && !rec.revoked).then(|| rec.clone()))
    }

    /// Returns the record for a valid, unrevoked key. The hash comparison is
    /// constant time. On an unknown id the file is reloaded if it changed
    /// (another process ran `cocoon keys create`), at most once per second.
    /// Hits also re-check the file at most once per second so revocations
    /// made by other processes take effect promptly.
    pub fn verify(&self, presented: &str) -> Option<KeyRecord> {
        let id = parse_key(presented)?;
        let digest = sha256(presented.as_bytes());
        match self.lookup(id, &digest) {
            Some(found) => {
                if self.refresh(false) {
                    return self.lookup(id, &digest).flatten();
                }
                found
            }
            None => {
                if self.refresh(true) {
                    self.lookup(id, &digest).flatten()
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tmp_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cocoon-keys-test-{tag}-{}",
            Alphanumeric.sample_string(&mut OsRng, 10)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir.join("keys.json")
    }

    const LIM: Limits = Limits {
        requests_per_minute: 10,
        tokens_per_minute: 1000,
    };

    #[test]
    fn key_format() {
        let s = KeyStore::in_memory();
        let k = s.create("n", "acct", None).unwrap();
        assert_eq!(k.key.len(), 62);
        assert!(k.key.starts_with(KEY_PREFIX));
        assert!(k.key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(&k.key[10..22], k.record.id);
        assert_eq!(k.record.sha256.len(), 64);
        let k2 = s.create("n", "acct", None).unwrap();
        assert_ne!(k.key, k2.key);
        assert_ne!(k.record.id, k2.record.id);
        // Debug never shows the key.
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.key[22..]));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn create_and_verify() {
        let s = KeyStore::in_memory();
        let k = s.create("laptop", "alice", Some(LIM)).unwrap();
        let rec = s.verify(&k.key).unwrap();
        assert_eq!(rec, k.record);
        assert_eq!(rec.account, "alice");
        assert_eq!(rec.limits, Some(LIM));
        assert_eq!(s.list(), vec![k.record.clone()]);
    }

    #[test]
    fn wrong_secret_with_right_id_rejected() {
        let s = KeyStore::in_memory();
        let k = s.create("n", "a", None).unwrap();
        let mut bad = k.key.clone();
        let last = if bad.ends_with('A') { "B" } else { "A" };
        bad.replace_range(61.., last);
        assert_eq!(bad.len(), 62);
        assert!(s.verify(&bad).is_none());
        // Another valid key's secret with this id also fails.
        let k2 = s.create("n", "a", None).unwrap();
        let mixed = format!("{}{}", &k.key[..22], &k2.key[22..]);
        assert!(s.verify(&mixed).is_none());
    }

    #[test]
    fn malformed_keys_rejected() {
        let s = KeyStore::in_memory();
        let k = s.create("n", "a", None).unwrap();
        assert!(s.verify(&k.key[..61]).is_none());
        assert!(s.verify(&format!("{}x", k.key)).is_none());
        assert!(s
            .verify(&k.key.replacen("sk-cocoon-", "sk-cocoom-", 1))
            .is_none());
        assert!(s
            .verify(&k.key.replacen("sk-cocoon-", "sk-COCOON-", 1))
            .is_none());
        assert!(s.verify(&format!(" {}", &k.key[1..])).is_none());
        assert!(s.verify("").is_none());
        assert!(s.verify("sk-cocoon-").is_none());
        // Non-alphanumeric / multi-byte characters of the right byte length.
        let mut odd = k.key.clone();
        odd.replace_range(30..32, "é");
        assert_eq!(odd.len(), 62);
        assert!(s.verify(&odd).is_none());
        let mut dash = k.key.clone();
        dash.replace_range(15..16, "-");
        assert!(s.verify(&dash).is_none());
    }

    #[test]
    fn revoked_rejected() {
        let s = KeyStore::in_memory();
        let k = s.create("n", "a", None).unwrap();
        let k2 = s.create("n", "a", None).unwrap();
        s.revoke(&k.record.id).unwrap();
        assert!(s.verify(&k.key).is_none());
        assert!(s.verify(&k2.key).is_some());
        assert!(s.list().iter().any(|r| r.id == k.record.id && r.revoked));
        s.revoke(&k.record.id).unwrap(); // idempotent
        assert!(matches!(s.revoke("nope"), Err(KeyStoreError::NotFound(_))));
    }

    #[test]
    fn file_persistence_mode_and_no_plaintext() {
        let path = tmp_path("persist");
        let s = KeyStore::open(&path).unwrap();
        assert!(s.list().is_empty());
        assert!(!path.exists()); // missing file is an empty store
        let k = s.create("ci", "bob", Some(LIM)).unwrap();
        let raw = fs::read_to_string(&path).unwrap();
        assert!(!raw.contains(&k.key));
        assert!(!raw.contains(&k.key[22..]));
        assert!(raw.contains(&k.record.sha256));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // No temp files left behind.
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);

        s.revoke(&k.record.id).unwrap();
        let k2 = s.create("ci2", "bob", None).unwrap();
        let reopened = KeyStore::open(&path).unwrap();
        assert_eq!(reopened.list(), s.list());
        assert!(reopened.verify(&k.key).is_none());
        assert_eq!(reopened.verify(&k2.key).unwrap().name, "ci2");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn creates_missing_parent_directory() {
        let path = tmp_path("mkdir");
        let root = path.parent().unwrap().to_owned();
        let nested = root.join("a/b/keys.json");
        let s = KeyStore::open(&nested).unwrap();
        let k = s.create("n", "a", None).unwrap();
        assert!(KeyStore::open(&nested).unwrap().verify(&k.key).is_some());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn second_instance_sees_new_keys_on_miss() {
        let path = tmp_path("shared");
        let gateway = KeyStore::open(&path).unwrap();
        let cli = KeyStore::open(&path).unwrap();
        let k1 = cli.create("one", "a", None).unwrap();
        assert_eq!(gateway.verify(&k1.key).unwrap().id, k1.record.id);
        // A second key right away is also picked up (a reload that found a
        // change does not start the one-second throttle).
        let k2 = cli.create("two", "a", None).unwrap();
        assert_eq!(gateway.verify(&k2.key).unwrap().id, k2.record.id);
        // The gateway creating a key must not drop keys the CLI added.
        let k3 = gateway.create("three", "a", None).unwrap();
        let k4 = cli.create("four", "a", None).unwrap();
        let ids: Vec<_> = KeyStore::open(&path)
            .unwrap()
            .list()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            ids,
            vec![
                k1.record.id.clone(),
                k2.record.id,
                k3.record.id,
                k4.record.id
            ]
        );
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn unknown_ids_throttle_disk_checks() {
        let path = tmp_path("throttle");
        let gateway = KeyStore::open(&path).unwrap();
        let cli = KeyStore::open(&path).unwrap();
        let bogus = format!("{KEY_PREFIX}{}", "a".repeat(52));
        assert!(gateway.verify(&bogus).is_none()); // checks disk: nothing new
        let k = cli.create("n", "a", None).unwrap();
        // Within the same second a miss does not hit the disk again...
        assert!(gateway.verify(&k.key).is_none());
        std::thread::sleep(RELOAD_INTERVAL);
        // ...but after it, the new key is found.
        assert!(gateway.verify(&k.key).is_some());
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn revocation_by_other_process_is_picked_up() {
        let path = tmp_path("revoke");
        let cli = KeyStore::open(&path).unwrap();
        let k = cli.create("n", "a", None).unwrap();
        let gateway = KeyStore::open(&path).unwrap();
        assert!(gateway.verify(&k.key).is_some());
        cli.revoke(&k.record.id).unwrap();
        std::thread::sleep(RELOAD_INTERVAL);
        assert!(gateway.verify(&k.key).is_none());
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_and_reload_keeps_last_good() {
        let path = tmp_path("corrupt");
        fs::write(&path, "not json").unwrap();
        assert!(matches!(
            KeyStore::open(&path),
            Err(KeyStoreError::Parse { .. })
        ));

        fs::remove_file(&path).unwrap();
        let s = KeyStore::open(&path).unwrap();
        let k = s.create("n", "a", None).unwrap();
        let gateway = KeyStore::open(&path).unwrap();
        fs::write(&path, "[ broken").unwrap();
        assert!(gateway
            .verify(&format!("{KEY_PREFIX}{}", "b".repeat(52)))
            .is_none());
        assert!(gateway.verify(&k.key).is_some());
        // Mutations refuse to clobber a file they cannot parse.
        assert!(matches!(
            s.create("x", "a", None),
            Err(KeyStoreError::Parse { .. })
        ));
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn records_without_revoked_field_parse() {
        let json = r#"[{"id":"abcdefghijkl","sha256":"00","name":"n","account":"a","created_at":1,"limits":null}]"#;
        let recs: Vec<KeyRecord> = serde_json::from_str(json).unwrap();
        assert!(!recs[0].revoked);
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<KeyStore>();
    }
}
