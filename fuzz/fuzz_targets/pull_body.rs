//! Pull bodies: parsing never panics, and whatever parses writes back and reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline_core::PullRequest;

fuzz_target!(|data: &[u8]| {
    let Some(text) = syncline_fuzz::text(data) else {
        return;
    };
    if let Ok(request) = serde_json::from_str::<PullRequest>(text) {
        let written = serde_json::to_string(&request).expect("a pull request serialises");
        let back: PullRequest = serde_json::from_str(&written).expect("what we write, we read");
        assert_eq!(back, request);
    }
});
