//! The local SQLite database: records, the outbox of operations waiting to be pushed, the sealed batches
//! with their idempotency keys, and the pull cursor. Every local write and its outbox operation commit in
//! one transaction; every batch state change (sealed and syncing, completed, failed, unsealed) is one
//! transaction; every pulled page commits with its cursor. The decisions come from the pure modules
//! (`coalesce`, `batch`, `merge`); this file only carries them out. It never touches the network.
//!
//! Layout: `records(tbl, id, data)` holds each record as JSON text; `outbox(seq, tbl, rid, kind, columns,
//! grp, state, batch, ...)` holds operations in order; `batches(id, key, lo, hi, last_pulled_at, state,
//! ...)` holds sealed batches; `meta(key, value)` holds the cursor and the last error. An operation is open
//! (it can still absorb writes) while `state = pending` and `batch IS NULL`. A group (a local transaction)
//! is kept as one contiguous run of open operations, so a batch is always a range `lo..=hi` of `seq`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use syncline_core::{PullResponse, RejectedRow};

use crate::batch::{Slot, WireOp, plan_batch, render_push_body};
use crate::coalesce::{Change, Columns, OpKind, changed_columns, coalesce};
use crate::merge::{
    PulledDelete, PulledRecord, merge_pulled, on_pulled_delete, parse_columns, render_record,
    same_record, survives_replacement,
};
use crate::progress::CloudChanges;
use crate::{ClientError, Result};

/// A statement naming states (see [`with_states`]), rendered once per call site and kept.
macro_rules! sql {
    ($template:expr) => {{
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| with_states($template));
        SQL.as_str()
    }};
}

/// The lifecycle of an outbox operation.
///
/// `Pending` → `Syncing` (sealed into a batch and sent) → `Done` (purged from the outbox before the sync
/// pulls), or `Failed`
/// (kept in its batch, retried with the same key after `next_retry_at`), or `Rejected` (the server refused
/// the row: parked with its reason, never retried automatically). A `Syncing` operation found when the
/// database opens was interrupted by a crash: it goes back to `Pending` in its batch, and the batch is sent
/// again with its original key and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpState {
    Pending,
    Syncing,
    Done,
    Failed,
    Rejected,
}

impl OpState {
    const ALL: [OpState; 5] = [
        OpState::Pending,
        OpState::Syncing,
        OpState::Done,
        OpState::Failed,
        OpState::Rejected,
    ];

    /// The value of `outbox.state`.
    fn sql(self) -> i64 {
        match self {
            OpState::Pending => 0,
            OpState::Syncing => 1,
            OpState::Failed => 2,
            OpState::Rejected => 3,
            OpState::Done => 4,
        }
    }

    fn from_sql(code: i64) -> OpState {
        match code {
            0 => OpState::Pending,
            1 => OpState::Syncing,
            2 => OpState::Failed,
            3 => OpState::Rejected,
            _ => OpState::Done,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Pending => "pending",
            OpState::Syncing => "syncing",
            OpState::Done => "done",
            OpState::Failed => "failed",
            OpState::Rejected => "rejected",
        }
    }
}

/// The lifecycle of a sealed batch: `Pending` (due to be sent: new, or put back after a crash) → `Syncing`
/// (sent, no answer yet) → deleted when answered, or `Failed` (sent again with the same key and bytes after
/// `next_retry_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    Pending,
    Syncing,
    Failed,
}

impl BatchState {
    const ALL: [BatchState; 3] = [BatchState::Pending, BatchState::Syncing, BatchState::Failed];

    /// The value of `batches.state`.
    fn sql(self) -> i64 {
        match self {
            BatchState::Pending => 0,
            BatchState::Syncing => 1,
            BatchState::Failed => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            BatchState::Pending => "batch_pending",
            BatchState::Syncing => "batch_syncing",
            BatchState::Failed => "batch_failed",
        }
    }
}

/// A statement with each state's SQL value in place of its name: `{pending}`, `{syncing}`, `{failed}`,
/// `{rejected}` and `{done}` for operations, `{batch_pending}`, `{batch_syncing}` and `{batch_failed}` for
/// batches.
fn with_states(template: &str) -> String {
    let mut sql = template.to_string();
    for state in OpState::ALL {
        sql = sql.replace(&format!("{{{}}}", state.as_str()), &state.sql().to_string());
    }
    for state in BatchState::ALL {
        sql = sql.replace(&format!("{{{}}}", state.name()), &state.sql().to_string());
    }
    debug_assert!(
        !sql.contains('{'),
        "a state name that is not one: {template}"
    );
    sql
}

impl std::fmt::Display for OpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    tbl TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (tbl, id)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    rid TEXT NOT NULL,
    kind INTEGER NOT NULL,
    columns TEXT NOT NULL,
    grp INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT {pending},
    batch INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_retry_at INTEGER,
    error_code TEXT,
    error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_record ON outbox (tbl, rid);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    last_pulled_at INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_retry_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
";

