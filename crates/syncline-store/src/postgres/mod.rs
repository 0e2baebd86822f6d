//! The PostgreSQL backend, for running several `syncline serve` instances on one database.
//!
//! Layout mirrors the SQLite store: `syncline_records` keyed by (user, table, id) with a (user, table, seq)
//! log index, tombstones in place, per-user horizons, idempotency answers.
//!
//! Invariant (per user): every write transaction locks its user's row of `syncline_sequences` (`SELECT … FOR
//! UPDATE`) before it reads or writes anything else of that user, takes its sequence numbers after the row's
//! `seq`, and stores the new maximum there before it commits. Writers of one user, on every instance, therefore
//! commit in that user's sequence order, and a pull that reads the user's counter and rows in one REPEATABLE
//! READ snapshot never misses a change (a `now()` or a database sequence would not give this: they follow
//! start order, not commit order). Writers of different users lock different rows and never wait for each
//! other. `syncline_meta.seq` is the old global counter, frozen by migration 2: a user without a row in
//! `syncline_sequences` counts from there, so cursors issued before the migration stay valid.

mod activity;
mod imports;
mod pull;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use postgres::{Client, IsolationLevel, NoTls, Transaction};
use syncline_core::{ImportState, Schema};

use crate::apply::{Existing, NewRow, RecordTx};
use crate::sql::{
    Backend, Durability, ImportBatch, Migration, MigrationSql, Param, Sql, SqlConn, SqlRow,
    UserSql, Value, migrate,
};
use crate::{
    GcStats, IdempotencyKey, ImportActivity, StoreError, StoreOptions, SyncActivity, WriteSummary,
};
use postgres::GenericClient;
use postgres::types::{ToSql, Type};

/// Rows fetched per round trip when a pull streams a table.
const FETCH_ROWS: i32 = 5_000;

/// An arbitrary constant: the advisory lock that serialises migrations of concurrently starting instances.
const MIGRATION_LOCK: i64 = 0x5359_4e43_4c49_4e45;

/// The migrations, in the order they are applied; each is applied once and recorded in
/// `syncline_migrations` with its version.
const MIGRATIONS: [Migration; 2] = [
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "per_user_sequence",
        sql: include_str!("../../migrations/postgres/0002_per_user_sequence.sql"),
    },
];

/// The statements of the shared flows, in PostgreSQL's dialect.
const SQL: Sql = Sql {
    users: UserSql {
        find: "SELECT uid FROM syncline_users WHERE name = $1",
        insert: INSERT_USER,
    },
    activity: activity::STATEMENTS,
    imports: imports::STATEMENTS,
    migrations: MigrationSql {
        create: "CREATE TABLE IF NOT EXISTS syncline_migrations (
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        applied: "SELECT version::bigint FROM syncline_migrations",
        record: "INSERT INTO syncline_migrations (version, name) VALUES ($1::bigint, $2)",
    },
};

/// One pooled connection, and when it last came back to the pool.
pub(super) struct PoolConn {
    client: Client,
    returned: Option<std::time::Instant>,
}

/// A connection back in the pool for less than this is handed out again without a check (a round trip):
/// one that died in the meantime (a database restart) fails its request with `storage_unavailable` and is
/// dropped. Older idle connections are checked first.
const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the pool's connections.
struct Manager(postgres::Config);

impl r2d2::ManageConnection for Manager {
    type Connection = PoolConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PoolConn, postgres::Error> {
        Ok(PoolConn {
            client: self.0.connect(NoTls)?,
            returned: None,
        })
    }

    fn is_valid(&self, conn: &mut PoolConn) -> Result<(), postgres::Error> {
        if conn.returned.is_some_and(|at| at.elapsed() < FRESH) && !conn.client.is_closed() {
            return Ok(());
        }
        conn.client.simple_query("").map(|_| ())
    }

    /// Called as a connection comes back to the pool.
    fn has_broken(&self, conn: &mut PoolConn) -> bool {
        conn.returned = Some(std::time::Instant::now());
        conn.client.is_closed()
    }
}

/// The PostgreSQL store: a bounded pool of connections; any number of instances may share one database.
pub struct PostgresStore {
    schema: Arc<Schema>,
    /// `None` only while the store is dropped.
    pool: Option<r2d2::Pool<Manager>>,
    max_connections: u32,
    tids: HashMap<String, i64>,
    import_hook: crate::ImportHook,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // A `postgres::Client` closes on a runtime of its own when dropped, which panics on a thread that
        // drives an async runtime (the server's last reference may go there): close the pool elsewhere.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        if lost_connection(&e) {
            return StoreError::Unavailable(e.to_string());
        }
        match e.as_db_error() {
            Some(db) => StoreError::Postgres(format!("{} ({})", db.message(), db.code().code())),
            None => StoreError::Postgres(e.to_string()),
        }
    }
}

