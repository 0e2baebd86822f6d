//! Real clients against a real server over HTTP on 127.0.0.1, each with its own SQLite file: convergence of
//! two devices, batching and chunking (requests counted at the server's `/metrics`), rejected rows, deletes,
//! a lost answer resent with the same idempotency key, a first sync resumed after an interruption, offline
//! detection, the orchestrator's debounce, and seed 001's backup import; `sync/live.rs`: live devices over
//! the server's event stream.

#[path = "sync/live.rs"]
mod live;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use syncline_client::{
    AutoSyncPolicy, Client, ClientConfig, ManualClock, OpState, SyncProgress, SyncState,
};
use syncline_server::{Config, RunningServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const SECRET: &str = "client-test-secret-client-test";

const SCHEMA: &str = r#"
[tables.friends]
columns = { name = "string", tier = "string", note = "string", score = "number" }
[tables.items]
columns = { title = "string", n = "number" }
[tables.players]
columns = { name = "string", jersey = "number", team_id = "string" }
[tables.teams]
columns = { name = "string" }
[tables.seasons]
columns = { name = "string", year = "number" }
[tables.games]
columns = { opponent = "string", home_score = "number", away_score = "number" }
[tables.game_events]
columns = { game_id = "string", event_type = "string", time_seconds = "number" }
parent = { table = "games", column = "game_id" }
"#;

struct TestServer {
    server: Option<RunningServer>,
    url: String,
    addr: SocketAddr,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with("").await
    }

    async fn start_with(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://{}\"\n[auth]\njwt_secret = \"{SECRET}\"\n{extra}\n{SCHEMA}",
            dir.path().join("server.db").display()
        );
        let server = syncline_server::start(Config::from_toml(&text, []).unwrap())
            .await
            .unwrap();
        TestServer {
            url: format!("http://{}", server.addr),
            addr: server.addr,
            server: Some(server),
            http: reqwest::Client::new(),
            dir,
        }
    }

    fn token(&self, user: &str) -> String {
        let now = syncline_core::Clock::now_ms(&syncline_core::SystemClock) / 1000;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": user, "exp": now + 3600}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn config(&self, user: &str) -> ClientConfig {
        ClientConfig::new(&self.url, self.token(user))
    }

    fn client(&self, name: &str, user: &str) -> Client {
        self.client_with(name, self.config(user))
    }

    fn client_with(&self, name: &str, config: ClientConfig) -> Client {
        Client::open(self.dir.path().join(format!("{name}.db")), config).unwrap()
    }

    /// A counter from `/metrics`: the line starting with `name` (labels included), or 0.
    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    async fn pushes(&self) -> u64 {
        self.metric(r#"syncline_http_requests_total{route="/v1/sync/push",status="200"}"#)
            .await
    }

    /// Every live record of `user` on the server: (table, id) → record.
    async fn records(&self, user: &str) -> BTreeMap<(String, String), Value> {
        let pull: Value = self
            .http
            .post(format!("{}/v1/sync/pull", self.url))
            .bearer_auth(self.token(user))
            .body("{}")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for (table, changes) in pull["changes"].as_object().unwrap() {
            for r in changes["updated"].as_array().unwrap() {
                out.insert(
                    (table.clone(), r["id"].as_str().unwrap().to_string()),
                    r.clone(),
                );
            }
        }
        out
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Friend {
    #[serde(default)]
    id: String,
    name: String,
    tier: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    score: Option<f64>,
}

fn friend(name: &str, tier: &str) -> Friend {
    Friend {
        id: String::new(),
        name: name.into(),
        tier: tier.into(),
        note: None,
        score: None,
    }
}

/// Waits (bounded) until the progress satisfies `pred`.
async fn wait_for(
    rx: &mut watch::Receiver<SyncProgress>,
    what: &str,
    pred: impl FnMut(&SyncProgress) -> bool,
) -> SyncProgress {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge_after_offline_edits_on_both() {
    let s = TestServer::start().await;
    let a = s.client("a", "alice");
    let b = s.client("b", "alice");
    let sam = a
        .table::<Friend>("friends")
        .unwrap()
        .insert(&friend("Sam", "close"))
        .unwrap();
    a.sync_now().await.unwrap();
    assert_eq!(b.sync_now().await.unwrap().changed_from_cloud(), 1);

    // Offline on both: different columns of the same record, and new records.
    a.json_table("friends")
        .unwrap()
        .patch(&sam, json!({"tier": "inner"}))
        .unwrap();
    a.table::<Friend>("friends")
        .unwrap()
        .insert(&friend("Ann", "close"))
        .unwrap();
    b.json_table("friends")
        .unwrap()
        .patch(&sam, json!({"note": "met at the park"}))
        .unwrap();
    b.table::<Friend>("friends")
        .unwrap()
        .insert(&friend("Bob", "far"))
        .unwrap();

    a.sync_now().await.unwrap();
    let on_b = b.sync_now().await.unwrap();
    assert_eq!(
        on_b.conflict_rounds, 1,
        "B's push was based on an old pull: {on_b:?}"
    );
    a.sync_now().await.unwrap();

    let all_a = a.table::<Friend>("friends").unwrap().all().unwrap();
    let all_b = b.table::<Friend>("friends").unwrap().all().unwrap();
    assert_eq!(all_a, all_b);
    assert_eq!(all_a.len(), 3);
    let merged = a
        .table::<Friend>("friends")
        .unwrap()
        .get(&sam)
        .unwrap()
        .unwrap();
    assert_eq!(
        (merged.tier.as_str(), merged.note.as_deref()),
        ("inner", Some("met at the park")),
        "both devices' columns survive"
    );
    assert_eq!(s.records("alice").await.len(), 3);
    assert_eq!(a.outbox_stats().unwrap().unsynced(), 0);
    assert_eq!(b.outbox_stats().unwrap().unsynced(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rapid_edits_become_at_most_two_pushes() {
    let s = TestServer::start().await;
    let c = s.client("c", "alice");
    let mut progress = c.progress();
    let auto = c.start_auto_sync(AutoSyncPolicy {
        interval: None,
        ..AutoSyncPolicy::default()
    });
    wait_for(&mut progress, "the startup sync", |p| {
        p.state == SyncState::Synced
    })
    .await;
    let before = s.pushes().await;

    let items = c.json_table("items").unwrap();
    let ids: Vec<String> = (0..5)
        .map(|i| items.insert(&json!({"title": "new", "n": i})).unwrap())
        .collect();
    for round in 1..4 {
        for id in &ids {
            items
                .patch(id, json!({"title": format!("edit {round}")}))
                .unwrap();
        }
    }
    // 5 inserts + 15 edits = 20 writes, which the outbox folds into 5 creates.
    for _ in 0..10 {
        wait_for(&mut progress, "a sync after the edits", |p| {
            p.state == SyncState::Synced
        })
        .await;
        if c.outbox_stats().unwrap().unsynced() == 0 {
            break;
        }
        progress.changed().await.unwrap();
    }
    let pushes = s.pushes().await - before;
    assert!(
        (1..=2).contains(&pushes),
        "{pushes} push requests for 20 edits"
    );
    let on_server = s.records("alice").await;
    assert_eq!(on_server.len(), 5);
    assert!(on_server.values().all(|r| r["title"] == "edit 3"));
    auto.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pending_operations_split_into_chunks() {
    let s = TestServer::start().await;
    let mut config = s.config("alice");
    config.batch_size = 50;
    let c = s.client_with("c", config);
    let items = c.json_table("items").unwrap();
    for i in 0..120 {
        items.insert(&json!({"title": "x", "n": i})).unwrap();
    }
    let mut progress = c.progress();
    let watcher = tokio::spawn(async move {
        let mut seen_push = false;
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            seen_push |= p.phase == Some(syncline_client::Phase::Push) && p.is_syncing("items");
            if p.state == SyncState::Synced {
                return (seen_push, p);
            }
        }
        panic!("progress stream ended");
    });
    let before = s.pushes().await;
    let summary = c.sync_now().await.unwrap();
    assert_eq!(
        s.pushes().await - before,
        3,
        "120 operations in chunks of 50"
    );
    assert_eq!((summary.pushed, summary.push_requests), (120, 3));
    let (seen_push, last) = watcher.await.unwrap();
    assert!(seen_push, "the progress stream showed the push of `items`");
    assert_eq!(last.tables["items"].pushed, 120);
    assert_eq!(last.percentage(), 100.0);
    assert_eq!(s.records("alice").await.len(), 120);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_travels_in_one_request_never_split() {
    let s = TestServer::start().await;
    let mut config = s.config("alice");
    config.batch_size = 5;
    let c = s.client_with("c", config);
    for i in 0..3 {
        c.json_table("items")
            .unwrap()
            .insert(&json!({"n": i}))
            .unwrap();
    }
    // A game saved with its events: 8 rows, more than a batch.
    c.transaction(|tx| {
        tx.json_table("games")?
            .insert(&json!({"id": "g1", "opponent": "Riverside FC", "home_score": 2}))?;
        for i in 0..7 {
            tx.json_table("game_events")?
                .insert(&json!({"game_id": "g1", "event_type": "goal", "time_seconds": i}))?;
        }
        Ok(())
    })
    .unwrap();
    let before = s.pushes().await;
    c.sync_now().await.unwrap();
    // 3 single writes, then the 8-row transaction alone: 2 requests (chunks of 5 would make 3).
    assert_eq!(s.pushes().await - before, 2);
    assert_eq!(s.records("alice").await.len(), 11);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_row_is_rejected_and_parked_while_the_rest_syncs() {
    let s = TestServer::start().await;
    let c = s.client("c", "alice");
    let friends = c.json_table("friends").unwrap();
    for i in 0..9 {
        friends
            .insert(&json!({"name": format!("f{i}"), "score": i}))
            .unwrap();
    }
    let bad = friends
        .insert(&json!({"name": "bad", "score": "high"}))
        .unwrap();
    let summary = c.sync_now().await.unwrap();
    assert_eq!((summary.pushed, summary.rejected), (9, 1));
    let parked = c.outbox(Some(OpState::Rejected)).unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].id.as_str(), parked[0].error_code.as_deref()),
        (bad.as_str(), Some("wrong_type"))
    );
    assert_eq!(c.outbox_stats().unwrap().rejected(), 1);
    assert_eq!(s.records("alice").await.len(), 9);

    // Never retried automatically, and it blocks nothing.
    let before = s.pushes().await;
    c.sync_now().await.unwrap();
    assert_eq!(s.pushes().await, before, "nothing to push");
    friends
        .insert(&json!({"name": "later", "score": 1}))
        .unwrap();
    assert_eq!(c.sync_now().await.unwrap().pushed, 1);

    // Fixed by the app and retried by hand: it goes through.
    friends.patch(&bad, json!({"score": 5})).unwrap();
    assert_eq!(c.retry_rejected().unwrap(), 1);
    assert_eq!(c.sync_now().await.unwrap().pushed, 1);
    let on_server = s.records("alice").await;
    assert_eq!(on_server.len(), 11);
    assert_eq!(on_server[&("friends".to_string(), bad)]["score"], json!(5));
    assert_eq!(c.outbox_stats().unwrap().rejected(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_split_until_the_bad_operation_is_parked_alone() {
    let s = TestServer::start().await;
    let c = s.client("c", "alice");
    let items = c.json_table("items").unwrap();
    items.insert(&json!({"n": 1})).unwrap();
    items.insert(&json!({"n": 2})).unwrap();
    c.json_table("not_on_server")
        .unwrap()
        .insert(&json!({"x": 1}))
        .unwrap();
    items.insert(&json!({"n": 3})).unwrap();
    let summary = c.sync_now().await.unwrap();
    assert_eq!((summary.pushed, summary.rejected), (3, 1), "{summary:?}");
    let parked = c.outbox(Some(OpState::Rejected)).unwrap();
    assert_eq!(
        (parked[0].table.as_str(), parked[0].error_code.as_deref()),
        ("not_on_server", Some("unknown_table"))
    );
    assert_eq!(s.records("alice").await.len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reach_the_other_device() {
    let s = TestServer::start().await;
    let a = s.client("a", "alice");
    let b = s.client("b", "alice");
    let items = a.json_table("items").unwrap();
    let gone = items.insert(&json!({"title": "to delete"})).unwrap();
    let kept = items.insert(&json!({"title": "to keep"})).unwrap();
    a.sync_now().await.unwrap();
    b.sync_now().await.unwrap();
    assert!(b.json_table("items").unwrap().get(&gone).unwrap().is_some());

    assert!(items.delete(&gone).unwrap());
    assert!(!items.delete(&gone).unwrap(), "a second delete is a no-op");
    let brief = items
        .insert(&json!({"title": "created and deleted offline"}))
        .unwrap();
    items.delete(&brief).unwrap();
    assert_eq!(
        a.outbox(None).unwrap().len(),
        1,
        "create+delete left nothing"
    );
    a.sync_now().await.unwrap();

    let on_b = b.sync_now().await.unwrap();
    assert_eq!(on_b.from_cloud["items"].deleted, 1);
    let b_items = b.json_table("items").unwrap();
    assert!(b_items.get(&gone).unwrap().is_none());
    assert!(b_items.get(&kept).unwrap().is_some());
    assert!(b_items.get(&brief).unwrap().is_none());
    assert_eq!(s.records("alice").await.len(), 1);
    s.stop().await;
}

/// A TCP proxy in front of the server that can refuse connections, cut the next answer off, or cut the
/// network at a given pull request.
struct Proxy {
    url: String,
    mode: Arc<AtomicU8>,
    /// Pull requests still let through; the next one cuts the network (mode [`CUT_ALL`]) before it reaches
    /// the server.
    pulls_allowed: Arc<AtomicI64>,
}

const PASS: u8 = 0;
const REFUSE: u8 = 1;
const CUT_NEXT_ANSWER: u8 = 2;
const CUT_ALL: u8 = 3;

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(PASS));
        let pulls_allowed = Arc::new(AtomicI64::new(i64::MAX));
        let m = mode.clone();
        let allowed = pulls_allowed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if m.load(Ordering::SeqCst) == REFUSE {
                    drop(client);
                    continue;
                }
                let m = m.clone();
                let allowed = allowed.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up_mode = m.clone();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // A request's head arrives in one read from a local client.
                            let pull = buf[..n].starts_with(b"POST /v1/sync/pull ");
                            if pull && allowed.fetch_sub(1, Ordering::SeqCst) <= 0 {
                                up_mode.store(CUT_ALL, Ordering::SeqCst);
                                break; // the server never hears it, and closes its side
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if m.load(Ordering::SeqCst) == CUT_ALL
                            || m.compare_exchange(
                                CUT_NEXT_ANSWER,
                                PASS,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                        {
                            break; // the server answered; the client never hears it
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Proxy {
            url,
            mode,
            pulls_allowed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_resent_with_the_same_key_and_applied_once() {
    let s = TestServer::start().await;
    let proxy = Proxy::start(s.addr).await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut config = ClientConfig::new(&proxy.url, s.token("alice"));
    config.batch_size = 1000;
    let c = Client::open_with_clock(s.dir.path().join("c.db"), config, clock.clone()).unwrap();
    let items = c.json_table("items").unwrap();
    for i in 0..40 {
        items.insert(&json!({"title": "t", "n": i})).unwrap();
    }
    proxy.mode.store(CUT_NEXT_ANSWER, Ordering::SeqCst);
    c.sync_now().await.unwrap_err();
    let stats = c.outbox_stats().unwrap();
    assert_eq!(stats.tables["items"].failed, 40, "{stats:?}");
    assert_eq!(
        s.metric("syncline_records_pushed_total").await,
        40,
        "applied once"
    );

    // Not before its backoff is over; then with the same key and bytes.
    let before = s.pushes().await;
    c.sync_now().await.unwrap();
    assert_eq!(
        s.pushes().await,
        before,
        "the failed batch waits for its retry time"
    );
    clock.advance(10 * 60 * 1000);
    let summary = c.sync_now().await.unwrap();
    assert_eq!((summary.pushed, summary.conflict_rounds), (40, 0));
    assert_eq!(s.pushes().await, before + 1);
    assert_eq!(
        s.metric("syncline_push_conflicts_total").await,
        0,
        "a replay, not a stale resend"
    );
    assert_eq!(
        s.metric("syncline_records_pushed_total").await,
        40,
        "never applied twice"
    );
    assert_eq!(s.records("alice").await.len(), 40);
    assert_eq!(c.outbox_stats().unwrap().unsynced(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_first_sync_resumes_from_its_last_page() {
    let s = TestServer::start().await;
    let a = s.client("a", "alice");
    a.bulk_write(|tx| {
        let items = tx.json_table("items")?;
        for i in 0..2000 {
            items.insert(&json!({"title": "x", "n": i}))?;
        }
        Ok(())
    })
    .unwrap();
    a.sync_now().await.unwrap();

    // The network drops at the seventh pull request, after six pages of 50. The cut is made by the proxy
    // at that request, not by a watcher of the progress, which a loaded machine could wake only after the
    // whole pull was over. The client fetches the next page while it applies one, but applies a page before
    // it awaits the next, so the six pages are in.
    let proxy = Proxy::start(s.addr).await;
    proxy.pulls_allowed.store(6, Ordering::SeqCst);
    let mut config = ClientConfig::new(&proxy.url, s.token("alice"));
    config.pull_page_size = 50;
    let b = s.client_with("b", config);
    let err = b.sync_now().await.unwrap_err();
    assert!(err.is_offline(), "{err}");
    let applied = b.json_table("items").unwrap().all().unwrap().len() as u64;
    assert_eq!(applied, 300, "six pages applied before the interruption");
    assert!(b.cursor().unwrap() > 0);

    proxy.mode.store(PASS, Ordering::SeqCst);
    proxy.pulls_allowed.store(i64::MAX, Ordering::SeqCst);
    let pulled_before = s.metric("syncline_records_pulled_total").await;
    b.sync_now().await.unwrap();
    let pulled = s.metric("syncline_records_pulled_total").await - pulled_before;
    assert_eq!(
        pulled,
        2000 - applied,
        "resumed from the last applied page, not from zero"
    );
    assert_eq!(b.json_table("items").unwrap().all().unwrap().len(), 2000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_is_detected_and_waited_out_until_the_network_returns() {
    let s = TestServer::start().await;
    let proxy = Proxy::start(s.addr).await;
    proxy.mode.store(REFUSE, Ordering::SeqCst);
    let c = Client::open(
        s.dir.path().join("c.db"),
        ClientConfig::new(&proxy.url, s.token("alice")),
    )
    .unwrap();
    c.json_table("items")
        .unwrap()
        .insert(&json!({"title": "offline"}))
        .unwrap();
    let mut progress = c.progress();
    let auto = c.start_auto_sync(AutoSyncPolicy {
        interval: None,
        backoff_base: Duration::from_secs(600),
        ..AutoSyncPolicy::default()
    });
    let p = wait_for(&mut progress, "an offline error", |p| {
        p.state == SyncState::Error
    })
    .await;
    assert!(p.offline, "{p:?}");
    assert_eq!(c.outbox_stats().unwrap().unsynced(), 1);

    // The backoff is ten minutes; the network coming back cuts it short.
    proxy.mode.store(PASS, Ordering::SeqCst);
    c.network_available();
    let p = wait_for(&mut progress, "a sync", |p| p.state == SyncState::Synced).await;
    assert!(!p.offline && p.last_error.is_none() && p.last_synced_at.is_some());
    assert_eq!(s.records("alice").await.len(), 1);
    auto.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_during_auto_sync_waits_for_its_own_sync() {
    let s = TestServer::start().await;
    let c = s.client("c", "alice");
    let auto = c.start_auto_sync(AutoSyncPolicy {
        interval: None,
        min_interval: Duration::from_millis(10),
        ..AutoSyncPolicy::default()
    });
    c.json_table("items")
        .unwrap()
        .insert(&json!({"title": "a"}))
        .unwrap();
    let summary = c.sync_now().await.unwrap();
    assert_eq!(c.outbox_stats().unwrap().unsynced(), 0, "{summary:?}");
    assert_eq!(s.records("alice").await.len(), 1);
    auto.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_import_of_100_entities_syncs_in_under_30_seconds() {
    let s = TestServer::start().await;
    let c = s.client("coach", "coach");
    let started = Instant::now();
    // Seed 001: players, teams and seasons imported in bulk; each game saved with its events.
    c.bulk_write(|tx| {
        for i in 0..10 {
            tx.json_table("teams")?.insert(&json!({"id": format!("team{i}"), "name": format!("Team {i}")}))?;
            tx.json_table("seasons")?.insert(&json!({"name": format!("S{i}"), "year": 2015 + i}))?;
        }
        for i in 0..40 {
            tx.json_table("players")?.insert(
                &json!({"name": format!("Player {i}"), "jersey": i, "team_id": format!("team{}", i % 10)}),
            )?;
        }
        Ok(())
    })
    .unwrap();
    for g in 0..10 {
        c.transaction(|tx| {
            let id = format!("game{g}");
            tx.json_table("games")?.insert(
                &json!({"id": id, "opponent": "Riverside FC", "home_score": 2, "away_score": 1}),
            )?;
            for e in 0..3 {
                tx.json_table("game_events")?.insert(
                    &json!({"game_id": id, "event_type": "goal", "time_seconds": 60 * e}),
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    let summary = c.sync_now().await.unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "backup import of 100 entities: {:.1} ms from the first local write to synced ({} push request(s))",
        elapsed.as_secs_f64() * 1000.0,
        summary.push_requests
    );
    assert_eq!(summary.pushed, 100);
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert_eq!(s.records("coach").await.len(), 100);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_smaller_pull_limit_is_followed() {
    let s = TestServer::start_with("[sync]\nmax_pull_limit = 40").await;
    let a = s.client("a", "alice");
    a.bulk_write(|tx| {
        let items = tx.json_table("items")?;
        for i in 0..100 {
            items.insert(&json!({"n": i}))?;
        }
        Ok(())
    })
    .unwrap();
    a.sync_now().await.unwrap();
    let b = s.client("b", "alice");
    let summary = b.sync_now().await.unwrap();
    assert_eq!(summary.pulled, 100);
    assert_eq!(b.json_table("items").unwrap().all().unwrap().len(), 100);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_name_themselves_and_report_their_outbox_to_the_dashboard() {
    let s = TestServer::start().await;
    let phone = s.client_with(
        "phone",
        ClientConfig {
            device: Some("alice-phone".into()),
            ..s.config("alice")
        },
    );
    let tablet = s.client("tablet", "alice");
    assert_eq!(phone.device(), "alice-phone");
    assert!(
        tablet.device().starts_with("device-"),
        "{}",
        tablet.device()
    );
    let friends = phone.table::<Friend>("friends").unwrap();
    for name in ["Sam", "Kim", "Lee"] {
        friends.insert(&friend(name, "close")).unwrap();
    }
    phone.sync_now().await.unwrap();
    tablet.sync_now().await.unwrap();
    let activity: Value = s
        .http
        .get(format!("{}/v1/activity", s.url))
        .bearer_auth(s.token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let devices: BTreeMap<&str, &Value> = activity["activity"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap(), d))
        .collect();
    let phone_row = devices["alice-phone"];
    assert_eq!(
        phone_row["outboxPending"], 0,
        "reported after its push: {phone_row}"
    );
    assert!(phone_row["lastPushAt"].is_i64() && phone_row["lastPullAt"].is_i64());
    let tablet_row = devices[tablet.device()];
    assert_eq!(
        tablet_row["lastPushAt"],
        Value::Null,
        "the tablet only pulled"
    );
    assert_eq!(activity["activity"]["recordsPushed"], 3);
    // The generated id is kept: the same database names the same device again.
    let id = tablet.device().to_string();
    drop(tablet);
    assert_eq!(s.client("tablet", "alice").device(), id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_syncs_over_https_and_names_a_refused_certificate() {
    use syncline_testkit::{FakeTls, Validity, tls_proxy};
    let s = TestServer::start().await;
    // Trusted: the process's throwaway CA (as SSL_CERT_FILE would name it).
    let trusted = tls_proxy(FakeTls::shared().server_config(), s.addr).await;
    let c = s.client_with(
        "https",
        ClientConfig::new(&trusted.base_url, s.token("alice")),
    );
    let items = c.json_table("items").unwrap();
    items.insert(&json!({"title": "over TLS", "n": 1})).unwrap();
    let summary = c.sync_now().await.unwrap();
    assert_eq!(summary.pushed, 1, "{summary:?}");
    assert_eq!(s.records("alice").await.len(), 1);

    let untrusted = FakeTls::new();
    let cases = [
        (untrusted.server_config(), "unknown issuer"),
        (
            FakeTls::shared().server_config_for(&["sync.example.invalid"], Validity::Current),
            "name mismatch",
        ),
    ];
    for (i, (config, reason)) in cases.into_iter().enumerate() {
        let proxy = tls_proxy(config, s.addr).await;
        let c = s.client_with(
            &format!("refused{i}"),
            ClientConfig::new(&proxy.base_url, s.token("bob")),
        );
        let err = c.sync_now().await.unwrap_err();
        let text = err.to_string();
        let host = proxy.base_url.trim_start_matches("https://");
        assert!(
            text.contains(host) && text.contains(reason),
            "{reason}: {text}"
        );
    }
    s.stop().await;
}
