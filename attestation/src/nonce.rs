//! Verifier nonces: issued with a time, usable once, within `max_evidence_age_secs`.
//! [`NonceStore`] is a trait so that gateway replicas can share one store (Redis: `SET nonce
//! issued_at NX EX window` to issue, `GETSET nonce used` / a Lua script to take); the
//! in-memory [`MemoryNonceStore`] serves a single process.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::binding::Nonce;

/// What taking a nonce found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceTake {
    /// First use: the nonce was issued at this time (unix seconds). It is now spent.
    Fresh { issued_at: u64 },
    /// Already taken once: a replay.
    AlreadyUsed,
    /// Never issued here, or forgotten after its window.
    Unknown,
}

/// Storage for issued nonces. Implementations must make `take` atomic: two concurrent takes of
/// the same nonce must not both see `Fresh`.
#[async_trait]
pub trait NonceStore: Send + Sync {
    /// Records a freshly issued nonce, to be forgotten after `expires_at` (unix seconds).
    async fn issue(&self, nonce: Nonce, issued_at: u64, expires_at: u64) -> Result<(), String>;
    /// Marks the nonce used and reports what it was before.
    async fn take(&self, nonce: &Nonce, now: u64) -> Result<NonceTake, String>;
}

#[derive(Clone, Copy)]
struct Entry {
    issued_at: u64,
    expires_at: u64,
    used: bool,
}

/// In-process nonce store. Used nonces are remembered until their window ends, so a replay
/// within the window is reported as such; afterwards it is `Unknown` (still rejected).
#[derive(Default)]
pub struct MemoryNonceStore {
    entries: Mutex<HashMap<Nonce, Entry>>,
}

impl MemoryNonceStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of remembered nonces (issued or used, not yet expired at the last prune).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl NonceStore for MemoryNonceStore {
    async fn issue(&self, nonce: Nonce, issued_at: u64, expires_at: u64) -> Result<(), String> {
        let mut map = self
            .entries
            .lock()
            .map_err(|_| "nonce store lock poisoned".to_string())?;
        map.retain(|_, e| e.expires_at >= issued_at);
        if map.contains_key(&nonce) {
            return Err("nonce collision: this nonce was already issued".into());
        }
        map.insert(
            nonce,
            Entry {
                issued_at,
                expires_at,
                used: false,
            },
        );
        Ok(())
    }

    async fn take(&self, nonce: &Nonce, now: u64) -> Result<NonceTake, String> {
        let mut map = self
            .entries
            .lock()
            .map_err(|_| "nonce store lock poisoned".to_string())?;
        map.retain(|_, e| e.expires_at >= now);
        Ok(match map.get_mut(nonce) {
            None => NonceTake::Unknown,
            Some(e) if e.used => NonceTake::AlreadyUsed,
            Some(e) => {
                e.used = true;
                NonceTake::Fresh {
                    issued_at: e.issued_at,
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn single_use_within_window_then_forgotten() {
        let store = MemoryNonceStore::new();
        let n = Nonce([9; 32]);
        assert_eq!(store.take(&n, 10).await.unwrap(), NonceTake::Unknown);
        store.issue(n, 100, 400).await.unwrap();
        assert!(store.issue(n, 100, 400).await.is_err());
        assert_eq!(
            store.take(&n, 150).await.unwrap(),
            NonceTake::Fresh { issued_at: 100 }
        );
        assert_eq!(store.take(&n, 151).await.unwrap(), NonceTake::AlreadyUsed);
        assert_eq!(store.take(&n, 401).await.unwrap(), NonceTake::Unknown);
        assert!(store.is_empty());
    }
}
