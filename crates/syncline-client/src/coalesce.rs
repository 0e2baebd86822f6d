//! The outbox's coalescing rules: how a new local write to a record folds into the record's operation that
//! is still waiting to be pushed. Pure functions over column maps; the store applies their verdicts in the
//! same SQLite transaction as the write. Nothing here reads the database, the network or a clock.
//!
//! | waiting \ new write | create(p)        | update(p)        | delete  |
//! |---------------------|------------------|------------------|---------|
//! | none                | create(p)        | update(p)        | delete  |
//! | create(e)           | create(p)        | create(e ∪ p)    | nothing |
//! | update(e)           | create(p)        | update(e ∪ p)    | delete  |
//! | delete              | create(p)        | update(p)        | delete  |
//!
//! `∪` keeps the newer value of a column changed twice, so two identical updates become one. A create after
//! a delete (the same id written again) is sent as a create: the server treats a created record that exists
//! as an update. Only operations that are not yet sealed into a batch are folded into; a sealed one is on
//! its way to the server with its idempotency key and must stay byte for byte what it was.

use serde_json::{Map, Value};

/// Column values of one record, without its `id`.
pub type Columns = Map<String, Value>;

/// What an outbox operation does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Create,
    Update,
    Delete,
}

impl OpKind {
    /// The value of `outbox.kind`.
    pub(crate) fn sql(self) -> i64 {
        match self {
            OpKind::Create => 0,
            OpKind::Update => 1,
            OpKind::Delete => 2,
        }
    }

    pub(crate) fn from_sql(code: i64) -> OpKind {
        match code {
            0 => OpKind::Create,
            1 => OpKind::Update,
            _ => OpKind::Delete,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
        }
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change to one record: the kind, and the columns it sets (empty for a delete).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: OpKind,
    pub columns: Columns,
}

impl Change {
    pub fn create(columns: Columns) -> Change {
        Change {
            kind: OpKind::Create,
            columns,
        }
    }

    pub fn update(columns: Columns) -> Change {
        Change {
            kind: OpKind::Update,
            columns,
        }
    }

    pub fn delete() -> Change {
        Change {
            kind: OpKind::Delete,
            columns: Columns::new(),
        }
    }
}

/// Folds `incoming` into the record's waiting operation. `None`: the two cancel out (create then delete).
pub fn coalesce(waiting: Option<Change>, incoming: Change) -> Option<Change> {
    let Some(mut waiting) = waiting else {
        return Some(incoming);
    };
    match (waiting.kind, incoming.kind) {
        (_, OpKind::Create) => Some(incoming),
        (OpKind::Create, OpKind::Delete) => None,
        (_, OpKind::Delete) => Some(incoming),
        (OpKind::Delete, OpKind::Update) => Some(incoming),
        (OpKind::Create | OpKind::Update, OpKind::Update) => {
            waiting.columns.extend(incoming.columns);
            Some(waiting)
        }
    }
}

/// The columns of `patch` whose values differ from `current` (a column absent from `current` counts as
/// null): what an update really changes. Empty when the write changes nothing.
pub fn changed_columns(current: &Columns, patch: Columns) -> Columns {
    patch
        .into_iter()
        .filter(|(k, v)| current.get(k).unwrap_or(&Value::Null) != v)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn change(spec: &str) -> Change {
        let (kind, cols) = spec.split_once(' ').unwrap_or((spec, "{}"));
        let columns = serde_json::from_str::<Columns>(cols).unwrap();
        match kind {
            "create" => Change::create(columns),
            "update" => Change::update(columns),
            _ => Change::delete(),
        }
    }

    fn check(waiting: Option<&str>, incoming: &str, expected: Option<&str>) {
        let got = coalesce(waiting.map(change), change(incoming));
        assert_eq!(
            got,
            expected.map(change),
            "{waiting:?} + {incoming} should be {expected:?}"
        );
    }

    #[test]
    fn writes_to_one_record_coalesce() {
        check(None, r#"update {"a":1}"#, Some(r#"update {"a":1}"#));
        check(
            Some(r#"create {"a":1,"b":1}"#),
            r#"update {"b":2}"#,
            Some(r#"create {"a":1,"b":2}"#),
        );
        check(
            Some(r#"update {"a":1}"#),
            r#"update {"b":2}"#,
            Some(r#"update {"a":1,"b":2}"#),
        );
        check(
            Some(r#"update {"a":1}"#),
            r#"update {"a":3}"#,
            Some(r#"update {"a":3}"#),
        );
        check(Some(r#"create {"a":1}"#), "delete", None);
        check(Some(r#"update {"a":1}"#), "delete", Some("delete"));
        check(Some("delete"), "delete", Some("delete"));
        check(
            Some("delete"),
            r#"create {"a":2}"#,
            Some(r#"create {"a":2}"#),
        );
    }

    #[test]
    fn identical_operations_are_deduplicated() {
        check(
            Some(r#"update {"a":1}"#),
            r#"update {"a":1}"#,
            Some(r#"update {"a":1}"#),
        );
        check(Some("delete"), "delete", Some("delete"));
    }

    #[test]
    fn an_update_carries_only_what_changed() {
        let current = serde_json::from_value(json!({"a": 1, "b": "x"})).unwrap();
        let patch = serde_json::from_value(json!({"a": 1, "b": "y", "c": null, "d": 0})).unwrap();
        assert_eq!(
            Value::Object(changed_columns(&current, patch)),
            json!({"b": "y", "d": 0})
        );
    }
}
