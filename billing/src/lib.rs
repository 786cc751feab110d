//! Billing ledger (issue #5): nothing here yet.
