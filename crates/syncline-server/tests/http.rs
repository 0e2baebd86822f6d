//! The server over real HTTP on 127.0.0.1, with a real SQLite file: auth, bad input, conflicts, rejections,
//! idempotency, isolation, operational routes, and the commit-order guarantee under concurrent writers.

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use syncline_core::{Clock, ManualClock, SystemClock};
use syncline_server::{Config, RunningServer};

const SECRET: &str = "test-secret-test-secret-test-secret";

const SCHEMA: &str = r#"
[tables.projects]
columns = { name = "string", user_id = "string" }
[tables.tasks]
columns = { title = "string", done = "boolean", project_id = "string", position = "number" }
parent = { table = "projects", column = "project_id" }
"#;

struct TestServer {
    server: Option<RunningServer>,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        TestServer::start_on(&url, "", extra, dir).await
    }

    /// A server on the storage at `url` (a `sqlite://` or `postgres://` url), with `storage` added to its
    /// `[storage]` section. `extra` holds settings of the `[server]` section (and may open further sections).
    async fn start_on(url: &str, storage: &str, extra: &str, dir: tempfile::TempDir) -> TestServer {
        TestServer::start_with_clock(url, storage, extra, dir, Arc::new(SystemClock)).await
    }

    /// [`TestServer::start_on`], with the server's wall-clock time read from `clock`.
    async fn start_with_clock(
        url: &str,
        storage: &str,
        extra: &str,
        dir: tempfile::TempDir,
        clock: Arc<dyn Clock>,
    ) -> TestServer {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[storage]\nurl = \"{url}\"\n{storage}\n[auth]\njwt_secret = \"{SECRET}\"\n{SCHEMA}"
        );
        let config = Config::from_toml(&text, []).unwrap();
        let server = syncline_server::start_with_clock(config, clock)
            .await
            .unwrap();
        let url = format!("http://{}", server.addr);
        TestServer {
            server: Some(server),
            url,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn token(&self, user: &str) -> String {
        token_with(user, SECRET, 3600, None)
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
        )
    }

    async fn pull(&self, user: &str, since: Option<i64>) -> Value {
        let (status, body) = self
            .post(
                "/v1/sync/pull",
                Some(&self.token(user)),
                json!({"lastPulledAt": since}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn push(&self, user: &str, since: i64, changes: Value) -> (StatusCode, Value) {
        self.post(
            "/v1/sync/push",
            Some(&self.token(user)),
            json!({"lastPulledAt": since, "changes": changes}).to_string(),
        )
        .await
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

#[path = "http/hardening.rs"]
mod hardening;

#[path = "http/token_clock.rs"]
mod token_clock;

#[path = "http/consent.rs"]
mod consent;

#[path = "http/cors.rs"]
mod cors;

fn token_with(user: &str, secret: &str, ttl: i64, extra: Option<Value>) -> String {
    let now = syncline_core::Clock::now_ms(&syncline_core::SystemClock) / 1000;
    let mut claims = json!({"sub": user, "exp": now + ttl, "iat": now});
    if let Some(Value::Object(extra)) = extra {
        for (k, v) in extra {
            claims[k] = v;
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn ids(pull: &Value, table: &str) -> Vec<String> {
    let mut v: Vec<String> = pull["changes"][table]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().into())
        .collect();
    v.sort();
    v
}

fn projects(records: &[(&str, &str)]) -> Value {
    json!({"projects": {"created": records.iter().map(|(id, name)| json!({"id": id, "name": name})).collect::<Vec<_>>(), "updated": [], "deleted": []}})
}

#[tokio::test]
async fn tokens_are_checked() {
    let s = TestServer::start("").await;
    let body = r#"{"lastPulledAt":null}"#;
    let cases = [
        (None, "missing_token"),
        (Some("not-a-jwt".to_string()), "invalid_token"),
        (
            Some(token_with(
                "alice",
                "another-secret-another-secret",
                3600,
                None,
            )),
            "invalid_token",
        ),
        (
            Some(token_with("alice", SECRET, -3600, None)),
            "token_expired",
        ),
        (
            Some(token_with(
                "alice",
                SECRET,
                3600,
                Some(json!({"nbf": 4_000_000_000i64})),
            )),
            "invalid_token",
        ),
        (
            Some(format!(
                "{}.{}.",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                b64url(br#"{"sub":"alice","exp":4000000000}"#)
            )),
            "invalid_token",
        ),
    ];
    for (token, code) in cases {
        let (status, err) = s.post("/v1/sync/pull", token.as_deref(), body).await;
        assert_eq!(
            (status, err["code"].as_str().unwrap()),
            (StatusCode::UNAUTHORIZED, code),
            "{token:?}: {err}"
        );
        assert!(err["message"].as_str().unwrap().len() > 10);
    }
    let (status, _) = s.post("/v1/sync/pull", Some(&s.token("alice")), body).await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://{}\"\n[auth]\njwt_secret = \"{SECRET}\"\nissuer = \"https://id.example\"\naudience = \"syncline\"\n{SCHEMA}",
        dir.path().join("t.db").display()
    );
    let server = syncline_server::start(Config::from_toml(&text, []).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/v1/sync/pull", server.addr);
    let http = reqwest::Client::new();
    for (claims, expected) in [
        (json!({}), StatusCode::UNAUTHORIZED),
        (
            json!({"iss": "https://evil.example", "aud": "syncline"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"iss": "https://id.example", "aud": "other"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"iss": "https://id.example", "aud": "syncline"}),
            StatusCode::OK,
        ),
    ] {
        let token = token_with("alice", SECRET, 3600, Some(claims.clone()));
        let status = http
            .post(&url)
            .bearer_auth(token)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected, "{claims}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_applies_nothing() {
    let s = TestServer::start("max_body_bytes = 20000\nmax_records_per_request = 50").await;
    let alice = s.token("alice");
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("/v1/sync/push", "{\"changes\": {".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("/v1/sync/push", "[1,2]".into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/push", r#"{"lastPulledAt": 0, "changes": {"tasks": {"created": "nope"}}}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/push", json!({"lastPulledAt": 0, "changes": {"secrets": {"created": [{"id": "x"}], "updated": [], "deleted": []}}}).to_string(), StatusCode::BAD_REQUEST, "unknown_table"),
        ("/v1/sync/push", json!({"lastPulledAt": 0, "changes": {"projects": {"created": [{"id": "ok1", "name": "fine"}, {"id": "../etc", "name": "x"}], "updated": [], "deleted": []}}}).to_string(), StatusCode::BAD_REQUEST, "invalid_id"),
        ("/v1/sync/push", json!({"lastPulledAt": 0, "changes": {"projects": {"created": [{"id": "ok2", "name": "fine"}], "updated": [], "deleted": ["a\"b"]}}}).to_string(), StatusCode::BAD_REQUEST, "invalid_id"),
        ("/v1/sync/push", json!({"lastPulledAt": 0, "changes": {"projects": {"created": (0..51).map(|i| json!({"id": format!("p{i}")})).collect::<Vec<_>>(), "updated": [], "deleted": []}}}).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "too_many_records"),
        ("/v1/sync/push", format!(r#"{{"lastPulledAt": 0, "changes": {{"projects": {{"created": [{{"id": "big", "name": "{}"}}], "updated": [], "deleted": []}}}}}}"#, "x".repeat(30_000)), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("/v1/sync/bulk", r#"{"upserts": {"projects": [{"id": "ok3"}]}, "typo": 1}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/bulk", json!({"upserts": {"nope": [{"id": "x"}]}}).to_string(), StatusCode::BAD_REQUEST, "unknown_table"),
        ("/v1/sync/pull", r#"{"lastPulledAt": "yesterday"}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/pull", r#"{"lastPulledAt": null, "limit": 0}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/pull", r#"{"lastPulledAt": -5}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/pull", r#"{"lastPulledAt": 1.5}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/pull", r#"{"lastPulledAt": null, "schemaVersion": -1}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/push", r#"{"lastPulledAt": 2.5, "changes": {}}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/pull", format!(r#"{{"lastPulledAt": {}}}"#, i64::MAX), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/pull", r#"{"lastPulledAt": 4503599627370497}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/sync/push", format!(r#"{{"lastPulledAt": {}, "changes": {{}}}}"#, i64::MAX), StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (path, body, status, code) in cases {
        let (got, err) = s.post(path, Some(&alice), body.clone()).await;
        assert_eq!(
            (got, err["code"].as_str().unwrap_or_default()),
            (status, code),
            "{path} {}: {err}",
            &body[..body.len().min(120)]
        );
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // A limit over the maximum says what the maximum is, so a client can ask again with it.
    let (_, err) = s
        .post(
            "/v1/sync/pull",
            Some(&alice),
            r#"{"lastPulledAt": null, "limit": 50001}"#.to_string(),
        )
        .await;
    assert_eq!(
        (err["code"].as_str(), err["maxLimit"].as_u64()),
        (Some("invalid_request"), Some(50_000))
    );
    let pull = s.pull("alice", None).await;
    assert_eq!(
        ids(&pull, "projects"),
        Vec::<String>::new(),
        "nothing was half-applied"
    );
    // The refused cursors moved nothing: another user (the SQLite counter is shared) still writes, with
    // timestamps JavaScript holds exactly. The largest cursor allowed is answered, and raises the counter.
    let (status, body) = s.push("bob", 0, projects(&[("b1", "B")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["timestamp"].as_i64().unwrap() < 1_000, "{body}");
    let top = s.pull("alice", Some(syncline_core::MAX_CURSOR)).await;
    assert_eq!(top["experimentalStrategy"], "replacement");
    let (status, body) = s.push("bob", 0, projects(&[("b2", "B")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["timestamp"].as_i64().unwrap() < (1 << 53), "{body}");
    s.stop().await;
}

#[tokio::test]
async fn invalid_records_are_rejected_while_the_rest_is_applied() {
    let s = TestServer::start("").await;
    let (status, body) = s
        .push(
            "alice",
            0,
            json!({
                "projects": {"created": [{"id": "p1", "name": "ok"}, {"id": "p2", "name": 42}, {"id": "p3", "name": "x", "colour": "red"}], "updated": [], "deleted": []},
                "tasks": {"created": [{"id": "t1", "title": "ok", "done": "maybe"}, {"id": "t2", "title": "fine", "done": 1, "_status": "created", "_changed": ""}], "updated": [], "deleted": []}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["experimentalRejectedIds"],
        json!({"projects": ["p2", "p3"], "tasks": ["t1"]})
    );
    let codes: Vec<&str> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["wrong_type", "unknown_column", "wrong_type"]);
    let pull = s.pull("alice", None).await;
    assert_eq!(ids(&pull, "projects"), ["p1"]);
    assert_eq!(
        pull["changes"]["tasks"]["updated"][0]["done"],
        json!(true),
        "0/1 booleans are stored as booleans"
    );
    s.stop().await;
}

#[tokio::test]
async fn bulk_is_all_or_nothing_and_counts_per_table() {
    let s = TestServer::start("").await;
    let alice = s.token("alice");
    let bad = json!({"upserts": {"projects": [{"id": "p1", "name": "ok"}], "tasks": [{"id": "t1", "title": 1}, {"id": "t2", "title": "ok"}, {"id": "t3", "nope": true}]}});
    let (status, err) = s.post("/v1/sync/bulk", Some(&alice), bad.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["code"], "invalid_rows");
    assert_eq!(
        err["errors"],
        json!([
            {"table": "tasks", "id": "t1", "index": 0, "code": "wrong_type", "message": "column `tasks.title` is a string, got 1"},
            {"table": "tasks", "id": "t3", "index": 2, "code": "unknown_column", "message": "table `tasks` has no column `nope`"}
        ])
    );
    assert_eq!(
        ids(&s.pull("alice", None).await, "projects"),
        Vec::<String>::new()
    );
    let good = json!({
        "upserts": {"projects": [{"id": "p1", "name": "ok"}, {"id": "p2", "name": "two"}], "tasks": [{"id": "t2", "title": "ok", "project_id": "p2"}]},
        "deletes": {"projects": ["p2"]}
    });
    let (status, body) = s
        .post("/v1/sync/bulk", Some(&alice), good.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["counts"]["projects"],
        json!({"upserted": 2, "unchanged": 0, "deleted": 1})
    );
    assert_eq!(
        body["counts"]["tasks"],
        json!({"upserted": 1, "unchanged": 0, "deleted": 1}),
        "the task went with its project"
    );
    assert_eq!(body["timestamp"], s.pull("alice", None).await["timestamp"]);
    s.stop().await;
}

/// WatermelonDB's `Timestamp` is a JavaScript number (src/sync/index.d.ts), and JSON does not tell `7` from
/// `7.0`: a client that keeps the cursor as a double sends it back as `7.0`, and means the same cursor.
#[tokio::test]
async fn a_cursor_written_as_a_whole_double_is_the_same_cursor() {
    let s = TestServer::start("").await;
    let alice = s.token("alice");
    let (_, first) = s.push("alice", 0, projects(&[("p1", "A")])).await;
    let t = first["timestamp"].as_i64().unwrap();
    let (status, _) = s.push("alice", t, projects(&[("p2", "B")])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, pulled) = s
        .post(
            "/v1/sync/pull",
            Some(&alice),
            format!(r#"{{"lastPulledAt": {t}.0, "schemaVersion": 1.0, "migration": null}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pulled}");
    assert_eq!(
        ids(&pulled, "projects"),
        ["p2"],
        "only the change after {t}"
    );
    assert_eq!(pulled, s.pull("alice", Some(t)).await);
    // The push's cursor too: p1 has not changed since `t`, p2 has.
    let push = |name: &str| {
        format!(
            r#"{{"lastPulledAt": {t}.0, "changes": {{"projects": {{"updated": [{{"id": "p1", "name": "{name}"}}]}}}}}}"#
        )
    };
    let (status, body) = s.post("/v1/sync/push", Some(&alice), push("A2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stale =
        format!(r#"{{"lastPulledAt": {t}.0, "changes": {{"projects": {{"deleted": ["p2"]}}}}}}"#);
    let (status, body) = s.post("/v1/sync/push", Some(&alice), stale).await;
    assert_eq!(
        (status, &body["conflicts"]),
        (StatusCode::CONFLICT, &json!({"projects": ["p2"]}))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_stale_push_gets_409_with_the_conflicting_ids() {
    let s = TestServer::start("").await;
    let (_, first) = s
        .push("alice", 0, projects(&[("p1", "A"), ("p2", "B")]))
        .await;
    let t = first["timestamp"].as_i64().unwrap();
    s.push("alice", t, json!({"projects": {"created": [], "updated": [{"id": "p2", "name": "B2"}], "deleted": []}})).await;
    let (status, err) = s.push("alice", t, json!({"projects": {"created": [{"id": "p3", "name": "new"}], "updated": [{"id": "p2", "name": "mine"}], "deleted": []}})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (err["code"].as_str(), &err["conflicts"]),
        (Some("conflict"), &json!({"projects": ["p2"]}))
    );
    assert_eq!(
        ids(&s.pull("alice", None).await, "projects"),
        ["p1", "p2"],
        "p3 was not applied"
    );
    s.stop().await;
}

#[tokio::test]
async fn idempotency_keys_answer_a_retry_with_the_first_answer() {
    let s = TestServer::start("").await;
    let token = s.token("alice");
    let body = json!({"lastPulledAt": 0, "changes": projects(&[("p1", "A")])}).to_string();
    let send = |key: &'static str, body: String| {
        s.http
            .post(format!("{}/v1/sync/push", s.url))
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    let first = send("retry-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first_body = first.text().await.unwrap();
    // Without the key this retry would be a conflict (p1 changed after lastPulledAt 0).
    let retry = send("retry-1", body.clone()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.text().await.unwrap(), first_body);
    let other = send(
        "retry-1",
        json!({"lastPulledAt": 0, "changes": projects(&[("p9", "other")])}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other.json::<Value>().await.unwrap()["code"],
        "idempotency_key_reused"
    );
    let bad = send("no spaces allowed", body).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(ids(&s.pull("alice", None).await, "projects"), ["p1"]);
    s.stop().await;
}

#[tokio::test]
async fn another_users_ids_reach_nothing_of_theirs() {
    let s = TestServer::start("").await;
    let (_, a) = s.push("alice", 0, projects(&[("p1", "alice's")])).await;
    assert!(a["timestamp"].as_i64().is_some());
    let (status, _) = s.push("mallory", 0, json!({"projects": {"created": [], "updated": [{"id": "p1", "name": "pwned", "user_id": "alice"}], "deleted": []}})).await;
    assert_eq!(status, StatusCode::OK);
    let m = s.pull("mallory", None).await;
    let t = m["timestamp"].as_i64().unwrap();
    s.push(
        "mallory",
        t,
        json!({"projects": {"created": [], "updated": [], "deleted": ["p1"]}}),
    )
    .await;
    let (status, _) = s
        .post(
            "/v1/sync/bulk",
            Some(&s.token("mallory")),
            json!({"deletes": {"projects": ["p1"]}}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let alice = s.pull("alice", None).await;
    assert_eq!(
        alice["changes"]["projects"]["updated"],
        json!([{"id": "p1", "name": "alice's", "user_id": "alice"}])
    );
    assert_eq!(
        m["changes"]["projects"]["updated"][0]["user_id"], "mallory",
        "owner columns are forced to the token's user"
    );
    // Another user's id answers exactly as an id nobody has: nothing tells eve that alice has a `p1`.
    let eve = s.token("eve");
    let mut answers = Vec::new();
    for id in ["p1", "never-used"] {
        let push = json!({"lastPulledAt": 0, "changes": {"projects": {"deleted": [id]}}});
        let (status, mut pushed) = s.post("/v1/sync/push", Some(&eve), push.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{pushed}");
        let bulk = json!({"deletes": {"projects": [id]}, "upserts": {"tasks": [{"id": "t-eve", "title": "x", "project_id": id}]}});
        let (status, mut bulked) = s.post("/v1/sync/bulk", Some(&eve), bulk.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{bulked}");
        pushed["timestamp"] = json!(0);
        bulked["timestamp"] = json!(0);
        answers.push((pushed, bulked));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(s.pull("alice", None).await["changes"], alice["changes"]);
    s.stop().await;
}

#[tokio::test]
async fn operational_routes_answer() {
    let s = TestServer::start("").await;
    let get = |path: &str| s.http.get(format!("{}{path}", s.url)).send();
    assert_eq!(
        get("/healthz")
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        json!({"status": "ok"})
    );
    let openapi: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/sync/pull",
        "/v1/sync/push",
        "/v1/sync/bulk",
        "/v1/me",
        "/v1/activity",
        "/v1/admin/overview",
        "/v1/imports",
        "/v1/imports/{source}/start",
        "/v1/connections/{source}",
        "/v1/admin/gc",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "the OpenAPI document describes {path}"
        );
    }
    let missing = get("/nope").await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "not_found");
    let wrong_method = get("/v1/sync/push").await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
    s.push("alice", 0, projects(&[("p1", "A")])).await;
    s.pull("alice", None).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("syncline_records_pushed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("syncline_records_pulled_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"syncline_http_requests_total{route="/v1/sync/push",status="200"} 1"#),
        "{metrics}"
    );
    let (status, err) = s.post("/v1/admin/gc", Some(&s.token("alice")), "").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let admin = token_with("root", SECRET, 3600, Some(json!({"role": "admin"})));
    let (status, body) = s.post("/v1/admin/gc", Some(&admin), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn collected_tombstones_make_old_clients_replace_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    const DAY_MS: i64 = 86_400_000;
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let s = TestServer::start_with_clock(
        &url,
        "",
        "[sync]\ntombstone_retention_days = 1",
        dir,
        clock.clone(),
    )
    .await;
    let (_, a) = s
        .push("alice", 0, projects(&[("p1", "A"), ("p2", "B")]))
        .await;
    let t = a["timestamp"].as_i64().unwrap();
    s.push(
        "alice",
        t,
        json!({"projects": {"created": [], "updated": [], "deleted": ["p2"]}}),
    )
    .await;
    let admin = token_with("root", SECRET, 3600, Some(json!({"role": "admin"})));
    clock.advance(DAY_MS - 60_000);
    let (_, gc) = s.post("/v1/admin/gc", Some(&admin), "").await;
    assert_eq!(
        gc["tombstonesCollected"], 0,
        "a tombstone younger than the retention stays"
    );
    let kept = s.pull("alice", Some(t)).await;
    assert_eq!(
        (
            kept.get("experimentalStrategy"),
            &kept["changes"]["projects"]["deleted"]
        ),
        (None, &json!(["p2"]))
    );
    clock.advance(2 * 60_000);
    let (_, gc) = s.post("/v1/admin/gc", Some(&admin), "").await;
    assert_eq!(gc["tombstonesCollected"], 1);
    let stale = s.pull("alice", Some(t)).await;
    assert_eq!(stale["experimentalStrategy"], "replacement");
    assert_eq!(ids(&stale, "projects"), ["p1"]);
    s.stop().await;
}

/// A small pull's answer goes out whole, with its length and a W3C `Server-Timing` figure for the time the
/// server spent on it; an answer larger than one chunk streams, and arrives whole all the same.
#[tokio::test]
async fn small_pulls_answer_whole_with_server_timing_and_large_ones_stream() {
    let s = TestServer::start("").await;
    let (_, a) = s
        .push("alice", 0, projects(&[("p1", "A"), ("p2", "B")]))
        .await;
    let pull = |since: i64| {
        s.http
            .post(format!("{}/v1/sync/pull", s.url))
            .bearer_auth(s.token("alice"))
            .body(json!({"lastPulledAt": since}).to_string())
            .send()
    };
    let small = pull(0).await.unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    let headers = small.headers().clone();
    let body = small.bytes().await.unwrap();
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert!(headers.get("transfer-encoding").is_none());
    let timing = headers["server-timing"].to_str().unwrap();
    let ms: f64 = timing
        .strip_prefix("app;dur=")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("Server-Timing `{timing}`"));
    assert!(ms > 0.0 && ms < 60_000.0, "{timing}");
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ids(&page, "projects"), ["p1", "p2"]);
    // About 200 KiB of records: several chunks, streamed.
    let name = "n".repeat(1000);
    let many: Vec<(String, &str)> = (0..200)
        .map(|i| (format!("q{i:03}"), name.as_str()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    let t = a["timestamp"].as_i64().unwrap();
    let (status, _) = s.push("alice", t, projects(&many)).await;
    assert_eq!(status, StatusCode::OK);
    let large = pull(t).await.unwrap();
    assert_eq!(large.status(), StatusCode::OK);
    assert_eq!(large.headers()["transfer-encoding"], "chunked");
    let page: Value = serde_json::from_slice(&large.bytes().await.unwrap()).unwrap();
    assert_eq!(ids(&page, "projects").len(), 200);
    s.stop().await;
}

/// Many concurrent pushers and pullers: every puller, following only the timestamps it was given, ends up
/// having seen every change that any push committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_pull_ever_misses_a_committed_change() {
    let s = Arc::new(TestServer::start("").await);
    const PUSHERS: usize = 8;
    const PUSHES: usize = 25;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pullers = Vec::new();
    for p in 0..4 {
        let (s, done) = (s.clone(), done.clone());
        pullers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut cursor: Option<i64> = None;
            let mut rounds = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let body = if p % 2 == 0 {
                    json!({"lastPulledAt": cursor})
                } else {
                    json!({"lastPulledAt": cursor, "limit": 7})
                };
                let (status, pull) = s
                    .post("/v1/sync/pull", Some(&s.token("alice")), body.to_string())
                    .await;
                assert_eq!(status, StatusCode::OK);
                let t = pull["timestamp"].as_i64().unwrap();
                assert!(
                    cursor.is_none_or(|c| t >= c),
                    "timestamps never go backwards"
                );
                seen.extend(ids(&pull, "projects"));
                cursor = Some(t);
                rounds += 1;
                if finished && !pull["hasMore"].as_bool().unwrap_or(false) {
                    return (seen, rounds);
                }
            }
        }));
    }
    let mut pushers = Vec::new();
    for w in 0..PUSHERS {
        let s = s.clone();
        pushers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..PUSHES {
                let records: Vec<(String, String)> = (0..3)
                    .map(|k| (format!("w{w}-{i}-{k}"), "x".to_string()))
                    .collect();
                let refs: Vec<(&str, &str)> = records
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                let (status, body) = s.push("alice", 0, projects(&refs)).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                committed.extend(records.into_iter().map(|r| r.0));
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for p in pushers {
        committed.extend(p.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(committed.len(), PUSHERS * PUSHES * 3);
    for p in pullers {
        let (seen, rounds) = p.await.unwrap();
        assert!(rounds > 1);
        let missed: Vec<_> = committed.difference(&seen).collect();
        assert!(
            missed.is_empty(),
            "a puller missed {} committed changes, e.g. {:?}",
            missed.len(),
            missed.first()
        );
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

async fn start_with_auth(dir: &std::path::Path, auth: &str) -> RunningServer {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://{}\"\n[auth]\n{auth}\n{SCHEMA}",
        dir.join("t.db").display()
    );
    syncline_server::start(Config::from_toml(&text, []).unwrap())
        .await
        .unwrap()
}

async fn pull_status(server: &RunningServer, token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("http://{}/v1/sync/pull", server.addr))
        .bearer_auth(token)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
}

/// ES256 keys from a PEM file or a JWKS document; only that algorithm is accepted, so a token "signed" with
/// the public key as an HMAC secret (algorithm confusion) is refused.
#[tokio::test]
async fn public_keys_from_pem_and_jwks_verify_es256_tokens() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    openssl(
        dir.path(),
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ec.pem",
            "-out",
            "private.pem",
        ],
    );
    openssl(
        dir.path(),
        &["ec", "-in", "ec.pem", "-pubout", "-out", "public.pem"],
    );
    let private =
        EncodingKey::from_ec_pem(&std::fs::read(dir.path().join("private.pem")).unwrap()).unwrap();
    let public_pem = std::fs::read(dir.path().join("public.pem")).unwrap();
    let now = (syncline_core::Clock::now_ms(&syncline_core::SystemClock) / 1000) as u64;
    let claims = json!({"sub": "alice", "exp": now + 600});
    let es256 = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, &private).unwrap()
    };
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();

    let pem_dir = tempfile::tempdir().unwrap();
    let pem = start_with_auth(
        pem_dir.path(),
        &format!(
            "public_key_file = \"{}\"\nalgorithm = \"ES256\"",
            dir.path().join("public.pem").display()
        ),
    )
    .await;
    assert_eq!(pull_status(&pem, &es256(None)).await, StatusCode::OK);
    assert_eq!(pull_status(&pem, &confused).await, StatusCode::UNAUTHORIZED);
    pem.stop().await;

    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap(),
    )
    .unwrap();
    let jwks_dir = tempfile::tempdir().unwrap();
    let server = start_with_auth(
        jwks_dir.path(),
        &format!("jwks_file = \"{}\"\nalgorithm = \"ES256\"", jwks.display()),
    )
    .await;
    assert_eq!(
        pull_status(&server, &es256(Some("k1"))).await,
        StatusCode::OK
    );
    assert_eq!(
        pull_status(&server, &es256(Some("k2"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        pull_status(&server, &es256(None)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        pull_status(&server, &confused).await,
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}

/// The example configurations in `examples/` load and start.
#[tokio::test]
async fn the_examples_start() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path().join("syncline.toml");
        if !path.exists() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let overrides = [
            (
                "SYNCLINE_SERVER_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "SYNCLINE_STORAGE_URL".to_string(),
                format!("sqlite://{}", dir.path().join("e.db").display()),
            ),
        ];
        let config =
            Config::from_toml(&std::fs::read_to_string(&path).unwrap(), overrides).unwrap();
        assert!(
            config.tables.len() >= 10,
            "{}: {} tables",
            path.display(),
            config.tables.len()
        );
        let server = syncline_server::start(config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        server.stop().await;
        seen += 1;
    }
    assert_eq!(seen, 2, "team-app and social-app");
}

/// Reads Server-Sent Events from a streaming response: `(event, data)` pairs, skipping keep-alives.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(url: &str, token: &str) -> SseReader {
        let response = reqwest::Client::new()
            .get(format!("{url}/v1/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, Value) {
        let read = async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = String::from("message");
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            event = e.trim().to_string();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim());
                        }
                    }
                    if !data.is_empty() {
                        return (event, serde_json::from_str(&data).unwrap());
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .unwrap()
                    .expect("the event stream ended");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("an event within 10 s")
    }

    /// Whether the stream ends within 10 s (whatever it sends before).
    async fn ends(&mut self) -> bool {
        let end = async { while let Ok(Some(_)) = self.response.chunk().await {} };
        tokio::time::timeout(std::time::Duration::from_secs(10), end)
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn devices_hear_about_new_changes_over_server_sent_events() {
    let s = TestServer::start("").await;
    let mut alice = SseReader::open(&s.url, &s.token("alice")).await;
    let mut bob = SseReader::open(&s.url, &s.token("bob")).await;
    assert_eq!(
        alice.next().await,
        ("ready".to_string(), json!({"user": "alice"}))
    );
    assert_eq!(bob.next().await.0, "ready");
    let (_, pushed) = s.push("alice", 0, projects(&[("p1", "A")])).await;
    assert_eq!(
        alice.next().await,
        (
            "changes".to_string(),
            json!({"sequence": pushed["timestamp"]})
        )
    );
    // Bob's next event is his own push: he never heard about alice's.
    let (_, bobs) = s.push("bob", 0, projects(&[("b1", "B")])).await;
    assert_eq!(
        bob.next().await,
        (
            "changes".to_string(),
            json!({"sequence": bobs["timestamp"]})
        )
    );
    // A write that changes nothing announces nothing: alice's next event is the following real change.
    let (_, again) = s
        .post(
            "/v1/sync/bulk",
            Some(&s.token("alice")),
            json!({"upserts": {"projects": [{"id": "p1", "name": "A"}]}}).to_string(),
        )
        .await;
    assert_eq!(again["counts"]["projects"]["unchanged"], 1);
    let (_, second) = s
        .push(
            "alice",
            pushed["timestamp"].as_i64().unwrap(),
            projects(&[("p2", "B")]),
        )
        .await;
    assert_eq!(
        alice.next().await,
        (
            "changes".to_string(),
            json!({"sequence": second["timestamp"]})
        )
    );
    let unauthorized = reqwest::Client::new()
        .get(format!("{}/v1/events", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    // Stopping the server ends the open streams instead of waiting on them.
    tokio::time::timeout(std::time::Duration::from_secs(10), s.stop())
        .await
        .expect("the server stopped with streams open");
    assert!(alice.ends().await, "alice's stream ended");
    assert!(bob.ends().await, "bob's stream ended");
}

#[tokio::test]
async fn imports_run_through_the_routes_and_never_return_the_credential() {
    const TOKEN: &str = "spotify-token-never-shown";
    let fake = syncline_testkit::fake_apis::FakeSpotify::start(TOKEN, 120, 0, 0, 0).await;
    let key = syncline_import::Sealer::generate_key();
    let server = TestServer::start(&format!(
        "[imports]\nencryption_key = \"{key}\"\n[imports.sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nstreams = {{ saved_tracks = \"spotify_tracks\" }}\n[tables.spotify_tracks]\ncolumns = {{ name = \"string\", added_at = \"string\" }}\n",
        fake.base_url()
    ))
    .await;
    let alice = server.token("alice");
    let http = &server.http;
    let url = |path: &str| format!("{}{path}", server.url);
    let (status, body) = server
        .post("/v1/imports/spotify/start", Some(&alice), "")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_connection"))
    );
    let put = http
        .put(url("/v1/connections/spotify"))
        .bearer_auth(&alice)
        .body(json!({"access_token": TOKEN}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    let (status, body) = server
        .post("/v1/imports/spotify/start", Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut done = false;
    for _ in 0..400 {
        let response = http
            .get(url("/v1/imports/spotify/status"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        assert!(!text.contains(TOKEN));
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["connected"], true);
        if body["streams"][0]["status"] == "success" {
            assert_eq!(body["streams"][0]["processed"], 120);
            assert_eq!(body["streams"][0]["progress"], 100);
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(done, "the background runner finishes the import");
    assert_eq!(
        server.pull("alice", None).await["changes"]["spotify_tracks"]["updated"]
            .as_array()
            .unwrap()
            .len(),
        120
    );
    let list: Value = http
        .get(url("/v1/imports"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sources"][0]["source"], "spotify");
    assert!(!list.to_string().contains(TOKEN));
    let (status, body) = server
        .post("/v1/imports/spotify/stop", Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post("/v1/imports/spotify/reset", Some(&alice), "")
        .await;
    assert_eq!(
        (status, body["streams"][0]["status"].as_str()),
        (StatusCode::OK, Some("none"))
    );
    let (status, body) = server
        .post("/v1/imports/lastfm/start", Some(&alice), "")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_source"))
    );
    let (status, _) = server.post("/v1/imports/spotify/start", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server
        .post("/v1/imports/spotify/start", Some(&server.token("bob")), "")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_connection")),
        "credentials are per user"
    );
}

impl TestServer {
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// A push as a device that reports its outbox.
    async fn push_from(
        &self,
        user: &str,
        device: &str,
        pending: u64,
        since: i64,
        changes: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/v1/sync/push", self.url))
            .bearer_auth(self.token(user))
            .header("syncline-device", device)
            .header("syncline-outbox-pending", pending.to_string())
            .body(json!({"lastPulledAt": since, "changes": changes}).to_string())
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }
}

#[tokio::test]
async fn activity_reports_last_contacts_devices_rejections_and_a_time_series() {
    let s = TestServer::start("").await;
    let (status, empty) = s.get("/v1/activity", Some(&s.token("alice"))).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["activity"]["user"], "alice");
    assert_eq!(empty["activity"]["lastPullAt"], Value::Null);
    assert_eq!(empty["series"]["buckets"], json!([]));

    let (_, first) = s
        .push_from(
            "alice",
            "phone",
            3,
            0,
            projects(&[("p1", "A"), ("p2", "B")]),
        )
        .await;
    let t = first["timestamp"].as_i64().unwrap();
    // One valid and one invalid record: the invalid one is rejected, the push applies.
    let mixed = json!({"projects": {"created": [{"id": "p3", "name": "C"}, {"id": "p4", "name": 5}], "updated": [], "deleted": []}});
    let (status, body) = s.push_from("alice", "phone", 1, t, mixed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A stale cursor conflicts.
    let stale = json!({"projects": {"created": [], "updated": [{"id": "p1", "name": "A2"}], "deleted": []}});
    let (status, _) = s.push_from("alice", "laptop", 0, 1, stale).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let pulled = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .bearer_auth(s.token("alice"))
        .header("syncline-device", "laptop")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), StatusCode::OK);
    pulled.bytes().await.unwrap();

    let (_, body) = s.get("/v1/activity", Some(&s.token("alice"))).await;
    let a = &body["activity"];
    assert_eq!(
        (a["pushes"].as_u64(), a["pulls"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(a["recordsPushed"], 3, "p1, p2, p3: {a}");
    assert_eq!(a["recordsPulled"], 3);
    assert_eq!(
        (a["rejected"].as_u64(), a["conflicts"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        a["lastRejection"]
            .as_str()
            .unwrap()
            .contains("refused (409)"),
        "{a}"
    );
    assert!(a["lastPullAt"].as_i64().unwrap() >= a["lastPushAt"].as_i64().unwrap());
    let devices: Vec<(&str, Option<u64>)> = a["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap(), d["outboxPending"].as_u64()))
        .collect();
    assert_eq!(devices, [("laptop", Some(0)), ("phone", Some(1))]);
    let buckets = body["series"]["buckets"].as_array().unwrap();
    let (pushed, pulled): (u64, u64) = buckets.iter().fold((0, 0), |(p, q), b| {
        (
            p + b["pushed"].as_u64().unwrap(),
            q + b["pulled"].as_u64().unwrap(),
        )
    });
    assert_eq!((pushed, pulled), (3, 3));
    assert_eq!(body["series"]["bucketMs"], 60_000);

    // Bob sees only his own (nothing).
    let (_, bob) = s.get("/v1/activity", Some(&s.token("bob"))).await;
    assert_eq!(bob["activity"]["pushes"], 0);
    // Malformed client headers and windows are refused with a clear code.
    let bad = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .bearer_auth(s.token("alice"))
        .header("syncline-outbox-pending", "lots")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["code"],
        "invalid_outbox_pending"
    );
    let (status, body) = s.get("/v1/activity?hours=0", Some(&s.token("alice"))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, body) = s.get("/v1/activity", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_token"))
    );
    s.stop().await;
}

/// A fresh SQLite file (in the returned directory) and a fresh database on the test process's PostgreSQL
/// cluster: the storage urls a test runs on, one after the other.
async fn both_backends() -> Vec<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("t.db").display());
    let postgres =
        tokio::task::spawn_blocking(|| syncline_testkit::TempPostgres::shared().fresh_database())
            .await
            .unwrap();
    vec![(sqlite, dir), (postgres, tempfile::tempdir().unwrap())]
}

impl TestServer {
    /// A pull from the start as a device that reports its outbox; how many records it brought.
    async fn pull_from(&self, user: &str, device: &str, pending: u64) -> usize {
        let response = self
            .http
            .post(format!("{}/v1/sync/pull", self.url))
            .bearer_auth(self.token(user))
            .header("syncline-device", device)
            .header("syncline-outbox-pending", pending.to_string())
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        ids(&response.json().await.unwrap(), "projects").len()
    }

    /// The caller's activity and the records pulled in its time series.
    async fn my_activity(&self, user: &str) -> (Value, u64) {
        let (status, body) = self.get("/v1/activity", Some(&self.token(user))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["activity"].clone(), pulled_in(&body["series"]))
    }
}

/// Records pulled, added up over a time series' buckets.
fn pulled_in(series: &Value) -> u64 {
    series["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["pulled"].as_u64().unwrap())
        .sum()
}

/// A pull's count is written off its request path; a read of activity on the same instance right after the
/// pull's answer still finds it, in the user's activity and in the admin overview, on both backends.
#[tokio::test]
async fn a_pull_is_in_the_activity_read_right_after_it() {
    for (url, dir) in both_backends().await {
        let s = TestServer::start_on(&url, "", "", dir).await;
        s.push("alice", 0, projects(&[("p1", "A"), ("p2", "B")]))
            .await;
        let admin = token_with("root", SECRET, 3600, Some(json!({"role": "admin"})));
        for i in 1..=15u64 {
            assert_eq!(s.pull_from("alice", "phone", i).await, 2);
            let (a, pulled) = s.my_activity("alice").await;
            assert_eq!(
                (a["pulls"].as_u64(), pulled),
                (Some(i), 2 * i),
                "{url}: {a}"
            );
            assert_eq!(a["recordsPulled"], 2 * i, "{url}");
            assert_eq!(a["devices"][0]["outboxPending"], i, "{url}: {a}");
            assert!(a["lastPullAt"].is_i64(), "{url}: {a}");
            let (status, all) = s.get("/v1/admin/overview", Some(&admin)).await;
            assert_eq!(status, StatusCode::OK, "{all}");
            assert_eq!(all["users"][0]["user"], "alice", "{url}: {all}");
            assert_eq!(all["users"][0]["pulls"], i, "{url}: {all}");
            assert_eq!(pulled_in(&all["series"]), 2 * i, "{url}");
        }
        s.stop().await;
    }
}

/// Many pulls of one device at once: their counts are added up before they are written, and the totals
/// are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_device_count_exactly() {
    for (url, dir) in both_backends().await {
        let s = Arc::new(TestServer::start_on(&url, "", "max_pulls_per_user = 64", dir).await);
        s.push(
            "alice",
            0,
            projects(&[("p1", "A"), ("p2", "B"), ("p3", "C")]),
        )
        .await;
        let mut pullers = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            pullers.push(tokio::spawn(async move {
                for _ in 0..25 {
                    assert_eq!(s.pull_from("alice", "phone", 0).await, 3);
                }
            }));
        }
        for p in pullers {
            p.await.unwrap();
        }
        let (a, pulled) = s.my_activity("alice").await;
        assert_eq!(
            (a["pulls"].as_u64(), a["recordsPulled"].as_u64(), pulled),
            (Some(200), Some(600), 600),
            "{url}: {a}"
        );
        assert_eq!(a["pushes"], 1, "{url}");
        assert_eq!(a["devices"].as_array().unwrap().len(), 1, "{url}: {a}");
        Arc::into_inner(s).unwrap().stop().await;
    }
}

/// Stopping a server writes the activity its pulls queued: a server started again on the same storage shows
/// every pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_keeps_the_activity_its_pulls_queued() {
    for (url, dir) in both_backends().await {
        let s = Arc::new(
            TestServer::start_on(
                &url,
                "",
                "max_pulls_per_user = 64",
                tempfile::tempdir().unwrap(),
            )
            .await,
        );
        s.push("alice", 0, projects(&[("p1", "A")])).await;
        let pullers: Vec<_> = (0..40)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.pull_from("alice", "phone", 0).await })
            })
            .collect();
        for p in pullers {
            assert_eq!(p.await.unwrap(), 1);
        }
        // No read of activity before the stop: nothing waited for the queue to be written.
        Arc::into_inner(s).unwrap().stop().await;
        let again = TestServer::start_on(&url, "", "", tempfile::tempdir().unwrap()).await;
        let (a, pulled) = again.my_activity("alice").await;
        assert_eq!((a["pulls"].as_u64(), pulled), (Some(40), 40), "{url}: {a}");
        again.stop().await;
        drop(dir);
    }
}

#[tokio::test]
async fn the_admin_overview_lists_everyone_and_refuses_other_users() {
    let s = TestServer::start("").await;
    s.push("alice", 0, projects(&[("p1", "A")])).await;
    s.pull("bob", None).await;
    let (status, body) = s.get("/v1/admin/overview", Some(&s.token("alice"))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("admin"));
    let (status, _) = s.get("/v1/admin/overview", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired = token_with("root", SECRET, -120, Some(json!({"role": "admin"})));
    let (status, body) = s.get("/v1/admin/overview", Some(&expired)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );

    let admin = token_with("root", SECRET, 3600, Some(json!({"role": "admin"})));
    let (status, body) = s.get("/v1/admin/overview", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let users: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2, "{body}");
    assert!(users.contains(&"alice") && users.contains(&"bob"));
    let buckets = body["series"]["buckets"].as_array().unwrap();
    let pushed: u64 = buckets.iter().map(|b| b["pushed"].as_u64().unwrap()).sum();
    assert_eq!(pushed, 1);
    assert_eq!(body["imports"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let s = TestServer::start("").await;
    let page = s.http.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = page.text().await.unwrap();
    for linked in ["/assets/app.js", "/assets/app.css"] {
        assert!(html.contains(linked), "the page links {linked}");
        let asset = s
            .http
            .get(format!("{}{linked}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), StatusCode::OK, "{linked}");
        assert!(
            asset.text().await.unwrap().len() > 500,
            "{linked} is not a stub"
        );
    }
    let js = s
        .http
        .get(format!("{}/assets/app.js", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    s.stop().await;
}

#[tokio::test]
async fn imports_describe_their_connect_form_check_credentials_and_report_progress_live() {
    const TOKEN: &str = "spotify-token";
    let fake = syncline_testkit::fake_apis::FakeSpotify::start(TOKEN, 60, 0, 0, 0).await;
    let key = syncline_import::Sealer::generate_key();
    let server = TestServer::start(&format!(
        "[imports]\nencryption_key = \"{key}\"\npage_size = 20\n[imports.sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nstreams = {{ saved_tracks = \"spotify_tracks\" }}\n[tables.spotify_tracks]\ncolumns = {{ name = \"string\", added_at = \"string\" }}\n",
        fake.base_url()
    ))
    .await;
    let alice = server.token("alice");
    let (_, list) = server.get("/v1/imports", Some(&alice)).await;
    let spotify = &list["sources"][0];
    assert_eq!(spotify["kind"], "spotify");
    assert_eq!(spotify["fields"], json!(["access_token"]));
    assert_eq!(spotify["tables"], json!({"saved_tracks": "spotify_tracks"}));
    assert_eq!(spotify["connected"], false);
    assert!(list["now"].as_i64().unwrap() > 0);
    let put = |body: &'static str| {
        server
            .http
            .put(format!("{}/v1/connections/spotify", server.url))
            .bearer_auth(&alice)
            .body(body)
            .send()
    };
    for (body, status, code) in [
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_credential"),
        (
            r#"{"access_token": "  "}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_credential",
        ),
        (
            r#"{"access_token": "#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            r#"["access_token"]"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let response = put(body).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], code, "{body}");
        if code == "invalid_credential" {
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("`access_token`"),
                "{error}"
            );
        }
    }
    let ok = server
        .http
        .put(format!("{}/v1/connections/spotify", server.url))
        .bearer_auth(&alice)
        .body(json!({"access_token": TOKEN}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);

    let mut events = SseReader::open(&server.url, &alice).await;
    assert_eq!(events.next().await.0, "ready");
    let (status, _) = server
        .post("/v1/imports/spotify/start", Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Every saved state arrives as an `import` event: pending, running with growing progress, then success.
    let mut seen = Vec::new();
    loop {
        let (kind, data) = events.next().await;
        if kind != "import" {
            continue;
        }
        assert_eq!(
            (data["source"].as_str(), data["stream"].as_str()),
            (Some("spotify"), Some("saved_tracks"))
        );
        seen.push((
            data["status"].as_str().unwrap().to_string(),
            data["processed"].as_u64().unwrap(),
        ));
        if data["status"] == "success" {
            break;
        }
    }
    assert_eq!(seen[0], ("pending".to_string(), 0), "{seen:?}");
    assert!(seen.contains(&("running".to_string(), 20)), "{seen:?}");
    assert_eq!(seen.last().unwrap().1, 60);
    let (_, status) = server.get("/v1/imports/spotify/status", Some(&alice)).await;
    let outcome = &status["outcomes"][0];
    assert_eq!(
        (
            outcome["stream"].as_str(),
            outcome["upserted"].as_u64(),
            outcome["unchanged"].as_u64(),
            outcome["batches"].as_u64()
        ),
        (Some("saved_tracks"), Some(60), Some(0), Some(3)),
        "{status}"
    );
    let (_, mine) = server.get("/v1/activity", Some(&alice)).await;
    let imported: u64 = mine["series"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["imported"].as_u64().unwrap())
        .sum();
    assert_eq!(imported, 60);
    // The admin sees alice's finished import.
    let admin = token_with("root", SECRET, 3600, Some(json!({"role": "admin"})));
    let (_, overview) = server.get("/v1/admin/overview", Some(&admin)).await;
    assert_eq!(overview["imports"][0]["user"], "alice");
    assert_eq!(overview["imports"][0]["status"], "success");
    assert_eq!(overview["importsByStatus"]["success"], 1);
    server.stop().await;
}

#[tokio::test]
async fn accounts_connect_through_a_consent_page_or_an_npsso_with_clear_refusals() {
    use syncline_testkit::fake_apis::{
        FakeAuthServer, FakePlayStation, FakeSpotify, OAuthClientStyle, PSN_NPSSO,
    };
    let spotify = FakeSpotify::start("never-pasted", 30, 0, 0, 0).await;
    let spotify_auth = FakeAuthServer::start(
        spotify.control.clone(),
        "client",
        "secret",
        OAuthClientStyle::Basic,
    )
    .await;
    let psn = FakePlayStation::start("never-pasted", 2, 1).await;
    let psn_auth = FakeAuthServer::playstation(psn.control.clone()).await;
    let key = syncline_import::Sealer::generate_key();
    let a = spotify_auth.base_url();
    let server = TestServer::start(&format!(
        "[imports]\nencryption_key = \"{key}\"\nmode = \"call\"\n\
         [imports.sources.spotify]\nkind = \"spotify\"\nbase_url = \"{}\"\nauth_url = \"{a}/authorize\"\n\
         token_url = \"{a}/api/token\"\nclient_id = \"client\"\nclient_secret = \"secret\"\n\
         streams = {{ saved_tracks = \"spotify_tracks\" }}\n\
         [imports.sources.psn]\nkind = \"playstation\"\nbase_url = \"{}\"\n\
         auth_base_url = \"{}/api/authz/v3/oauth\"\nstreams = {{ trophy_titles = \"psn_titles\" }}\n\
         [tables.spotify_tracks]\ncolumns = {{ name = \"string\" }}\n\
         [tables.psn_titles]\ncolumns = {{ name = \"string\" }}\n",
        spotify.base_url(),
        psn.base_url(),
        psn_auth.base_url()
    ))
    .await;
    let alice = server.token("alice");
    let put = |source: &str, body: Value| {
        server
            .http
            .put(format!("{}/v1/connections/{source}", server.url))
            .bearer_auth(&alice)
            .body(body.to_string())
            .send()
    };
    // PlayStation: the NPSSO, checked with Sony at once.
    let refused = put("psn", json!({"npsso": "not-valid"})).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["code"], "auth_npsso_refused");
    assert!(refused["message"].as_str().unwrap().contains("ssocookie"));
    let empty: Value = put("psn", json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(empty["code"], "invalid_credential");
    assert!(
        empty["message"].as_str().unwrap().contains("`npsso`"),
        "{empty}"
    );
    let ok = put("psn", json!({"npsso": PSN_NPSSO})).await.unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(psn_auth.grants(), ["authorization_code"]);
    let (_, list) = server.get("/v1/imports", Some(&alice)).await;
    let by_name = |n: &str| {
        list["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            by_name("psn")["fields"].clone(),
            by_name("psn")["consent"].clone()
        ),
        (json!(["npsso"]), json!(false))
    );
    assert_eq!(by_name("spotify")["consent"], true);
    assert_eq!(by_name("spotify")["connected"], false);

    // Spotify: the consent page, then our callback, in the browser that asked (it has the consent cookie).
    let asked = server
        .http
        .post(format!("{}/v1/connections/spotify/authorize", server.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::OK);
    let binding = asked.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body: Value = asked.json().await.unwrap();
    let consent = reqwest::Url::parse(body["url"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = consent.query_pairs().into_owned().collect();
    assert_eq!(
        q["redirect_uri"],
        format!("{}/v1/connections/spotify/callback", server.url)
    );
    assert!(!q.contains_key("code_challenge"), "a confidential client");
    let back = consent::agree(consent.as_str()).await;
    assert!(back.starts_with(&server.url), "{back}");
    let browser = syncline_http::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let callback = |path: String| browser.get(path).header("cookie", &binding).send();
    let forged = callback(format!(
        "{}/v1/connections/spotify/callback?code=c&state=forged",
        server.url
    ))
    .await
    .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        forged.json::<Value>().await.unwrap()["code"],
        "invalid_state"
    );
    let denied = callback(format!(
        "{}/v1/connections/spotify/callback?error=access_denied&state=x",
        server.url
    ))
    .await
    .unwrap();
    assert_eq!(
        denied.json::<Value>().await.unwrap()["code"],
        "consent_denied"
    );
    let done = callback(back).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()["location"], "/?connected=spotify");
    assert_eq!(spotify_auth.grants(), ["authorization_code"]);
    let (status, started) = server
        .post("/v1/imports/spotify/start", Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["streams"][0]["status"], "success", "{started}");
    assert_eq!(started["streams"][0]["processed"], 30);
    // A source without a consent flow says so.
    let (status, body) = server
        .post("/v1/connections/psn/authorize", Some(&alice), "")
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::CONFLICT, json!("no_consent_flow"))
    );
    server.stop().await;
}

/// PostgreSQL restarts while devices push: requests that meet the outage answer 503 `storage_unavailable`
/// with `Retry-After` (never a 500), requests after it succeed on fresh connections, and every push that was
/// acknowledged is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_answers_503_meanwhile_and_loses_nothing_acknowledged() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(syncline_testkit::TempPostgres::start)
            .await
            .unwrap(),
    );
    let url = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.fresh_database()
    })
    .await
    .unwrap();
    let s = Arc::new(
        TestServer::start_on(
            &url,
            "acquire_timeout_ms = 500",
            "",
            tempfile::tempdir().unwrap(),
        )
        .await,
    );
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut pushers = Vec::new();
    for w in 0..4 {
        let (s, restarted) = (s.clone(), restarted.clone());
        pushers.push(tokio::spawn(async move {
            let (mut acknowledged, mut unavailable, mut after) = (Vec::new(), 0, 0);
            let token = s.token("alice");
            for i in 0.. {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the server never recovered"
                );
                let id = format!("w{w}-{i}");
                let body = json!({"lastPulledAt": 0, "changes": projects(&[(&id, "x")])});
                let response = s
                    .http
                    .post(format!("{}/v1/sync/push", s.url))
                    .bearer_auth(&token)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let retry_after = response.headers().get("retry-after").cloned();
                let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                if status == StatusCode::OK {
                    acknowledged.push(id);
                    if restarted.load(std::sync::atomic::Ordering::SeqCst) {
                        after += 1;
                        if after == 20 {
                            return (acknowledged, unavailable);
                        }
                    }
                } else {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                    assert_eq!(body["code"], "storage_unavailable", "{body}");
                    assert!(retry_after.is_some(), "503 without Retry-After");
                    unavailable += 1;
                }
            }
            unreachable!()
        }));
    }
    // Let the pushers get going, then restart the cluster under them, down for a second.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.restart(|| std::thread::sleep(std::time::Duration::from_secs(1)))
    })
    .await
    .unwrap();
    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = HashSet::new();
    let mut unavailable = 0;
    for p in pushers {
        let (acks, n) = p.await.unwrap();
        acknowledged.extend(acks);
        unavailable += n;
    }
    assert!(unavailable > 0, "no request met the outage");
    let seen: HashSet<String> = ids(&s.pull("alice", None).await, "projects")
        .into_iter()
        .collect();
    let lost: Vec<_> = acknowledged.difference(&seen).collect();
    assert!(lost.is_empty(), "acknowledged pushes lost: {lost:?}");
}
