//! One record's normalisation: any JSON value as a record never panics, and an accepted one renders
//! canonical JSON that a strict reader takes, also when merged over a stored row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use syncline_core::{normalize_record, render_record};

const STORED: &str =
    r#"{"id":"a","done":true,"meta":{"k":[1]},"position":3,"title":"old","user_id":"alice"}"#;

fuzz_target!(|data: &[u8]| {
    let Some(text) = syncline_fuzz::text(data) else {
        return;
    };
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let schema = syncline_fuzz::schema();
    let table = schema.table("tasks").expect("the fuzz schema has tasks");
    if let Ok(record) = normalize_record(table, raw, "alice", Some("d")) {
        syncline_fuzz::assert_strictly_readable(&render_record(table, &record, None));
        syncline_fuzz::assert_strictly_readable(&render_record(table, &record, Some(STORED)));
    }
});
