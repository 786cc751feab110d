-- Responses API objects kept for `GET /v1/responses/{id}` and `previous_response_id`
-- (gateway/src/stored.rs). Only ciphertext is stored: `sealed` is a 12-byte nonce and the
-- ChaCha20-Poly1305 sealing (under the gateway's responses key, bound to id and account) of
-- the response and the input it answered. Rows past `expires_at` are never returned and
-- are purged. Same semantics as ../postgres/0007_stored_responses.sql.
CREATE TABLE stored_responses (
    id          TEXT    PRIMARY KEY,
    account     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    sealed      BLOB    NOT NULL
);
CREATE INDEX stored_responses_expires ON stored_responses (expires_at);
