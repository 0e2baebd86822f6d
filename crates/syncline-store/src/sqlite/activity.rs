//! SQLite stats and dashboard activity: per-user record counts, sync and import counters, time buckets.

use super::*;

impl SqliteStore {
    pub(super) fn stats(&self, user: &str) -> Result<UserStats, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let sequence: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
        let mut stats = UserStats {
            sequence,
            ..Default::default()
        };
        for table in self.schema.tables() {
            stats
                .tables
                .insert(table.name.clone(), TableStats::default());
        }
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT uid, last_push_at FROM users WHERE name = ?1",
                [user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((uid, last_push_at)) = row else {
            return Ok(stats);
        };
        stats.last_push_at = last_push_at;
        let names: HashMap<i64, &str> = self.tids.iter().map(|(n, t)| (*t, n.as_str())).collect();
        let mut stmt = tx.prepare(
            "SELECT tid, sum(deleted_at IS NULL), sum(deleted_at IS NOT NULL) FROM records WHERE uid = ?1 GROUP BY tid",
        )?;
        let mut rows = stmt.query([uid])?;
        while let Some(r) = rows.next()? {
            let tid: i64 = r.get(0)?;
            if let Some(name) = names.get(&tid) {
                stats.tables.insert(
                    name.to_string(),
                    TableStats {
                        records: r.get(1)?,
                        tombstones: r.get(2)?,
                    },
                );
            }
        }
        Ok(stats)
    }
}

impl ActivityStore for SqliteStore {
    fn record_sync(&self, user: &str, a: &SyncActivity<'_>) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Dashboard counters: an OS crash may lose the last few, so this commit need not wait for the disk
        // (the next durable commit flushes it too). Set per transaction: it is the writer's connection.
        let durable = self.settings.synchronous != SqliteSynchronous::Normal;
        if durable {
            conn.pragma_update(None, "synchronous", SqliteSynchronous::Normal.pragma())?;
        }
        let result = record_sync_in(&mut conn, user, a);
        if durable {
            conn.pragma_update(None, "synchronous", self.settings.synchronous.pragma())?;
        }
        result
    }

    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut users: Vec<(i64, UserActivity)> = tx
            .prepare_cached(
                "SELECT u.uid, u.name, a.last_pull_at, a.last_push_at, ifnull(a.pulls, 0), ifnull(a.pushes, 0),
                     ifnull(a.records_pulled, 0), ifnull(a.records_pushed, 0), ifnull(a.rejected, 0),
                     ifnull(a.conflicts, 0), a.last_rejection, a.last_rejection_at
                 FROM users u LEFT JOIN activity_users a ON a.uid = u.uid
                 WHERE (?1 IS NULL OR u.name = ?1)
                   AND (a.uid IS NOT NULL OR EXISTS (SELECT 1 FROM import_outcomes o WHERE o.uid = u.uid)
                        OR EXISTS (SELECT 1 FROM import_states s WHERE s.uid = u.uid))
                 ORDER BY max(ifnull(a.last_pull_at, 0), ifnull(a.last_push_at, 0)) DESC, u.name
                 LIMIT ?2",
            )?
            .query_map(params![user, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    UserActivity {
                        user: r.get(1)?,
                        last_pull_at: r.get(2)?,
                        last_push_at: r.get(3)?,
                        pulls: r.get(4)?,
                        pushes: r.get(5)?,
                        records_pulled: r.get(6)?,
                        records_pushed: r.get(7)?,
                        rejected: r.get(8)?,
                        conflicts: r.get(9)?,
                        last_rejection: r.get(10)?,
                        last_rejection_at: r.get(11)?,
                        ..Default::default()
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        let index: HashMap<i64, usize> = users
            .iter()
            .enumerate()
            .map(|(i, (uid, _))| (*uid, i))
            .collect();
        let mut stmt = tx.prepare_cached(
            "SELECT d.uid, d.device, d.last_seen_at, d.last_pull_at, d.last_push_at, d.outbox_pending
             FROM activity_devices d JOIN users u ON u.uid = d.uid WHERE (?1 IS NULL OR u.name = ?1)
             ORDER BY d.last_seen_at DESC, d.device",
        )?;
        let mut rows = stmt.query(params![user])?;
        while let Some(r) = rows.next()? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)?) {
                users[i].1.devices.push(DeviceActivity {
                    device: r.get(1)?,
                    last_seen_at: r.get(2)?,
                    last_pull_at: r.get(3)?,
                    last_push_at: r.get(4)?,
                    outbox_pending: r.get(5)?,
                });
            }
        }
        let mut stmt = tx.prepare_cached(
            "SELECT o.uid, o.source, o.stream, o.phase, o.walk_started_at, o.last_batch_at, o.batches,
                 o.upserted, o.unchanged, o.deleted
             FROM import_outcomes o JOIN users u ON u.uid = o.uid WHERE (?1 IS NULL OR u.name = ?1)
             ORDER BY o.source, o.stream, o.phase = 'incremental'",
        )?;
        let mut rows = stmt.query(params![user])?;
        while let Some(r) = rows.next()? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)?) {
                let phase: String = r.get(3)?;
                users[i].1.imports.push(ImportOutcome {
                    source: r.get(1)?,
                    stream: r.get(2)?,
                    phase: phase.parse().unwrap_or_default(),
                    walk_started_at: r.get(4)?,
                    last_batch_at: r.get(5)?,
                    batches: r.get(6)?,
                    upserted: r.get(7)?,
                    unchanged: r.get(8)?,
                    deleted: r.get(9)?,
                });
            }
        }
        Ok(users.into_iter().map(|(_, a)| a).collect())
    }

    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        Ok(conn
            .prepare_cached(
                "SELECT b.bucket, sum(b.pushed), sum(b.pulled), sum(b.imported) FROM activity_buckets b
                 WHERE b.bucket >= ?2 AND (?1 IS NULL OR b.uid = (SELECT uid FROM users WHERE name = ?1))
                 GROUP BY b.bucket ORDER BY b.bucket",
            )?
            .query_map(params![user, activity_bucket(since_ms)], |r| {
                Ok(ActivityBucket {
                    at: r.get(0)?,
                    pushed: r.get(1)?,
                    pulled: r.get(2)?,
                    imported: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.execute(
            "DELETE FROM activity_buckets WHERE bucket < ?1",
            [activity_bucket(before_ms)],
        )? as u64)
    }
}

/// The dashboard's activity tables: per user, per device, per time bucket, and per import walk.
pub(super) const ACTIVITY_SETUP: &str = "
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
";

/// Adds records to the user's bucket of `at_ms`.
fn add_to_bucket(
    tx: &Connection,
    uid: i64,
    at_ms: i64,
    pushed: u64,
    pulled: u64,
    imported: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO activity_buckets (uid, bucket, pushed, pulled, imported) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = pushed + excluded.pushed,
             pulled = pulled + excluded.pulled, imported = imported + excluded.imported",
    )?
    .execute(params![uid, activity_bucket(at_ms), pushed, pulled, imported])?;
    Ok(())
}

/// Counts one applied import batch for the dashboard, inside the batch's transaction: what the walk wrote so
/// far, and its rows in their time bucket.
pub(super) fn count_import(
    tx: &Connection,
    uid: i64,
    a: &ImportActivity<'_>,
) -> Result<(), StoreError> {
    // Assignments read the old row: a batch of a new walk starts the counts again.
    tx.prepare_cached(
        "INSERT INTO import_outcomes (uid, source, stream, phase, walk_started_at, last_batch_at, batches,
             upserted, unchanged, deleted)
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
    )?
    .execute(params![
        uid,
        a.source,
        a.stream,
        a.phase.as_str(),
        a.walk_started_at,
        a.at_ms,
        a.upserted,
        a.unchanged,
        a.deleted
    ])?;
    let rows = a.upserted + a.unchanged + a.deleted;
    if rows > 0 {
        add_to_bucket(tx, uid, a.at_ms, 0, 0, rows)?;
    }
    Ok(())
}

