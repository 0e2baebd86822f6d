//! Push bodies through the planner: nothing panics, and every accepted record renders canonical JSON that a
//! strict reader takes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline_core::{PushRequest, plan_push, render_record};

fuzz_target!(|data: &[u8]| {
    let Some(text) = syncline_fuzz::text(data) else {
        return;
    };
    let Ok(request) = serde_json::from_str::<PushRequest>(text) else {
        return;
    };
    let schema = syncline_fuzz::schema();
    if let Ok((batch, _rejected)) = plan_push(&schema, &request, "alice") {
        for writes in &batch.tables {
            let table = schema.table(&writes.table).expect("planned tables exist");
            for upsert in &writes.upserts {
                syncline_fuzz::assert_strictly_readable(&render_record(
                    table,
                    &upsert.record,
                    None,
                ));
            }
        }
    }
});
