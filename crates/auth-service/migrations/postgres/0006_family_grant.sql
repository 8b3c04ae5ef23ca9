-- What a login granted, kept with its token family: a refresh may only narrow it (RFC 6749 §6),
-- never widen the scopes or move to another audience. Families from before this migration have
-- an empty grant, so their refresh tokens buy nothing more: those users sign in again.
ALTER TABLE token_families ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE token_families ADD COLUMN audience TEXT NOT NULL DEFAULT '';
