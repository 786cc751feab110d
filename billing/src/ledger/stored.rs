//! Stored Responses API objects (table `stored_responses`): opaque sealed blobs, per
//! account, with an expiry. The gateway seals and opens them (`gateway/src/stored.rs`); the
//! database only ever holds ciphertext.

use sqlx::Row;

use super::Ledger;
use crate::error::{Error, Result};
use crate::types::UnixMillis;

/// Longest id accepted (the worker makes `resp_` + 32 hex digits).
const MAX_ID_BYTES: usize = 128;

fn check(id: &str, account: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || account.is_empty() {
        return Err(Error::InvalidInput("stored response id must be 1 to 128 bytes, with an account".into()));
    }
    Ok(())
}

impl Ledger {
    /// Keeps `sealed` under `id` for `account` until `expires_at`. An id already stored is
    /// an error (ids are random; a repeat is a bug or a replay, never overwritten).
    pub async fn put_stored_response(
        &self,
        id: &str,
        account: &str,
        created_at: UnixMillis,
        expires_at: UnixMillis,
        sealed: &[u8],
    ) -> Result<()> {
        check(id, account)?;
        let done = self
            .retrying("put_stored_response", || async {
                Ok(sqlx::query(
                    "INSERT INTO stored_responses (id, account, created_at, expires_at, sealed) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(account)
                .bind(created_at)
                .bind(expires_at)
                .bind(sealed.to_vec())
                .execute(&self.write)
                .await?
                .rows_affected())
            })
            .await?;
        if done == 0 {
            return Err(Error::InvalidInput(format!("a response with id {id} is already stored")));
        }
        Ok(())
    }

    /// The sealed blob of `id` if it belongs to `account` and has not expired at `now`.
    /// Read through the writer, so a response stored a moment ago (maybe by another
    /// replica) is seen at once.
    pub async fn stored_response(&self, id: &str, account: &str, now: UnixMillis) -> Result<Option<Vec<u8>>> {
        if check(id, account).is_err() {
            return Ok(None);
        }
        let row = sqlx::query("SELECT sealed FROM stored_responses WHERE id = $1 AND account = $2 AND expires_at > $3")
            .bind(id)
            .bind(account)
            .bind(now)
            .fetch_optional(&self.write)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<Vec<u8>, _>("sealed")?),
            None => None,
        })
    }

    /// Deletes `id` of `account`; whether there was one.
    pub async fn delete_stored_response(&self, id: &str, account: &str) -> Result<bool> {
        if check(id, account).is_err() {
            return Ok(false);
        }
        let n = sqlx::query("DELETE FROM stored_responses WHERE id = $1 AND account = $2")
            .bind(id)
            .bind(account)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Deletes every response expired at `now`; how many.
    pub async fn purge_stored_responses(&self, now: UnixMillis) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM stored_responses WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{Ledger, LedgerOptions};

    #[tokio::test]
    async fn a_stored_response_is_its_accounts_until_it_expires() {
        let dir = std::env::temp_dir().join(format!("stored_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = Ledger::connect(&format!("sqlite:{}", dir.join("l.db").display()), LedgerOptions::default()).await.unwrap();
        l.put_stored_response("resp_1", "alice", 1_000, 5_000, b"sealed").await.unwrap();
        assert!(l.put_stored_response("resp_1", "alice", 1_000, 9_000, b"other").await.is_err(), "never overwritten");
        assert_eq!(l.stored_response("resp_1", "alice", 2_000).await.unwrap().as_deref(), Some(&b"sealed"[..]));
        assert_eq!(l.stored_response("resp_1", "bob", 2_000).await.unwrap(), None, "another account's");
        assert_eq!(l.stored_response("resp_1", "alice", 5_000).await.unwrap(), None, "expired");
        assert!(!l.delete_stored_response("resp_1", "bob").await.unwrap());
        l.put_stored_response("resp_2", "alice", 1_000, 3_000, b"x").await.unwrap();
        assert_eq!(l.purge_stored_responses(4_000).await.unwrap(), 1);
        assert!(l.delete_stored_response("resp_1", "alice").await.unwrap());
        assert_eq!(l.stored_response("resp_1", "alice", 2_000).await.unwrap(), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
