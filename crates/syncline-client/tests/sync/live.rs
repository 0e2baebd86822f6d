//! Live devices: clients running automatic sync with no periodic timer, hearing each other's writes through
//! the server's `GET /v1/events` stream. A gate (a TCP proxy in front of the server) counts the pulls and
//! `changes` events of one client, to show that one event makes one pull; it cuts every connection to show
//! the stream reconnecting and catching up, and holds pull answers back to show that changes announced
//! during a sync yield exactly one more sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use syncline_client::{AutoSync, AutoSyncPolicy, Client, ClientConfig, SyncProgress, SyncState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{TestServer, wait_for};

/// A TCP proxy that counts the pull requests and `changes` events passing through, and can cut every
/// connection (and refuse new ones) or hold pull answers back until released.
struct Gate {
    url: String,
    state: Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    refuse: AtomicBool,
    hold: watch::Sender<bool>,
    held: AtomicU64,
    pulls: AtomicU64,
    changes_events: AtomicU64,
    connections: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Gate {
    async fn start(target: std::net::SocketAddr) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(GateState::default());
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if st.refuse.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // Whether the latest request on this connection is a pull.
                let is_pull = Arc::new(AtomicBool::new(false));
                let (st_up, pull_up) = (st.clone(), is_pull.clone());
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        let chunk = &buf[..n];
                        if chunk.starts_with(b"POST /v1/sync/pull") {
                            pull_up.store(true, Ordering::SeqCst);
                            st_up.pulls.fetch_add(1, Ordering::SeqCst);
                        } else if chunk.starts_with(b"POST ") || chunk.starts_with(b"GET ") {
                            pull_up.store(false, Ordering::SeqCst);
                        }
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                let st_down = st.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        if is_pull.load(Ordering::SeqCst) && *st_down.hold.borrow() {
                            st_down.held.fetch_add(1, Ordering::SeqCst);
                            let _ = st_down.hold.subscribe().wait_for(|h| !*h).await;
                        }
                        let chunk = &buf[..n];
                        let events = chunk
                            .windows(b"event: changes".len())
                            .filter(|w| *w == b"event: changes")
                            .count();
                        st_down
                            .changes_events
                            .fetch_add(events as u64, Ordering::SeqCst);
                        if cw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                st.connections.lock().unwrap().extend([up, down]);
            }
        });
        Gate { url, state }
    }

    /// Cuts every open connection and refuses new ones until [`Gate::open`].
    fn cut(&self) {
        self.state.refuse.store(true, Ordering::SeqCst);
        for task in self.state.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn open(&self) {
        self.state.refuse.store(false, Ordering::SeqCst);
    }

    fn hold_pull_answers(&self, hold: bool) {
        self.state.hold.send_replace(hold);
    }

    fn pulls(&self) -> u64 {
        self.state.pulls.load(Ordering::SeqCst)
    }
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no pull has passed the gate for half a second: the client's syncs have settled.
async fn settled(gate: &Gate) {
    let mut last = gate.pulls();
    let mut quiet_since = tokio::time::Instant::now();
    eventually("the client's syncs to settle", || {
        let now = gate.pulls();
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        }
        quiet_since.elapsed() >= Duration::from_millis(500)
    })
    .await;
}

fn has(client: &Client, id: &str) -> bool {
    client
        .json_table("items")
        .unwrap()
        .get(id)
        .unwrap()
        .is_some()
}

/// Automatic sync with no periodic timer: only events, local writes and the startup sync.
fn no_timer() -> AutoSyncPolicy {
    AutoSyncPolicy {
        interval: None,
        min_interval: Duration::from_millis(10),
        ..AutoSyncPolicy::default()
    }
}

