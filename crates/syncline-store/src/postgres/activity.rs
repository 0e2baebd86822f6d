//! PostgreSQL stats and dashboard activity: per-user record counts, sync and import counters, time buckets.

use super::*;

impl PostgresStore {
    pub(super) fn stats(&self, user: &str) -> Result<UserStats, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let (_, _, sequence) = user_counter(&mut tx, user)?;
        let mut stats = UserStats {
            sequence,
            ..Default::default()
        };
        for table in self.schema.tables() {
            stats
                .tables
                .insert(table.name.clone(), TableStats::default());
        }
        let Some(row) = tx.query_opt(
            "SELECT u.uid, s.last_push_at FROM syncline_users u
             LEFT JOIN syncline_sequences s ON s.uid = u.uid WHERE u.name = $1",
            &[&user],
        )?
        else {
            return Ok(stats);
        };
        let uid: i64 = row.get(0);
        stats.last_push_at = row.get(1);
        let names: HashMap<i64, &str> = self.tids.iter().map(|(n, t)| (*t, n.as_str())).collect();
        for r in tx.query(
            "SELECT tid, count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL)
             FROM syncline_records WHERE uid = $1 GROUP BY tid",
            &[&uid],
        )? {
            let tid: i32 = r.get(0);
            if let Some(name) = names.get(&(tid as i64)) {
                let (live, dead): (i64, i64) = (r.get(1), r.get(2));
                stats.tables.insert(name.to_string(), TableStats { records: live as u64, tombstones: dead as u64 });
            }
        }
        tx.commit()?;
        Ok(stats)
    }
}

impl ActivityStore for PostgresStore {
    fn record_sync(&self, user: &str, a: &SyncActivity<'_>) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        // Dashboard counters: an OS crash may lose the last few, so this commit need not wait for the disk
        // (a second flush per push would halve what small pushes get through on a durable cluster).
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        let uid = user_id(&mut tx, user)?;
        count_sync(&mut tx, uid, a, None)?;
        tx.commit()?;
        Ok(())
    }

    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let n = |v: Option<i64>| v.unwrap_or(0) as u64;
        let mut users: Vec<(i64, UserActivity)> = tx
            .query(
                "SELECT u.uid, u.name, a.last_pull_at, a.last_push_at, a.pulls, a.pushes, a.records_pulled,
                     a.records_pushed, a.rejected, a.conflicts, a.last_rejection, a.last_rejection_at
                 FROM syncline_users u LEFT JOIN syncline_activity_users a ON a.uid = u.uid
                 WHERE ($1::text IS NULL OR u.name = $1)
                   AND (a.uid IS NOT NULL
                        OR EXISTS (SELECT 1 FROM syncline_import_outcomes o WHERE o.uid = u.uid)
                        OR EXISTS (SELECT 1 FROM syncline_import_states s WHERE s.uid = u.uid))
                 ORDER BY greatest(a.last_pull_at, a.last_push_at, 0) DESC, u.name
                 LIMIT $2",
                &[&user, &(limit as i64)],
            )?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    UserActivity {
                        user: r.get(1),
                        last_pull_at: r.get(2),
                        last_push_at: r.get(3),
                        pulls: n(r.get(4)),
                        pushes: n(r.get(5)),
                        records_pulled: n(r.get(6)),
                        records_pushed: n(r.get(7)),
                        rejected: n(r.get(8)),
                        conflicts: n(r.get(9)),
                        last_rejection: r.get(10),
                        last_rejection_at: r.get(11),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let index: HashMap<i64, usize> = users
            .iter()
            .enumerate()
            .map(|(i, (uid, _))| (*uid, i))
            .collect();
        for r in tx.query(
            "SELECT d.uid, d.device, d.last_seen_at, d.last_pull_at, d.last_push_at, d.outbox_pending
             FROM syncline_activity_devices d JOIN syncline_users u ON u.uid = d.uid
             WHERE ($1::text IS NULL OR u.name = $1) ORDER BY d.last_seen_at DESC, d.device",
            &[&user],
        )? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)) {
                users[i].1.devices.push(DeviceActivity {
                    device: r.get(1),
                    last_seen_at: r.get(2),
                    last_pull_at: r.get(3),
                    last_push_at: r.get(4),
                    outbox_pending: r.get::<_, Option<i64>>(5).map(|v| v as u64),
                });
            }
        }
        for r in tx.query(
            "SELECT o.uid, o.source, o.stream, o.phase, o.walk_started_at, o.last_batch_at, o.batches,
                 o.upserted, o.unchanged, o.deleted
             FROM syncline_import_outcomes o JOIN syncline_users u ON u.uid = o.uid
             WHERE ($1::text IS NULL OR u.name = $1)
             ORDER BY o.source, o.stream, o.phase = 'incremental'",
            &[&user],
        )? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)) {
                let phase: &str = r.get(3);
                users[i].1.imports.push(ImportOutcome {
                    source: r.get(1),
                    stream: r.get(2),
                    phase: phase.parse().unwrap_or_default(),
                    walk_started_at: r.get(4),
                    last_batch_at: r.get(5),
                    batches: r.get::<_, i64>(6) as u64,
                    upserted: r.get::<_, i64>(7) as u64,
                    unchanged: r.get::<_, i64>(8) as u64,
                    deleted: r.get::<_, i64>(9) as u64,
                });
            }
        }
        tx.commit()?;
        Ok(users.into_iter().map(|(_, a)| a).collect())
    }

    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT b.bucket, sum(b.pushed)::bigint, sum(b.pulled)::bigint, sum(b.imported)::bigint
             FROM syncline_activity_buckets b
             WHERE b.bucket >= $2
               AND ($1::text IS NULL OR b.uid = (SELECT uid FROM syncline_users WHERE name = $1))
             GROUP BY b.bucket ORDER BY b.bucket",
            &[&user, &activity_bucket(since_ms)],
        )?;
        Ok(rows
            .iter()
            .map(|r| ActivityBucket {
                at: r.get(0),
                pushed: r.get::<_, i64>(1) as u64,
                pulled: r.get::<_, i64>(2) as u64,
                imported: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }

    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled.get().execute(
            "DELETE FROM syncline_activity_buckets WHERE bucket < $1",
            &[&activity_bucket(before_ms)],
        )?)
    }
}

