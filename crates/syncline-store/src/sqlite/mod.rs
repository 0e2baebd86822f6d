//! The embedded SQLite backend.
//!
//! Layout: one `records` table holds every user's records and tombstones, keyed by `seq` (the rowid, the
//! global change sequence), so writes append and pulls read in sequence order. `records_key` finds a record by
//! (user, table, id); `records_log` serves pulls by (user, table, seq). Cascading deletes scan the user's rows
//! of each child table, so ordinary writes maintain no extra index.
//!
//! Invariant: all writes go through the single writer connection, and each write transaction takes the next
//! sequence numbers from `meta.seq` and stores the new maximum before it commits. Sequences therefore follow
//! commit order, and a pull that reads `meta.seq` and the rows in one read transaction (one WAL snapshot)
//! never misses a change.
//!
//! Change sequences are per user on every backend (a cursor means something only for its own user). SQLite
//! draws every user's sequence from one counter: with one writer connection, writers are serialized anyway,
//! one counter is a valid order for each user, and `seq` can stay the rowid, so the log stays append-ordered
//! on disk. So on SQLite writes of different users still take turns; PostgreSQL keeps a counter per user.

mod activity;
mod imports;
mod pull;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use syncline_core::{ImportState, PullRequest, Schema, WriteBatch};

use crate::apply::{Existing, NewRow, RecordTx, apply};
use crate::{
    ActivityBucket, ActivityStore, DeviceActivity, GcStats, IdempotencyKey, ImportActivity,
    ImportOutcome, ImportStore, Lease, LeaseHolder, PullSink, PullStats, SqliteSynchronous,
    StoreError, StoreOptions, SyncActivity, SyncKind, SyncStore, TableStats, UserActivity,
    UserStats, WriteOutcome, WriteSummary, activity_bucket, state_from_json, state_json,
};
use activity::ACTIVITY_SETUP;

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    schema: Arc<Schema>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Table name -> internal table id (stable across restarts, kept in `sync_tables`).
    tids: HashMap<String, i64>,
    settings: Settings,
    import_hook: crate::ImportHook,
}

/// The connection settings every connection of the store gets.
#[derive(Debug, Clone, Copy)]
struct Settings {
    synchronous: SqliteSynchronous,
    busy_timeout: std::time::Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const SETUP: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 1), ('layout_version', 1);
CREATE TABLE IF NOT EXISTS users (
    uid INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tombstone_horizon INTEGER NOT NULL DEFAULT 0,
    last_push_at INTEGER
);
CREATE TABLE IF NOT EXISTS sync_tables (tid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    uid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    id TEXT NOT NULL,
    deleted_at INTEGER,
    data TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS records_key ON records (uid, tid, id);
CREATE INDEX IF NOT EXISTS records_log ON records (uid, tid, seq);
CREATE INDEX IF NOT EXISTS records_tombstones ON records (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS import_states (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    stream TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (uid, source, stream, phase)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS import_leases (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    owner TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (uid, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS import_states_status ON import_states (status);
CREATE TABLE IF NOT EXISTS connections (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (uid, source)
) WITHOUT ROWID;
";

fn configure(conn: &Connection, writer: bool, options: &Settings) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(options.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", options.synchronous.pragma())?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The writer gets a real page cache (random-key index inserts live or die by it); readers stream.
    conn.pragma_update(None, "cache_size", if writer { -80_000 } else { -8_000 })?;
    if writer {
        conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    } else {
        // Readers run the same few cached statements with new bindings on every pull. Without the query
        // planner stability guarantee SQLite plans `LIMIT ?` around the bound value and throws the plan
        // away at the next binding, so every pull would compile its statements again.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at a `sqlite://PATH` url or a plain path.
    pub fn open_url(url: &str, schema: Arc<Schema>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_url_with(url, schema, &StoreOptions::default())
    }

    /// [`SqliteStore::open_url`] with `options`.
    pub fn open_url_with(
        url: &str,
        schema: Arc<Schema>,
        options: &StoreOptions,
    ) -> Result<SqliteStore, StoreError> {
        match url.parse()? {
            crate::StorageUrl::Sqlite(path) => SqliteStore::open_with(&path, schema, options),
            crate::StorageUrl::Postgres(_) => Err(StoreError::UnsupportedUrl(url.to_string())),
        }
    }

    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path, schema: Arc<Schema>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, schema, &StoreOptions::default())
    }

    /// [`SqliteStore::open`] with `options`.
    pub fn open_with(
        path: &Path,
        schema: Arc<Schema>,
        options: &StoreOptions,
    ) -> Result<SqliteStore, StoreError> {
        let settings = Settings {
            synchronous: options.sqlite_synchronous,
            busy_timeout: options.acquire_timeout,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Setup(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "page_size", 8192)?; // only takes effect on a new database
        configure(&conn, true, &settings)?;
        conn.execute_batch(SETUP)?;
        conn.execute_batch(ACTIVITY_SETUP)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut tids = HashMap::new();
        for table in schema.tables() {
            tx.execute(
                "INSERT OR IGNORE INTO sync_tables (name) VALUES (?1)",
                [&table.name],
            )?;
            let tid: i64 = tx.query_row(
                "SELECT tid FROM sync_tables WHERE name = ?1",
                [&table.name],
                |r| r.get(0),
            )?;
            tids.insert(table.name.clone(), tid);
        }
        tx.commit()?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            schema,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            tids,
            settings,
            import_hook: crate::ImportHook::default(),
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    fn reader(&self) -> Result<ReaderGuard<'_>, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path)?;
                configure(&c, false, &self.settings)?;
                c
            }
        };
        Ok(ReaderGuard {
            store: self,
            conn: Some(conn),
        })
    }
}

struct ReaderGuard<'a> {
    store: &'a SqliteStore,
    conn: Option<Connection>,
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self.store.readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
    }
}

fn user_id(tx: &Transaction<'_>, name: &str) -> Result<i64, rusqlite::Error> {
    if let Some(uid) = tx
        .prepare_cached("SELECT uid FROM users WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
    {
        return Ok(uid);
    }
    tx.execute("INSERT INTO users (name) VALUES (?1)", [name])?;
    Ok(tx.last_insert_rowid())
}

impl SyncStore for SqliteStore {
    fn pull(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        crate::pull::pull(self, &self.schema, &self.tids, user, request, sink)
    }

    fn write(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
    ) -> Result<WriteOutcome, StoreError> {
        self.write_changes(user, batch, idempotency, now_ms, respond)
    }

    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError> {
        self.collect(tombstone_cutoff_ms, idempotency_cutoff_ms)
    }

    fn user_stats(&self, user: &str) -> Result<UserStats, StoreError> {
        self.stats(user)
    }
}

fn existing_user(tx: &Transaction<'_>, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT uid FROM users WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// The first column of a row as text, without copying.
fn text<'r>(row: &'r rusqlite::Row<'_>) -> Result<&'r str, StoreError> {
    row.get_ref(0)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
            .into()
    })
}
