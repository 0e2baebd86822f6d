//! CORS for web apps on other origins (`server.cors_allowed_origins`): a listed origin's preflight is answered
//! before authentication, and every answer to it (errors too) carries the headers a browser needs to read
//! it; an unlisted origin gets none; without the setting the server sends no CORS headers at all.

use super::*;

const APP: &str = "http://app.test:5173";

/// A preflight of `POST /v1/sync/push` from `origin`, as a browser sends it for a fetch with a bearer token
/// and an idempotency key.
async fn preflight(s: &TestServer, origin: &str) -> reqwest::Response {
    s.http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/sync/push", s.url))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key,syncline-device",
        )
        .send()
        .await
        .unwrap()
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_listed_origin_may_sync_from_the_browser_and_reads_errors_too() {
    let s = TestServer::start(&format!(
        "cors_allowed_origins = [\"{APP}\", \"https://other.example\"]"
    ))
    .await;
    let answer = preflight(&s, APP).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(header(&answer, "access-control-allow-origin"), Some(APP));
    let allowed = header(&answer, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "syncline-device",
    ] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    assert!(
        header(&answer, "access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert_eq!(header(&answer, "access-control-allow-credentials"), None);

    // The request itself: answered for the origin, with the headers a client reads exposed.
    let token = s.token("alice");
    let push = s
        .http
        .post(format!("{}/v1/sync/push", s.url))
        .header("origin", APP)
        .bearer_auth(&token)
        .body(r#"{"lastPulledAt":null,"changes":{"projects":{"created":[{"id":"p1","name":"P"}],"updated":[],"deleted":[]}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), StatusCode::OK);
    assert_eq!(header(&push, "access-control-allow-origin"), Some(APP));
    assert!(
        header(&push, "vary")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("origin")
    );

    // An error answer carries them too, so the page can read its code.
    let refused = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .header("origin", APP)
        .bearer_auth("not-a-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&refused, "access-control-allow-origin"), Some(APP));
    let exposed = header(&refused, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("www-authenticate") && exposed.contains("retry-after"),
        "{exposed}"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "invalid_token");

    // An origin not on the list gets no permission.
    let stranger = preflight(&s, "https://evil.example").await;
    assert_eq!(header(&stranger, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_the_setting_no_origin_gets_cors_headers() {
    let s = TestServer::start("").await;
    let answer = preflight(&s, APP).await;
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_star_lets_any_origin_in_without_credentials() {
    let s = TestServer::start("cors_allowed_origins = [\"*\"]").await;
    let answer = preflight(&s, "https://anything.example").await;
    assert!(answer.status().is_success());
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&answer, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn a_listed_origin_matches_as_browsers_send_it() {
    // Browsers send the origin lower-case and without the scheme's default port (RFC 6454 §6.2).
    let s = TestServer::start("cors_allowed_origins = [\"HTTP://App.Test:80\"]").await;
    let answer = preflight(&s, "http://app.test").await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(
        header(&answer, "access-control-allow-origin"),
        Some("http://app.test")
    );
}
