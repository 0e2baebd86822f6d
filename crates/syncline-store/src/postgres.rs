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

use std::collections::HashMap;
use std::sync::Arc;

use postgres::{Client, IsolationLevel, NoTls, Transaction};
use syncline_core::{ImportState, PullRequest, Schema, Table, WriteBatch};

use crate::apply::{Existing, NewRow, RecordTx, apply};
use crate::pull::{LogRow, Output, PullPlan, live_rows_filter, write_page};
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
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "per_user_sequence",
        include_str!("../migrations/postgres/0002_per_user_sequence.sql"),
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

    fn tid(&self, table: &str) -> i64 {
        self.tids[table]
    }
}

struct PooledClient(r2d2::PooledConnection<Manager>);

impl PooledClient {
    fn get(&mut self) -> &mut Client {
        &mut self.0
    }
}

/// The row operations of one PostgreSQL write transaction.
struct PgRows<'a, 't> {
    tx: &'a mut Transaction<'t>,
}

impl RecordTx for PgRows<'_, '_> {
    fn find(&mut self, uid: i64, tid: i64, id: &str) -> Result<Option<Existing>, StoreError> {
        let row = self.tx.query_opt(
            "SELECT seq, deleted_at IS NOT NULL, data FROM syncline_records WHERE uid = $1 AND tid = $2 AND id = $3",
            &[&uid, &(tid as i32), &id],
        )?;
        Ok(row.map(|r| Existing {
            seq: r.get(0),
            deleted: r.get(1),
            data: r.get(2),
        }))
    }

    fn insert_new(
        &mut self,
        uid: i64,
        tid: i64,
        rows: &[NewRow<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let data: Vec<&str> = rows.iter().map(|r| r.data).collect();
        // One statement for the whole batch (array `unnest`): the fast path measured in PERF.md.
        let inserted = self.tx.query(
            "INSERT INTO syncline_records (uid, tid, id, seq, deleted_at, data)
             SELECT $1, $2, r.id, r.seq, NULL, r.data FROM unnest($3::text[], $4::int8[], $5::text[]) AS r (id, seq, data)
             ON CONFLICT (uid, tid, id) DO NOTHING
             RETURNING id",
            &[&uid, &(tid as i32), &ids, &seqs, &data],
        )?;
        let mut new: std::collections::HashSet<String> =
            inserted.iter().map(|r| r.get(0)).collect();
        // A repeated id is inserted once, by its first occurrence.
        Ok(rows.iter().map(|r| new.remove(r.id)).collect())
    }

    fn rewrite(
        &mut self,
        uid: i64,
        tid: i64,
        old_seq: i64,
        seq: i64,
        data: Option<&str>,
        deleted_at: i64,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE syncline_records SET seq = $4, deleted_at = $5, data = $6 WHERE uid = $1 AND tid = $2 AND seq = $3",
            &[&uid, &(tid as i32), &old_seq, &seq, &data.is_none().then_some(deleted_at), &data],
        )?;
        Ok(())
    }

