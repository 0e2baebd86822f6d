-- Per-user change sequences. Each user's counter is its own row of `syncline_sequences`, keyed by uid, so a
-- write locks only its user's row and writes of different users never wait for each other (on one instance
-- or many; on Citus the table is distributed by uid, next to the user's records).
--
-- A user without a row counts from `syncline_meta.seq`, the old global counter, which stops moving here. Every
-- existing user therefore starts at the old global value and every cursor a device holds stays valid: it is
-- at most that value, and every later change of its user gets a higher sequence. The last push time moves
-- here too, so a push writes one row of its user and nothing shared.
CREATE TABLE IF NOT EXISTS syncline_sequences (
    uid bigint PRIMARY KEY,
    seq bigint NOT NULL,
    last_push_at bigint
);
INSERT INTO syncline_sequences (uid, seq, last_push_at)
    SELECT u.uid, m.value, u.last_push_at FROM syncline_users u, syncline_meta m
    WHERE m.key = 'seq' AND u.last_push_at IS NOT NULL
    ON CONFLICT (uid) DO NOTHING;
