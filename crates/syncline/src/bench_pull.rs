//! The pull sections of `syncline bench`:
//!
//! - **Paged and streamed pulls over HTTP**: the bench's client receives every byte of every answer and
//!   verifies it: the page parses as the documented pull answer, every record carries an `id`, a full page
//!   holds `limit` records and says `hasMore`, its `timestamp` moves forward, and the ids received (summed as
//!   hashes) are exactly the ids pushed. A page's cursor is read from the end of its body as soon as it has
//!   arrived, so the next page is asked for while this one is verified on another thread (as a client that
//!   applies one page while fetching the next would); the clock stops when the last page is verified.
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

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rusqlite::{OpenFlags, params};
use serde::Deserialize;
use serde::de::IgnoredAny;

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

/// What a pull client received: how many records, and the wrapping sum of a hash of each one's id (equal
/// for two sets of ids, with overwhelming likelihood, only when they hold the same ids).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) records: usize,
    ids: u64,
}

impl Received {
    /// What receiving exactly `ids` would give.
    pub(crate) fn of_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Received {
        let mut got = Received::default();
        for id in ids {
            got.add(id);
        }
        got
    }

    fn add(&mut self, id: &str) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        self.records += 1;
        self.ids = self.ids.wrapping_add(h.finish());
    }

    fn merge(&mut self, other: Received) {
        self.records += other.records;
        self.ids = self.ids.wrapping_add(other.ids);
    }
}

/// A pull answer as the bench verifies it (docs/protocol.md, "Pull"): only each record's `id` is kept; every
/// other value is still read through and checked to be JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Page<'a> {
    #[serde(borrow)]
    changes: std::collections::BTreeMap<&'a str, TablePage<'a>>,
    timestamp: i64,
    #[serde(default)]
    has_more: Option<bool>,
    #[serde(default)]
    experimental_strategy: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TablePage<'a> {
    #[serde(borrow)]
    created: Vec<WithId<'a>>,
    #[serde(borrow)]
    updated: Vec<WithId<'a>>,
    #[serde(borrow)]
    deleted: Vec<&'a str>,
}

/// A record: its id, and every other field read and ignored.
#[derive(Deserialize)]
struct WithId<'a> {
    id: &'a str,
}

/// The end of a pull answer: `timestamp` and `hasMore`, read from the last bytes of the body without parsing
/// the rest (the writer puts them after `changes`).
fn tail(body: &[u8]) -> Result<(i64, Option<bool>)> {
    let tail = &body[body.len().saturating_sub(128)..];
    let tail = std::str::from_utf8(tail).unwrap_or_default();
    let after = |key: &str| tail.rsplit_once(key).map(|(_, rest)| rest);
    let timestamp = after("\"timestamp\":")
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|t| t.parse().ok())
        .context("no timestamp at the end of a pull answer")?;
    let has_more = after("\"hasMore\":").map(|rest| rest.starts_with("true"));
    Ok((timestamp, has_more))
}

/// Verifies one pull answer whose end said `timestamp` and `has_more`; `limit` is the page size asked for.
fn verify(
    body: &[u8],
    timestamp: i64,
    has_more: Option<bool>,
    limit: Option<usize>,
) -> Result<Received> {
    let page: Page =
        serde_json::from_slice(body).context("a pull answer is not the documented JSON")?;
    ensure!(
        page.timestamp == timestamp && page.has_more == has_more,
        "a pull answer's end does not match its parse"
    );
    ensure!(
        page.experimental_strategy.is_none(),
        "a first pull answered with the replacement strategy"
    );
    let mut got = Received::default();
    for table in page.changes.values() {
        ensure!(table.deleted.is_empty(), "a first pull carried deleted ids");
        for record in table.created.iter().chain(&table.updated) {
            ensure!(!record.id.is_empty(), "a pulled record has an empty id");
            got.add(record.id);
        }
    }
    if let Some(limit) = limit {
        ensure!(has_more.is_some(), "a paged pull answer has no hasMore");
        ensure!(
            got.records <= limit && (has_more == Some(false) || got.records == limit),
            "a page of limit {limit} brought {} records (hasMore: {has_more:?})",
            got.records
        );
    }
    Ok(got)
}

/// Sends one pull request and receives its whole body into a buffer of `capacity` to begin with.
async fn receive(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    cursor: Option<i64>,
    limit: Option<usize>,
    capacity: usize,
) -> Result<Vec<u8>> {
    let body = serde_json::json!({"lastPulledAt": cursor, "limit": limit}).to_string();
    let mut response = client
        .post(format!("{url}/v1/sync/pull"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("pull failed: {}", response.status());
    }
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Pulls everything into a fresh cursor in pages of `page`, each page verified (see the module docs).
pub(crate) async fn pull_all(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    page: usize,
) -> Result<Received> {
    let (mut cursor, mut capacity) = (None, 0);
    let mut total = Received::default();
    let mut verifying: Option<tokio::task::JoinHandle<Result<Received>>> = None;
    loop {
        let body = receive(client, url, token, cursor, Some(page), capacity).await?;
        capacity = capacity.max(body.len() + body.len() / 8);
        let (timestamp, has_more) = tail(&body)?;
        ensure!(
            cursor.is_none_or(|c| timestamp > c) || has_more == Some(false),
            "a page's timestamp did not move past its cursor"
        );
        // At most one page is verified while the next arrives.
        if let Some(previous) = verifying.take() {
            total.merge(previous.await??);
        }
        verifying = Some(tokio::task::spawn_blocking(move || {
            verify(&body, timestamp, has_more, Some(page))
        }));
        cursor = Some(timestamp);
        if has_more != Some(true) {
            break;
        }
    }
    if let Some(last) = verifying {
        total.merge(last.await??);
    }
    Ok(total)
}

/// Pulls everything in one streamed answer (no `limit`) and verifies it.
pub(crate) async fn pull_whole(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<Received> {
    let body = receive(client, url, token, None, None, 0).await?;
    let (timestamp, has_more) = tail(&body)?;
    ensure!(has_more.is_none(), "an answer without limit has hasMore");
    tokio::task::spawn_blocking(move || verify(&body, timestamp, has_more, None)).await?
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
