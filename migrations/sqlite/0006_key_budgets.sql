-- Per-key spend budgets (issue 15), enforced in the hold's transaction.
-- A hold counting against a key's budgets records the key and the periods it counts in
-- (UTC day 'day:YYYY-MM-DD', UTC month 'month:YYYY-MM'); NULL: that budget was not set.
ALTER TABLE holds ADD COLUMN key_id TEXT;
ALTER TABLE holds ADD COLUMN budget_day TEXT;
ALTER TABLE holds ADD COLUMN budget_month TEXT;

-- What each key has committed in each period: its active holds' amounts plus its captured
-- charges (a capture replaces the hold's amount by the charge; a release or expiry removes
-- it). A hold is placed only if committed + amount <= budget.
CREATE TABLE key_spend (
    key_id    TEXT    NOT NULL,
    period    TEXT    NOT NULL,
    committed INTEGER NOT NULL CHECK (committed >= 0),
    PRIMARY KEY (key_id, period)
);