/// Opens (creating if needed) the local database, and puts operations a crash left `syncing` back to
/// `pending` in their batches.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "page_size", 8192)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A large dataset's indexes take random inserts and deletes; a big page cache saves re-reading them,
    // and a large WAL lets a leaf rewritten by many commits be checkpointed once.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(sql!(SCHEMA))?;
    let tx = conn.unchecked_transaction()?;
    let interrupted = tx.execute(
        sql!("UPDATE outbox SET state = {pending} WHERE state = {syncing} AND batch IS NOT NULL"),
        [],
    )?;
    tx.execute(
        sql!("UPDATE batches SET state = {batch_pending} WHERE state = {batch_syncing}"),
        [],
    )?;
    tx.commit()?;
    if interrupted > 0 {
        tracing::info!(
            interrupted,
            "operations interrupted while syncing go back to pending; their batches will be resent"
        );
    }
    Ok(conn)
}

/// One local transaction's bookkeeping: where new operations go and which groups it touched.
#[derive(Debug)]
pub(crate) struct WriteCtx {
    now: i64,
    /// Every operation of this transaction travels together.
    grouped: bool,
    next_seq: Option<i64>,
    group: Option<i64>,
    touched: BTreeSet<i64>,
    pub(crate) wrote: bool,
}

impl WriteCtx {
    pub(crate) fn new(now: i64, grouped: bool) -> WriteCtx {
        WriteCtx {
            now,
            grouped,
            next_seq: None,
            group: None,
            touched: BTreeSet::new(),
            wrote: false,
        }
    }

    fn take_seq(&mut self, conn: &Connection) -> Result<i64> {
        let next = match self.next_seq {
            Some(n) => n,
            None => conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox", [], |r| {
                r.get(0)
            })?,
        };
        self.next_seq = Some(next + 1);
        Ok(next)
    }
}

/// A local write to one record.
#[derive(Debug)]
pub(crate) enum LocalWrite {
    Insert(Columns),
    /// The columns to set; only those that differ from the stored record become part of the operation.
    Update(Columns),
    Delete,
}

pub(crate) fn get(conn: &Connection, table: &str, id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT data FROM records WHERE tbl = ?1 AND id = ?2")?
        .query_row(params![table, id], |r| r.get(0))
        .optional()?)
}

/// Records of `table` whose columns equal the given values, in id order.
pub(crate) fn query(
    conn: &Connection,
    table: &str,
    filters: &[(String, Value)],
    limit: Option<usize>,
) -> Result<Vec<String>> {
    let mut sql = String::from("SELECT data FROM records WHERE tbl = ?");
    let mut args: Vec<rusqlite::types::Value> = vec![table.to_string().into()];
    for (column, value) in filters {
        crate::ids::check_table(column).map_err(|_| ClientError::NotAnObject)?;
        args.push(format!("$.{column}").into());
        match value {
            Value::Null => sql.push_str(" AND json_extract(data, ?) IS NULL"),
            v => {
                sql.push_str(" AND json_extract(data, ?) = ?");
                args.push(match v {
                    Value::Bool(b) => (*b as i64).into(),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => i.into(),
                        None => n.as_f64().unwrap_or(0.0).into(),
                    },
                    Value::String(s) => s.clone().into(),
                    other => other.to_string().into(),
                });
            }
        }
    }
    sql.push_str(" ORDER BY id");
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Applies a local write to its record and records it in the outbox, in the caller's transaction.
/// Returns false when it changed nothing (an update to the same values, a delete of a missing record).
pub(crate) fn write(
    conn: &Connection,
    ctx: &mut WriteCtx,
    table: &str,
    id: &str,
    write: LocalWrite,
) -> Result<bool> {
    let change = match write {
        LocalWrite::Insert(columns) => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO records (tbl, id, data) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?
                .execute(params![table, id, render_record(id, &columns)])?;
            if inserted == 0 {
                return Err(ClientError::AlreadyExists {
                    table: table.into(),
                    id: id.into(),
                });
            }
            Change::create(columns)
        }
        LocalWrite::Update(patch) => {
            let Some(current) = get(conn, table, id)? else {
                return Err(ClientError::NotFound {
                    table: table.into(),
                    id: id.into(),
                });
            };
            let mut current = parse_columns(&current)?;
            let changed = changed_columns(&current, patch);
            if changed.is_empty() {
                return Ok(false);
            }
            current.extend(changed.clone());
            conn.prepare_cached("UPDATE records SET data = ?3 WHERE tbl = ?1 AND id = ?2")?
                .execute(params![table, id, render_record(id, &current)])?;
            Change::update(changed)
        }
        LocalWrite::Delete => {
            let deleted = conn
                .prepare_cached("DELETE FROM records WHERE tbl = ?1 AND id = ?2")?
                .execute(params![table, id])?;
            if deleted == 0 {
                return Ok(false);
            }
            Change::delete()
        }
    };
    enqueue(conn, ctx, table, id, change)?;
    ctx.wrote = true;
    Ok(true)
}

