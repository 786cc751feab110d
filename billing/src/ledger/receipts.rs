//! Workers' signed receipts, kept with the charges they back (table `receipts`). The ledger
//! stores them as given and checks nothing cryptographic: the router verified each against
//! the worker's attested identity before it reached here, and anyone can verify it again
//! (`cocoon receipt verify`).

use std::collections::HashMap;

use sqlx::AnyConnection;
use sqlx::Row;
use uuid::Uuid;

use super::{now_ms, Ledger};
use crate::error::{Error, Result};

/// One stored receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReceipt {
    pub job_id: Uuid,
    /// Hex SHA-256 of `receipt`.
    pub sha256: String,
    /// Hex Ed25519 key that signed.
    pub signer: String,
    /// Hex Ed25519 signature.
    pub signature: String,
    /// The signed JSON, byte for byte.
    pub receipt: String,
}

fn hex_of_len(v: &str, len: usize, what: &str) -> Result<()> {
    if v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("receipt {what} must be {len} hex digits")))
    }
}

impl Ledger {
    /// Stores `r`; a second receipt for the same job is ignored (the first one stands, as
    /// the first capture does).
    pub async fn record_receipt(&self, r: &StoredReceipt) -> Result<()> {
        check_receipt(r)?;
        self.retrying("record_receipt", || async {
            let mut conn = self.write.acquire().await?;
            insert_receipt(&mut conn, r).await
        })
        .await
    }

    /// The stored receipts of `jobs` (those that have one).
    pub async fn receipts(&self, jobs: &[Uuid]) -> Result<HashMap<Uuid, StoredReceipt>> {
        let mut out = HashMap::new();
        // One query per job keeps the SQL portable across both backends; callers ask for a
        // page of usage rows (at most 100).
        for job in jobs {
            let row = sqlx::query("SELECT sha256, signer, signature, receipt FROM receipts WHERE job_id = $1")
                .bind(job.to_string())
                .fetch_optional(&self.read)
                .await?;
            if let Some(row) = row {
                out.insert(
                    *job,
                    StoredReceipt {
                        job_id: *job,
                        sha256: row.try_get("sha256")?,
                        signer: row.try_get("signer")?,
                        signature: row.try_get("signature")?,
                        receipt: row.try_get("receipt")?,
                    },
                );
            }
        }
        Ok(out)
    }
}

/// The hex fields have the lengths of a SHA-256, an Ed25519 key and signature.
pub(super) fn check_receipt(r: &StoredReceipt) -> Result<()> {
    hex_of_len(&r.sha256, 64, "sha256")?;
    hex_of_len(&r.signer, 64, "signer")?;
    hex_of_len(&r.signature, 128, "signature")
}

/// Writes `r` on `conn` (alone, or inside a group commit); a receipt already there stands.
pub(super) async fn insert_receipt(conn: &mut AnyConnection, r: &StoredReceipt) -> Result<()> {
    let q = sqlx::query(
        "INSERT INTO receipts (job_id, sha256, signer, signature, receipt, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(r.job_id.to_string());
    bind_receipt(q, r).bind(now_ms()).execute(&mut *conn).await?;
    Ok(())
}

/// Binds `r`'s `sha256, signer, signature, receipt`, in that order: the receipt's columns as
/// every insert of it (alone, or inside a capture's statement) numbers them.
pub(super) fn bind_receipt<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    r: &'q StoredReceipt,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&r.sha256).bind(&r.signer).bind(&r.signature).bind(&r.receipt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::LedgerOptions;

    fn receipt(job: Uuid, sig: char) -> StoredReceipt {
        StoredReceipt {
            job_id: job,
            sha256: "a".repeat(64),
            signer: "b".repeat(64),
            signature: sig.to_string().repeat(128),
            receipt: "{\"version\":1}".into(),
        }
    }

    #[tokio::test]
    async fn receipts_are_kept_once_per_job_and_checked_for_shape() {
        let l = Ledger::connect("sqlite::memory:", LedgerOptions::default()).await.unwrap();
        let job = Uuid::new_v4();
        l.record_receipt(&receipt(job, 'c')).await.unwrap();
        l.record_receipt(&receipt(job, 'd')).await.unwrap();
        let got = l.receipts(&[job, Uuid::new_v4()]).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&job].signature, "c".repeat(128), "the first receipt stands");
        let mut bad = receipt(Uuid::new_v4(), 'c');
        bad.signer = "zz".into();
        assert!(matches!(l.record_receipt(&bad).await, Err(Error::InvalidInput(_))));
    }
}

