//! Import bookkeeping, written once for every backend: import states, leases and sealed connections, as
//! [`ImportStore`] over the backend's [`Sql`] and [`SqlConn`]. Two steps stay with the backend: claiming a
//! lease (each database locks its own way) and writing an import batch (the write path's).
//!
//! Nothing here decides what an import does next: the core's state machine and the importer do.

use std::sync::Arc;

use syncline_core::{ImportState, WriteBatch};

use crate::sql::{Backend, Durability, Sql, SqlConn, SqlRow, user_id};
use crate::{
    ImportObserver, ImportStore, Lease, LeaseHolder, StoreError, WriteSummary, state_from_json,
    state_json,
};

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
        self.snapshot(|c| {
            c.rows(B::SQL.imports.states, &[user.into(), source.into()], |r| {
                state_from_json(&r.text(0)?)
            })
        })
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        self.snapshot(|c| c.rows(B::SQL.imports.active, &[], user_state))
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
        self.import_batch(user, batch, state, lease, now_ms)
    }

    fn claim_import(
        &self,
        user: &str,
        source: &str,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.claim_lease(user, source, lease, now_ms)
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
        self.snapshot(|c| {
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
        self.snapshot(|c| {
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
        self.snapshot(|c| c.rows(B::SQL.imports.all, &[], user_state))
    }

    fn observe_imports(&self, observer: Arc<dyn ImportObserver>) -> bool {
        self.import_hook().set(observer)
    }
}
