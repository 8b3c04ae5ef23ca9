-- PostgreSQL twin of migrations/sqlite/0004_key_schedule.sql: next → current → retired.
ALTER TABLE signing_keys ADD COLUMN activated_at BIGINT;
UPDATE signing_keys SET activated_at = created_at;
