//! Nonces shared by gateway replicas through the real Redis at 127.0.0.1:6379
//! (`COCOON_TEST_REDIS_URL` to override): issued by one replica, spent once by any.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::{Nonce, NonceStore, NonceTake};
use router::fleet::RedisNonceStore;

fn url() -> String {
    std::env::var("COCOON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

#[tokio::test]
async fn a_nonce_issued_by_one_replica_is_spent_once_across_all() {
    let prefix = format!("cocoon-test-{}", uuid::Uuid::new_v4().simple());
    let a = RedisNonceStore::connect(&url(), &prefix).await.expect("redis at 127.0.0.1:6379");
    let b = RedisNonceStore::connect(&url(), &prefix).await.unwrap();
    let n = Nonce::random().unwrap();
    a.issue(n, 1_000, 1_300).await.unwrap();
    assert!(a.issue(n, 1_000, 1_300).await.is_err(), "re-issuing a live nonce is a collision");
    assert_eq!(b.take(&n, 1_001).await.unwrap(), NonceTake::Fresh { issued_at: 1_000 });
    assert_eq!(a.take(&n, 1_002).await.unwrap(), NonceTake::AlreadyUsed);
    assert_eq!(b.take(&Nonce::random().unwrap(), 1_002).await.unwrap(), NonceTake::Unknown);

    // Concurrent takes of one nonce: exactly one sees it fresh.
    let n = Nonce::random().unwrap();
    a.issue(n, 5, 100).await.unwrap();
    let (x, y) = tokio::join!(a.take(&n, 6), b.take(&n, 6));
    let fresh = [x.unwrap(), y.unwrap()].iter().filter(|t| matches!(t, NonceTake::Fresh { .. })).count();
    assert_eq!(fresh, 1);
}
