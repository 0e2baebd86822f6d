//! The seam under the shared bookkeeping flows (stats, activity, imports, migrations): a backend hands a flow
//! a [`SqlConn`] and the SQL text of its dialect ([`Sql`]); the flow binds typed [`Param`]s and reads typed
//! columns through [`SqlRow`]. A flow never builds SQL, and a backend never decides what a flow does.
//!
//! [`Backend`] is what a store supplies to get [`crate::ImportStore`] and [`crate::ActivityStore`] from the
//! shared flows: its statements, how it opens a read snapshot and a write transaction, and the import batch
//! (which belongs to the write path).

use syncline_core::{ImportState, WriteBatch};

use crate::{ImportHook, Lease, StoreError, WriteSummary};

/// A value bound to a statement's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

/// Counts beyond `i64::MAX` cannot be stored; they saturate.
impl From<u64> for Param<'_> {
    fn from(v: u64) -> Self {
        Param::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Param::OptInt(v)
    }
}

impl From<Option<u64>> for Param<'_> {
    fn from(v: Option<u64>) -> Self {
        Param::OptInt(v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::OptText(v)
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Bytes(v)
    }
}

/// A column's value as the shared flows read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One result row, read by column index. A backend supplies [`SqlRow::value`]; the typed reads follow.
pub(crate) trait SqlRow {
    fn value(&self, i: usize) -> Result<Value, StoreError>;

    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(v)),
            other => Err(unexpected(i, "an integer", &other)),
        }
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| unexpected(i, "an integer", &Value::Null))
    }

    /// A count column: never negative.
    fn count(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.int(i)?.max(0) as u64)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v)),
            other => Err(unexpected(i, "text", &other)),
        }
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| unexpected(i, "text", &Value::Null))
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.value(i)? {
            Value::Bytes(v) => Ok(v),
            other => Err(unexpected(i, "bytes", &other)),
        }
    }
}

fn unexpected(i: usize, wanted: &str, got: &Value) -> StoreError {
    StoreError::Setup(format!("column {i} holds {got:?} where {wanted} belongs"))
}

