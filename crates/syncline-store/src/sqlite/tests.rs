//! The SQLite writer's `synchronous` setting: a relaxed dashboard transaction never leaves the writer
//! relaxed for the durable writes after it, whether the transaction committed, failed or panicked.

use std::sync::Arc;

use super::SqliteStore;
use crate::sql::{Backend, Durability};
use crate::{ActivityStore, StoreError, StoreOptions, SyncActivity, SyncKind};

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    let config = toml::from_str("[notes]\ncolumns = { body = \"string\" }").unwrap();
    let schema = Arc::new(syncline_core::Schema::from_config(&config).unwrap());
    let options = StoreOptions {
        acquire_timeout: std::time::Duration::from_millis(50),
        ..StoreOptions::default()
    };
    SqliteStore::open_with(&dir.path().join("s.db"), schema, &options).unwrap()
}

/// The writer connection's `synchronous` level (2 is FULL, 1 NORMAL).
fn writer_synchronous(store: &SqliteStore) -> i64 {
    let conn = store.writer.lock().unwrap_or_else(|e| e.into_inner());
    conn.pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap()
}

fn pull(at_ms: i64) -> SyncActivity<'static> {
    SyncActivity {
        kind: SyncKind::Pull,
        at_ms,
        requests: 1,
        device: Some("phone"),
        outbox_pending: None,
        records: 3,
        rejected: 0,
        conflicts: 0,
        rejection: None,
    }
}

#[test]
fn a_counted_sync_leaves_the_writer_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    assert_eq!(writer_synchronous(&store), 2);
    store.record_sync("alice", &pull(1_000)).unwrap();
    assert_eq!(writer_synchronous(&store), 2);
    assert_eq!(store.user_activity(Some("alice"), 1).unwrap()[0].pulls, 1);
}

#[test]
fn a_counted_sync_that_fails_leaves_the_writer_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    // Another process holds the write lock for longer than the store waits.
    let other = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let failed = store.record_sync("alice", &pull(1_000));
    assert!(matches!(failed, Err(StoreError::Busy)), "{failed:?}");
    assert_eq!(writer_synchronous(&store), 2);
    other.execute_batch("ROLLBACK").unwrap();
    store.record_sync("alice", &pull(2_000)).unwrap();
    assert_eq!(writer_synchronous(&store), 2);
}

#[test]
fn a_relaxed_transaction_that_panics_leaves_the_writer_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.transaction(Durability::Relaxed, |_| -> Result<(), StoreError> {
            panic!("a bug in a dashboard counter")
        })
    }));
    assert!(outcome.is_err());
    assert_eq!(writer_synchronous(&store), 2);
    store.record_sync("alice", &pull(1_000)).unwrap();
    assert_eq!(writer_synchronous(&store), 2);
}
