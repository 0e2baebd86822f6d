//! SQLite's statements for import bookkeeping (import states, leases, sealed connections); the flows that run them are the crate's `imports` module.

use rusqlite::Connection;
use syncline_core::ImportState;

use super::{Conn, SQL};
use crate::StoreError;
use crate::sql::ImportSql;

pub(super) const STATEMENTS: ImportSql = ImportSql {
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
    lock_lease: "SELECT owner, until FROM import_leases WHERE uid = ?1 AND source = ?2",
    peek_lease: "SELECT owner FROM import_leases WHERE uid = ?1 AND source = ?2",
    update_lease: "UPDATE import_leases SET owner = ?3, until = ?4 WHERE uid = ?1 AND source = ?2",
    insert_lease: "INSERT INTO import_leases (uid, source, owner, until) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (uid, source) DO NOTHING",
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

/// Saves one import state in the caller's write transaction.
pub(super) fn save_state(tx: &Connection, uid: i64, state: &ImportState) -> Result<(), StoreError> {
    crate::imports::save_state(&mut Conn(tx), &SQL, uid, state)
}
