//! Wire types of the sync protocol (pull, push, bulk) and the streaming JSON writer for pull responses.
//! Request types borrow record bodies as raw JSON from the request bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Request types are read from JSON objects only. serde's derive also reads a struct from an array, by
/// position (`[[{"id":"q1"}],[],[]]` as a table's changes), which no client means; so each request type
/// derives its field reading as an inherent function (`#[serde(remote = "Self")]`) and the `Deserialize`
/// impl made here hands it a map, or refuses anything else.
macro_rules! from_objects_only {
    ($name:ident, $what:literal) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$name, A::Error> {
                        $name::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
    ($name:ident<$lt:lifetime>, $what:literal) => {
        impl<'de: $lt, $lt> Deserialize<'de> for $name<$lt> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name<$lt>, D::Error> {
                struct V<$lt>(std::marker::PhantomData<&$lt ()>);
                impl<'de: $lt, $lt> serde::de::Visitor<'de> for V<$lt> {
                    type Value = $name<$lt>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$name<$lt>, A::Error> {
                        $name::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
}

/// The `Serialize` impl of a type whose derive is an inherent function (see [`from_objects_only`]).
macro_rules! serialize_as_derived {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $name::serialize(self, s)
            }
        }
    };
}

/// Readers of WatermelonDB's numbers: `lastPulledAt` (a `Timestamp`), `schemaVersion` and `migration.from`
/// are JavaScript numbers (src/sync/index.d.ts: `export type Timestamp = number`), and JSON does not tell
/// `2` from `2.0`: a client that keeps them as doubles (Kotlin, Java, Python) often writes `2.0` or `2e3`.
/// A whole number is read in any spelling; a fraction, or a value out of range, is refused.
mod whole {
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    /// Doubles hold every integer up to 2^53 exactly; beyond that `2.0`-style spellings are not whole numbers
    /// a client could have meant.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

    struct Whole(i64);

    impl<'de> serde::Deserialize<'de> for Whole {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Whole, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Whole;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a whole number")
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
                    Ok(Whole(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
                    i64::try_from(v)
                        .map(Whole)
                        .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
                    if v.fract() == 0.0 && v.abs() <= MAX_EXACT {
                        Ok(Whole(v as i64))
                    } else {
                        Err(E::invalid_value(de::Unexpected::Float(v), &self))
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(<Option<Whole> as serde::Deserialize>::deserialize(d)?.map(|w| w.0))
    }

    fn to_u32<E: de::Error>(v: i64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| {
            E::invalid_value(
                de::Unexpected::Signed(v),
                &"a whole number from 0 to 4294967295",
            )
        })
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        <Option<Whole> as serde::Deserialize>::deserialize(d)?
            .map(|w| to_u32(w.0))
            .transpose()
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        to_u32(<Whole as serde::Deserialize>::deserialize(d)?.0)
    }
}

/// The largest `lastPulledAt` a pull or push may carry: 2^52. The change sequence stays far below it, so a
/// larger cursor never came from this server; and a pull from a cursor ahead of the counter moves the counter
/// up to it (a restore from an older backup), so a larger one would bring every later `timestamp` near 2^53,
/// past which JavaScript (WatermelonDB's `Timestamp` is a number) no longer holds integers exactly, and
/// eventually past `i64`. On SQLite the counter is shared by every user.
pub const MAX_CURSOR: i64 = 1 << 52;

/// `POST /v1/sync/pull` body. The server reads it; the client SDK writes it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct PullRequest {
    #[serde(default, deserialize_with = "whole::opt_i64")]
    pub last_pulled_at: Option<i64>,
    #[serde(
        default,
        deserialize_with = "whole::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// Syncline extension: at most this many changes per response, with `hasMore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

from_objects_only!(PullRequest, "a JSON object (the pull request)");
serialize_as_derived!(PullRequest);

/// WatermelonDB's migration-sync request.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(remote = "Self")]
pub struct Migration {
    #[serde(deserialize_with = "whole::u32")]
    pub from: u32,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub columns: Vec<MigrationColumns>,
}

from_objects_only!(Migration, "a JSON object (`migration`)");
serialize_as_derived!(Migration);

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(remote = "Self")]
pub struct MigrationColumns {
    pub table: String,
    pub columns: Vec<String>,
}

from_objects_only!(MigrationColumns, "a JSON object (`migration.columns[]`)");
serialize_as_derived!(MigrationColumns);

/// One table's changes in a push.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct TableChanges<'a> {
    #[serde(borrow, default)]
    pub created: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    pub updated: Vec<&'a RawValue>,
    #[serde(default)]
    pub deleted: Vec<String>,
}

from_objects_only!(
    TableChanges<'a>,
    "a JSON object with `created`, `updated` and `deleted`"
);

impl TableChanges<'_> {
    pub fn len(&self) -> usize {
        self.created.len() + self.updated.len() + self.deleted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A map keyed by table name that names each table once. A map read into a `BTreeMap` keeps the last of two
/// equal keys and drops the first without a word (`{"t":{"created":[…]},"t":{"deleted":[…]}}` would apply
/// the deletes and lose the creations), so a repeated table is refused as a whole.
fn by_table<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Tables<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Tables<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object keyed by table name")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut tables = BTreeMap::new();
            while let Some(table) = map.next_key::<String>()? {
                if tables.contains_key(&table) {
                    return Err(serde::de::Error::custom(format!(
                        "table `{table}` appears twice in one object"
                    )));
                }
                let value = map.next_value()?;
                tables.insert(table, value);
            }
            Ok(tables)
        }
    }
    d.deserialize_map(Tables(std::marker::PhantomData))
}

