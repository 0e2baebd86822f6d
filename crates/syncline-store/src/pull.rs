//! What every backend's pull shares: deciding what a request asks for (first, incremental or replacement),
//! the output buffer that drains into the sink, and the merge of per-table change logs into one page.

use std::collections::BinaryHeap;

use syncline_core::{PullRequest, PullWriter, Table};

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
    /// backend moves the counter past the cursor once the pull is done.
    pub ahead: bool,
    /// Page size, when the pull is paged (never for migration and replacement pulls).
    pub limit: Option<usize>,
}

impl PullPlan {
    /// The plan for `request`, given the user's tombstone horizon and change counter in the pull's snapshot.
    pub fn new(request: &PullRequest, horizon: i64, counter: i64) -> PullPlan {
        let cursor = request.last_pulled_at.unwrap_or(0).max(0);
        let ahead = cursor > counter;
        let replacement = cursor > 0 && (cursor < horizon || ahead);
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

/// The SQL condition that picks a table's live rows for an unpaged pull: changed after the cursor
/// (`changed`, e.g. `seq > ?3`), or, in a migration sync, every row of a table that is new to the client and
/// every row that holds a value in a column that is new to it. `holds_value(column)` is the backend's test
/// for that; only columns of the schema are spliced in.
pub(crate) fn live_rows_filter(
    table: &Table,
    request: &PullRequest,
    changed: &str,
    holds_value: impl Fn(&str) -> String,
) -> String {
    let mut filter = changed.to_string();
    let Some(migration) = &request.migration else {
        return filter;
    };
    if migration.tables.contains(&table.name) {
        return format!("{changed} OR true");
    }
    for mc in migration.columns.iter().filter(|mc| mc.table == table.name) {
        for col in mc.columns.iter().filter(|c| table.column(c).is_some()) {
            filter.push_str(" OR ");
            filter.push_str(&holds_value(col));
        }
    }
    filter
}

/// One row of a table's change log: sequence, id, and the record (`None` for a tombstone).
pub(crate) type LogRow = (i64, String, Option<String>);

/// The pull writer and where its bytes go.
pub(crate) struct Output<'s> {
    pub writer: PullWriter,
    sink: &'s mut dyn PullSink,
    pub stats: PullStats,
}

impl<'s> Output<'s> {
    pub fn new(sink: &'s mut dyn PullSink, replacement: bool) -> Output<'s> {
        Output {
            writer: PullWriter::new(),
            sink,
            stats: PullStats {
                replacement,
                ..Default::default()
            },
        }
    }

    pub fn record(&mut self, json: &str) -> Result<(), StoreError> {
        self.writer.record(json);
        self.stats.records += 1;
        self.flush(false)
    }

    pub fn deleted(&mut self, id: &str) -> Result<(), StoreError> {
        self.writer.deleted(id);
        self.stats.deleted += 1;
        self.flush(false)
    }

    pub fn flush(&mut self, force: bool) -> Result<(), StoreError> {
        if force || self.writer.pending() >= CHUNK_BYTES {
            self.sink.write(self.writer.take())?;
        }
        Ok(())
    }
}

/// Writes one page: the oldest `limit` changes across `tables`, merged by sequence from one cursor per table
/// (each in sequence order). Returns the sequence of the last change written when more remain.
pub(crate) fn write_page<'c>(
    tables: &[&Table],
    mut cursors: Vec<Box<dyn Iterator<Item = Result<LogRow, StoreError>> + 'c>>,
    limit: usize,
    out: &mut Output<'_>,
) -> Result<Option<i64>, StoreError> {
    let mut heads: Vec<Option<LogRow>> = Vec::with_capacity(cursors.len());
    let mut heap = BinaryHeap::new();
    for (i, cursor) in cursors.iter_mut().enumerate() {
        let head = cursor.next().transpose()?;
        if let Some((seq, _, _)) = &head {
            heap.push(std::cmp::Reverse((*seq, i)));
        }
        heads.push(head);
    }
    let mut live: Vec<Vec<String>> = vec![Vec::new(); tables.len()];
    let mut deleted: Vec<Vec<String>> = vec![Vec::new(); tables.len()];
    let (mut taken, mut last_seq, mut more) = (0, 0, false);
    while let Some(std::cmp::Reverse((seq, i))) = heap.pop() {
        if taken == limit {
            more = true;
            break;
        }
        let (_, id, data) = heads[i].take().expect("a head for every heap entry");
        match data {
            Some(d) => live[i].push(d),
            None => deleted[i].push(id),
        }
        taken += 1;
        last_seq = seq;
        heads[i] = cursors[i].next().transpose()?;
        if let Some((s, _, _)) = &heads[i] {
            heap.push(std::cmp::Reverse((*s, i)));
        }
    }
    for (i, table) in tables.iter().enumerate() {
        out.writer.begin_table(&table.name);
        for d in &live[i] {
            out.record(d)?;
        }
        out.writer.begin_deleted();
        for id in &deleted[i] {
            out.deleted(id)?;
        }
        out.writer.end_table();
    }
    Ok(more.then_some(last_seq))
}