    fn live_ids_except(
        &mut self,
        uid: i64,
        tid: i64,
        keep: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.tx.query(
            "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL AND id <> $3",
            &[&uid, &(tid as i32), &keep],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn children(
        &mut self,
        uid: i64,
        tid: i64,
        column: &str,
        parents: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.tx.query(
            "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL
             AND (data::jsonb ->> $3) = ANY($4)",
            &[&uid, &(tid as i32), &column, &parents],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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

fn save_state(tx: &mut Transaction<'_>, uid: i64, state: &ImportState) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO syncline_import_states (uid, source, stream, phase, status, generation, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (uid, source, stream, phase)
         DO UPDATE SET status = excluded.status, generation = excluded.generation, state = excluded.state",
        &[
            &uid,
            &state.source,
            &state.stream,
            &state.phase.as_str(),
            &state.status.as_str(),
            &state.generation,
            &state_json(state),
        ],
    )?;
    Ok(())
}

/// Starts a write transaction for `user` holding the lock on the user's counter row until commit: the user's
/// writers on every instance then commit in sequence order, and other users' writers are not held up.
/// Returns the transaction, the user's uid and the user's sequence before the write.
fn begin_sequenced<'c>(
    client: &'c mut Client,
    user: &str,
) -> Result<(Transaction<'c>, i64, i64), StoreError> {
    const LOCK: &str = "SELECT seq FROM syncline_sequences WHERE uid = $1 FOR UPDATE";
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    let uid = user_id(&mut tx, user)?;
    let seq = match tx.query_opt(LOCK, &[&uid])? {
        Some(row) => row.get(0),
        None => {
            // The user's first write since the migration: its counter starts at the frozen global value.
            tx.execute(
                "INSERT INTO syncline_sequences (uid, seq)
                 SELECT $1, value FROM syncline_meta WHERE key = 'seq' ON CONFLICT (uid) DO NOTHING",
                &[&uid],
            )?;
            tx.query_one(LOCK, &[&uid])?.get(0)
        }
    };
    Ok((tx, uid, seq))
}

impl PostgresStore {
    /// Applies `batch` after `start` and stores the new maximum in the user's counter, inside a transaction
    /// from [`begin_sequenced`]. A batch with conflicts leaves the counter alone (the caller rolls back).
    fn apply_sequenced(
        &self,
        tx: &mut Transaction<'_>,
        uid: i64,
        start: i64,
        now_ms: i64,
        batch: &WriteBatch<'_>,
        push_at: Option<i64>,
    ) -> Result<crate::apply::Applied, StoreError> {
        let applied = apply(
            &mut PgRows { tx },
            &self.schema,
            &self.tids,
            uid,
            start,
            now_ms,
            batch,
        )?;
        if applied.conflicts.is_empty() {
            // Pushes also stamp the user's last push, in the same update of the row it holds locked.
            tx.execute(
                "UPDATE syncline_sequences SET seq = $1, last_push_at = coalesce($3, last_push_at)
                 WHERE uid = $2",
                &[&applied.sequence, &uid, &push_at],
            )?;
        }
        Ok(applied)
    }
}

impl SyncStore for PostgresStore {
    fn pull(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        // The first statement fixes the snapshot: the counter and every row below come from the same one.
        let (uid, horizon, snapshot) = user_counter(&mut tx, user)?;
        let plan = PullPlan::new(request, horizon, snapshot);
        let tables: Vec<&Table> = self
            .schema
            .tables()
            .filter(|t| t.visible_at(request.schema_version))
            .collect();
        let mut out = Output::new(sink, plan.replacement);
        match plan.limit {
            Some(limit) => {
                let sql = if plan.first {
                    "SELECT seq, id, data FROM syncline_records WHERE uid = $1 AND tid = $2 AND seq > $3 AND deleted_at IS NULL ORDER BY seq LIMIT $4"
                } else {
                    "SELECT seq, id, data FROM syncline_records WHERE uid = $1 AND tid = $2 AND seq > $3 ORDER BY seq LIMIT $4"
                };
                let mut cursors: Vec<Box<dyn Iterator<Item = Result<LogRow, StoreError>>>> =
                    Vec::new();
                for table in &tables {
                    let tid = self.tid(&table.name) as i32;
                    let rows = tx.query(sql, &[&uid, &tid, &plan.since, &((limit + 1) as i64)])?;
                    let rows: Vec<LogRow> = rows
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect();
                    cursors.push(Box::new(rows.into_iter().map(Ok)));
                }
                let has_more = write_page(&tables, cursors, limit, &mut out)?;
                out.writer.finish(
                    has_more.unwrap_or(snapshot),
                    Some(has_more.is_some()),
                    false,
                );
            }
            None => {
                for table in &tables {
                    self.pull_table(&mut tx, uid, table, plan, request, &mut out)?;
                }
                out.writer
                    .finish(snapshot, request.limit.map(|_| false), plan.replacement);
            }
        }
        out.flush(true)?;
        tx.commit()?;
        if plan.ahead {
            // A cursor from the future (the database was restored from a backup older than the cursor):
            // the device got a replacement; now move the counter past the cursor, so that no later change
            // gets a sequence at or below a cursor some device still holds.
            let cursor = request.last_pulled_at.unwrap_or(0);
            let client = pooled.get();
            client.execute(INSERT_USER, &[&user])?;
            client.execute(
                "INSERT INTO syncline_sequences AS s (uid, seq)
                 SELECT uid, $2 FROM syncline_users WHERE name = $1
                 ON CONFLICT (uid) DO UPDATE SET seq = greatest(s.seq, excluded.seq)",
                &[&user, &cursor],
            )?;
        }
        Ok(out.stats)
    }

    fn write(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
    ) -> Result<WriteOutcome, StoreError> {
        let mut pooled = self.client()?;
        let (mut tx, uid, start) = begin_sequenced(pooled.get(), user)?;
        if let Some(key) = idempotency {
            let seen = tx.query_opt(
                "SELECT request_hash, response FROM syncline_idempotency WHERE uid = $1 AND key = $2",
                &[&uid, &key.key],
            )?;
            if let Some(row) = seen {
                let hash: Vec<u8> = row.get(0);
                return if hash == key.request_hash {
                    Ok(WriteOutcome::Replayed {
                        response: row.get(1),
                    })
                } else {
                    Err(StoreError::IdempotencyKeyReused)
                };
            }
        }
        let applied = self.apply_sequenced(&mut tx, uid, start, now_ms, batch, Some(now_ms))?;
        if !applied.conflicts.is_empty() {
            tx.rollback()?;
            return Ok(WriteOutcome::Conflict {
                conflicts: applied.conflicts,
            });
        }
        let summary = WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        };
        let response = respond(&summary);
        if let Some(key) = idempotency {
            tx.execute(
                "INSERT INTO syncline_idempotency (uid, key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&uid, &key.key, &&key.request_hash[..], &response, &now_ms],
            )?;
        }
        tx.commit()?;
        Ok(WriteOutcome::Applied { summary, response })
    }

    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        // One statement removes the tombstones and raises each user's horizon to the highest sequence it
        // removed, so no pull can see one without the other. It locks only the rows of users who had
        // tombstones to collect, never a global row.
        let tombstones: i64 = tx
            .query_one(
                "WITH gone AS (
                     DELETE FROM syncline_records WHERE deleted_at IS NOT NULL AND deleted_at < $1
                     RETURNING uid, seq),
                 raised AS (
                     UPDATE syncline_users u SET tombstone_horizon = greatest(u.tombstone_horizon, h.horizon)
                     FROM (SELECT uid, max(seq) AS horizon FROM gone GROUP BY uid) h
                     WHERE u.uid = h.uid RETURNING 1)
                 SELECT count(*) FROM gone",
                &[&tombstone_cutoff_ms],
            )?
            .get(0);
        let tombstones = tombstones as u64;
        let idempotency_keys = tx.execute(
            "DELETE FROM syncline_idempotency WHERE created_at < $1",
            &[&idempotency_cutoff_ms],
        )?;
        tx.commit()?;
        Ok(GcStats {
            tombstones,
            idempotency_keys,
        })
    }

