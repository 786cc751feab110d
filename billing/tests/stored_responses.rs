//! Stored Responses API blobs (`billing/src/ledger/stored.rs`) on SQLite and Postgres: kept
//! per account until they expire, never overwritten, deleted and purged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use billing::Ledger;
use common::TestDb;

async fn life_cycle(l: &Ledger) {
    let blob: Vec<u8> = (0..=255u8).collect();
    l.put_stored_response("resp_1", "alice", 1_000, 5_000, &blob).await.unwrap();
    assert!(l.put_stored_response("resp_1", "bob", 1_000, 9_000, b"x").await.is_err(), "an id is never reused");
    assert_eq!(l.stored_response("resp_1", "alice", 2_000).await.unwrap(), Some(blob.clone()), "bytes kept exactly");
    assert_eq!(l.stored_response("resp_1", "bob", 2_000).await.unwrap(), None);
    assert_eq!(l.stored_response("resp_1", "alice", 5_000).await.unwrap(), None, "expired");
    l.put_stored_response("resp_2", "alice", 1_000, 3_000, b"y").await.unwrap();
    assert_eq!(l.purge_stored_responses(4_000).await.unwrap(), 1);
    assert!(!l.delete_stored_response("resp_1", "bob").await.unwrap());
    assert!(l.delete_stored_response("resp_1", "alice").await.unwrap());
    assert!(!l.delete_stored_response("resp_1", "alice").await.unwrap());
}

#[tokio::test]
async fn sqlite() {
    let db = TestDb::sqlite().await;
    life_cycle(&db.ledger).await;
    db.finish().await;
}

#[tokio::test]
async fn postgres() {
    let db = TestDb::postgres().await;
    life_cycle(&db.ledger).await;
    db.finish().await;
}
