-- The state of the authorization-code and refresh-token grants. Codes and refresh tokens are
-- stored only as SHA-256 hashes: the database never holds a usable credential.

-- A family is everything issued from one login: its code, its refresh tokens (each rotation
-- adds one) and the access tokens they bought. Revoking the family revokes all of it.
CREATE TABLE token_families (
    family_id  TEXT PRIMARY KEY NOT NULL,
    client_id  TEXT NOT NULL,
    username   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
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
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    family_id  TEXT NOT NULL REFERENCES token_families (family_id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);

-- Access tokens issued from a family (or revoked one by one), so introspection can report them
-- inactive after a revocation. Verifiers still accept a JWT until its short `exp`.
CREATE TABLE access_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    family_id  TEXT,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX access_tokens_family ON access_tokens (family_id);
