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
use syncline_core::{ImportState, Schema};

use crate::apply::{Existing, NewRow, RecordTx};
use crate::sql::{
    Backend, Durability, ImportBatch, Migration, MigrationSql, Param, Sql, SqlConn, SqlRow,
    UserSql, Value, migrate,
};
use crate::{
    GcStats, IdempotencyKey, ImportActivity, SqliteSynchronous, StoreError, StoreOptions,
    SyncActivity, WriteSummary,
};
use rusqlite::types::{ToSqlOutput, ValueRef};

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

/// The migrations, in the order they are applied; each is applied once and recorded in
/// `syncline_migrations` with its version. A database created before migrations were recorded has the tables
/// of 1 and 2 already: their statements are `IF NOT EXISTS`, so applying them to it changes nothing.
const MIGRATIONS: [Migration; 2] = [
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "activity",
        sql: include_str!("../../migrations/sqlite/0002_activity.sql"),
    },
];

/// The statements of the shared flows, in SQLite's dialect.
const SQL: Sql = Sql {
    users: UserSql {
        find: "SELECT uid FROM users WHERE name = ?1",
        insert: "INSERT OR IGNORE INTO users (name) VALUES (?1)",
    },
    activity: activity::STATEMENTS,
    imports: imports::STATEMENTS,
    migrations: MigrationSql {
        create: "CREATE TABLE IF NOT EXISTS syncline_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        applied: "SELECT version FROM syncline_migrations",
        record: "INSERT INTO syncline_migrations (version, name) VALUES (?1, ?2)",
    },
};

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

/// Opens the writer connection and sets it up.
fn open_writer(path: &Path, settings: &Settings) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "page_size", 8192)?; // only takes effect on a new database
    configure(&conn, true, settings)?;
    Ok(conn)
}

/// Sets `synchronous` and reads it back: SQLite answers a pragma it did not apply without an error.
/// Both statements are cached on the connection: the dashboard's relaxed transaction runs this twice per
/// request.
fn set_synchronous(conn: &Connection, level: SqliteSynchronous) -> Result<(), StoreError> {
    let set = match level {
        SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL",
        SqliteSynchronous::Full => "PRAGMA synchronous = FULL",
    };
    conn.prepare_cached(set)?.execute([])?;
    let now: i64 = conn
        .prepare_cached("PRAGMA synchronous")?
        .query_row([], |r| r.get(0))?;
    let wanted = match level {
        SqliteSynchronous::Normal => 1,
        SqliteSynchronous::Full => 2,
    };
    if now != wanted {
        return Err(StoreError::Setup(format!(
            "synchronous is {now}, not {} ({wanted})",
            level.pragma()
        )));
    }
    Ok(())
}

/// The writer with `synchronous` lowered to NORMAL for one transaction. Restores the configured level when
/// dropped, also when the transaction failed or panicked; [`Relaxed::restore`] reports whether it could.
struct Relaxed<'c> {
    conn: &'c Connection,
    level: SqliteSynchronous,
    restored: bool,
}

impl<'c> Relaxed<'c> {
    fn new(conn: &'c Connection, level: SqliteSynchronous) -> Result<Relaxed<'c>, StoreError> {
        let relaxed = Relaxed {
            conn,
            level,
            restored: false,
        };
        // Dropped on failure: a half-applied pragma is put back too.
        set_synchronous(conn, SqliteSynchronous::Normal)?;
        Ok(relaxed)
    }

    fn restore(mut self) -> Result<(), StoreError> {
        self.restored = true;
        set_synchronous(self.conn, self.level)
    }
}

impl Drop for Relaxed<'_> {
    fn drop(&mut self) {
        if !self.restored
            && let Err(error) = set_synchronous(self.conn, self.level)
        {
            tracing::error!(%error, "the SQLite writer could not restore its synchronous setting");
        }
    }
}

/// Runs `f` in a transaction on `conn`, committed when `f` succeeds (dropping it rolls back).
fn in_transaction<T>(
    conn: &Connection,
    behavior: TransactionBehavior,
    f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = Transaction::new_unchecked(conn, behavior)?;
    let out = f(&mut Conn(&tx))?;
    tx.commit()?;
    Ok(out)
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
        let conn = open_writer(path, &settings)?;
        // Migrations and the table ids in one transaction: a store that starts sees all of them or none.
        let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)?;
        migrate(&mut Conn(&tx), &SQL.migrations, &MIGRATIONS)?;
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

/// The user's uid, created on first use, in the caller's write transaction.
fn user_id(tx: &Connection, name: &str) -> Result<i64, StoreError> {
    crate::sql::user_id(&mut Conn(tx), &SQL.users, name)
}

/// The first column of a row as text, without copying.
fn text<'r>(row: &'r rusqlite::Row<'_>) -> Result<&'r str, StoreError> {
    row.get_ref(0)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
            .into()
    })
}

impl Backend for SqliteStore {
    const SQL: Sql = SQL;

    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.reader()?;
        in_transaction(
            guard.conn.as_ref().expect("present until drop"),
            TransactionBehavior::Deferred,
            f,
        )
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // One statement reads one snapshot by itself: no BEGIN and COMMIT around it.
        let guard = self.reader()?;
        f(&mut Conn(guard.conn.as_ref().expect("present until drop")))
    }

    fn transaction<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if durability == Durability::Full || self.settings.synchronous == SqliteSynchronous::Normal
        {
            return in_transaction(&conn, TransactionBehavior::Immediate, f);
        }
        // Set per transaction: it is the writer's connection, every other write needs the configured level.
        let relaxed = Relaxed::new(&conn, self.settings.synchronous)?;
        let result = in_transaction(relaxed.conn, TransactionBehavior::Immediate, f);
        if let Err(error) = relaxed.restore() {
            // No later write may run relaxed: start over with a freshly configured writer.
            tracing::error!(%error, "the SQLite writer could not restore its synchronous setting");
            *conn = open_writer(&self.path, &self.settings)?;
            return Err(StoreError::Setup(format!(
                "could not restore synchronous on the writer: {error}"
            )));
        }
        result
    }

    fn import_hook(&self) -> &crate::ImportHook {
        &self.import_hook
    }

    fn import_batch(&self, b: ImportBatch<'_, '_>) -> Result<Option<WriteSummary>, StoreError> {
        crate::write::write_import(self, b.user, b.batch, b.state, b.lease, b.now_ms)
    }
}

/// A SQLite connection (or the transaction open on it) as the shared flows see it. Statements are prepared
/// once per connection (`prepare_cached`).
struct Conn<'c>(&'c Connection);

impl SqlConn for Conn<'_> {
    fn query(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let changed = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

impl SqlRow for rusqlite::Row<'_> {
    fn value(&self, i: usize) -> Result<Value, StoreError> {
        Ok(match self.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(_) => Value::Text(self.get(i)?),
            ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
            ValueRef::Real(v) => {
                return Err(StoreError::Setup(format!("column {i} holds a real, {v}")));
            }
        })
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Int(v) | Param::OptInt(Some(v)) => ValueRef::Integer(v),
            Param::Text(v) | Param::OptText(Some(v)) => ValueRef::Text(v.as_bytes()),
            Param::Bytes(v) => ValueRef::Blob(v),
            Param::OptInt(None) | Param::OptText(None) => ValueRef::Null,
        }))
    }
}

#[cfg(test)]
mod tests;
