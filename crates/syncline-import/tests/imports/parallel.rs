//! Streams walked in parallel (`parallel_streams`): every stream of a source makes progress within one
//! step, where one after the other the first stream would use up the whole budget; the result is the same.

use std::sync::Arc;
use std::time::Duration;

use crate::{SPOTIFY_TABLES, sqlite_store};
use serde_json::json;
use syncline_core::SystemClock;
use syncline_core::{ImportState, ImportStatus};
use syncline_import::{Importer, ImportsConfig};
use syncline_store::Store;
use syncline_testkit::fake_apis::FakeSpotify;

const USER: &str = "alice";
const TOKEN: &str = "spotify-token";

/// A call-mode importer with `parallel` streams at once and a 400 ms step budget, and its store.
async fn importer(
    fake: &FakeSpotify,
    parallel: usize,
) -> (Importer, Arc<dyn Store>, tempfile::TempDir) {
    let (schema, store, dir) = sqlite_store(&[SPOTIFY_TABLES]);
    let config: ImportsConfig = toml::from_str(&format!(
        r#"encryption_key = "{}"
mode = "call"
page_size = 50
step_budget_ms = 400
parallel_streams = {parallel}
[sources.spotify]
kind = "spotify"
base_url = "{}"
streams = {{ saved_tracks = "spotify_tracks", saved_albums = "spotify_albums", followed_artists = "spotify_artists", playlists = "spotify_playlists" }}
"#,
        syncline_import::Sealer::generate_key(),
        fake.base_url()
    ))
    .unwrap();
    let importer =
        Importer::from_config(&config, store.clone(), schema, Arc::new(SystemClock)).unwrap();
    importer
        .connect(
            USER,
            "spotify",
            json!({"access_token": TOKEN}).as_object().unwrap().clone(),
        )
        .await
        .unwrap();
    (importer, store, dir)
}

fn processed(states: &[ImportState]) -> Vec<(String, u64)> {
    states
        .iter()
        .map(|s| (s.stream.clone(), s.processed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_streams_all_progress_in_one_step_and_import_the_same_rows() {
    for parallel in [1, 4] {
        // 2,000 tracks at 20 ms a page take longer than one 400 ms step.
        let fake = FakeSpotify::start(TOKEN, 2_000, 300, 300, 300).await;
        fake.control.set_latency(Duration::from_millis(20));
        let (importer, store, _dir) = importer(&fake, parallel).await;
        let first = importer.start(USER, "spotify").await.unwrap();
        let moved = first.iter().filter(|s| s.processed > 0).count();
        if parallel == 1 {
            assert_eq!(moved, 1, "one after the other: {:?}", processed(&first));
            assert_eq!(first[0].stream, "saved_tracks", "priority order");
            assert!(first[0].processed > 0);
        } else {
            assert_eq!(moved, 4, "in parallel: {:?}", processed(&first));
        }
        for _ in 0..200 {
            if !importer.step(USER, "spotify").await.unwrap().more {
                break;
            }
        }
        let done = importer.status(USER, "spotify").await.unwrap();
        assert!(
            done.iter().all(|s| s.status == ImportStatus::Success),
            "{done:?}"
        );
        let tables = store.user_stats(USER).unwrap().tables;
        let counts: Vec<u64> = [
            "spotify_tracks",
            "spotify_albums",
            "spotify_artists",
            "spotify_playlists",
        ]
        .iter()
        .map(|t| tables[*t].records)
        .collect();
        assert_eq!(counts, [2_000, 300, 300, 300], "parallel = {parallel}");
    }
}
