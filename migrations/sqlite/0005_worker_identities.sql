-- Which attested identity key owns each worker id (router/src/identities.rs): the first key
-- that attests under an id keeps it, on every gateway replica and across restarts, so a
-- worker cannot take over another's id and the earnings booked to it. Same semantics as
-- ../postgres/0005_worker_identities.sql.
CREATE TABLE worker_identities (
    worker_id   TEXT    PRIMARY KEY,
    -- Hex Ed25519 public key of the worker's identity (the key its receipts are signed with).
    identity    TEXT    NOT NULL CHECK (length(identity) = 64),
    bound_at    INTEGER NOT NULL
);
