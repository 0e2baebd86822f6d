//! Rate limits by every signal the services send, and refusals that say what they are, through a real
//! connector (PlayStation's) against its fake over HTTPS: the stream shows `rate_limited` with the reset the
//! signal names; a 429 without a signal backs off from two seconds, doubling; a 403 is a missing
//! permission unless it carries a rate-limit signal; a 401 is "connect again".

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use syncline_core::{Clock as _, SystemClock};
use syncline_core::{ImportPhase, ImportStatus};
use syncline_testkit::fake_apis::FakePlayStation;

use super::{PSN_TOKEN, USER, psn_harness};

fn now_secs() -> u64 {
    (SystemClock.now_ms() / 1000) as u64
}

/// One answer the fake gives first, and the reset it must produce, in ms from the time of the request
/// (within `slack` ms, for the whole seconds some signals carry).
struct Case {
    what: &'static str,
    status: u16,
    /// Made when the case runs: the absolute times in them count from then.
    headers: fn() -> Vec<(&'static str, String)>,
    reset_in_ms: i64,
    slack: i64,
}

#[tokio::test]
async fn every_rate_limit_signal_holds_the_stream_until_the_reset_it_names() {
    let cases = [
        Case {
            what: "Retry-After seconds",
            status: 429,
            headers: || vec![("retry-after", "7".into())],
            reset_in_ms: 7_000,
            slack: 0,
        },
        Case {
            what: "Retry-After HTTP date",
            status: 429,
            headers: || {
                let soon = UNIX_EPOCH + Duration::from_secs(now_secs() + 40);
                vec![("retry-after", httpdate::fmt_http_date(soon))]
            },
            reset_in_ms: 40_000,
            slack: 2_000,
        },
        // PlayStation's own header: a Unix timestamp (3 s, not a flat minute).
        Case {
            what: "X-RateLimit-Next-Available",
            status: 429,
            headers: || vec![("x-ratelimit-next-available", (now_secs() + 3).to_string())],
            reset_in_ms: 3_000,
            slack: 2_000,
        },
        Case {
            what: "X-RateLimit-Reset epoch",
            status: 429,
            headers: || vec![("x-ratelimit-reset", (now_secs() + 20).to_string())],
            reset_in_ms: 20_000,
            slack: 2_000,
        },
        Case {
            what: "X-RateLimit-Reset delta",
            status: 429,
            headers: || vec![("x-ratelimit-reset", "15".into())],
            reset_in_ms: 15_000,
            slack: 0,
        },
        Case {
            what: "GitHub-style 403, remaining 0",
            status: 403,
            headers: || {
                vec![
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", (now_secs() + 30).to_string()),
                ]
            },
            reset_in_ms: 30_000,
            slack: 2_000,
        },
        // RFC 9110 §10.2.3: with a 503, Retry-After is how long the service will be unavailable.
        Case {
            what: "503 with Retry-After",
            status: 503,
            headers: || vec![("retry-after", "25".into())],
            reset_in_ms: 25_000,
            slack: 0,
        },
        Case {
            what: "429 without a signal",
            status: 429,
            headers: || vec![],
            reset_in_ms: 2_000,
            slack: 0,
        },
    ];
    for case in cases {
        let fake = FakePlayStation::start(PSN_TOKEN, 5, 2).await;
        let h = psn_harness(&fake).await;
        let made = (case.headers)();
        let headers: Vec<(&str, &str)> = made.iter().map(|(n, v)| (*n, v.as_str())).collect();
        fake.control.answer_next(
            case.status,
            &headers,
            json!({"error": {"code": 2240525, "message": "Too many requests"}}),
        );
        let before = SystemClock.now_ms();
        h.importer.start(USER, "psn").await.unwrap();
        let after = SystemClock.now_ms();
        let state = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
        assert_eq!(
            state.status,
            ImportStatus::RateLimited,
            "{}: {state:?}",
            case.what
        );
        let reset = state.rate_limit_reset_at.unwrap();
        let (low, high) = (
            before + case.reset_in_ms - case.slack,
            after + case.reset_in_ms + case.slack,
        );
        assert!(
            (low..=high).contains(&reset),
            "{}: reset {reset} not in {low}..={high}",
            case.what
        );
        assert_eq!(state.error_code, None, "{}", case.what);
        assert_eq!(h.rows("psn_titles"), 0, "{}", case.what);
    }
}

#[tokio::test]
async fn a_rate_limit_without_a_signal_backs_off_doubling_then_the_walk_finishes() {
    let fake = FakePlayStation::start(PSN_TOKEN, 5, 2).await;
    let h = psn_harness(&fake).await;
    fake.control.answer_next(429, &[], json!({}));
    h.importer.start(USER, "psn").await.unwrap();
    let first = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
    assert_eq!(first.status, ImportStatus::RateLimited);
    let wait = first.rate_limit_reset_at.unwrap() - first.rate_limit_hit_at.unwrap();
    assert_eq!(wait, 2_000, "{first:?}");
    tokio::time::sleep(Duration::from_millis(2_050)).await;
    fake.control.answer_next(429, &[], json!({}));
    h.importer.step(USER, "psn").await.unwrap();
    let second = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
    assert_eq!(second.status, ImportStatus::RateLimited);
    let wait = second.rate_limit_reset_at.unwrap() - second.rate_limit_hit_at.unwrap();
    assert_eq!(wait, 4_000, "the second wait doubles: {second:?}");
    tokio::time::sleep(Duration::from_millis(4_050)).await;
    for _ in 0..5 {
        if !h.importer.step(USER, "psn").await.unwrap().more {
            break;
        }
    }
    let done = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
    assert_eq!(done.status, ImportStatus::Success, "{done:?}");
    assert_eq!(h.rows("psn_titles"), 5);
    assert_eq!(h.rows("psn_trophies"), 10);
}

/// `Retry-After: 0` is taken at its word once; said again with nothing fetched in between, the stream
/// backs off (2 s) instead of asking again at once, over and over.
#[tokio::test]
async fn a_retry_after_of_zero_said_twice_backs_off_instead_of_looping() {
    let fake = FakePlayStation::start(PSN_TOKEN, 5, 2).await;
    let h = psn_harness(&fake).await;
    let limit = json!({"error": {"code": 2240525, "message": "Too many requests"}});
    fake.control
        .answer_next(429, &[("retry-after", "0")], limit.clone());
    h.importer.start(USER, "psn").await.unwrap();
    let first = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
    assert_eq!(first.status, ImportStatus::RateLimited, "{first:?}");
    assert_eq!(
        first.rate_limit_reset_at, first.rate_limit_hit_at,
        "{first:?}"
    );
    fake.control
        .answer_next(429, &[("retry-after", "0")], limit);
    h.importer.step(USER, "psn").await.unwrap();
    let second = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
    assert_eq!(second.status, ImportStatus::RateLimited, "{second:?}");
    let wait = second.rate_limit_reset_at.unwrap() - second.rate_limit_hit_at.unwrap();
    assert_eq!(wait, 2_000, "{second:?}");
}

#[tokio::test]
async fn a_401_is_connect_again_and_a_403_is_a_missing_permission() {
    let cases = [
        (401, "auth_expired", "connect the account again"),
        (403, "missing_permission", "lacks a scope or permission"),
    ];
    for (status, code, words) in cases {
        let fake = FakePlayStation::start(PSN_TOKEN, 5, 2).await;
        let h = psn_harness(&fake).await;
        fake.control
            .answer_next(status, &[], json!({"error": {"message": "Access denied"}}));
        h.importer.start(USER, "psn").await.unwrap();
        let state = h.state("psn", "trophy_titles", ImportPhase::Initial).await;
        assert_eq!(state.status, ImportStatus::Error, "{status}: {state:?}");
        assert_eq!(
            state.error_code.map(|c| c.as_str()),
            Some(code),
            "{status}: {state:?}"
        );
        let message = state.error.unwrap();
        assert!(
            message.contains(words) && message.contains("Access denied"),
            "{message}"
        );
        assert!(!message.contains(PSN_TOKEN));
    }
}
