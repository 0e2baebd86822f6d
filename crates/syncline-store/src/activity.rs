//! Per-user stats and dashboard activity, written once for every backend: what `user_stats`,
//! [`ActivityStore`] and the import batches' counters do, over the backend's [`Sql`] and [`SqlConn`].
//!
//! Nothing here decides what a sync or import is: the server and the write path report them.

use std::collections::HashMap;

use syncline_core::Schema;

use crate::sql::{Backend, Durability, Sql, SqlConn, SqlRow, user_id};
use crate::{
    ActivityBucket, ActivityStore, DeviceActivity, ImportActivity, ImportOutcome, StoreError,
    SyncActivity, SyncKind, TableStats, UserActivity, UserStats, activity_bucket,
};

/// Counts for one user, in the caller's read snapshot. `tids` maps table names to their internal ids.
pub(crate) fn user_stats(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    schema: &Schema,
    tids: &HashMap<String, i64>,
    user: &str,
) -> Result<UserStats, StoreError> {
    let (uid, last_push_at, sequence) = conn
        .row(sql.activity.stats_user, &[user.into()], |r| {
            Ok((r.opt_int(0)?, r.opt_int(1)?, r.int(2)?))
        })?
        .ok_or_else(|| StoreError::Setup("the change counter is missing".into()))?;
    let mut stats = UserStats {
        sequence,
        last_push_at,
        ..Default::default()
    };
    for table in schema.tables() {
        stats
            .tables
            .insert(table.name.clone(), TableStats::default());
    }
    let Some(uid) = uid else {
        return Ok(stats);
    };
    let names: HashMap<i64, &str> = tids.iter().map(|(n, t)| (*t, n.as_str())).collect();
    conn.query(sql.activity.stats_tables, &[uid.into()], &mut |r| {
        if let Some(name) = names.get(&r.int(0)?) {
            let counts = TableStats {
                records: r.count(1)?,
                tombstones: r.count(2)?,
            };
            stats.tables.insert(name.to_string(), counts);
        }
        Ok(())
    })?;
    Ok(stats)
}

/// Adds records to the user's bucket of `at_ms`.
fn add_to_bucket(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    uid: i64,
    at_ms: i64,
    [pushed, pulled, imported]: [u64; 3],
) -> Result<(), StoreError> {
    conn.execute(
        sql.activity.add_to_bucket,
        &[
            uid.into(),
            activity_bucket(at_ms).into(),
            pushed.into(),
            pulled.into(),
            imported.into(),
        ],
    )?;
    Ok(())
}

/// Counts one applied import batch for the dashboard, inside the batch's transaction: what the walk wrote so
/// far, and its rows in their time bucket.
pub(crate) fn count_import(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    uid: i64,
    a: &ImportActivity<'_>,
) -> Result<(), StoreError> {
    conn.execute(
        sql.activity.count_import,
        &[
            uid.into(),
            a.source.into(),
            a.stream.into(),
            a.phase.as_str().into(),
            a.walk_started_at.into(),
            a.at_ms.into(),
            a.upserted.into(),
            a.unchanged.into(),
            a.deleted.into(),
        ],
    )?;
    let rows = a.upserted + a.unchanged + a.deleted;
    if rows > 0 {
        add_to_bucket(conn, sql, uid, a.at_ms, [0, 0, rows])?;
    }
    Ok(())
}

