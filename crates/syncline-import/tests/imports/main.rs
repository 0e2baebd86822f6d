//! The import engine's integration tests, in one binary: the engine itself against fake Spotify and Steam
//! APIs (`engine`), leases across several engines on one store (`leases`), parallel streams (`parallel`);
//! and, here and in the connector modules, the PlayStation, Xbox and generic REST connectors and Steam's
//! incremental walk against their fakes on 127.0.0.1, through the [`Importer`] over a real SQLite file: full
//! walks with exact row and request counts, incremental walks that fetch only what changed (checked on the
//! fakes' request logs), upstream changes that move the sequence only for the changed rows, rate limits and
//! expired credentials. And the example import configurations, which must keep building.

mod engine;
mod examples;
mod leases;
mod oauth;
mod parallel;
mod playstation;
mod rest;
mod signals;
mod steam;
mod tls;
mod xbox;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use syncline_core::{Clock as _, SystemClock};
use syncline_core::{ImportPhase, ImportState, ImportStatus, Schema, TableConfig};
use syncline_import::{Importer, ImportsConfig};
use syncline_store::{SqliteStore, Store};
use syncline_testkit::fake_apis::{Control, FakePlayStation, FakeRest, FakeXbox};

const TABLES: &str = r#"
[psn_titles]
columns = { np_communication_id = "string", name = "string", platform = "string", icon_url = "string", progress = "number", earned_bronze = "number", earned_silver = "number", earned_gold = "number", earned_platinum = "number", defined_total = "number", last_updated = "string" }
[psn_trophies]
columns = { np_communication_id = "string", trophy_id = "number", trophy_type = "string", earned = "boolean", earned_at = "string", earned_rate = "number" }
[xbox_titles]
columns = { title_id = "string", name = "string", last_played = "string", current_achievements = "number", total_achievements = "number", current_gamerscore = "number", total_gamerscore = "number" }
[xbox_achievements]
columns = { title_id = "string", title_name = "string", achievement_id = "string", name = "string", progress_state = "string", unlocked_at = "string", gamerscore = "number" }
[rest_items]
columns = { name = "string", updated_at = "string", stars = "number", owner = "string" }
[rest_raw]
columns = { name = "string", stars = "number", owner = "json", tags = "json" }
"#;

/// The tables of a Spotify source's four streams.
const SPOTIFY_TABLES: &str = r#"
[spotify_tracks]
columns = { name = "string", album_id = "string", album_name = "string", artist_names = "string", duration_ms = "number", added_at = "string", user_id = "string" }
[spotify_albums]
columns = { name = "string", artist_names = "string", release_date = "string", total_tracks = "number", added_at = "string" }
[spotify_artists]
columns = { name = "string", genres = "string", popularity = "number" }
[spotify_playlists]
columns = { name = "string", owner_id = "string", snapshot_id = "string", tracks_total = "number" }
"#;

/// The tables of a Steam source's two streams.
const STEAM_TABLES: &str = r#"
[steam_games]
columns = { appid = "number", name = "string", playtime_forever = "number", rtime_last_played = "number" }
[steam_achievements]
columns = { appid = "number", apiname = "string", achieved = "boolean", unlocktime = "number" }
"#;

const USER: &str = "alice";
const PSN_TOKEN: &str = "psn-access-token-s3cr3t";
const XBOX_UHS: &str = "2535405290409000";
const XBOX_TOKEN: &str = "xsts-token-s3cr3t-eyJhbGciOi";
const XBOX_XUID: &str = "2533274800000000";
const REST_TOKEN: &str = "rest-api-token-s3cr3t";