/// Folds a change into the record's open operation, or appends a new one.
fn enqueue(
    conn: &Connection,
    ctx: &mut WriteCtx,
    table: &str,
    id: &str,
    change: Change,
) -> Result<()> {
    let open: Option<(i64, i64, String, i64)> = conn
        .prepare_cached(sql!(
            "SELECT seq, kind, columns, grp FROM outbox
             WHERE tbl = ?1 AND rid = ?2 AND state = {pending} AND batch IS NULL"
        ))?
        .query_row(params![table, id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    match open {
        Some((seq, kind, columns, group)) => {
            let waiting = Change {
                kind: OpKind::from_sql(kind),
                columns: serde_json::from_str(&columns)?,
            };
            match coalesce(Some(waiting), change) {
                None => {
                    conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                        .execute([seq])?;
                }
                Some(op) => {
                    conn.prepare_cached(
                        "UPDATE outbox SET kind = ?2, columns = ?3 WHERE seq = ?1",
                    )?
                    .execute(params![
                        seq,
                        op.kind.sql(),
                        Value::Object(op.columns).to_string()
                    ])?;
                }
            }
            if ctx.grouped {
                ctx.touched.insert(group);
            }
        }
        None => {
            let seq = ctx.take_seq(conn)?;
            let group = if ctx.grouped {
                *ctx.group.get_or_insert(seq)
            } else {
                seq
            };
            conn.prepare_cached(
                "INSERT INTO outbox (seq, tbl, rid, kind, columns, grp, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                seq,
                table,
                id,
                change.kind.sql(),
                Value::Object(change.columns).to_string(),
                group,
                ctx.now
            ])?;
        }
    }
    Ok(())
}

/// Ends a local transaction's bookkeeping: when it touched operations of earlier groups, those groups and
/// its own become one, moved to the end of the outbox so the group stays one contiguous run.
pub(crate) fn finish_write(conn: &Connection, ctx: &mut WriteCtx) -> Result<()> {
    let mut others: BTreeSet<i64> = ctx.touched.clone();
    if let Some(own) = ctx.group {
        others.remove(&own);
    }
    let needs_merge = !others.is_empty() && (ctx.group.is_some() || others.len() > 1);
    if needs_merge {
        regroup(conn, ctx, &others)?;
    }
    Ok(())
}

/// Moves every open operation of `groups` to the end of the outbox, into the transaction's group.
fn regroup(conn: &Connection, ctx: &mut WriteCtx, groups: &BTreeSet<i64>) -> Result<()> {
    let mut seqs = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            sql!("SELECT seq FROM outbox WHERE grp = ?1 AND state = {pending} AND batch IS NULL ORDER BY seq"),
        )?;
        for group in groups {
            for seq in stmt.query_map([group], |r| r.get::<_, i64>(0))? {
                seqs.push(seq?);
            }
        }
    }
    seqs.sort_unstable();
    for old in seqs {
        let new = ctx.take_seq(conn)?;
        let group = *ctx.group.get_or_insert(new);
        conn.prepare_cached("UPDATE outbox SET seq = ?2, grp = ?3 WHERE seq = ?1")?
            .execute(params![old, new, group])?;
    }
    Ok(())
}

pub(crate) fn cursor(conn: &Connection) -> Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0))
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
}

pub(crate) fn meta_i64(conn: &Connection, key: &str) -> Result<Option<i64>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?
        .flatten())
}

pub(crate) fn meta_text(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?
        .flatten())
}

/// A batch sealed in the outbox, ready to send.
#[derive(Debug, Clone)]
pub(crate) struct SealedBatch {
    pub id: i64,
    pub key: String,
    pub body: String,
    pub ops: u64,
    pub groups: u64,
    pub per_table: BTreeMap<String, u64>,
}

struct OpRow {
    seq: i64,
    group: i64,
    table: String,
    id: String,
    kind: OpKind,
    columns: String,
}

fn batch_body(last_pulled_at: i64, rows: &[OpRow]) -> String {
    let ops: Vec<WireOp<'_>> = rows
        .iter()
        .map(|r| WireOp {
            table: &r.table,
            id: &r.id,
            kind: r.kind,
            columns: &r.columns,
        })
        .collect();
    render_push_body(last_pulled_at, &ops)
}

fn sealed(id: i64, key: String, last_pulled_at: i64, rows: &[OpRow]) -> SealedBatch {
    let mut per_table: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        *per_table.entry(r.table.clone()).or_default() += 1;
    }
    SealedBatch {
        id,
        key,
        body: batch_body(last_pulled_at, rows),
        ops: rows.len() as u64,
        groups: rows.iter().map(|r| r.group).collect::<HashSet<_>>().len() as u64,
        per_table,
    }
}

fn read_op(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
    Ok(OpRow {
        seq: r.get(0)?,
        group: r.get(1)?,
        table: r.get(2)?,
        id: r.get(3)?,
        kind: OpKind::from_sql(r.get(4)?),
        columns: r.get(5)?,
    })
}

