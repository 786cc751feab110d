//! Verifier nonces: issued with a time, usable once, within `max_evidence_age_secs`.
//! [`NonceStore`] is a trait so that gateway replicas can share one store (Redis: `SET nonce
//! issued_at NX EX window` to issue, `GETSET nonce used` / a Lua script to take); the
//! in-memory [`MemoryNonceStore`] serves a single process.

use std::collections::{HashMap, VecDeque};
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
    used: bool,
}

/// In-process nonce store. Used nonces are remembered until their window ends, so a replay
/// within the window is reported as such; afterwards it is `Unknown` (still rejected).
///
/// O(1) per nonce: expired entries are dropped from the front of a queue kept in expiry
/// order (each is pushed and popped once), rather than by scanning the whole map on every
/// call, so a flood of challenges costs the same per nonce as a trickle.
#[derive(Default)]
pub struct MemoryNonceStore {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Nonce, Entry>,
    /// (expires_at, nonce), oldest expiry first.
    expiry: VecDeque<(u64, Nonce)>,
}

impl Entries {
    fn prune(&mut self, now: u64) {
        while let Some(&(at, n)) = self.expiry.front() {
            if at >= now {
                break;
            }
            self.expiry.pop_front();
            self.map.remove(&n);
        }
    }
}

impl MemoryNonceStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of remembered nonces (issued or used, not yet expired at the last prune).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl NonceStore for MemoryNonceStore {
    async fn issue(&self, nonce: Nonce, issued_at: u64, expires_at: u64) -> Result<(), String> {
        let mut e = self
            .inner
            .lock()
            .map_err(|_| "nonce store lock poisoned".to_string())?;
        e.prune(issued_at);
        if e.map.contains_key(&nonce) {
            return Err("nonce collision: this nonce was already issued".into());
        }
        e.map.insert(
            nonce,
            Entry {
                issued_at,
                used: false,
            },
        );
        // Windows are one fixed length, so expiries arrive in order; a rare out-of-order
        // one (clock step) is only pruned a little late.
        e.expiry.push_back((expires_at, nonce));
        Ok(())
    }

    async fn take(&self, nonce: &Nonce, now: u64) -> Result<NonceTake, String> {
        let mut e = self
            .inner
            .lock()
            .map_err(|_| "nonce store lock poisoned".to_string())?;
        e.prune(now);
        Ok(match e.map.get_mut(nonce) {
            None => NonceTake::Unknown,
            Some(entry) if entry.used => NonceTake::AlreadyUsed,
            Some(entry) => {
                entry.used = true;
                NonceTake::Fresh {
                    issued_at: entry.issued_at,
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

    /// Cost per nonce does not grow with the number remembered: 200k issued within one
    /// window (a flood of challenges) cost about what the first 1k did, per nonce.
    #[tokio::test]
    async fn issuing_stays_constant_time_per_nonce_under_a_flood() {
        let store = MemoryNonceStore::new();
        let time = |from: u32, to: u32| {
            let store = &store;
            async move {
                let t = std::time::Instant::now();
                for i in from..to {
                    let mut b = [0u8; 32];
                    b[..4].copy_from_slice(&i.to_le_bytes());
                    store.issue(Nonce(b), 1000, 1300).await.unwrap();
                }
                t.elapsed().as_secs_f64() / f64::from(to - from)
            }
        };
        let first = time(0, 1_000).await;
        let later = time(199_000, 200_000).await;
        let _ = time(1_000, 199_000).await;
        let last = time(200_000, 201_000).await;
        assert_eq!(store.len(), 200_000 + 1_000);
        // With a full scan per call, the last 1k would cost ~200x the first.
        assert!(last < first * 20.0 + 5e-6, "per nonce: first {first:e} s, later {later:e} s, last {last:e} s");
        // Expired entries go in one pass once their window ends.
        store.take(&Nonce([0xff; 32]), 1301).await.unwrap();
        assert!(store.is_empty());
    }
}
