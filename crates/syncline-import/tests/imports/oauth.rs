//! Connecting accounts and renewing their tokens, against the fake authorization servers and APIs on
//! 127.0.0.1: an access token that runs out mid-walk is renewed once and the walk completes; a refused
//! renewal ends in `error` with an `auth…` code after one token call per step; a rotated refresh token is
//! saved, so an engine started again over the same store renews with it; bare access tokens keep working;
//! the consent flow with PKCE and with Basic client authentication; PlayStation's NPSSO and Xbox's
//! refresh → user → XSTS chain, with its refusals.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use syncline_core::SystemClock;
use syncline_core::{ImportErrorCode, ImportState, ImportStatus};
use syncline_import::{ImportError, Importer, ImportsConfig};
use syncline_store::Store;
use syncline_testkit::fake_apis::{
    FakeAuthServer, FakePlayStation, FakeSpotify, FakeXbox, OAuthClientStyle, PSN_NPSSO,
};

use crate::{SPOTIFY_TABLES, TABLES, XBOX_UHS, XBOX_XUID, sqlite_store};

const USER: &str = "alice";
const CLIENT_ID: &str = "syncline-test-client";
const CLIENT_SECRET: &str = "syncline-test-secret";

/// An importer in call mode over a SQLite file, kept with its configuration so a test can start a second
/// engine over the same store.
struct Engine {
    importer: Arc<Importer>,
    store: Arc<dyn Store>,
    schema: Arc<syncline_core::Schema>,
    config: ImportsConfig,
    _dir: tempfile::TempDir,
}