/// Seals the next batch of open operations (after `after_seq`): whole groups, at most `limit` operations
/// unless one group is larger, with a new idempotency key, marked `syncing`, all in one transaction.
pub(crate) fn seal_next(
    conn: &Connection,
    limit: usize,
    after_seq: i64,
    last_pulled_at: i64,
    key: String,
    now: i64,
) -> Result<Option<(SealedBatch, i64)>> {
    let tx = conn.unchecked_transaction()?;
    let mut rows: Vec<OpRow> = tx
        .prepare_cached(sql!(
            "SELECT seq, grp, tbl, rid, kind, columns FROM outbox
             WHERE seq > ?1 AND state = {pending} AND batch IS NULL ORDER BY seq LIMIT ?2"
        ))?
        .query_map(params![after_seq, limit.max(1) as i64], read_op)?
        .collect::<rusqlite::Result<_>>()?;
    let Some(last) = rows.last() else {
        return Ok(None);
    };
    if rows.len() >= limit.max(1) {
        // Groups are contiguous runs: only the last one can go on past the window.
        let (last_seq, last_group) = (last.seq, last.group);
        let mut stmt = tx.prepare_cached(sql!(
            "SELECT seq, grp, tbl, rid, kind, columns FROM outbox
             WHERE seq > ?1 AND state = {pending} AND batch IS NULL ORDER BY seq"
        ))?;
        let mut more = stmt.query_map([last_seq], read_op)?;
        for row in more.by_ref() {
            let row = row?;
            if row.group != last_group {
                break;
            }
            rows.push(row);
        }
    }
    let slots: Vec<Slot> = rows
        .iter()
        .map(|r| Slot {
            seq: r.seq,
            group: r.group,
        })
        .collect();
    let chosen = plan_batch(&slots, limit);
    rows.truncate(chosen.len()); // groups are contiguous, so the chosen ones are a prefix
    let (lo, hi) = (rows[0].seq, rows[rows.len() - 1].seq);
    tx.prepare_cached(
        sql!("INSERT INTO batches (key, lo, hi, last_pulled_at, state, created_at) VALUES (?1, ?2, ?3, ?4, {batch_syncing}, ?5)"),
    )?
    .execute(params![key, lo, hi, last_pulled_at, now])?;
    let id = tx.last_insert_rowid();
    tx.prepare_cached(
        sql!("UPDATE outbox SET state = {syncing}, batch = ?1 WHERE seq BETWEEN ?2 AND ?3 AND state = {pending} AND batch IS NULL"),
    )?
    .execute(params![id, lo, hi])?;
    tx.commit()?;
    Ok(Some((sealed(id, key, last_pulled_at, &rows), hi)))
}

/// Batches to send again before new ones: interrupted by a crash, or failed and due. Marked `syncing` in
/// one transaction each when loaded; the body is rebuilt byte for byte.
pub(crate) fn due_batches(conn: &Connection, now: i64) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        sql!("SELECT id FROM batches WHERE state = {batch_pending} OR (state = {batch_failed} AND next_retry_at <= ?1) ORDER BY id"),
    )?;
    let ids = stmt.query_map([now], |r| r.get(0))?;
    Ok(ids.collect::<rusqlite::Result<_>>()?)
}

/// Failed batches become due now (the network is back).
pub(crate) fn make_failed_due(conn: &Connection, now: i64) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        sql!("UPDATE batches SET next_retry_at = ?1 WHERE state = {batch_failed} AND next_retry_at > ?1"),
        [now],
    )?;
    tx.execute(
        sql!("UPDATE outbox SET next_retry_at = ?1 WHERE state = {failed} AND next_retry_at > ?1"),
        [now],
    )?;
    tx.commit()?;
    Ok(())
}

/// The earliest time a failed batch is due again.
pub(crate) fn next_retry_at(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn.query_row(
        sql!("SELECT MIN(next_retry_at) FROM batches WHERE state = {batch_failed}"),
        [],
        |r| r.get(0),
    )?)
}

