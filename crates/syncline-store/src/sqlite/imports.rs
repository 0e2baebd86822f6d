//! SQLite import bookkeeping: import states, leases and sealed connections.

use super::*;

impl ImportStore for SqliteStore {
    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let Some(uid) = existing_user(&tx, user)? else {
            return Ok(Vec::new());
        };
        let mut stmt = tx.prepare_cached(
            "SELECT state FROM import_states WHERE uid = ?1 AND (?2 IS NULL OR source = ?2)
             ORDER BY source, stream, phase = 'incremental'",
        )?;
        let texts: Vec<String> = stmt
            .query_map(params![uid, source], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        texts.iter().map(|t| state_from_json(t)).collect()
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut stmt = tx.prepare_cached(
            "SELECT u.name, s.state FROM import_states s JOIN users u ON u.uid = s.uid
             WHERE s.status IN ('pending', 'running', 'rate_limited')
             ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
        )?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(u, t)| Ok((u, state_from_json(&t)?)))
            .collect()
    }

    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        save_state(&tx, uid, state)?;
        tx.commit()?;
        drop(conn);
        self.import_hook.saved(user, state);
        Ok(())
    }

    fn write_import(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        state: &ImportState,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<Option<WriteSummary>, StoreError> {
        crate::write::write_import(self, user, batch, state, lease, now_ms)
    }

    fn claim_import(
        &self,
        user: &str,
        source: &str,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        let claimed = tx
            .prepare_cached(
                "INSERT INTO import_leases (uid, source, owner, until) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (uid, source) DO UPDATE SET owner = excluded.owner, until = excluded.until
                 WHERE import_leases.owner = excluded.owner OR import_leases.until <= ?5",
            )?
            .execute(params![uid, source, lease.owner, now_ms + lease.ttl_ms, now_ms])?;
        tx.commit()?;
        Ok(claimed > 0)
    }

    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "DELETE FROM import_leases WHERE source = ?2 AND owner = ?3
             AND uid = (SELECT uid FROM users WHERE name = ?1)",
            params![user, source, owner],
        )?;
        Ok(())
    }

    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        Ok(conn
            .prepare_cached(
                "SELECT l.owner, l.until FROM import_leases l JOIN users u ON u.uid = l.uid
                 WHERE u.name = ?1 AND l.source = ?2 AND l.until > ?3",
            )?
            .query_row(params![user, source, now_ms], |r| {
                Ok(LeaseHolder {
                    owner: r.get(0)?,
                    until: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        tx.execute(
            "INSERT INTO connections (uid, source, sealed) VALUES (?1, ?2, ?3)
             ON CONFLICT (uid, source) DO UPDATE SET sealed = excluded.sealed",
            params![uid, source, sealed],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        Ok(conn
            .prepare_cached(
                "SELECT c.sealed FROM connections c JOIN users u ON u.uid = c.uid WHERE u.name = ?1 AND c.source = ?2",
            )?
            .query_row(params![user, source], |r| r.get(0))
            .optional()?)
    }

    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.execute(
            "DELETE FROM connections WHERE source = ?2 AND uid = (SELECT uid FROM users WHERE name = ?1)",
            params![user, source],
        )? > 0)
    }

    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let rows: Vec<(String, String)> = conn
            .prepare_cached(
                "SELECT u.name, s.state FROM import_states s JOIN users u ON u.uid = s.uid
                 ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(u, t)| Ok((u, state_from_json(&t)?)))
            .collect()
    }

    fn observe_imports(&self, observer: Arc<dyn crate::ImportObserver>) -> bool {
        self.import_hook.set(observer)
    }
}

pub(super) fn save_state(tx: &Connection, uid: i64, state: &ImportState) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO import_states (uid, source, stream, phase, status, generation, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (uid, source, stream, phase)
         DO UPDATE SET status = excluded.status, generation = excluded.generation, state = excluded.state",
    )?
    .execute(params![
        uid,
        state.source,
        state.stream,
        state.phase.as_str(),
        state.status.as_str(),
        state.generation,
        state_json(state)
    ])?;
    Ok(())
}
