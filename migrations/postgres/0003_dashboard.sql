-- API keys in the database (every gateway replica sees a new or revoked key), and the
-- dashboard's sign-in state. Same semantics as ../sqlite/0003_dashboard.sql.

-- One row per API key `sk-cocoon-<id><secret>`. Only SHA-256 of the whole key is stored.
CREATE TABLE api_keys (
    -- The 12-character lookup id (public part of the key).
    id                    TEXT    PRIMARY KEY,
    -- Hex SHA-256 of the whole key.
    sha256                TEXT    NOT NULL CHECK (length(sha256) = 64),
    -- The client account the key bills and manages (accounts.external_id of kind 'client';
    -- the account row itself is created on first use).
    account               TEXT    NOT NULL,
    -- The label shown in listings.
    name                  TEXT    NOT NULL,
    -- Who created it: 'cli', 'dashboard', 'import' (from keys.json), 'dev'.
    created_by            TEXT    NOT NULL DEFAULT '',
    created_at            BIGINT  NOT NULL,
    -- Set once; a revoked key never works again.
    revoked_at            BIGINT,
    -- api_keys_version.version when the row last changed: replicas poll for rows above the
    -- version they have seen.
    version               BIGINT  NOT NULL,
    -- Rate limits; both NULL = the gateway's default_limits.
    requests_per_minute   BIGINT  CHECK (requests_per_minute >= 0),
    tokens_per_minute     BIGINT  CHECK (tokens_per_minute >= 0),
    -- Per-key controls stored for issue 15; not enforced yet. NULL = no restriction.
    -- JSON array of model ids the key may use.
    allowed_models        TEXT,
    daily_budget_nanoton  BIGINT  CHECK (daily_budget_nanoton >= 0),
    monthly_budget_nanoton BIGINT  CHECK (monthly_budget_nanoton >= 0),
    -- Default cap on the worker price coefficient (thousandths) for the key's requests.
    max_price_coefficient BIGINT  CHECK (max_price_coefficient >= 0),
    CHECK ((requests_per_minute IS NULL) = (tokens_per_minute IS NULL))
);
CREATE INDEX api_keys_account ON api_keys (account, created_at);
CREATE INDEX api_keys_version_idx ON api_keys (version);

-- The one counter key changes take their version from. A writer increments it in the same
-- transaction as its change, so versions become visible in order.
CREATE TABLE api_keys_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL
);
INSERT INTO api_keys_version (id, version) VALUES (1, 0);

-- Who signed into the dashboard as which client account: a Telegram user id, or a TON
-- wallet address (raw form `wc:hex`).
CREATE TABLE dashboard_identities (
    provider      TEXT    NOT NULL CHECK (provider IN ('telegram', 'ton')),
    subject       TEXT    NOT NULL,
    account       TEXT    NOT NULL,
    -- Display name (Telegram @username or first name; the wallet's user-friendly address).
    label         TEXT    NOT NULL DEFAULT '',
    created_at    BIGINT  NOT NULL,
    last_login_at BIGINT  NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX dashboard_identities_account ON dashboard_identities (account);

-- Single-use values already used (TON Connect ton_proof payloads the gateway issued and
-- authenticated itself), kept until they expire: inserting one a second time fails.
CREATE TABLE dashboard_nonces (
    nonce      TEXT    PRIMARY KEY,
    purpose    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX dashboard_nonces_expiry ON dashboard_nonces (expires_at);

-- A GPU owner signed in with a TON wallet sees the workers paid out to that address.
CREATE INDEX IF NOT EXISTS payout_addresses_address ON payout_addresses (address);
