//! The pull driver every backend shares: it decides what a request asks for (first, incremental or
//! replacement; paged or streamed whole), finds where a page ends across tables, and writes the answer into
//! the sink in chunks. A backend supplies only a read snapshot and row iteration in it ([`PullSource`],
//! [`PullTx`]): the user's counter, a table's log sequences, its live rows and its tombstones, each in
//! sequence order and handed over as borrowed text, so no row is copied into an owned string on the way.
//!
//! A page holds the oldest `limit` changes after the cursor across all tables, written table by table. The
//! driver first finds the sequence of the page's last change (from the tables' log sequences alone, which
//! the log index answers without reading any record), then streams each table's rows up to it. When only one
//! table has changes on a first pull, one read with a row limit does both.

use std::collections::HashMap;

use syncline_core::{Migration, PullRequest, PullWriter, Schema, Table};

use crate::{PullSink, PullStats, StoreError};

/// Flush pull output to the sink in chunks of about this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// How a pull reads the log, given the request and the user's tombstone horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PullPlan {
    /// Changes with a sequence above this are sent.
    pub since: i64,
    /// A first (or replacement) pull: every live record, no tombstones.
    pub first: bool,
    /// The cursor is older than the tombstone horizon, or newer than the user's counter: send everything
    /// with the replacement strategy.
    pub replacement: bool,
    /// The cursor is newer than the user's counter (the database was restored from an older backup): the
    /// counter is moved up to the cursor first, and the pull is then answered as a replacement.
    pub ahead: bool,
    /// Page size, when the pull is paged (never for migration and replacement pulls).
    pub limit: Option<usize>,
}

impl PullPlan {
    /// The plan for `request`, given the user's tombstone horizon and change counter in the pull's snapshot.
    /// `raised`: the counter was just moved up to the cursor, which was ahead of it; answer with a replacement.
    pub fn new(request: &PullRequest, horizon: i64, counter: i64, raised: bool) -> PullPlan {
        let cursor = request.last_pulled_at.unwrap_or(0).max(0);
        let ahead = cursor > counter;
        let replacement = cursor > 0 && (cursor < horizon || ahead || raised);
        let first = cursor == 0 || replacement;
        let limit = request
            .limit
            .filter(|_| request.migration.is_none() && !replacement)
            .map(|l| l.max(1) as usize);
        PullPlan {
            since: if first { 0 } else { cursor },
            first,
            replacement,
            ahead,
            limit,
        }
    }
}

/// The user a pull reads for, as its snapshot sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PullUser {
    /// The user's id, or -1 for a user without a row yet (who then has no rows either).
    pub uid: i64,
    /// Tombstones at or below this sequence were collected.
    pub horizon: i64,
    /// The user's change counter: the newest sequence the snapshot holds for them.
    pub counter: i64,
}

/// Which changes of one table a read covers: sequences in `since < seq <= upto`, in sequence order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    pub uid: i64,
    pub tid: i64,
    pub since: i64,
    /// `i64::MAX` for no upper bound.
    pub upto: i64,
}

/// A read of a table's live rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveRead<'a> {
    pub range: Range,
    /// At most this many rows (`None`: all of the range).
    pub limit: Option<usize>,
    pub table: &'a Table,
    /// A migration sync also asks for rows outside the range: see [`LiveRead::filter`].
    pub migration: Option<&'a Migration>,
}

impl LiveRead<'_> {
    /// The SQL condition that picks the read's rows beyond `deleted_at IS NULL`: in the range (`in_range`,
    /// e.g. `seq > ?3 AND seq <= ?4`), or, in a migration sync, every row of a table that is new to the client
    /// and every row that holds a value in a column that is new to it. `holds_value(column)` is the backend's
    /// test for that; only columns of the schema are spliced in.
    pub fn filter(&self, in_range: &str, holds_value: impl Fn(&str) -> String) -> String {
        let mut filter = in_range.to_string();
        let Some(migration) = self.migration else {
            return filter;
        };
        let table = self.table;
        if migration.tables.contains(&table.name) {
            return format!("{in_range} OR true");
        }
        for mc in migration.columns.iter().filter(|mc| mc.table == table.name) {
            for col in mc.columns.iter().filter(|c| table.column(c).is_some()) {
                filter.push_str(" OR ");
                filter.push_str(&holds_value(col));
            }
        }
        filter
    }
}

