//! An import survives `kill -9`: a `syncline serve` process is killed in the middle of an import from a fake
//! Spotify, restarted on the same database, resumes from its checkpoint by itself and ends with exactly the
//! expected rows, each page applied once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use syncline_testkit::fake_apis::FakeSpotify;

use crate::support::serve;

const SECRET: &str = "imports-secret-imports-secret-imports";
const TOKEN: &str = "spotify-token-kill-test";
const TRACKS: u64 = 3_000;

fn token(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncline"))
        .args(["token", "--user", "alice", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn tracks_state(http: &reqwest::Client, url: &str, token: &str) -> Value {
    let body: Value = http
        .get(format!("{url}/v1/imports/spotify/status"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["streams"][0].clone()
}

/// Polls the status until `done` holds; bounded.
async fn wait_for(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..3_000 {
        let state = tracks_state(http, url, token).await;
        if done(&state) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the import did not get there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_mid_walk_resumes_from_its_checkpoint_and_applies_every_page_once() {
    let fake = FakeSpotify::start(TOKEN, TRACKS as usize, 0, 0, 0).await;
    fake.control.set_latency(Duration::from_millis(15));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("syncline.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://{}\"\n[auth]\njwt_secret = \"{SECRET}\"\n\
             [imports]\nencryption_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nstep_budget_ms = 2000\nlease_ms = 2000\n\
             [imports.sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nstreams = {{ saved_tracks = \"spotify_tracks\" }}\n\
             [tables.spotify_tracks]\ncolumns = {{ name = \"string\", added_at = \"string\" }}\n",
            dir.path().join("s.db").display(),
            fake.base_url()
        ),
    )
    .unwrap();
    let token = token(&config);
    let http = reqwest::Client::new();
    let mut server = serve(&config);
    let put = http
        .put(format!("{}/v1/connections/spotify", server.url))
        .bearer_auth(&token)
        .body(json!({"access_token": TOKEN}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let started = http
        .post(format!("{}/v1/imports/spotify/start", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let mid = wait_for(&http, &server.url, &token, |s| {
        s["processed"].as_u64() >= Some(500)
    })
    .await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    assert_ne!(mid["status"], "success", "killed mid-import: {mid}");
    let requests_at_kill = fake.control.requests();

    let server = serve(&config);
    let done = wait_for(&http, &server.url, &token, |s| s["status"] == "success").await;
    assert_eq!(done["processed"], TRACKS, "every page counted once: {done}");
    let pull: Value = http
        .post(format!("{}/v1/sync/pull", server.url))
        .bearer_auth(&token)
        .body(json!({"lastPulledAt": null}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = pull["changes"]["spotify_tracks"]["updated"]
        .as_array()
        .unwrap();
    assert_eq!(rows.len() as u64, TRACKS);
    // The restarted server went on from the checkpoint: no page before it was fetched again.
    let pages = TRACKS / 50;
    assert!(
        fake.control.requests() <= pages + 2,
        "{} requests for {pages} pages ({requests_at_kill} before the kill)",
        fake.control.requests()
    );
}