/// An importer in call mode over a fresh SQLite file.
struct Harness {
    importer: Arc<Importer>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

/// `sources`: `[sources.NAME]` tables (TOML inside `[imports]`); `extra`: more `[imports]` keys (the page
/// size is 50 unless `extra` sets it);
/// `credentials`: the user's connection per source.
async fn harness(extra: &str, sources: &str, credentials: &[(&str, Value)]) -> Harness {
    let (schema, store, dir) = sqlite_store(&[TABLES, STEAM_TABLES]);
    let page_size = if extra.contains("page_size") {
        ""
    } else {
        "page_size = 50"
    };
    let text = format!(
        "encryption_key = \"{}\"\nmode = \"call\"\n{page_size}\n{extra}\n{sources}\n",
        syncline_import::Sealer::generate_key()
    );
    let config: ImportsConfig = toml::from_str(&text).unwrap();
    let importer =
        Importer::from_config(&config, store.clone(), schema, Arc::new(SystemClock)).unwrap();
    for (source, credential) in credentials {
        let Value::Object(fields) = credential.clone() else {
            panic!("a credential is a JSON object");
        };
        importer.connect(USER, source, fields).await.unwrap();
    }
    Harness {
        importer: Arc::new(importer),
        store,
        _dir: dir,
    }
}

/// A fresh SQLite store with the tables `tables` declare (TOML `[NAME]` tables, joined), its schema, and
/// the folder it lives in (removed when dropped).
fn sqlite_store(tables: &[&str]) -> (Arc<Schema>, Arc<dyn Store>, tempfile::TempDir) {
    let tables: BTreeMap<String, TableConfig> = toml::from_str(&tables.join("\n")).unwrap();
    let schema = Arc::new(Schema::from_config(&tables).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("s.db"), schema.clone()).unwrap());
    (schema, store, dir)
}

/// A harness with the PlayStation source on `fake`, connected with its access token.
async fn psn_harness(fake: &FakePlayStation) -> Harness {
    harness(
        "",
        &playstation_source(fake),
        &[("psn", json!({"access_token": PSN_TOKEN}))],
    )
    .await
}

fn playstation_source(fake: &FakePlayStation) -> String {
    format!(
        "[sources.psn]\nkind = \"playstation\"\nbase_url = \"{}\"\n\
         streams = {{ trophy_titles = \"psn_titles\", trophies = \"psn_trophies\" }}\n",
        fake.base_url()
    )
}

fn xbox_source(fake: &FakeXbox) -> String {
    format!(
        "[sources.xbox]\nkind = \"xbox\"\nbase_url = \"{}\"\n\
         streams = {{ titles = \"xbox_titles\", achievements = \"xbox_achievements\" }}\n",
        fake.base_url()
    )
}

fn xbox_credential() -> Value {
    json!({"uhs": XBOX_UHS, "token": XBOX_TOKEN, "xuid": XBOX_XUID})
}

/// A `rest` source named `api` with one stream `items` into `rest_items`. `rest`: more keys of its `rest`
/// table; `stream`: the stream's keys (path, records, pagination, ...), to which the column mapping of
/// `rest_items` is added.
fn rest_source(fake: &FakeRest, rest: &str, stream: &str) -> String {
    format!(
        "[sources.api]\nkind = \"rest\"\nbase_url = \"{}\"\nstreams = {{ items = \"rest_items\" }}\n\
         [sources.api.rest]\nauth = {{ header = \"Authorization\", value = \"Token {{api_token}}\" }}\n{rest}\n\
         [sources.api.rest.streams.items]\n\
         fields = {{ name = \"/name\", updated_at = \"/updated_at\", stars = \"/stars\", owner = \"/owner/login\" }}\n{stream}\n",
        fake.base_url()
    )
}

fn rest_credential() -> Value {
    json!({"api_token": REST_TOKEN})
}

impl Harness {
    /// `start` (which runs one step in call mode), then steps until nothing is pending; at most `max` steps.
    async fn import(&self, source: &str, max: usize) -> Vec<ImportState> {
        self.importer.start(USER, source).await.unwrap();
        for _ in 0..max {
            if !self.importer.step(USER, source).await.unwrap().more {
                return self.importer.status(USER, source).await.unwrap();
            }
        }
        panic!("{source} still pending after {max} steps");
    }

    fn rows(&self, table: &str) -> u64 {
        self.store
            .user_stats(USER)
            .unwrap()
            .tables
            .get(table)
            .map_or(0, |t| t.records)
    }

    fn sequence(&self) -> i64 {
        self.store.user_stats(USER).unwrap().sequence
    }