    fn user_stats(&self, user: &str) -> Result<UserStats, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let (_, _, sequence) = user_counter(&mut tx, user)?;
        let mut stats = UserStats {
            sequence,
            ..Default::default()
        };
        for table in self.schema.tables() {
            stats
                .tables
                .insert(table.name.clone(), TableStats::default());
        }
        let Some(row) = tx.query_opt(
            "SELECT u.uid, s.last_push_at FROM syncline_users u
             LEFT JOIN syncline_sequences s ON s.uid = u.uid WHERE u.name = $1",
            &[&user],
        )?
        else {
            return Ok(stats);
        };
        let uid: i64 = row.get(0);
        stats.last_push_at = row.get(1);
        let names: HashMap<i64, &str> = self.tids.iter().map(|(n, t)| (*t, n.as_str())).collect();
        for r in tx.query(
            "SELECT tid, count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL)
             FROM syncline_records WHERE uid = $1 GROUP BY tid",
            &[&uid],
        )? {
            let tid: i32 = r.get(0);
            if let Some(name) = names.get(&(tid as i64)) {
                let (live, dead): (i64, i64) = (r.get(1), r.get(2));
                stats.tables.insert(name.to_string(), TableStats { records: live as u64, tombstones: dead as u64 });
            }
        }
        tx.commit()?;
        Ok(stats)
    }
}

