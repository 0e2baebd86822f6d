//! The import engine against fake Spotify and Steam APIs on 127.0.0.1: full walks, checkpoints, stop and
//! start, reset, rate limits, budgets, retries, incremental walks and credential handling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{SPOTIFY_TABLES, STEAM_TABLES, sqlite_store};
use serde_json::{Map, Value, json};
use syncline_core::{Clock as _, SystemClock};
use syncline_core::{ImportPhase, ImportState, ImportStatus};
use syncline_import::{Importer, ImportsConfig, StepReport};
use syncline_store::Store;
use syncline_testkit::fake_apis::{FakeSpotify, FakeSteam};

const TOKEN: &str = "spotify-token-s3cr3t";
const STEAM_KEY: &str = "steam-key-s3cr3t";
const USER: &str = "alice";

struct Harness {
    importer: Arc<Importer>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

/// An importer in call mode over a fresh SQLite store, with `extra` TOML appended to `[imports]`.
async fn harness(
    spotify: Option<&FakeSpotify>,
    steam: Option<&FakeSteam>,
    imports: &str,
) -> Harness {
    let (schema, store, dir) = sqlite_store(&[SPOTIFY_TABLES, STEAM_TABLES]);
    let mut toml_text = format!(
        "encryption_key = \"{}\"\nmode = \"call\"\npage_size = 50\n{imports}\n",
        syncline_import::Sealer::generate_key()
    );
    if let Some(s) = spotify {
        toml_text.push_str(&format!(
            "[sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nstreams = {{ saved_tracks = \"spotify_tracks\", saved_albums = \"spotify_albums\", followed_artists = \"spotify_artists\", playlists = \"spotify_playlists\" }}\n",
            s.base_url()
        ));
    }
    if let Some(s) = steam {
        toml_text.push_str(&format!(
            "[sources.steam]\nkind = \"steam\"\nbase_url = \"{}\"\nstreams = {{ owned_games = \"steam_games\", achievements = \"steam_achievements\" }}\n",
            s.base_url()
        ));
    }
    let config: ImportsConfig = toml::from_str(&toml_text).unwrap();
    let importer =
        Importer::from_config(&config, store.clone(), schema, Arc::new(SystemClock)).unwrap();
    if spotify.is_some() {
        importer
            .connect(USER, "spotify", object(json!({"access_token": TOKEN})))
            .await
            .unwrap();
    }
    if steam.is_some() {
        importer
            .connect(
                USER,
                "steam",
                object(json!({"api_key": STEAM_KEY, "steam_id": "76561197960287930"})),
            )
            .await
            .unwrap();
    }
    Harness {
        importer: Arc::new(importer),
        store,
        _dir: dir,
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

impl Harness {
    /// `start` (which runs one step in call mode), then steps until nothing is pending; at most `max` steps.
    async fn import(&self, source: &str, max: usize) -> Vec<ImportState> {
        self.importer.start(USER, source).await.unwrap();
        self.drain(source, max).await
    }

    async fn drain(&self, source: &str, max: usize) -> Vec<ImportState> {
        for _ in 0..max {
            let report = self.importer.step(USER, source).await.unwrap();
            if !report.more {
                return self.importer.status(USER, source).await.unwrap();
            }
        }
        panic!("{source} still pending after {max} steps");
    }

    fn rows(&self, table: &str) -> u64 {
        self.store.user_stats(USER).unwrap().tables[table].records
    }

    fn sequence(&self) -> i64 {
        self.store.user_stats(USER).unwrap().sequence
    }

    async fn state(&self, source: &str, stream: &str, phase: ImportPhase) -> ImportState {
        self.importer
            .status(USER, source)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.stream == stream && s.phase == phase)
            .unwrap()
    }
}

fn assert_complete(states: &[ImportState]) {
    for s in states {
        assert_eq!(s.status, ImportStatus::Success, "{s:?}");
        assert_eq!(
            (s.progress, s.is_complete, s.checkpoint.as_deref()),
            (100, true, None),
            "{s:?}"
        );
        if let Some(total) = s.total_estimated {
            assert_eq!(s.processed, total, "{s:?}");
        }
    }
}

#[tokio::test]
async fn a_full_import_brings_every_item_of_every_spotify_stream() {
    let fake = FakeSpotify::start(TOKEN, 3_000, 400, 1_234, 120).await;
    let h = harness(Some(&fake), None, "").await;
    let states = h.import("spotify", 10).await;
    assert_eq!(states.len(), 4);
    assert_complete(&states);
    assert_eq!(h.rows("spotify_tracks"), 3_000);
    assert_eq!(h.rows("spotify_albums"), 400);
    assert_eq!(h.rows("spotify_artists"), 1_234);
    assert_eq!(h.rows("spotify_playlists"), 120);
    // One request per page of 50, plus nothing else.
    assert_eq!(fake.control.requests(), 60 + 8 + 25 + 3);
}

/// Every row of `table` in the store, by id.
fn pulled(store: &Arc<dyn Store>, table: &str) -> std::collections::BTreeMap<String, Value> {
    let mut out = Vec::new();
    let request = serde_json::from_value(json!({})).unwrap();
    store.pull(USER, &request, &mut out).unwrap();
    let body: Value = serde_json::from_slice(&out).unwrap();
    body["changes"][table]["updated"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[tokio::test]
async fn spotify_old_and_february_2026_development_mode_shapes_import_alike() {
    for development_mode in [false, true] {
        let fake = FakeSpotify::start(TOKEN, 10, 5, 7, 60).await;
        if development_mode {
            fake.library.lock().unwrap().development_mode_2026();
        }
        let h = harness(Some(&fake), None, "").await;
        let states = h.import("spotify", 10).await;
        assert_complete(&states);
        assert_eq!(h.rows("spotify_playlists"), 60, "{development_mode}");
        assert_eq!(h.rows("spotify_artists"), 7, "{development_mode}");
        let playlists = pulled(&h.store, "spotify_playlists");
        assert!(
            playlists.values().all(|p| p["tracks_total"] == json!(12)),
            "{development_mode}: {:?}",
            playlists.values().next()
        );
        let artists = pulled(&h.store, "spotify_artists");
        let artist = artists.values().next().unwrap();
        assert_eq!(artist["genres"], json!("indie, pop"));
        assert_eq!(
            artist["popularity"].is_null(),
            development_mode,
            "{development_mode}: {artist}"
        );
    }
}

#[tokio::test]
async fn a_full_steam_import_brings_games_and_their_achievements() {
    let fake = FakeSteam::start(STEAM_KEY, "76561197960287930", 90, 12).await;
    let h = harness(None, Some(&fake), "").await;
    let states = h.import("steam", 10).await;
    assert_complete(&states);
    assert_eq!(h.rows("steam_games"), 90);
    assert_eq!(
        h.rows("steam_achievements"),
        60 * 12,
        "games without stats have none"
    );
}

#[tokio::test]
async fn stop_then_start_resumes_from_the_checkpoint() {
    let fake = FakeSpotify::start(TOKEN, 2_000, 0, 0, 0).await;
    fake.control.set_latency(Duration::from_millis(10));
    let h = harness(Some(&fake), None, "step_budget_ms = 150").await;
    h.importer.start(USER, "spotify").await.unwrap();
    let stopped = h.importer.stop(USER, "spotify").await.unwrap();
    let tracks = stopped
        .iter()
        .find(|s| s.stream == "saved_tracks")
        .unwrap()
        .clone();
    assert_eq!(tracks.status, ImportStatus::Stopped);
    assert!(
        tracks.processed > 0 && tracks.processed < 2_000,
        "{tracks:?}"
    );
    assert_eq!(tracks.checkpoint, Some(tracks.processed.to_string()));
    assert_eq!(
        h.rows("spotify_tracks"),
        tracks.processed,
        "rows and checkpoint move together"
    );
    // A stopped import takes no steps.
    let requests = fake.control.requests();
    assert_eq!(
        h.importer.step(USER, "spotify").await.unwrap(),
        StepReport::default()
    );
    assert_eq!(fake.control.requests(), requests);
    let states = h.import("spotify", 100).await;
    assert_complete(&states);
    assert_eq!(h.rows("spotify_tracks"), 2_000);
    let requests = fake.control.requests();
    // 40 pages of tracks and one empty page of each other stream; a step whose budget ends mid-fetch drops
    // that page, which the next step fetches again from the same checkpoint.
    assert!((43..43 + 30).contains(&requests), "{requests} requests");
}

#[tokio::test]
async fn reset_starts_over_and_an_unchanged_upstream_moves_nothing() {
    let fake = FakeSpotify::start(TOKEN, 500, 10, 10, 10).await;
    let h = harness(Some(&fake), None, "").await;
    assert_complete(&h.import("spotify", 10).await);
    let sequence = h.sequence();
    let reset = h.importer.reset(USER, "spotify").await.unwrap();
    assert!(
        reset
            .iter()
            .all(|s| s.status == ImportStatus::None && s.processed == 0 && s.checkpoint.is_none())
    );
    let states = h.import("spotify", 10).await;
    assert_complete(&states);
    assert!(
        states.iter().all(|s| s.phase == ImportPhase::Initial),
        "a reset walks the initial phase again"
    );
    assert_eq!(
        h.sequence(),
        sequence,
        "re-importing unchanged items changes nothing"
    );
    // An upstream change touches exactly the changed row.
    let id = fake.library.lock().unwrap().tracks[321]["track"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    fake.library.lock().unwrap().rename_track(&id, "Renamed");
    h.importer.reset(USER, "spotify").await.unwrap();
    assert_complete(&h.import("spotify", 10).await);
    assert_eq!(h.sequence(), sequence + 1);
    assert_eq!(h.rows("spotify_tracks"), 500);
}

#[tokio::test]
async fn the_incremental_phase_fetches_only_new_items() {
    let fake = FakeSpotify::start(TOKEN, 1_000, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    assert_complete(&h.import("spotify", 10).await);
    let new_ids = fake.library.lock().unwrap().save_tracks(7);
    let before = fake.control.requests();
    let sequence = h.sequence();
    h.import("spotify", 10).await;
    let incremental = h
        .state("spotify", "saved_tracks", ImportPhase::Incremental)
        .await;
    assert_eq!(incremental.status, ImportStatus::Success);
    assert_eq!(incremental.processed, 7, "{incremental:?}");
    assert_eq!(
        fake.control.requests() - before,
        1 + 3,
        "one page of tracks; the empty streams one each"
    );
    assert_eq!(h.rows("spotify_tracks"), 1_007);
    assert_eq!(h.sequence(), sequence + 7);
    // The next incremental walk starts from the newest of those.
    fake.library.lock().unwrap().save_tracks(2);
    h.import("spotify", 10).await;
    assert_eq!(
        h.state("spotify", "saved_tracks", ImportPhase::Incremental)
            .await
            .processed,
        2
    );
    assert_eq!(h.rows("spotify_tracks"), 1_009);
    assert!(!new_ids.is_empty());
}

#[tokio::test]
async fn a_step_never_runs_past_its_budget() {
    const BUDGET: Duration = Duration::from_millis(300);
    let fake = FakeSpotify::start(TOKEN, 5_000, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "step_budget_ms = 300").await;
    h.importer.start(USER, "spotify").await.unwrap();
    // What this machine needs for one page (fetch and commit), measured now: a step may end later than its
    // budget by the commit of the page that arrived before it ran out and the save of the paused state, and
    // on a loaded 2-core machine that is no constant (a fixed 250 ms margin once failed there).
    let report = h.importer.step(USER, "spotify").await.unwrap();
    assert!(report.batches > 0, "{report:?}");
    let page = BUDGET / report.batches as u32;
    let slack = (page * 3).max(Duration::from_millis(250));

    fake.control.set_latency(Duration::from_millis(40));
    for _ in 0..3 {
        let asked = fake.control.requests();
        let started = Instant::now();
        let report = h.importer.step(USER, "spotify").await.unwrap();
        let took = started.elapsed();
        assert!(report.budget_exhausted && report.more, "{report:?}");
        // No page is asked for once the budget is spent: each takes at least its 40 ms of latency, so at
        // most 300 / 40 of them start within the budget, plus the one it gives up. This part holds however
        // loaded the machine is.
        let pages = fake.control.requests() - asked;
        assert!(pages <= 300 / 40 + 1, "{pages} pages asked in one step");
        assert!(
            took < BUDGET + slack,
            "a step took {took:?} ({page:?} a page)"
        );
    }
    // A source slower than the whole budget (it never answers): the step gives up the page in flight, on
    // time, with nothing to commit.
    fake.control.hold_after(fake.control.requests());
    let before = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    let started = Instant::now();
    let report = h.importer.step(USER, "spotify").await.unwrap();
    let took = started.elapsed();
    assert!(
        took < BUDGET + slack,
        "a step took {took:?} ({page:?} a page)"
    );
    assert_eq!((report.items, report.budget_exhausted), (0, true));
    let after = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    assert_eq!(after.checkpoint, before.checkpoint, "nothing half-applied");
    assert_eq!(h.rows("spotify_tracks"), after.processed);
    fake.control.release();
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let fake = FakeSpotify::start(TOKEN, 300, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    fake.control.fail_next(2);
    assert_complete(&h.import("spotify", 10).await);
    assert_eq!(h.rows("spotify_tracks"), 300);
    assert_eq!(fake.control.requests(), 2 + 6 + 3);
}

/// A 408 (RFC 9110 §15.5.9: the client may repeat the request) and a 502 are retried like a 503.
#[tokio::test]
async fn a_408_or_a_502_is_retried_too() {
    let fake = FakeSpotify::start(TOKEN, 120, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    fake.control.answer_next(
        408,
        &[],
        json!({"error": {"status": 408, "message": "Request timeout"}}),
    );
    fake.control.answer_next(
        502,
        &[],
        json!({"error": {"status": 502, "message": "Bad gateway"}}),
    );
    assert_complete(&h.import("spotify", 10).await);
    assert_eq!(h.rows("spotify_tracks"), 120);
}

#[tokio::test]
async fn a_rate_limit_holds_until_its_reset_time_and_the_runner_resumes_by_itself() {
    let fake = FakeSpotify::start(TOKEN, 400, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    fake.control.rate_limit_next(1, 1);
    let before = SystemClock.now_ms();
    h.importer.start(USER, "spotify").await.unwrap();
    let after = SystemClock.now_ms();
    let limited = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    assert_eq!(limited.status, ImportStatus::RateLimited);
    let reset = limited.rate_limit_reset_at.unwrap();
    assert!(
        reset >= before + 1_000 && reset <= after + 1_000,
        "Retry-After: 1 second"
    );
    assert!(limited.rate_limit_hit_at.is_some());
    // Before the reset time a step does not ask the source again.
    let requests = fake.control.requests();
    let report = h.importer.step(USER, "spotify").await.unwrap();
    assert!(report.more && report.items == 0);
    assert_eq!(fake.control.requests(), requests);
    // The background runner wakes at the reset time and finishes.
    let mut changes = h.importer.subscribe();
    let runner = tokio::spawn(h.importer.clone().run());
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = h
                .state("spotify", "saved_tracks", ImportPhase::Initial)
                .await;
            if s.status == ImportStatus::Success {
                return s;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the runner resumes after the reset time");
    runner.abort();
    assert!(SystemClock.now_ms() >= reset);
    assert_eq!((done.processed, done.rate_limit_reset_at), (400, None));
    assert_eq!(h.rows("spotify_tracks"), 400);
}

/// A 429 on the fourth page of a walk (Spotify's rate limit: `429` with `Retry-After` in seconds,
/// developer.spotify.com/documentation/web-api/concepts/rate-limits), and a 503 with `Retry-After` on the
/// sixth (RFC 9110 §10.2.3): each time the stream waits until the reset with the pages before it kept, then
/// goes on from its checkpoint, and its progress never goes back and reaches 100 only at the end.
#[tokio::test]
async fn a_rate_limit_mid_walk_resumes_from_the_checkpoint_and_progress_never_goes_back() {
    let fake = FakeSpotify::start(TOKEN, 400, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    let mut progress = Vec::new();
    for (pages, status) in [(3u64, 429u16), (1, 503)] {
        // The request after `pages` more pages waits, and then gets the limit.
        let answered = fake.control.requests() + pages;
        fake.control.hold_after(answered);
        let importer = h.importer.clone();
        let first = status == 429;
        let walk = tokio::spawn(async move {
            if first {
                importer.start(USER, "spotify").await.unwrap();
            } else {
                importer.step(USER, "spotify").await.unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(20), async {
            while fake.control.requests() <= answered {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the walk reaches the held page");
        fake.control.answer_next(
            status,
            &[("retry-after", "1")],
            json!({"error": {"status": status, "message": "API rate limit exceeded"}}),
        );
        fake.control.release();
        walk.await.unwrap();
        let limited = h
            .state("spotify", "saved_tracks", ImportPhase::Initial)
            .await;
        let kept = if first { 150 } else { 200 };
        assert_eq!(limited.status, ImportStatus::RateLimited, "{limited:?}");
        assert_eq!(
            (limited.checkpoint.clone(), limited.processed),
            (Some(kept.to_string()), kept),
            "{limited:?}"
        );
        assert_eq!(h.rows("spotify_tracks"), kept);
        let wait = limited.rate_limit_reset_at.unwrap() - limited.rate_limit_hit_at.unwrap();
        assert_eq!(wait, 1_000, "Retry-After: 1");
        progress.push(limited.progress);
        tokio::time::sleep(Duration::from_millis(1_050)).await;
    }
    for _ in 0..10 {
        if !h.importer.step(USER, "spotify").await.unwrap().more {
            break;
        }
    }
    let done = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    assert_eq!((done.status, done.processed), (ImportStatus::Success, 400));
    progress.push(done.progress);
    assert_eq!(progress, [37, 50, 100]);
    assert_eq!(h.rows("spotify_tracks"), 400);
    // Each page was asked once, and the limited ones once more: never from the start again.
    let offsets: Vec<String> = fake
        .control
        .log()
        .iter()
        .filter(|r| r.starts_with("/v1/me/tracks"))
        .filter_map(|r| {
            r.split("offset=")
                .nth(1)
                .map(|o| o.split('&').next().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(
        offsets,
        [
            "0", "50", "100", "150", "150", "200", "200", "250", "300", "350"
        ],
        "{:#?}",
        fake.control.log()
    );
}

/// Stopped while it waits out Spotify's `Retry-After`, then started again: the walk waits for the same
/// reset, without asking the API before it.
#[tokio::test]
async fn a_walk_stopped_during_a_rate_limit_wait_and_started_again_still_waits() {
    let fake = FakeSpotify::start(TOKEN, 120, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    fake.control.rate_limit_next(1, 30);
    h.importer.start(USER, "spotify").await.unwrap();
    let limited = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    assert_eq!(limited.status, ImportStatus::RateLimited);
    // The other streams completed, and walk again at the next start: only saved tracks are limited.
    let tracks = || {
        fake.control
            .log()
            .iter()
            .filter(|r| r.starts_with("/v1/me/tracks"))
            .count()
    };
    let requests = tracks();
    h.importer.stop(USER, "spotify").await.unwrap();
    let stopped = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    assert_eq!(stopped.status, ImportStatus::Stopped);
    h.importer.start(USER, "spotify").await.unwrap();
    let again = h
        .state("spotify", "saved_tracks", ImportPhase::Initial)
        .await;
    assert_eq!(again.status, ImportStatus::RateLimited, "{again:?}");
    assert_eq!(again.rate_limit_reset_at, limited.rate_limit_reset_at);
    assert_eq!(tracks(), requests, "nothing asked before the reset");
}

/// Spotify's paging object (developer.spotify.com/documentation/web-api/reference/get-users-saved-tracks):
/// `next` is the next page's url, null on the last. A page that names a `next` but brings no item (or a
/// followed-artists `after` cursor that does not move) ends the walk instead of asking for the same page
/// forever.
#[tokio::test]
async fn a_spotify_page_that_does_not_move_the_walk_ends_it() {
    let fake = FakeSpotify::start(TOKEN, 0, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    let next = format!("{}/v1/me/tracks?offset=0&limit=50", fake.base_url());
    fake.control.answer_next(
        200,
        &[],
        json!({"href": next, "items": [], "limit": 50, "next": next, "offset": 0, "previous": null, "total": 0}),
    );
    let albums = format!("{}/v1/me/albums?offset=0&limit=50", fake.base_url());
    fake.control.answer_next(
        200,
        &[],
        json!({"href": albums, "items": [], "limit": 50, "next": null, "offset": 0, "previous": null, "total": 0}),
    );
    // Followed artists: the second page gives back the `after` it was asked with.
    let following = format!("{}/v1/me/following?type=artist&after=a1", fake.base_url());
    for id in ["a1", "a2"] {
        fake.control.answer_next(
            200,
            &[],
            json!({"artists": {
                "href": following, "limit": 50, "next": following, "total": 2,
                "cursors": {"after": "a1"},
                "items": [{"id": id, "name": "Artist", "genres": [], "popularity": 1}],
            }}),
        );
    }
    let states = h.import("spotify", 5).await;
    assert_complete(&states);
    let log = fake.control.log();
    let asked = |path: &str| log.iter().filter(|r| r.starts_with(path)).count();
    assert_eq!(asked("/v1/me/tracks"), 1, "{log:#?}");
    assert_eq!(asked("/v1/me/following"), 2, "{log:#?}");
}

#[tokio::test]
async fn an_expired_credential_is_a_clear_auth_expired_error_without_the_credential() {
    let fake = FakeSpotify::start(TOKEN, 100, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    fake.control.set_expired(true);
    let states = h.import("spotify", 3).await;
    for s in &states {
        assert_eq!(s.status, ImportStatus::Error, "{s:?}");
        assert_eq!(s.error_code.map(|c| c.as_str()), Some("auth_expired"));
        let text = serde_json::to_string(s).unwrap();
        assert!(!text.contains(TOKEN), "{text}");
    }
    fake.control.set_expired(false);
    assert_complete(&h.import("spotify", 3).await);
}

#[tokio::test]
async fn credentials_are_sealed_at_rest_and_required_to_start() {
    let fake = FakeSpotify::start(TOKEN, 1, 0, 0, 0).await;
    let h = harness(Some(&fake), None, "").await;
    let sealed = h.store.get_connection(USER, "spotify").unwrap().unwrap();
    assert!(!sealed.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
    assert!(format!("{:?}", h.importer).len() < 200);
    let err = h.importer.start("bob", "spotify").await.unwrap_err();
    assert!(err.to_string().contains("no connection"), "{err}");
    assert!(h.importer.start(USER, "lastfm").await.is_err());
    assert!(h.importer.disconnect(USER, "spotify").await.unwrap());
    assert!(h.importer.start(USER, "spotify").await.is_err());
}
