-- Keys at rest are sealed (envelope encryption, see sealing.rs): a signing key's PKCS#8 moves to
-- `sealed`; keys from before this migration are sealed when the service next starts, and their
-- plaintext column is then emptied.
ALTER TABLE signing_keys ADD COLUMN sealed BLOB;

-- The mesh CAs. `activated_at` NULL: the next CA (in the trust bundle, not signing yet); set and
-- `retired_at` NULL: the CA that signs; `retired_at` set: the previous CA, still in the bundle
-- until `removed_at`.
CREATE TABLE authorities (
    serial       TEXT PRIMARY KEY NOT NULL,
    cert_pem     TEXT NOT NULL,
    sealed_key   BLOB NOT NULL,
    not_after    INTEGER NOT NULL,
    added_at     INTEGER NOT NULL,
    activated_at INTEGER,
    retired_at   INTEGER,
    removed_at   INTEGER
);

-- Join tokens: the hash of a single-use secret that entitles one workload (one SPIFFE ID) to its
-- first certificate before `expires_at`.
CREATE TABLE join_tokens (
    hash       TEXT PRIMARY KEY NOT NULL,
    spiffe_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX join_tokens_by_id ON join_tokens (spiffe_id);
