-- The dashboard's activity tables: per user, per device, per time bucket, and per import walk.
--
-- `IF NOT EXISTS`: a database created before migrations were recorded may already have them.
CREATE TABLE IF NOT EXISTS activity_users (
    uid INTEGER PRIMARY KEY,
    last_pull_at INTEGER,
    last_push_at INTEGER,
    pulls INTEGER NOT NULL,
    pushes INTEGER NOT NULL,
    records_pulled INTEGER NOT NULL,
    records_pushed INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    conflicts INTEGER NOT NULL,
    last_rejection TEXT,
    last_rejection_at INTEGER
);
CREATE TABLE IF NOT EXISTS activity_devices (
    uid INTEGER NOT NULL,
    device TEXT NOT NULL,
    last_seen_at INTEGER NOT NULL,
    last_pull_at INTEGER,
    last_push_at INTEGER,
    outbox_pending INTEGER,
    PRIMARY KEY (uid, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activity_buckets (
    uid INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    pushed INTEGER NOT NULL,
    pulled INTEGER NOT NULL,
    imported INTEGER NOT NULL,
    PRIMARY KEY (uid, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS activity_buckets_time ON activity_buckets (bucket);
CREATE TABLE IF NOT EXISTS import_outcomes (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    stream TEXT NOT NULL,
    phase TEXT NOT NULL,
    walk_started_at INTEGER NOT NULL,
    last_batch_at INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    upserted INTEGER NOT NULL,
    unchanged INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (uid, source, stream, phase)
) WITHOUT ROWID;
