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
        s["processed"].as_u64() >= Some(500)
    })
    .await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    assert_ne!(mid["status"], "success", "killed mid-import: {mid}");
    let requests_at_kill = fake.control.requests();

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
    // The restarted server went on from the checkpoint: no page before it was fetched again. Pages fetched
    // but not committed before the kill (how many depends on how fast the disk commits) are fetched again;
    // on top, as before the kill, at most two requests that are not pages (the page in flight, a retry).
    let pages = TRACKS / 50;
    let committed_pages = mid["processed"].as_u64().unwrap() / 50;
    let after_restart = fake.control.requests() - requests_at_kill;
    assert!(
        after_restart <= pages - committed_pages + 2,
        "{after_restart} requests after the restart for {pages} pages, {committed_pages} committed before the kill"
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
