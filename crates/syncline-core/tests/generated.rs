//! Generated push and bulk requests through the core planner (a small seeded generator, so every run checks
//! the same cases and a failure names its seed): nothing panics, and every record the planner accepts has a
//! canonical JSON text that a strict reader parses back to the values that were sent. A strict reader here is
//! serde_json's `Value` (it refuses lone surrogates and out-of-range numbers) plus the two rules it does not
//! hold: no NUL character and at most `MAX_DEPTH` levels of nesting.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;
use syncline_core::{
    BulkRequest, ColumnConfig, ColumnType, CoreError, MAX_DEPTH, PushRequest, Schema, TableConfig,
    plan_bulk, plan_push, render_record,
};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const STRING_PIECES: &[&str] = &[
    "plain",
    " ",
    "é",
    "😀",
    "\\\"",
    "\\\\",
    "\\n",
    "\\/",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\udc00",
    "\\ud800\\u0041",
    "\\u0000",
    "\\u001f",
    "\\uFFFF",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-17",
    "2.5",
    "1e308",
    "-1.7976931348623157e308",
    "1e309",
    "1e400",
    "-1e400",
    "5e-400",
    "123456789012345678901234567890",
    "1E+2",
];

fn string(rng: &mut Rng) -> String {
    let mut s = String::from("\"");
    for _ in 0..rng.below(4) {
        s.push_str(rng.pick(STRING_PIECES));
    }
    s.push('"');
    s
}

fn value(rng: &mut Rng, depth: usize) -> String {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => "null".into(),
        1 => rng.pick(&["true", "false", "0", "1"]).into(),
        2 | 3 => rng.pick(NUMBERS).into(),
        4 => string(rng),
        5 => {
            let items: Vec<String> = (0..rng.below(3)).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        6 => {
            let items: Vec<String> = (0..rng.below(3))
                .map(|_| format!("{}:{}", string(rng), value(rng, depth + 1)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        _ => {
            // Deep nesting around the limit.
            let n = MAX_DEPTH - 2 + rng.below(5);
            format!(
                "{}{}{}",
                "[".repeat(n),
                value(rng, MAX_DEPTH),
                "]".repeat(n)
            )
        }
    }
}

/// A record with the id `r<n>` (unique in its request, so its canonical text can be matched to it).
fn record(rng: &mut Rng, n: usize) -> String {
    let mut fields = vec![format!("\"id\":\"r{n}\"")];
    for column in ["title", "done", "position", "meta", "user_id", "_status"] {
        if rng.below(3) > 0 {
            let v = match (column, rng.below(6)) {
                (_, 0) | ("meta" | "_status", _) => value(rng, 1),
                ("title" | "user_id", _) => string(rng),
                ("done", _) => rng.pick(&["true", "false", "0", "1", "null"]).into(),
                _ => rng.pick(NUMBERS).into(),
            };
            fields.push(format!("\"{column}\":{v}"));
        }
    }
    format!("{{{}}}", fields.join(","))
}

fn schema() -> Schema {
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

/// What a strict reader accepts: serde_json's `Value`, no NUL in any string, nesting within the limit.
/// A record is an object whose values each get the limit.
fn strict(text: &str, record: bool) -> Option<Value> {
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
    // serde_json's own recursion limit (128) is above ours, so it never decides for us.
    let v: Value = serde_json::from_str(text).ok()?;
    let readable = match (&v, record) {
        (Value::Object(map), true) => map.values().all(|v| holds(v, 0)),
        (_, true) => false,
        (v, false) => holds(v, 0),
    };
    readable.then_some(v)
}

const COLUMNS: [&str; 5] = ["title", "done", "position", "meta", "user_id"];

/// A sent column value as a reader expects to find it again in the canonical record.
fn expected(sent: Option<&Value>, column: &str) -> Value {
    match (column, sent) {
        ("user_id", _) => Value::String("alice".into()),
        ("done", Some(Value::Number(n))) if n.as_u64() == Some(1) => Value::Bool(true),
        ("done", Some(Value::Number(n))) if n.as_u64() == Some(0) => Value::Bool(false),
        (_, sent) => sent.cloned().unwrap_or(Value::Null),
    }
}

fn check_accepted(raw: &str, canonical: &str) {
    let Some(stored) = strict(canonical, true) else {
        panic!("canonical text a strict reader refuses: {canonical}");
    };
    // Ignored fields (`_status`) may hold anything: they are not stored. Every stored column must read.
    let fields: BTreeMap<&str, &RawValue> = serde_json::from_str(raw).unwrap();
    for column in COLUMNS {
        let sent = fields.get(column).map(|v| {
            strict(v.get(), false)
                .unwrap_or_else(|| panic!("accepted a value a strict reader refuses: {raw}"))
        });
        assert_eq!(
            stored[column],
            expected(sent.as_ref(), column),
            "column {column} of {raw} -> {canonical}"
        );
    }
}

/// The sent record whose id is `id`.
fn sent<'a>(records: &[&'a RawValue], id: &str) -> &'a str {
    let prefix = format!("{{\"id\":\"{id}\"");
    records
        .iter()
        .map(|r| r.get())
        .find(|r| r.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no sent record {id}"))
}

#[test]
fn every_accepted_record_reads_back_strictly_as_sent() {
    let schema = schema();
    let table = schema.table("tasks").unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for seed in 1..=5000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let records: Vec<String> = (0..1 + rng.below(4)).map(|n| record(&mut rng, n)).collect();
        let list = records.join(",");
        let push = format!(
            r#"{{"lastPulledAt":{},"changes":{{"tasks":{{"created":[{list}],"updated":[],"deleted":[]}}}}}}"#,
            rng.below(3) as i64 - 1
        );
        // Generated text may be invalid JSON (a raw control character): the parser refuses it, that is all.
        if let Ok(request) = serde_json::from_str::<PushRequest>(&push) {
            match plan_push(&schema, &request, "alice") {
                Ok((batch, rejected)) => {
                    refused += rejected.len();
                    for upsert in batch.tables.iter().flat_map(|t| &t.upserts) {
                        let canonical = upsert
                            .canonical
                            .clone()
                            .unwrap_or_else(|| render_record(table, &upsert.record, None));
                        let raw = sent(&request.changes["tasks"].created, &upsert.record.id);
                        check_accepted(raw, &canonical);
                        accepted += 1;
                    }
                }
                Err(CoreError::InvalidCursor(c)) => {
                    assert!(!(0..=syncline_core::MAX_CURSOR).contains(&c), "seed {seed}")
                }
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        let bulk = format!(r#"{{"upserts":{{"tasks":[{list}]}}}}"#);
        if let Ok(request) = serde_json::from_str::<BulkRequest>(&bulk) {
            match plan_bulk(&schema, &request, "alice") {
                Ok(batch) => {
                    for (upsert, raw) in batch.tables[0]
                        .upserts
                        .iter()
                        .zip(&request.upserts["tasks"])
                    {
                        let canonical = render_record(table, &upsert.record, None);
                        check_accepted(raw.get(), &canonical);
                    }
                }
                Err(CoreError::InvalidRows(rows)) => assert!(!rows.is_empty()),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
    }
    // The generator must reach both sides of every rule, or the test proves nothing.
    assert!(
        accepted > 2000 && refused > 2000,
        "accepted {accepted}, refused {refused}"
    );
}
