//! PostgreSQL's statements for stats and dashboard activity (per-user record counts, sync and import
//! counters, time buckets); the flows that run them are the crate's `activity` module.

use super::{Pg, PooledClient, SQL};
use crate::sql::ActivitySql;
use crate::{ImportActivity, StoreError};

/// The `ON CONFLICT` tail adding one sync to a user's counters (`greatest()` skips NULLs: a pull leaves
/// the last push time alone and the other way round).
macro_rules! user_counted {
    () => {
        " ON CONFLICT (uid) DO UPDATE SET
             last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
             last_push_at = greatest(t.last_push_at, excluded.last_push_at),
             pulls = t.pulls + excluded.pulls, pushes = t.pushes + excluded.pushes,
             records_pulled = t.records_pulled + excluded.records_pulled,
             records_pushed = t.records_pushed + excluded.records_pushed,
             rejected = t.rejected + excluded.rejected, conflicts = t.conflicts + excluded.conflicts,
             last_rejection = coalesce(excluded.last_rejection, t.last_rejection),
             last_rejection_at = coalesce(excluded.last_rejection_at, t.last_rejection_at)"
    };
}

/// The `ON CONFLICT` tail of a device's last contact.
macro_rules! device_seen {
    () => {
        " ON CONFLICT (uid, device) DO UPDATE SET
             last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at),
             last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
             last_push_at = greatest(t.last_push_at, excluded.last_push_at),
             outbox_pending = CASE WHEN excluded.last_seen_at >= t.last_seen_at
                              THEN coalesce(excluded.outbox_pending, t.outbox_pending)
                              ELSE t.outbox_pending END"
    };
}

/// The `ON CONFLICT` tail adding to a user's time bucket.
macro_rules! bucket_added {
    () => {
        " ON CONFLICT (uid, bucket) DO UPDATE SET pushed = t.pushed + excluded.pushed,
             pulled = t.pulled + excluded.pulled, imported = t.imported + excluded.imported"
    };
}

pub(super) const STATEMENTS: ActivitySql = ActivitySql {
    stats_user: "SELECT u.uid, s.last_push_at, coalesce(s.seq, m.value)
         FROM syncline_meta m LEFT JOIN syncline_users u ON u.name = $1
         LEFT JOIN syncline_sequences s ON s.uid = u.uid
         WHERE m.key = 'seq'",
    stats_tables: "SELECT tid::bigint, count(*) FILTER (WHERE deleted_at IS NULL),
             count(*) FILTER (WHERE deleted_at IS NOT NULL)
         FROM syncline_records WHERE uid = $1 GROUP BY tid",
    record_user: concat!(
        "INSERT INTO syncline_activity_users AS t (uid, last_pull_at, last_push_at, pulls, pushes,
             records_pulled, records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text,
                 CASE WHEN $10::text IS NOT NULL THEN $11::bigint END)",
        user_counted!()
    ),
    record_device: concat!(
        "INSERT INTO syncline_activity_devices AS t
             (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
         VALUES ($1, $2, $3, $4, $5, $6)",
        device_seen!()
    ),
    add_to_bucket: concat!(
        "INSERT INTO syncline_activity_buckets AS t (uid, bucket, pushed, pulled, imported)
         VALUES ($1, $2, $3, $4, $5)",
        bucket_added!()
    ),
    hold_counter: Some((
        "SELECT 1 FROM syncline_sequences WHERE uid = $1 FOR SHARE",
        "INSERT INTO syncline_sequences (uid, seq) SELECT $1, m.value FROM syncline_meta m
         WHERE m.key = 'seq' ON CONFLICT (uid) DO NOTHING",
    )),
    // Assignments read the old row: a batch of a new walk starts the counts again.
    count_import: "INSERT INTO syncline_import_outcomes AS t (uid, source, stream, phase, walk_started_at,
             last_batch_at, batches, upserted, unchanged, deleted)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9)
         ON CONFLICT (uid, source, stream, phase) DO UPDATE SET
             batches = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.batches ELSE 0 END + 1,
             upserted = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.upserted ELSE 0 END
                        + excluded.upserted,
             unchanged = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.unchanged ELSE 0 END
                         + excluded.unchanged,
             deleted = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.deleted ELSE 0 END
                       + excluded.deleted,
             walk_started_at = excluded.walk_started_at,
             last_batch_at = greatest(t.last_batch_at, excluded.last_batch_at)",
    users: "SELECT u.uid, u.name, a.last_pull_at, a.last_push_at, coalesce(a.pulls, 0),
             coalesce(a.pushes, 0), coalesce(a.records_pulled, 0), coalesce(a.records_pushed, 0),
             coalesce(a.rejected, 0), coalesce(a.conflicts, 0), a.last_rejection, a.last_rejection_at
         FROM syncline_users u LEFT JOIN syncline_activity_users a ON a.uid = u.uid
         WHERE ($1::text IS NULL OR u.name = $1)
           AND (a.uid IS NOT NULL
                OR EXISTS (SELECT 1 FROM syncline_import_outcomes o WHERE o.uid = u.uid)
                OR EXISTS (SELECT 1 FROM syncline_import_states s WHERE s.uid = u.uid))
         ORDER BY greatest(a.last_pull_at, a.last_push_at, 0) DESC, u.name
         LIMIT $2",
    devices: "SELECT d.uid, d.device, d.last_seen_at, d.last_pull_at, d.last_push_at, d.outbox_pending
         FROM syncline_activity_devices d JOIN syncline_users u ON u.uid = d.uid
         WHERE ($1::text IS NULL OR u.name = $1) ORDER BY d.last_seen_at DESC, d.device",
    imports: "SELECT o.uid, o.source, o.stream, o.phase, o.walk_started_at, o.last_batch_at, o.batches,
             o.upserted, o.unchanged, o.deleted
         FROM syncline_import_outcomes o JOIN syncline_users u ON u.uid = o.uid
         WHERE ($1::text IS NULL OR u.name = $1)
         ORDER BY o.source, o.stream, o.phase = 'incremental'",
    series: "SELECT b.bucket, sum(b.pushed)::bigint, sum(b.pulled)::bigint, sum(b.imported)::bigint
         FROM syncline_activity_buckets b
         WHERE b.bucket >= $2
           AND ($1::text IS NULL OR b.uid = (SELECT uid FROM syncline_users WHERE name = $1))
         GROUP BY b.bucket ORDER BY b.bucket",
    prune: "DELETE FROM syncline_activity_buckets WHERE bucket < $1",
};