/// How a backend's SQL spells the records table and its parameters; the driver's reads are the same
/// statements on both backends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// The table of records and tombstones (`uid`, `tid`, `seq`, `id`, `deleted_at`, `data`).
    pub records: &'static str,
    /// `'?'` (`?1`) or `'$'` (`$1`).
    pub param: char,
}

impl Dialect {
    /// The columns a read selects, from the rows of a user's table in a sequence range (parameters 1-4:
    /// uid, tid, since, upto), with `extra` conditions, in sequence order.
    fn select(&self, columns: &str, extra: &str) -> String {
        let (r, p) = (self.records, self.param);
        format!(
            "SELECT {columns} FROM {r} WHERE uid = {p}1 AND tid = {p}2 AND {extra} ORDER BY seq"
        )
    }

    /// [`PullTx::log_seqs`], with the row limit as parameter 5.
    pub fn log_seqs(&self, live_only: bool) -> String {
        let p = self.param;
        let live = if live_only {
            " AND deleted_at IS NULL"
        } else {
            ""
        };
        let sql = self.select("seq", &format!("seq > {p}3 AND seq <= {p}4{live}"));
        format!("{sql} LIMIT {p}5")
    }

    /// [`PullTx::live_rows`] (selecting `data, seq`), with the row limit as parameter 5; `holds_value` is
    /// the backend's test of a column for a migration pull (see [`LiveRead::filter`]).
    pub fn live_rows(&self, read: &LiveRead<'_>, holds_value: impl Fn(&str) -> String) -> String {
        let p = self.param;
        let filter = read.filter(&format!("seq > {p}3 AND seq <= {p}4"), holds_value);
        let sql = self.select("data, seq", &format!("deleted_at IS NULL AND ({filter})"));
        format!("{sql} LIMIT {p}5")
    }

    /// [`PullTx::tombstones`] (selecting `id`).
    pub fn tombstones(&self) -> String {
        let p = self.param;
        self.select(
            "id",
            &format!("seq > {p}3 AND seq <= {p}4 AND deleted_at IS NOT NULL"),
        )
    }
}

/// Called with `(seq, record JSON)` of each live row a read finds; an error stops the read.
pub(crate) type EachRow<'f> = &'f mut dyn FnMut(i64, &str) -> Result<(), StoreError>;

/// Called with the id of each tombstone a read finds; an error stops the read.
pub(crate) type EachId<'f> = &'f mut dyn FnMut(&str) -> Result<(), StoreError>;

/// The reads of one pull, all inside one snapshot. Every read hands rows over in sequence order.
pub(crate) trait PullTx {
    /// The user `name` as this snapshot sees them.
    fn user(&mut self, name: &str) -> Result<PullUser, StoreError>;

    /// Appends to `seqs` the sequences of up to `n` changes in `range`: live rows only when `live_only`,
    /// else live rows and tombstones.
    fn log_seqs(
        &mut self,
        range: Range,
        live_only: bool,
        n: usize,
        seqs: &mut Vec<i64>,
    ) -> Result<(), StoreError>;

    /// Calls `each` with `(seq, record JSON)` for every live row the read asks for.
    fn live_rows(&mut self, read: &LiveRead<'_>, each: EachRow<'_>) -> Result<(), StoreError>;