/// Counts one pull or push of user `uid` in the caller's transaction, in one statement. In a push's own
/// write transaction, `advance` also stores the user's new counter and last push time (the row the
/// transaction holds locked), so the push's bookkeeping is a single round trip.
pub(super) fn count_sync(
    tx: &mut impl Exec,
    uid: i64,
    a: &SyncActivity<'_>,
    advance: Option<(i64, i64)>,
) -> Result<(), StoreError> {
    let pull = a.kind == SyncKind::Pull;
    let (pull_at, push_at) = if pull {
        (Some(a.at_ms), None)
    } else {
        (None, Some(a.at_ms))
    };
    let (pulled, pushed) = if pull {
        (a.records as i64, 0)
    } else {
        (0, a.records as i64)
    };
    let (sequence, last_push_at) = advance.unzip();
    // Every data-modifying CTE runs whether or not it is referenced; the ones with nothing to do select no
    // row. greatest() skips NULLs: a pull leaves the last push time alone and the other way round.
    tx.exec(
        "WITH counter AS (
             UPDATE syncline_sequences SET seq = $12::bigint, last_push_at = $13::bigint
             WHERE uid = $1 AND $12::bigint IS NOT NULL),
         users AS (
             INSERT INTO syncline_activity_users AS t (uid, last_pull_at, last_push_at, pulls, pushes,
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
                 last_rejection_at = coalesce(excluded.last_rejection_at, t.last_rejection_at)),
         devices AS (
             INSERT INTO syncline_activity_devices AS t
                 (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
             SELECT $1, $14::text, $11::bigint, $2, $3, $15::bigint WHERE $14::text IS NOT NULL
             ON CONFLICT (uid, device) DO UPDATE SET
                 last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at),
                 last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
                 last_push_at = greatest(t.last_push_at, excluded.last_push_at),
                 outbox_pending = coalesce(excluded.outbox_pending, t.outbox_pending))
         INSERT INTO syncline_activity_buckets AS t (uid, bucket, pushed, pulled, imported)
         SELECT $1, $16::bigint, $7, $6, 0 WHERE $6::bigint + $7::bigint > 0
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = t.pushed + excluded.pushed,
             pulled = t.pulled + excluded.pulled, imported = t.imported + excluded.imported",
        &[
            &uid,
            &pull_at,
            &push_at,
            &(pull as i64),
            &(!pull as i64),
            &pulled,
            &pushed,
            &(a.rejected as i64),
            &(a.conflicts as i64),
            &a.rejection,
            &a.at_ms,
            &sequence,
            &last_push_at,
            &a.device,
            &a.outbox_pending.map(|n| n as i64),
            &activity_bucket(a.at_ms),
        ],
    )?;
    Ok(())
}

/// Adds records to the user's bucket of `at_ms`.
fn add_to_bucket(
    tx: &mut impl Exec,
    uid: i64,
    at_ms: i64,
    pushed: i64,
    pulled: i64,
    imported: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO syncline_activity_buckets AS t (uid, bucket, pushed, pulled, imported)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = t.pushed + excluded.pushed,
             pulled = t.pulled + excluded.pulled, imported = t.imported + excluded.imported",
        &[&uid, &activity_bucket(at_ms), &pushed, &pulled, &imported],
    )?;
    Ok(())
}

/// Counts one applied import batch for the dashboard, inside the batch's transaction: what the walk wrote so
/// far, and its rows in their time bucket.
pub(super) fn count_import(
    tx: &mut impl Exec,
    uid: i64,
    a: &ImportActivity<'_>,
) -> Result<(), StoreError> {
    // Assignments read the old row: a batch of a new walk starts the counts again.
    tx.exec(
        "INSERT INTO syncline_import_outcomes AS t (uid, source, stream, phase, walk_started_at,
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
        &[
            &uid,
            &a.source,
            &a.stream,
            &a.phase.as_str(),
            &a.walk_started_at,
            &a.at_ms,
            &(a.upserted as i64),
            &(a.unchanged as i64),
            &(a.deleted as i64),
        ],
    )?;
    let rows = (a.upserted + a.unchanged + a.deleted) as i64;
    if rows > 0 {
        add_to_bucket(tx, uid, a.at_ms, 0, 0, rows)?;
    }
    Ok(())
}
