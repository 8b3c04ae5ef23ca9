-- Every revocation in the order it happened, for the verifiers' revocation stream. A row names one
-- access token (`jti`) or one login (`sid`, the token family); once `expires_at` has passed, no
-- token it covers can verify any more and the row may be forgotten.
CREATE TABLE revocations (
    sequence   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('token', 'session')),
    value      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE INDEX revocations_expiry ON revocations (expires_at);