pub(crate) fn reopen_batch(conn: &Connection, batch: i64) -> Result<SealedBatch> {
    let tx = conn.unchecked_transaction()?;
    let (key, lo, hi, last_pulled_at): (String, i64, i64, i64) = tx.query_row(
        "SELECT key, lo, hi, last_pulled_at FROM batches WHERE id = ?1",
        [batch],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let rows: Vec<OpRow> = tx
        .prepare_cached(
            "SELECT seq, grp, tbl, rid, kind, columns FROM outbox
             WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3 ORDER BY seq",
        )?
        .query_map(params![lo, hi, batch], read_op)?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute(
        sql!("UPDATE batches SET state = {batch_syncing} WHERE id = ?1"),
        [batch],
    )?;
    tx.execute(
        sql!("UPDATE outbox SET state = {syncing} WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3"),
        params![lo, hi, batch],
    )?;
    tx.commit()?;
    Ok(sealed(batch, key, last_pulled_at, &rows))
}

fn batch_range(conn: &Connection, batch: i64) -> Result<(i64, i64)> {
    Ok(
        conn.query_row("SELECT lo, hi FROM batches WHERE id = ?1", [batch], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?,
    )
}

/// What completing a batch did, per table.
#[derive(Debug, Default)]
pub(crate) struct Completed {
    pub done: BTreeMap<String, u64>,
    pub rejected: BTreeMap<String, u64>,
}

/// The server took the batch: its operations are done (removed), except the rows it rejected, which are
/// parked with their reason. One transaction.
pub(crate) fn complete_batch(
    conn: &Connection,
    batch: i64,
    rejected: &[RejectedRow],
) -> Result<Completed> {
    let tx = conn.unchecked_transaction()?;
    let (lo, hi) = batch_range(&tx, batch)?;
    let mut out = Completed::default();
    {
        let mut park = tx.prepare_cached(sql!(
            "UPDATE outbox SET state = {rejected}, batch = NULL, error_code = ?4, error = ?5
             WHERE tbl = ?1 AND rid = ?2 AND batch = ?3"
        ))?;
        for r in rejected {
            if park.execute(params![r.table, r.id, batch, r.code, r.message])? > 0 {
                *out.rejected.entry(r.table.clone()).or_default() += 1;
            }
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "SELECT tbl, COUNT(*) FROM outbox WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3 GROUP BY tbl",
        )?;
        let counts = stmt.query_map(params![lo, hi, batch], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for c in counts {
            let (table, n) = c?;
            out.done.insert(table, n as u64);
        }
    }
    // Marked done, not deleted: an update leaves the (tbl, rid) index alone, and `purge_done` removes all
    // the done operations of a sync in one transaction, touching each index page once.
    tx.execute(
        sql!("UPDATE outbox SET state = {done} WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3"),
        params![lo, hi, batch],
    )?;
    tx.execute("DELETE FROM batches WHERE id = ?1", [batch])?;
    if let Some(r) = rejected.first() {
        set_meta(
            &tx,
            "last_error",
            format!("{}/{} rejected: {} ({})", r.table, r.id, r.message, r.code),
        )?;
    }
    tx.commit()?;
    Ok(out)
}

/// Removes the operations marked done, in one transaction.
pub(crate) fn purge_done(conn: &Connection) -> Result<u64> {
    Ok(conn.execute(sql!("DELETE FROM outbox WHERE state = {done}"), [])? as u64)
}

/// The batch may or may not have been applied: it stays sealed with its key, `failed`, due again at
/// `next_retry_at`. One transaction.
pub(crate) fn fail_batch(
    conn: &Connection,
    batch: i64,
    error: &str,
    next_retry_at: impl FnOnce(u32) -> i64,
) -> Result<i64> {
    let tx = conn.unchecked_transaction()?;
    let (lo, hi) = batch_range(&tx, batch)?;
    let attempts: u32 = tx.query_row(
        "UPDATE batches SET attempts = attempts + 1 WHERE id = ?1 RETURNING attempts",
        [batch],
        |r| r.get(0),
    )?;
    let due = next_retry_at(attempts);
    tx.execute(
        sql!("UPDATE batches SET state = {batch_failed}, next_retry_at = ?2 WHERE id = ?1"),
        params![batch, due],
    )?;
    tx.execute(
        sql!(
            "UPDATE outbox SET state = {failed}, attempts = ?4, next_retry_at = ?5, error = ?6
         WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3"
        ),
        params![lo, hi, batch, attempts, due, error],
    )?;
    set_meta(&tx, "last_error", error)?;
    tx.commit()?;
    Ok(due)
}

/// The server certainly applied nothing (a conflict, a refused request, a refused token): the batch is
/// dissolved and its operations are open again. An operation written since for the same record is folded
/// into it, and their groups become one. One transaction.
pub(crate) fn unseal_batch(conn: &Connection, batch: i64, now: i64) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    let (lo, hi) = batch_range(&tx, batch)?;
    tx.execute(
        sql!("UPDATE outbox SET state = {pending}, batch = NULL WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3"),
        params![lo, hi, batch],
    )?;
    tx.execute("DELETE FROM batches WHERE id = ?1", [batch])?;
    // Pairs (older unsealed op, newer open op) for the same record.
    let pairs: Vec<(RawOp, RawOp)> = tx
        .prepare(
            sql!("SELECT u.seq, u.grp, u.kind, u.columns, o.seq, o.grp, o.kind, o.columns
             FROM outbox u JOIN outbox o
               ON o.tbl = u.tbl AND o.rid = u.rid AND o.seq > u.seq AND o.state = {pending} AND o.batch IS NULL
             WHERE u.seq BETWEEN ?1 AND ?2 AND u.state = {pending} AND u.batch IS NULL"),
        )?
        .query_map(params![lo, hi], |r| Ok((RawOp::read(r, 0)?, RawOp::read(r, 4)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if !pairs.is_empty() {
        let mut ctx = WriteCtx::new(now, true);
        let mut groups = BTreeSet::new();
        for (older, newer) in pairs {
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [older.seq])?;
            match coalesce(Some(older.change()?), newer.change()?) {
                None => {
                    tx.execute("DELETE FROM outbox WHERE seq = ?1", [newer.seq])?;
                }
                Some(op) => {
                    tx.execute(
                        "UPDATE outbox SET kind = ?2, columns = ?3 WHERE seq = ?1",
                        params![
                            newer.seq,
                            op.kind.sql(),
                            Value::Object(op.columns).to_string()
                        ],
                    )?;
                }
            }
            groups.insert(older.group);
            groups.insert(newer.group);
        }
        regroup(&tx, &mut ctx, &groups)?;
    }
    tx.commit()?;
    Ok(())
}

/// An outbox row as read for folding: its place, its group and its change (still as stored).
struct RawOp {
    seq: i64,
    group: i64,
    kind: i64,
    columns: String,
}

impl RawOp {
    fn read(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<RawOp> {
        Ok(RawOp {
            seq: r.get(at)?,
            group: r.get(at + 1)?,
            kind: r.get(at + 2)?,
            columns: r.get(at + 3)?,
        })
    }

    fn change(&self) -> Result<Change> {
        Ok(Change {
            kind: OpKind::from_sql(self.kind),
            columns: serde_json::from_str(&self.columns)?,
        })
    }
}

/// The server refused a batch that is a single group: its operations are parked as rejected, with the
/// reason. One transaction.
pub(crate) fn reject_batch(
    conn: &Connection,
    batch: i64,
    code: &str,
    message: &str,
) -> Result<BTreeMap<String, u64>> {
    let tx = conn.unchecked_transaction()?;
    let (lo, hi) = batch_range(&tx, batch)?;
    let mut per_table = BTreeMap::new();
    {
        let mut stmt = tx.prepare(
            "SELECT tbl, COUNT(*) FROM outbox WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3 GROUP BY tbl",
        )?;
        for row in stmt.query_map(params![lo, hi, batch], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (t, n) = row?;
            per_table.insert(t, n as u64);
        }
    }
    tx.execute(
        sql!(
            "UPDATE outbox SET state = {rejected}, batch = NULL, error_code = ?4, error = ?5
         WHERE seq BETWEEN ?1 AND ?2 AND batch = ?3"
        ),
        params![lo, hi, batch, code, message],
    )?;
    tx.execute("DELETE FROM batches WHERE id = ?1", [batch])?;
    set_meta(
        &tx,
        "last_error",
        format!("request refused: {message} ({code})"),
    )?;
    tx.commit()?;
    Ok(per_table)
}

/// Counts of open operations per table: what a push is about to send.
pub(crate) fn pushable(conn: &Connection, now: i64) -> Result<BTreeMap<String, u64>> {
    let mut stmt = conn.prepare(
        sql!("SELECT o.tbl, COUNT(*) FROM outbox o LEFT JOIN batches b ON b.id = o.batch
         WHERE (o.state = {pending} AND o.batch IS NULL) OR b.state = {batch_pending} OR (b.state = {batch_failed} AND b.next_retry_at <= ?1)
         GROUP BY o.tbl"),
    )?;
    let rows = stmt.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (t, n) = row?;
        out.insert(t, n as u64);
    }
    Ok(out)
}

/// What applying one pulled page did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub received: BTreeMap<String, u64>,
    pub changes: BTreeMap<String, CloudChanges>,
}

fn waiting_ops(conn: &Connection, table: &str, id: &str) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(
        sql!("SELECT kind, columns FROM outbox WHERE tbl = ?1 AND rid = ?2 AND state != {done} ORDER BY seq"),
    )?;
    let rows = stmt.query_map(params![table, id], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, columns) = row?;
        out.push(Change {
            kind: OpKind::from_sql(kind),
            columns: serde_json::from_str(&columns)?,
        });
    }
    Ok(out)
}

/// The id of a pulled record: the server writes it first, so a prefix read usually suffices.
fn record_id(raw: &str) -> Result<String> {
    if let Some(rest) = raw.strip_prefix("{\"id\":\"")
        && let Some(end) = rest.find('"')
        && syncline_core::is_safe_id(&rest[..end])
    {
        return Ok(rest[..end].to_string());
    }
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    let id = serde_json::from_str::<IdOnly>(raw)?.id;
    crate::ids::check_id(&id)?;
    Ok(id)
}

/// Applies one pulled page and saves its cursor, in one transaction. Pulled records are merged with the
/// local operations still waiting (local columns win); pulled deletes and replacement pulls spare records
/// created here and not pushed yet.
pub(crate) fn apply_page(conn: &Connection, page: &PullResponse<'_>) -> Result<Applied> {
    let tx = conn.unchecked_transaction()?;
    let outbox_empty: bool = tx.query_row(
        sql!("SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE state != {done})"),
        [],
        |r| r.get(0),
    )?;
    let mut applied = Applied::default();
    let mut kept: HashSet<(String, String)> = HashSet::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO records (tbl, id, data) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        let mut update =
            tx.prepare_cached("UPDATE records SET data = ?3 WHERE tbl = ?1 AND id = ?2")?;
        let mut remove = tx.prepare_cached("DELETE FROM records WHERE tbl = ?1 AND id = ?2")?;
        let mut drop_open = tx.prepare_cached(sql!(
            "DELETE FROM outbox WHERE tbl = ?1 AND rid = ?2 AND state = {pending} AND batch IS NULL"
        ))?;
        for (table, changes) in &page.changes {
            if crate::ids::check_table(table).is_err() {
                continue;
            }
            let mut received = 0u64;
            let mut cloud = CloudChanges::default();
            for raw in changes.created.iter().chain(&changes.updated) {
                received += 1;
                let id = record_id(raw.get())?;
                if page.is_replacement() {
                    kept.insert((table.clone(), id.clone()));
                }
                let waiting = if outbox_empty {
                    Vec::new()
                } else {
                    waiting_ops(&tx, table, &id)?
                };
                let text: std::borrow::Cow<'_, str> = if waiting.is_empty() {
                    raw.get().into()
                } else {
                    match merge_pulled(parse_columns(raw.get())?, &waiting) {
                        PulledRecord::Write(columns) => render_record(&id, &columns).into(),
                        PulledRecord::StayDeleted => continue,
                    }
                };
                if insert.execute(params![table, id, text])? > 0 {
                    cloud.created += 1;
                    continue;
                }
                let Some(current) = get(&tx, table, &id)? else {
                    continue;
                };
                if current != *text {
                    if !same_record(&parse_columns(&current)?, &parse_columns(&text)?) {
                        cloud.updated += 1;
                    }
                    update.execute(params![table, id, text])?;
                }
            }
            for id in &changes.deleted {
                received += 1;
                let waiting = if outbox_empty {
                    Vec::new()
                } else {
                    waiting_ops(&tx, table, id)?
                };
                match on_pulled_delete(&waiting) {
                    PulledDelete::Keep => {}
                    PulledDelete::Delete { drop_waiting } => {
                        if drop_waiting {
                            drop_open.execute(params![table, id])?;
                        }
                        if remove.execute(params![table, id])? > 0 {
                            cloud.deleted += 1;
                        }
                    }
                }
            }
            *applied.received.entry(table.clone()).or_default() += received;
            applied.changes.entry(table.clone()).or_default().add(cloud);
        }
    }
    if page.is_replacement() {
        let local: Vec<(String, String)> = tx
            .prepare("SELECT tbl, id FROM records")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (table, id) in local {
            if kept.contains(&(table.clone(), id.clone())) {
                continue;
            }
            if survives_replacement(&waiting_ops(&tx, &table, &id)?) {
                continue;
            }
            tx.execute(
                "DELETE FROM records WHERE tbl = ?1 AND id = ?2",
                params![table, id],
            )?;
            tx.execute(
                sql!("DELETE FROM outbox WHERE tbl = ?1 AND rid = ?2 AND state = {pending} AND batch IS NULL"),
                params![table, id],
            )?;
            applied.changes.entry(table).or_default().deleted += 1;
        }
    }
    set_meta(&tx, "cursor", page.timestamp)?;
    tx.commit()?;
    Ok(applied)
}

/// The outbox of one table, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableOutbox {
    pub pending: u64,
    pub syncing: u64,
    pub failed: u64,
    pub rejected: u64,
}

