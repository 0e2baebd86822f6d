//! PostgreSQL's statements for import bookkeeping (import states, leases, sealed connections), and its way
//! of claiming a lease; the flows that run them are the crate's `imports` module.

use postgres::Transaction;
use syncline_core::ImportState;

use super::{Pg, SQL, user_id};
use crate::sql::ImportSql;
use crate::{Lease, StoreError};

pub(super) const SQL_TEXT: ImportSql = ImportSql {
    states: "SELECT s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
         WHERE u.name = $1 AND ($2::text IS NULL OR s.source = $2)
         ORDER BY s.source, s.stream, s.phase = 'incremental'",
    active: "SELECT u.name, s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
         WHERE s.status IN ('pending', 'running', 'rate_limited')
         ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
    all: "SELECT u.name, s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
         ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
    save: "INSERT INTO syncline_import_states (uid, source, stream, phase, status, generation, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (uid, source, stream, phase)
         DO UPDATE SET status = excluded.status, generation = excluded.generation, state = excluded.state",
    release: "DELETE FROM syncline_import_leases WHERE source = $2 AND owner = $3
         AND uid = (SELECT uid FROM syncline_users WHERE name = $1)",
    lease: "SELECT l.owner, l.until FROM syncline_import_leases l
         JOIN syncline_users u ON u.uid = l.uid
         WHERE u.name = $1 AND l.source = $2 AND l.until > $3",
    put_connection: "INSERT INTO syncline_connections (uid, source, sealed) VALUES ($1, $2, $3)
         ON CONFLICT (uid, source) DO UPDATE SET sealed = excluded.sealed",
    get_connection: "SELECT c.sealed FROM syncline_connections c JOIN syncline_users u ON u.uid = c.uid
         WHERE u.name = $1 AND c.source = $2",
    delete_connection: "DELETE FROM syncline_connections WHERE source = $2
         AND uid = (SELECT uid FROM syncline_users WHERE name = $1)",
};

/// Takes or renews the lease in the caller's transaction. Several instances claim at once, so the lease row
/// is locked; one locked by another instance means the job is taken.
pub(super) fn claim(
    tx: &mut Transaction<'_>,
    user: &str,
    source: &str,
    lease: Lease<'_>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let uid = user_id(tx, user)?;
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
    Ok(claimed)
}

/// Saves one import state in the caller's write transaction.
pub(super) fn save_state(
    tx: &mut Transaction<'_>,
    uid: i64,
    state: &ImportState,
) -> Result<(), StoreError> {
    crate::imports::save_state(&mut Pg(tx), &SQL, uid, state)
}
