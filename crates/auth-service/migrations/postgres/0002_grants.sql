-- PostgreSQL twin of migrations/sqlite/0002_grants.sql: codes and refresh tokens stored only as
-- SHA-256 hashes, grouped into token families.
CREATE TABLE token_families (
    family_id  TEXT PRIMARY KEY NOT NULL,
    client_id  TEXT NOT NULL,
    username   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY NOT NULL,
    family_id      TEXT NOT NULL REFERENCES token_families (family_id),
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    username       TEXT NOT NULL,
    scope          TEXT NOT NULL,
    audience       TEXT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    family_id  TEXT NOT NULL REFERENCES token_families (family_id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE access_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    family_id  TEXT,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX access_tokens_family ON access_tokens (family_id);
