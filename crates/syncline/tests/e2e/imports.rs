//! An import survives `kill -9`: a `syncline serve` process is killed in the middle of an import from a fake
//! Spotify, restarted on the same database, resumes from its checkpoint by itself and ends with exactly the
//! expected rows, each page applied once. And HTTPS as the binary does it: the fake is served with a throwaway
//! CA, trusted through `SSL_CERT_FILE`; without it the import ends in `tls_failed`, naming the host.

use std::time::Duration;

use serde_json::json;
use syncline_testkit::fake_apis::FakeSpotify;

use crate::support::{
    cli_token, connect, ids, imports_section, post_json, serve, serve_trusting, spotify_source,
    sqlite_url, start_import, wait_for_import, write_config,
};

const SECRET: &str = "imports-secret-imports-secret-imports";
const TOKEN: &str = "spotify-token-kill-test";
const TRACKS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_mid_walk_resumes_from_its_checkpoint_and_applies_every_page_once() {
    let fake = FakeSpotify::start(TOKEN, TRACKS as usize, 0, 0, 0).await;
    fake.control.set_latency(Duration::from_millis(15));
    // The walk stops at a known page whatever the machine's speed: the fake answers the first 12 pages and
    // holds the 13th unanswered, so the kill lands mid-walk with exactly 600 tracks committed (a kill
    // timed off a progress poll could come after the walk had finished on a fast run, or mid-commit).
    const HELD_AFTER: u64 = 12;
    fake.control.hold_after(HELD_AFTER);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &sqlite_url(&dir.path().join("s.db")),
        SECRET,
        // A step longer than the walk: a step whose budget ends mid-fetch abandons that fetch (the next
        // step asks again), so with short steps the count below would also depend on how fast each page
        // is; this way the only page asked twice is the one in flight at the kill.
        &(imports_section("step_budget_ms = 20000\nlease_ms = 2000")
            + &spotify_source(fake.base_url())),
    );
    let token = cli_token(&config);
    let mut server = serve(&config);
    let (put, _) = connect(
        &server.url,
        &token,
        "spotify",
        json!({"access_token": TOKEN}),
    )
    .await;
    assert_eq!(put, 204);
    assert_eq!(start_import(&server.url, &token, "spotify").await, 202);
    let mid = wait_for_import(&server.url, &token, "spotify", |s| {
        s["processed"].as_u64() >= Some(HELD_AFTER * 50)
    })
    .await;
    // The 13th page is asked for (and held) before the walk can go on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.control.requests() <= HELD_AFTER {
        assert!(
            std::time::Instant::now() < deadline,
            "the 13th page was never asked for"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    assert_eq!(
        (mid["status"].as_str(), mid["processed"].as_u64()),
        (Some("running"), Some(HELD_AFTER * 50)),
        "killed mid-import: {mid}"
    );
    let requests_at_kill = fake.control.requests();
    assert_eq!(
        requests_at_kill,
        HELD_AFTER + 1,
        "twelve pages and the held one"
    );
    fake.control.release();

    let server = serve(&config);
    let done = wait_for_import(&server.url, &token, "spotify", |s| s["status"] == "success").await;
    assert_eq!(done["processed"], TRACKS, "every page counted once: {done}");
    let pull = post_json(
        &format!("{}/v1/sync/pull", server.url),
        &token,
        &json!({"lastPulledAt": null}),
    )
    .await;
    assert_eq!(ids(&pull, "spotify_tracks").len() as u64, TRACKS);
    // The restarted server went on from the checkpoint: no page before it was fetched again. The page held
    // at the kill is asked again, then the rest: one request per page not committed before the kill.
    let pages = TRACKS / 50;
    let after_restart = fake.control.requests() - requests_at_kill;
    assert_eq!(
        after_restart,
        pages - HELD_AFTER,
        "requests after the restart for {pages} pages, {HELD_AFTER} committed before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sources_work_with_ssl_cert_file_and_fail_as_tls_failed_without_it() {
    let fake = FakeSpotify::start(TOKEN, 120, 0, 0, 0).await;
    assert!(fake.base_url().starts_with("https://"));
    let host = fake.base_url().trim_start_matches("https://").to_string();
    for trusted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &sqlite_url(&dir.path().join("s.db")),
            SECRET,
            &(imports_section("") + &spotify_source(fake.base_url())),
        );
        let token = cli_token(&config);
        let ca = syncline_testkit::FakeTls::shared().ca_file();
        let server = serve_trusting(&config, trusted.then_some(ca));
        let (put, _) = connect(
            &server.url,
            &token,
            "spotify",
            json!({"access_token": TOKEN}),
        )
        .await;
        assert_eq!(put, 204);
        assert_eq!(start_import(&server.url, &token, "spotify").await, 202);
        let end = wait_for_import(&server.url, &token, "spotify", |s| {
            s["status"] == "success" || s["status"] == "error"
        })
        .await;
        if trusted {
            assert_eq!(end["status"], "success", "{end}");
            assert_eq!(end["processed"], 120, "{end}");
        } else {
            assert_eq!(end["error_code"], "tls_failed", "{end}");
            let message = end["error"].as_str().unwrap();
            assert!(
                message.contains(&host) && message.contains("unknown issuer"),
                "{message}"
            );
        }
    }
}
