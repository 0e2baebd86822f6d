//! SQLite writes: the row operations of a write transaction, pushes and bulk writes, import batches with their checkpoint and lease, and garbage collection.

use super::activity::count_import;
use super::imports::save_state;
use super::*;

/// The row operations of one SQLite write transaction.
struct SqliteRows<'t> {
    tx: &'t Transaction<'t>,
    /// Prepared once per transaction: it runs once per new record.
    insert: rusqlite::CachedStatement<'t>,
}

impl<'t> SqliteRows<'t> {
    fn new(tx: &'t Transaction<'t>) -> Result<SqliteRows<'t>, rusqlite::Error> {
        let insert = tx.prepare_cached(
            "INSERT INTO records (seq, uid, tid, id, deleted_at, data) VALUES (?1, ?2, ?3, ?4, NULL, ?5)
             ON CONFLICT (uid, tid, id) DO NOTHING",
        )?;
        Ok(SqliteRows { tx, insert })
    }
}

impl RecordTx for SqliteRows<'_> {
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
        let mut inserted = Vec::with_capacity(rows.len());
        for row in rows {
            inserted.push(
                self.insert
                    .execute(params![row.seq, uid, tid, row.id, row.data])?
                    == 1,
            );
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

impl SqliteStore {
    /// Applies `batch` after the current sequence and stores the new maximum, inside the caller's write
    /// transaction on the single writer connection: the one place the commit-order invariant is kept.
    /// A batch with conflicts leaves the counter alone (the caller rolls back).
    fn apply_sequenced(
        &self,
        tx: &Transaction<'_>,
        uid: i64,
        now_ms: i64,
        batch: &WriteBatch<'_>,
    ) -> Result<crate::apply::Applied, StoreError> {
        let start: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
        let applied = {
            let mut rows = SqliteRows::new(tx)?;
            apply(
                &mut rows,
                &self.schema,
                &self.tids,
                uid,
                start,
                now_ms,
                batch,
            )?
        };
        if applied.conflicts.is_empty() {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'seq'",
                [applied.sequence],
            )?;
        }
        Ok(applied)
    }
}

impl SqliteStore {
    pub(super) fn write_changes(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
    ) -> Result<WriteOutcome, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        if let Some(key) = idempotency {
            let seen: Option<(Vec<u8>, String)> = tx
                .prepare_cached(
                    "SELECT request_hash, response FROM idempotency WHERE uid = ?1 AND key = ?2",
                )?
                .query_row(params![uid, key.key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((hash, response)) = seen {
                return if hash == key.request_hash {
                    Ok(WriteOutcome::Replayed { response })
                } else {
                    Err(StoreError::IdempotencyKeyReused)
                };
            }
        }
        let applied = self.apply_sequenced(&tx, uid, now_ms, batch)?;
        if !applied.conflicts.is_empty() {
            // Dropping `tx` rolls back whatever was written.
            return Ok(WriteOutcome::Conflict {
                conflicts: applied.conflicts,
            });
        }
        let summary = WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        };
        tx.execute(
            "UPDATE users SET last_push_at = ?1 WHERE uid = ?2",
            params![now_ms, uid],
        )?;
        let response = respond(&summary);
        if let Some(key) = idempotency {
            tx.execute(
                "INSERT INTO idempotency (uid, key, request_hash, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![uid, key.key, &key.request_hash[..], response, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(WriteOutcome::Applied { summary, response })
    }

    pub(super) fn collect(
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

impl SqliteStore {
    pub(super) fn write_import_batch(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        state: &ImportState,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<Option<WriteSummary>, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        let renewed = tx
            .prepare_cached(
                "UPDATE import_leases SET until = ?4 WHERE uid = ?1 AND source = ?2 AND owner = ?3",
            )?
            .execute(params![
                uid,
                state.source,
                lease.owner,
                now_ms + lease.ttl_ms
            ])?;
        if renewed == 0 {
            return Ok(None);
        }
        let stored: Option<i64> = tx
            .prepare_cached(
                "SELECT generation FROM import_states WHERE uid = ?1 AND source = ?2 AND stream = ?3 AND phase = ?4",
            )?
            .query_row(
                params![uid, state.source, state.stream, state.phase.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if stored.is_some_and(|g| g != state.generation) {
            return Ok(None);
        }
        let applied = self.apply_sequenced(&tx, uid, now_ms, batch)?;
        save_state(&tx, uid, state)?;
        if !batch.tables.is_empty() {
            count_import(
                &tx,
                uid,
                &ImportActivity::of_batch(state, &applied.counts, now_ms),
            )?;
        }
        tx.commit()?;
        drop(conn);
        self.import_hook.saved(user, state);
        Ok(Some(WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        }))
    }
}
