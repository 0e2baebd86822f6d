//! `syncline sync --watch` from the command line: the real binary, with no periodic timer (`--interval 0`),
//! shows a write that another device pushed, because it holds the server's event stream open; Ctrl-C
//! (SIGINT) stops it cleanly. Every wait is bounded; the child is killed if the test fails.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::support::{config_text, mint_token, post_json, sqlite_url};

const SECRET: &str = "watch-test-secret-watch-test-secret";

/// Reads the child's lines until one contains `wanted` (or returns at once if an earlier one did); every
/// line read is kept in `seen`.
async fn line_with(
    lines: &mut Lines<BufReader<ChildStdout>>,
    seen: &mut Vec<String>,
    wanted: &str,
) {
    if seen.iter().any(|line| line.contains(wanted)) {
        return;
    }
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains(wanted) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "`sync --watch` printed no line with {wanted:?}; it printed {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_watch_shows_a_change_made_by_another_device() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &sqlite_url(&dir.path().join("server.db")),
        SECRET,
        "[tables.tasks]\ncolumns = { title = \"string\" }\n",
    );
    let server = syncline_server::start(syncline_server::Config::from_toml(&text, []).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let token = mint_token(SECRET, "alice", 3600);

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncline"))
        .args(["sync", "--watch", "--interval", "0", "--server", &url])
        .args(["--token", &token, "--db"])
        .arg(dir.path().join("watching.db"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The first sync and the stream's connection, in either order.
    line_with(&mut lines, &mut seen, "live: connected to the event stream").await;
    line_with(&mut lines, &mut seen, "synced: 0 items updated from cloud").await;

    // Another device of alice's pushes one task over plain HTTP.
    let push = post_json(
        &format!("{url}/v1/sync/push"),
        &token,
        &json!({
            "lastPulledAt": 0,
            "changes": {"tasks": {"created": [{"id": "t1", "title": "from the phone"}], "updated": [], "deleted": []}},
        }),
    )
    .await;
    assert!(push.get("code").is_none(), "{push}");
    line_with(&mut lines, &mut seen, "synced: 1 item updated from cloud").await;

    // Ctrl-C ends the watch with success.
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("`sync --watch` did not stop within 10 s of SIGINT")
        .unwrap();
    assert!(status.success(), "{status}; it printed {seen:#?}");
    server.stop().await;
}