/// What is waiting to be pushed, for a status screen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub tables: BTreeMap<String, TableOutbox>,
    /// When the oldest operation not yet done (pending, syncing or failed) was written (epoch ms).
    pub oldest_pending_at: Option<i64>,
    /// The last push error or rejection.
    pub last_error: Option<String>,
}

impl OutboxStats {
    /// Operations not yet on the server, rejected ones excluded.
    pub fn unsynced(&self) -> u64 {
        self.tables
            .values()
            .map(|t| t.pending + t.syncing + t.failed)
            .sum()
    }

    pub fn rejected(&self) -> u64 {
        self.tables.values().map(|t| t.rejected).sum()
    }

    /// How long the oldest unsynced operation has waited, at `now_ms`.
    pub fn oldest_pending_age_ms(&self, now_ms: i64) -> Option<i64> {
        self.oldest_pending_at.map(|t| (now_ms - t).max(0))
    }
}

pub(crate) fn outbox_stats(conn: &Connection) -> Result<OutboxStats> {
    let mut stats = OutboxStats::default();
    let mut stmt = conn.prepare(
        sql!("SELECT tbl, state, COUNT(*), MIN(CASE WHEN state IN ({pending}, {syncing}, {failed}) THEN created_at END) FROM outbox GROUP BY tbl, state"),
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    for row in rows {
        let (table, state, n, oldest) = row?;
        let t = stats.tables.entry(table).or_default();
        let n = n as u64;
        match OpState::from_sql(state) {
            OpState::Pending => t.pending += n,
            OpState::Syncing => t.syncing += n,
            OpState::Failed => t.failed += n,
            OpState::Rejected => t.rejected += n,
            OpState::Done => {}
        }
        if let Some(o) = oldest {
            stats.oldest_pending_at = Some(stats.oldest_pending_at.map_or(o, |x| x.min(o)));
        }
    }
    stats.last_error = meta_text(conn, "last_error")?;
    Ok(stats)
}

/// An operation of the outbox, for inspection (rejected ones especially).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxOp {
    pub table: String,
    pub id: String,
    pub kind: OpKind,
    pub state: OpState,
    /// The columns it sets (empty for a delete).
    pub columns: Columns,
    pub attempts: u32,
    pub next_retry_at: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
}

