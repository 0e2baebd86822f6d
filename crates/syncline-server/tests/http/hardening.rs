//! Hostile and broken clients over real sockets on 127.0.0.1: values other readers choke on, shapes the
//! protocol does not document, errors that must be JSON, subjects, slow headers and bodies, idle and stalled
//! connections, the connection limit and the per-user pull limit. Every case is bounded in time, checks the
//! answer, that the server still answers, and that a full pull is byte-identical before and after.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// The raw text of a full pull of `user`, to compare byte for byte.
async fn full_pull(s: &TestServer, user: &str) -> String {
    let response = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .bearer_auth(s.token(user))
        .body(r#"{"lastPulledAt":null}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// A raw request; the answer's status line and body (read until the server closes or `limit` passes).
async fn raw(s: &TestServer, request: &[u8], limit: Duration) -> (String, String) {
    let mut stream = TcpStream::connect(s.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    // A connection the server closed at once may refuse the write: then the answer is empty.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Whether the server closes `stream` within `limit` (reads return end of stream or an error).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A table with a `json` column, where nesting is counted.
const NOTES: &str = "[tables.notes]\ncolumns = { body = \"json\" }";

async fn value_cases(s: &TestServer) {
    s.push("alice", 0, projects(&[("p1", "kept")])).await;
    let before = full_pull(s, "alice").await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases = [
        (
            r#"{"id":"bad","position":1e400}"#.to_string(),
            "number_out_of_range",
        ),
        (
            r#"{"id":"bad","position":-1e400}"#.to_string(),
            "number_out_of_range",
        ),
        (
            r#"{"id":"bad","title":"\ud800"}"#.to_string(),
            "invalid_unicode",
        ),
        (
            r#"{"id":"bad","title":"a\udc00"}"#.to_string(),
            "invalid_unicode",
        ),
        (
            r#"{"id":"bad","title":"a\u0000b"}"#.to_string(),
            "nul_character",
        ),
        (format!(r#"{{"id":"bad","body":{deep}}}"#), "too_deep"),
        (
            r#"{"id":"bad","body":{"k":[1e999]}}"#.to_string(),
            "number_out_of_range",
        ),
        (
            r#"{"id":"bad","body":{"\u0000":1}}"#.to_string(),
            "nul_character",
        ),
    ];
    for (record, code) in &cases {
        let table = if record.contains("\"body\"") {
            "notes"
        } else {
            "tasks"
        };
        let body = format!(
            r#"{{"lastPulledAt":0,"changes":{{"{table}":{{"created":[{record}],"updated":[],"deleted":[]}}}}}}"#
        );
        let (status, answer) = s.post("/v1/sync/push", Some(&s.token("alice")), body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            answer["rejected"][0]["code"], *code,
            "{record:.80}: {answer}"
        );
        assert_eq!(answer["experimentalRejectedIds"][table], json!(["bad"]));
        let bulk = format!(r#"{{"upserts":{{"{table}":[{record}]}}}}"#);
        let (status, answer) = s.post("/v1/sync/bulk", Some(&s.token("alice")), bulk).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["errors"][0]["code"], *code, "{record:.80}");
    }
    // Raw invalid UTF-8, even in a field the server ignores.
    let mut body = br#"{"lastPulledAt":0,"ignored":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"","changes":{}}"#);
    for path in ["/v1/sync/push", "/v1/sync/pull", "/v1/sync/bulk"] {
        let (status, answer) = s.post(path, Some(&s.token("alice")), body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("malformed_json")),
            "{path}"
        );
    }
    assert_eq!(full_pull(s, "alice").await, before, "nothing was stored");
}

#[tokio::test]
async fn values_no_reader_can_read_back_are_refused_on_sqlite() {
    let s = TestServer::start(NOTES).await;
    value_cases(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn values_no_reader_can_read_back_are_refused_on_postgres() {
    let url =
        tokio::task::spawn_blocking(|| syncline_testkit::TempPostgres::shared().fresh_database())
            .await
            .unwrap();
    let s = TestServer::start_on(&url, "", NOTES, tempfile::tempdir().unwrap()).await;
    value_cases(&s).await;
    shape_cases(&s).await;
    // A project delete still cascades and answers on PostgreSQL afterwards (no stored value breaks a cast).
    let (status, answer) = s
        .post(
            "/v1/sync/bulk",
            Some(&s.token("alice")),
            r#"{"deletes":{"projects":["p1"]}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    s.stop().await;
}

async fn shape_cases(s: &TestServer) {
    s.push("bob", 0, projects(&[("b1", "kept")])).await;
    let before = full_pull(s, "bob").await;
    let token = s.token("bob");
    let cases = [
        ("/v1/sync/pull", "[]"),
        ("/v1/sync/pull", r#"[null, 0]"#),
        ("/v1/sync/pull", r#"{"lastPulledAt":-5}"#),
        ("/v1/sync/pull", r#"{"migration":[1,[],[]]}"#),
        (
            "/v1/sync/push",
            r#"{"changes":{"projects":[[{"id":"q1"}],[],[]]}}"#,
        ),
        (
            "/v1/sync/push",
            r#"[{"projects":{"created":[{"id":"q1"}]}}]"#,
        ),
        (
            "/v1/sync/push",
            r#"{"lastPulledAt":-1,"changes":{"projects":{"created":[{"id":"q1"}]}}}"#,
        ),
        ("/v1/sync/bulk", r#"[{"projects":[{"id":"q1"}]}]"#),
    ];
    for (path, body) in cases {
        let (status, answer) = s.post(path, Some(&token), body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{path} {body}: {answer}"
        );
        assert!(answer["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(full_pull(s, "bob").await, before, "q1 was not written");
}

#[tokio::test]
async fn only_the_documented_shapes_are_accepted() {
    let s = TestServer::start("").await;
    shape_cases(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn every_error_is_json_with_nosniff() {
    let s = TestServer::start("max_body_bytes = 1048576").await;
    let token = s.token("alice");
    let checks = [
        (
            s.http.get(format!("{}/v1/activity?hours=abc", s.url)),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            s.http.get(format!("{}/v1/admin/overview?hours=-1", s.url)),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            s.http.get(format!("{}/v1/imports/%FF/status", s.url)),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            s.http
                .put(format!("{}/v1/connections/spotify", s.url))
                .body(vec![b' '; 2 << 20]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            s.http
                .put(format!("{}/v1/connections/spotify", s.url))
                .body(format!(r#"{{"access_token":"{}"}}"#, "x".repeat(900_000))),
            StatusCode::NOT_FOUND,
            "unknown_source",
        ),
        (
            s.http.get(format!("{}/nope", s.url)),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            s.http.delete(format!("{}/v1/sync/pull", s.url)),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            s.http
                .post(format!("{}/v1/sync/push", s.url))
                .body(vec![b' '; 2 << 20]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (request, status, code) in checks {
        let response = request.bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), status, "{code}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "application/json", "{code}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code);
        assert!(body["message"].as_str().unwrap().len() > 5, "{body}");
    }
    for path in ["/healthz", "/openapi.json", "/metrics", "/"] {
        let response = s.http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn subjects_follow_one_rule() {
    let s = TestServer::start("").await;
    let body = r#"{"lastPulledAt":null}"#;
    for sub in ["a\u{0}b", "tab\there", "", &"x".repeat(256)] {
        let token = token_with(sub, SECRET, 3600, None);
        let (status, answer) = s.post("/v1/sync/pull", Some(&token), body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_subject")),
            "{sub:?}"
        );
    }
    for sub in ["x".repeat(255), "ünïcode user@example.com".to_string()] {
        let token = token_with(&sub, SECRET, 3600, None);
        let (status, _) = s.post("/v1/sync/pull", Some(&token), body).await;
        assert_eq!(status, StatusCode::OK, "{sub}");
    }
    s.stop().await;
}

const DEADLINES: &str = "header_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nkeep_alive_timeout_secs = 1\nwrite_timeout_secs = 1";

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed() {
    let s = TestServer::start(DEADLINES).await;
    s.push("alice", 0, projects(&[("p1", "kept")])).await;
    let before = full_pull(&s, "alice").await;
    let addr = s.server.as_ref().unwrap().addr;

    // Half a request head, then silence: closed after the header deadline.
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    slow_head
        .write_all(b"POST /v1/sync/pull HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow_head, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A body of 60 bytes out of a declared 100,000: 408 with the JSON body, then closed.
    let request = format!(
        "POST /v1/sync/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n{}",
        s.token("alice"),
        "x".repeat(60)
    );
    let (status, body) = raw(&s, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(status.contains(" 408 "), "{status}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "request_timeout");

    // A kept-alive connection that goes quiet after one answer is closed after the keep-alive deadline.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);

    // A connection that keeps sending requests in time stays open across them.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        busy.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = busy.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    }
    assert_eq!(full_pull(&s, "alice").await, before);
    s.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_healthz_answers_and_the_rest_get_503() {
    let s = TestServer::start(
        "header_read_timeout_secs = 5\nbody_read_timeout_secs = 1\nmax_connections = 4",
    )
    .await;
    s.push("alice", 0, projects(&[("p1", "kept")])).await;
    let before = full_pull(&s, "alice").await;
    let addr = s.server.as_ref().unwrap().addr;
    let hog = || async move {
        let mut hog = TcpStream::connect(addr).await.unwrap();
        hog.write_all(b"POST /v1/sync/pull HTTP/1.1\r\n")
            .await
            .unwrap();
        hog
    };
    // Four slow clients take every slot.
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(hog().await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status, body) = raw(&s, healthz, Duration::from_secs(3)).await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let request = format!(
        "POST /v1/sync/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        s.token("alice")
    );
    let (status, body) = raw(&s, request.as_bytes(), Duration::from_secs(3)).await;
    assert!(status.contains(" 503 "), "{status}");
    assert!(body.len() < 300);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["code"], "too_many_connections");

    // Slow clients past the limit too: beyond the overflow, a connection is closed at once, unanswered.
    let mut overflow = Vec::new();
    for _ in 0..syncline_server::OVERFLOW_CONNECTIONS {
        overflow.push(hog().await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (status, _) = raw(&s, healthz, Duration::from_secs(3)).await;
    assert_eq!(status, "", "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The overflow's slow clients get 2 s for their headers, then /healthz answers again.
    for hog in &mut overflow {
        assert!(closed_within(hog, Duration::from_secs(4)).await);
    }
    let (status, _) = raw(&s, healthz, Duration::from_secs(3)).await;
    assert!(status.contains(" 200 "), "{status}");
    // The slots' slow clients are cut off at their header deadline, and the server serves again.
    for hog in &mut hogs {
        assert!(closed_within(hog, Duration::from_secs(6)).await);
    }
    assert_eq!(full_pull(&s, "alice").await, before);
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_pull_is_closed_and_releases_its_snapshot_and_its_slot() {
    let s = TestServer::start(&format!("{DEADLINES}\nmax_pulls_per_user = 1")).await;
    // About 4 MB of records: far more than the socket buffers hold.
    let name = "n".repeat(1000);
    for batch in 0..4 {
        let records: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("p{batch}-{i}"), name.clone()))
            .collect();
        let refs: Vec<(&str, &str)> = records
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (status, _) = s.push("alice", 0, projects(&refs)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let before = full_pull(&s, "alice").await;
    let addr = s.server.as_ref().unwrap().addr;

    // A reader with a small receive buffer that asks for everything and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/sync/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        s.token("alice")
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While it stalls, the user's one pull slot is taken (429 with Retry-After), and a checkpoint cannot
    // pass the snapshot it pins.
    let response = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .bearer_auth(s.token("alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "too_many_pulls"
    );
    s.push("alice", 0, projects(&[("later", "x")])).await;
    let db = rusqlite::Connection::open(s._dir.path().join("t.db")).unwrap();
    let checkpoint = |db: &rusqlite::Connection| -> i64 {
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(checkpoint(&db), 1, "the stalled pull pins its snapshot");

    // Within the write deadline (plus scheduling), the server gives up on it and closes the connection.
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        if checkpoint(&db) == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the snapshot was released");
    let after = full_pull(&s, "alice").await;
    assert!(after.len() > before.len() && after.contains("\"later\""));
    // The stalled connection was closed: reading drains what the kernel held, then ends.
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_stalled_pull_is_closed_and_releases_its_transaction_and_its_slot() {
    let url =
        tokio::task::spawn_blocking(|| syncline_testkit::TempPostgres::shared().fresh_database())
            .await
            .unwrap();
    let s = TestServer::start_on(
        &url,
        "",
        // A longer write deadline than DEADLINES: the probe and the push must happen while it stalls.
        "header_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nkeep_alive_timeout_secs = 1\n\
         write_timeout_secs = 3\nmax_pulls_per_user = 1",
        tempfile::tempdir().unwrap(),
    )
    .await;
    // The stalled pull's snapshot is an open transaction of another session on this database.
    stalled_pull_case(&s, move || {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
                &[],
            )
            .unwrap()
            .get(0);
        open > 0
    })
    .await;
    s.stop().await;
}

/// PostgreSQL's half of the stalled-pull case (SQLite's is above): about 4 MB of records, then a reader with a small receive buffer that asks for everything and reads
/// nothing: while it stalls, the user's one pull slot is taken (429 with Retry-After) and `pinned` says its
/// snapshot is held; within the write deadline the server gives up on it, closes the connection and lets the
/// snapshot go, and the data is intact.
async fn stalled_pull_case(s: &TestServer, pinned: impl Fn() -> bool + Clone + Send + 'static) {
    let name = "n".repeat(1000);
    for batch in 0..4 {
        let records: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("p{batch}-{i}"), name.clone()))
            .collect();
        let refs: Vec<(&str, &str)> = records
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (status, _) = s.push("alice", 0, projects(&refs)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let before = full_pull(s, "alice").await;
    let addr = s.server.as_ref().unwrap().addr;
    let probe = || {
        let pinned = pinned.clone();
        async move { tokio::task::spawn_blocking(pinned).await.unwrap() }
    };

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/sync/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        s.token("alice")
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let response = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .bearer_auth(s.token("alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "too_many_pulls"
    );
    s.push("alice", 0, projects(&[("later", "x")])).await;
    assert!(probe().await, "the stalled pull pins its snapshot");

    // Within the write deadline (plus scheduling), the server gives up on it and closes the connection.
    let started = Instant::now();
    let mut released = false;
    while started.elapsed() < Duration::from_secs(8) {
        if !probe().await {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the snapshot was released");
    let after = full_pull(s, "alice").await;
    assert!(after.len() > before.len() && after.contains("\"later\""));
    // The stalled connection was closed: reading drains what the kernel held, then ends.
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
}

/// The `WWW-Authenticate` header of a `401` answer to `authorization` (or to no header), with its code.
async fn refusal(s: &TestServer, authorization: Option<&str>, query: &str) -> (String, String) {
    let mut request = s
        .http
        .post(format!("{}/v1/sync/pull{query}", s.url))
        .body(r#"{"lastPulledAt":null}"#);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{authorization:?}"
    );
    assert_eq!(response.headers()["content-type"], "application/json");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{authorization:?}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    (challenge, body["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn refused_tokens_get_401_with_the_bearer_challenge_of_rfc_6750() {
    let s = TestServer::start("").await;
    let now = Clock::now_ms(&SystemClock) / 1000;
    let signed = |header: &str, claims: Value| {
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        use sha2::Digest as _;
        // HMAC-SHA256 by its definition (RFC 2104), so a header can claim any algorithm.
        let mut key = SECRET.as_bytes().to_vec();
        key.resize(64, 0);
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let inner = sha2::Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(input.as_bytes())
            .finalize();
        let mac = sha2::Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        format!("{input}.{}", b64url(&mac))
    };
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let valid = json!({"sub": "alice", "exp": now + 3600});
    // The helper really signs: the same token with its own header is accepted.
    let (status, _) = s
        .post("/v1/sync/pull", Some(&signed(hs256, valid.clone())), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let good = s.token("alice");
    let mut tampered = good.clone();
    tampered.truncate(good.len() - 4);
    tampered.push_str("AAAA");
    let refused = [
        (
            signed(r#"{"alg":"none","typ":"JWT"}"#, valid.clone())
                .rsplit_once('.')
                .unwrap()
                .0
                .to_string()
                + ".",
            "invalid_token",
        ),
        (
            signed(r#"{"alg":"RS256","typ":"JWT"}"#, valid.clone()),
            "invalid_token",
        ),
        (tampered, "invalid_token"),
        (token_with("alice", SECRET, -3600, None), "token_expired"),
        (
            signed(
                hs256,
                json!({"sub": "alice", "exp": now + 3600, "nbf": now + 3600}),
            ),
            "invalid_token",
        ),
        (signed(hs256, json!({"exp": now + 3600})), "invalid_token"),
        (signed(hs256, json!({"sub": "alice"})), "invalid_token"),
        (format!("{good}{}", "x".repeat(16_000)), "invalid_token"),
        (String::new(), "invalid_token"),
    ];
    for (token, code) in refused {
        let (challenge, got) = refusal(&s, Some(&format!("Bearer {token}")), "").await;
        assert_eq!(got, code, "{token:.60}");
        assert!(
            challenge.starts_with(
                r#"Bearer realm="syncline", error="invalid_token", error_description=""#
            ),
            "{token:.60}: {challenge}"
        );
    }
    let two = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        two.status(),
        StatusCode::UNAUTHORIZED,
        "two Authorization headers"
    );
    assert!(
        two.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    // No bearer token at all: the challenge names no error (RFC 6750 §3.1). A token in the query string is
    // not read (§2.3 is optional, and leaks tokens into logs).
    for (authorization, query, code) in [
        (None, "", "missing_token"),
        (None, &*format!("?access_token={good}"), "missing_token"),
        (Some("Basic YWxpY2U6c2VjcmV0"), "", "invalid_token"),
    ] {
        let (challenge, got) = refusal(&s, authorization, query).await;
        assert_eq!(
            (challenge.as_str(), got.as_str()),
            (r#"Bearer realm="syncline""#, code)
        );
    }
    // The scheme is case-insensitive (RFC 9110 §11.1), and spaces before the token are allowed.
    for authorization in [
        format!("bearer {good}"),
        format!("BEARER {good}"),
        format!("Bearer    {good}"),
    ] {
        let response = s
            .http
            .post(format!("{}/v1/sync/pull", s.url))
            .header("authorization", &authorization)
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{authorization:.12}");
    }
    s.stop().await;
}

#[tokio::test]
async fn coded_bodies_repeated_tables_and_broken_json_are_refused_and_change_nothing() {
    let s = TestServer::start("max_body_bytes = 262144").await;
    s.push("alice", 0, projects(&[("p1", "kept")])).await;
    let before = full_pull(&s, "alice").await;
    let token = s.token("alice");
    let push = json!({"lastPulledAt": 100, "changes": projects(&[("p2", "new")])}).to_string();

    // A valid push labelled gzip is not read: nothing is decompressed, and nothing is misread.
    for coding in ["gzip", "deflate, identity", "br"] {
        let response = s
            .http
            .post(format!("{}/v1/sync/push", s.url))
            .bearer_auth(&token)
            .header("content-encoding", coding)
            .body(push.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{coding}"
        );
        assert_eq!(response.headers()["accept-encoding"], "identity");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unsupported_content_encoding");
    }
    let response = s
        .http
        .post(format!("{}/v1/sync/pull", s.url))
        .bearer_auth(&token)
        .header("content-encoding", "identity")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A table named twice would otherwise keep its second half and drop the first without a word.
    let cases = [
        (
            "/v1/sync/push",
            r#"{"lastPulledAt":100,"changes":{"projects":{"created":[{"id":"p2","name":"x"}]},"projects":{"deleted":["p1"]}}}"#.to_string(),
            "invalid_request",
        ),
        (
            "/v1/sync/bulk",
            r#"{"deletes":{"projects":["p1"],"projects":[]}}"#.to_string(),
            "invalid_request",
        ),
        (
            "/v1/sync/bulk",
            r#"{"upserts":{"projects":[{"id":"p2","name":"x"}],"projects":[]}}"#.to_string(),
            "invalid_request",
        ),
        // Not JSON at all, whatever shape its first bytes have; deep but valid JSON is only of the wrong shape.
        ("/v1/sync/pull", "[".repeat(100_000), "malformed_json"),
        ("/v1/sync/push", "[".repeat(100_000), "malformed_json"),
        ("/v1/sync/bulk", "[".repeat(100_000), "malformed_json"),
        ("/v1/sync/push", format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)), "invalid_request"),
        ("/v1/sync/push", format!("{push} trailing"), "malformed_json"),
        ("/v1/sync/bulk", r#"{"deletes":{"projects":["p1"]}}{}"#.to_string(), "malformed_json"),
        ("/v1/sync/push", format!("\u{feff}{push}"), "malformed_json"),
    ];
    for (path, body, code) in cases {
        let (status, answer) = s.post(path, Some(&token), body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{path} {body:.80}: {answer}"
        );
    }

    // A chunked body over the limit: 413, and the connection is not kept (its rest is never read).
    let chunk = format!("1000\r\n{}\r\n", " ".repeat(0x1000));
    let request = format!(
        "POST /v1/sync/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(80)
    );
    let mut stream = TcpStream::connect(s.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 413"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains(r#"{"code":"payload_too_large""#), "{head}");
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);

    // A record with a key twice is refused on its own, whichever of the two a reader would keep.
    let (status, answer) = s
        .post(
            "/v1/sync/push",
            Some(&token),
            r#"{"lastPulledAt":100,"changes":{"projects":{"updated":[{"id":"p1","name":"a","name":"b"}]}}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rejected"][0]["code"], "invalid_record", "{answer}");

    assert_eq!(full_pull(&s, "alice").await, before, "nothing was applied");
    s.stop().await;
}

#[tokio::test]
async fn ambiguous_heads_and_traversal_paths_get_json_errors_and_smuggle_nothing() {
    let s = TestServer::start("").await;
    let limit = Duration::from_secs(5);
    let token = s.token("alice");
    let next = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let pull =
        format!("POST /v1/sync/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n");
    // Each is answered 400 in JSON and its connection closed: the request written after it is never read.
    for request in [
        format!("GET /healthz HTTP/1.1\r\n\r\n{next}"),
        format!("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{next}"),
        format!(
            "{pull}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n{next}"
        ),
        format!(
            "{pull}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFF\r\n{{}}\r\n0\r\n\r\n{next}"
        ),
    ] {
        let (status, body) = raw(&s, request.as_bytes(), limit).await;
        assert!(
            status.starts_with("HTTP/1.1 400 "),
            "{request:.60?}: {status}"
        );
        let body: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{request:.60?}: one JSON answer, got {body}"));
        assert_eq!(body["code"], "invalid_request", "{request:.60?}");
    }
    // Both Content-Length and Transfer-Encoding: the body is read as chunked, and the connection is closed
    // after the answer (RFC 9112 §6.1), so what the Content-Length would have framed is never a request.
    let request = format!(
        "{pull}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n{next}"
    );
    let mut stream = TcpStream::connect(s.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after the answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    // HTTP/1.0 has no Host requirement.
    let (status, body) = raw(&s, b"GET /healthz HTTP/1.0\r\n\r\n", limit).await;
    assert!(status.starts_with("HTTP/1.0 200 "), "{status}");
    assert_eq!(body, r#"{"status":"ok"}"#);
    // The dashboard is embedded in the binary: no path reaches a file, encoded or not.
    for path in [
        "/..%2f..%2fetc/passwd",
        "/assets/..%2f..%2f..%2fetc/passwd",
        "/assets/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
        "/assets/../../../etc/passwd",
        "/assets/app.js/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, body) = raw(&s, request.as_bytes(), limit).await;
        assert!(status.starts_with("HTTP/1.1 404 "), "{path}: {status}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "not_found", "{path}");
    }
    // No CORS: a preflight is a method the route does not take.
    let response = s
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/sync/pull", s.url))
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    s.stop().await;
}
