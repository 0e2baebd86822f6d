//! Record validation and normalisation: a pushed record (raw JSON) is checked against its table and turned
//! into canonical JSON text (`id` first, then the schema's columns in order), which is what the store keeps
//! and what pulls send back verbatim.
//!
//! Values are kept as the raw JSON text the client sent (no `Value` tree is built): this is the hot path of
//! every push.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::is_safe_id;
use crate::schema::{ColumnType, Table};
use crate::value::{ValueProblem, check_json};

/// Why one row was refused. Stable codes, part of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowErrorCode {
    InvalidRecord,
    InvalidId,
    UnknownColumn,
    WrongType,
    SingletonViolation,
    /// A number beyond a 64-bit float's range (`1e400`).
    NumberOutOfRange,
    /// A lone surrogate escape (`"\ud800"`) or a raw control character in a string.
    InvalidUnicode,
    /// `\u0000` in a string (PostgreSQL's `jsonb` cannot hold it; many readers truncate at it).
    NulCharacter,
    /// A `json` value nested deeper than [`crate::MAX_DEPTH`].
    TooDeep,
}

impl RowErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RowErrorCode::InvalidRecord => "invalid_record",
            RowErrorCode::InvalidId => "invalid_id",
            RowErrorCode::UnknownColumn => "unknown_column",
            RowErrorCode::WrongType => "wrong_type",
            RowErrorCode::SingletonViolation => "singleton_violation",
            RowErrorCode::NumberOutOfRange => "number_out_of_range",
            RowErrorCode::InvalidUnicode => "invalid_unicode",
            RowErrorCode::NulCharacter => "nul_character",
            RowErrorCode::TooDeep => "too_deep",
        }
    }
}

/// One refused row: a code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub code: RowErrorCode,
    pub message: String,
}

impl RowError {
    fn new(code: RowErrorCode, message: impl Into<String>) -> RowError {
        RowError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A checked record, still borrowing from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedRecord<'a> {
    pub id: Cow<'a, str>,
    /// The JSON text of each schema column, in schema order; `None` where the record did not carry the column.
    pub values: Vec<Option<Cow<'a, str>>>,
}

impl NormalizedRecord<'_> {
    /// Whether every schema column was given, so the stored row can be replaced without reading it.
    pub fn is_complete(&self) -> bool {
        self.values.iter().all(Option::is_some)
    }
}

/// The fields of one JSON object, in order, with borrowed keys and raw values.
struct RawFields<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<&'de str, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(RawFields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// What [`normalize_record`] gathers while it reads a record's fields, in one pass over its text.
struct Fields<'t, 'a> {
    table: &'t Table,
    id: Option<Cow<'a, str>>,
    values: Vec<Option<Cow<'a, str>>>,
    /// The first refused field. Reading goes on without checking anything more, so that a record that is
    /// not a plain JSON object is still reported as such whatever its fields hold.
    error: Option<RowError>,
}

impl<'a> Fields<'_, 'a> {
    fn field(&mut self, key: &'a str, value: &'a RawValue) -> Result<(), RowError> {
        // A key twice is ambiguous (RFC 8259 §4: readers differ on which one counts): refused, not guessed.
        let twice = || {
            RowError::new(
                RowErrorCode::InvalidRecord,
                format!("the record has the key `{key}` twice"),
            )
        };
        if key == "id" {
            if self.id.is_some() {
                return Err(twice());
            }
            let parsed: Option<&'a str> = serde_json::from_str(value.get()).ok();
            return match parsed {
                Some(s) if is_safe_id(s) => {
                    self.id = Some(Cow::Borrowed(s));
                    Ok(())
                }
                _ => Err(RowError::new(
                    RowErrorCode::InvalidId,
                    format!(
                        "`id` must be a string of 1-64 characters from [A-Za-z0-9_.-], got {}",
                        excerpt(value.get())
                    ),
                )),
            };
        }
        // WatermelonDB's local bookkeeping (`_status`, `_changed`: its push sends the raw local record) and any
        // other `_`-prefixed field are dropped: no column can start with `_`, so such a field could never be
        // stored, and refusing the record would leave it unsyncable for good (docs/Sync/Backend.md, push
        // rules 8 and 10).
        if key.starts_with('_') {
            return Ok(());
        }
        let Some((index, column)) = self.table.column(key) else {
            return Err(RowError::new(
                RowErrorCode::UnknownColumn,
                format!("table `{}` has no column `{key}`", self.table.name),
            ));
        };
        if self.values[index].is_some() {
            return Err(twice());
        }
        self.values[index] = Some(check_value(&self.table.name, key, column.ty, value)?);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Fields<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Fields<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((key, value)) = map.next_entry::<&'de str, &'de RawValue>()? {
            if self.error.is_none()
                && let Err(e) = self.field(key, value)
            {
                self.error = Some(e);
            }
        }
        Ok(())
    }
}

