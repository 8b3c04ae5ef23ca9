-- Scheduled rotation: a key is created as the *next* key (published, not signing), becomes the
-- current key when `activated_at` is set, and stays published after `retired_at` until every
-- token it signed has expired. Keys from before this migration were activated when created.
ALTER TABLE signing_keys ADD COLUMN activated_at INTEGER;
UPDATE signing_keys SET activated_at = created_at;
