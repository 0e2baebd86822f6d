//! PostgreSQL writes: the SQL of a write transaction holding its user's counter row (rows, counter,
//! idempotency, lease, checkpoint; the flow is [`crate::write`]), and garbage collection.

use super::activity::{ADVANCE_COUNTED, count_import};
use super::imports::save_state;
use super::*;
use crate::write::{WriteBackend, WriteContext, WriteTx};
use crate::{SyncKind, activity_bucket};

/// The user's uid and counter, locked until commit: the first statement of every write transaction.
const LOCK: &str =
    "SELECT s.uid, s.seq FROM syncline_users u JOIN syncline_sequences s ON s.uid = u.uid
     WHERE u.name = $1 FOR UPDATE OF s";

/// One write transaction of one user on a pooled connection, holding the user's counter row locked from
/// [`WriteBackend::begin`] until commit: the user's writers on every instance then commit in sequence order,
/// and other users' writers are not held up. Statements are prepared once per connection.
pub(crate) struct PgWrite {
    conn: PooledClient,
    open: bool,
}

impl Drop for PgWrite {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.get().batch_execute("ROLLBACK");
        }
    }
}

impl PgWrite {
    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let statement = self.conn.prepared(sql)?;
        Ok(self.conn.get().query(&statement, params)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, StoreError> {
        let statement = self.conn.prepared(sql)?;
        Ok(self.conn.get().query_opt(&statement, params)?)
    }

    fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.conn.prepared(sql)?;
        Ok(self.conn.get().execute(&statement, params)?)
    }
}

impl WriteBackend for PostgresStore {
    type Tx<'a> = PgWrite;

    fn begin(&self, user: &str) -> Result<(PgWrite, i64, i64), StoreError> {
        let mut conn = self.client()?;
        conn.get()
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        let mut tx = PgWrite { conn, open: true };
        let row = match tx.query_opt(LOCK, &[&user])? {
            Some(row) => row,
            None => {
                // The user's first write (since the migration): create the user, and a counter starting at
                // the frozen global value.
                tx.exec(INSERT_USER, &[&user])?;
                tx.exec(
                    "INSERT INTO syncline_sequences (uid, seq)
                     SELECT u.uid, m.value FROM syncline_users u, syncline_meta m
                     WHERE u.name = $1 AND m.key = 'seq' ON CONFLICT (uid) DO NOTHING",
                    &[&user],
                )?;
                tx.query_opt(LOCK, &[&user])?
                    .ok_or_else(|| StoreError::Postgres("the user's counter row vanished".into()))?
            }
        };
        Ok((tx, row.get(0), row.get(1)))
    }

    fn context(&self) -> WriteContext<'_> {
        WriteContext {
            schema: &self.schema,
            tids: &self.tids,
            import_hook: &self.import_hook,
        }
    }

    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        // One statement removes the tombstones and raises each user's horizon to the highest sequence it
        // removed, so no pull can see one without the other. It locks only the rows of users who had
        // tombstones to collect, never a global row.
        let tombstones: i64 = tx
            .query_one(
                "WITH gone AS (
                     DELETE FROM syncline_records WHERE deleted_at IS NOT NULL AND deleted_at < $1
                     RETURNING uid, seq),
                 raised AS (
                     UPDATE syncline_users u SET tombstone_horizon = greatest(u.tombstone_horizon, h.horizon)
                     FROM (SELECT uid, max(seq) AS horizon FROM gone GROUP BY uid) h
                     WHERE u.uid = h.uid RETURNING 1)
                 SELECT count(*) FROM gone",
                &[&tombstone_cutoff_ms],
            )?
            .get(0);
        let tombstones = tombstones as u64;
        let idempotency_keys = tx.execute(
            "DELETE FROM syncline_idempotency WHERE created_at < $1",
            &[&idempotency_cutoff_ms],
        )?;
        tx.commit()?;
        Ok(GcStats {
            tombstones,
            idempotency_keys,
        })
    }
}

