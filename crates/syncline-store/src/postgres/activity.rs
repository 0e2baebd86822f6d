//! PostgreSQL's statements for stats and dashboard activity (per-user record counts, sync and import
//! counters, time buckets); the flows that run them are the crate's `activity` module.

use super::{Pg, PooledClient, SQL};
use crate::sql::ActivitySql;
use crate::{ImportActivity, StoreError, SyncActivity};

pub(super) const STATEMENTS: ActivitySql = ActivitySql {
    stats_user: "SELECT u.uid, s.last_push_at, coalesce(s.seq, m.value)
         FROM syncline_meta m LEFT JOIN syncline_users u ON u.name = $1
         LEFT JOIN syncline_sequences s ON s.uid = u.uid
         WHERE m.key = 'seq'",
    stats_tables: "SELECT tid::bigint, count(*) FILTER (WHERE deleted_at IS NULL),
             count(*) FILTER (WHERE deleted_at IS NOT NULL)
         FROM syncline_records WHERE uid = $1 GROUP BY tid",
    // greatest() skips NULLs: a pull leaves the last push time alone and the other way round.
    record_user: "INSERT INTO syncline_activity_users AS t (uid, last_pull_at, last_push_at, pulls, pushes,
             records_pulled, records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text,
                 CASE WHEN $10::text IS NOT NULL THEN $11::bigint END)
         ON CONFLICT (uid) DO UPDATE SET
             last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
             last_push_at = greatest(t.last_push_at, excluded.last_push_at),
             pulls = t.pulls + excluded.pulls, pushes = t.pushes + excluded.pushes,
             records_pulled = t.records_pulled + excluded.records_pulled,
             records_pushed = t.records_pushed + excluded.records_pushed,
             rejected = t.rejected + excluded.rejected, conflicts = t.conflicts + excluded.conflicts,
             last_rejection = coalesce(excluded.last_rejection, t.last_rejection),
             last_rejection_at = coalesce(excluded.last_rejection_at, t.last_rejection_at)",
    record_device: "INSERT INTO syncline_activity_devices AS t
             (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (uid, device) DO UPDATE SET
             last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at),
             last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
             last_push_at = greatest(t.last_push_at, excluded.last_push_at),
             outbox_pending = CASE WHEN excluded.last_seen_at >= t.last_seen_at
                              THEN coalesce(excluded.outbox_pending, t.outbox_pending)
                              ELSE t.outbox_pending END",
    add_to_bucket: "INSERT INTO syncline_activity_buckets AS t (uid, bucket, pushed, pulled, imported)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = t.pushed + excluded.pushed,
             pulled = t.pulled + excluded.pulled, imported = t.imported + excluded.imported",
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

/// Counts one push of user `uid` inside its own write transaction, through the shared flow: its statements
/// take their row locks in the same order (user, device, bucket) as a pull's counting transaction does, so
/// the two never deadlock (one statement with data-modifying CTEs would lock in no fixed order).
pub(super) fn count_sync(
    conn: &mut PooledClient,
    uid: i64,
    a: &SyncActivity<'_>,
) -> Result<(), StoreError> {
    let (client, statements) = conn.parts();
    crate::activity::count_sync(&mut Pg::cached(client, statements), &SQL, uid, a)
}
