//! SQLite's statements for import bookkeeping (import states, leases, sealed connections), and its way of
//! claiming a lease; the flows that run them are the crate's `imports` module.

use rusqlite::Connection;
use syncline_core::ImportState;

use super::{Conn, SQL};
use crate::sql::{ImportSql, SqlConn, user_id};
use crate::{Lease, StoreError};

pub(super) const SQL_TEXT: ImportSql = ImportSql {
    states: "SELECT s.state FROM import_states s JOIN users u ON u.uid = s.uid
         WHERE u.name = ?1 AND (?2 IS NULL OR s.source = ?2)
         ORDER BY s.source, s.stream, s.phase = 'incremental'",
    active: "SELECT u.name, s.state FROM import_states s JOIN users u ON u.uid = s.uid
         WHERE s.status IN ('pending', 'running', 'rate_limited')
         ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
    all: "SELECT u.name, s.state FROM import_states s JOIN users u ON u.uid = s.uid
         ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
    save: "INSERT INTO import_states (uid, source, stream, phase, status, generation, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (uid, source, stream, phase)
         DO UPDATE SET status = excluded.status, generation = excluded.generation, state = excluded.state",
    release: "DELETE FROM import_leases WHERE source = ?2 AND owner = ?3
         AND uid = (SELECT uid FROM users WHERE name = ?1)",
    lease: "SELECT l.owner, l.until FROM import_leases l JOIN users u ON u.uid = l.uid
         WHERE u.name = ?1 AND l.source = ?2 AND l.until > ?3",
    put_connection: "INSERT INTO connections (uid, source, sealed) VALUES (?1, ?2, ?3)
         ON CONFLICT (uid, source) DO UPDATE SET sealed = excluded.sealed",
    get_connection: "SELECT c.sealed FROM connections c JOIN users u ON u.uid = c.uid
         WHERE u.name = ?1 AND c.source = ?2",
    delete_connection: "DELETE FROM connections WHERE source = ?2
         AND uid = (SELECT uid FROM users WHERE name = ?1)",
};

/// Takes or renews the lease in the caller's write transaction. The single writer connection serialises
/// claims, so one upsert that only overwrites an expired or own lease decides.
pub(super) fn claim(
    conn: &mut dyn SqlConn,
    user: &str,
    source: &str,
    lease: Lease<'_>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let uid = user_id(conn, &SQL.users, user)?;
    let claimed = conn.execute(
        "INSERT INTO import_leases (uid, source, owner, until) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (uid, source) DO UPDATE SET owner = excluded.owner, until = excluded.until
         WHERE import_leases.owner = excluded.owner OR import_leases.until <= ?5",
        &[
            uid.into(),
            source.into(),
            lease.owner.into(),
            (now_ms + lease.ttl_ms).into(),
            now_ms.into(),
        ],
    )?;
    Ok(claimed > 0)
}

/// Saves one import state in the caller's write transaction.
pub(super) fn save_state(tx: &Connection, uid: i64, state: &ImportState) -> Result<(), StoreError> {
    crate::imports::save_state(&mut Conn(tx), &SQL, uid, state)
}