fn write(client: &Client, id: &str) {
    client
        .json_table("items")
        .unwrap()
        .insert(&json!({"id": id, "title": id}))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_clients_converge_on_each_others_writes_without_a_periodic_timer() {
    let s = TestServer::start().await;
    let (a, b) = (s.client("a", "alice"), s.client("b", "alice"));
    let (mut pa, mut pb) = (a.progress(), b.progress());
    let auto_a = a.start_auto_sync(no_timer());
    let auto_b = b.start_auto_sync(no_timer());
    wait_for(&mut pa, "A's event stream", |p| p.live).await;
    wait_for(&mut pb, "B's event stream", |p| p.live).await;

    write(&a, "from-a");
    eventually("B to hear of A's write", || has(&b, "from-a")).await;
    write(&b, "from-b");
    eventually("A to hear of B's write", || has(&a, "from-b")).await;
    eventually("both cursors to meet", || {
        a.cursor().unwrap() == b.cursor().unwrap()
    })
    .await;
    let all = |c: &Client| c.json_table("items").unwrap().all().unwrap();
    assert_eq!(all(&a), all(&b));
    assert_eq!(all(&a).len(), 2);
    auto_a.stop().await;
    auto_b.stop().await;
    assert!(!b.progress().borrow().live, "stopping closes the stream");
    s.stop().await;
}

/// Alice's device B, connected through a [`Gate`], syncing automatically and live with no periodic timer;
/// returned once its stream is open and its first syncs are over.
struct Behind {
    gate: Gate,
    b: Client,
    progress: watch::Receiver<SyncProgress>,
    auto: AutoSync,
}

async fn live_behind_a_gate(s: &TestServer) -> Behind {
    let gate = Gate::start(s.addr).await;
    let b = Client::open(
        s.dir.path().join("b.db"),
        ClientConfig::new(&gate.url, s.token("alice")),
    )
    .unwrap();
    let mut progress = b.progress();
    let auto = b.start_auto_sync(no_timer());
    wait_for(&mut progress, "B's event stream", |p| p.live).await;
    settled(&gate).await;
    Behind {
        gate,
        b,
        progress,
        auto,
    }
}

/// A push of one `items` record by a device that is not an SDK client: plain HTTP, as any device may.
async fn push_over_http(s: &TestServer, user: &str, id: &str) {
    let body = json!({
        "lastPulledAt": 0,
        "changes": {"items": {"created": [{"id": id, "title": id}], "updated": [], "deleted": []}},
    });
    let response = s
        .http
        .post(format!("{}/v1/sync/push", s.url))
        .bearer_auth(s.token(user))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changes_event_makes_the_sdk_pull_once() {
    let s = TestServer::start().await;
    let Behind {
        gate,
        b,
        mut progress,
        auto,
    } = live_behind_a_gate(&s).await;
    let pulls_before = gate.pulls();
    let events_before = gate.state.changes_events.load(Ordering::SeqCst);

    // Nothing but the event tells B: no timer runs, and B wrote nothing.
    push_over_http(&s, "alice", "pushed-elsewhere").await;
    eventually("B to pull the write it heard of", || {
        has(&b, "pushed-elsewhere")
    })
    .await;
    settled(&gate).await;
    assert_eq!(
        gate.state.changes_events.load(Ordering::SeqCst) - events_before,
        1
    );
    assert_eq!(gate.pulls() - pulls_before, 1, "one event, one pull");
    let p = wait_for(&mut progress, "B's sync to finish", |p| {
        p.state == SyncState::Synced
    })
    .await;
    assert_eq!(p.last_summary.map(|s| s.changed_from_cloud()), Some(1));

    // Another user's write is none of B's business: no event reaches B, and B does not pull.
    push_over_http(&s, "bob", "bobs").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    settled(&gate).await;
    assert_eq!(gate.pulls() - pulls_before, 1);
    assert_eq!(
        gate.state.changes_events.load(Ordering::SeqCst) - events_before,
        1
    );
    auto.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_event_stream_reconnects_and_catches_up_on_what_it_missed() {
    let s = TestServer::start().await;
    let a = s.client("a", "alice");
    let Behind {
        gate,
        b,
        progress: mut pb,
        auto,
    } = live_behind_a_gate(&s).await;

    gate.cut();
    wait_for(&mut pb, "B to notice the cut", |p| !p.live).await;
    // Written while B's stream is down: B never hears this write's event.
    write(&a, "missed");
    a.sync_now().await.unwrap();
    assert!(!has(&b, "missed"));

    gate.open();
    wait_for(&mut pb, "B's stream to come back", |p| p.live).await;
    eventually("B to catch up after reconnecting", || has(&b, "missed")).await;
    assert_eq!(b.cursor().unwrap(), a.cursor().unwrap());
    auto.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_announced_during_a_sync_yield_exactly_one_more_sync() {
    let s = TestServer::start().await;
    let a = s.client("a", "alice");
    let Behind { gate, b, auto, .. } = live_behind_a_gate(&s).await;
    let pulls_before = gate.pulls();

    // B starts a sync for the first write; its pull's answer (which has only that write) is held back.
    gate.hold_pull_answers(true);
    write(&a, "one");
    a.sync_now().await.unwrap();
    eventually("B's pull to be under way", || {
        gate.state.held.load(Ordering::SeqCst) >= 1
    })
    .await;
    let events_before = gate.state.changes_events.load(Ordering::SeqCst);
    for id in ["two", "three"] {
        write(&a, id);
        a.sync_now().await.unwrap();
    }
    eventually("B to hear of both writes during its sync", || {
        gate.state.changes_events.load(Ordering::SeqCst) >= events_before + 2
    })
    .await;
    gate.hold_pull_answers(false);

    eventually("B to have all three writes", || {
        ["one", "two", "three"].iter().all(|id| has(&b, id))
    })
    .await;
    settled(&gate).await;
    assert_eq!(
        gate.pulls() - pulls_before,
        2,
        "the sync under way, then exactly one more for the two writes announced during it"
    );
    let p = b.progress().borrow().clone();
    assert_eq!(p.state, SyncState::Synced, "{p:?}");
    assert_eq!(
        p.last_summary.map(|s| s.changed_from_cloud()),
        Some(2),
        "the follow-up brought the two later writes"
    );
    auto.stop().await;
    s.stop().await;
}
