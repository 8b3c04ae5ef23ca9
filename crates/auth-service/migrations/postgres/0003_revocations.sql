-- PostgreSQL twin of migrations/sqlite/0003_revocations.sql. The sequence is an identity column:
-- every replica appends to one ordered log that all verifiers follow.
CREATE TABLE revocations (
    sequence   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('token', 'session')),
    value      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX revocations_expiry ON revocations (expires_at);
