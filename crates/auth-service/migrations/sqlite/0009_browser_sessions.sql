-- A person's session at the issuer, behind the `__Host-mesh-session` cookie: only the cookie's
-- SHA-256 is stored. `session_id` is the session's public name (never the cookie): the logins
-- (token families) made in the session point at it, so signing out revokes all of them.
CREATE TABLE browser_sessions (
    cookie_hash  TEXT PRIMARY KEY NOT NULL,
    session_id   TEXT NOT NULL UNIQUE,
    username     TEXT NOT NULL,
    auth_time    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    ended_at     INTEGER
);

ALTER TABLE token_families ADD COLUMN browser_session TEXT;
CREATE INDEX token_families_by_browser_session ON token_families (browser_session);

-- What a person agreed to let a client have (clients registered with `consent = true`): asked
-- once, remembered until the client asks for more.
CREATE TABLE consents (
    username   TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    audience   TEXT NOT NULL,
    granted_at INTEGER NOT NULL,
    PRIMARY KEY (username, client_id)
);
