-- PostgreSQL twin of migrations/sqlite/0001_signing_keys.sql (same tables, columns, constraints;
-- BYTEA for BLOB, BIGINT for INTEGER), so the auth service's SQL runs unchanged on either.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    algorithm  TEXT NOT NULL CHECK (algorithm = 'EdDSA'),
    pkcs8      BYTEA NOT NULL,
    public_x   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
