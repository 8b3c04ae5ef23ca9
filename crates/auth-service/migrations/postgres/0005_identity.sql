-- PostgreSQL twin of migrations/sqlite/0005_identity.sql: sealed keys, the mesh CAs, join tokens.
ALTER TABLE signing_keys ADD COLUMN sealed BYTEA;

CREATE TABLE authorities (
    serial       TEXT PRIMARY KEY NOT NULL,
    cert_pem     TEXT NOT NULL,
    sealed_key   BYTEA NOT NULL,
    not_after    BIGINT NOT NULL,
    added_at     BIGINT NOT NULL,
    activated_at BIGINT,
    retired_at   BIGINT,
    removed_at   BIGINT
);

CREATE TABLE join_tokens (
    hash       TEXT PRIMARY KEY NOT NULL,
    spiffe_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX join_tokens_by_id ON join_tokens (spiffe_id);
