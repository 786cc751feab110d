//! A worker id belongs to the identity key that first attested under it: another key
//! cannot take it over, so a worker cannot claim another's id, and earnings booked to an id
//! go to the identity that did the work. The binding store is a trait so that every gateway
//! replica sees the same bindings (the ledger database in `cocoon gateway`).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use attestation::receipt::IdentityPublicKey;

#[async_trait]
pub trait IdentityRegistry: Send + Sync {
    /// Binds `worker_id` to `identity` if it is unbound; Ok if it is bound to `identity`;
    /// otherwise the fingerprint of the identity that holds it.
    async fn bind(&self, worker_id: &str, identity: &IdentityPublicKey) -> Result<(), BindError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("worker id {worker_id:?} belongs to identity {holder}, not {claimant}")]
    Taken { worker_id: String, holder: String, claimant: String },
    #[error("identity store unavailable: {0}")]
    Unavailable(String),
}

/// In-process bindings (forgotten on restart; `cocoon` uses the database-backed store in
/// `cocoon::routing::LedgerIdentities`, and this one only where a router is built without it).
#[derive(Default)]
pub struct MemoryIdentities(Mutex<HashMap<String, IdentityPublicKey>>);

#[async_trait]
impl IdentityRegistry for MemoryIdentities {
    async fn bind(&self, worker_id: &str, identity: &IdentityPublicKey) -> Result<(), BindError> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(worker_id) {
            Some(k) if k == identity => Ok(()),
            Some(k) => Err(BindError::Taken {
                worker_id: worker_id.to_string(),
                holder: k.fingerprint(),
                claimant: identity.fingerprint(),
            }),
            None => {
                m.insert(worker_id.to_string(), *identity);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_identity_keeps_the_id() {
        let r = MemoryIdentities::default();
        let (a, b) = (IdentityPublicKey([1; 32]), IdentityPublicKey([2; 32]));
        r.bind("w1", &a).await.unwrap();
        r.bind("w1", &a).await.unwrap();
        assert!(matches!(r.bind("w1", &b).await, Err(BindError::Taken { .. })));
        r.bind("w2", &b).await.unwrap();
    }
}