impl ImportStore for PostgresStore {
    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
             WHERE u.name = $1 AND ($2::text IS NULL OR s.source = $2)
             ORDER BY s.source, s.stream, s.phase = 'incremental'",
            &[&user, &source],
        )?;
        rows.iter().map(|r| state_from_json(r.get(0))).collect()
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT u.name, s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
             WHERE s.status IN ('pending', 'running', 'rate_limited')
             ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.get(0), state_from_json(r.get(1))?)))
            .collect()
    }

    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        let uid = user_id(&mut tx, user)?;
        save_state(&mut tx, uid, state)?;
        tx.commit()?;
        drop(pooled);
        self.import_hook.saved(user, state);
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
        let mut pooled = self.client()?;
        let (mut tx, uid, start) = begin_sequenced(pooled.get(), user)?;
        let renewed = tx.execute(
            "UPDATE syncline_import_leases SET until = $4 WHERE uid = $1 AND source = $2 AND owner = $3",
            &[&uid, &state.source, &lease.owner, &(now_ms + lease.ttl_ms)],
        )?;
        if renewed == 0 {
            tx.rollback()?;
            return Ok(None);
        }
        let stored = tx.query_opt(
            "SELECT generation FROM syncline_import_states
             WHERE uid = $1 AND source = $2 AND stream = $3 AND phase = $4 FOR UPDATE",
            &[&uid, &state.source, &state.stream, &state.phase.as_str()],
        )?;
        if stored.is_some_and(|r| r.get::<_, i64>(0) != state.generation) {
            tx.rollback()?;
            return Ok(None);
        }
        let applied = self.apply_sequenced(&mut tx, uid, start, now_ms, batch, None)?;
        save_state(&mut tx, uid, state)?;
        if !batch.tables.is_empty() {
            count_import(
                &mut tx,
                uid,
                &ImportActivity::of_batch(state, &applied.counts, now_ms),
            )?;
        }
        tx.commit()?;
        drop(pooled);
        self.import_hook.saved(user, state);
        Ok(Some(WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        }))
    }

    fn claim_import(
        &self,
        user: &str,
        source: &str,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        let uid = user_id(&mut tx, user)?;
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
        tx.commit()?;
        Ok(claimed)
    }

    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        pooled.get().execute(
            "DELETE FROM syncline_import_leases WHERE source = $2 AND owner = $3
             AND uid = (SELECT uid FROM syncline_users WHERE name = $1)",
            &[&user, &source, &owner],
        )?;
        Ok(())
    }

    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled
            .get()
            .query_opt(
                "SELECT l.owner, l.until FROM syncline_import_leases l
                 JOIN syncline_users u ON u.uid = l.uid
                 WHERE u.name = $1 AND l.source = $2 AND l.until > $3",
                &[&user, &source, &now_ms],
            )?
            .map(|r| LeaseHolder {
                owner: r.get(0),
                until: r.get(1),
            }))
    }

    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        let uid = user_id(&mut tx, user)?;
        tx.execute(
            "INSERT INTO syncline_connections (uid, source, sealed) VALUES ($1, $2, $3)
             ON CONFLICT (uid, source) DO UPDATE SET sealed = excluded.sealed",
            &[&uid, &source, &sealed],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled
            .get()
            .query_opt(
                "SELECT c.sealed FROM syncline_connections c JOIN syncline_users u ON u.uid = c.uid
                 WHERE u.name = $1 AND c.source = $2",
                &[&user, &source],
            )?
            .map(|r| r.get(0)))
    }

    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled.get().execute(
            "DELETE FROM syncline_connections WHERE source = $2
             AND uid = (SELECT uid FROM syncline_users WHERE name = $1)",
            &[&user, &source],
        )? > 0)
    }

    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT u.name, s.state FROM syncline_import_states s JOIN syncline_users u ON u.uid = s.uid
             ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.get(0), state_from_json(r.get(1))?)))
            .collect()
    }

    fn observe_imports(&self, observer: Arc<dyn crate::ImportObserver>) -> bool {
        self.import_hook.set(observer)
    }
}

