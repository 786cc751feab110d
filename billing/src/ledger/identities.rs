//! Worker-id bindings (table `worker_identities`): the store behind the router's rule that a
//! worker id belongs to the first attested identity key that used it. Kept in the gateway's
//! database so every replica sees one binding and a restart forgets none.

use sqlx::Row;

use super::{now_ms, Ledger};
use crate::error::{Error, Result};

impl Ledger {
    /// Binds `worker_id` to `identity_hex` (64 hex digits) unless it is already bound, and
    /// returns the identity that holds it now: `identity_hex` itself, or the earlier holder.
    /// The insert-if-absent is one statement, so two replicas racing on a new id agree on
    /// one winner.
    pub async fn bind_worker_identity(&self, worker_id: &str, identity_hex: &str) -> Result<String> {
        if identity_hex.len() != 64 || !identity_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput("worker identity must be 64 hex digits".into()));
        }
        if worker_id.is_empty() || worker_id.len() > 256 {
            return Err(Error::InvalidInput("worker id must be 1 to 256 bytes".into()));
        }
        let identity = identity_hex.to_ascii_lowercase();
        self.retrying("bind_worker_identity", || async {
            sqlx::query(
                "INSERT INTO worker_identities (worker_id, identity, bound_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (worker_id) DO NOTHING",
            )
            .bind(worker_id)
            .bind(&identity)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
            // Read through the writer: the row another replica may just have won is
            // committed, and the reader pool could lag a SQLite WAL snapshot.
            let row = sqlx::query("SELECT identity FROM worker_identities WHERE worker_id = $1")
                .bind(worker_id)
                .fetch_one(&self.write)
                .await?;
            Ok(row.try_get::<String, _>("identity")?)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{Ledger, LedgerOptions};

    const A: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
    const B: &str = "bb00000000000000000000000000000000000000000000000000000000000000";

    /// Two handles on one database file stand for two replicas, or one gateway before and
    /// after a restart: the first identity keeps the id on both.
    #[tokio::test]
    async fn the_first_identity_keeps_a_worker_id_across_handles() {
        let dir = std::env::temp_dir().join(format!("identities_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("l.db").display());
        let one = Ledger::connect(&url, LedgerOptions::default()).await.unwrap();
        assert_eq!(one.bind_worker_identity("w1", A).await.unwrap(), A);
        assert_eq!(one.bind_worker_identity("w1", A).await.unwrap(), A, "the holder again");
        drop(one);
        let two = Ledger::connect(&url, LedgerOptions::default()).await.unwrap();
        assert_eq!(two.bind_worker_identity("w1", B).await.unwrap(), A, "B cannot take w1");
        assert_eq!(two.bind_worker_identity("w2", B).await.unwrap(), B, "other ids are free");
        assert!(two.bind_worker_identity("w3", "zz").await.is_err());
        assert!(two.bind_worker_identity("", A).await.is_err());
        drop(two);
        let _ = std::fs::remove_dir_all(dir);
    }
}
