-- Workers' signed receipts (docs/e2e.md, section 6), one per job, as the router accepted
-- them: kept with the charge so a client, a worker or an auditor can re-verify what was
-- billed. Same semantics as ../postgres/0004_receipts.sql.
CREATE TABLE receipts (
    -- The job the receipt is for (the charge's and the hold's job id).
    job_id      TEXT    PRIMARY KEY,
    -- Hex SHA-256 of the signed receipt JSON.
    sha256      TEXT    NOT NULL CHECK (length(sha256) = 64),
    -- Hex Ed25519 public key of the worker's attested identity that signed it.
    signer      TEXT    NOT NULL CHECK (length(signer) = 64),
    -- Hex Ed25519 signature.
    signature   TEXT    NOT NULL CHECK (length(signature) = 128),
    -- The signed receipt JSON, byte for byte as signed.
    receipt     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
