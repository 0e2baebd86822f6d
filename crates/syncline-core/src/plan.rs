//! Turns push and bulk requests into validated write batches for the store: unknown tables and unsafe ids
//! are refused, rows are normalised, and tables are put parents-first. Pure functions, no I/O.

use serde::Serialize;

use crate::record::{NormalizedRecord, RowErrorCode, normalize_record, render_record};
use crate::schema::Table;
use crate::wire::{BulkRequest, PushRequest, RejectedRecord};
use crate::{CoreError, Schema, is_safe_id};

/// What the store does when an upsert meets a tombstone of the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTombstone {
    /// Bring the record back (a created record, or an explicit bulk upsert).
    Resurrect,
    /// Leave it deleted (a pushed `updated` record whose delete the client already pulled).
    Ignore,
}

/// One upsert of a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert<'a> {
    pub record: NormalizedRecord<'a>,
    pub on_tombstone: OnTombstone,
    /// The canonical text when the record carries every column (so it does not depend on the stored row):
    /// rendered while planning, outside the store's write lock.
    pub canonical: Option<String>,
}

impl<'a> Upsert<'a> {
    fn new(table: &Table, record: NormalizedRecord<'a>, on_tombstone: OnTombstone) -> Upsert<'a> {
        let canonical = record
            .is_complete()
            .then(|| render_record(table, &record, None));
        Upsert {
            record,
            on_tombstone,
            canonical,
        }
    }
}

/// The writes to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWrites<'a> {
    pub table: String,
    pub upserts: Vec<Upsert<'a>>,
    pub deletes: Vec<String>,
}

/// A validated set of writes, applied by the store in one transaction: upserts table by table in the
/// order given (parents first), then deletes in the reverse order (children first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch<'a> {
    /// For a push: abort the whole batch if any touched record changed after this sequence.
    pub conflict_cursor: Option<i64>,
    pub tables: Vec<TableWrites<'a>>,
}

impl WriteBatch<'_> {
    pub fn record_count(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.upserts.len() + t.deletes.len())
            .sum()
    }
}

/// A refused row of a bulk request: where it was and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowFailure {
    pub table: String,
    pub id: Option<String>,
    /// Position in the table's `upserts` (or `deletes`) array.
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// Refuses a `lastPulledAt` (of a pull or a push) below 0 or above [`crate::MAX_CURSOR`].
pub fn check_cursor(last_pulled_at: Option<i64>) -> Result<(), CoreError> {
    match last_pulled_at {
        Some(cursor) if !(0..=crate::MAX_CURSOR).contains(&cursor) => {
            Err(CoreError::InvalidCursor(cursor))
        }
        _ => Ok(()),
    }
}

/// Plans a WatermelonDB push. Invalid records are returned as rejections and left out; a `lastPulledAt` below
/// 0 or above [`crate::MAX_CURSOR`], an unknown table with records in it or an unsafe id fails the whole request.
pub fn plan_push<'a>(
    schema: &Schema,
    request: &'a PushRequest<'a>,
    owner: &str,
) -> Result<(WriteBatch<'a>, Vec<RejectedRecord>), CoreError> {
    check_cursor(request.last_pulled_at)?;
    for (name, changes) in &request.changes {
        if schema.table(name).is_none() && !changes.is_empty() {
            return Err(CoreError::UnknownTable(name.clone()));
        }
    }
    let mut rejected = Vec::new();
    let mut tables = Vec::new();
    for table in schema.parents_first() {
        let Some(changes) = request.changes.get(&table.name) else {
            continue;
        };
        if changes.is_empty() {
            continue;
        }
        let mut writes = TableWrites {
            table: table.name.clone(),
            upserts: Vec::new(),
            deletes: Vec::new(),
        };
        let sources = changes
            .created
            .iter()
            .map(|r| (r, OnTombstone::Resurrect))
            .chain(changes.updated.iter().map(|r| (r, OnTombstone::Ignore)));
        for (raw, on_tombstone) in sources {
            match normalize_record(table, raw, owner, None) {
                Ok(record) => writes
                    .upserts
                    .push(Upsert::new(table, record, on_tombstone)),
                Err(e) if e.code == RowErrorCode::InvalidId => {
                    return Err(CoreError::InvalidId {
                        table: table.name.clone(),
                        id: raw_id(raw.get()),
                    });
                }
                Err(e) => {
                    let id = raw_id(raw.get());
                    rejected.push(RejectedRecord {
                        table: table.name.clone(),
                        id,
                        code: e.code.as_str(),
                        message: e.message,
                    });
                }
            }
        }
        for id in &changes.deleted {
            if !is_safe_id(id) {
                return Err(CoreError::InvalidId {
                    table: table.name.clone(),
                    id: id.clone(),
                });
            }
            writes.deletes.push(id.clone());
        }
        tables.push(writes);
    }
    Ok((
        WriteBatch {
            conflict_cursor: Some(request.last_pulled_at.unwrap_or(0)),
            tables,
        },
        rejected,
    ))
}

