-- TON settlement: deposit codes, deposits seen on chain, the deposit watcher's cursor,
-- worker payout addresses, the payout outbox and its batches (wallet v5r1 external
-- messages). Same semantics as ../sqlite/0002_ton.sql.

-- A payout moves a worker's balance to the clearing account (the hot wallet pays it out);
-- cancelling a payout that was never sent moves it back.
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check
    CHECK (kind IN ('credit', 'capture', 'payout', 'payout_reversal'));

-- The short code a client puts in the comment of a TON transfer to top up.
CREATE TABLE deposit_codes (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id),
    code       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- Every incoming transfer the watcher decided on, credited or rejected, exactly once per
-- (transaction hash, lt). Rejected rows are kept for review.
CREATE TABLE ton_deposits (
    id             BIGSERIAL PRIMARY KEY,
    tx_hash        TEXT   NOT NULL,
    lt             BIGINT NOT NULL CHECK (lt >= 0),
    source         TEXT,
    -- The value as the chain reported it (decimal nanoTON); `amount` when it fits an i64.
    value          TEXT   NOT NULL,
    amount         BIGINT,
    comment        TEXT,
    utime          BIGINT NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN ('credited', 'rejected')),
    reason         TEXT,
    detail         TEXT,
    account_id     BIGINT REFERENCES accounts (id),
    transaction_id BIGINT REFERENCES transactions (id),
    created_at     BIGINT NOT NULL,
    -- Set when an operator credited a rejected deposit by hand.
    resolved_at    BIGINT,
    UNIQUE (tx_hash, lt),
    CHECK (status <> 'credited' OR (account_id IS NOT NULL AND transaction_id IS NOT NULL AND amount > 0)),
    CHECK (status <> 'rejected' OR (reason IS NOT NULL AND transaction_id IS NULL))
);
CREATE INDEX ton_deposits_status ON ton_deposits (status, id);
CREATE INDEX ton_deposits_account ON ton_deposits (account_id, id);

-- Where a watcher resumes: the last transaction it has fully processed.
CREATE TABLE ton_cursors (
    name       TEXT   PRIMARY KEY,
    lt         BIGINT NOT NULL CHECK (lt >= 0),
    tx_hash    TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A worker's TON address in raw form (`wc:hex`); `bounceable` is what the owner asked for.
CREATE TABLE payout_addresses (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id),
    address    TEXT   NOT NULL,
    bounceable BIGINT NOT NULL CHECK (bounceable IN (0, 1)),
    updated_at BIGINT NOT NULL
);

-- One signed external message to the service wallet, carrying up to 255 payouts.
CREATE TABLE payout_batches (
    id          BIGSERIAL PRIMARY KEY,
    wallet      TEXT   NOT NULL,
    seqno       BIGINT NOT NULL CHECK (seqno >= 0),
    valid_until BIGINT NOT NULL,
    -- The wallet's last transaction lt before this message was built: the message, if it
    -- lands, is in a later transaction.
    prev_lt     BIGINT NOT NULL CHECK (prev_lt >= 0),
    boc         TEXT   NOT NULL,
    msg_hash    TEXT   NOT NULL UNIQUE,
    status      TEXT   NOT NULL CHECK (status IN ('prepared', 'sent', 'confirmed', 'expired', 'superseded')),
    tx_hash     TEXT,
    tx_lt       BIGINT,
    created_at  BIGINT NOT NULL,
    sent_at     BIGINT,
    closed_at   BIGINT,
    CHECK ((status = 'confirmed') = (tx_hash IS NOT NULL))
);
-- At most one message in flight per wallet: its seqno decides what can land next.
CREATE UNIQUE INDEX payout_batches_one_open ON payout_batches (wallet)
    WHERE status IN ('prepared', 'sent');

-- The outbox: one row per payout, debited from the worker when created.
CREATE TABLE payouts (
    id             BIGSERIAL PRIMARY KEY,
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    address        TEXT   NOT NULL,
    bounceable     BIGINT NOT NULL CHECK (bounceable IN (0, 1)),
    amount         BIGINT NOT NULL CHECK (amount > 0),
    status         TEXT   NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'confirmed', 'cancelled')),
    batch_id       BIGINT REFERENCES payout_batches (id),
    transaction_id BIGINT NOT NULL REFERENCES transactions (id),
    reversal_id    BIGINT REFERENCES transactions (id),
    tx_hash        TEXT,
    created_at     BIGINT NOT NULL,
    sent_at        BIGINT,
    confirmed_at   BIGINT,
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
    batch_id  BIGINT NOT NULL REFERENCES payout_batches (id),
    payout_id BIGINT NOT NULL REFERENCES payouts (id),
    bounce    BIGINT NOT NULL CHECK (bounce IN (0, 1)),
    PRIMARY KEY (batch_id, payout_id)
);
CREATE INDEX payout_batch_items_payout ON payout_batch_items (payout_id);
