//! A token's `exp` and `nbf` over real HTTP, against the server's injected clock (a `ManualClock` set years
//! before the system clock): a token is accepted until its `exp` plus the documented 30 s of skew
//! (docs/protocol.md §1.2), then refused with `401 token_expired`; one without `exp` is `401 invalid_token`.

use super::*;

/// 2021-01-01T00:00:00Z: the system clock calls every token below expired.
const T0: i64 = 1_609_459_200;

fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn clocked_server() -> (TestServer, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let clock = Arc::new(ManualClock::new(T0 * 1000));
    let s = TestServer::start_with_clock(&url, "", "", dir, clock.clone()).await;
    (s, clock)
}

/// The status and error code (`None` for a success) of a pull with `token`.
async fn pull_with(s: &TestServer, token: &str) -> (StatusCode, Option<String>) {
    let (status, body) = s
        .post("/v1/sync/pull", Some(token), r#"{"lastPulledAt":null}"#)
        .await;
    (status, body["code"].as_str().map(String::from))
}

#[tokio::test]
async fn a_token_expires_on_the_servers_clock_with_thirty_seconds_of_skew() {
    let (s, clock) = clocked_server().await;
    let token = signed(json!({"sub": "alice", "exp": T0 + 600, "iat": T0}));
    let ok = (StatusCode::OK, None);
    let expired = (StatusCode::UNAUTHORIZED, Some("token_expired".to_string()));

    assert_eq!(
        pull_with(&s, &token).await,
        ok,
        "valid on the server's clock"
    );
    clock.set((T0 + 600) * 1000);
    assert_eq!(pull_with(&s, &token).await, ok, "at exp");
    clock.set((T0 + 630) * 1000 + 999);
    assert_eq!(pull_with(&s, &token).await, ok, "within the skew");
    clock.set((T0 + 631) * 1000);
    assert_eq!(pull_with(&s, &token).await, expired, "past exp + 30 s");
    // A fresh token works again on the same clock: the refusal was about time alone.
    let fresh = signed(json!({"sub": "alice", "exp": T0 + 3600}));
    assert_eq!(pull_with(&s, &fresh).await, ok);
    s.stop().await;
}

#[tokio::test]
async fn a_token_without_exp_or_not_yet_valid_is_refused_as_invalid() {
    let (s, clock) = clocked_server().await;
    let invalid = (StatusCode::UNAUTHORIZED, Some("invalid_token".to_string()));
    let no_exp = signed(json!({"sub": "alice", "iat": T0}));
    assert_eq!(pull_with(&s, &no_exp).await, invalid, "exp is required");

    let later = signed(json!({"sub": "alice", "exp": T0 + 3600, "nbf": T0 + 300}));
    assert_eq!(pull_with(&s, &later).await, invalid, "before nbf - 30 s");
    clock.set((T0 + 270) * 1000);
    assert_eq!(
        pull_with(&s, &later).await,
        (StatusCode::OK, None),
        "within the skew of nbf"
    );
    s.stop().await;
}
