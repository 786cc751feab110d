-- TON settlement: deposit codes, deposits seen on chain, the deposit watcher's cursor,
-- worker payout addresses, the payout outbox and its batches (wallet v5r1 external
-- messages). Same semantics as ../postgres/0002_ton.sql.

-- A payout moves a worker's balance to the clearing account (the hot wallet pays it out);
-- cancelling a payout that was never sent moves it back.
--
-- SQLite cannot alter a CHECK constraint, and rebuilding `transactions` is not possible
-- inside the migration's transaction while `entries` and `charges` reference it with
-- foreign keys on. Widening the CHECK does not change how any row is stored, so this uses
-- the schema edit SQLite documents for that case (https://sqlite.org/lang_altertable.html,
-- "making other kinds of table schema changes"): rewrite the table's SQL text, reload the
-- schema; the CREATE TABLEs below bump the schema cookie so other connections reload too.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
   SET sql = replace(sql, 'CHECK (kind IN (''credit'', ''capture''))',
                          'CHECK (kind IN (''credit'', ''capture'', ''payout'', ''payout_reversal''))')
 WHERE type = 'table' AND name = 'transactions';
PRAGMA writable_schema = RESET;
-- Fails the migration (and rolls it back) unless the edit took.
CREATE TEMP TABLE ton_migration_assert (ok INTEGER NOT NULL CHECK (ok = 1));
INSERT INTO ton_migration_assert
    SELECT COUNT(*) FROM sqlite_master
     WHERE type = 'table' AND name = 'transactions' AND sql LIKE '%''payout_reversal''%';
DROP TABLE ton_migration_assert;

-- The short code a client puts in the comment of a TON transfer to top up.
CREATE TABLE deposit_codes (
    account_id INTEGER PRIMARY KEY REFERENCES accounts (id),
    code       TEXT   NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- Every incoming transfer the watcher decided on, credited or rejected, exactly once per
-- (transaction hash, lt). Rejected rows are kept for review.
CREATE TABLE ton_deposits (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_hash        TEXT   NOT NULL,
    lt             INTEGER NOT NULL CHECK (lt >= 0),
    source         TEXT,
    -- The value as the chain reported it (decimal nanoTON); `amount` when it fits an i64.
    value          TEXT   NOT NULL,
    amount         INTEGER,
    comment        TEXT,
    utime          INTEGER NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN ('credited', 'rejected')),
    reason         TEXT,
    detail         TEXT,
    account_id     INTEGER REFERENCES accounts (id),
    transaction_id INTEGER REFERENCES transactions (id),
    created_at     INTEGER NOT NULL,
    -- Set when an operator credited a rejected deposit by hand.
    resolved_at    INTEGER,
    UNIQUE (tx_hash, lt),
    CHECK (status <> 'credited' OR (account_id IS NOT NULL AND transaction_id IS NOT NULL AND amount > 0)),
    CHECK (status <> 'rejected' OR (reason IS NOT NULL AND transaction_id IS NULL))
);
CREATE INDEX ton_deposits_status ON ton_deposits (status, id);
CREATE INDEX ton_deposits_account ON ton_deposits (account_id, id);

-- Where a watcher resumes: the last transaction it has fully processed.
CREATE TABLE ton_cursors (
    name       TEXT   PRIMARY KEY,
    lt         INTEGER NOT NULL CHECK (lt >= 0),
    tx_hash    TEXT   NOT NULL,
    updated_at INTEGER NOT NULL
);

-- A worker's TON address in raw form (`wc:hex`); `bounceable` is what the owner asked for.
CREATE TABLE payout_addresses (
    account_id INTEGER PRIMARY KEY REFERENCES accounts (id),
    address    TEXT   NOT NULL,
    bounceable INTEGER NOT NULL CHECK (bounceable IN (0, 1)),
    updated_at INTEGER NOT NULL
);

-- One signed external message to the service wallet, carrying up to 255 payouts.
CREATE TABLE payout_batches (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    wallet      TEXT   NOT NULL,
    seqno       INTEGER NOT NULL CHECK (seqno >= 0),
    valid_until INTEGER NOT NULL,
    -- The wallet's last transaction lt before this message was built: the message, if it
    -- lands, is in a later transaction.
    prev_lt     INTEGER NOT NULL CHECK (prev_lt >= 0),
    boc         TEXT   NOT NULL,
    msg_hash    TEXT   NOT NULL UNIQUE,
    status      TEXT   NOT NULL CHECK (status IN ('prepared', 'sent', 'confirmed', 'expired', 'superseded')),
    tx_hash     TEXT,
    tx_lt       INTEGER,
    created_at  INTEGER NOT NULL,
    sent_at     INTEGER,
    closed_at   INTEGER,
    CHECK ((status = 'confirmed') = (tx_hash IS NOT NULL))
);
-- At most one message in flight per wallet: its seqno decides what can land next.
CREATE UNIQUE INDEX payout_batches_one_open ON payout_batches (wallet)
    WHERE status IN ('prepared', 'sent');

-- The outbox: one row per payout, debited from the worker when created.
CREATE TABLE payouts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts (id),
    address        TEXT   NOT NULL,
    bounceable     INTEGER NOT NULL CHECK (bounceable IN (0, 1)),
    amount         INTEGER NOT NULL CHECK (amount > 0),
    status         TEXT   NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'confirmed', 'cancelled')),
    batch_id       INTEGER REFERENCES payout_batches (id),
    transaction_id INTEGER NOT NULL REFERENCES transactions (id),
    reversal_id    INTEGER REFERENCES transactions (id),
    tx_hash        TEXT,
    created_at     INTEGER NOT NULL,
    sent_at        INTEGER,
    confirmed_at   INTEGER,
    CHECK ((status IN ('sending', 'sent', 'confirmed')) = (batch_id IS NOT NULL)),
    CHECK ((status = 'confirmed') = (tx_hash IS NOT NULL)),
    CHECK ((status = 'cancelled') = (reversal_id IS NOT NULL))
);
CREATE INDEX payouts_status ON payouts (status, id);
CREATE INDEX payouts_account ON payouts (account_id, id);
CREATE INDEX payouts_batch ON payouts (batch_id);

-- Every batch a payout was part of (the payouts of an expired batch go into a new one),
-- with the bounce flag its message used.
CREATE TABLE payout_batch_items (
    batch_id  INTEGER NOT NULL REFERENCES payout_batches (id),
    payout_id INTEGER NOT NULL REFERENCES payouts (id),
    bounce    INTEGER NOT NULL CHECK (bounce IN (0, 1)),
    PRIMARY KEY (batch_id, payout_id)
);
CREATE INDEX payout_batch_items_payout ON payout_batch_items (payout_id);
