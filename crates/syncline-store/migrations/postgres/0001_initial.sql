-- The layout of Syncline 0.1: one global change counter in syncline_meta ('seq'), records keyed by
-- (uid, tid, id), per-user horizons, idempotency answers, import states, leases and credentials, and the
-- dashboard's activity tables. Every statement is idempotent: databases created before migrations were
-- recorded already hold this layout, and applying it again changes nothing.
CREATE TABLE IF NOT EXISTS syncline_meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO syncline_meta (key, value) VALUES ('seq', 1), ('layout_version', 1) ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS syncline_users (
    uid bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    tombstone_horizon bigint NOT NULL DEFAULT 0,
    last_push_at bigint
);
CREATE TABLE IF NOT EXISTS syncline_tables (tid serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS syncline_records (
    uid bigint NOT NULL,
    tid integer NOT NULL,
    id text NOT NULL,
    seq bigint NOT NULL,
    deleted_at bigint,
    data text,
    PRIMARY KEY (uid, tid, id)
);
CREATE INDEX IF NOT EXISTS syncline_records_log ON syncline_records (uid, tid, seq);
CREATE INDEX IF NOT EXISTS syncline_records_tombstones ON syncline_records (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS syncline_idempotency (
    uid bigint NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    response text NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (uid, key)
);
CREATE TABLE IF NOT EXISTS syncline_import_states (
    uid bigint NOT NULL,
    source text NOT NULL,
    stream text NOT NULL,
    phase text NOT NULL,
    status text NOT NULL,
    generation bigint NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (uid, source, stream, phase)
);
ALTER TABLE syncline_import_states DROP COLUMN IF EXISTS lease_owner, DROP COLUMN IF EXISTS lease_until;
CREATE TABLE IF NOT EXISTS syncline_import_leases (
    uid bigint NOT NULL,
    source text NOT NULL,
    owner text NOT NULL,
    until bigint NOT NULL,
    PRIMARY KEY (uid, source)
);
CREATE INDEX IF NOT EXISTS syncline_import_states_status ON syncline_import_states (status);
CREATE TABLE IF NOT EXISTS syncline_connections (
    uid bigint NOT NULL,
    source text NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (uid, source)
);

-- The dashboard's activity tables: per user, per device, per time bucket, and per import walk.
CREATE TABLE IF NOT EXISTS syncline_activity_users (
    uid bigint PRIMARY KEY,
    last_pull_at bigint,
    last_push_at bigint,
    pulls bigint NOT NULL,
    pushes bigint NOT NULL,
    records_pulled bigint NOT NULL,
    records_pushed bigint NOT NULL,
    rejected bigint NOT NULL,
    conflicts bigint NOT NULL,
    last_rejection text,
    last_rejection_at bigint
);
CREATE TABLE IF NOT EXISTS syncline_activity_devices (
    uid bigint NOT NULL,
    device text NOT NULL,
    last_seen_at bigint NOT NULL,
    last_pull_at bigint,
    last_push_at bigint,
    outbox_pending bigint,
    PRIMARY KEY (uid, device)
);
CREATE TABLE IF NOT EXISTS syncline_activity_buckets (
    uid bigint NOT NULL,
    bucket bigint NOT NULL,
    pushed bigint NOT NULL,
    pulled bigint NOT NULL,
    imported bigint NOT NULL,
    PRIMARY KEY (uid, bucket)
);
CREATE INDEX IF NOT EXISTS syncline_activity_buckets_time ON syncline_activity_buckets (bucket);
CREATE TABLE IF NOT EXISTS syncline_import_outcomes (
    uid bigint NOT NULL,
    source text NOT NULL,
    stream text NOT NULL,
    phase text NOT NULL,
    walk_started_at bigint NOT NULL,
    last_batch_at bigint NOT NULL,
    batches bigint NOT NULL,
    upserted bigint NOT NULL,
    unchanged bigint NOT NULL,
    deleted bigint NOT NULL,
    PRIMARY KEY (uid, source, stream, phase)
);
