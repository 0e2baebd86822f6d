//! PostgreSQL writes: the row operations of a write transaction, the per-user counter lock, pushes and bulk writes, import batches with their checkpoint and lease, and garbage collection.

use super::activity::count_import;
use super::imports::save_state;
use super::*;

/// The row operations of one PostgreSQL write transaction.
struct PgRows<'a, 't> {
    tx: &'a mut Transaction<'t>,
}

impl RecordTx for PgRows<'_, '_> {
    fn find(&mut self, uid: i64, tid: i64, id: &str) -> Result<Option<Existing>, StoreError> {
        let row = self.tx.query_opt(
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
        let inserted = self.tx.query(
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
        self.tx.execute(
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
        let rows = self.tx.query(
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
        let rows = self.tx.query(
            "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL
             AND (data::jsonb ->> $3) = ANY($4)",
            &[&uid, &(tid as i32), &column, &parents],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Starts a write transaction for `user` holding the lock on the user's counter row until commit: the user's
/// writers on every instance then commit in sequence order, and other users' writers are not held up.
/// Returns the transaction, the user's uid and the user's sequence before the write.
fn begin_sequenced<'c>(
    client: &'c mut Client,
    user: &str,
) -> Result<(Transaction<'c>, i64, i64), StoreError> {
    const LOCK: &str = "SELECT seq FROM syncline_sequences WHERE uid = $1 FOR UPDATE";
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    let uid = user_id(&mut tx, user)?;
    let seq = match tx.query_opt(LOCK, &[&uid])? {
        Some(row) => row.get(0),
        None => {
            // The user's first write since the migration: its counter starts at the frozen global value.
            tx.execute(
                "INSERT INTO syncline_sequences (uid, seq)
                 SELECT $1, value FROM syncline_meta WHERE key = 'seq' ON CONFLICT (uid) DO NOTHING",
                &[&uid],
            )?;
            tx.query_one(LOCK, &[&uid])?.get(0)
        }
    };
    Ok((tx, uid, seq))
}

impl PostgresStore {
    /// Applies `batch` after `start` and stores the new maximum in the user's counter, inside a transaction
    /// from [`begin_sequenced`]. A batch with conflicts leaves the counter alone (the caller rolls back).
    fn apply_sequenced(
        &self,
        tx: &mut Transaction<'_>,
        uid: i64,
        start: i64,
        now_ms: i64,
        batch: &WriteBatch<'_>,
        push_at: Option<i64>,
    ) -> Result<crate::apply::Applied, StoreError> {
        let applied = apply(
            &mut PgRows { tx },
            &self.schema,
            &self.tids,
            uid,
            start,
            now_ms,
            batch,
        )?;
        if applied.conflicts.is_empty() {
            // Pushes also stamp the user's last push, in the same update of the row it holds locked.
            tx.execute(
                "UPDATE syncline_sequences SET seq = $1, last_push_at = coalesce($3, last_push_at)
                 WHERE uid = $2",
                &[&applied.sequence, &uid, &push_at],
            )?;
        }
        Ok(applied)
    }
}

impl PostgresStore {
    pub(super) fn write_changes(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
    ) -> Result<WriteOutcome, StoreError> {
        let mut pooled = self.client()?;
        let (mut tx, uid, start) = begin_sequenced(pooled.get(), user)?;
        if let Some(key) = idempotency {
            let seen = tx.query_opt(
                "SELECT request_hash, response FROM syncline_idempotency WHERE uid = $1 AND key = $2",
                &[&uid, &key.key],
            )?;
            if let Some(row) = seen {
                let hash: Vec<u8> = row.get(0);
                return if hash == key.request_hash {
                    Ok(WriteOutcome::Replayed {
                        response: row.get(1),
                    })
                } else {
                    Err(StoreError::IdempotencyKeyReused)
                };
            }
        }
        let applied = self.apply_sequenced(&mut tx, uid, start, now_ms, batch, Some(now_ms))?;
        if !applied.conflicts.is_empty() {
            tx.rollback()?;
            return Ok(WriteOutcome::Conflict {
                conflicts: applied.conflicts,
            });
        }
        let summary = WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        };
        let response = respond(&summary);
        if let Some(key) = idempotency {
            tx.execute(
                "INSERT INTO syncline_idempotency (uid, key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&uid, &key.key, &&key.request_hash[..], &response, &now_ms],
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

impl PostgresStore {
    pub(super) fn write_import_batch(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        state: &ImportState,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<Option<WriteSummary>, StoreError> {
        let mut pooled = self.client()?;
        let (mut tx, uid, start) = begin_sequenced(pooled.get(), user)?;
        let renewed = tx.execute(
            "UPDATE syncline_import_leases SET until = $4 WHERE uid = $1 AND source = $2 AND owner = $3",
            &[&uid, &state.source, &lease.owner, &(now_ms + lease.ttl_ms)],
        )?;
        if renewed == 0 {
            tx.rollback()?;
            return Ok(None);
        }
        let stored = tx.query_opt(
            "SELECT generation FROM syncline_import_states
             WHERE uid = $1 AND source = $2 AND stream = $3 AND phase = $4 FOR UPDATE",
            &[&uid, &state.source, &state.stream, &state.phase.as_str()],
        )?;
        if stored.is_some_and(|r| r.get::<_, i64>(0) != state.generation) {
            tx.rollback()?;
            return Ok(None);
        }
        let applied = self.apply_sequenced(&mut tx, uid, start, now_ms, batch, None)?;
        save_state(&mut tx, uid, state)?;
        if !batch.tables.is_empty() {
            count_import(
                &mut tx,
                uid,
                &ImportActivity::of_batch(state, &applied.counts, now_ms),
            )?;
        }
        tx.commit()?;
        drop(pooled);
        self.import_hook.saved(user, state);
        Ok(Some(WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        }))
    }
}
