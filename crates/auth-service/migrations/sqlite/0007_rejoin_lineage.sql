-- A rejoin token remembers the certificate it was handed out with (`issued_with`, its serial)
-- and the one its caller presented (`renewed_from`). A renewal presenting certificate C withdraws
-- (deletes) the tokens handed out with C and the ones handed out before to callers presenting C
-- (a renewal over a connection made with an older certificate): each replica holds one live
-- rejoin token, whatever its client names. Operator-made join tokens have neither.
ALTER TABLE join_tokens ADD COLUMN issued_with TEXT;
ALTER TABLE join_tokens ADD COLUMN renewed_from TEXT;
CREATE INDEX join_tokens_by_certificate ON join_tokens (issued_with);
CREATE INDEX join_tokens_by_renewed ON join_tokens (renewed_from);