impl ActivityStore for PostgresStore {
    fn record_sync(&self, user: &str, a: &SyncActivity<'_>) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled.get().transaction()?;
        // Dashboard counters: an OS crash may lose the last few, so this commit need not wait for the disk
        // (a second flush per push would halve what small pushes get through on a durable cluster).
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        let uid = user_id(&mut tx, user)?;
        let pull = a.kind == SyncKind::Pull;
        let (pull_at, push_at) = if pull {
            (Some(a.at_ms), None)
        } else {
            (None, Some(a.at_ms))
        };
        let (pulled, pushed) = if pull {
            (a.records as i64, 0)
        } else {
            (0, a.records as i64)
        };
        // greatest() skips NULLs: a pull leaves the last push time alone and the other way round.
        tx.execute(
            "INSERT INTO syncline_activity_users AS t (uid, last_pull_at, last_push_at, pulls, pushes,
                 records_pulled, records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text,
                     CASE WHEN $10::text IS NOT NULL THEN $11::bigint END)
             ON CONFLICT (uid) DO UPDATE SET
                 last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
                 last_push_at = greatest(t.last_push_at, excluded.last_push_at),
                 pulls = t.pulls + excluded.pulls, pushes = t.pushes + excluded.pushes,
                 records_pulled = t.records_pulled + excluded.records_pulled,
                 records_pushed = t.records_pushed + excluded.records_pushed,
                 rejected = t.rejected + excluded.rejected, conflicts = t.conflicts + excluded.conflicts,
                 last_rejection = coalesce(excluded.last_rejection, t.last_rejection),
                 last_rejection_at = coalesce(excluded.last_rejection_at, t.last_rejection_at)",
            &[
                &uid,
                &pull_at,
                &push_at,
                &(pull as i64),
                &(!pull as i64),
                &pulled,
                &pushed,
                &(a.rejected as i64),
                &(a.conflicts as i64),
                &a.rejection,
                &a.at_ms,
            ],
        )?;
        if let Some(device) = a.device {
            tx.execute(
                "INSERT INTO syncline_activity_devices AS t
                     (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (uid, device) DO UPDATE SET
                     last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at),
                     last_pull_at = greatest(t.last_pull_at, excluded.last_pull_at),
                     last_push_at = greatest(t.last_push_at, excluded.last_push_at),
                     outbox_pending = coalesce(excluded.outbox_pending, t.outbox_pending)",
                &[
                    &uid,
                    &device,
                    &a.at_ms,
                    &pull_at,
                    &push_at,
                    &a.outbox_pending.map(|n| n as i64),
                ],
            )?;
        }
        if a.records > 0 {
            add_to_bucket(&mut tx, uid, a.at_ms, pushed, pulled, 0)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let n = |v: Option<i64>| v.unwrap_or(0) as u64;
        let mut users: Vec<(i64, UserActivity)> = tx
            .query(
                "SELECT u.uid, u.name, a.last_pull_at, a.last_push_at, a.pulls, a.pushes, a.records_pulled,
                     a.records_pushed, a.rejected, a.conflicts, a.last_rejection, a.last_rejection_at
                 FROM syncline_users u LEFT JOIN syncline_activity_users a ON a.uid = u.uid
                 WHERE ($1::text IS NULL OR u.name = $1)
                   AND (a.uid IS NOT NULL
                        OR EXISTS (SELECT 1 FROM syncline_import_outcomes o WHERE o.uid = u.uid)
                        OR EXISTS (SELECT 1 FROM syncline_import_states s WHERE s.uid = u.uid))
                 ORDER BY greatest(a.last_pull_at, a.last_push_at, 0) DESC, u.name
                 LIMIT $2",
                &[&user, &(limit as i64)],
            )?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    UserActivity {
                        user: r.get(1),
                        last_pull_at: r.get(2),
                        last_push_at: r.get(3),
                        pulls: n(r.get(4)),
                        pushes: n(r.get(5)),
                        records_pulled: n(r.get(6)),
                        records_pushed: n(r.get(7)),
                        rejected: n(r.get(8)),
                        conflicts: n(r.get(9)),
                        last_rejection: r.get(10),
                        last_rejection_at: r.get(11),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let index: HashMap<i64, usize> = users
            .iter()
            .enumerate()
            .map(|(i, (uid, _))| (*uid, i))
            .collect();
        for r in tx.query(
            "SELECT d.uid, d.device, d.last_seen_at, d.last_pull_at, d.last_push_at, d.outbox_pending
             FROM syncline_activity_devices d JOIN syncline_users u ON u.uid = d.uid
             WHERE ($1::text IS NULL OR u.name = $1) ORDER BY d.last_seen_at DESC, d.device",
            &[&user],
        )? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)) {
                users[i].1.devices.push(DeviceActivity {
                    device: r.get(1),
                    last_seen_at: r.get(2),
                    last_pull_at: r.get(3),
                    last_push_at: r.get(4),
                    outbox_pending: r.get::<_, Option<i64>>(5).map(|v| v as u64),
                });
            }
        }
        for r in tx.query(
            "SELECT o.uid, o.source, o.stream, o.phase, o.walk_started_at, o.last_batch_at, o.batches,
                 o.upserted, o.unchanged, o.deleted
             FROM syncline_import_outcomes o JOIN syncline_users u ON u.uid = o.uid
             WHERE ($1::text IS NULL OR u.name = $1)
             ORDER BY o.source, o.stream, o.phase = 'incremental'",
            &[&user],
        )? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)) {
                let phase: &str = r.get(3);
                users[i].1.imports.push(ImportOutcome {
                    source: r.get(1),
                    stream: r.get(2),
                    phase: phase.parse().unwrap_or_default(),
                    walk_started_at: r.get(4),
                    last_batch_at: r.get(5),
                    batches: r.get::<_, i64>(6) as u64,
                    upserted: r.get::<_, i64>(7) as u64,
                    unchanged: r.get::<_, i64>(8) as u64,
                    deleted: r.get::<_, i64>(9) as u64,
                });
            }
        }
        tx.commit()?;
        Ok(users.into_iter().map(|(_, a)| a).collect())
    }

    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let mut pooled = self.client()?;
        let rows = pooled.get().query(
            "SELECT b.bucket, sum(b.pushed)::bigint, sum(b.pulled)::bigint, sum(b.imported)::bigint
             FROM syncline_activity_buckets b
             WHERE b.bucket >= $2
               AND ($1::text IS NULL OR b.uid = (SELECT uid FROM syncline_users WHERE name = $1))
             GROUP BY b.bucket ORDER BY b.bucket",
            &[&user, &activity_bucket(since_ms)],
        )?;
        Ok(rows
            .iter()
            .map(|r| ActivityBucket {
                at: r.get(0),
                pushed: r.get::<_, i64>(1) as u64,
                pulled: r.get::<_, i64>(2) as u64,
                imported: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }

    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut pooled = self.client()?;
        Ok(pooled.get().execute(
            "DELETE FROM syncline_activity_buckets WHERE bucket < $1",
            &[&activity_bucket(before_ms)],
        )?)
    }
}

