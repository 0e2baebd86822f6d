//! The pull sections of `syncline bench` beyond the throughput figures:
//!
//! - **Read ceiling** (SQLite): the server's own database file read by sequence in pages of `--page`, each
//!   record's stored JSON spliced verbatim into the page (the way `shared/PERF.md` measured 2.73M rows/s),
//!   with the page cache a store reader connection gets. No HTTP, no JSON parsing: what a paged pull of the
//!   same rows could reach at best on this machine, in this run.
//! - **Store pull in process**: the same paged first pull through the store's API on another handle of the
//!   server's database (no HTTP, no client), into a sink that only counts: what the store itself costs.
//! - **Small incremental pulls**: device A pushes a handful of new records, device B pulls from its cursor,
//!   over and over. The server time of each pull is read from the answer's `Server-Timing: app;dur=…`
//!   header: from the router taking the request to the answer being ready, which for an answer sent whole
//!   (every small pull) covers the whole pull: auth, the store's read snapshot, writing the page and
//!   queueing the pull's count for the dashboard (written afterwards, off the request's path, by the server's
//!   pull recorder). The client's round trip is printed next to it.
//!
//! Benchmarks, not tests: they print figures next to their goals.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::{OpenFlags, params};

use crate::bench::record;
use crate::bench_live::{pct, sorted};

/// Reads every record of the database at `path` by sequence in pages of `page`, splicing the stored JSON
/// into one buffer per page; returns records/s.
pub(crate) fn sqlite_read_ceiling(path: &Path, page: usize) -> Result<(f64, usize)> {
    let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // The page cache of a store reader connection.
    conn.pragma_update(None, "cache_size", -8_000)?;
    let started = Instant::now();
    let (mut since, mut rows) = (0i64, 0usize);
    let mut out: Vec<u8> = Vec::new();
    loop {
        out.clear();
        out.push(b'[');
        let mut stmt = conn.prepare_cached(
            "SELECT seq, data FROM records WHERE seq > ?1 AND data IS NOT NULL ORDER BY seq LIMIT ?2",
        )?;
        let mut found = stmt.query(params![since, page as i64])?;
        let mut n = 0;
        while let Some(row) = found.next()? {
            since = row.get(0)?;
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(row.get_ref(1)?.as_str()?.as_bytes());
            n += 1;
        }
        out.push(b']');
        std::hint::black_box(&out);
        rows += n;
        if n < page {
            break;
        }
    }
    Ok((rows as f64 / started.elapsed().as_secs_f64(), rows))
}

/// Pulls `user`'s records in pages of `page` through a store opened on the server's configuration, into a
/// sink that keeps only the last chunk (for the page's `timestamp` and `hasMore`); returns records/s and the
/// records pulled.
pub(crate) fn store_pull_rate(config: &Path, user: &str, page: usize) -> Result<(f64, usize)> {
    struct LastChunk(Vec<u8>);
    impl syncline_store::PullSink for LastChunk {
        fn write(&mut self, chunk: Vec<u8>) -> Result<(), syncline_store::StoreError> {
            self.0 = chunk;
            Ok(())
        }
    }
    let config = syncline_server::Config::load(config)?;
    let schema = std::sync::Arc::new(syncline_core::Schema::from_config(&config.tables)?);
    let store = syncline_store::open_with(&config.storage.url, schema, &config.storage.options())?;
    let started = Instant::now();
    let (mut cursor, mut records) = (None, 0);
    loop {
        let request = syncline_core::PullRequest {
            last_pulled_at: cursor,
            limit: Some(page as u32),
            ..Default::default()
        };
        let mut sink = LastChunk(Vec::new());
        records += store.pull(user, &request, &mut sink)?.records as usize;
        let tail =
            String::from_utf8_lossy(&sink.0[sink.0.len().saturating_sub(100)..]).into_owned();
        let timestamp = tail
            .split("\"timestamp\":")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|t| t.parse().ok())
            .context("no timestamp at the end of a page")?;
        cursor = Some(timestamp);
        if !tail.contains("\"hasMore\":true") {
            break;
        }
    }
    Ok((records as f64 / started.elapsed().as_secs_f64(), records))
}