/// A connection (or a transaction on one) that runs the backend's statements, prepared once per connection
/// where the driver caches them.
pub(crate) trait SqlConn {
    /// Runs a query, handing each row to `each` in order.
    fn query(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Runs one statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;

    /// Runs several statements without parameters (a migration).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

impl dyn SqlConn + '_ {
    /// Every row of a query, mapped.
    pub(crate) fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        mut map: impl FnMut(&dyn SqlRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.query(sql, params, &mut |r| {
            out.push(map(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, mapped, if there is one.
    pub(crate) fn row<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        map: impl FnOnce(&dyn SqlRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut map = Some(map);
        let mut out = None;
        self.query(sql, params, &mut |r| {
            if let Some(map) = map.take() {
                out = Some(map(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// A backend's SQL text for every statement the shared flows run. Parameters are numbered (`?1` / `$1`) in
/// the order each flow binds them, named in the field's comment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    pub users: UserSql,
    pub activity: ActivitySql,
    pub imports: ImportSql,
    pub migrations: MigrationSql,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct UserSql {
    /// (name) -> uid
    pub find: &'static str,
    /// (name): creates the user unless it exists.
    pub insert: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ActivitySql {
    /// (name) -> one row: uid or NULL, the user's last push or NULL, the change counter the user is at.
    pub stats_user: &'static str,
    /// (uid) -> tid, live records, tombstones: per table.
    pub stats_tables: &'static str,
    /// (uid, last pull, last push, pulls, pushes, records pulled, records pushed, rejected, conflicts,
    /// rejection, at): adds one sync to the user's counters.
    pub record_user: &'static str,
    /// (uid, device, at, last pull, last push, outbox pending): the device's last contact.
    pub record_device: &'static str,
    /// (uid, bucket, pushed, pulled, imported): adds to the user's time bucket.
    pub add_to_bucket: &'static str,
    /// (uid, source, stream, phase, walk started at, at, upserted, unchanged, deleted): one import batch.
    pub count_import: &'static str,
    /// Where a push counts itself in statements whose row locks come in no fixed order (PostgreSQL), a
    /// counting transaction of its own first holds the user's counter row with these: (uid) -> a row if the
    /// counter exists, locked until commit; and (uid): creates the counter unless it exists.
    pub hold_counter: Option<(&'static str, &'static str)>,
    /// (name or NULL, limit) -> uid, name, last pull, last push, pulls, pushes, records pulled, records
    /// pushed, rejected, conflicts, last rejection, last rejection at; most recently active first.
    pub users: &'static str,
    /// (name or NULL) -> uid, device, last seen, last pull, last push, outbox pending; last seen first.
    pub devices: &'static str,
    /// (name or NULL) -> uid, source, stream, phase, walk started at, last batch at, batches, upserted,
    /// unchanged, deleted; by source, stream and phase.
    pub imports: &'static str,
    /// (name or NULL, from bucket) -> bucket, pushed, pulled, imported; oldest first.
    pub series: &'static str,
    /// (before bucket): forgets older buckets.
    pub prune: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ImportSql {
    /// (name, source or NULL) -> state JSON; by source, stream and phase.
    pub states: &'static str,
    /// () -> name, state JSON of the imports the runner looks at; by user, source, stream and phase.
    pub active: &'static str,
    /// () -> name, state JSON of every import; by user, source, stream and phase.
    pub all: &'static str,
    /// (uid, source, stream, phase, status, generation, state JSON): saves one state.
    pub save: &'static str,
    /// (uid, source) -> owner, until of the job's lease row, locked for the claim; no row when another
    /// instance holds the lock.
    pub lock_lease: &'static str,
    /// (uid, source) -> owner of the job's lease row, locked or not.
    pub peek_lease: &'static str,
    /// (uid, source, owner, until): hands the lease row to `owner`.
    pub update_lease: &'static str,
    /// (uid, source, owner, until): creates the lease row unless one exists.
    pub insert_lease: &'static str,
    /// (name, source, owner): gives the lease back if `owner` holds it.
    pub release: &'static str,
    /// (name, source, now) -> owner, until of a live lease.
    pub lease: &'static str,
    /// (uid, source, sealed): stores a credential.
    pub put_connection: &'static str,
    /// (name, source) -> sealed
    pub get_connection: &'static str,
    /// (name, source): removes a credential.
    pub delete_connection: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MigrationSql {
    /// Creates the table that records applied migrations unless it exists.
    pub create: &'static str,
    /// () -> version of every applied migration.
    pub applied: &'static str,
    /// (version, name): records one applied migration.
    pub record: &'static str,
}

/// One schema migration: applied once, in version order, and recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Applies the migrations not recorded yet, in order, inside the caller's transaction.
pub(crate) fn migrate(
    conn: &mut dyn SqlConn,
    sql: &MigrationSql,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    conn.batch(sql.create)?;
    let applied = conn.rows(sql.applied, &[], |r| r.int(0))?;
    for m in migrations {
        if applied.contains(&m.version) {
            continue;
        }
        conn.batch(m.sql)
            .map_err(|e| StoreError::Setup(format!("migration {} ({}): {e}", m.version, m.name)))?;
        conn.execute(sql.record, &[m.version.into(), m.name.into()])?;
    }
    Ok(())
}

/// The user's uid, created on first use.
pub(crate) fn user_id(
    conn: &mut dyn SqlConn,
    sql: &UserSql,
    name: &str,
) -> Result<i64, StoreError> {
    if let Some(uid) = conn.row(sql.find, &[name.into()], |r| r.int(0))? {
        return Ok(uid);
    }
    conn.execute(sql.insert, &[name.into()])?;
    conn.row(sql.find, &[name.into()], |r| r.int(0))?
        .ok_or_else(|| StoreError::Setup(format!("user {name:?} was not created")))
}

/// How much a write transaction's commit must wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// As configured: acknowledged means on disk.
    Full,
    /// Dashboard counters: an OS crash may lose the last few, so the commit need not wait for the disk
    /// (the next durable commit flushes it too).
    Relaxed,
}

/// What a store supplies to have the shared import and activity flows serve it.
pub(crate) trait Backend: Send + Sync + 'static {
    /// This backend's statements.
    const SQL: Sql;

    /// Runs `f` in one read-only snapshot.
    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError>;

    /// Runs `f`, one statement, where a snapshot is not needed (by default in one).
    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.snapshot(f)
    }

    /// Runs `f` in one write transaction, committed when `f` succeeds and rolled back when it fails.
    fn transaction<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError>;

    /// The hook told of saved import states.
    fn import_hook(&self) -> &ImportHook;

    /// [`crate::ImportStore::write_import`]: part of the write path.
    fn import_batch(&self, job: ImportBatch<'_, '_>) -> Result<Option<WriteSummary>, StoreError>;
}

/// What [`crate::ImportStore::write_import`] was handed: one batch of a user's import step.
#[derive(Clone, Copy)]
pub(crate) struct ImportBatch<'a, 'b> {
    pub user: &'a str,
    pub batch: &'a WriteBatch<'b>,
    pub state: &'a ImportState,
    pub lease: Lease<'a>,
    pub now_ms: i64,
}
