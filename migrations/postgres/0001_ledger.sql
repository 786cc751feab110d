-- Double-entry nanoTON ledger. Same semantics as ../sqlite/0001_ledger.sql.

CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT   NOT NULL CHECK (kind IN ('client', 'worker', 'fee', 'clearing')),
    external_id TEXT   NOT NULL,
    -- Cached sum of entries for kinds 'client' and 'clearing' (0 for the others, whose
    -- balance is always read from entries so that captures never share a hot row).
    balance     BIGINT NOT NULL DEFAULT 0,
    -- Cached sum of active holds ('client' only).
    held        BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at  BIGINT NOT NULL,
    UNIQUE (kind, external_id),
    CHECK (kind <> 'client' OR (balance >= 0 AND held <= balance))
);
-- Exactly one fee account and one deposits-clearing (TON hot wallet) account.
CREATE UNIQUE INDEX accounts_one_system ON accounts (kind) WHERE kind IN ('fee', 'clearing');
INSERT INTO accounts (kind, external_id, created_at) VALUES
    ('fee', 'network-fee', 0),
    ('clearing', 'ton-hot-wallet', 0);

CREATE TABLE transactions (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('credit', 'capture')),
    -- Credits: the caller's idempotency key (e.g. deposit tx hash:lt).
    idempotency_key TEXT,
    -- Captures: the job id.
    job_id          TEXT,
    memo            TEXT   NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL
);

CREATE UNIQUE INDEX transactions_idempotency_key ON transactions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One entry per account per transaction.
CREATE TABLE entries (
    transaction_id BIGINT NOT NULL REFERENCES transactions (id),
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    amount         BIGINT NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (transaction_id, account_id)
);
CREATE INDEX entries_account ON entries (account_id);

CREATE TABLE prices (
    model         TEXT PRIMARY KEY,
    prompt        BIGINT NOT NULL CHECK (prompt >= 0),
    cached_prompt BIGINT NOT NULL CHECK (cached_prompt >= 0),
    completion    BIGINT NOT NULL CHECK (completion >= 0),
    reasoning     BIGINT NOT NULL CHECK (reasoning >= 0),
    updated_at    BIGINT NOT NULL
);

CREATE TABLE holds (
    job_id          TEXT PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts (id),
    model           TEXT   NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    -- Price and fee fixed when the hold is placed.
    price_prompt        BIGINT NOT NULL,
    price_cached_prompt BIGINT NOT NULL,
    price_completion    BIGINT NOT NULL,
    price_reasoning     BIGINT NOT NULL,
    fee_bps         BIGINT NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    status          TEXT   NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    closed_at       BIGINT
);
CREATE INDEX holds_active_expiry ON holds (expires_at) WHERE status = 'active';

-- One row per captured job: the usage history and the proof of "charged once".
CREATE TABLE charges (
    job_id               TEXT PRIMARY KEY REFERENCES holds (job_id),
    transaction_id       BIGINT NOT NULL REFERENCES transactions (id),
    client_id            BIGINT NOT NULL REFERENCES accounts (id),
    worker_id            BIGINT NOT NULL REFERENCES accounts (id),
    model                TEXT   NOT NULL,
    prompt_tokens        BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens    BIGINT NOT NULL,
    reasoning_tokens     BIGINT NOT NULL,
    coefficient          BIGINT NOT NULL,
    cost                 BIGINT NOT NULL,
    charge               BIGINT NOT NULL,
    worker_amount        BIGINT NOT NULL,
    fee                  BIGINT NOT NULL,
    shortfall            BIGINT NOT NULL,
    held                 BIGINT NOT NULL,
    created_at           BIGINT NOT NULL
);
CREATE INDEX charges_client ON charges (client_id, created_at);
CREATE INDEX charges_worker ON charges (worker_id);

-- The books are append-only.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER charges_append_only BEFORE UPDATE OR DELETE ON charges
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER charges_no_truncate BEFORE TRUNCATE ON charges
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
