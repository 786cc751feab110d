//! Deposit codes: the short code a client writes as the comment of a TON transfer so that
//! the deposit watcher knows whose account to credit. Issuing one (random, unique, fixed
//! for the account's life) and reading one back from a comment live here; crediting the
//! transfer is `deposits`'.

use sqlx::Row;

use crate::error::{Error, Result};
use crate::ledger::{now_ms, Ledger};
use crate::types::{AccountId, AccountKind};

/// Characters of a deposit code (Crockford base32: no I, L, O, U).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of a deposit code: 40 random bits.
pub const DEPOSIT_CODE_LEN: usize = 8;

/// The deposit code a user meant, if `comment` has the shape of one: surrounding
/// whitespace, inner spaces and dashes are dropped, case is ignored, and the letters
/// Crockford base32 reads as digits (O → 0, I/L → 1) are mapped. `None` if what remains is
/// not exactly [`DEPOSIT_CODE_LEN`] code characters.
pub fn normalize_deposit_code(comment: &str) -> Option<String> {
    let mut code = String::with_capacity(DEPOSIT_CODE_LEN);
    for c in comment.trim().chars() {
        let c = match c.to_ascii_uppercase() {
            ' ' | '-' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) || code.len() >= DEPOSIT_CODE_LEN {
            return None;
        }
        code.push(c);
    }
    (code.len() == DEPOSIT_CODE_LEN).then_some(code)
}

fn random_code() -> String {
    // A v4 UUID's first six bytes are all random.
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u64 = 0;
    for b in &bytes[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..DEPOSIT_CODE_LEN)
        .rev()
        .map(|i| char::from(CODE_ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

impl Ledger {
    /// The deposit code of client account `client`, created on first use. Codes are 8
    /// Crockford base32 characters (40 random bits), unique, and never change.
    pub async fn deposit_code(&self, client: AccountId) -> Result<String> {
        if let Some(code) = self.existing_code(client).await? {
            return Ok(code);
        }
        match self.account(client).await? {
            None => return Err(Error::UnknownAccount(client)),
            Some(a) if a.kind != AccountKind::Client => {
                return Err(Error::WrongAccountKind {
                    id: client,
                    actual: a.kind,
                    expected: AccountKind::Client,
                })
            }
            Some(_) => {}
        }
        // A collision with another account's code (or a concurrent call for this one)
        // inserts nothing; try again with a fresh code.
        for _ in 0..8 {
            let inserted = self
                .retrying("deposit_code", || async {
                    Ok(sqlx::query(
                        "INSERT INTO deposit_codes (account_id, code, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING RETURNING code",
                    )
                    .bind(client.0)
                    .bind(random_code())
                    .bind(now_ms())
                    .fetch_optional(&self.write)
                    .await?)
                })
                .await?;
            if let Some(row) = inserted {
                return Ok(row.try_get(0)?);
            }
            if let Some(code) = self.existing_code(client).await? {
                return Ok(code);
            }
        }
        Err(Error::Corrupt("could not find a free deposit code".into()))
    }

    async fn existing_code(&self, client: AccountId) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT code FROM deposit_codes WHERE account_id = $1")
                .bind(client.0)
                .fetch_optional(&self.write)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?,
        )
    }

    /// The client account whose deposit code `comment` is (normalised as by
    /// [`normalize_deposit_code`]), if any.
    pub async fn deposit_code_owner(&self, comment: &str) -> Result<Option<AccountId>> {
        let Some(code) = normalize_deposit_code(comment) else {
            return Ok(None);
        };
        Ok(
            sqlx::query("SELECT account_id FROM deposit_codes WHERE code = $1")
                .bind(code)
                .fetch_optional(&self.read)
                .await?
                .map(|r| r.try_get(0).map(AccountId))
                .transpose()?,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_normalise() {
        assert_eq!(
            normalize_deposit_code(" ab12-cd34 ").as_deref(),
            Some("AB12CD34")
        );
        assert_eq!(
            normalize_deposit_code("oil0 IL10").as_deref(),
            Some("01101110")
        );
        assert_eq!(normalize_deposit_code("AB12CD3"), None);
        assert_eq!(normalize_deposit_code("AB12CD345"), None);
        assert_eq!(normalize_deposit_code("AB12CD3U"), None); // U is not a code letter
        assert_eq!(normalize_deposit_code("AB12CD3é"), None);
        assert_eq!(normalize_deposit_code(""), None);
        assert_eq!(normalize_deposit_code(&"A".repeat(10_000)), None);
    }

    #[test]
    fn random_codes_are_codes() {
        for _ in 0..1000 {
            let c = random_code();
            assert_eq!(normalize_deposit_code(&c).as_deref(), Some(c.as_str()));
        }
    }
}
