//! The generic REST source: every pagination style over the same fake API, its edge cases, the origin
//! rule for next urls, incremental walks and upstream changes.

use serde_json::json;
use syncline_core::{Clock as _, ImportPhase, ImportStatus, SystemClock};
use syncline_testkit::fake_apis::FakeRest;

use super::{
    Harness, REST_TOKEN, USER, assert_complete, harness, requests_since, rest_credential,
    rest_source,
};

/// A harness with one connected REST source `api` on `fake`: `extra` for `[imports]`, `rest` for the source,
/// `stream` for its one stream.
async fn rest_harness(extra: &str, fake: &FakeRest, rest: &str, stream: &str) -> Harness {
    harness(
        extra,
        &rest_source(fake, rest, stream),
        &[("api", rest_credential())],
    )
    .await
}

const OFFSET_TOTAL: &str = "path = \"/offset/items\"\nrecords = \"/data\"\ntotal = \"/meta/total\"\n\
    pagination = { style = \"offset\", size_param = \"limit\" }";
const OFFSET: &str = "path = \"/offset/items\"\nrecords = \"/data\"\n\
    pagination = { style = \"offset\", size_param = \"limit\" }";
const PAGE_TOTAL: &str = "path = \"/page/items\"\nrecords = \"/results\"\ntotal = \"/total_count\"\n\
    pagination = { style = \"page\", size_param = \"per_page\" }";
const PAGE: &str = "path = \"/page/items\"\nrecords = \"/results\"\n\
    pagination = { style = \"page\", size_param = \"per_page\" }";
const CURSOR: &str = "path = \"/cursor/items\"\nrecords = \"/items\"\n\
    pagination = { style = \"cursor\", cursor = \"/meta/next_cursor\", size_param = \"limit\" }";
const NEXT_URL: &str = "path = \"/next/items\"\nrecords = \"/data\"\n\
    pagination = { style = \"next_url\", next = \"/links/next\", size_param = \"limit\" }";
const LINK_HEADER: &str = "path = \"/link/items\"\nrecords = \"\"\n\
    pagination = { style = \"link_header\", size_param = \"per_page\" }";
const SINGLE: &str = "path = \"/single/items\"\nrecords = \"/items\"";

/// How many requests a walk of `items` in pages of 50 takes when the end shows (a total, no next cursor or
/// url), and when only an empty page shows it.
fn pages_when_the_end_shows(items: usize) -> usize {
    items.div_ceil(50).max(1)
}

fn pages_up_to_an_empty_one(items: usize) -> usize {
    items / 50 + 1 + usize::from(!items.is_multiple_of(50))
}

/// Imports `items` items through `stream`; checks every row arrived and the walk took `requests` requests.
async fn check(name: &str, stream: &str, items: usize, requests: usize) {
    let fake = FakeRest::start(REST_TOKEN, items).await;
    let h = rest_harness("", &fake, "", stream).await;
    let states = h.import("api", 10).await;
    assert_complete(&states);
    assert_eq!(states[0].processed, items as u64, "{name}, {items} items");
    assert_eq!(h.rows("rest_items"), items as u64, "{name}, {items} items");
    assert_eq!(
        fake.control.requests() as usize,
        requests,
        "{name}, {items} items: {:#?}",
        fake.control.log()
    );
}

#[tokio::test]
async fn every_pagination_style_walks_every_item_and_stops_where_the_api_ends() {
    for items in [0, 1, 50, 100, 2_345] {
        let shown = pages_when_the_end_shows(items);
        let empty = pages_up_to_an_empty_one(items);
        check("offset with a total", OFFSET_TOTAL, items, shown).await;
        check("offset", OFFSET, items, empty).await;
        check("page with a total", PAGE_TOTAL, items, shown).await;
        check("page", PAGE, items, empty).await;
        check("cursor", CURSOR, items, shown).await;
        check("next url", NEXT_URL, items, shown).await;
        check("link header", LINK_HEADER, items, shown).await;
        check("single request", SINGLE, items, 1).await;
    }
}

