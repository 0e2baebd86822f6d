//! Import bookkeeping, written once for every backend: import states, leases and sealed connections, as
//! [`ImportStore`] over the backend's [`Sql`] and [`SqlConn`]. Writing an import batch belongs to the write
//! path, which each backend hands on.
//!
//! Nothing here decides what an import does next: the core's state machine and the importer do.

use std::sync::Arc;

use syncline_core::{ImportState, WriteBatch};

use crate::sql::{Backend, Durability, ImportBatch, Sql, SqlConn, SqlRow, user_id};
use crate::{ImportObserver, ImportStore, Lease, LeaseHolder, StoreError, WriteSummary};

/// The stored form of an import state: the whole state as JSON, next to its key.
fn state_json(state: &ImportState) -> String {
    serde_json::to_string(state).expect("import states serialise")
}

fn state_from_json(text: &str) -> Result<ImportState, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Setup(format!("unreadable import state: {e}")))
}

/// Saves one import state (keyed by user, source, stream and phase) in the caller's write transaction.
pub(crate) fn save_state(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    uid: i64,
    state: &ImportState,
) -> Result<(), StoreError> {
    conn.execute(
        sql.imports.save,
        &[
            uid.into(),
            state.source.as_str().into(),
            state.stream.as_str().into(),
            state.phase.as_str().into(),
            state.status.as_str().into(),
            state.generation.into(),
            state_json(state).as_str().into(),
        ],
    )?;
    Ok(())
}

/// [`ImportStore::claim_import`] in the caller's write transaction.
fn claim(
    conn: &mut dyn SqlConn,
    sql: &Sql,
    user: &str,
    source: &str,
    lease: Lease<'_>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let uid = user_id(conn, &sql.users, user)?;
    let key = [uid.into(), source.into()];
    let take = [
        uid.into(),
        source.into(),
        lease.owner.into(),
        (now_ms + lease.ttl_ms).into(),
    ];
    // A lease row locked by another instance (claiming, or writing a batch under its lease) means the job is
    // taken: never wait behind it (PostgreSQL skips locked rows; SQLite's single writer never meets one).
    let held = conn.row(sql.imports.lock_lease, &key, |r| {
        Ok((r.text(0)?, r.int(1)?))
    })?;
    Ok(match held {
        Some((owner, until)) => {
            (owner == lease.owner || until <= now_ms)
                && conn.execute(sql.imports.update_lease, &take)? > 0
        }
        // No row, or a locked one. Locked by our own batch in flight (which renews the lease as it
        // commits): still ours. Locked by another instance: taken. No row: a fresh insert may win.
        None => match conn.row(sql.imports.peek_lease, &key, |r| r.text(0))? {
            Some(owner) => owner == lease.owner,
            None => conn.execute(sql.imports.insert_lease, &take)? > 0,
        },
    })
}

/// A row of user name and state JSON.
fn user_state(r: &dyn SqlRow) -> Result<(String, ImportState), StoreError> {
    Ok((r.text(0)?, state_from_json(&r.text(1)?)?))
}

impl<B: Backend> ImportStore for B {
    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError> {
        self.read(|c| {
            c.rows(B::SQL.imports.states, &[user.into(), source.into()], |r| {
                state_from_json(&r.text(0)?)
            })
        })
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        self.read(|c| c.rows(B::SQL.imports.active, &[], user_state))
    }

    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError> {
        self.transaction(Durability::Full, |c| {
            let uid = user_id(c, &B::SQL.users, user)?;
            save_state(c, &B::SQL, uid, state)
        })?;
        self.import_hook().saved(user, state);
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
        self.import_batch(ImportBatch {
            user,
            batch,
            state,
            lease,
            now_ms,
        })
    }

    fn claim_import(
        &self,
        user: &str,
        source: &str,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.transaction(Durability::Full, |c| {
            claim(c, &B::SQL, user, source, lease, now_ms)
        })
    }

    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError> {
        self.transaction(Durability::Full, |c| {
            c.execute(
                B::SQL.imports.release,
                &[user.into(), source.into(), owner.into()],
            )
        })?;
        Ok(())
    }

    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        self.read(|c| {
            c.row(
                B::SQL.imports.lease,
                &[user.into(), source.into(), now_ms.into()],
                |r| {
                    Ok(LeaseHolder {
                        owner: r.text(0)?,
                        until: r.int(1)?,
                    })
                },
            )
        })
    }

    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.transaction(Durability::Full, |c| {
            let uid = user_id(c, &B::SQL.users, user)?;
            c.execute(
                B::SQL.imports.put_connection,
                &[uid.into(), source.into(), sealed.into()],
            )
        })?;
        Ok(())
    }

    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            c.row(
                B::SQL.imports.get_connection,
                &[user.into(), source.into()],
                |r| r.bytes(0),
            )
        })
    }

    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError> {
        let deleted = self.transaction(Durability::Full, |c| {
            c.execute(
                B::SQL.imports.delete_connection,
                &[user.into(), source.into()],
            )
        })?;
        Ok(deleted > 0)
    }

    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        self.read(|c| c.rows(B::SQL.imports.all, &[], user_state))
    }

    fn observe_imports(&self, observer: Arc<dyn ImportObserver>) -> bool {
        self.import_hook().set(observer)
    }
}
