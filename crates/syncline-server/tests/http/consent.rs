//! Connecting an account over real HTTP against the fake sign-in services (HTTPS on 127.0.0.1): a sign-in
//! service's rate limit answers `429 upstream_rate_limited` with its `Retry-After` and stores nothing.

use syncline_testkit::fake_apis::{FakeAuthServer, FakeSpotify, OAuthClientStyle};

use super::*;

/// A server with one Spotify source whose accounts service is `auth`.
async fn spotify_server(api: &FakeSpotify, auth: &FakeAuthServer) -> TestServer {
    let key = syncline_import::Sealer::generate_key();
    let a = auth.base_url();
    TestServer::start(&format!(
        "[imports]\nencryption_key = \"{key}\"\nmode = \"call\"\n\
         [imports.sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nauth_url = \"{a}/authorize\"\n\
         token_url = \"{a}/api/token\"\nclient_id = \"client\"\nclient_secret = \"secret\"\n\
         streams = {{ saved_tracks = \"spotify_tracks\" }}\n\
         [tables.spotify_tracks]\ncolumns = {{ name = \"string\" }}\n",
        api.base_url(),
    ))
    .await
}

async fn spotify_fakes() -> (FakeSpotify, FakeAuthServer) {
    let api = FakeSpotify::start("never-pasted", 3, 0, 0, 0).await;
    let auth = FakeAuthServer::start(
        api.control.clone(),
        "client",
        "secret",
        OAuthClientStyle::Basic,
    )
    .await;
    (api, auth)
}

#[tokio::test]
async fn a_rate_limited_sign_in_answers_429_with_its_retry_after_and_stores_nothing() {
    let (api, auth) = spotify_fakes().await;
    let server = spotify_server(&api, &auth).await;
    let alice = server.token("alice");
    let put = || {
        server
            .http
            .put(format!("{}/v1/connections/spotify", server.url))
            .bearer_auth(&alice)
            .body(json!({"refresh_token": auth.mint_refresh_token()}).to_string())
            .send()
    };
    // Spotify's accounts service answers a 429 with `Retry-After` in seconds
    // (developer.spotify.com/documentation/web-api/concepts/rate-limits).
    auth.control.rate_limit_next(1, 42);
    let limited = put().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "42");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "upstream_rate_limited", "{body}");
    assert!(body["message"].as_str().unwrap().contains("42"), "{body}");
    let (_, status) = server.get("/v1/imports/spotify/status", Some(&alice)).await;
    assert_eq!(status["connected"], false, "{status}");

    let ok = put().await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let (_, status) = server.get("/v1/imports/spotify/status", Some(&alice)).await;
    assert_eq!(status["connected"], true, "{status}");
    server.stop().await;
}
