//! What the fuzz targets share: the schema they plan against, the body parsing the server does (UTF-8 first,
//! then JSON), and the strict reading every accepted record's canonical text must survive. Never used by the
//! product: it only makes the targets' assertions one rule.

use std::collections::BTreeMap;

use serde_json::Value;
use syncline_core::{ColumnConfig, ColumnType, MAX_DEPTH, Schema, TableConfig};

/// A schema with one column of each type, a parent and a singleton.
pub fn schema() -> Schema {
    let table = |cols: &[(&str, ColumnType)], singleton: bool| TableConfig {
        columns: cols
            .iter()
            .map(|(n, t)| (n.to_string(), ColumnConfig::Type(*t)))
            .collect::<BTreeMap<_, _>>(),
        since: None,
        parent: None,
        parents: vec![],
        singleton,
        owner_columns: vec![],
    };
    let config: BTreeMap<String, TableConfig> = [
        (
            "tasks".to_string(),
            table(
                &[
                    ("title", ColumnType::String),
                    ("done", ColumnType::Boolean),
                    ("position", ColumnType::Number),
                    ("meta", ColumnType::Json),
                    ("user_id", ColumnType::String),
                ],
                false,
            ),
        ),
        (
            "settings".to_string(),
            table(&[("theme", ColumnType::String)], true),
        ),
    ]
    .into_iter()
    .collect();
    Schema::from_config(&config).expect("the fuzz schema is valid")
}

/// The body as text, as the server reads it: the whole body must be UTF-8.
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Panics unless a strict reader takes `canonical`: serde_json's `Value` (no lone surrogates, finite
/// numbers), no NUL anywhere, and each column value within `MAX_DEPTH`.
pub fn assert_strictly_readable(canonical: &str) {
    fn holds(v: &Value, depth: usize) -> bool {
        match v {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => depth < MAX_DEPTH && items.iter().all(|i| holds(i, depth + 1)),
            Value::Object(map) => {
                depth < MAX_DEPTH
                    && map
                        .iter()
                        .all(|(k, v)| !k.contains('\0') && holds(v, depth + 1))
            }
            _ => true,
        }
    }
    let value: Value = serde_json::from_str(canonical)
        .unwrap_or_else(|e| panic!("canonical text does not parse ({e}): {canonical}"));
    let Value::Object(map) = &value else {
        panic!("canonical text is not an object: {canonical}")
    };
    assert!(
        map.values().all(|v| holds(v, 0)),
        "canonical text breaks a reading rule: {canonical}"
    );
}
