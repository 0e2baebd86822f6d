//! How a validated [`WriteBatch`] is applied, once, for every backend: conflict checks against the push's
//! cursor, the tombstone policy, "unchanged writes move nothing", singleton replacement and cascading
//! deletes. Backends only provide the row operations ([`RecordTx`]) inside their own transaction, holding
//! whatever makes their sequence follow commit order.

use std::collections::{BTreeMap, HashMap};

use syncline_core::{OnTombstone, Schema, Table, TableCounts, Upsert, WriteBatch, render_record};

use crate::StoreError;

/// A stored row found by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub seq: i64,
    pub deleted: bool,
    pub data: Option<String>,
}

/// A new row for [`RecordTx::insert_new`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRow<'a> {
    pub id: &'a str,
    pub seq: i64,
    pub data: &'a str,
}

/// The row operations a backend provides inside one write transaction.
pub(crate) trait RecordTx {
    fn find(&mut self, uid: i64, tid: i64, id: &str) -> Result<Option<Existing>, StoreError>;

    /// Inserts rows that do not exist yet; returns, per row, whether it was inserted (false: the id exists,
    /// or appeared earlier in `rows`).
    fn insert_new(
        &mut self,
        uid: i64,
        tid: i64,
        rows: &[NewRow<'_>],
    ) -> Result<Vec<bool>, StoreError>;

    /// Rewrites the row stored at `old_seq` with sequence `seq`: live `data`, or a tombstone deleted at
    /// `deleted_at` when `data` is `None`.
    fn rewrite(
        &mut self,
        uid: i64,
        tid: i64,
        old_seq: i64,
        seq: i64,
        data: Option<&str>,
        deleted_at: i64,
    ) -> Result<(), StoreError>;

    /// Ids of the user's live rows of a table, except `keep`.
    fn live_ids_except(
        &mut self,
        uid: i64,
        tid: i64,
        keep: &str,
    ) -> Result<Vec<String>, StoreError>;

    /// Ids of the user's live rows of a table whose `column` holds one of `parents`.
    fn children(
        &mut self,
        uid: i64,
        tid: i64,
        column: &str,
        parents: &[&str],
    ) -> Result<Vec<String>, StoreError>;
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// The highest sequence used (the start sequence when nothing changed).
    pub sequence: i64,
    pub counts: BTreeMap<String, TableCounts>,
    /// Non-empty when the push must be refused; the caller rolls back.
    pub conflicts: BTreeMap<String, Vec<String>>,
}

/// Applies `batch` for user `uid`. `start_seq` is the sequence before this transaction; new changes get the
/// numbers after it.
pub(crate) fn apply(
    rows: &mut dyn RecordTx,
    schema: &Schema,
    tids: &HashMap<String, i64>,
    uid: i64,
    start_seq: i64,
    now_ms: i64,
    batch: &WriteBatch<'_>,
) -> Result<Applied, StoreError> {
    let mut a = Applier {
        rows,
        schema,
        tids,
        uid,
        start_seq,
        now_ms,
        conflict_cursor: batch.conflict_cursor,
        out: Applied {
            sequence: start_seq,
            ..Default::default()
        },
    };
    for writes in &batch.tables {
        let table = schema
            .table(&writes.table)
            .expect("batches are planned against this schema");
        a.upserts(table, &writes.upserts)?;
    }
    for writes in batch.tables.iter().rev() {
        let table = schema
            .table(&writes.table)
            .expect("batches are planned against this schema");
        a.delete(table, &writes.deletes)?;
    }
    for ids in a.out.conflicts.values_mut() {
        ids.sort();
        ids.dedup();
    }
    Ok(a.out)
}

struct Applier<'r, 's> {
    rows: &'r mut dyn RecordTx,
    schema: &'s Schema,
    tids: &'s HashMap<String, i64>,
    uid: i64,
    start_seq: i64,
    now_ms: i64,
    conflict_cursor: Option<i64>,
    out: Applied,
}

impl Applier<'_, '_> {
    fn tid(&self, table: &str) -> i64 {
        self.tids[table]
    }

    fn next_seq(&mut self) -> i64 {
        self.out.sequence += 1;
        self.out.sequence
    }

    fn count(&mut self, table: &str) -> &mut TableCounts {
        if !self.out.counts.contains_key(table) {
            self.out
                .counts
                .insert(table.to_string(), TableCounts::default());
        }
        self.out.counts.get_mut(table).expect("inserted above")
    }

    /// Records a conflict when `existing` changed after the push's cursor (and not in this transaction).
    /// Returns whether the batch already conflicts: then nothing more is written.
    fn conflicts(&mut self, table: &Table, id: &str, existing: Option<&Existing>) -> bool {
        if let (Some(cursor), Some(e)) = (self.conflict_cursor, existing)
            && e.seq > cursor
            && e.seq <= self.start_seq
        {
            self.out
                .conflicts
                .entry(table.name.clone())
                .or_default()
                .push(id.to_string());
        }
        !self.out.conflicts.is_empty()
    }