impl WriteTx for PgWrite {
    fn remembered(&mut self, uid: i64, key: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT request_hash, response FROM syncline_idempotency WHERE uid = $1 AND key = $2",
                &[&uid, &key],
            )?
            .map(|row| (row.get(0), row.get(1))))
    }

    fn advance(
        &mut self,
        uid: i64,
        sequence: i64,
        push_at: Option<i64>,
        activity: Option<&SyncActivity<'_>>,
    ) -> Result<(), StoreError> {
        // Pushes also stamp the user's last push, in the same update of the row it holds locked.
        let Some(a) = activity else {
            self.exec(
                "UPDATE syncline_sequences SET seq = $1, last_push_at = coalesce($3, last_push_at)
                 WHERE uid = $2",
                &[&sequence, &uid, &push_at],
            )?;
            return Ok(());
        };
        debug_assert_eq!(a.kind, SyncKind::Push, "a write counts itself as a push");
        let records = a.records as i64;
        let (rejected, conflicts) = (a.rejected as i64, a.conflicts as i64);
        let outbox = a.outbox_pending.map(|n| n as i64);
        self.exec(
            ADVANCE_COUNTED,
            &[
                &sequence,
                &uid,
                &push_at,
                &a.at_ms,
                &records,
                &rejected,
                &conflicts,
                &a.rejection,
                &a.device,
                &outbox,
                &activity_bucket(a.at_ms),
            ],
        )?;
        Ok(())
    }

    fn remember(
        &mut self,
        uid: i64,
        key: &IdempotencyKey,
        response: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO syncline_idempotency (uid, key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&uid, &key.key, &&key.request_hash[..], &response, &now_ms],
        )?;
        Ok(())
    }

    fn renew_lease(
        &mut self,
        uid: i64,
        source: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE syncline_import_leases SET until = $4 WHERE uid = $1 AND source = $2 AND owner = $3",
            &[&uid, &source, &owner, &until],
        )? > 0)
    }

    fn stored_generation(
        &mut self,
        uid: i64,
        state: &ImportState,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT generation FROM syncline_import_states
                 WHERE uid = $1 AND source = $2 AND stream = $3 AND phase = $4 FOR UPDATE",
                &[&uid, &state.source, &state.stream, &state.phase.as_str()],
            )?
            .map(|r| r.get(0)))
    }

    fn save_state(&mut self, uid: i64, state: &ImportState) -> Result<(), StoreError> {
        save_state(&mut self.conn, uid, state)
    }

    fn count_import(&mut self, uid: i64, activity: &ImportActivity<'_>) -> Result<(), StoreError> {
        count_import(&mut self.conn, uid, activity)
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.conn.get().batch_execute("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl RecordTx for PgWrite {
    fn find(&mut self, uid: i64, tid: i64, id: &str) -> Result<Option<Existing>, StoreError> {
        let row = self.query_opt(
            "SELECT seq, deleted_at IS NOT NULL, data FROM syncline_records WHERE uid = $1 AND tid = $2 AND id = $3",
            &[&uid, &(tid as i32), &id],
        )?;
        Ok(row.map(|r| Existing {
            seq: r.get(0),
            deleted: r.get(1),
            data: r.get(2),
        }))
    }

    fn insert_new(
        &mut self,
        uid: i64,
        tid: i64,
        rows: &[NewRow<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let data: Vec<&str> = rows.iter().map(|r| r.data).collect();
        // One statement for the whole batch (array `unnest`): the fast path measured in PERF.md.
        let inserted = self.query(
            "INSERT INTO syncline_records (uid, tid, id, seq, deleted_at, data)
             SELECT $1, $2, r.id, r.seq, NULL, r.data FROM unnest($3::text[], $4::int8[], $5::text[]) AS r (id, seq, data)
             ON CONFLICT (uid, tid, id) DO NOTHING
             RETURNING id",
            &[&uid, &(tid as i32), &ids, &seqs, &data],
        )?;
        let mut new: std::collections::HashSet<String> =
            inserted.iter().map(|r| r.get(0)).collect();
        // A repeated id is inserted once, by its first occurrence.
        Ok(rows.iter().map(|r| new.remove(r.id)).collect())
    }

    fn rewrite(
        &mut self,
        uid: i64,
        tid: i64,
        old_seq: i64,
        seq: i64,
        data: Option<&str>,
        deleted_at: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE syncline_records SET seq = $4, deleted_at = $5, data = $6 WHERE uid = $1 AND tid = $2 AND seq = $3",
            &[&uid, &(tid as i32), &old_seq, &seq, &data.is_none().then_some(deleted_at), &data],
        )?;
        Ok(())
    }

    fn live_ids_except(
        &mut self,
        uid: i64,
        tid: i64,
        keep: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL AND id <> $3",
            &[&uid, &(tid as i32), &keep],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn children(
        &mut self,
        uid: i64,
        tid: i64,
        column: &str,
        parents: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL
             AND (data::jsonb ->> $3) = ANY($4)",
            &[&uid, &(tid as i32), &column, &parents],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