    /// Calls `each` with the id of every tombstone in `range`.
    fn tombstones(&mut self, range: Range, each: EachId<'_>) -> Result<(), StoreError>;
}

/// A backend as the pull driver sees it.
pub(crate) trait PullSource {
    /// Opens a read snapshot, runs `read` in it, and ends it.
    fn snapshot(
        &self,
        read: &mut dyn FnMut(&mut dyn PullTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Moves the user's counter to at least `cursor`, before answering a pull from a cursor the database had
    /// not reached (it was restored from a backup older than the cursor): no later change may get a sequence
    /// at or below a cursor some device still holds.
    fn raise_counter(&self, user: &str, cursor: i64) -> Result<(), StoreError>;
}

/// Streams the pull answer for `user` into `sink`, from one snapshot of `source`, whose tables of `schema`
/// have the internal ids `tids`.
pub(crate) fn pull(
    source: &impl PullSource,
    schema: &Schema,
    tids: &HashMap<String, i64>,
    user: &str,
    request: &PullRequest,
    sink: &mut dyn PullSink,
) -> Result<PullStats, StoreError> {
    let tables: Vec<(&Table, i64)> = schema
        .tables()
        .filter(|t| t.visible_at(request.schema_version))
        .map(|t| (t, tids[&t.name]))
        .collect();
    if let Pass::Done(stats) = pull_once(source, &tables, user, request, false, sink)? {
        return Ok(stats);
    }
    // The cursor is ahead of the user's counter (a restore from an older backup): move the counter up to it,
    // then answer from a new snapshot, whose `timestamp` is then at or above the device's cursor. WatermelonDB
    // logs a "server bug" when a pull's timestamp is below the one before (setLastPulledAt,
    // src/sync/impl/index.js). Every later change gets a number above the cursor.
    source.raise_counter(user, request.last_pulled_at.unwrap_or(0))?;
    match pull_once(source, &tables, user, request, true, sink)? {
        Pass::Done(stats) => Ok(stats),
        // Not reached: a pass after the raise always answers.
        Pass::Ahead => Err(StoreError::Aborted),
    }
}

/// What one pass of [`pull`] did.
enum Pass {
    Done(PullStats),
    /// Nothing was written: the cursor is ahead of the user's counter, which was not raised yet.
    Ahead,
}

/// One pass of [`pull`], in one snapshot.
fn pull_once(
    source: &impl PullSource,
    tables: &[(&Table, i64)],
    user: &str,
    request: &PullRequest,
    raised: bool,
    sink: &mut dyn PullSink,
) -> Result<Pass, StoreError> {
    let mut done = None;
    source.snapshot(&mut |tx| {
        let who = tx.user(user)?;
        let plan = PullPlan::new(request, who.horizon, who.counter, raised);
        if plan.ahead && !raised {
            done = Some(Pass::Ahead);
            return Ok(());
        }
        let mut out = Output::new(&mut *sink, plan.replacement);
        match plan.limit {
            Some(limit) => {
                let more = write_page(tx, who.uid, tables, plan, limit, &mut out)?;
                out.writer
                    .finish(more.unwrap_or(who.counter), Some(more.is_some()), false);
            }
            None => {
                for &(table, tid) in tables {
                    let range = Range {
                        uid: who.uid,
                        tid,
                        since: plan.since,
                        upto: i64::MAX,
                    };
                    let read = LiveRead {
                        range,
                        limit: None,
                        table,
                        migration: request.migration.as_ref(),
                    };
                    write_table(tx, &read, !plan.first, &mut out)?;
                }
                out.writer
                    .finish(who.counter, request.limit.map(|_| false), plan.replacement);
            }
        }
        out.sink.finish(out.writer.take_last())?;
        done = Some(Pass::Done(out.stats));
        Ok(())
    })?;
    done.ok_or(StoreError::Aborted)
}

/// Writes one table: the live rows `read` asks for, then (when `tombstones`) the ids deleted in its range.
fn write_table(
    tx: &mut dyn PullTx,
    read: &LiveRead<'_>,
    tombstones: bool,
    out: &mut Output<'_>,
) -> Result<(), StoreError> {
    out.writer.begin_table(&read.table.name);
    tx.live_rows(read, &mut |_, json| out.record(json))?;
    out.writer.begin_deleted();
    if tombstones {
        tx.tombstones(read.range, &mut |id| out.deleted(id))?;
    }
    out.writer.end_table();
    Ok(())
}

/// Writes one page: the oldest `limit` changes across `tables`. Returns the sequence of the page's last
/// change when more remain.
fn write_page(
    tx: &mut dyn PullTx,
    uid: i64,
    tables: &[(&Table, i64)],
    plan: PullPlan,
    limit: usize,
    out: &mut Output<'_>,
) -> Result<Option<i64>, StoreError> {
    let live_only = plan.first;
    let range = |tid, upto| Range {
        uid,
        tid,
        since: plan.since,
        upto,
    };
    // Which tables have changes after the cursor at all.
    let mut seqs = Vec::new();
    let mut changed = Vec::with_capacity(tables.len());
    for &(_, tid) in tables {
        seqs.clear();
        tx.log_seqs(range(tid, i64::MAX), live_only, 1, &mut seqs)?;
        changed.push(!seqs.is_empty());
    }
    let read = |table, tid, upto, limit| LiveRead {
        range: range(tid, upto),
        limit,
        table,
        migration: None,
    };
    if live_only && changed.iter().filter(|c| **c).count() == 1 {
        // One table with live rows: read it with a row limit; the row past the limit says more remain.
        let (mut taken, mut last, mut more) = (0, 0, false);
        for (&(table, tid), changed) in tables.iter().zip(&changed) {
            out.writer.begin_table(&table.name);
            if *changed {
                let read = read(table, tid, i64::MAX, Some(limit + 1));
                tx.live_rows(&read, &mut |seq, json| {
                    if taken == limit {
                        more = true;
                        return Ok(());
                    }
                    taken += 1;
                    last = seq;
                    out.record(json)
                })?;
            }
            out.writer.begin_deleted();
            out.writer.end_table();
        }
        return Ok(more.then_some(last));
    }
    // The page ends at the `limit`-th smallest sequence among the first `limit` + 1 of every table.
    seqs.clear();
    for (&(_, tid), _) in tables.iter().zip(&changed).filter(|(_, c)| **c) {
        tx.log_seqs(range(tid, i64::MAX), live_only, limit + 1, &mut seqs)?;
    }
    let end = (seqs.len() > limit).then(|| *seqs.select_nth_unstable(limit - 1).1);
    for (&(table, tid), changed) in tables.iter().zip(&changed) {
        if *changed {
            let read = read(table, tid, end.unwrap_or(i64::MAX), None);
            write_table(tx, &read, !plan.first, out)?;
        } else {
            out.writer.begin_table(&table.name);
            out.writer.begin_deleted();
            out.writer.end_table();
        }
    }
    Ok(end)
}

/// The pull writer and where its bytes go.
struct Output<'s> {
    writer: PullWriter,
    sink: &'s mut dyn PullSink,
    stats: PullStats,
}

impl<'s> Output<'s> {
    fn new(sink: &'s mut dyn PullSink, replacement: bool) -> Output<'s> {
        Output {
            writer: PullWriter::new(),
            sink,
            stats: PullStats {
                replacement,
                ..Default::default()
            },
        }
    }

    fn record(&mut self, json: &str) -> Result<(), StoreError> {
        self.writer.record(json);
        self.stats.records += 1;
        self.flush()
    }

    fn deleted(&mut self, id: &str) -> Result<(), StoreError> {
        self.writer.deleted(id);
        self.stats.deleted += 1;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.writer.pending() >= CHUNK_BYTES {
            self.sink.write(self.writer.take())?;
        }
        Ok(())
    }
}