#[tokio::test]
async fn rows_hold_the_mapped_fields_or_the_records_own() {
    let fake = FakeRest::start(REST_TOKEN, 3).await;
    let sources = format!(
        "{}[sources.api.rest.streams.raw]\npath = \"/single/items\"\nrecords = \"/items\"\n",
        rest_source(&fake, "", SINGLE).replace(
            "streams = { items = \"rest_items\" }",
            "streams = { items = \"rest_items\", raw = \"rest_raw\" }"
        )
    );
    let h = harness("", &sources, &[("api", rest_credential())]).await;
    assert_complete(&h.import("api", 10).await);
    let mapped = &h.table("rest_items")["2"];
    assert_eq!(
        (&mapped["name"], &mapped["stars"], &mapped["owner"]),
        (&json!("Item 2"), &json!(6), &json!("user2"))
    );
    let own = &h.table("rest_raw")["2"];
    assert_eq!(
        (&own["name"], &own["owner"], &own["tags"]),
        (
            &json!("Item 2"),
            &json!({"login": "user2"}),
            &json!(["a", "b"])
        )
    );
    assert!(
        own.get("updated_at").is_none(),
        "columns the table does not declare are left out"
    );
}

#[tokio::test]
async fn the_page_size_is_capped_by_max_page_size() {
    let fake = FakeRest::start(REST_TOKEN, 450).await;
    let h = rest_harness("page_size = 200", &fake, "", OFFSET_TOTAL).await;
    assert_complete(&h.import("api", 10).await);
    assert_eq!(h.rows("rest_items"), 450);
    let log = fake.control.log();
    assert_eq!(log.len(), 5, "the default max_page_size, 100: {log:#?}");
    assert!(log.iter().all(|r| r.contains("limit=100")), "{log:#?}");

    // Above what the API takes, the API's refusal is the stream's error.
    let fake = FakeRest::start(REST_TOKEN, 450).await;
    let h = rest_harness(
        "page_size = 200",
        &fake,
        "max_page_size = 500",
        OFFSET_TOTAL,
    )
    .await;
    let states = h.import("api", 10).await;
    assert_eq!(
        (states[0].status, states[0].error_code.map(|c| c.as_str())),
        (ImportStatus::Error, Some("upstream_failed"))
    );
}

#[tokio::test]
async fn relative_next_urls_are_followed_on_the_base_origin() {
    for stream in [NEXT_URL, LINK_HEADER] {
        let fake = FakeRest::start(REST_TOKEN, 120).await;
        fake.set_relative_links(true);
        let h = rest_harness("", &fake, "", stream).await;
        assert_complete(&h.import("api", 10).await);
        assert_eq!(h.rows("rest_items"), 120);
        assert_eq!(fake.control.requests(), 3, "{:#?}", fake.control.log());
    }
}

/// RFC 9110 §5.3: a field sent as several field lines means their comma-joined list, and the `Link` field
/// (RFC 8288 §3) is a list; `rel="next"` may come on any line, here the last of three.
#[tokio::test]
async fn a_link_field_sent_as_several_lines_still_gives_the_next_page() {
    let fake = FakeRest::start(REST_TOKEN, 120).await;
    fake.set_separate_link_lines(true);
    let h = rest_harness("", &fake, "", LINK_HEADER).await;
    assert_complete(&h.import("api", 10).await);
    assert_eq!(h.rows("rest_items"), 120);
    assert_eq!(fake.control.requests(), 3, "{:#?}", fake.control.log());
}

/// A stream configured with a paging parameter the API does not take (`skip`; the fake's is `offset`) gets
/// the first page for every offset, and, without a total, no empty page ever ends the walk: the repeat
/// fails the stream instead of walking it forever.
#[tokio::test]
async fn an_api_that_answers_the_same_page_again_fails_the_walk_instead_of_looping() {
    let fake = FakeRest::start(REST_TOKEN, 120).await;
    let stream = OFFSET.replace(
        "style = \"offset\",",
        "style = \"offset\", offset_param = \"skip\",",
    );
    let h = rest_harness("", &fake, "", &stream).await;
    let states = h.import("api", 10).await;
    let s = &states[0];
    assert_eq!(
        (s.status, s.error_code.map(|c| c.as_str())),
        (ImportStatus::Error, Some("upstream_failed")),
        "{s:?}"
    );
    assert!(
        s.error.as_deref().unwrap().contains("same records"),
        "{s:?}"
    );
    assert_eq!(fake.control.requests(), 2, "{:#?}", fake.control.log());
    assert_eq!(h.rows("rest_items"), 50, "the first page is kept");
}

