-- Signing keys of the issuer. The newest key without `retired_at` signs; the most recently
-- retired one is still published in the JWKS so tokens it signed keep verifying until they expire.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    algorithm  TEXT NOT NULL CHECK (algorithm = 'EdDSA'),
    pkcs8      BLOB NOT NULL,
    public_x   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
