//! SQLite's statements for stats and dashboard activity (per-user record counts, sync and import counters,
//! time buckets); the flows that run them are the crate's `activity` module.

use rusqlite::Connection;

use super::{Conn, SQL};
use crate::sql::ActivitySql;
use crate::{ImportActivity, StoreError, SyncActivity};

pub(super) const STATEMENTS: ActivitySql = ActivitySql {
    stats_user: "SELECT u.uid, u.last_push_at, m.value FROM meta m LEFT JOIN users u ON u.name = ?1
                 WHERE m.key = 'seq'",
    stats_tables: "SELECT tid, sum(deleted_at IS NULL), sum(deleted_at IS NOT NULL) FROM records
                   WHERE uid = ?1 GROUP BY tid",
    record_user: "INSERT INTO activity_users (uid, last_pull_at, last_push_at, pulls, pushes,
             records_pulled, records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, CASE WHEN ?10 IS NOT NULL THEN ?11 END)
         ON CONFLICT (uid) DO UPDATE SET
             last_pull_at = CASE WHEN excluded.last_pull_at > ifnull(last_pull_at, 0)
                            THEN excluded.last_pull_at ELSE last_pull_at END,
             last_push_at = CASE WHEN excluded.last_push_at > ifnull(last_push_at, 0)
                            THEN excluded.last_push_at ELSE last_push_at END,
             pulls = pulls + excluded.pulls, pushes = pushes + excluded.pushes,
             records_pulled = records_pulled + excluded.records_pulled,
             records_pushed = records_pushed + excluded.records_pushed,
             rejected = rejected + excluded.rejected, conflicts = conflicts + excluded.conflicts,
             last_rejection = ifnull(excluded.last_rejection, last_rejection),
             last_rejection_at = ifnull(excluded.last_rejection_at, last_rejection_at)",
    record_device: "INSERT INTO activity_devices (uid, device, last_seen_at, last_pull_at, last_push_at,
             outbox_pending)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (uid, device) DO UPDATE SET
             last_seen_at = max(last_seen_at, excluded.last_seen_at),
             last_pull_at = CASE WHEN excluded.last_pull_at > ifnull(last_pull_at, 0)
                            THEN excluded.last_pull_at ELSE last_pull_at END,
             last_push_at = CASE WHEN excluded.last_push_at > ifnull(last_push_at, 0)
                            THEN excluded.last_push_at ELSE last_push_at END,
             outbox_pending = CASE WHEN excluded.last_seen_at >= last_seen_at
                              THEN ifnull(excluded.outbox_pending, outbox_pending) ELSE outbox_pending END",
    add_to_bucket: "INSERT INTO activity_buckets (uid, bucket, pushed, pulled, imported)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = pushed + excluded.pushed,
             pulled = pulled + excluded.pulled, imported = imported + excluded.imported",
    // Assignments read the old row: a batch of a new walk starts the counts again.
    count_import: "INSERT INTO import_outcomes (uid, source, stream, phase, walk_started_at,
             last_batch_at, batches, upserted, unchanged, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9)
         ON CONFLICT (uid, source, stream, phase) DO UPDATE SET
             batches = CASE WHEN walk_started_at = excluded.walk_started_at THEN batches ELSE 0 END + 1,
             upserted = CASE WHEN walk_started_at = excluded.walk_started_at THEN upserted ELSE 0 END
                        + excluded.upserted,
             unchanged = CASE WHEN walk_started_at = excluded.walk_started_at THEN unchanged ELSE 0 END
                         + excluded.unchanged,
             deleted = CASE WHEN walk_started_at = excluded.walk_started_at THEN deleted ELSE 0 END
                       + excluded.deleted,
             walk_started_at = excluded.walk_started_at,
             last_batch_at = max(last_batch_at, excluded.last_batch_at)",
    // One writer: no two transactions ever count at once.
    hold_counter: None,
    users: "SELECT u.uid, u.name, a.last_pull_at, a.last_push_at, ifnull(a.pulls, 0), ifnull(a.pushes, 0),
             ifnull(a.records_pulled, 0), ifnull(a.records_pushed, 0), ifnull(a.rejected, 0),
             ifnull(a.conflicts, 0), a.last_rejection, a.last_rejection_at
         FROM users u LEFT JOIN activity_users a ON a.uid = u.uid
         WHERE (?1 IS NULL OR u.name = ?1)
           AND (a.uid IS NOT NULL OR EXISTS (SELECT 1 FROM import_outcomes o WHERE o.uid = u.uid)
                OR EXISTS (SELECT 1 FROM import_states s WHERE s.uid = u.uid))
         ORDER BY max(ifnull(a.last_pull_at, 0), ifnull(a.last_push_at, 0)) DESC, u.name
         LIMIT ?2",
    devices: "SELECT d.uid, d.device, d.last_seen_at, d.last_pull_at, d.last_push_at, d.outbox_pending
         FROM activity_devices d JOIN users u ON u.uid = d.uid WHERE (?1 IS NULL OR u.name = ?1)
         ORDER BY d.last_seen_at DESC, d.device",
    imports: "SELECT o.uid, o.source, o.stream, o.phase, o.walk_started_at, o.last_batch_at, o.batches,
             o.upserted, o.unchanged, o.deleted
         FROM import_outcomes o JOIN users u ON u.uid = o.uid WHERE (?1 IS NULL OR u.name = ?1)
         ORDER BY o.source, o.stream, o.phase = 'incremental'",
    series: "SELECT b.bucket, sum(b.pushed), sum(b.pulled), sum(b.imported) FROM activity_buckets b
         WHERE b.bucket >= ?2 AND (?1 IS NULL OR b.uid = (SELECT uid FROM users WHERE name = ?1))
         GROUP BY b.bucket ORDER BY b.bucket",
    prune: "DELETE FROM activity_buckets WHERE bucket < ?1",
};

/// Counts one applied import batch for the dashboard, inside the batch's transaction.
pub(super) fn count_import(
    tx: &Connection,
    uid: i64,
    a: &ImportActivity<'_>,
) -> Result<(), StoreError> {
    crate::activity::count_import(&mut Conn(tx), &SQL, uid, a)
}

/// Counts one pull or push of user `uid` inside the caller's transaction (a push counts itself in its own
/// write transaction).
pub(super) fn count_sync(
    tx: &Connection,
    uid: i64,
    a: &SyncActivity<'_>,
) -> Result<(), StoreError> {
    crate::activity::count_sync(&mut Conn(tx), &SQL, uid, a)
}
