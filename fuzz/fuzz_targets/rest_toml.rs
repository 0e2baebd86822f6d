//! The `[imports]` configuration, REST sources included: any TOML text is refused or accepted, never a
//! panic, whatever its paths, pointers, templates and pagination.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = syncline_fuzz::text(data) else {
        return;
    };
    let _ = toml::from_str::<syncline_import::ImportsConfig>(text);
});
