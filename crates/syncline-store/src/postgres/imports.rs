//! PostgreSQL import bookkeeping: import states, leases and sealed connections.

use super::*;

pub(super) fn save_state(
    tx: &mut impl Exec,
    uid: i64,
    state: &ImportState,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO syncline_import_states (uid, source, stream, phase, status, generation, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (uid, source, stream, phase)
         DO UPDATE SET status = excluded.status, generation = excluded.generation, state = excluded.state",
        &[
            &uid,
            &state.source,
            &state.stream,
            &state.phase.as_str(),
            &state.status.as_str(),
            &state.generation,
            &state_json(state),
        ],
    )?;
    Ok(())
}

impl ImportStore for PostgresStore {
    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
             WHERE u.name = $1 AND ($2::text IS NULL OR s.source = $2)
             ORDER BY s.source, s.stream, s.phase = 'incremental'",
            &[&user, &source],
        )?;
        rows.iter().map(|r| state_from_json(r.get(0))).collect()
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT u.name, s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
             WHERE s.status IN ('pending', 'running', 'rate_limited')
             ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.get(0), state_from_json(r.get(1))?)))
            .collect()
    }

    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        let uid = user_id(&mut tx, user)?;
        save_state(&mut tx, uid, state)?;
        tx.commit()?;
        drop(pooled);
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
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        let uid = user_id(&mut tx, user)?;
        let until = now_ms + lease.ttl_ms;
        // SKIP LOCKED: a lease row locked by another instance (claiming, or writing a batch under its
        // lease) means the job is taken; never wait behind it.
        let current = tx.query_opt(
            "SELECT owner, until FROM syncline_import_leases WHERE uid = $1 AND source = $2
             FOR UPDATE SKIP LOCKED",
            &[&uid, &source],
        )?;
        let claimed = match current {
            Some(row) => {
                let (owner, held_until): (String, i64) = (row.get(0), row.get(1));
                (owner == lease.owner || held_until <= now_ms)
                    && tx.execute(
                        "UPDATE syncline_import_leases SET owner = $3, until = $4
                         WHERE uid = $1 AND source = $2",
                        &[&uid, &source, &lease.owner, &until],
                    )? > 0
            }
            // No row, or a locked one. Locked by our own batch in flight (which renews the lease as it
            // commits): still ours. Locked by another instance: taken. No row: a fresh insert may win.
            None => match tx.query_opt(
                "SELECT owner FROM syncline_import_leases WHERE uid = $1 AND source = $2",
                &[&uid, &source],
            )? {
                Some(row) => row.get::<_, &str>(0) == lease.owner,
                None => {
                    tx.execute(
                        "INSERT INTO syncline_import_leases (uid, source, owner, until)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (uid, source) DO NOTHING",
                        &[&uid, &source, &lease.owner, &until],
                    )? > 0
                }
            },
        };
        tx.commit()?;
        Ok(claimed)
    }

    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        pooled.get().execute(
            "DELETE FROM syncline_import_leases WHERE source = $2 AND owner = $3
             AND uid = (SELECT uid FROM syncline_users WHERE name = $1)",
            &[&user, &source, &owner],
        )?;
        Ok(())
    }

    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled
            .get()
            .query_opt(
                "SELECT l.owner, l.until FROM syncline_import_leases l
                 JOIN syncline_users u ON u.uid = l.uid
                 WHERE u.name = $1 AND l.source = $2 AND l.until > $3",
                &[&user, &source, &now_ms],
            )?
            .map(|r| LeaseHolder {
                owner: r.get(0),
                until: r.get(1),
            }))
    }

    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        let uid = user_id(&mut tx, user)?;
        tx.execute(
            "INSERT INTO syncline_connections (uid, source, sealed) VALUES ($1, $2, $3)
             ON CONFLICT (uid, source) DO UPDATE SET sealed = excluded.sealed",
            &[&uid, &source, &sealed],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled
            .get()
            .query_opt(
                "SELECT c.sealed FROM syncline_connections c JOIN syncline_users u ON u.uid = c.uid
                 WHERE u.name = $1 AND c.source = $2",
                &[&user, &source],
            )?
            .map(|r| r.get(0)))
    }

    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled.get().execute(
            "DELETE FROM syncline_connections WHERE source = $2
             AND uid = (SELECT uid FROM syncline_users WHERE name = $1)",
            &[&user, &source],
        )? > 0)
    }

    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT u.name, s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
             ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.get(0), state_from_json(r.get(1))?)))
            .collect()
    }

    fn observe_imports(&self, observer: Arc<dyn crate::ImportObserver>) -> bool {
        self.import_hook.set(observer)
    }
}
