//! Several `syncline serve` processes on one PostgreSQL database, as behind a load balancer: a client may
//! push to one and pull from another, idempotency keys hold across instances, the dashboard's activity is the
//! same on every instance, concurrent writers on every instance never hide a change from a puller, and an
//! import whose instance is killed is finished by another.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use syncline_testkit::TempPostgres;
use syncline_testkit::fake_apis::FakeSpotify;

use crate::support::{
    Server, connect, first_stream, get_json, ids, imports_section, mint_token, serve,
    spotify_source, start_import, wait_for_import, write_config,
};

const SECRET: &str = "instances-secret-instances-secret";

/// Starts `n` server processes on one fresh PostgreSQL database.
fn instances(n: usize) -> (Vec<Server>, tempfile::TempDir) {
    instances_with(n, "")
}

/// Starts `n` server processes on one fresh PostgreSQL database, with `extra` appended to the config.
fn instances_with(n: usize, extra: &str) -> (Vec<Server>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &TempPostgres::shared().fresh_database(),
        SECRET,
        &format!(
            "[tables.projects]\ncolumns = {{ name = \"string\" }}\n\
             [tables.tasks]\ncolumns = {{ title = \"string\", project_id = \"string\" }}\nparent = {{ table = \"projects\", column = \"project_id\" }}\n{extra}"
        ),
    );
    let started = (0..n).map(|_| serve(&config)).collect();
    (started, dir)
}

fn token(user: &str) -> String {
    mint_token(SECRET, user, 600)
}

async fn post(url: &str, path: &str, body: Value, key: Option<&str>) -> (u16, Value, bool) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(token("alice"))
        .body(body.to_string());
    if let Some(k) = key {
        request = request.header("Idempotency-Key", k);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, response.json().await.unwrap(), replayed)
}

