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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use syncline_core::{ImportState, PullRequest, Schema, Table, WriteBatch};

use crate::apply::{Existing, NewRow, RecordTx, apply};
use crate::pull::{LogRow, Output, PullPlan, live_rows_filter, write_page};
use crate::{
    ActivityBucket, ActivityStore, DeviceActivity, GcStats, IdempotencyKey, ImportActivity,
    ImportOutcome, ImportStore, Lease, LeaseHolder, PullSink, PullStats, SqliteSynchronous,
    StoreError, StoreOptions, SyncActivity, SyncKind, SyncStore, TableStats, UserActivity,
    UserStats, WriteOutcome, WriteSummary, activity_bucket, state_from_json, state_json,
};

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

    fn tid(&self, table: &str) -> i64 {
        self.tids[table]
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

/// The row operations of one SQLite write transaction.
struct SqliteRows<'t> {
    tx: &'t Transaction<'t>,
    /// Prepared once per transaction: it runs once per new record.
    insert: rusqlite::CachedStatement<'t>,
}

impl<'t> SqliteRows<'t> {
    fn new(tx: &'t Transaction<'t>) -> Result<SqliteRows<'t>, rusqlite::Error> {
        let insert = tx.prepare_cached(
            "INSERT INTO records (seq, uid, tid, id, deleted_at, data) VALUES (?1, ?2, ?3, ?4, NULL, ?5)
             ON CONFLICT (uid, tid, id) DO NOTHING",
        )?;
        Ok(SqliteRows { tx, insert })
    }
}