    fn upserts(&mut self, table: &Table, upserts: &[Upsert<'_>]) -> Result<(), StoreError> {
        let tid = self.tid(&table.name);
        // Fast path: complete records that are new go in with one batched insert.
        let mut done = vec![false; upserts.len()];
        if !table.singleton && self.out.conflicts.is_empty() {
            let mut candidates = Vec::new();
            let mut rows = Vec::new();
            for (i, u) in upserts.iter().enumerate() {
                if let Some(data) = &u.canonical {
                    let seq = self.out.sequence + 1 + rows.len() as i64;
                    candidates.push(i);
                    rows.push(NewRow {
                        id: &u.record.id,
                        seq,
                        data,
                    });
                }
            }
            if !rows.is_empty() {
                let inserted = self.rows.insert_new(self.uid, tid, &rows)?;
                // Numbers given to rows that were not inserted stay unused: gaps are harmless, and a batch
                // that inserts nothing does not move the sequence.
                if let Some(last) = rows
                    .iter()
                    .zip(&inserted)
                    .rev()
                    .find(|(_, ok)| **ok)
                    .map(|(r, _)| r.seq)
                {
                    self.out.sequence = last;
                }
                let n = inserted.iter().filter(|x| **x).count() as u64;
                for (i, ok) in candidates.into_iter().zip(inserted) {
                    done[i] = ok;
                }
                self.count(&table.name).upserted += n;
            }
        }
        for (u, _) in upserts.iter().zip(done).filter(|(_, d)| !d) {
            self.upsert(table, tid, u)?;
        }
        Ok(())
    }

    fn upsert(&mut self, table: &Table, tid: i64, upsert: &Upsert<'_>) -> Result<(), StoreError> {
        let id: &str = &upsert.record.id;
        let existing = self.rows.find(self.uid, tid, id)?;
        if self.conflicts(table, id, existing.as_ref()) {
            return Ok(());
        }
        if existing.as_ref().is_some_and(|e| e.deleted)
            && upsert.on_tombstone == OnTombstone::Ignore
        {
            self.count(&table.name).unchanged += 1;
            return Ok(());
        }
        let live = existing
            .as_ref()
            .filter(|e| !e.deleted)
            .and_then(|e| e.data.as_deref());
        let data = match &upsert.canonical {
            Some(c) => c.clone(),
            None => render_record(table, &upsert.record, live),
        };
        if live == Some(data.as_str()) {
            self.count(&table.name).unchanged += 1;
            return Ok(());
        }
        if table.singleton {
            let others = self.rows.live_ids_except(self.uid, tid, id)?;
            self.cascade(table, &others)?;
        }
        let seq = self.next_seq();
        match existing {
            None => {
                self.rows.insert_new(
                    self.uid,
                    tid,
                    &[NewRow {
                        id,
                        seq,
                        data: &data,
                    }],
                )?;
            }
            Some(e) => self
                .rows
                .rewrite(self.uid, tid, e.seq, seq, Some(&data), 0)?,
        }
        self.count(&table.name).upserted += 1;
        Ok(())
    }

    /// Deletes the ids a client asked to delete: live records are conflict-checked; unknown or already
    /// deleted ids are ignored, even when the delete happened after the push's cursor. WatermelonDB's backend
    /// guide (docs/Sync/Backend.md, "Implementing push endpoint", rule 4): a record to delete that does not
    /// exist MUST be ignored, "if another user deleted this record in between user's pull and push calls"
    /// too; both devices wanted it gone.
    fn delete(&mut self, table: &Table, ids: &[String]) -> Result<(), StoreError> {
        let tid = self.tid(&table.name);
        let mut live = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(existing) = self.rows.find(self.uid, tid, id)?.filter(|e| !e.deleted) else {
                continue;
            };
            if self.conflicts(table, id, Some(&existing)) {
                continue;
            }
            live.push(id.clone());
        }
        if !self.out.conflicts.is_empty() {
            return Ok(());
        }
        self.cascade(table, &live)
    }

    /// Tombstones live records and, recursively, the live rows of declared child tables that point at them.
    fn cascade(&mut self, table: &Table, ids: &[String]) -> Result<(), StoreError> {
        let tid = self.tid(&table.name);
        let mut deleted = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(existing) = self.rows.find(self.uid, tid, id)? else {
                continue;
            };
            if existing.deleted {
                continue;
            }
            let seq = self.next_seq();
            self.rows
                .rewrite(self.uid, tid, existing.seq, seq, None, self.now_ms)?;
            self.count(&table.name).deleted += 1;
            deleted.push(id.as_str());
        }
        if deleted.is_empty() {
            return Ok(());
        }
        let schema = self.schema;
        for child in &table.children {
            let kids =
                self.rows
                    .children(self.uid, self.tid(&child.table), &child.column, &deleted)?;
            if !kids.is_empty() {
                let child_table = schema
                    .table(&child.table)
                    .expect("children come from the schema");
                self.cascade(child_table, &kids)?;
            }
        }
        Ok(())
    }
}