/// GitHub's primary rate limit (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api, and
/// best-practices-for-using-the-rest-api: "you should not retry your request until after the time specified
/// by the `x-ratelimit-reset` header"): the page that spends the window's last request is kept, and the
/// stream waits for the reset instead of asking for a page that would be refused.
#[tokio::test]
async fn a_page_that_spends_the_rate_limit_window_waits_for_its_reset_without_asking_again() {
    let fake = FakeRest::start(REST_TOKEN, 120).await;
    fake.set_rate_window(2, 2, || (SystemClock.now_ms() / 1000) as u64);
    let h = rest_harness("", &fake, "", LINK_HEADER).await;
    h.importer.start(USER, "api").await.unwrap();
    let limited = h.state("api", "items", ImportPhase::Initial).await;
    let (reset, refused) = fake.rate_window().unwrap();
    assert_eq!(
        (
            limited.status,
            limited.processed,
            limited.rate_limit_remaining
        ),
        (ImportStatus::RateLimited, 100, Some(0)),
        "{limited:?}"
    );
    assert_eq!(limited.rate_limit_reset_at, Some(reset as i64 * 1000));
    assert_eq!(h.rows("rest_items"), 100);
    assert_eq!((fake.control.requests(), refused), (2, 0));
    // Until the reset, a step asks nothing.
    assert!(h.importer.step(USER, "api").await.unwrap().more);
    assert_eq!(fake.control.requests(), 2);
    let wait = reset as i64 * 1000 - SystemClock.now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(wait.max(0) as u64 + 50)).await;
    for _ in 0..5 {
        if !h.importer.step(USER, "api").await.unwrap().more {
            break;
        }
    }
    assert_complete(&[h.state("api", "items", ImportPhase::Initial).await]);
    assert_eq!(h.rows("rest_items"), 120);
    assert_eq!(
        (fake.control.requests(), fake.rate_window().unwrap().1),
        (3, 0),
        "no request was refused: {:#?}",
        fake.control.log()
    );
}

/// GitHub's secondary rate limit (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api):
/// a 403 whose message says so, without `retry-after` or `x-ratelimit-remaining: 0`, is waited out "for at
/// least one minute", not taken for a missing permission.
#[tokio::test]
async fn a_403_that_says_it_is_a_secondary_rate_limit_waits_a_minute() {
    let fake = FakeRest::start(REST_TOKEN, 120).await;
    let h = rest_harness("", &fake, "", LINK_HEADER).await;
    fake.control.answer_next(
        403,
        &[],
        json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
        }),
    );
    let before = SystemClock.now_ms();
    h.importer.start(USER, "api").await.unwrap();
    let after = SystemClock.now_ms();
    let s = h.state("api", "items", ImportPhase::Initial).await;
    assert_eq!(
        (s.status, s.error_code),
        (ImportStatus::RateLimited, None),
        "{s:?}"
    );
    let reset = s.rate_limit_reset_at.unwrap();
    assert!((before + 60_000..=after + 60_000).contains(&reset), "{s:?}");
}

/// Cursors that go round (`A` gives `B`, `B` gives `A` again): the walk fails at the first page it has
/// seen before instead of going round forever.
#[tokio::test]
async fn cursors_that_go_round_fail_the_walk_instead_of_looping() {
    let fake = FakeRest::start(REST_TOKEN, 0).await;
    let h = rest_harness("", &fake, "", CURSOR).await;
    for _ in 0..10 {
        for (id, next) in [(1, "A"), (2, "B")] {
            fake.control.answer_next(
                200,
                &[],
                json!({"items": [{"id": id, "name": format!("Item {id}")}], "meta": {"next_cursor": next}}),
            );
        }
    }
    let states = h.import("api", 10).await;
    let s = &states[0];
    assert_eq!(
        (s.status, s.error_code.map(|c| c.as_str())),
        (ImportStatus::Error, Some("upstream_failed")),
        "{s:?}"
    );
    assert_eq!(fake.control.requests(), 3, "{:#?}", fake.control.log());
    assert_eq!(h.rows("rest_items"), 2);
}

