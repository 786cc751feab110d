//! Per-model prices.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Ledger};
use crate::error::{Error, Result};
use crate::money::Price;
use crate::types::ModelPrice;

impl Ledger {
    /// Sets (or replaces) `model`'s price. Holds already placed keep the price they fixed.
    pub async fn set_price(&self, model: &str, price: Price) -> Result<()> {
        if !price.is_valid() {
            return Err(Error::InvalidPrice {
                model: model.to_owned(),
            });
        }
        self.retrying("set_price", || async {
            sqlx::query(
                "INSERT INTO prices (model, prompt, cached_prompt, completion, reasoning, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (model) DO UPDATE SET prompt = excluded.prompt, \
                   cached_prompt = excluded.cached_prompt, completion = excluded.completion, \
                   reasoning = excluded.reasoning, updated_at = excluded.updated_at",
            )
            .bind(model)
            .bind(price.prompt)
            .bind(price.cached_prompt)
            .bind(price.completion)
            .bind(price.reasoning)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
            Ok(())
        })
        .await
    }

    /// `model`'s current price, if set.
    pub async fn price(&self, model: &str) -> Result<Option<Price>> {
        sqlx::query("SELECT * FROM prices WHERE model = $1")
            .bind(model)
            .fetch_optional(&self.read)
            .await?
            .map(|r| Ok(model_price(&r)?.price))
            .transpose()
    }

    /// Every model's price, by model name.
    pub async fn prices(&self) -> Result<Vec<ModelPrice>> {
        sqlx::query("SELECT * FROM prices ORDER BY model")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(model_price)
            .collect()
    }
}

fn model_price(row: &AnyRow) -> Result<ModelPrice> {
    Ok(ModelPrice {
        model: row.try_get("model")?,
        price: Price {
            prompt: row.try_get("prompt")?,
            cached_prompt: row.try_get("cached_prompt")?,
            completion: row.try_get("completion")?,
            reasoning: row.try_get("reasoning")?,
        },
        updated_at_ms: row.try_get("updated_at")?,
    })
}