fn engine(sources: &str) -> Engine {
    let (schema, store, dir) = sqlite_store(&[TABLES, SPOTIFY_TABLES]);
    let text = format!(
        "encryption_key = \"{}\"\nmode = \"call\"\npage_size = 50\n{sources}",
        syncline_import::Sealer::generate_key()
    );
    let config: ImportsConfig = toml::from_str(&text).unwrap();
    let importer = Importer::from_config(
        &config,
        store.clone(),
        schema.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    Engine {
        importer: Arc::new(importer),
        store,
        schema,
        config,
        _dir: dir,
    }
}

impl Engine {
    /// A new engine over the same store and key (a restart).
    fn restarted(&self) -> Arc<Importer> {
        Arc::new(
            Importer::from_config(
                &self.config,
                self.store.clone(),
                self.schema.clone(),
                Arc::new(SystemClock),
            )
            .unwrap(),
        )
    }

    fn rows(&self, table: &str) -> u64 {
        self.store
            .user_stats(USER)
            .unwrap()
            .tables
            .get(table)
            .map_or(0, |t| t.records)
    }
}

async fn import(importer: &Importer, source: &str) -> Vec<ImportState> {
    importer.start(USER, source).await.unwrap();
    for _ in 0..10 {
        if !importer.step(USER, source).await.unwrap().more {
            break;
        }
    }
    importer.status(USER, source).await.unwrap()
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// A Spotify source importing saved tracks only, renewing at `auth`.
fn spotify_source(api: &FakeSpotify, auth: &FakeAuthServer, secret: bool) -> String {
    let secret = if secret {
        format!("client_secret = \"{CLIENT_SECRET}\"\n")
    } else {
        String::new()
    };
    format!(
        "[sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nauth_url = \"{a}/authorize\"\n\
         token_url = \"{a}/api/token\"\nclient_id = \"{CLIENT_ID}\"\n{secret}\
         streams = {{ saved_tracks = \"spotify_tracks\" }}\n",
        api.base_url(),
        a = auth.base_url()
    )
}

/// A Spotify fake with `tracks` saved tracks and its authorization server (Basic client authentication).
async fn spotify(tracks: usize) -> (FakeSpotify, FakeAuthServer) {
    let api = FakeSpotify::start("never-pasted", tracks, 0, 0, 0).await;
    let auth = FakeAuthServer::start(
        api.control.clone(),
        CLIENT_ID,
        CLIENT_SECRET,
        OAuthClientStyle::Basic,
    )
    .await;
    (api, auth)
}

/// Connects USER's Spotify account with the credential fields `given`, as `PUT /v1/connections` would.
async fn connect_spotify(e: &Engine, given: Value) {
    e.importer
        .connect(USER, "spotify", object(given))
        .await
        .unwrap();
}

fn only(states: &[ImportState]) -> &ImportState {
    assert_eq!(states.len(), 1, "{states:?}");
    &states[0]
}

#[tokio::test]
async fn an_access_token_that_expires_mid_walk_is_renewed_and_the_walk_completes() {
    let (api, auth) = spotify(120).await;
    let e = engine(&spotify_source(&api, &auth, true));
    // Good for two pages of the three.
    api.control.issue("first-access", 2);
    let refresh = auth.mint_refresh_token();
    connect_spotify(
        &e,
        json!({"access_token": "first-access", "refresh_token": refresh}),
    )
    .await;
    let states = import(&e.importer, "spotify").await;
    let s = only(&states);
    assert_eq!(s.status, ImportStatus::Success, "{s:?}");
    assert_eq!(e.rows("spotify_tracks"), 120);
    assert_eq!(s.processed, 120);
    assert_eq!(auth.grants(), ["refresh_token"], "one renewal");
    assert_eq!(api.control.requests(), 4, "three pages and the refused one");
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_before_it_is_used() {
    let (api, auth) = spotify(120).await;
    let e = engine(&spotify_source(&api, &auth, true));
    api.control.issue("expiring-access", 100);
    let refresh = auth.mint_refresh_token();
    connect_spotify(
        &e,
        json!({"access_token": "expiring-access", "refresh_token": refresh, "expires_in": 20}),
    )
    .await;
    let states = import(&e.importer, "spotify").await;
    assert_eq!(only(&states).status, ImportStatus::Success);
    assert_eq!(e.rows("spotify_tracks"), 120);
    assert_eq!(auth.token_calls(), 1);
    assert_eq!(api.control.requests(), 3, "no request was refused");
}

#[tokio::test]
async fn a_refused_renewal_ends_in_error_asking_to_connect_again_without_looping() {
    let (api, auth) = spotify(120).await;
    let e = engine(&spotify_source(&api, &auth, true));
    api.control.issue("first-access", 1);
    let refresh = auth.mint_refresh_token();
    connect_spotify(
        &e,
        json!({"access_token": "first-access", "refresh_token": refresh}),
    )
    .await;
    auth.revoke();
    let states = import(&e.importer, "spotify").await;
    let s = only(&states);
    assert_eq!(s.status, ImportStatus::Error, "{s:?}");
    assert_eq!(s.error_code.map(|c| c.as_str()), Some("auth_revoked"));
    assert!(
        s.error.as_deref().unwrap().contains("connect again"),
        "{s:?}"
    );
    assert_eq!(e.rows("spotify_tracks"), 50, "the first page stays");
    assert_eq!(auth.token_calls(), 1);
    // Starting again tries once more, and stops there.
    let states = import(&e.importer, "spotify").await;
    assert_eq!(
        only(&states).error_code.map(|c| c.as_str()),
        Some("auth_revoked")
    );
    assert_eq!(auth.token_calls(), 2);
}

#[tokio::test]
async fn a_rotated_refresh_token_is_saved_and_used_after_a_restart() {
    let (api, auth) = spotify(60).await;
    let e = engine(&spotify_source(&api, &auth, true));
    api.control.issue("first-access", 1);
    let refresh = auth.mint_refresh_token();
    connect_spotify(
        &e,
        json!({"access_token": "first-access", "refresh_token": refresh}),
    )
    .await;
    let states = import(&e.importer, "spotify").await;
    assert_eq!(only(&states).status, ImportStatus::Success);
    assert_eq!(auth.token_calls(), 1);
    // The first refresh token is gone (rotated); every access token expires; the engine restarts.
    api.library.lock().unwrap().save_tracks(5);
    api.control.expire_issued();
    let restarted = e.restarted();
    let states = import(&restarted, "spotify").await;
    let s = states.last().unwrap();
    assert_eq!(s.status, ImportStatus::Success, "{states:?}");
    assert_eq!(e.rows("spotify_tracks"), 65);
    assert_eq!(auth.grants(), ["refresh_token", "refresh_token"]);
}

#[tokio::test]
async fn a_bare_access_token_works_until_it_expires() {
    let (api, auth) = spotify(120).await;
    let e = engine(&spotify_source(&api, &auth, true));
    api.control.issue("pasted-access", 2);
    connect_spotify(&e, json!({"access_token": "pasted-access"})).await;
    let states = import(&e.importer, "spotify").await;
    let s = only(&states);
    assert_eq!(e.rows("spotify_tracks"), 100, "two pages");
    assert_eq!(
        s.error_code.map(|c| c.as_str()),
        Some("auth_expired"),
        "{s:?}"
    );
    assert_eq!(auth.token_calls(), 0, "nothing to renew with");
}

/// Follows a consent url like a person who presses "Agree": the code and state of the redirect back.
async fn consent(url: &str) -> reqwest::Url {
    let http = syncline_http::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http.get(url).send().await.unwrap();
    assert_eq!(page.status(), 200, "{url}");
    let page = page.text().await.unwrap();
    let request = page
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let origin = reqwest::Url::parse(url).unwrap();
    let answer = http
        .post(origin.join("/authorize/answer").unwrap())
        .body(format!("request={request}&answer=agree"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 302);
    reqwest::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap()
}

async fn consent_flow(style: OAuthClientStyle) {
    let api = FakeSpotify::start("never-pasted", 70, 0, 0, 0).await;
    let auth = FakeAuthServer::start(api.control.clone(), CLIENT_ID, CLIENT_SECRET, style).await;
    let e = engine(&spotify_source(
        &api,
        &auth,
        style == OAuthClientStyle::Basic,
    ));
    let url = e
        .importer
        .authorize(
            USER,
            "spotify",
            "http://127.0.0.1:1/v1/connections/spotify/callback",
        )
        .unwrap();
    assert_eq!(
        url.contains("code_challenge_method=S256"),
        style == OAuthClientStyle::Pkce,
        "{url}"
    );
    let back = consent(&url).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    // A state from anywhere else is refused, and so is one for another source.
    let forged = e
        .importer
        .complete_authorization("spotify", "bm90LWEtc3RhdGU", &q["code"])
        .await;
    assert!(
        matches!(forged, Err(ImportError::ConsentState(_))),
        "{forged:?}"
    );
    let user = e
        .importer
        .complete_authorization("spotify", &q["state"], &q["code"])
        .await
        .unwrap();
    assert_eq!(user, USER);
    assert_eq!(auth.grants(), ["authorization_code"]);
    let states = import(&e.importer, "spotify").await;
    assert_eq!(only(&states).status, ImportStatus::Success);
    assert_eq!(e.rows("spotify_tracks"), 70);
}

#[tokio::test]
async fn the_consent_flow_connects_with_pkce_when_only_a_client_id_is_configured() {
    consent_flow(OAuthClientStyle::Pkce).await;
}

#[tokio::test]
async fn the_consent_flow_connects_with_basic_client_authentication_when_a_secret_is_configured() {
    consent_flow(OAuthClientStyle::Basic).await;
}

#[tokio::test]
async fn playstation_connects_from_an_npsso_and_renews_its_tokens() {
    let api = FakePlayStation::start("never-pasted", 3, 2).await;
    let auth = FakeAuthServer::playstation(api.control.clone()).await;
    auth.set_access_uses(2);
    let e = engine(&format!(
        "[sources.psn]\nkind = \"playstation\"\nbase_url = \"{}\"\nauth_base_url = \"{}/api/authz/v3/oauth\"\n\
         streams = {{ trophy_titles = \"psn_titles\", trophies = \"psn_trophies\" }}\n",
        api.base_url(),
        auth.base_url()
    ));
    let wrong = e
        .importer
        .connect(USER, "psn", object(json!({"npsso": "not-the-npsso"})))
        .await;
    assert!(
        matches!(
            wrong,
            Err(ImportError::Refused {
                code: ImportErrorCode::AuthNpssoRefused,
                ..
            })
        ),
        "{wrong:?}"
    );
    e.importer
        .connect(USER, "psn", object(json!({"npsso": PSN_NPSSO})))
        .await
        .unwrap();
    assert_eq!(auth.grants(), ["authorization_code"]);
    auth.set_access_uses(100);
    let states = import(&e.importer, "psn").await;
    assert!(
        states.iter().all(|s| s.status == ImportStatus::Success),
        "{states:?}"
    );
    assert_eq!((e.rows("psn_titles"), e.rows("psn_trophies")), (3, 6));
    assert_eq!(auth.grants(), ["authorization_code", "refresh_token"]);
}

#[tokio::test]
async fn xbox_connects_from_a_microsoft_refresh_token_through_user_and_xsts_tokens() {
    let api = FakeXbox::start(XBOX_UHS, "never-pasted", XBOX_XUID, 3, 2).await;
    let auth = FakeAuthServer::xbox(
        api.control.clone(),
        CLIENT_ID,
        CLIENT_SECRET,
        XBOX_UHS,
        XBOX_XUID,
    )
    .await;
    let a = auth.base_url();
    let e = engine(&format!(
        "[sources.xbox]\nkind = \"xbox\"\nbase_url = \"{}\"\ntoken_url = \"{a}/oauth20_token.srf\"\n\
         user_auth_url = \"{a}/user/authenticate\"\nxsts_url = \"{a}/xsts/authorize\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
         streams = {{ titles = \"xbox_titles\", achievements = \"xbox_achievements\" }}\n",
        api.base_url()
    ));
    auth.set_xerr(Some(2_148_916_238));
    let child = e
        .importer
        .connect(
            USER,
            "xbox",
            object(json!({"refresh_token": auth.mint_refresh_token()})),
        )
        .await;
    assert!(
        matches!(
            child,
            Err(ImportError::Refused {
                code: ImportErrorCode::AuthChildAccount,
                ..
            })
        ),
        "{child:?}"
    );
    auth.set_xerr(Some(2_148_916_233));
    let none = e
        .importer
        .connect(
            USER,
            "xbox",
            object(json!({"refresh_token": auth.mint_refresh_token()})),
        )
        .await;
    assert!(
        matches!(
            none,
            Err(ImportError::Refused {
                code: ImportErrorCode::AuthNoXboxAccount,
                ..
            })
        ),
        "{none:?}"
    );
    auth.set_xerr(None);
    auth.set_access_uses(1);
    e.importer
        .connect(
            USER,
            "xbox",
            object(json!({"refresh_token": auth.mint_refresh_token()})),
        )
        .await
        .unwrap();
    auth.set_access_uses(100);
    let states = import(&e.importer, "xbox").await;
    assert!(
        states.iter().all(|s| s.status == ImportStatus::Success),
        "{states:?}"
    );
    assert_eq!((e.rows("xbox_titles"), e.rows("xbox_achievements")), (3, 6));
    assert_eq!(
        auth.grants(),
        [
            "refresh_token",
            "refresh_token",
            "refresh_token",
            "refresh_token"
        ],
        "two refused connects, the connect, one renewal after the XSTS token ran out"
    );
}