#[tokio::test]
async fn a_next_url_on_another_origin_is_never_followed() {
    for stream in [NEXT_URL, LINK_HEADER] {
        let elsewhere = FakeRest::start(REST_TOKEN, 10).await;
        let fake = FakeRest::start(REST_TOKEN, 120).await;
        fake.send_next_links_to(Some(elsewhere.base_url()));
        let h = rest_harness("", &fake, "", stream).await;
        let states = h.import("api", 10).await;
        let s = &states[0];
        assert_eq!(
            (s.status, s.error_code.map(|c| c.as_str())),
            (ImportStatus::Error, Some("upstream_failed")),
            "{s:?}"
        );
        assert!(
            s.error.as_deref().unwrap().contains("not followed"),
            "{s:?}"
        );
        assert_eq!(
            elsewhere.control.requests(),
            0,
            "the credential never left the source"
        );
        assert_eq!(fake.control.requests(), 1);
        assert_eq!(
            h.rows("rest_items"),
            0,
            "a page whose next url is refused is not applied"
        );
    }
}

#[tokio::test]
async fn the_rest_incremental_walk_stops_at_the_last_walks_newest_record() {
    for stream in [OFFSET_TOTAL, LINK_HEADER, CURSOR] {
        let stream = format!("{stream}\nnewest_first_by = \"/updated_at\"");
        let fake = FakeRest::start(REST_TOKEN, 500).await;
        let h = rest_harness("", &fake, "", &stream).await;
        assert_complete(&h.import("api", 20).await);
        let sequence = h.sequence();
        fake.items.lock().unwrap().add(7);
        let before = fake.control.log().len();
        h.import("api", 10).await;
        let requests = requests_since(&fake.control, before);
        assert_eq!(requests.len(), 1, "{stream}: {requests:#?}");
        let incremental = h.state("api", "items", ImportPhase::Incremental).await;
        assert_eq!(
            (incremental.status, incremental.processed),
            (ImportStatus::Success, 7),
            "{incremental:?}"
        );
        assert_eq!(h.rows("rest_items"), 507);
        assert_eq!(h.sequence(), sequence + 7);
        // And again: only what is new since that walk.
        fake.items.lock().unwrap().add(2);
        h.import("api", 10).await;
        assert_eq!(
            h.state("api", "items", ImportPhase::Incremental)
                .await
                .processed,
            2
        );
    }
}

#[tokio::test]
async fn an_upstream_change_moves_the_sequence_only_for_the_changed_row() {
    let fake = FakeRest::start(REST_TOKEN, 800).await;
    let h = rest_harness("", &fake, "", CURSOR).await;
    assert_complete(&h.import("api", 20).await);
    let sequence = h.sequence();
    // A full walk of an unchanged upstream changes nothing.
    assert_complete(&h.import("api", 20).await);
    assert_eq!(h.sequence(), sequence);
    fake.items.lock().unwrap().rename(321, "Renamed");
    h.importer.reset(super::USER, "api").await.unwrap();
    h.import("api", 20).await;
    assert_complete(&[h.state("api", "items", ImportPhase::Initial).await]);
    assert_eq!(h.sequence(), sequence + 1);
    assert_eq!(h.table("rest_items")["321"]["name"], "Renamed");
    assert_eq!(h.rows("rest_items"), 800);
}

#[tokio::test]
async fn requests_per_second_spaces_the_requests_of_a_walk() {
    let fake = FakeRest::start(REST_TOKEN, 500).await;
    let sources = rest_source(&fake, "", OFFSET_TOTAL).replace(
        "kind = \"rest\"\n",
        "kind = \"rest\"\nrequests_per_second = 20\n",
    );
    let h = harness("", &sources, &[("api", rest_credential())]).await;
    let started = std::time::Instant::now();
    assert_complete(&h.import("api", 10).await);
    let took = started.elapsed();
    assert_eq!(fake.control.requests(), 10);
    assert!(
        took >= std::time::Duration::from_millis(9 * 50 - 10),
        "10 requests at 20 per second span 450 ms, took {took:?}"
    );
}