/// Checks `raw` against `table` and normalises it. Owner columns are set to `owner` whatever was sent;
/// `_status`, `_changed` and every other `_`-prefixed field are ignored. `default_id` is used when the record has no `id` (singleton rows in
/// bulk requests).
pub fn normalize_record<'a>(
    table: &Table,
    raw: &'a RawValue,
    owner: &str,
    default_id: Option<&'a str>,
) -> Result<NormalizedRecord<'a>, RowError> {
    use serde::de::DeserializeSeed;
    let mut fields = Fields {
        table,
        id: None,
        values: vec![None; table.columns.len()],
        error: None,
    };
    let mut reader = serde_json::Deserializer::from_str(raw.get());
    let read = (&mut fields)
        .deserialize(&mut reader)
        .and_then(|()| reader.end());
    if read.is_err() {
        return Err(RowError::new(
            RowErrorCode::InvalidRecord,
            "a record must be a JSON object with plain (unescaped) keys",
        ));
    }
    if let Some(e) = fields.error {
        return Err(e);
    }
    let mut values = fields.values;
    let id = match (fields.id, default_id) {
        (Some(id), _) => id,
        (None, Some(d)) => Cow::Borrowed(d),
        (None, None) => {
            return Err(RowError::new(
                RowErrorCode::InvalidId,
                "the record has no `id`",
            ));
        }
    };
    for (slot, column) in values.iter_mut().zip(&table.columns) {
        if column.owner {
            *slot = Some(Cow::Owned(
                serde_json::to_string(owner).expect("a string serialises"),
            ));
        }
    }
    Ok(NormalizedRecord { id, values })
}

fn check_value<'a>(
    table: &str,
    column: &str,
    ty: ColumnType,
    value: &'a RawValue,
) -> Result<Cow<'a, str>, RowError> {
    let text = value.get();
    let first = text.as_bytes().first().copied().unwrap_or(b' ');
    let ok = text == "null"
        || match ty {
            ColumnType::String => first == b'"',
            ColumnType::Number => first == b'-' || first.is_ascii_digit(),
            ColumnType::Boolean => matches!(text, "true" | "false" | "0" | "1"),
            ColumnType::Json => true,
        };
    if !ok {
        return Err(RowError::new(
            RowErrorCode::WrongType,
            format!(
                "column `{table}.{column}` is a {}, got {}",
                ty.as_str(),
                excerpt(text)
            ),
        ));
    }
    if let Err(problem) = check_json(text) {
        let (code, why) = match problem {
            ValueProblem::NumberOutOfRange => (
                RowErrorCode::NumberOutOfRange,
                "holds a number beyond the range of a 64-bit float",
            ),
            ValueProblem::InvalidUnicode => (
                RowErrorCode::InvalidUnicode,
                "holds a lone UTF-16 surrogate escape or a raw control character",
            ),
            ValueProblem::Nul => (
                RowErrorCode::NulCharacter,
                "holds a NUL character (\\u0000), which is not stored",
            ),
            ValueProblem::TooDeep => (
                RowErrorCode::TooDeep,
                "nests arrays and objects more than 64 levels deep",
            ),
        };
        return Err(RowError::new(
            code,
            format!("column `{table}.{column}` {why}"),
        ));
    }
    Ok(match (ty, text) {
        (ColumnType::Boolean, "0") => Cow::Borrowed("false"),
        (ColumnType::Boolean, "1") => Cow::Borrowed("true"),
        _ => Cow::Borrowed(text),
    })
}