    /// Every row of `table`, by id.
    fn table(&self, table: &str) -> BTreeMap<String, Value> {
        let mut out = Vec::new();
        let request = serde_json::from_value(json!({})).unwrap();
        self.store.pull(USER, &request, &mut out).unwrap();
        let body: Value = serde_json::from_slice(&out).unwrap();
        body["changes"][table]["updated"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                body["changes"][table]["created"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
            .collect()
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
    assert!(!states.is_empty());
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

/// The requests a fake got since `before` of them.
fn requests_since(control: &Control, before: usize) -> Vec<String> {
    control.log()[before..].to_vec()
}

/// One source's failure cases: an expired credential fails every stream with `auth_expired` and no trace of
/// the secret; once it works again, a 429 holds the stream until `Retry-After` from now.
async fn check_expired_then_rate_limited(
    h: &Harness,
    control: &Control,
    source: &str,
    secret: &str,
) {
    control.set_expired(true);
    let states = h.import(source, 3).await;
    assert_eq!(states.len(), 2, "{states:?}");
    for s in &states {
        assert_eq!(s.status, ImportStatus::Error, "{source}: {s:?}");
        assert_eq!(
            s.error_code.map(|c| c.as_str()),
            Some("auth_expired"),
            "{source}"
        );
        let text = serde_json::to_string(s).unwrap();
        assert!(!text.contains(secret), "{source}: {text}");
    }
    control.set_expired(false);
    control.rate_limit_next(1, 7);
    let before = SystemClock.now_ms();
    h.importer.start(USER, source).await.unwrap();
    let after = SystemClock.now_ms();
    let states = h.importer.status(USER, source).await.unwrap();
    let limited = &states[0];
    assert_eq!(
        limited.status,
        ImportStatus::RateLimited,
        "{source}: {limited:?}"
    );
    let reset = limited.rate_limit_reset_at.unwrap();
    assert!(
        (before + 7_000..=after + 7_000).contains(&reset),
        "{source}: Retry-After: 7 -> reset at {reset}, asked between {before} and {after}"
    );
    // Until then, a step does not ask the source again.
    let requests = control.requests();
    let report = h.importer.step(USER, source).await.unwrap();
    assert!(report.more && report.items == 0, "{source}: {report:?}");
    assert_eq!(control.requests(), requests, "{source}");
}

#[tokio::test]
async fn every_new_connector_reports_expired_credentials_and_rate_limits() {
    let psn = FakePlayStation::start(PSN_TOKEN, 20, 3).await;
    let h = psn_harness(&psn).await;
    check_expired_then_rate_limited(&h, &psn.control, "psn", PSN_TOKEN).await;

    let xbox = FakeXbox::start(XBOX_UHS, XBOX_TOKEN, XBOX_XUID, 20, 3).await;
    let h = harness("", &xbox_source(&xbox), &[("xbox", xbox_credential())]).await;
    check_expired_then_rate_limited(&h, &xbox.control, "xbox", XBOX_TOKEN).await;

    let rest = FakeRest::start(REST_TOKEN, 20).await;
    let sources = format!(
        "[sources.api]\nkind = \"rest\"\nbase_url = \"{}\"\nstreams = {{ items = \"rest_items\", raw = \"rest_raw\" }}\n\
         [sources.api.rest]\nauth = {{ header = \"Authorization\", value = \"Token {{api_token}}\" }}\n\
         [sources.api.rest.streams.items]\npath = \"/cursor/items\"\nrecords = \"/items\"\n\
         pagination = {{ style = \"cursor\", cursor = \"/meta/next_cursor\", size_param = \"limit\" }}\n\
         [sources.api.rest.streams.raw]\npath = \"/single/items\"\nrecords = \"/items\"\n",
        rest.base_url()
    );
    let h = harness("", &sources, &[("api", rest_credential())]).await;
    check_expired_then_rate_limited(&h, &rest.control, "api", REST_TOKEN).await;
}

#[tokio::test]
async fn a_connection_without_the_fields_a_connector_needs_is_refused_naming_them() {
    let xbox = FakeXbox::start(XBOX_UHS, XBOX_TOKEN, XBOX_XUID, 1, 1).await;
    let h = harness("", &xbox_source(&xbox), &[]).await;
    let err = h
        .importer
        .connect(
            USER,
            "xbox",
            serde_json::from_value(json!({"uhs": XBOX_UHS, "xuid": XBOX_XUID})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, syncline_import::ImportError::InvalidCredential(m) if m.contains("refresh_token")),
        "{err:?}"
    );
    assert!(!h.importer.connected(USER, "xbox").await.unwrap());
    assert_eq!(
        xbox.control.requests(),
        0,
        "nothing is asked without a token"
    );
}