/// [`ActivityStore::record_syncs`]'s transaction: the entries in (user, device, time bucket) order, each
/// user's uid looked up once.
fn record_syncs(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    batch: &[(&str, SyncActivity<'_>)],
) -> Result<(), StoreError> {
    let mut order: Vec<&(&str, SyncActivity<'_>)> = batch.iter().collect();
    order.sort_by_key(|(user, a)| (*user, a.device, activity_bucket(a.at_ms)));
    let mut uid: Option<(&str, i64)> = None;
    for (user, a) in order {
        let id = match uid {
            Some((name, id)) if name == *user => id,
            _ => {
                let id = user_id(conn, &sql.users, user)?;
                hold_counter(conn, sql, id)?;
                id
            }
        };
        uid = Some((user, id));
        count_sync(conn, sql, id, a)?;
    }
    Ok(())
}

/// Where the backend asks for it (PostgreSQL), holds the user's counter row until commit before counting:
/// a push counts itself in statements whose row locks come in no fixed order, so no counting of the same
/// user may run beside it. Shared locks of other countings do not wait for each other, and these take the
/// rows of their users in one order.
fn hold_counter(conn: &mut dyn SqlConn, sql: &Sql, uid: i64) -> Result<(), StoreError> {
    if let Some((hold, create)) = sql.activity.hold_counter
        && conn.row(hold, &[uid.into()], |_| Ok(()))?.is_none()
    {
        conn.execute(create, &[uid.into()])?;
        conn.row(hold, &[uid.into()], |_| Ok(()))?;
    }
    Ok(())
}

/// Counts one pull or push of user `uid` in the caller's transaction (a push's own write transaction, or
/// one of its own).
pub(crate) fn count_sync(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    uid: i64,
    a: &SyncActivity<'_>,
) -> Result<(), StoreError> {
    let pull = a.kind == SyncKind::Pull;
    let (pull_at, push_at) = if pull {
        (Some(a.at_ms), None)
    } else {
        (None, Some(a.at_ms))
    };
    let (pulled, pushed) = if pull { (a.records, 0) } else { (0, a.records) };
    conn.execute(
        sql.activity.record_user,
        &[
            uid.into(),
            pull_at.into(),
            push_at.into(),
            (if pull { a.requests } else { 0 }).into(),
            (if pull { 0 } else { a.requests }).into(),
            pulled.into(),
            pushed.into(),
            a.rejected.into(),
            a.conflicts.into(),
            a.rejection.into(),
            a.at_ms.into(),
        ],
    )?;
    if let Some(device) = a.device {
        conn.execute(
            sql.activity.record_device,
            &[
                uid.into(),
                device.into(),
                a.at_ms.into(),
                pull_at.into(),
                push_at.into(),
                a.outbox_pending.into(),
            ],
        )?;
    }
    if a.records > 0 {
        add_to_bucket(conn, sql, uid, a.at_ms, [pushed, pulled, 0])?;
    }
    Ok(())
}

/// The rows of a per-user query (uid first, `user` its parameter) that belong to a listed user, mapped, each
/// with its user's place in the list (`index`: uid -> place).
fn of_listed<T>(
    conn: &mut dyn SqlConn,
    sql: &str,
    user: Option<&str>,
    index: &HashMap<i64, usize>,
    map: impl Fn(&dyn SqlRow) -> Result<T, StoreError>,
) -> Result<Vec<(usize, T)>, StoreError> {
    let mut out = Vec::new();
    conn.query(sql, &[user.into()], &mut |r| {
        if let Some(&i) = index.get(&r.int(0)?) {
            out.push((i, map(r)?));
        }
        Ok(())
    })?;
    Ok(out)
}

/// [`ActivityStore::user_activity`] in the caller's read snapshot.
fn user_activity(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    user: Option<&str>,
    limit: usize,
) -> Result<Vec<UserActivity>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut users = conn.rows(sql.activity.users, &[user.into(), limit.into()], |r| {
        Ok((
            r.int(0)?,
            UserActivity {
                user: r.text(1)?,
                last_pull_at: r.opt_int(2)?,
                last_push_at: r.opt_int(3)?,
                pulls: r.count(4)?,
                pushes: r.count(5)?,
                records_pulled: r.count(6)?,
                records_pushed: r.count(7)?,
                rejected: r.count(8)?,
                conflicts: r.count(9)?,
                last_rejection: r.opt_text(10)?,
                last_rejection_at: r.opt_int(11)?,
                ..Default::default()
            },
        ))
    })?;
    let index: HashMap<i64, usize> = users
        .iter()
        .enumerate()
        .map(|(i, (uid, _))| (*uid, i))
        .collect();
    let devices = of_listed(conn, sql.activity.devices, user, &index, |r| {
        Ok(DeviceActivity {
            device: r.text(1)?,
            last_seen_at: r.int(2)?,
            last_pull_at: r.opt_int(3)?,
            last_push_at: r.opt_int(4)?,
            outbox_pending: r.opt_int(5)?.map(|n| n.max(0) as u64),
        })
    })?;
    for (i, device) in devices {
        users[i].1.devices.push(device);
    }
    let imports = of_listed(conn, sql.activity.imports, user, &index, |r| {
        Ok(ImportOutcome {
            source: r.text(1)?,
            stream: r.text(2)?,
            phase: r.text(3)?.parse().unwrap_or_default(),
            walk_started_at: r.int(4)?,
            last_batch_at: r.int(5)?,
            batches: r.count(6)?,
            upserted: r.count(7)?,
            unchanged: r.count(8)?,
            deleted: r.count(9)?,
        })
    })?;
    for (i, outcome) in imports {
        users[i].1.imports.push(outcome);
    }
    Ok(users.into_iter().map(|(_, a)| a).collect())
}

impl<B: Backend> ActivityStore for B {
    fn record_syncs(&self, batch: &[(&str, SyncActivity<'_>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.transaction(Durability::Relaxed, |c| record_syncs(c, &B::SQL, batch))
    }

    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError> {
        self.snapshot(|c| user_activity(c, &B::SQL, user, limit))
    }

    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let params = [user.into(), activity_bucket(since_ms).into()];
        self.read(|c| {
            c.rows(B::SQL.activity.series, &params, |r| {
                Ok(ActivityBucket {
                    at: r.int(0)?,
                    pushed: r.count(1)?,
                    pulled: r.count(2)?,
                    imported: r.count(3)?,
                })
            })
        })
    }

    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.transaction(Durability::Full, |c| {
            c.execute(B::SQL.activity.prune, &[activity_bucket(before_ms).into()])
        })
    }
}
