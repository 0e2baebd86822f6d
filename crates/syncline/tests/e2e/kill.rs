//! Crash safety of the client SDK with a real process: a `syncline sync` process is killed with SIGKILL at a
//! random point of a sync, again and again, with new local writes between the crashes. At the end one sync
//! finishes, and the server must hold exactly the last local write of every record, and must never have
//! applied a write twice.
//!
//! What "applied twice" looks like in record-state sync: a batch whose answer was lost is sent again
//! without its idempotency key (or with other bytes), after a newer write of the same record reached the
//! server, and the stale value overwrites the newer one. Every write here sets a value never used before,
//! so the server's `syncline_records_pushed_total` (records actually changed) can exceed the number of
//! writes only if some write was applied more than once; and a stale overwrite that nothing corrected would
//! show in the final values.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use syncline_client::{Client, ClientConfig};

use crate::support::{config_text, mint_token, post_json, sqlite_url};

const SECRET: &str = "kill-test-secret-kill-test-secret";

fn client(db: &Path) -> Client {
    Client::open(db, ClientConfig::new("http://unused", "unused")).unwrap()
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> u64 {
    let text = http
        .get(format!("{url}/metrics"))
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

/// Each record's `n`, by id.
fn numbers_by_id(records: &[Value]) -> BTreeMap<String, i64> {
    records
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn sync_command(url: &str, token: &str, db: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncline"));
    command
        .args(["sync", "--server", url, "--token", token, "--db"])
        .arg(db)
        .args(["--batch-size", "5", "--page-size", "20"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_at_random_points_applies_every_write_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &sqlite_url(&dir.path().join("server.db")),
        SECRET,
        "[tables.tasks]\ncolumns = { title = \"string\", n = \"number\" }\n",
    );
    let server = syncline_server::start(syncline_server::Config::from_toml(&text, []).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let token = mint_token(SECRET, "crashy", 3600);
    let http = reqwest::Client::new();
    let db = dir.path().join("local.db");

    // The last local write of every record (None: deleted), and how many writes were made.
    let mut expected: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut writes = 0u64;
    let mut value = 0i64;
    let mut rng = rand::rng();
    {
        let c = client(&db);
        c.bulk_write(|tx| {
            let tasks = tx.json_table("tasks")?;
            for i in 0..1000 {
                value += 1;
                let id = format!("t{i:04}");
                tasks.insert(&json!({"id": id, "title": format!("v{value}"), "n": value}))?;
                expected.insert(id, Some(value));
            }
            Ok(())
        })
        .unwrap();
        writes += 1000;
    }

    let deadline = Instant::now() + Duration::from_secs(35);
    let (mut rounds, mut killed) = (0, 0);
    // Kill after a random part of how long a sync that was not killed took.
    let mut typical = Duration::from_millis(300);
    while rounds < 30 && Instant::now() < deadline {
        rounds += 1;
        // New local writes while no sync runs: updates, deletes, creates.
        {
            let c = client(&db);
            let tasks = c.json_table("tasks").unwrap();
            let live: Vec<String> = expected
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            for _ in 0..40 {
                let id = &live[rng.random_range(0..live.len())];
                if expected[id].is_none() {
                    continue;
                }
                value += 1;
                tasks
                    .patch(id, json!({"title": format!("v{value}"), "n": value}))
                    .unwrap();
                expected.insert(id.clone(), Some(value));
                writes += 1;
            }
            for _ in 0..3 {
                let id = &live[rng.random_range(0..live.len())];
                if expected[id].is_some() {
                    assert!(tasks.delete(id).unwrap());
                    expected.insert(id.clone(), None);
                    writes += 1;
                }
            }
            for i in 0..3 {
                value += 1;
                let id = format!("n{rounds}x{i}");
                tasks
                    .insert(&json!({"id": id, "title": format!("v{value}"), "n": value}))
                    .unwrap();
                expected.insert(id, Some(value));
                writes += 1;
            }
        }
        // A sync process, killed with SIGKILL after a random delay (unless it finishes first).
        let started = Instant::now();
        let mut child = sync_command(&url, &token, &db).spawn().unwrap();
        let delay = typical.mul_f64(rng.random_range(0.0..1.0));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                child.start_kill().unwrap();
                killed += 1;
            }
            status = child.wait() => {
                assert!(status.unwrap().success(), "an unkilled sync must succeed");
                typical = started.elapsed();
            }
        }
        let _ = child.wait().await;
    }

    let status = sync_command(&url, &token, &db).status().await.unwrap();
    assert!(status.success(), "the final sync");
    eprintln!(
        "{rounds} rounds, {killed} sync processes killed with SIGKILL, {writes} local writes"
    );
    // Exactly the last local writes, nothing else.
    let pull = post_json(&format!("{url}/v1/sync/pull"), &token, &json!({})).await;
    let on_server = numbers_by_id(pull["changes"]["tasks"]["updated"].as_array().unwrap());
    let live: BTreeMap<String, i64> = expected
        .iter()
        .filter_map(|(k, v)| v.map(|v| (k.clone(), v)))
        .collect();
    assert_eq!(on_server.len(), live.len());
    for (id, n) in &live {
        assert_eq!(
            on_server.get(id),
            Some(n),
            "record {id}: the last local write wins"
        );
    }
    for r in pull["changes"]["tasks"]["updated"].as_array().unwrap() {
        assert_eq!(r["title"], json!(format!("v{}", r["n"])));
    }

    // Never applied twice: every write set a fresh value, so the server changed records at most once per
    // write (folded writes change fewer).
    let applied = metric(&http, &url, "syncline_records_pushed_total").await;
    assert!(
        applied <= writes,
        "{applied} record changes applied for {writes} writes: some write was applied twice"
    );
    // The device holds the same records as the server (every pulled page was applied with its cursor).
    let local = numbers_by_id(&client(&db).json_table("tasks").unwrap().all().unwrap());
    assert_eq!(local, on_server);
    let stats = client(&db).outbox_stats().unwrap();
    assert_eq!((stats.unsynced(), stats.rejected()), (0, 0), "{stats:?}");
    assert!(
        killed >= rounds / 3,
        "most rounds must be cut short: {killed} of {rounds}"
    );
    server.stop().await;
}