pub(crate) fn list_ops(conn: &Connection, state: Option<OpState>) -> Result<Vec<OutboxOp>> {
    let mut stmt = conn.prepare(
        sql!("SELECT tbl, rid, kind, state, columns, attempts, next_retry_at, error_code, error, created_at
         FROM outbox WHERE (?1 IS NULL AND state != {done}) OR state = ?1 ORDER BY seq"),
    )?;
    let rows = stmt.query_map([state.map(OpState::sql)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, u32>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, i64>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (table, id, kind, st, columns, attempts, next_retry_at, error_code, error, created_at) =
            row?;
        out.push(OutboxOp {
            table,
            id,
            kind: OpKind::from_sql(kind),
            state: OpState::from_sql(st),
            columns: serde_json::from_str(&columns)?,
            attempts,
            next_retry_at,
            error_code,
            error,
            created_at,
        });
    }
    Ok(out)
}

/// Puts rejected operations back in line (after the app or the server's configuration was fixed): each
/// becomes open again, folded with any open operation of the same record. Returns how many.
pub(crate) fn retry_rejected(conn: &Connection, now: i64) -> Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let rows: Vec<(i64, String, String, i64, String)> = tx
        .prepare(sql!(
            "SELECT seq, tbl, rid, kind, columns FROM outbox WHERE state = {rejected} ORDER BY seq"
        ))?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut ctx = WriteCtx::new(now, false);
    for (seq, table, id, kind, columns) in &rows {
        tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        let change = Change {
            kind: OpKind::from_sql(*kind),
            columns: serde_json::from_str(columns)?,
        };
        // The parked change goes first, then whatever was written since.
        let open: Option<(i64, i64, String)> = tx
            .query_row(
                sql!("SELECT seq, kind, columns FROM outbox WHERE tbl = ?1 AND rid = ?2 AND state = {pending} AND batch IS NULL"),
                params![table, id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((open_seq, open_kind, open_cols)) = open {
            let newer = Change {
                kind: OpKind::from_sql(open_kind),
                columns: serde_json::from_str(&open_cols)?,
            };
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [open_seq])?;
            if let Some(op) = coalesce(Some(change), newer) {
                enqueue(&tx, &mut ctx, table, id, op)?;
            }
        } else {
            enqueue(&tx, &mut ctx, table, id, change)?;
        }
    }
    tx.commit()?;
    Ok(rows.len() as u64)
}

/// Drops rejected operations for good (the local records keep their values until the server sends newer
/// ones). Returns how many.
pub(crate) fn discard_rejected(conn: &Connection) -> Result<u64> {
    Ok(conn.execute(sql!("DELETE FROM outbox WHERE state = {rejected}"), [])? as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cols(v: Value) -> Columns {
        serde_json::from_value(v).unwrap()
    }

    fn ops(conn: &Connection) -> Vec<(i64, String, String, i64, String)> {
        conn.prepare("SELECT seq, grp || '', rid, kind, columns FROM outbox ORDER BY seq")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn write_one(conn: &Connection, id: &str, w: LocalWrite) {
        let mut ctx = WriteCtx::new(1, true);
        write(conn, &mut ctx, "t", id, w).unwrap();
        finish_write(conn, &mut ctx).unwrap();
    }

    #[test]
    fn states_keep_the_values_existing_databases_hold() {
        // Written to disk: changing a value would misread every outbox already on a device.
        assert_eq!(OpState::ALL.map(OpState::sql), [0, 1, 4, 2, 3]);
        assert_eq!(BatchState::ALL.map(BatchState::sql), [0, 1, 2]);
        for state in OpState::ALL {
            assert_eq!(OpState::from_sql(state.sql()), state);
        }
        assert_eq!(
            with_states("state IN ({pending}, {done}) OR b.state = {batch_failed}"),
            "state IN (0, 4) OR b.state = 2"
        );
    }

    #[test]
    fn writes_fold_into_the_open_operation() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("c.db")).unwrap();
        write_one(&conn, "a", LocalWrite::Insert(cols(json!({"x": 1}))));
        write_one(&conn, "a", LocalWrite::Update(cols(json!({"y": 2}))));
        write_one(&conn, "a", LocalWrite::Update(cols(json!({"y": 2}))));
        write_one(&conn, "b", LocalWrite::Insert(cols(json!({"x": 1}))));
        write_one(&conn, "b", LocalWrite::Delete);
        let o = ops(&conn);
        assert_eq!(o.len(), 1, "{o:?}");
        assert_eq!(
            (o[0].3, o[0].4.as_str()),
            (OpKind::Create.sql(), r#"{"x":1,"y":2}"#)
        );
        assert_eq!(
            get(&conn, "t", "a").unwrap().unwrap(),
            r#"{"id":"a","x":1,"y":2}"#
        );
    }

    #[test]
    fn a_transaction_touching_an_older_group_pulls_it_along() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("c.db")).unwrap();
        // Group 1: a and b together. Then c alone. Then a transaction writing a again and d.
        let mut ctx = WriteCtx::new(1, true);
        write(
            &conn,
            &mut ctx,
            "t",
            "a",
            LocalWrite::Insert(cols(json!({"v": 1}))),
        )
        .unwrap();
        write(
            &conn,
            &mut ctx,
            "t",
            "b",
            LocalWrite::Insert(cols(json!({"v": 1}))),
        )
        .unwrap();
        finish_write(&conn, &mut ctx).unwrap();
        write_one(&conn, "c", LocalWrite::Insert(cols(json!({"v": 1}))));
        let mut ctx = WriteCtx::new(1, true);
        write(
            &conn,
            &mut ctx,
            "t",
            "d",
            LocalWrite::Insert(cols(json!({"v": 1}))),
        )
        .unwrap();
        write(
            &conn,
            &mut ctx,
            "t",
            "a",
            LocalWrite::Update(cols(json!({"v": 2}))),
        )
        .unwrap();
        finish_write(&conn, &mut ctx).unwrap();
        let order: Vec<(String, String)> = ops(&conn).into_iter().map(|o| (o.2, o.1)).collect();
        // c stays first; d, a and b are now one contiguous group at the end.
        assert_eq!(order[0].0, "c");
        let tail: Vec<&str> = order[1..].iter().map(|o| o.0.as_str()).collect();
        assert_eq!(tail, ["d", "a", "b"]);
        assert!(order[1..].iter().all(|o| o.1 == order[1].1));
        let (sealed, _) = seal_next(&conn, 2, 0, 0, "k1".into(), 1).unwrap().unwrap();
        assert_eq!(
            sealed.ops, 1,
            "c alone: the 3-op group does not fit after it"
        );
        let (sealed, _) = seal_next(&conn, 2, 0, 0, "k2".into(), 1).unwrap().unwrap();
        assert_eq!((sealed.ops, sealed.groups), (3, 1), "the group goes whole");
    }
}
