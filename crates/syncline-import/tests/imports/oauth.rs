//! Connecting accounts and renewing their tokens, against the fake authorization servers and APIs on
//! 127.0.0.1: an access token that runs out mid-walk is renewed once and the walk completes; a refused
//! renewal ends in `error` with an `auth…` code after one token call per step; a rotated refresh token is
//! saved, so an engine started again over the same store renews with it; bare access tokens keep working;
//! the consent flow with PKCE and with Basic client authentication; PlayStation's NPSSO and Xbox's
//! refresh → user → XSTS chain, with its refusals.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use syncline_core::{Clock, ManualClock, SystemClock};
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
    clock: Arc<dyn Clock>,
    _dir: tempfile::TempDir,
}

fn engine(sources: &str) -> Engine {
    engine_with_clock(sources, Arc::new(SystemClock))
}

fn engine_with_clock(sources: &str, clock: Arc<dyn Clock>) -> Engine {
    let (schema, store, dir) = sqlite_store(&[TABLES, SPOTIFY_TABLES]);
    let text = format!(
        "encryption_key = \"{}\"\nmode = \"call\"\npage_size = 50\n{sources}",
        syncline_import::Sealer::generate_key()
    );
    let config: ImportsConfig = toml::from_str(&text).unwrap();
    let importer =
        Importer::from_config(&config, store.clone(), schema.clone(), clock.clone()).unwrap();
    Engine {
        importer: Arc::new(importer),
        store,
        schema,
        config,
        clock,
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
                self.clock.clone(),
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

/// Connects USER's Xbox account from a refresh token `auth` just minted (what the consent flow stores).
async fn connect_xbox(e: &Engine, auth: &FakeAuthServer) -> Result<(), ImportError> {
    e.importer
        .connect(
            USER,
            "xbox",
            object(json!({"refresh_token": auth.mint_refresh_token()})),
        )
        .await
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
    let start = || {
        e.importer
            .authorize(
                USER,
                "spotify",
                "http://127.0.0.1:1/v1/connections/spotify/callback",
            )
            .unwrap()
    };
    let consent_started = start();
    let url = &consent_started.url;
    assert_eq!(
        url.contains("code_challenge_method=S256"),
        style == OAuthClientStyle::Pkce,
        "{url}"
    );
    let back = consent(url).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    let binding = consent_started.browser_binding.as_str();
    // A state from anywhere else is refused, and so is one for another source.
    let forged = e
        .importer
        .complete_authorization("spotify", "bm90LWEtc3RhdGU", &q["code"], Some(binding))
        .await;
    assert!(
        matches!(forged, Err(ImportError::ConsentState(_))),
        "{forged:?}"
    );
    // The right state from a browser without the binding, or with another consent's, is refused too.
    let other = start().browser_binding;
    for wrong in [None, Some(""), Some(other.as_str())] {
        let refused = e
            .importer
            .complete_authorization("spotify", &q["state"], &q["code"], wrong)
            .await;
        assert!(
            matches!(&refused, Err(ImportError::ConsentState(m)) if m.contains("this browser")),
            "{wrong:?}: {refused:?}"
        );
    }
    assert!(auth.grants().is_empty(), "no code was exchanged");
    assert!(!e.importer.connected(USER, "spotify").await.unwrap());
    let user = e
        .importer
        .complete_authorization("spotify", &q["state"], &q["code"], Some(binding))
        .await
        .unwrap();
    assert_eq!(user, USER);
    assert_eq!(auth.grants(), ["authorization_code"]);
    // A state is good once.
    let replayed = e
        .importer
        .complete_authorization("spotify", &q["state"], &q["code"], Some(binding))
        .await;
    assert!(
        matches!(&replayed, Err(ImportError::ConsentState(m)) if m.contains("already")),
        "{replayed:?}"
    );
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
    let child = connect_xbox(&e, &auth).await;
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
    let none = connect_xbox(&e, &auth).await;
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
    connect_xbox(&e, &auth).await.unwrap();
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

/// A token endpoint's 429 during a renewal is a rate limit of the import, not an outage: the stream waits
/// until the `Retry-After` the accounts service sent (Spotify: developer.spotify.com/documentation/web-api/
/// concepts/rate-limits), asks nothing in between, and then renews and completes by itself.
#[tokio::test]
async fn a_rate_limited_renewal_waits_out_its_retry_after_then_completes() {
    let (api, auth) = spotify(120).await;
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let e = engine_with_clock(&spotify_source(&api, &auth, true), clock.clone());
    api.control.issue("first-access", 1);
    let refresh = auth.mint_refresh_token();
    connect_spotify(
        &e,
        json!({"access_token": "first-access", "refresh_token": refresh}),
    )
    .await;
    auth.control.rate_limit_next(1, 30);
    e.importer.start(USER, "spotify").await.unwrap();
    assert!(e.importer.step(USER, "spotify").await.unwrap().more);
    let states = e.importer.status(USER, "spotify").await.unwrap();
    let s = only(&states);
    assert_eq!(
        (s.status, s.error_code, s.rate_limit_reset_at),
        (
            ImportStatus::RateLimited,
            None,
            Some(1_750_000_000_000 + 30_000)
        ),
        "{s:?}"
    );
    assert_eq!(e.rows("spotify_tracks"), 50, "the first page stays");
    assert_eq!(auth.control.requests(), 1);

    // Before the reset, a step asks nobody.
    clock.advance(29_999);
    assert!(e.importer.step(USER, "spotify").await.unwrap().more);
    assert_eq!(
        (auth.control.requests(), api.control.requests()),
        (1, 2),
        "the token endpoint and the API were left alone"
    );
    clock.advance(1);
    let states = import(&e.importer, "spotify").await;
    let s = only(&states);
    assert_eq!(
        (s.status, s.error_code),
        (ImportStatus::Success, None),
        "{s:?}"
    );
    assert_eq!(e.rows("spotify_tracks"), 120);
    assert_eq!(
        auth.grants(),
        ["refresh_token"],
        "renewed once the wait was over"
    );
}

/// Connecting an account while the sign-in service rate limits answers with its wait (the server turns it
/// into `429 upstream_rate_limited` with `Retry-After`) and stores nothing: Microsoft's token endpoint answers
/// `429` with `Retry-After` (learn.microsoft.com/entra/msal/dotnet/advanced/client-and-server-throttling), and
/// PlayStation's carry `X-RateLimit-Next-Available`, a Unix time.
#[tokio::test]
async fn a_rate_limited_sign_in_at_connect_time_says_when_to_try_again_and_stores_nothing() {
    let api = FakeXbox::start(XBOX_UHS, "never-pasted", XBOX_XUID, 1, 1).await;
    let auth = FakeAuthServer::xbox(
        api.control.clone(),
        CLIENT_ID,
        CLIENT_SECRET,
        XBOX_UHS,
        XBOX_XUID,
    )
    .await;
    let psn = FakePlayStation::start("never-pasted", 1, 1).await;
    let psn_auth = FakeAuthServer::playstation(psn.control.clone()).await;
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let a = auth.base_url();
    let e = engine_with_clock(
        &format!(
            "[sources.xbox]\nkind = \"xbox\"\nbase_url = \"{}\"\ntoken_url = \"{a}/oauth20_token.srf\"\n\
             user_auth_url = \"{a}/user/authenticate\"\nxsts_url = \"{a}/xsts/authorize\"\n\
             client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
             streams = {{ titles = \"xbox_titles\" }}\n\
             [sources.psn]\nkind = \"playstation\"\nbase_url = \"{}\"\n\
             auth_base_url = \"{}/api/authz/v3/oauth\"\nstreams = {{ trophy_titles = \"psn_titles\" }}\n",
            api.base_url(),
            psn.base_url(),
            psn_auth.base_url()
        ),
        clock.clone(),
    );
    auth.control.answer_next(
        429,
        &[("retry-after", "17")],
        json!({"error": "temporarily_unavailable"}),
    );
    let limited = connect_xbox(&e, &auth).await;
    assert!(
        matches!(
            limited,
            Err(ImportError::RateLimited {
                retry_after_secs: 17
            })
        ),
        "{limited:?}"
    );
    assert!(!e.importer.connected(USER, "xbox").await.unwrap());
    assert_eq!(
        auth.token_calls(),
        0,
        "the 429 came before any token was issued"
    );

    let next_available = (clock.now_ms() / 1000 + 90).to_string();
    psn_auth.control.answer_next(
        429,
        &[("x-ratelimit-next-available", &next_available)],
        json!({}),
    );
    let limited = e
        .importer
        .connect(USER, "psn", object(json!({"npsso": PSN_NPSSO})))
        .await;
    assert!(
        matches!(
            limited,
            Err(ImportError::RateLimited {
                retry_after_secs: 90
            })
        ),
        "{limited:?}"
    );
    assert!(!e.importer.connected(USER, "psn").await.unwrap());

    // Once the limit is over, the same connects work.
    connect_xbox(&e, &auth).await.unwrap();
    e.importer
        .connect(USER, "psn", object(json!({"npsso": PSN_NPSSO})))
        .await
        .unwrap();
    assert!(e.importer.connected(USER, "xbox").await.unwrap());
}

/// A consent's `state` lives ten minutes on the server's clock: approved later, it is refused and nothing
/// is exchanged or stored.
#[tokio::test]
async fn a_consent_answered_after_ten_minutes_is_refused_and_stores_nothing() {
    let (api, auth) = spotify(10).await;
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let e = engine_with_clock(&spotify_source(&api, &auth, true), clock.clone());
    let callback = "http://127.0.0.1:1/v1/connections/spotify/callback";
    let late = e.importer.authorize(USER, "spotify", callback).unwrap();
    let back = consent(&late.url).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    clock.advance(10 * 60 * 1000 + 1);
    let refused = e
        .importer
        .complete_authorization(
            "spotify",
            &q["state"],
            &q["code"],
            Some(&late.browser_binding),
        )
        .await;
    assert!(
        matches!(&refused, Err(ImportError::ConsentState(m)) if m.contains("ten minutes")),
        "{refused:?}"
    );
    assert!(auth.grants().is_empty());
    assert!(!e.importer.connected(USER, "spotify").await.unwrap());
    // At exactly ten minutes it still completes.
    let on_time = e.importer.authorize(USER, "spotify", callback).unwrap();
    let back = consent(&on_time.url).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    clock.advance(10 * 60 * 1000);
    e.importer
        .complete_authorization(
            "spotify",
            &q["state"],
            &q["code"],
            Some(&on_time.browser_binding),
        )
        .await
        .unwrap();
    assert!(e.importer.connected(USER, "spotify").await.unwrap());
}