/// Counts one applied import batch for the dashboard, inside the batch's transaction.
pub(super) fn count_import(
    conn: &mut PooledClient,
    uid: i64,
    a: &ImportActivity<'_>,
) -> Result<(), StoreError> {
    let (client, statements) = conn.parts();
    crate::activity::count_import(&mut Pg::cached(client, statements), &SQL, uid, a)
}

/// (seq, uid, last push, at, records pushed, rejected, conflicts, rejection, device, outbox pending,
/// bucket): a push's last statement before its commit, in one round trip: it moves the user's counter (whose
/// row the write holds locked) and counts the push for the dashboard (user, device, bucket). The order in
/// which one statement's data-modifying CTEs lock their rows is not fixed, so every other transaction that
/// counts a sync of this user first takes the user's counter row (a push or import: `FOR UPDATE` in its
/// write; a pull's counting: `FOR SHARE`, [`STATEMENTS`]'s `hold_counter`): no two of them ever count the
/// same user at once, and none can deadlock against another.
pub(super) const ADVANCE_COUNTED: &str = concat!(
    "WITH advanced AS (
         UPDATE syncline_sequences SET seq = $1, last_push_at = coalesce($3::bigint, last_push_at)
         WHERE uid = $2),
     seen AS (
         INSERT INTO syncline_activity_devices AS t
             (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
         SELECT $2, $9::text, $4::bigint, NULL, $4::bigint, $10::bigint WHERE $9::text IS NOT NULL",
    device_seen!(),
    "),
     bucketed AS (
         INSERT INTO syncline_activity_buckets AS t (uid, bucket, pushed, pulled, imported)
         SELECT $2, $11::bigint, $5::bigint, 0, 0 WHERE $5::bigint > 0",
    bucket_added!(),
    ")
     INSERT INTO syncline_activity_users AS t (uid, last_pull_at, last_push_at, pulls, pushes,
         records_pulled, records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
     VALUES ($2, NULL, $4, 0, 1, 0, $5, $6, $7, $8::text, CASE WHEN $8::text IS NOT NULL THEN $4 END)",
    user_counted!()
);