/// At most the first 64 characters of a value, for messages (a refused value may be megabytes long).
fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(64) {
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// Renders the canonical JSON text of a record. Columns the record did not carry keep their value from
/// `existing` (the stored canonical text), or become `null` for a new record.
pub fn render_record(
    table: &Table,
    record: &NormalizedRecord<'_>,
    existing: Option<&str>,
) -> String {
    let existing_fields = if record.is_complete() {
        None
    } else {
        existing
            .and_then(|e| serde_json::from_str::<RawFields>(e).ok())
            .map(|f| f.0)
    };
    let mut out = String::with_capacity(
        16 + record.id.len()
            + record
                .values
                .iter()
                .map(|v| v.as_ref().map_or(4, |s| s.len()) + 24)
                .sum::<usize>(),
    );
    out.push_str("{\"id\":\"");
    out.push_str(&record.id); // safe ids need no escaping
    out.push('"');
    for (column, value) in table.columns.iter().zip(&record.values) {
        out.push_str(",\"");
        out.push_str(&column.name);
        out.push_str("\":");
        match value {
            Some(v) => out.push_str(v),
            None => {
                let kept = existing_fields
                    .as_ref()
                    .and_then(|f| f.iter().rev().find(|(k, _)| *k == column.name))
                    .map(|(_, v)| v.get());
                out.push_str(kept.unwrap_or("null"));
            }
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::schema::{ColumnConfig, Schema, TableConfig};

    fn tasks() -> Schema {
        let columns: BTreeMap<String, ColumnConfig> = [
            ("title", ColumnType::String),
            ("done", ColumnType::Boolean),
            ("position", ColumnType::Number),
            ("meta", ColumnType::Json),
            ("user_id", ColumnType::String),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), ColumnConfig::Type(t)))
        .collect();
        let table = TableConfig {
            columns,
            since: None,
            parent: None,
            parents: vec![],
            singleton: false,
            owner_columns: vec![],
        };
        Schema::from_config(&[("tasks".to_string(), table)].into_iter().collect()).unwrap()
    }

    fn check(input: &str) -> Result<String, String> {
        let schema = tasks();
        let table = schema.table("tasks").unwrap();
        let raw: Box<RawValue> = serde_json::from_str(input).unwrap();
        normalize_record(table, &raw, "alice", None)
            .map(|r| render_record(table, &r, None))
            .map_err(|e| e.code.as_str().to_string())
    }

    #[test]
    fn a_key_twice_is_refused() {
        for input in [
            r#"{"id":"a","id":"b"}"#,
            r#"{"id":"a","title":"x","title":"y"}"#,
        ] {
            assert_eq!(check(input), Err("invalid_record".to_string()), "{input}");
        }
        assert!(check(r#"{"id":"a","_status":"created","_status":"updated"}"#).is_ok());
    }

    #[test]
    fn a_full_record_is_canonical_and_owned() {
        assert_eq!(
            check(r#"{"position":2.5,"id":"abc","title":"T \"q\"","done":1,"_status":"created","_changed":"","meta":{"a":[1]},"user_id":"mallory"}"#),
            Ok(r#"{"id":"abc","done":true,"meta":{"a":[1]},"position":2.5,"title":"T \"q\"","user_id":"alice"}"#.into())
        );
    }

    #[test]
    fn local_bookkeeping_fields_are_dropped_whatever_they_hold() {
        // WatermelonDB pushes its raw local record (src/sync/impl/fetchLocal.js copies `record._raw`), with
        // `_status` and `_changed`; values no column could take must not get the record refused.
        assert_eq!(
            check(
                r#"{"id":"abc","_status":"updated","_changed":"title,done","title":"T","_local_seq":"\ud800","_":{"x":1e400}}"#
            ),
            Ok(
                r#"{"id":"abc","done":null,"meta":null,"position":null,"title":"T","user_id":"alice"}"#
                    .into()
            )
        );
        // A field that is not `_`-prefixed and not a column still gets the record rejected.
        assert_eq!(
            check(r#"{"id":"abc","status":"updated"}"#),
            Err("unknown_column".into())
        );
    }

    #[test]
    fn bad_rows_get_their_code() {
        assert_eq!(check(r#"{"id":"a","title":5}"#), Err("wrong_type".into()));
        assert_eq!(
            check(r#"{"id":"a","done":"yes"}"#),
            Err("wrong_type".into())
        );
        assert_eq!(
            check(r#"{"id":"a","position":"5"}"#),
            Err("wrong_type".into())
        );
        assert_eq!(
            check(r#"{"id":"a","nope":1}"#),
            Err("unknown_column".into())
        );
        assert_eq!(check(r#"{"id":"a/b"}"#), Err("invalid_id".into()));
        assert_eq!(check(r#"{"id":7}"#), Err("invalid_id".into()));
        assert_eq!(check(r#"{"title":"x"}"#), Err("invalid_id".into()));
        assert_eq!(check(r#"[1]"#), Err("invalid_record".into()));
        // A record that is not a plain object is reported as such, whatever its other fields hold.
        assert_eq!(
            check(r#"{"id":"a","title":5,"t\u0069tle":"x"}"#),
            Err("invalid_record".into())
        );
        assert_eq!(
            check(r#"{"id":"a/b","t\u0069tle":"x"}"#),
            Err("invalid_record".into())
        );
        // `__proto__` (unsafe for a JavaScript reader) is never stored, so never sent back.
        assert_eq!(
            check(r#"{"id":"a","__proto__":{"polluted":true}}"#),
            Ok(r#"{"id":"a","done":null,"meta":null,"position":null,"title":null,"user_id":"alice"}"#.into())
        );
    }

    #[test]
    fn missing_columns_keep_stored_values() {
        let schema = tasks();
        let table = schema.table("tasks").unwrap();
        let raw: Box<RawValue> = serde_json::from_str(r#"{"id":"a","title":"new"}"#).unwrap();
        let record = normalize_record(table, &raw, "alice", None).unwrap();
        let stored =
            r#"{"id":"a","done":true,"meta":null,"position":3,"title":"old","user_id":"alice"}"#;
        assert_eq!(
            render_record(table, &record, Some(stored)),
            r#"{"id":"a","done":true,"meta":null,"position":3,"title":"new","user_id":"alice"}"#
        );
        assert_eq!(
            render_record(table, &record, None),
            r#"{"id":"a","done":null,"meta":null,"position":null,"title":"new","user_id":"alice"}"#
        );
    }
}
