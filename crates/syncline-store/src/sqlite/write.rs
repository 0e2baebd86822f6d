//! SQLite writes: the SQL of a write transaction on the single writer connection (rows, counter,
//! idempotency, lease, checkpoint; the flow is [`crate::write`]) and garbage collection.

use super::activity::{count_import, count_sync};
use super::imports::save_state;
use super::*;
use crate::write::{WriteBackend, WriteContext, WriteTx};

/// One write transaction on the single writer connection, which it holds until commit or drop: the one
/// place the commit-order invariant is kept (the sequence is read after `BEGIN IMMEDIATE` and stored again
/// before the commit).
pub(crate) struct SqliteWrite<'s> {
    tx: std::sync::MutexGuard<'s, Connection>,
    open: bool,
}

impl Drop for SqliteWrite<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.tx.execute_batch("ROLLBACK");
        }
    }
}

impl WriteBackend for SqliteStore {
    type Tx<'a> = SqliteWrite<'a>;

    fn begin(&self, user: &str) -> Result<(SqliteWrite<'_>, i64, i64), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let tx = SqliteWrite {
            tx: conn,
            open: true,
        };
        let uid = user_id(&tx.tx, user)?;
        let start = tx
            .tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'seq'")?
            .query_row([], |r| r.get(0))?;
        Ok((tx, uid, start))
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
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE users SET tombstone_horizon = max(tombstone_horizon, h.horizon)
             FROM (SELECT uid, max(seq) AS horizon FROM records
                   WHERE deleted_at IS NOT NULL AND deleted_at < ?1 GROUP BY uid) AS h
             WHERE users.uid = h.uid",
            [tombstone_cutoff_ms],
        )?;
        let tombstones = tx.execute(
            "DELETE FROM records WHERE deleted_at IS NOT NULL AND deleted_at < ?1",
            [tombstone_cutoff_ms],
        )?;
        let idempotency_keys = tx.execute(
            "DELETE FROM idempotency WHERE created_at < ?1",
            [idempotency_cutoff_ms],
        )?;
        tx.commit()?;
        Ok(GcStats {
            tombstones: tombstones as u64,
            idempotency_keys: idempotency_keys as u64,
        })
    }
}

impl WriteTx for SqliteWrite<'_> {
    fn remembered(&mut self, uid: i64, key: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT request_hash, response FROM idempotency WHERE uid = ?1 AND key = ?2",
            )?
            .query_row(params![uid, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn advance(
        &mut self,
        uid: i64,
        sequence: i64,
        push_at: Option<i64>,
        activity: Option<&SyncActivity<'_>>,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'seq'")?
            .execute([sequence])?;
        if let Some(at) = push_at {
            self.tx
                .prepare_cached("UPDATE users SET last_push_at = ?1 WHERE uid = ?2")?
                .execute(params![at, uid])?;
        }
        if let Some(activity) = activity {
            count_sync(&self.tx, uid, activity)?;
        }
        Ok(())
    }

    fn remember(
        &mut self,
        uid: i64,
        key: &IdempotencyKey,
        response: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO idempotency (uid, key, request_hash, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![uid, key.key, &key.request_hash[..], response, now_ms],
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
        Ok(self
            .tx
            .prepare_cached(
                "UPDATE import_leases SET until = ?4 WHERE uid = ?1 AND source = ?2 AND owner = ?3",
            )?
            .execute(params![uid, source, owner, until])?
            > 0)
    }

    fn stored_generation(
        &mut self,
        uid: i64,
        state: &ImportState,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT generation FROM import_states WHERE uid = ?1 AND source = ?2 AND stream = ?3 AND phase = ?4",
            )?
            .query_row(
                params![uid, state.source, state.stream, state.phase.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn save_state(&mut self, uid: i64, state: &ImportState) -> Result<(), StoreError> {
        save_state(&self.tx, uid, state)
    }

    fn count_import(&mut self, uid: i64, activity: &ImportActivity<'_>) -> Result<(), StoreError> {
        count_import(&self.tx, uid, activity)
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.tx.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl RecordTx for SqliteWrite<'_> {
    fn find(&mut self, uid: i64, tid: i64, id: &str) -> Result<Option<Existing>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT seq, deleted_at IS NOT NULL, data FROM records WHERE uid = ?1 AND tid = ?2 AND id = ?3",
            )?
            .query_row(params![uid, tid, id], |r| {
                Ok(Existing { seq: r.get(0)?, deleted: r.get(1)?, data: r.get(2)? })
            })
            .optional()?)
    }

    fn insert_new(
        &mut self,
        uid: i64,
        tid: i64,
        rows: &[NewRow<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO records (seq, uid, tid, id, deleted_at, data) VALUES (?1, ?2, ?3, ?4, NULL, ?5)
             ON CONFLICT (uid, tid, id) DO NOTHING",
        )?;
        // The hot loop of a push: the user and table are bound once (bindings outlive each step's reset),
        // each row binds only its own three values.
        insert.raw_bind_parameter(2, uid)?;
        insert.raw_bind_parameter(3, tid)?;
        let mut inserted = Vec::with_capacity(rows.len());
        for row in rows {
            insert.raw_bind_parameter(1, row.seq)?;
            insert.raw_bind_parameter(4, row.id)?;
            insert.raw_bind_parameter(5, row.data)?;
            inserted.push(insert.raw_execute()? == 1);
        }
        Ok(inserted)
    }

    fn rewrite(
        &mut self,
        _uid: i64,
        _tid: i64,
        old_seq: i64,
        seq: i64,
        data: Option<&str>,
        deleted_at: i64,
    ) -> Result<(), StoreError> {
        // `seq` is the rowid: rewriting it moves the row to the end of the log.
        self.tx
            .prepare_cached(
                "UPDATE records SET seq = ?1, deleted_at = ?2, data = ?3 WHERE seq = ?4",
            )?
            .execute(params![
                seq,
                data.is_none().then_some(deleted_at),
                data,
                old_seq
            ])?;
        Ok(())
    }

    fn live_ids_except(
        &mut self,
        uid: i64,
        tid: i64,
        keep: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT id FROM records WHERE uid = ?1 AND tid = ?2 AND deleted_at IS NULL AND id <> ?3",
            )?
            .query_map(params![uid, tid, keep], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn children(
        &mut self,
        uid: i64,
        tid: i64,
        column: &str,
        parents: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        // One scan of the user's rows of the child table per call; `column` is a checked schema name.
        let sql = format!(
            "SELECT id FROM records WHERE uid = ?1 AND tid = ?2 AND deleted_at IS NULL
             AND json_extract(data, '$.{column}') IN (SELECT value FROM json_each(?3))"
        );
        let parents = serde_json::to_string(parents).expect("strings serialise");
        Ok(self
            .tx
            .prepare_cached(&sql)?
            .query_map(params![uid, tid, parents], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }
}