/// `POST /v1/sync/push` body.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct PushRequest<'a> {
    #[serde(borrow, deserialize_with = "by_table")]
    pub changes: BTreeMap<String, TableChanges<'a>>,
    #[serde(default, deserialize_with = "whole::opt_i64")]
    pub last_pulled_at: Option<i64>,
}

from_objects_only!(PushRequest<'a>, "a JSON object (the push request)");

/// `POST /v1/sync/bulk` body: upserts per table, then deletes per table.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct BulkRequest<'a> {
    #[serde(borrow, default, deserialize_with = "by_table")]
    pub upserts: BTreeMap<String, Vec<&'a RawValue>>,
    #[serde(default, deserialize_with = "by_table")]
    pub deletes: BTreeMap<String, Vec<String>>,
}

from_objects_only!(BulkRequest<'a>, "a JSON object (the bulk request)");

/// A pushed record the server refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRecord {
    pub table: String,
    pub id: String,
    pub code: &'static str,
    pub message: String,
}

/// The answer to a successful push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The change sequence after the push.
    pub timestamp: i64,
    pub rejected: Vec<RejectedRecord>,
}

impl Serialize for PushOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        if !self.rejected.is_empty() {
            let mut ids: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for r in &self.rejected {
                ids.entry(&r.table).or_default().push(&r.id);
            }
            map.serialize_entry("experimentalRejectedIds", &ids)?;
            map.serialize_entry("rejected", &self.rejected)?;
        }
        map.end()
    }
}

/// A pull response as a client reads it (what [`PullWriter`] wrote). Records stay raw JSON borrowed from the
/// body; every live record is in `updated`, deleted ids in `deleted`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullResponse<'a> {
    #[serde(borrow)]
    pub changes: BTreeMap<String, TableChanges<'a>>,
    pub timestamp: i64,
    /// Present (and meaningful) only when the request had `limit`.
    #[serde(default)]
    pub has_more: bool,
    /// `"replacement"`: keep exactly these records (and unpushed local creations), drop every other one.
    #[serde(default)]
    pub experimental_strategy: Option<String>,
}

impl PullResponse<'_> {
    pub fn is_replacement(&self) -> bool {
        self.experimental_strategy.as_deref() == Some("replacement")
    }
}

/// A successful push answer as a client reads it (what [`PushOutcome`] wrote).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PushResponse {
    pub timestamp: i64,
    #[serde(default)]
    pub rejected: Vec<RejectedRow>,
}

/// One entry of a push answer's `rejected` list, as a client reads it (what [`RejectedRecord`] wrote).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RejectedRow {
    pub table: String,
    pub id: String,
    pub code: String,
    pub message: String,
}

/// The JSON body of every error answer: a stable `code`, a `message` for people, and for `409 conflict` the
/// conflicting ids per table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The code as sent: a reader keeps a code it does not know (see [`ErrorBody::error_code`]).
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub conflicts: BTreeMap<String, Vec<String>>,
}

impl ErrorBody {
    /// The code, when this version knows it.
    pub fn error_code(&self) -> Option<crate::ErrorCode> {
        crate::ErrorCode::parse(&self.code)
    }
}

/// What a bulk request did to one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounts {
    pub upserted: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

/// The answer to a successful bulk request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkCounts {
    pub counts: BTreeMap<String, TableCounts>,
    pub timestamp: i64,
}

/// What the pull writer's buffer reserves: a little above the 64 KiB the store drains it at.
const WRITER_CAPACITY: usize = 72 * 1024;

/// Writes a pull response as JSON text, table by table, into a buffer the caller drains as it fills.
/// Record bodies are spliced in verbatim (they are stored as canonical JSON).
#[derive(Debug, Default)]
pub struct PullWriter {
    buf: Vec<u8>,
    tables_written: usize,
    items_in_array: usize,
}

