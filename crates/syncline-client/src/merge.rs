//! How a pulled record meets the local outbox: per column, local changes that are still waiting to be
//! pushed win over the server's values, and a pulled delete or a replacement pull never erases a record
//! created here and not yet pushed. Also the canonical JSON text the client stores records as. Pure
//! functions, no I/O.

use serde_json::Value;

use crate::coalesce::{Change, Columns, OpKind};

/// What becomes of a local record when the server sends a newer version of it.
#[derive(Debug, Clone, PartialEq)]
pub enum PulledRecord {
    /// Store these columns (the server's, overlaid with the waiting local changes).
    Write(Columns),
    /// A local delete is waiting: the record stays deleted here until the delete is pushed.
    StayDeleted,
}

/// Merges the server's version with the record's waiting operations (oldest first): every column a local
/// operation sets keeps the local value.
pub fn merge_pulled(server: Columns, waiting: &[Change]) -> PulledRecord {
    let mut merged = Some(server);
    for op in waiting {
        merged = match op.kind {
            OpKind::Delete => None,
            OpKind::Create | OpKind::Update => {
                let mut base = merged.unwrap_or_default();
                base.extend(op.columns.clone());
                Some(base)
            }
        };
    }
    match merged {
        Some(columns) => PulledRecord::Write(columns),
        None => PulledRecord::StayDeleted,
    }
}

/// What becomes of a local record when the server says it was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulledDelete {
    /// Delete it here. `drop_waiting`: its unsealed local updates go too (the server would ignore them).
    Delete { drop_waiting: bool },
    /// It was created here and that create is still waiting: keep it, the push brings it back.
    Keep,
}

pub fn on_pulled_delete(waiting: &[Change]) -> PulledDelete {
    match waiting.last().map(|op| op.kind) {
        Some(OpKind::Create) => PulledDelete::Keep,
        Some(OpKind::Update) => PulledDelete::Delete { drop_waiting: true },
        Some(OpKind::Delete) | None => PulledDelete::Delete {
            drop_waiting: false,
        },
    }
}

/// On a replacement pull, a local record the server did not send survives only if it was created here and
/// the create is still waiting.
pub fn survives_replacement(waiting: &[Change]) -> bool {
    waiting.last().is_some_and(|op| op.kind == OpKind::Create)
}

/// Two versions of a record hold the same data (a column absent on one side counts as null).
pub fn same_record(a: &Columns, b: &Columns) -> bool {
    let agree =
        |x: &Columns, y: &Columns| x.iter().all(|(k, v)| y.get(k).unwrap_or(&Value::Null) == v);
    agree(a, b) && agree(b, a)
}

/// The text a record is stored as: `id` first, then the columns in name order, the way the server sends
/// records, so a record pushed with every column comes back from the server as the same bytes.
pub fn render_record(id: &str, columns: &Columns) -> String {
    let mut out = String::with_capacity(64 + columns.len() * 24);
    out.push_str("{\"id\":\"");
    out.push_str(id); // a safe id needs no escaping
    out.push('"');
    let mut keys: Vec<&String> = columns.keys().filter(|k| *k != "id").collect();
    keys.sort();
    for key in keys {
        out.push(',');
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        out.push_str(&columns[key].to_string());
    }
    out.push('}');
    out
}

/// The column map of a stored or pulled record, without its `id`.
pub fn parse_columns(text: &str) -> Result<Columns, serde_json::Error> {
    let mut columns: Columns = serde_json::from_str(text)?;
    columns.remove("id");
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cols(v: Value) -> Columns {
        serde_json::from_value(v).unwrap()
    }

    fn check(server: Value, waiting: &[(OpKind, Value)], expected: Option<Value>) {
        let waiting: Vec<Change> = waiting
            .iter()
            .map(|(kind, v)| Change {
                kind: *kind,
                columns: cols(v.clone()),
            })
            .collect();
        let expected = match expected {
            Some(v) => PulledRecord::Write(cols(v)),
            None => PulledRecord::StayDeleted,
        };
        assert_eq!(merge_pulled(cols(server), &waiting), expected);
    }

    #[test]
    fn local_changed_columns_win() {
        let server = json!({"name": "Sam", "tier": "close", "note": "from cloud"});
        check(server.clone(), &[], Some(server.clone()));
        check(
            server.clone(),
            &[(OpKind::Update, json!({"tier": "inner"}))],
            Some(json!({"name": "Sam", "tier": "inner", "note": "from cloud"})),
        );
        check(
            server.clone(),
            &[
                (OpKind::Update, json!({"tier": "inner"})),
                (OpKind::Update, json!({"name": "Sue"})),
            ],
            Some(json!({"name": "Sue", "tier": "inner", "note": "from cloud"})),
        );
        check(server.clone(), &[(OpKind::Delete, json!({}))], None);
        check(
            server,
            &[
                (OpKind::Delete, json!({})),
                (OpKind::Create, json!({"name": "New"})),
            ],
            Some(json!({"name": "New"})),
        );
    }

    #[test]
    fn pulled_deletes_spare_waiting_creates() {
        let op = |kind| Change {
            kind,
            columns: Columns::new(),
        };
        assert_eq!(
            on_pulled_delete(&[]),
            PulledDelete::Delete {
                drop_waiting: false
            }
        );
        assert_eq!(on_pulled_delete(&[op(OpKind::Create)]), PulledDelete::Keep);
        assert_eq!(
            on_pulled_delete(&[op(OpKind::Create), op(OpKind::Update)]),
            PulledDelete::Delete { drop_waiting: true }
        );
        assert!(survives_replacement(&[op(OpKind::Create)]));
        assert!(!survives_replacement(&[op(OpKind::Update)]));
    }

    #[test]
    fn records_render_like_the_server_sends_them() {
        let c = cols(json!({"title": "x\"y", "done": true, "id": "ignored", "n": 1.5}));
        assert_eq!(
            render_record("t1", &c),
            r#"{"id":"t1","done":true,"n":1.5,"title":"x\"y"}"#
        );
        assert!(same_record(
            &cols(json!({"a": 1, "b": null})),
            &cols(json!({"a": 1}))
        ));
        assert!(!same_record(&cols(json!({"a": 1})), &cols(json!({"a": 2}))));
    }
}