/// Whether `e` says the database went away (restart, shutdown, network) rather than refused a statement.
fn lost_connection(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // Class 08: connection exception; 57P0x: the server is shutting down, crashed, or is starting up.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Logs what the pool meets while it opens connections in the background (it retries by itself).
#[derive(Debug)]
struct LogPoolErrors;

impl r2d2::HandleError<postgres::Error> for LogPoolErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(%error, "opening a PostgreSQL connection failed");
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`), applies the migrations and registers the schema's tables.
    pub fn open(url: &str, schema: Arc<Schema>) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(url, schema, &StoreOptions::default())
    }

    /// [`PostgresStore::open`] with `options` (the pool's size and acquire timeout).
    pub fn open_with(
        url: &str,
        schema: Arc<Schema>,
        options: &StoreOptions,
    ) -> Result<PostgresStore, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Setup(format!("invalid PostgreSQL url: {e}")))?;
        PostgresStore::open_config(config, schema, options)
    }

    /// [`PostgresStore::open_with`] for a parsed connection configuration.
    pub fn open_config(
        config: postgres::Config,
        schema: Arc<Schema>,
        options: &StoreOptions,
    ) -> Result<PostgresStore, StoreError> {
        let mut client = config.connect(NoTls)?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        migrate(&mut Pg::new(&mut tx), &SQL.migrations, &MIGRATIONS)?;
        let mut tids = HashMap::new();
        for table in schema.tables() {
            tx.execute(
                "INSERT INTO syncline_tables (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&table.name],
            )?;
            let tid: i32 = tx
                .query_one(
                    "SELECT tid FROM syncline_tables WHERE name = $1",
                    &[&table.name],
                )?
                .get(0);
            tids.insert(table.name.clone(), tid as i64);
        }
        tx.commit()?;
        drop(client);
        let max_connections = options.max_connections.max(1);
        // Connections idle for a while are checked (an empty query) as they leave the pool, so one that died
        // with a database restart is replaced before a request uses it; broken ones are dropped when they
        // come back.
        let pool = r2d2::Pool::builder()
            .max_size(max_connections)
            .min_idle(Some(0))
            .connection_timeout(
                options
                    .acquire_timeout
                    .max(std::time::Duration::from_millis(1)),
            )
            .idle_timeout(Some(std::time::Duration::from_secs(300)))
            .test_on_check_out(true)
            .error_handler(Box::new(LogPoolErrors))
            .build_unchecked(Manager(config));
        Ok(PostgresStore {
            schema,
            pool: Some(pool),
            max_connections,
            tids,
            import_hook: crate::ImportHook::default(),
        })
    }

    /// A pooled connection: waits up to the acquire timeout for one, then fails with
    /// [`StoreError::Busy`] (every connection in use) or [`StoreError::Unavailable`] (none can be opened).
    fn client(&self) -> Result<PooledClient, StoreError> {
        let pool = self.pool.as_ref().expect("present until drop");
        match pool.get() {
            Ok(conn) => Ok(PooledClient::new(conn)),
            Err(e) => {
                let state = pool.state();
                if state.connections >= self.max_connections && state.idle_connections == 0 {
                    Err(StoreError::Busy)
                } else {
                    Err(StoreError::Unavailable(e.to_string()))
                }
            }
        }
    }
}

/// A connection out of the pool, with the statements prepared on it so far.
pub(super) struct PooledClient {
    conn: r2d2::PooledConnection<Manager>,
    statements: Statements,
}

/// The shared flows' statements prepared on one connection, by SQL text: kept with the connection in the
/// pool, so each is parsed and planned once per connection instead of once per call (a round trip saved).
/// A reconnect starts an empty cache.
#[derive(Default)]
struct Statements(HashMap<String, postgres::Statement>);

impl PooledClient {
    fn new(mut conn: r2d2::PooledConnection<Manager>) -> PooledClient {
        let statements = r2d2::PooledConnection::extensions_mut(&mut conn)
            .remove::<Statements>()
            .unwrap_or_default();
        PooledClient { conn, statements }
    }

    fn get(&mut self) -> &mut Client {
        &mut self.conn.client
    }

    fn parts(&mut self) -> (&mut Client, &mut Statements) {
        (&mut self.conn.client, &mut self.statements)
    }

    /// `sql`, prepared on this connection the first time it is run here.
    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        let Statements(cache) = &mut self.statements;
        if let Some(statement) = cache.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.conn.client.prepare(sql)?;
        cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        let statements = std::mem::take(&mut self.statements);
        r2d2::PooledConnection::extensions_mut(&mut self.conn).insert(statements);
    }
}

/// Creates the user's row unless it exists.
const INSERT_USER: &str =
    "INSERT INTO syncline_users (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";

/// The user's uid, tombstone horizon and change counter; for a user without a row, no uid (-1), no horizon
/// and the counter a new user starts from.
fn user_counter(tx: &mut Transaction<'_>, user: &str) -> Result<(i64, i64, i64), StoreError> {
    let row = tx.query_one(
        "SELECT u.uid, u.tombstone_horizon, coalesce(s.seq, m.value)
         FROM syncline_meta m LEFT JOIN syncline_users u ON u.name = $1
         LEFT JOIN syncline_sequences s ON s.uid = u.uid
         WHERE m.key = 'seq'",
        &[&user],
    )?;
    Ok((
        row.get::<_, Option<i64>>(0).unwrap_or(-1),
        row.get::<_, Option<i64>>(1).unwrap_or(0),
        row.get(2),
    ))
}

impl Backend for PostgresStore {
    const SQL: Sql = SQL;

    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut pooled = self.client()?;
        let (client, statements) = pooled.parts();
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let out = f(&mut Pg::cached(&mut tx, statements))?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // One statement sees one snapshot by itself: no transaction round trips.
        let mut pooled = self.client()?;
        let (client, statements) = pooled.parts();
        f(&mut Pg::cached(client, statements))
    }

    fn transaction<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut pooled = self.client()?;
        let (client, statements) = pooled.parts();
        let mut tx = client.transaction()?;
        if durability == Durability::Relaxed {
            // A second flush per push would halve what small pushes get through on a durable cluster.
            tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        }
        let out = f(&mut Pg::cached(&mut tx, statements))?;
        tx.commit()?;
        Ok(out)
    }

    fn import_hook(&self) -> &crate::ImportHook {
        &self.import_hook
    }

    fn import_batch(&self, b: ImportBatch<'_, '_>) -> Result<Option<WriteSummary>, StoreError> {
        crate::write::write_import(self, b.user, b.batch, b.state, b.lease, b.now_ms)
    }
}

/// A PostgreSQL client or transaction as the shared flows see it, with the connection's prepared statements
/// when the caller has them.
struct Pg<'c, C> {
    conn: &'c mut C,
    statements: Option<&'c mut Statements>,
}

impl<'c, C: GenericClient> Pg<'c, C> {
    /// Statements are prepared for each call.
    fn new(conn: &'c mut C) -> Pg<'c, C> {
        Pg {
            conn,
            statements: None,
        }
    }

    /// Statements are prepared once per connection.
    fn cached(conn: &'c mut C, statements: &'c mut Statements) -> Pg<'c, C> {
        Pg {
            conn,
            statements: Some(statements),
        }
    }

    /// The prepared statement for `sql`, if this connection keeps them.
    fn prepared(&mut self, sql: &str) -> Result<Option<postgres::Statement>, StoreError> {
        let Some(Statements(cache)) = self.statements.as_deref_mut() else {
            return Ok(None);
        };
        if let Some(statement) = cache.get(sql) {
            return Ok(Some(statement.clone()));
        }
        let statement = self.conn.prepare(sql)?;
        cache.insert(sql.to_owned(), statement.clone());
        Ok(Some(statement))
    }
}

/// The driver's view of a parameter.
fn sql_param<'p>(p: &'p Param<'_>) -> &'p (dyn ToSql + Sync) {
    match p {
        Param::Int(v) => v,
        Param::OptInt(v) => v,
        Param::Text(v) => v,
        Param::OptText(v) => v,
        Param::Bytes(v) => v,
    }
}

impl<C: GenericClient> SqlConn for Pg<'_, C> {
    fn query(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let params: Vec<_> = params.iter().map(sql_param).collect();
        let rows = match self.prepared(sql)? {
            Some(statement) => self.conn.query(&statement, &params)?,
            None => self.conn.query(sql, &params)?,
        };
        for row in rows {
            each(&row)?;
        }
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let params: Vec<_> = params.iter().map(sql_param).collect();
        Ok(match self.prepared(sql)? {
            Some(statement) => self.conn.execute(&statement, &params)?,
            None => self.conn.execute(sql, &params)?,
        })
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.conn.batch_execute(sql)?)
    }
}

impl SqlRow for postgres::Row {
    fn value(&self, i: usize) -> Result<Value, StoreError> {
        let ty = self.columns()[i].type_();
        let value = if *ty == Type::INT8 {
            self.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            self.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
            self.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            self.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes)
        } else {
            return Err(StoreError::Postgres(format!("column {i} has type {ty}")));
        };
        Ok(value.unwrap_or(Value::Null))
    }
}