fn push_body(since: i64, projects: &[&str]) -> Value {
    let created: Vec<Value> = projects
        .iter()
        .map(|id| json!({"id": id, "name": id}))
        .collect();
    json!({"lastPulledAt": since, "changes": {"projects": {"created": created, "updated": [], "deleted": []}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_push_to_one_instance_and_pull_from_another() {
    let (servers, _dir) = instances(3);
    let (a, b, c) = (&servers[0].url, &servers[1].url, &servers[2].url);
    let (status, pushed, _) =
        post(a, "/v1/sync/push", push_body(0, &["p1", "p2"]), Some("k1")).await;
    assert_eq!(status, 200, "{pushed}");
    let (_, pull, _) = post(b, "/v1/sync/pull", json!({"lastPulledAt": null}), None).await;
    assert_eq!(ids(&pull, "projects"), ["p1", "p2"]);
    assert_eq!(pull["timestamp"], pushed["timestamp"]);
    // The retry of a push whose answer was lost may reach another instance: it gets the first answer.
    let (status, replay, replayed) =
        post(c, "/v1/sync/push", push_body(0, &["p1", "p2"]), Some("k1")).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(replay, pushed);
    // A stale push is a conflict whichever instance it reaches.
    let (status, err, _) = post(c, "/v1/sync/push", push_body(0, &["p1"]), None).await;
    assert_eq!((status, err["code"].as_str()), (409, Some("conflict")));
    // A cascade applied on one instance is pulled from another.
    let t = pull["timestamp"].as_i64().unwrap();
    post(
        a,
        "/v1/sync/bulk",
        json!({"upserts": {"tasks": [{"id": "t1", "title": "x", "project_id": "p1"}]}}),
        None,
    )
    .await;
    post(
        c,
        "/v1/sync/bulk",
        json!({"deletes": {"projects": ["p1"]}}),
        None,
    )
    .await;
    let (_, later, _) = post(b, "/v1/sync/pull", json!({"lastPulledAt": t}), None).await;
    assert_eq!(later["changes"]["projects"]["deleted"], json!(["p1"]));
    assert_eq!(later["changes"]["tasks"]["deleted"], json!(["t1"]));
    // The dashboard's activity is in the database: every instance tells the same story, read first from one
    // that did not answer the pull (on a shared store a pull's answer ends only once its count is written).
    let mut seen = Vec::new();
    for url in [a, b, c] {
        let body = get_json(&format!("{url}/v1/activity"), &token("alice")).await;
        seen.push(body["activity"].clone());
    }
    let activity = &seen[0];
    assert_eq!(
        (
            activity["pushes"].as_u64(),
            activity["pulls"].as_u64(),
            activity["conflicts"].as_u64(),
            activity["recordsPushed"].as_u64()
        ),
        (Some(5), Some(2), Some(1), Some(5)),
        "{activity}"
    );
    assert!(seen.iter().all(|a| a == activity), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushers_on_every_instance_never_hide_a_change_from_pullers() {
    let (servers, _dir) = instances(3);
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url.clone()).collect());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pullers = Vec::new();
    for p in 0..3 {
        let (urls, done) = (urls.clone(), done.clone());
        pullers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut cursor: Option<i64> = None;
            let mut round = 0usize;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                // Each puller hops between instances, as a client behind a load balancer would.
                let url = &urls[(p + round) % urls.len()];
                round += 1;
                let (status, pull, _) = post(
                    url,
                    "/v1/sync/pull",
                    json!({"lastPulledAt": cursor, "limit": 10}),
                    None,
                )
                .await;
                assert_eq!(status, 200);
                seen.extend(ids(&pull, "projects"));
                cursor = Some(pull["timestamp"].as_i64().unwrap());
                if finished && !pull["hasMore"].as_bool().unwrap() {
                    return seen;
                }
            }
        }));
    }
    let mut pushers = Vec::new();
    for w in 0..6 {
        let urls = urls.clone();
        pushers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..20 {
                let ids = [format!("w{w}-{i}-a"), format!("w{w}-{i}-b")];
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let (status, body, _) = post(
                    &urls[w % urls.len()],
                    "/v1/sync/push",
                    push_body(0, &refs),
                    None,
                )
                .await;
                assert_eq!(status, 200, "{body}");
                committed.extend(ids);
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for p in pushers {
        committed.extend(p.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(committed.len(), 240);
    for p in pullers {
        let seen = p.await.unwrap();
        let missed: Vec<_> = committed.difference(&seen).collect();
        assert!(
            missed.is_empty(),
            "a puller missed {} changes, e.g. {:?}",
            missed.len(),
            missed.first()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connected_to_one_instance_hears_of_a_push_to_another() {
    let (servers, _dir) = instances(2);
    let response = reqwest::Client::new()
        .get(format!("{}/v1/events", servers[1].url))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut response = response;
    let mut text = String::new();
    let mut pushed: Option<Value> = None;
    let found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if pushed.is_none() && text.contains("event: ready") {
                // Listening on instance 1; push through instance 0.
                let (status, body, _) = post(
                    &servers[0].url,
                    "/v1/sync/push",
                    push_body(0, &["p1"]),
                    None,
                )
                .await;
                assert_eq!(status, 200);
                pushed = Some(body);
            }
            if let Some(body) = &pushed
                && text.contains(&format!(
                    "event: changes\ndata: {{\"sequence\":{}}}",
                    body["timestamp"]
                ))
            {
                return;
            }
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the event stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no changes event reached instance 1; got: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_instance_is_killed_is_finished_by_another_with_exactly_the_expected_rows()
{
    const TRACKS: u64 = 3_000;
    const PAGES: u64 = TRACKS / 50;
    let fake = FakeSpotify::start("spotify-token", TRACKS as usize, 0, 0, 0).await;
    fake.control
        .set_latency(std::time::Duration::from_millis(20));
    // Long steps: the instance that takes the job keeps it (renewing its 2 s lease) until it dies.
    let (mut servers, _dir) = instances_with(
        2,
        &(imports_section("step_budget_ms = 60000\nlease_ms = 2000")
            + &spotify_source(fake.base_url())),
    );
    let (a, b) = (servers[0].url.clone(), servers[1].url.clone());
    let alice = token("alice");
    let (put, _) = connect(
        &a,
        &alice,
        "spotify",
        json!({"access_token": "spotify-token"}),
    )
    .await;
    assert_eq!(put, 204);
    assert_eq!(start_import(&a, &alice, "spotify").await, 202);
    // Instance b sees the progress instance a makes, and leaves the job alone while a holds its lease.
    let mid = wait_for_import(&b, &alice, "spotify", |s| {
        s["processed"].as_u64() >= Some(600)
    })
    .await;
    assert_eq!(mid["status"], "running", "{mid}");
    let requests = fake.control.requests();
    let processed = first_stream(&b, &alice, "spotify").await["processed"]
        .as_u64()
        .unwrap();
    assert!(
        requests <= processed / 50 + 1,
        "one instance walks the job: {requests} requests for {processed} items"
    );

    servers[0].child.kill().unwrap(); // SIGKILL: the lease is never given back
    servers[0].child.wait().unwrap();
    let killed_at = std::time::Instant::now();
    let done = wait_for_import(&b, &alice, "spotify", |s| s["status"] == "success").await;
    assert!(
        killed_at.elapsed() >= std::time::Duration::from_millis(1_500),
        "b waited for a's lease to expire"
    );
    assert_eq!(done["processed"], TRACKS, "every page counted once: {done}");
    let (_, pull, _) = post(&b, "/v1/sync/pull", json!({"lastPulledAt": null}), None).await;
    assert_eq!(
        ids(&pull, "spotify_tracks").len() as u64,
        TRACKS,
        "no gaps, no duplicates"
    );
    assert!(
        fake.control.requests() <= PAGES + 1,
        "at most the page in flight at the kill was fetched again: {} requests for {PAGES} pages",
        fake.control.requests()
    );
}
