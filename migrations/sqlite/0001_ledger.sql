-- Double-entry nanoTON ledger. Same semantics as ../postgres/0001_ledger.sql.

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL CHECK (kind IN ('client', 'worker', 'fee', 'clearing')),
    external_id TEXT    NOT NULL,
    -- Cached sum of entries for kinds 'client' and 'clearing' (0 for the others, whose
    -- balance is always read from entries so that captures never share a hot row).
    balance     INTEGER NOT NULL DEFAULT 0,
    -- Cached sum of active holds ('client' only).
    held        INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at  INTEGER NOT NULL,
    UNIQUE (kind, external_id),
    CHECK (kind <> 'client' OR (balance >= 0 AND held <= balance))
);
-- Exactly one fee account and one deposits-clearing (TON hot wallet) account.
CREATE UNIQUE INDEX accounts_one_system ON accounts (kind) WHERE kind IN ('fee', 'clearing');
INSERT INTO accounts (kind, external_id, created_at) VALUES
    ('fee', 'network-fee', 0),
    ('clearing', 'ton-hot-wallet', 0);

CREATE TABLE transactions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL CHECK (kind IN ('credit', 'capture')),
    -- Credits: the caller's idempotency key (e.g. deposit tx hash:lt).
    idempotency_key TEXT,
    -- Captures: the job id.
    job_id          TEXT,
    memo            TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL
);

CREATE UNIQUE INDEX transactions_idempotency_key ON transactions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One entry per account per transaction.
CREATE TABLE entries (
    transaction_id INTEGER NOT NULL REFERENCES transactions (id),
    account_id     INTEGER NOT NULL REFERENCES accounts (id),
    amount         INTEGER NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (transaction_id, account_id)
);
CREATE INDEX entries_account ON entries (account_id);

CREATE TABLE prices (
    model         TEXT PRIMARY KEY,
    prompt        INTEGER NOT NULL CHECK (prompt >= 0),
    cached_prompt INTEGER NOT NULL CHECK (cached_prompt >= 0),
    completion    INTEGER NOT NULL CHECK (completion >= 0),
    reasoning     INTEGER NOT NULL CHECK (reasoning >= 0),
    updated_at    INTEGER NOT NULL
);

CREATE TABLE holds (
    job_id          TEXT PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    model           TEXT    NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    -- Price and fee fixed when the hold is placed.
    price_prompt        INTEGER NOT NULL,
    price_cached_prompt INTEGER NOT NULL,
    price_completion    INTEGER NOT NULL,
    price_reasoning     INTEGER NOT NULL,
    fee_bps         INTEGER NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    status          TEXT    NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    closed_at       INTEGER
);
CREATE INDEX holds_active_expiry ON holds (expires_at) WHERE status = 'active';

-- One row per captured job: the usage history and the proof of "charged once".
CREATE TABLE charges (
    job_id               TEXT PRIMARY KEY REFERENCES holds (job_id),
    transaction_id       INTEGER NOT NULL REFERENCES transactions (id),
    client_id            INTEGER NOT NULL REFERENCES accounts (id),
    worker_id            INTEGER NOT NULL REFERENCES accounts (id),
    model                TEXT    NOT NULL,
    prompt_tokens        INTEGER NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL,
    completion_tokens    INTEGER NOT NULL,
    reasoning_tokens     INTEGER NOT NULL,
    coefficient          INTEGER NOT NULL,
    cost                 INTEGER NOT NULL,
    charge               INTEGER NOT NULL,
    worker_amount        INTEGER NOT NULL,
    fee                  INTEGER NOT NULL,
    shortfall            INTEGER NOT NULL,
    held                 INTEGER NOT NULL,
    created_at           INTEGER NOT NULL
);
CREATE INDEX charges_client ON charges (client_id, created_at);
CREATE INDEX charges_worker ON charges (worker_id);

-- The books are append-only.
CREATE TRIGGER transactions_no_update BEFORE UPDATE ON transactions
BEGIN SELECT RAISE(ABORT, 'ledger table transactions is append-only'); END;
CREATE TRIGGER transactions_no_delete BEFORE DELETE ON transactions
BEGIN SELECT RAISE(ABORT, 'ledger table transactions is append-only'); END;
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger table entries is append-only'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger table entries is append-only'); END;
CREATE TRIGGER charges_no_update BEFORE UPDATE ON charges
BEGIN SELECT RAISE(ABORT, 'ledger table charges is append-only'); END;
CREATE TRIGGER charges_no_delete BEFORE DELETE ON charges
BEGIN SELECT RAISE(ABORT, 'ledger table charges is append-only'); END;