impl PostgresStore {
    /// Streams one table of an unpaged pull through a portal, a few thousand rows per round trip.
    fn pull_table(
        &self,
        tx: &mut Transaction<'_>,
        uid: i64,
        table: &Table,
        plan: PullPlan,
        request: &PullRequest,
        out: &mut Output<'_>,
    ) -> Result<(), StoreError> {
        let tid = self.tid(&table.name) as i32;
        let filter = live_rows_filter(table, request, "seq > $3", |col| {
            format!(
                "coalesce(data::jsonb -> '{col}', 'null') NOT IN ('null', '0', '\"\"', 'false')"
            )
        });
        out.writer.begin_table(&table.name);
        let live = format!(
            "SELECT data FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL AND ({filter}) ORDER BY seq"
        );
        let portal = tx.bind(live.as_str(), &[&uid, &tid, &plan.since])?;
        loop {
            let rows = tx.query_portal(&portal, FETCH_ROWS)?;
            for row in &rows {
                out.record(row.get::<_, &str>(0))?;
            }
            if rows.len() < FETCH_ROWS as usize {
                break;
            }
        }
        out.writer.begin_deleted();
        if !plan.first {
            let portal = tx.bind(
                "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND seq > $3 AND deleted_at IS NOT NULL ORDER BY seq",
                &[&uid, &tid, &plan.since],
            )?;
            loop {
                let rows = tx.query_portal(&portal, FETCH_ROWS)?;
                for row in &rows {
                    out.deleted(row.get::<_, &str>(0))?;
                }
                if rows.len() < FETCH_ROWS as usize {
                    break;
                }
            }
        }
        out.writer.end_table();
        Ok(())
    }
}

