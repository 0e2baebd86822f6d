//! Connecting an account over real HTTP against the fake sign-in services (HTTPS on 127.0.0.1): a sign-in
//! service's rate limit answers `429 upstream_rate_limited` with its `Retry-After` and stores nothing; a consent
//! completes only in the browser that started it (its `HttpOnly` cookie), once.

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

/// What a person's browser does on the fake consent page: opens it, presses "Agree", and gets the redirect
/// back to our callback (not followed).
pub(crate) async fn agree(consent_url: &str) -> String {
    let browser = syncline_http::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser
        .get(consent_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let request = page
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let origin = reqwest::Url::parse(consent_url).unwrap();
    let back = browser
        .post(origin.join("/authorize/answer").unwrap())
        .body(format!("request={request}&answer=agree"))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::FOUND);
    back.headers()["location"].to_str().unwrap().to_string()
}

/// `POST …/authorize` as the dashboard sends it: the consent url and the `Set-Cookie` that came with it.
async fn authorize(server: &TestServer, token: &str, proto: Option<&str>) -> (String, String) {
    let mut request = server
        .http
        .post(format!("{}/v1/connections/spotify/authorize", server.url))
        .bearer_auth(token);
    if let Some(proto) = proto {
        request = request.header("x-forwarded-proto", proto);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    let body: Value = answer.json().await.unwrap();
    (body["url"].as_str().unwrap().to_string(), cookie)
}

/// The login CSRF that an unbound `state` allows: Mallory starts connecting Spotify to her Syncline user and
/// sends the consent page to Alice; Alice approves with her Spotify account. The callback in Alice's browser
/// lacks the cookie that Mallory's browser got, so it is refused and Alice's Spotify never lands in
/// Mallory's account. In Mallory's own browser the same kind of consent completes, once.
#[tokio::test]
async fn a_consent_completes_only_in_the_browser_that_started_it_and_only_once() {
    let (api, auth) = spotify_fakes().await;
    let server = spotify_server(&api, &auth).await;
    let mallory = server.token("mallory");
    let (url, set_cookie) = authorize(&server, &mallory, None).await;
    let attrs: Vec<&str> = set_cookie.split("; ").collect();
    assert!(
        attrs[0].starts_with("syncline_consent=") && attrs[0].len() > 40,
        "{set_cookie}"
    );
    for attr in [
        "Path=/v1/connections/spotify/callback",
        "Max-Age=600",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(attrs.contains(&attr), "{attr} in {set_cookie}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "served over plain HTTP: {set_cookie}"
    );
    let (_, behind_https) = authorize(&server, &mallory, Some("https")).await;
    assert!(
        behind_https.split("; ").any(|a| a == "Secure"),
        "{behind_https}"
    );

    // Alice's browser: no cookie, or a cookie of its own from another consent.
    let back = agree(&url).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let alice = server.token("alice");
    let (_, alices_cookie) = authorize(&server, &alice, None).await;
    let alices_cookie = alices_cookie.split(';').next().unwrap().to_string();
    for cookie in [
        None,
        Some(alices_cookie.as_str()),
        Some("syncline_consent=forged"),
    ] {
        let mut request = browser.get(&back);
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{cookie:?}");
        assert!(refused.headers().get("set-cookie").is_none());
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "invalid_state", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("browser"),
            "{body}"
        );
    }
    assert!(auth.grants().is_empty(), "no code was exchanged");
    for user in [&mallory, &alice] {
        let (_, status) = server.get("/v1/imports/spotify/status", Some(user)).await;
        assert_eq!(status["connected"], false, "{status}");
    }

    // Mallory's own browser, with her cookie: connected, the cookie is cleared, and the callback is good once.
    let mine = set_cookie.split(';').next().unwrap().to_string();
    let done = browser
        .get(&back)
        .header("cookie", format!("theme=dark; {mine}"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()["location"], "/?connected=spotify");
    let cleared = done.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("syncline_consent=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let (_, status) = server
        .get("/v1/imports/spotify/status", Some(&mallory))
        .await;
    assert_eq!(status["connected"], true, "{status}");
    let again = browser
        .get(&back)
        .header("cookie", &mine)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        again.json::<Value>().await.unwrap()["code"],
        "invalid_state"
    );
    assert_eq!(auth.grants(), ["authorization_code"]);
    server.stop().await;
}
