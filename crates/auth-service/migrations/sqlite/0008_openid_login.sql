-- OpenID Connect: a code from a login that asked for `openid` carries what its ID token must say:
-- the relying party's `nonce` (echoed exactly) and when the user authenticated (`auth_time`).
-- Codes live a minute, so rows from before this migration are never redeemed with these empty.
ALTER TABLE auth_codes ADD COLUMN nonce TEXT;
ALTER TABLE auth_codes ADD COLUMN auth_time INTEGER;