/// Adds records to the user's bucket of `at_ms`.
fn add_to_bucket(
    tx: &mut Transaction<'_>,
    uid: i64,
    at_ms: i64,
    pushed: i64,
    pulled: i64,
    imported: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO syncline_activity_buckets AS t (uid, bucket, pushed, pulled, imported)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = t.pushed + excluded.pushed,
             pulled = t.pulled + excluded.pulled, imported = t.imported + excluded.imported",
        &[&uid, &activity_bucket(at_ms), &pushed, &pulled, &imported],
    )?;
    Ok(())
}

/// Counts one applied import batch for the dashboard, inside the batch's transaction: what the walk wrote so
/// far, and its rows in their time bucket.
fn count_import(
    tx: &mut Transaction<'_>,
    uid: i64,
    a: &ImportActivity<'_>,
) -> Result<(), StoreError> {
    // Assignments read the old row: a batch of a new walk starts the counts again.
    tx.execute(
        "INSERT INTO syncline_import_outcomes AS t (uid, source, stream, phase, walk_started_at,
             last_batch_at, batches, upserted, unchanged, deleted)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9)
         ON CONFLICT (uid, source, stream, phase) DO UPDATE SET
             batches = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.batches ELSE 0 END + 1,
             upserted = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.upserted ELSE 0 END
                        + excluded.upserted,
             unchanged = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.unchanged ELSE 0 END
                         + excluded.unchanged,
             deleted = CASE WHEN t.walk_started_at = excluded.walk_started_at THEN t.deleted ELSE 0 END
                       + excluded.deleted,
             walk_started_at = excluded.walk_started_at,
             last_batch_at = greatest(t.last_batch_at, excluded.last_batch_at)",
        &[
            &uid,
            &a.source,
            &a.stream,
            &a.phase.as_str(),
            &a.walk_started_at,
            &a.at_ms,
            &(a.upserted as i64),
            &(a.unchanged as i64),
            &(a.deleted as i64),
        ],
    )?;
    let rows = (a.upserted + a.unchanged + a.deleted) as i64;
    if rows > 0 {
        add_to_bucket(tx, uid, a.at_ms, 0, 0, rows)?;
    }
    Ok(())
}