/// Pulls timed before the measured ones (connections, caches, the allocator).
const WARMUP: usize = 20;

/// What the small incremental pulls measured.
pub(crate) struct SmallPulls {
    changes: usize,
    server: Vec<Duration>,
    round_trip: Vec<Duration>,
}

/// `pulls` rounds of: `changes` new records pushed (device A), then a pull from B's cursor that must bring
/// exactly them.
pub(crate) async fn small_pulls(
    url: &str,
    token: &str,
    pulls: usize,
    changes: usize,
) -> Result<SmallPulls> {
    let client = reqwest::Client::new();
    let mut rng = rand::rng();
    let pull = |cursor: i64| {
        client
            .post(format!("{url}/v1/sync/pull"))
            .bearer_auth(token)
            .header(syncline_core::headers::DEVICE, "bench-b")
            .body(format!(r#"{{"lastPulledAt":{cursor}}}"#))
            .send()
    };
    let push = |cursor: i64, records: Vec<String>| {
        let body = format!(
            r#"{{"lastPulledAt":{cursor},"changes":{{"tasks":{{"created":[{}],"updated":[],"deleted":[]}}}}}}"#,
            records.join(",")
        );
        let request = client
            .post(format!("{url}/v1/sync/push"))
            .bearer_auth(token)
            .header(syncline_core::headers::DEVICE, "bench-a")
            .body(body);
        async move {
            let pushed = request.send().await?;
            if !pushed.status().is_success() {
                bail!("push failed: {}", pushed.status());
            }
            let answer: serde_json::Value = pushed.json().await?;
            answer["timestamp"].as_i64().context("push timestamp")
        }
    };
    // B starts where A's first write left the user.
    let mut cursor = push(0, vec![record(&mut rng).1]).await?;
    let (mut server, mut round_trip) = (Vec::new(), Vec::new());
    for round in 0..WARMUP + pulls {
        let created: Vec<String> = (0..changes).map(|_| record(&mut rng).1).collect();
        push(cursor, created).await?;
        let started = Instant::now();
        let answer = pull(cursor).await?;
        if !answer.status().is_success() {
            bail!("pull failed: {}", answer.status());
        }
        let timing = answer
            .headers()
            .get(syncline_core::headers::SERVER_TIMING)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("app;dur="))
            .and_then(|v| v.parse::<f64>().ok())
            .context("the pull answer has no Server-Timing app;dur")?;
        let page: serde_json::Value = serde_json::from_slice(&answer.bytes().await?)?;
        let elapsed = started.elapsed();
        let got = page["changes"]["tasks"]["updated"]
            .as_array()
            .map_or(0, Vec::len);
        if got != changes {
            bail!("an incremental pull brought {got} records, expected {changes}");
        }
        cursor = page["timestamp"].as_i64().context("timestamp")?;
        if round >= WARMUP {
            server.push(Duration::from_secs_f64(timing / 1e3));
            round_trip.push(elapsed);
        }
    }
    Ok(SmallPulls {
        changes,
        server: sorted(server),
        round_trip: sorted(round_trip),
    })
}

impl SmallPulls {
    pub(crate) fn print(&self) {
        println!(
            "  small incremental pulls ({} pulls of {} new records each, right after their push):",
            self.server.len(),
            self.changes
        );
        println!(
            "    server time (Server-Timing):  p50 {:>6.0} us  p99 {:>6.0} us  (goal p50 < 200 us)",
            pct(&self.server, 50.0) * 1e3,
            pct(&self.server, 99.0) * 1e3
        );
        println!(
            "    client round trip:            p50 {:>6.0} us  p99 {:>6.0} us",
            pct(&self.round_trip, 50.0) * 1e3,
            pct(&self.round_trip, 99.0) * 1e3
        );
    }
}