impl RecordTx for SqliteRows<'_> {
    fn find(&mut self, uid: i64, tid: i64, id: &str) -> Result<Option<Existing>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT seq, deleted_at IS NOT NULL, data FROM records WHERE uid = ?1 AND tid = ?2 AND id = ?3",
            )?
            .query_row(params![uid, tid, id], |r| {
                Ok(Existing { seq: r.get(0)?, deleted: r.get(1)?, data: r.get(2)? })
            })
            .optional()?)
    }

    fn insert_new(
        &mut self,
        uid: i64,
        tid: i64,
        rows: &[NewRow<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let mut inserted = Vec::with_capacity(rows.len());
        for row in rows {
            inserted.push(
                self.insert
                    .execute(params![row.seq, uid, tid, row.id, row.data])?
                    == 1,
            );
        }
        Ok(inserted)
    }

    fn rewrite(
        &mut self,
        _uid: i64,
        _tid: i64,
        old_seq: i64,
        seq: i64,
        data: Option<&str>,
        deleted_at: i64,
    ) -> Result<(), StoreError> {
        // `seq` is the rowid: rewriting it moves the row to the end of the log.
        self.tx
            .prepare_cached(
                "UPDATE records SET seq = ?1, deleted_at = ?2, data = ?3 WHERE seq = ?4",
            )?
            .execute(params![
                seq,
                data.is_none().then_some(deleted_at),
                data,
                old_seq
            ])?;
        Ok(())
    }

    fn live_ids_except(
        &mut self,
        uid: i64,
        tid: i64,
        keep: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT id FROM records WHERE uid = ?1 AND tid = ?2 AND deleted_at IS NULL AND id <> ?3",
            )?
            .query_map(params![uid, tid, keep], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn children(
        &mut self,
        uid: i64,
        tid: i64,
        column: &str,
        parents: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        // One scan of the user's rows of the child table per call; `column` is a checked schema name.
        let sql = format!(
            "SELECT id FROM records WHERE uid = ?1 AND tid = ?2 AND deleted_at IS NULL
             AND json_extract(data, '$.{column}') IN (SELECT value FROM json_each(?3))"
        );
        let parents = serde_json::to_string(parents).expect("strings serialise");
        Ok(self
            .tx
            .prepare_cached(&sql)?
            .query_map(params![uid, tid, parents], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }
}

impl SqliteStore {
    /// Applies `batch` after the current sequence and stores the new maximum, inside the caller's write
    /// transaction on the single writer connection: the one place the commit-order invariant is kept.
    /// A batch with conflicts leaves the counter alone (the caller rolls back).
    fn apply_sequenced(
        &self,
        tx: &Transaction<'_>,
        uid: i64,
        now_ms: i64,
        batch: &WriteBatch<'_>,
    ) -> Result<crate::apply::Applied, StoreError> {
        let start: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
        let applied = {
            let mut rows = SqliteRows::new(tx)?;
            apply(
                &mut rows,
                &self.schema,
                &self.tids,
                uid,
                start,
                now_ms,
                batch,
            )?
        };
        if applied.conflicts.is_empty() {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'seq'",
                [applied.sequence],
            )?;
        }
        Ok(applied)
    }
}

impl SyncStore for SqliteStore {
    fn pull(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        // The first read fixes the snapshot: the sequence and every row below come from the same one.
        let snapshot: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
        let user_row: Option<(i64, i64)> = tx
            .prepare_cached("SELECT uid, tombstone_horizon FROM users WHERE name = ?1")?
            .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (uid, horizon) = user_row.unwrap_or((-1, 0));
        let plan = PullPlan::new(request, horizon, snapshot);
        let tables: Vec<&Table> = self
            .schema
            .tables()
            .filter(|t| t.visible_at(request.schema_version))
            .collect();
        let mut out = Output::new(sink, plan.replacement);
        match plan.limit {
            Some(limit) => {
                let has_more = self.pull_page(&tx, uid, &tables, plan, limit, &mut out)?;
                out.writer.finish(
                    has_more.unwrap_or(snapshot),
                    Some(has_more.is_some()),
                    false,
                );
            }
            None => {
                for table in &tables {
                    self.pull_table(&tx, uid, table, plan, request, &mut out)?;
                }
                out.writer
                    .finish(snapshot, request.limit.map(|_| false), plan.replacement);
            }
        }
        out.flush(true)?;
        drop(tx);
        drop(guard);
        if plan.ahead {
            // A cursor from the future (the database was restored from a backup older than the cursor):
            // the device got a replacement; now move the counter past the cursor, so that no later change
            // gets a sequence at or below a cursor some device still holds.
            let cursor = request.last_pulled_at.unwrap_or(0);
            let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "UPDATE meta SET value = max(value, ?1) WHERE key = 'seq'",
                [cursor],
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
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        if let Some(key) = idempotency {
            let seen: Option<(Vec<u8>, String)> = tx
                .prepare_cached(
                    "SELECT request_hash, response FROM idempotency WHERE uid = ?1 AND key = ?2",
                )?
                .query_row(params![uid, key.key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((hash, response)) = seen {
                return if hash == key.request_hash {
                    Ok(WriteOutcome::Replayed { response })
                } else {
                    Err(StoreError::IdempotencyKeyReused)
                };
            }
        }
        let applied = self.apply_sequenced(&tx, uid, now_ms, batch)?;
        if !applied.conflicts.is_empty() {
            // Dropping `tx` rolls back whatever was written.
            return Ok(WriteOutcome::Conflict {
                conflicts: applied.conflicts,
            });
        }
        let summary = WriteSummary {
            counts: applied.counts,
            sequence: applied.sequence,
        };
        tx.execute(
            "UPDATE users SET last_push_at = ?1 WHERE uid = ?2",
            params![now_ms, uid],
        )?;
        let response = respond(&summary);
        if let Some(key) = idempotency {
            tx.execute(
                "INSERT INTO idempotency (uid, key, request_hash, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![uid, key.key, &key.request_hash[..], response, now_ms],
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
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE users SET tombstone_horizon = max(tombstone_horizon, h.horizon)
             FROM (SELECT uid, max(seq) AS horizon FROM records
                   WHERE deleted_at IS NOT NULL AND deleted_at < ?1 GROUP BY uid) AS h
             WHERE users.uid = h.uid",
            [tombstone_cutoff_ms],
        )?;
        let tombstones = tx.execute(
            "DELETE FROM records WHERE deleted_at IS NOT NULL AND deleted_at < ?1",
            [tombstone_cutoff_ms],
        )?;
        let idempotency_keys = tx.execute(
            "DELETE FROM idempotency WHERE created_at < ?1",
            [idempotency_cutoff_ms],
        )?;
        tx.commit()?;
        Ok(GcStats {
            tombstones: tombstones as u64,
            idempotency_keys: idempotency_keys as u64,
        })
    }

    fn user_stats(&self, user: &str) -> Result<UserStats, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let sequence: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
        let mut stats = UserStats {
            sequence,
            ..Default::default()
        };
        for table in self.schema.tables() {
            stats
                .tables
                .insert(table.name.clone(), TableStats::default());
        }
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT uid, last_push_at FROM users WHERE name = ?1",
                [user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((uid, last_push_at)) = row else {
            return Ok(stats);
        };
        stats.last_push_at = last_push_at;
        let names: HashMap<i64, &str> = self.tids.iter().map(|(n, t)| (*t, n.as_str())).collect();
        let mut stmt = tx.prepare(
            "SELECT tid, sum(deleted_at IS NULL), sum(deleted_at IS NOT NULL) FROM records WHERE uid = ?1 GROUP BY tid",
        )?;
        let mut rows = stmt.query([uid])?;
        while let Some(r) = rows.next()? {
            let tid: i64 = r.get(0)?;
            if let Some(name) = names.get(&tid) {
                stats.tables.insert(
                    name.to_string(),
                    TableStats {
                        records: r.get(1)?,
                        tombstones: r.get(2)?,
                    },
                );
            }
        }
        Ok(stats)
    }
}

impl ImportStore for SqliteStore {
    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let Some(uid) = existing_user(&tx, user)? else {
            return Ok(Vec::new());
        };
        let mut stmt = tx.prepare_cached(
            "SELECT state FROM import_states WHERE uid = ?1 AND (?2 IS NULL OR source = ?2)
             ORDER BY source, stream, phase = 'incremental'",
        )?;
        let texts: Vec<String> = stmt
            .query_map(params![uid, source], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        texts.iter().map(|t| state_from_json(t)).collect()
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut stmt = tx.prepare_cached(
            "SELECT u.name, s.state FROM import_states s JOIN users u ON u.uid = s.uid
             WHERE s.status IN ('pending', 'running', 'rate_limited')
             ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
        )?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(u, t)| Ok((u, state_from_json(&t)?)))
            .collect()
    }

    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        save_state(&tx, uid, state)?;
        tx.commit()?;
        drop(conn);
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
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        let renewed = tx
            .prepare_cached(
                "UPDATE import_leases SET until = ?4 WHERE uid = ?1 AND source = ?2 AND owner = ?3",
            )?
            .execute(params![
                uid,
                state.source,
                lease.owner,
                now_ms + lease.ttl_ms
            ])?;
        if renewed == 0 {
            return Ok(None);
        }
        let stored: Option<i64> = tx
            .prepare_cached(
                "SELECT generation FROM import_states WHERE uid = ?1 AND source = ?2 AND stream = ?3 AND phase = ?4",
            )?
            .query_row(
                params![uid, state.source, state.stream, state.phase.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if stored.is_some_and(|g| g != state.generation) {
            return Ok(None);
        }
        let applied = self.apply_sequenced(&tx, uid, now_ms, batch)?;
        save_state(&tx, uid, state)?;
        if !batch.tables.is_empty() {
            count_import(
                &tx,
                uid,
                &ImportActivity::of_batch(state, &applied.counts, now_ms),
            )?;
        }
        tx.commit()?;
        drop(conn);
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
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        let claimed = tx
            .prepare_cached(
                "INSERT INTO import_leases (uid, source, owner, until) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (uid, source) DO UPDATE SET owner = excluded.owner, until = excluded.until
                 WHERE import_leases.owner = excluded.owner OR import_leases.until <= ?5",
            )?
            .execute(params![uid, source, lease.owner, now_ms + lease.ttl_ms, now_ms])?;
        tx.commit()?;
        Ok(claimed > 0)
    }

    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "DELETE FROM import_leases WHERE source = ?2 AND owner = ?3
             AND uid = (SELECT uid FROM users WHERE name = ?1)",
            params![user, source, owner],
        )?;
        Ok(())
    }

    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        Ok(conn
            .prepare_cached(
                "SELECT l.owner, l.until FROM import_leases l JOIN users u ON u.uid = l.uid
                 WHERE u.name = ?1 AND l.source = ?2 AND l.until > ?3",
            )?
            .query_row(params![user, source, now_ms], |r| {
                Ok(LeaseHolder {
                    owner: r.get(0)?,
                    until: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uid = user_id(&tx, user)?;
        tx.execute(
            "INSERT INTO connections (uid, source, sealed) VALUES (?1, ?2, ?3)
             ON CONFLICT (uid, source) DO UPDATE SET sealed = excluded.sealed",
            params![uid, source, sealed],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        Ok(conn
            .prepare_cached(
                "SELECT c.sealed FROM connections c JOIN users u ON u.uid = c.uid WHERE u.name = ?1 AND c.source = ?2",
            )?
            .query_row(params![user, source], |r| r.get(0))
            .optional()?)
    }

    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.execute(
            "DELETE FROM connections WHERE source = ?2 AND uid = (SELECT uid FROM users WHERE name = ?1)",
            params![user, source],
        )? > 0)
    }

    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let rows: Vec<(String, String)> = conn
            .prepare_cached(
                "SELECT u.name, s.state FROM import_states s JOIN users u ON u.uid = s.uid
                 ORDER BY u.name, s.source, s.stream, s.phase = 'incremental'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(u, t)| Ok((u, state_from_json(&t)?)))
            .collect()
    }

    fn observe_imports(&self, observer: Arc<dyn crate::ImportObserver>) -> bool {
        self.import_hook.set(observer)
    }
}

impl ActivityStore for SqliteStore {
    fn record_sync(&self, user: &str, a: &SyncActivity<'_>) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Dashboard counters: an OS crash may lose the last few, so this commit need not wait for the disk
        // (the next durable commit flushes it too). Set per transaction: it is the writer's connection.
        let durable = self.settings.synchronous != SqliteSynchronous::Normal;
        if durable {
            conn.pragma_update(None, "synchronous", SqliteSynchronous::Normal.pragma())?;
        }
        let result = record_sync_in(&mut conn, user, a);
        if durable {
            conn.pragma_update(None, "synchronous", self.settings.synchronous.pragma())?;
        }
        result
    }

    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut users: Vec<(i64, UserActivity)> = tx
            .prepare_cached(
                "SELECT u.uid, u.name, a.last_pull_at, a.last_push_at, ifnull(a.pulls, 0), ifnull(a.pushes, 0),
                     ifnull(a.records_pulled, 0), ifnull(a.records_pushed, 0), ifnull(a.rejected, 0),
                     ifnull(a.conflicts, 0), a.last_rejection, a.last_rejection_at
                 FROM users u LEFT JOIN activity_users a ON a.uid = u.uid
                 WHERE (?1 IS NULL OR u.name = ?1)
                   AND (a.uid IS NOT NULL OR EXISTS (SELECT 1 FROM import_outcomes o WHERE o.uid = u.uid)
                        OR EXISTS (SELECT 1 FROM import_states s WHERE s.uid = u.uid))
                 ORDER BY max(ifnull(a.last_pull_at, 0), ifnull(a.last_push_at, 0)) DESC, u.name
                 LIMIT ?2",
            )?
            .query_map(params![user, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    UserActivity {
                        user: r.get(1)?,
                        last_pull_at: r.get(2)?,
                        last_push_at: r.get(3)?,
                        pulls: r.get(4)?,
                        pushes: r.get(5)?,
                        records_pulled: r.get(6)?,
                        records_pushed: r.get(7)?,
                        rejected: r.get(8)?,
                        conflicts: r.get(9)?,
                        last_rejection: r.get(10)?,
                        last_rejection_at: r.get(11)?,
                        ..Default::default()
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        let index: HashMap<i64, usize> = users
            .iter()
            .enumerate()
            .map(|(i, (uid, _))| (*uid, i))
            .collect();
        let mut stmt = tx.prepare_cached(
            "SELECT d.uid, d.device, d.last_seen_at, d.last_pull_at, d.last_push_at, d.outbox_pending
             FROM activity_devices d JOIN users u ON u.uid = d.uid WHERE (?1 IS NULL OR u.name = ?1)
             ORDER BY d.last_seen_at DESC, d.device",
        )?;
        let mut rows = stmt.query(params![user])?;
        while let Some(r) = rows.next()? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)?) {
                users[i].1.devices.push(DeviceActivity {
                    device: r.get(1)?,
                    last_seen_at: r.get(2)?,
                    last_pull_at: r.get(3)?,
                    last_push_at: r.get(4)?,
                    outbox_pending: r.get(5)?,
                });
            }
        }
        let mut stmt = tx.prepare_cached(
            "SELECT o.uid, o.source, o.stream, o.phase, o.walk_started_at, o.last_batch_at, o.batches,
                 o.upserted, o.unchanged, o.deleted
             FROM import_outcomes o JOIN users u ON u.uid = o.uid WHERE (?1 IS NULL OR u.name = ?1)
             ORDER BY o.source, o.stream, o.phase = 'incremental'",
        )?;
        let mut rows = stmt.query(params![user])?;
        while let Some(r) = rows.next()? {
            if let Some(&i) = index.get(&r.get::<_, i64>(0)?) {
                let phase: String = r.get(3)?;
                users[i].1.imports.push(ImportOutcome {
                    source: r.get(1)?,
                    stream: r.get(2)?,
                    phase: phase.parse().unwrap_or_default(),
                    walk_started_at: r.get(4)?,
                    last_batch_at: r.get(5)?,
                    batches: r.get(6)?,
                    upserted: r.get(7)?,
                    unchanged: r.get(8)?,
                    deleted: r.get(9)?,
                });
            }
        }
        Ok(users.into_iter().map(|(_, a)| a).collect())
    }

    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        Ok(conn
            .prepare_cached(
                "SELECT b.bucket, sum(b.pushed), sum(b.pulled), sum(b.imported) FROM activity_buckets b
                 WHERE b.bucket >= ?2 AND (?1 IS NULL OR b.uid = (SELECT uid FROM users WHERE name = ?1))
                 GROUP BY b.bucket ORDER BY b.bucket",
            )?
            .query_map(params![user, activity_bucket(since_ms)], |r| {
                Ok(ActivityBucket {
                    at: r.get(0)?,
                    pushed: r.get(1)?,
                    pulled: r.get(2)?,
                    imported: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.execute(
            "DELETE FROM activity_buckets WHERE bucket < ?1",
            [activity_bucket(before_ms)],
        )? as u64)
    }
}

fn save_state(tx: &Transaction<'_>, uid: i64, state: &ImportState) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO import_states (uid, source, stream, phase, status, generation, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (uid, source, stream, phase)
         DO UPDATE SET status = excluded.status, generation = excluded.generation, state = excluded.state",
    )?
    .execute(params![
        uid,
        state.source,
        state.stream,
        state.phase.as_str(),
        state.status.as_str(),
        state.generation,
        state_json(state)
    ])?;
    Ok(())
}

fn existing_user(tx: &Transaction<'_>, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT uid FROM users WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

impl SqliteStore {
    /// Writes one table of an unpaged pull: live changes since the plan's cursor (plus what a migration asks
    /// for), then tombstones since the cursor (none on a first pull).
    fn pull_table(
        &self,
        tx: &Transaction<'_>,
        uid: i64,
        table: &Table,
        plan: PullPlan,
        request: &PullRequest,
        out: &mut Output<'_>,
    ) -> Result<(), StoreError> {
        let tid = self.tid(&table.name);
        let filter = live_rows_filter(table, request, "seq > ?3", |col| {
            format!("ifnull(json_extract(data, '$.{col}'), 0) NOT IN (0, '')")
        });
        out.writer.begin_table(&table.name);
        let sql = format!(
            "SELECT data FROM records WHERE uid = ?1 AND tid = ?2 AND deleted_at IS NULL AND ({filter}) ORDER BY seq"
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![uid, tid, plan.since])?;
        while let Some(row) = rows.next()? {
            out.record(text(row)?)?;
        }
        out.writer.begin_deleted();
        if !plan.first {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM records WHERE uid = ?1 AND tid = ?2 AND seq > ?3 AND deleted_at IS NOT NULL ORDER BY seq",
            )?;
            let mut rows = stmt.query(params![uid, tid, plan.since])?;
            while let Some(row) = rows.next()? {
                out.deleted(text(row)?)?;
            }
        }
        out.writer.end_table();
        Ok(())
    }

    /// Writes one page of a paged pull from one log cursor per table.
    fn pull_page(
        &self,
        tx: &Transaction<'_>,
        uid: i64,
        tables: &[&Table],
        plan: PullPlan,
        limit: usize,
        out: &mut Output<'_>,
    ) -> Result<Option<i64>, StoreError> {
        let sql = if plan.first {
            "SELECT seq, id, data FROM records WHERE uid = ?1 AND tid = ?2 AND seq > ?3 AND deleted_at IS NULL ORDER BY seq LIMIT ?4"
        } else {
            "SELECT seq, id, data FROM records WHERE uid = ?1 AND tid = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
        };
        let mut stmts = Vec::with_capacity(tables.len());
        for _ in tables {
            stmts.push(tx.prepare(sql)?);
        }
        let mut cursors: Vec<Box<dyn Iterator<Item = Result<LogRow, StoreError>> + '_>> =
            Vec::new();
        for (stmt, table) in stmts.iter_mut().zip(tables) {
            let rows = stmt.query_map(
                params![uid, self.tid(&table.name), plan.since, (limit + 1) as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            cursors.push(Box::new(rows.map(|r| r.map_err(StoreError::from))));
        }
        write_page(tables, cursors, limit, out)
    }
}

/// The first column of a row as text, without copying.
fn text<'r>(row: &'r rusqlite::Row<'_>) -> Result<&'r str, StoreError> {
    row.get_ref(0)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
            .into()
    })
}

/// The dashboard's activity tables: per user, per device, per time bucket, and per import walk.
const ACTIVITY_SETUP: &str = "
CREATE TABLE IF NOT EXISTS activity_users (
    uid INTEGER PRIMARY KEY,
    last_pull_at INTEGER,
    last_push_at INTEGER,
    pulls INTEGER NOT NULL,
    pushes INTEGER NOT NULL,
    records_pulled INTEGER NOT NULL,
    records_pushed INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    conflicts INTEGER NOT NULL,
    last_rejection TEXT,
    last_rejection_at INTEGER
);
CREATE TABLE IF NOT EXISTS activity_devices (
    uid INTEGER NOT NULL,
    device TEXT NOT NULL,
    last_seen_at INTEGER NOT NULL,
    last_pull_at INTEGER,
    last_push_at INTEGER,
    outbox_pending INTEGER,
    PRIMARY KEY (uid, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activity_buckets (
    uid INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    pushed INTEGER NOT NULL,
    pulled INTEGER NOT NULL,
    imported INTEGER NOT NULL,
    PRIMARY KEY (uid, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS activity_buckets_time ON activity_buckets (bucket);
CREATE TABLE IF NOT EXISTS import_outcomes (
    uid INTEGER NOT NULL,
    source TEXT NOT NULL,
    stream TEXT NOT NULL,
    phase TEXT NOT NULL,
    walk_started_at INTEGER NOT NULL,
    last_batch_at INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    upserted INTEGER NOT NULL,
    unchanged INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (uid, source, stream, phase)
) WITHOUT ROWID;
";

/// Adds records to the user's bucket of `at_ms`.
fn add_to_bucket(
    tx: &Transaction<'_>,
    uid: i64,
    at_ms: i64,
    pushed: u64,
    pulled: u64,
    imported: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO activity_buckets (uid, bucket, pushed, pulled, imported) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (uid, bucket) DO UPDATE SET pushed = pushed + excluded.pushed,
             pulled = pulled + excluded.pulled, imported = imported + excluded.imported",
    )?
    .execute(params![uid, activity_bucket(at_ms), pushed, pulled, imported])?;
    Ok(())
}

/// Counts one applied import batch for the dashboard, inside the batch's transaction: what the walk wrote so
/// far, and its rows in their time bucket.
fn count_import(tx: &Transaction<'_>, uid: i64, a: &ImportActivity<'_>) -> Result<(), StoreError> {
    // Assignments read the old row: a batch of a new walk starts the counts again.
    tx.prepare_cached(
        "INSERT INTO import_outcomes (uid, source, stream, phase, walk_started_at, last_batch_at, batches,
             upserted, unchanged, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9)
         ON CONFLICT (uid, source, stream, phase) DO UPDATE SET
             batches = CASE WHEN walk_started_at = excluded.walk_started_at THEN batches ELSE 0 END + 1,
             upserted = CASE WHEN walk_started_at = excluded.walk_started_at THEN upserted ELSE 0 END
                        + excluded.upserted,
             unchanged = CASE WHEN walk_started_at = excluded.walk_started_at THEN unchanged ELSE 0 END
                         + excluded.unchanged,
             deleted = CASE WHEN walk_started_at = excluded.walk_started_at THEN deleted ELSE 0 END
                       + excluded.deleted,
             walk_started_at = excluded.walk_started_at,
             last_batch_at = max(last_batch_at, excluded.last_batch_at)",
    )?
    .execute(params![
        uid,
        a.source,
        a.stream,
        a.phase.as_str(),
        a.walk_started_at,
        a.at_ms,
        a.upserted,
        a.unchanged,
        a.deleted
    ])?;
    let rows = a.upserted + a.unchanged + a.deleted;
    if rows > 0 {
        add_to_bucket(tx, uid, a.at_ms, 0, 0, rows)?;
    }
    Ok(())
}

/// [`ActivityStore::record_sync`]'s transaction on the writer connection.
fn record_sync_in(
    conn: &mut Connection,
    user: &str,
    a: &SyncActivity<'_>,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let uid = user_id(&tx, user)?;
    let pull = a.kind == SyncKind::Pull;
    let (pull_at, push_at) = if pull {
        (Some(a.at_ms), None)
    } else {
        (None, Some(a.at_ms))
    };
    tx.prepare_cached(
        "INSERT INTO activity_users (uid, last_pull_at, last_push_at, pulls, pushes, records_pulled,
             records_pushed, rejected, conflicts, last_rejection, last_rejection_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, CASE WHEN ?10 IS NOT NULL THEN ?11 END)
         ON CONFLICT (uid) DO UPDATE SET
             last_pull_at = CASE WHEN excluded.last_pull_at > ifnull(last_pull_at, 0)
                            THEN excluded.last_pull_at ELSE last_pull_at END,
             last_push_at = CASE WHEN excluded.last_push_at > ifnull(last_push_at, 0)
                            THEN excluded.last_push_at ELSE last_push_at END,
             pulls = pulls + excluded.pulls, pushes = pushes + excluded.pushes,
             records_pulled = records_pulled + excluded.records_pulled,
             records_pushed = records_pushed + excluded.records_pushed,
             rejected = rejected + excluded.rejected, conflicts = conflicts + excluded.conflicts,
             last_rejection = ifnull(excluded.last_rejection, last_rejection),
             last_rejection_at = ifnull(excluded.last_rejection_at, last_rejection_at)",
    )?
    .execute(params![
        uid,
        pull_at,
        push_at,
        pull as i64,
        !pull as i64,
        if pull { a.records } else { 0 },
        if pull { 0 } else { a.records },
        a.rejected,
        a.conflicts,
        a.rejection,
        a.at_ms
    ])?;
    if let Some(device) = a.device {
        tx.prepare_cached(
            "INSERT INTO activity_devices (uid, device, last_seen_at, last_pull_at, last_push_at, outbox_pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (uid, device) DO UPDATE SET
                 last_seen_at = max(last_seen_at, excluded.last_seen_at),
                 last_pull_at = CASE WHEN excluded.last_pull_at > ifnull(last_pull_at, 0)
                                THEN excluded.last_pull_at ELSE last_pull_at END,
                 last_push_at = CASE WHEN excluded.last_push_at > ifnull(last_push_at, 0)
                                THEN excluded.last_push_at ELSE last_push_at END,
                 outbox_pending = ifnull(excluded.outbox_pending, outbox_pending)",
        )?
        .execute(params![uid, device, a.at_ms, pull_at, push_at, a.outbox_pending])?;
    }
    if a.records > 0 {
        let (pulled, pushed) = if pull { (a.records, 0) } else { (0, a.records) };
        add_to_bucket(&tx, uid, a.at_ms, pushed, pulled, 0)?;
    }
    tx.commit()?;
    Ok(())
}
