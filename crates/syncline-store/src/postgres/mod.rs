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
use syncline_core::{ImportState, PullRequest, Schema, WriteBatch};

use crate::apply::{Existing, NewRow, RecordTx, apply};
use crate::{
    ActivityBucket, ActivityStore, DeviceActivity, GcStats, IdempotencyKey, ImportActivity,
    ImportOutcome, ImportStore, Lease, LeaseHolder, PullSink, PullStats, StoreError, StoreOptions,
    SyncActivity, SyncKind, SyncStore, TableStats, UserActivity, UserStats, WriteOutcome,
    WriteSummary, activity_bucket, state_from_json, state_json,
};

/// Rows fetched per round trip when a pull streams a table.
const FETCH_ROWS: i32 = 5_000;

/// An arbitrary constant: the advisory lock that serialises migrations of concurrently starting instances.
const MIGRATION_LOCK: i64 = 0x5359_4e43_4c49_4e45;

/// The migrations, in the order they are applied; each is applied once and recorded in
/// `syncline_migrations` with its version.
const MIGRATIONS: [(i32, &str, &str); 2] = [
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "per_user_sequence",
        include_str!("../../migrations/postgres/0002_per_user_sequence.sql"),
    ),
];

/// Applies the migrations not recorded yet, in order, each in the caller's transaction (which holds the
/// migration lock).
fn migrate(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS syncline_migrations (
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM syncline_migrations", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql)
            .map_err(|e| StoreError::Setup(format!("migration {version} ({name}): {e}")))?;
        tx.execute(
            "INSERT INTO syncline_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )?;
    }
    Ok(())
}

type Manager = r2d2_postgres::PostgresConnectionManager<NoTls>;

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
        migrate(&mut tx)?;
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
        // Connections are checked (an empty query) as they leave the pool, so one that died with a database
        // restart is replaced before a request uses it; broken ones are dropped when they come back.
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
            .build_unchecked(Manager::new(config, NoTls));
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
            Ok(conn) => Ok(PooledClient(conn)),
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

struct PooledClient(r2d2::PooledConnection<Manager>);

impl PooledClient {
    fn get(&mut self) -> &mut Client {
        &mut self.0
    }
}

/// Creates the user's row unless it exists.
const INSERT_USER: &str =
    "INSERT INTO syncline_users (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";

fn user_id(tx: &mut Transaction<'_>, name: &str) -> Result<i64, StoreError> {
    if let Some(row) = tx.query_opt("SELECT uid FROM syncline_users WHERE name = $1", &[&name])? {
        return Ok(row.get(0));
    }
    tx.execute(INSERT_USER, &[&name])?;
    Ok(tx
        .query_one("SELECT uid FROM syncline_users WHERE name = $1", &[&name])?
        .get(0))
}

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

impl SyncStore for PostgresStore {
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