/// Plans a bulk request: every row must be valid, or the whole request fails with every bad row listed.
pub fn plan_bulk<'a>(
    schema: &Schema,
    request: &'a BulkRequest<'a>,
    owner: &str,
) -> Result<WriteBatch<'a>, CoreError> {
    for name in request.upserts.keys().chain(request.deletes.keys()) {
        if schema.table(name).is_none() {
            return Err(CoreError::UnknownTable(name.clone()));
        }
    }
    let mut failures = Vec::new();
    let mut tables = Vec::new();
    for table in schema.parents_first() {
        let upserts = request
            .upserts
            .get(&table.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let deletes = request
            .deletes
            .get(&table.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if upserts.is_empty() && deletes.is_empty() {
            continue;
        }
        let mut writes = TableWrites {
            table: table.name.clone(),
            upserts: Vec::new(),
            deletes: Vec::new(),
        };
        let default_id = table.singleton.then_some("default");
        for (index, raw) in upserts.iter().enumerate() {
            if table.singleton && index > 0 {
                failures.push(RowFailure {
                    table: table.name.clone(),
                    id: Some(raw_id(raw.get())).filter(|id| !id.is_empty()),
                    index,
                    code: RowErrorCode::SingletonViolation.as_str(),
                    message: format!(
                        "table `{}` holds one row per user; send at most one",
                        table.name
                    ),
                });
                continue;
            }
            match normalize_record(table, raw, owner, default_id) {
                Ok(record) => {
                    writes
                        .upserts
                        .push(Upsert::new(table, record, OnTombstone::Resurrect))
                }
                Err(e) => failures.push(RowFailure {
                    table: table.name.clone(),
                    id: Some(raw_id(raw.get())).filter(|id| !id.is_empty()),
                    index,
                    code: e.code.as_str(),
                    message: e.message,
                }),
            }
        }
        for (index, id) in deletes.iter().enumerate() {
            if is_safe_id(id) {
                writes.deletes.push(id.clone());
            } else {
                failures.push(RowFailure {
                    table: table.name.clone(),
                    id: Some(id.clone()),
                    index,
                    code: RowErrorCode::InvalidId.as_str(),
                    message: "ids use 1-64 characters from [A-Za-z0-9_.-]".into(),
                });
            }
        }
        tables.push(writes);
    }
    if !failures.is_empty() {
        return Err(CoreError::InvalidRows(failures));
    }
    Ok(WriteBatch {
        conflict_cursor: None,
        tables,
    })
}

/// The `id` of a raw record as text, for error reports (empty when there is none).
fn raw_id(raw: &str) -> String {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<IdOnly>(raw).ok().and_then(|r| r.id) {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::schema::{ColumnConfig, ColumnType, ParentConfig, TableConfig};

    fn schema() -> Schema {
        let t = |cols: &[(&str, ColumnType)], parent: Option<(&str, &str)>, singleton: bool| {
            TableConfig {
                columns: cols
                    .iter()
                    .map(|(n, t)| (n.to_string(), ColumnConfig::Type(*t)))
                    .collect(),
                since: None,
                parent: parent.map(|(t, c)| ParentConfig {
                    table: t.into(),
                    column: c.into(),
                }),
                parents: vec![],
                singleton,
                owner_columns: vec![],
            }
        };
        let config: BTreeMap<String, TableConfig> = [
            (
                "a_tasks".to_string(),
                t(
                    &[
                        ("title", ColumnType::String),
                        ("project_id", ColumnType::String),
                    ],
                    Some(("projects", "project_id")),
                    false,
                ),
            ),
            (
                "projects".to_string(),
                t(
                    &[("name", ColumnType::String), ("meta", ColumnType::Json)],
                    None,
                    false,
                ),
            ),
            (
                "settings".to_string(),
                t(&[("theme", ColumnType::String)], None, true),
            ),
        ]
        .into_iter()
        .collect();
        Schema::from_config(&config).unwrap()
    }

    #[test]
    fn push_keeps_good_records_and_rejects_bad_ones() {
        let body = r#"{"lastPulledAt": 5, "changes": {
            "a_tasks": {"created": [{"id":"t1","title":"ok","project_id":"p1"},{"id":"t2","title":3}], "updated": [], "deleted": ["t9"]},
            "projects": {"created": [], "updated": [{"id":"p1","name":"P"}], "deleted": []},
            "unknown_but_empty": {"created": [], "updated": [], "deleted": []}
        }}"#;
        let request: PushRequest = serde_json::from_str(body).unwrap();
        let (batch, rejected) = plan_push(&schema(), &request, "alice").unwrap();
        assert_eq!(batch.conflict_cursor, Some(5));
        let order: Vec<_> = batch.tables.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(order, ["projects", "a_tasks"], "parents first");
        assert_eq!(batch.tables[1].upserts.len(), 1);
        assert_eq!(
            batch.tables[1].upserts[0].on_tombstone,
            OnTombstone::Resurrect
        );
        assert_eq!(batch.tables[0].upserts[0].on_tombstone, OnTombstone::Ignore);
        assert_eq!(batch.tables[1].deletes, ["t9"]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(
            (rejected[0].id.as_str(), rejected[0].code),
            ("t2", "wrong_type")
        );
    }

    #[test]
    fn push_refuses_unknown_tables_and_unsafe_ids() {
        let unknown: PushRequest =
            serde_json::from_str(r#"{"lastPulledAt":1,"changes":{"nope":{"created":[{"id":"x"}],"updated":[],"deleted":[]}}}"#).unwrap();
        assert_eq!(
            plan_push(&schema(), &unknown, "a").unwrap_err(),
            CoreError::UnknownTable("nope".into())
        );
        let unsafe_id: PushRequest =
            serde_json::from_str(r#"{"lastPulledAt":1,"changes":{"projects":{"created":[],"updated":[],"deleted":["../x"]}}}"#).unwrap();
        assert!(matches!(
            plan_push(&schema(), &unsafe_id, "a").unwrap_err(),
            CoreError::InvalidId { .. }
        ));
    }

    #[test]
    fn bulk_lists_every_bad_row() {
        let body = r#"{"upserts": {"projects": [{"id":"p1","name":"ok"},{"id":"p2","name":1},{"name":"no id"}],
                                   "settings": [{"theme":"dark"},{"theme":"light"}]},
                       "deletes": {"a_tasks": ["fine", "bad id"]}}"#;
        let request: BulkRequest = serde_json::from_str(body).unwrap();
        let CoreError::InvalidRows(failures) = plan_bulk(&schema(), &request, "a").unwrap_err()
        else {
            panic!()
        };
        let summary: Vec<_> = failures
            .iter()
            .map(|f| (f.table.as_str(), f.index, f.code))
            .collect();
        assert_eq!(
            summary,
            [
                ("projects", 1, "wrong_type"),
                ("projects", 2, "invalid_id"),
                ("a_tasks", 1, "invalid_id"),
                ("settings", 1, "singleton_violation")
            ]
        );
    }

    #[test]
    fn push_refuses_a_negative_cursor() {
        let request: PushRequest =
            serde_json::from_str(r#"{"lastPulledAt":-1,"changes":{}}"#).unwrap();
        assert_eq!(
            plan_push(&schema(), &request, "a").unwrap_err(),
            CoreError::InvalidCursor(-1)
        );
        let huge = format!(r#"{{"lastPulledAt":{},"changes":{{}}}}"#, i64::MAX);
        let request: PushRequest = serde_json::from_str(&huge).unwrap();
        assert_eq!(
            plan_push(&schema(), &request, "a").unwrap_err(),
            CoreError::InvalidCursor(i64::MAX)
        );
        let largest = format!(r#"{{"lastPulledAt":{},"changes":{{}}}}"#, crate::MAX_CURSOR);
        let request: PushRequest = serde_json::from_str(&largest).unwrap();
        assert!(plan_push(&schema(), &request, "a").is_ok());
    }

    #[test]
    fn values_no_reader_can_read_back_are_refused_per_row() {
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let cases = [
            ("1e400", "number_out_of_range"),
            ("-1e400", "number_out_of_range"),
            (r#""\ud800""#, "invalid_unicode"),
            (r#""a\u0000b""#, "nul_character"),
            (deep.as_str(), "too_deep"),
        ];
        for (value, code) in cases {
            let body = format!(
                r#"{{"lastPulledAt":1,"changes":{{"projects":{{"created":[{{"id":"ok","name":"fine"}},{{"id":"bad","meta":{value}}}]}}}}}}"#
            );
            let request: PushRequest = serde_json::from_str(&body).unwrap();
            let (batch, rejected) = plan_push(&schema(), &request, "a").unwrap();
            assert_eq!(batch.tables[0].upserts.len(), 1, "{value}");
            assert_eq!((rejected[0].id.as_str(), rejected[0].code), ("bad", code));
            let body = format!(
                r#"{{"upserts":{{"projects":[{{"id":"ok"}},{{"id":"bad","meta":[{value}]}}]}}}}"#
            );
            let request: BulkRequest = serde_json::from_str(&body).unwrap();
            let CoreError::InvalidRows(rows) = plan_bulk(&schema(), &request, "a").unwrap_err()
            else {
                panic!("{value}")
            };
            assert_eq!((rows[0].index, rows[0].code), (1, code), "{value}");
        }
    }

    #[test]
    fn bulk_singleton_rows_default_their_id() {
        let request: BulkRequest =
            serde_json::from_str(r#"{"upserts": {"settings": [{"theme":"dark"}]}}"#).unwrap();
        let batch = plan_bulk(&schema(), &request, "a").unwrap();
        assert_eq!(batch.tables[0].upserts[0].record.id, "default");
        assert_eq!(batch.conflict_cursor, None);
    }
}
