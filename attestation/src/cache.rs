//! Verified workers by HPKE key, until their attestation expires: evidence is checked once
//! per connection (a TDX quote costs ~50 ms to produce), not per request.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::binding::HpkePublicKey;
use crate::verifier::VerifiedWorker;

#[derive(Default)]
pub struct AttestationCache {
    inner: RwLock<HashMap<HpkePublicKey, VerifiedWorker>>,
}

impl AttestationCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, worker: VerifiedWorker) {
        if let Ok(mut map) = self.inner.write() {
            map.insert(worker.hpke_public_key, worker);
        }
    }

    /// The worker's verification if it has not expired at `now`; an expired one is dropped.
    pub fn get(&self, key: &HpkePublicKey, now: u64) -> Option<VerifiedWorker> {
        let found = self.inner.read().ok()?.get(key).cloned()?;
        if now <= found.expires_at {
            return Some(found);
        }
        self.remove(key);
        None
    }

    pub fn remove(&self, key: &HpkePublicKey) {
        if let Ok(mut map) = self.inner.write() {
            map.remove(key);
        }
    }

    /// Drops every expired entry; returns how many were dropped.
    pub fn prune(&self, now: u64) -> usize {
        let Ok(mut map) = self.inner.write() else {
            return 0;
        };
        let before = map.len();
        map.retain(|_, w| now <= w.expires_at);
        before.saturating_sub(map.len())
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