impl PullWriter {
    pub fn new() -> PullWriter {
        let mut w = PullWriter {
            buf: Vec::with_capacity(WRITER_CAPACITY),
            ..Default::default()
        };
        w.buf.extend_from_slice(b"{\"changes\":{");
        w
    }

    /// Starts a table: opens its `created` (always empty) and `updated` arrays.
    pub fn begin_table(&mut self, name: &str) {
        if self.tables_written > 0 {
            self.buf.push(b',');
        }
        self.tables_written += 1;
        self.items_in_array = 0;
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes()); // checked schema names need no escaping
        self.buf
            .extend_from_slice(b"\":{\"created\":[],\"updated\":[");
    }

    /// Appends one live record (canonical JSON) to `updated`.
    pub fn record(&mut self, json: &str) {
        if self.items_in_array > 0 {
            self.buf.push(b',');
        }
        self.items_in_array += 1;
        self.buf.extend_from_slice(json.as_bytes());
    }

    /// Closes `updated` and opens `deleted`.
    pub fn begin_deleted(&mut self) {
        self.items_in_array = 0;
        self.buf.extend_from_slice(b"],\"deleted\":[");
    }

    /// Appends one deleted id (a safe id: no escaping needed).
    pub fn deleted(&mut self, id: &str) {
        if self.items_in_array > 0 {
            self.buf.push(b',');
        }
        self.items_in_array += 1;
        self.buf.push(b'"');
        self.buf.extend_from_slice(id.as_bytes());
        self.buf.push(b'"');
    }

    /// Closes the table's `deleted` array (call after `begin_deleted`).
    pub fn end_table(&mut self) {
        self.buf.extend_from_slice(b"]}");
    }

    /// Closes `changes` and writes the trailing fields.
    pub fn finish(&mut self, timestamp: i64, has_more: Option<bool>, replacement: bool) {
        self.buf
            .extend_from_slice(format!("}},\"timestamp\":{timestamp}").as_bytes());
        if let Some(more) = has_more {
            self.buf
                .extend_from_slice(format!(",\"hasMore\":{more}").as_bytes());
        }
        if replacement {
            self.buf
                .extend_from_slice(b",\"experimentalStrategy\":\"replacement\"");
        }
        self.buf.push(b'}');
    }

    /// Bytes written and not yet taken.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes written so far.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.buf, Vec::with_capacity(WRITER_CAPACITY))
    }

    /// Takes the bytes written so far when nothing more will be written (no new buffer is reserved).
    pub fn take_last(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_from_objects_only() {
        let refused = |e: serde_json::Error| {
            assert!(e.is_data(), "{e}");
            e.to_string()
        };
        assert!(refused(serde_json::from_str::<PullRequest>("[]").unwrap_err()).contains("object"));
        serde_json::from_str::<PullRequest>("[null, 1]").unwrap_err();
        serde_json::from_str::<PullRequest>(r#"{"migration":[1,[],[]]}"#).unwrap_err();
        serde_json::from_str::<PullRequest>(r#"{"migration":{"from":1,"columns":[["t",["c"]]]}}"#)
            .unwrap_err();
        serde_json::from_str::<PushRequest>(r#"{"changes":{"projects":[[{"id":"q1"}],[],[]]}}"#)
            .unwrap_err();
        serde_json::from_str::<PushRequest>(r#"[{"projects":{}}, 1]"#).unwrap_err();
        serde_json::from_str::<BulkRequest>(r#"[{"projects":[{"id":"q1"}]}]"#).unwrap_err();
        // The documented shapes still read, and the client's requests still write and read back.
        let pull: PullRequest = serde_json::from_str(
            r#"{"lastPulledAt":3,"migration":{"from":1,"tables":["t"],"columns":[{"table":"u","columns":["c"]}]}}"#,
        )
        .unwrap();
        assert_eq!(pull.migration.as_ref().unwrap().columns[0].table, "u");
        let back: PullRequest =
            serde_json::from_str(&serde_json::to_string(&pull).unwrap()).unwrap();
        assert_eq!(back, pull);
        let push: PushRequest = serde_json::from_str(
            r#"{"changes":{"projects":{"created":[{"id":"q1"}]}},"lastPulledAt":null}"#,
        )
        .unwrap();
        assert_eq!(push.changes["projects"].created.len(), 1);
        let pulled: PullRequest = serde_json::from_value(serde_json::json!({"limit": 2})).unwrap();
        assert_eq!(pulled.limit, Some(2));
    }

    #[test]
    fn watermelon_numbers_are_read_in_any_whole_spelling() {
        let pull = |body: &str| serde_json::from_str::<PullRequest>(body);
        let read = pull(r#"{"lastPulledAt":1874.0,"schemaVersion":2.0,"migration":{"from":1e0}}"#)
            .unwrap();
        assert_eq!(
            (read.last_pulled_at, read.schema_version),
            (Some(1874), Some(2))
        );
        assert_eq!(read.migration.unwrap().from, 1);
        assert_eq!(
            pull(r#"{"lastPulledAt":1.874e3}"#).unwrap().last_pulled_at,
            Some(1874)
        );
        assert_eq!(
            pull(r#"{"lastPulledAt":null}"#).unwrap().last_pulled_at,
            None
        );
        assert_eq!(
            pull(r#"{"lastPulledAt":-1.0}"#).unwrap().last_pulled_at,
            Some(-1)
        );
        let push: PushRequest =
            serde_json::from_str(r#"{"changes":{},"lastPulledAt":42.0}"#).unwrap();
        assert_eq!(push.last_pulled_at, Some(42));
        for bad in [
            r#"{"lastPulledAt":1.5}"#,
            r#"{"lastPulledAt":"5"}"#,
            r#"{"lastPulledAt":1e300}"#,
            r#"{"lastPulledAt":18446744073709551615}"#,
            r#"{"schemaVersion":-1}"#,
            r#"{"schemaVersion":4294967296}"#,
            r#"{"schemaVersion":2.5}"#,
            r#"{"migration":{"from":0.5}}"#,
            r#"{"migration":{"from":null}}"#,
        ] {
            let e = pull(bad).unwrap_err();
            assert!(e.is_data(), "{bad}: {e}");
            assert!(e.to_string().contains("whole number"), "{bad}: {e}");
        }
    }

    #[test]
    fn pull_writer_makes_the_watermelon_shape() {
        let mut w = PullWriter::new();
        w.begin_table("projects");
        w.record(r#"{"id":"p1","name":"A"}"#);
        w.record(r#"{"id":"p2","name":"B"}"#);
        w.begin_deleted();
        w.deleted("p3");
        w.end_table();
        w.begin_table("tasks");
        w.begin_deleted();
        w.end_table();
        w.finish(42, Some(false), true);
        let v: serde_json::Value = serde_json::from_slice(&w.take()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "changes": {
                    "projects": {"created": [], "updated": [{"id":"p1","name":"A"},{"id":"p2","name":"B"}], "deleted": ["p3"]},
                    "tasks": {"created": [], "updated": [], "deleted": []}
                },
                "timestamp": 42, "hasMore": false, "experimentalStrategy": "replacement"
            })
        );
    }

    #[test]
    fn what_the_server_writes_the_client_reads() {
        let mut w = PullWriter::new();
        w.begin_table("tasks");
        w.record(r#"{"id":"t1","title":"A"}"#);
        w.begin_deleted();
        w.deleted("t2");
        w.end_table();
        w.finish(9, Some(true), false);
        let bytes = w.take();
        let page: PullResponse = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (page.timestamp, page.has_more, page.is_replacement()),
            (9, true, false)
        );
        assert_eq!(
            page.changes["tasks"].updated[0].get(),
            r#"{"id":"t1","title":"A"}"#
        );
        assert_eq!(page.changes["tasks"].deleted, ["t2"]);

        let outcome = PushOutcome {
            timestamp: 7,
            rejected: vec![RejectedRecord {
                table: "tasks".into(),
                id: "t1".into(),
                code: "wrong_type",
                message: "m".into(),
            }],
        };
        let read: PushResponse =
            serde_json::from_str(&serde_json::to_string(&outcome).unwrap()).unwrap();
        assert_eq!(read.timestamp, 7);
        assert_eq!(
            (read.rejected[0].id.as_str(), read.rejected[0].code.as_str()),
            ("t1", "wrong_type")
        );

        let request = PullRequest {
            last_pulled_at: None,
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"lastPulledAt":null,"limit":5}"#
        );
        let error: ErrorBody =
            serde_json::from_str(r#"{"code":"conflict","message":"m","conflicts":{"t":["a"]}}"#)
                .unwrap();
        assert_eq!(error.conflicts["t"], ["a"]);
    }

    #[test]
    fn push_outcome_lists_rejections_for_watermelon() {
        let outcome = PushOutcome {
            timestamp: 7,
            rejected: vec![RejectedRecord {
                table: "tasks".into(),
                id: "t1".into(),
                code: "wrong_type",
                message: "m".into(),
            }],
        };
        let v = serde_json::to_value(&outcome).unwrap();
        assert_eq!(
            v["experimentalRejectedIds"],
            serde_json::json!({"tasks": ["t1"]})
        );
        assert_eq!(v["rejected"][0]["code"], "wrong_type");
        let clean = PushOutcome {
            timestamp: 7,
            rejected: vec![],
        };
        assert_eq!(
            serde_json::to_value(&clean).unwrap(),
            serde_json::json!({"timestamp": 7})
        );
    }
}
