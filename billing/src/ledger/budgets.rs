//! Per-key spend budgets, per UTC day and UTC month, enforced inside the hold's transaction.
//!
//! `key_spend.committed` is what a key has committed in a period: the amounts of its active
//! holds plus the charges of its captured ones. A hold is placed only if `committed + amount
//! <= budget` for every budget the key has, and adds its amount in the same transaction; a
//! capture replaces the amount by the charge (never more: a capture never exceeds its hold);
//! a release or expiry removes it. So concurrent requests cannot overshoot a budget: every
//! request counts at its worst case until it settles, exactly as the balance does.
//!
//! Serialisation: a key belongs to one account, and every write to its spend rows happens
//! while that account's row is locked (the hold and capture lock it first), so two
//! transactions of the same key, on any replica, never interleave.
//!
//! A hold counts in the periods current when it was placed, and settles there even if it is
//! captured after midnight. One case can exceed a budget: a hold the reaper expired (after
//! its TTL, default 2 h) and captured later counts its charge again although other requests
//! may have used the room meanwhile; that charge is real work the client received.

use sqlx::{AnyConnection, Row};

use crate::error::{Error, Result};
use crate::types::{BudgetPeriod, Hold, KeyBudget};

/// The periods `budget` constrains at `now_ms`: (period, label, limit, resets at ms).
pub(super) fn periods(budget: &KeyBudget, now_ms: i64) -> Result<Vec<(BudgetPeriod, String, i64, i64)>> {
    use chrono::{Datelike, TimeZone, Utc};
    let now = Utc.timestamp_millis_opt(now_ms).single().ok_or(Error::Overflow("budget time"))?;
    let mut out = Vec::with_capacity(2);
    if let Some(limit) = budget.daily_nanoton {
        let next = now.date_naive().succ_opt().ok_or(Error::Overflow("budget day"))?;
        let resets = next.and_hms_opt(0, 0, 0).ok_or(Error::Overflow("budget day"))?.and_utc().timestamp_millis();
        out.push((BudgetPeriod::Day, format!("day:{}", now.format("%Y-%m-%d")), limit, resets));
    }
    if let Some(limit) = budget.monthly_nanoton {
        let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
        let resets = Utc
            .with_ymd_and_hms(y, m, 1, 0, 0, 0)
            .single()
            .ok_or(Error::Overflow("budget month"))?
            .timestamp_millis();
        out.push((BudgetPeriod::Month, format!("month:{}", now.format("%Y-%m")), limit, resets));
    }
    Ok(out)
}

/// What `key_id` has committed in `label` (0 when nothing yet).
pub(super) async fn committed(conn: &mut AnyConnection, key_id: &str, label: &str) -> Result<i64> {
    Ok(sqlx::query("SELECT committed FROM key_spend WHERE key_id = $1 AND period = $2")
        .bind(key_id)
        .bind(label)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get::<i64, _>("committed"))
        .transpose()?
        .unwrap_or(0))
}

/// Refuses `amount` when it does not fit one of `budget`'s periods; returns the labels the
/// hold counts in. Reads only: a refusal writes nothing.
pub(super) async fn check(conn: &mut AnyConnection, budget: &KeyBudget, amount: i64, now_ms: i64) -> Result<(Option<String>, Option<String>)> {
    let mut labels = (None, None);
    for (period, label, limit, resets_at_ms) in periods(budget, now_ms)? {
        let used = committed(conn, &budget.key_id, &label).await?;
        let after = used.checked_add(amount).ok_or(Error::Overflow("budget"))?;
        if after > limit {
            return Err(Error::BudgetExceeded { period, budget: limit, committed: used, needed: amount, resets_at_ms });
        }
        match period {
            BudgetPeriod::Day => labels.0 = Some(label),
            BudgetPeriod::Month => labels.1 = Some(label),
        }
    }
    Ok(labels)
}

/// Adds `delta` (may be negative) to the hold's key's committed spend in each of its periods.
pub(super) async fn adjust(conn: &mut AnyConnection, hold: &Hold, delta: i64) -> Result<()> {
    let Some(key) = &hold.key_id else { return Ok(()) };
    if delta == 0 {
        return Ok(());
    }
    for label in [&hold.budget_day, &hold.budget_month].into_iter().flatten() {
        // The row exists once a hold counted in it; the first hold of a period inserts it.
        // (The caller holds the key's account row, so nobody inserts it meanwhile.)
        let updated = sqlx::query("UPDATE key_spend SET committed = committed + $3 WHERE key_id = $1 AND period = $2")
            .bind(key)
            .bind(label)
            .bind(delta)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if updated == 0 {
            sqlx::query("INSERT INTO key_spend (key_id, period, committed) VALUES ($1, $2, $3)")
                .bind(key)
                .bind(label)
                .bind(delta)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

impl super::Ledger {
    /// What `key_id` has committed (active holds and charges) in the current UTC day and
    /// month, for display.
    pub async fn key_spend(&self, key_id: &str, now: std::time::SystemTime) -> Result<(i64, i64)> {
        let now_ms = super::unix_ms(now);
        let budget = KeyBudget { key_id: key_id.to_owned(), daily_nanoton: Some(0), monthly_nanoton: Some(0) };
        let mut conn = self.read.acquire().await?;
        let mut out = (0, 0);
        for (period, label, _, _) in periods(&budget, now_ms)? {
            let used = committed(&mut conn, key_id, &label).await?;
            match period {
                BudgetPeriod::Day => out.0 = used,
                BudgetPeriod::Month => out.1 = used,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_their_resets_are_utc_calendar_boundaries() {
        let b = KeyBudget { key_id: "k".into(), daily_nanoton: Some(5), monthly_nanoton: Some(7) };
        // 2026-12-31T23:59:59.500Z: the day and the month both reset at 2027-01-01T00:00Z.
        let now = 1_798_761_599_500;
        let p = periods(&b, now).unwrap();
        assert_eq!(p[0].1, "day:2026-12-31");
        assert_eq!(p[1].1, "month:2026-12");
        assert_eq!(p[0].3, 1_798_761_600_000);
        assert_eq!(p[1].3, 1_798_761_600_000);
        // 2026-02-10: day resets on the 11th, month on March 1st.
        let p = periods(&b, 1_770_681_600_000).unwrap();
        assert_eq!((p[0].1.as_str(), p[0].3), ("day:2026-02-10", 1_770_768_000_000));
        assert_eq!((p[1].1.as_str(), p[1].3), ("month:2026-02", 1_772_323_200_000));
        let none = KeyBudget { key_id: "k".into(), daily_nanoton: None, monthly_nanoton: None };
        assert!(periods(&none, now).unwrap().is_empty());
    }
}
