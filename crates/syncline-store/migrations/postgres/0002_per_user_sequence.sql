-- Per-user change sequences. Each user's counter lives in the user's own row, so a write locks only its
-- user's row and writes of different users never wait for each other (on one instance or many, and on a
-- distributed PostgreSQL where a user's rows are co-located by uid).
--
-- Every existing user's counter starts at the old global value, so every cursor a device holds stays valid:
-- it is at most that value, and every later change of its user gets a higher sequence. `syncline_meta.seq`
-- stops moving: it is where the counter of a user who has no row yet starts.
ALTER TABLE syncline_users ADD COLUMN IF NOT EXISTS seq bigint;
UPDATE syncline_users SET seq = (SELECT value FROM syncline_meta WHERE key = 'seq') WHERE seq IS NULL;
ALTER TABLE syncline_users ALTER COLUMN seq SET NOT NULL;
