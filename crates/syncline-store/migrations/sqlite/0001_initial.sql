-- The sync layout: the change counter, users, table ids, records and tombstones in one log keyed by the
-- sequence (the rowid), idempotency answers, import states, leases and sealed credentials.
--
-- Every statement is `IF NOT EXISTS` / `OR IGNORE`: a database created before migrations were recorded
-- already has these tables, and applying this migration to it changes nothing.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 1), ('layout_version', 1);
CREATE TABLE IF NOT EXISTS users (
    uid INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tombstone_horizon INTEGER NOT NULL DEFAULT 0,
    last_push_at INTEGER
);
CREATE TABLE IF NOT EXISTS sync_tables (tid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    uid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    id TEXT NOT NULL,
    deleted_at INTEGER,
    data TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS records_key ON records (uid, tid, id);
CREATE INDEX IF NOT EXISTS records_log ON records (uid, tid, seq);
CREATE INDEX IF NOT EXISTS records_tombstones ON records (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS import_states (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    stream TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (uid, source, stream, phase)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS import_leases (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    owner TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (uid, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS import_states_status ON import_states (status);
CREATE TABLE IF NOT EXISTS connections (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (uid, source)
) WITHOUT ROWID;