/// [`ActivityStore::record_sync`]'s transaction on the writer connection.
fn record_sync_in(
    conn: &mut Connection,
    user: &str,
    a: &SyncActivity<'_>,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let uid = user_id(&tx, user)?;
    count_sync(&tx, uid, a)?;
    tx.commit()?;
    Ok(())
}

/// Counts one pull or push of user `uid` in the caller's write transaction (also a push's own).
pub(super) fn count_sync(
    tx: &Connection,
    uid: i64,
    a: &SyncActivity<'_>,
) -> Result<(), StoreError> {
    let pull = a.kind == SyncKind::Pull;
    let (pull_at, push_at) = if pull {
        (Some(a.at_ms), None)
    } else {
        (None, Some(a.at_ms))
    };
    tx.prepare_cached(
        "INSERT INTO activity_users (uid, last_pull_at, last_push_at, pulls, pushes, records_pulled,
             records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
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
    )?
    .execute(params![
        uid,
        pull_at,
        push_at,
        pull as i64,
        !pull as i64,
        if pull { a.records } else { 0 },
        if pull { 0 } else { a.records },
        a.rejected,
        a.conflicts,
        a.rejection,
        a.at_ms
    ])?;
    if let Some(device) = a.device {
        tx.prepare_cached(
            "INSERT INTO activity_devices (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (uid, device) DO UPDATE SET
                 last_seen_at = max(last_seen_at, excluded.last_seen_at),
                 last_pull_at = CASE WHEN excluded.last_pull_at > ifnull(last_pull_at, 0)
                                THEN excluded.last_pull_at ELSE last_pull_at END,
                 last_push_at = CASE WHEN excluded.last_push_at > ifnull(last_push_at, 0)
                                THEN excluded.last_push_at ELSE last_push_at END,
                 outbox_pending = ifnull(excluded.outbox_pending, outbox_pending)",
        )?
        .execute(params![uid, device, a.at_ms, pull_at, push_at, a.outbox_pending])?;
    }
    if a.records > 0 {
        let (pulled, pushed) = if pull { (a.records, 0) } else { (0, a.records) };
        add_to_bucket(tx, uid, a.at_ms, pushed, pulled, 0)?;
    }
    Ok(())
}
