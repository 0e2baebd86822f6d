//! The live sections of `syncline bench` and `syncline bench-client`: how fast a write on one device reaches
//! another, and what many idle event streams cost a server.
//!
//! - **Latency** (`bench`): device A pushes one record over HTTP; device B, holding `GET /v1/events` open,
//!   hears `changes` and pulls from its cursor. Timed from A's request to B's parsed pull answer, over
//!   `--latency-writes` writes one after the other, on the server the throughput figures were measured on.
//! - **SSE** (`bench`): `--sse-streams` streams opened over raw TCP to a fresh server process, one per user
//!   (the server's resident memory per idle stream, next to that of as many idle keep-alive HTTP
//!   connections on another fresh process); then as many to another fresh process, all on one
//!   user, whose pushes are fanned out to every stream (time from the push request to each stream reading
//!   its `changes` event). The streams are read by this process, on the same cores as the server: it
//!   prints the CPU time of both over the fan-out, so that the reader's share of the figure is plain.
//! - **SDK latency** (`bench-client`): two SDK clients of one user with automatic, live sync; a local write
//!   on A until the record is applied in B's local database.
//!
//! Benchmarks, not tests: they print figures next to their goals.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench_cpu::process_cpu;
use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::{SECRET, ServerProcess, record};

#[derive(clap::Args, Debug, Clone)]
pub struct LiveArgs {
    /// Writes timed from one device to another through events and pull (0: no latency section).
    #[arg(long, default_value_t = 1_000)]
    pub latency_writes: usize,
    /// Idle event streams open at once in the SSE section (0: no SSE section).
    #[arg(long, default_value_t = 10_000)]
    sse_streams: usize,
    /// Changes fanned out to every stream in the SSE section.
    #[arg(long, default_value_t = 5)]
    fanout_rounds: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientLatencyArgs {
    /// Writes timed from one SDK client to another, local apply included (0: none).
    #[arg(long, default_value_t = 1_000)]
    pub latency_writes: usize,
}

/// Writes before the timed ones (connections, caches, the allocator).
const WARMUP: usize = 20;

fn authenticator() -> Result<syncline_server::Authenticator> {
    Ok(syncline_server::Authenticator::from_config(
        &syncline_server::AuthSection {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        },
    )?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// p-th percentile (0..=100) of sorted samples, in milliseconds.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub(crate) fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

/// What the live sections of `bench` measured.
pub struct LiveReport {
    latency: Option<Latency>,
    sse: Option<SseFigures>,
}

struct Latency {
    total: Vec<Duration>,
    push: Vec<Duration>,
    event: Vec<Duration>,
    pull: Vec<Duration>,
}

struct SseFigures {
    /// Server memory per idle keep-alive HTTP connection (no stream), for comparison.
    idle_http_kb: f64,
    streams: usize,
    base_mb: f64,
    distinct_mb: f64,
    one_user_mb: f64,
    open_secs: f64,
    fanout: Vec<Duration>,
    rounds: usize,
    /// CPU time over the fan-out rounds, from the push until every stream heard it: the server's, and
    /// that of this process (the streams' reader), which shares the same cores.
    server_cpu: Duration,
    bench_cpu: Duration,
    /// The machine's one-minute load average as the fan-out began (other work on the same cores).
    load_average: Option<f64>,
}

/// Runs the live sections of `bench`: latency on the server at `url` (already measured for throughput),
/// SSE on a fresh server process in `dir`.
pub fn measure(args: &LiveArgs, dir: &Path, url: &str) -> Result<LiveReport> {
    let rt = runtime()?;
    let auth = authenticator()?;
    let latency = if args.latency_writes > 0 {
        eprintln!(
            "latency: {} writes from one device to another ...",
            args.latency_writes
        );
        let token = auth.mint("live", 3600, false, crate::now_secs())?;
        Some(rt.block_on(latency(url, &token, args.latency_writes))?)
    } else {
        None
    };
    let sse = if args.sse_streams > 0 {
        // Each half on a fresh server process, so that its memory is its own.
        let spawn = |name: &str| -> Result<ServerProcess> {
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(
                &config,
                // Room for every stream and its overflow, whatever the default `max_connections` is.
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = {}\n[storage]\nurl = \"sqlite://{}\"\n[auth]\njwt_secret = \"{SECRET}\"\n{}",
                    args.sse_streams + 64,
                    dir.join(format!("{name}.db")).display(),
                    include_str!("demo.toml")
                ),
            )?;
            ServerProcess::spawn(&config)
        };
        Some(rt.block_on(sse(args, spawn, &auth))?)
    } else {
        None
    };
    Ok(LiveReport { latency, sse })
}

impl LiveReport {
    pub fn print(&self) {
        if let Some(l) = &self.latency {
            let (total, push, event, pull) = (
                sorted(l.total.clone()),
                sorted(l.push.clone()),
                sorted(l.event.clone()),
                sorted(l.pull.clone()),
            );
            println!(
                "  latency, write on A seen by B (events + pull), {} writes:",
                total.len()
            );
            println!(
                "    write -> other device:        p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  (goal p50 <= 3 ms)",
                pct(&total, 50.0),
                pct(&total, 90.0),
                pct(&total, 99.0)
            );
            println!(
                "    of which: push answered p50 {:.2} ms, event heard p50 {:.2} ms, pull after the event p50 {:.2} ms",
                pct(&push, 50.0),
                pct(&event, 50.0),
                pct(&pull, 50.0)
            );
        }
        if let Some(s) = &self.sse {
            let fanout = sorted(s.fanout.clone());
            let per_stream_kb = (s.distinct_mb - s.base_mb) * 1024.0 / s.streams as f64;
            println!(
                "  SSE, {} idle streams on one server (a fresh process, SQLite):",
                s.streams
            );
            println!(
                "    server RSS, one user per stream:  {:>7.1} MB total, {:.1} MB before  ({per_stream_kb:.1} KB per stream; goal < 400 MB total)",
                s.distinct_mb, s.base_mb
            );
            println!(
                "    for comparison, an idle keep-alive HTTP connection (one GET /healthz, no stream): {:.1} KB",
                s.idle_http_kb
            );
            println!(
                "    server RSS, all on one user, after the fan-out: {:>7.1} MB total  (another fresh process; goal < 400 MB)",
                s.one_user_mb
            );
            println!(
                "    streams opened:                   {:>7.0} per second",
                s.streams as f64 / s.open_secs
            );
            println!(
                "    fan-out of one change to all {}, {} changes: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (goal p99 < 250 ms)",
                s.streams,
                s.rounds,
                pct(&fanout, 50.0),
                pct(&fanout, 99.0),
                pct(&fanout, 100.0)
            );
            let rounds = s.rounds.max(1) as f64;
            let (server_ms, bench_ms) = (
                s.server_cpu.as_secs_f64() * 1000.0 / rounds,
                s.bench_cpu.as_secs_f64() * 1000.0 / rounds,
            );
            println!(
                "    CPU per change fanned out: server {server_ms:.0} ms, the bench's own stream reader {bench_ms:.0} ms ({:.0}% of the two, on the same {} cores)",
                100.0 * bench_ms / (server_ms + bench_ms).max(f64::MIN_POSITIVE),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            if let Some(load) = s.load_average {
                println!(
                    "    load average as the fan-out began: {load:.2} (everything else running on those cores)"
                );
            }
        }
    }
}

/// The `changes`/`ready` events of one `/v1/events` answer, read through reqwest.
struct EventReader {
    response: reqwest::Response,
    buf: String,
}

impl EventReader {
    async fn open(http: &reqwest::Client, url: &str, token: &str) -> Result<EventReader> {
        let response = http
            .get(format!("{url}/v1/events"))
            .bearer_auth(token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /v1/events answered {}", response.status());
        }
        Ok(EventReader {
            response,
            buf: String::new(),
        })
    }

    /// The next event's name (comments skipped).
    async fn next(&mut self) -> Result<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(name) = block.lines().find_map(|l| l.strip_prefix("event:")) {
                    return Ok(name.trim().to_string());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .context("no event for 30 s")??
                .context("the event stream ended")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// One pull from `cursor`; returns (records, timestamp).
async fn pull(http: &reqwest::Client, url: &str, token: &str, cursor: i64) -> Result<(usize, i64)> {
    let response = http
        .post(format!("{url}/v1/sync/pull"))
        .bearer_auth(token)
        .body(format!("{{\"lastPulledAt\":{cursor}}}"))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("pull answered {}", response.status());
    }
    let page: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    let records = page["changes"]
        .as_object()
        .map(|t| {
            t.values()
                .map(|c| c["updated"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    Ok((records, page["timestamp"].as_i64().unwrap_or(cursor)))
}

async fn push_one(http: &reqwest::Client, url: &str, token: &str, json: &str) -> Result<()> {
    let response = http
        .post(format!("{url}/v1/sync/push"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"lastPulledAt":0,"changes":{{"tasks":{{"created":[{json}],"updated":[],"deleted":[]}}}}}}"#
        ))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("push answered {}", response.status());
    }
    response.bytes().await?;
    Ok(())
}

async fn latency(url: &str, token: &str, writes: usize) -> Result<Latency> {
    let (device_a, device_b) = (reqwest::Client::new(), reqwest::Client::new());
    let mut events = EventReader::open(&reqwest::Client::new(), url, token).await?;
    if events.next().await? != "ready" {
        bail!("the event stream did not start with `ready`");
    }
    let (_, mut cursor) = pull(&device_b, url, token, 0).await?;
    let mut rng = rand::rng();
    let mut out = Latency {
        total: Vec::new(),
        push: Vec::new(),
        event: Vec::new(),
        pull: Vec::new(),
    };
    for i in 0..writes + WARMUP {
        let (_, json) = record(&mut rng);
        let started = Instant::now();
        let push = {
            let (http, url, token) = (device_a.clone(), url.to_string(), token.to_string());
            tokio::spawn(async move {
                push_one(&http, &url, &token, &json).await?;
                Ok::<_, anyhow::Error>(started.elapsed())
            })
        };
        while events.next().await? != "changes" {}
        let heard = started.elapsed();
        let (records, timestamp) = pull(&device_b, url, token, cursor).await?;
        let seen = started.elapsed();
        let pushed = push.await??;
        if records != 1 {
            bail!("device B pulled {records} records after write {i}, expected 1");
        }
        cursor = timestamp;
        if i >= WARMUP {
            out.total.push(seen);
            out.push.push(pushed);
            out.event.push(heard);
            out.pull.push(seen - heard);
        }
    }
    Ok(out)
}

/// One idle stream over raw TCP: the request, then everything up to `ready`. Small on the bench's side too.
async fn open_stream(addr: &str, token: &str) -> Result<tokio::net::TcpStream> {
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    open_connection(addr, &request, b"event: ready").await
}

/// A raw HTTP/1.1 connection that sent `request` and read its answer up to `until`; kept open.
async fn open_connection(addr: &str, request: &str, until: &[u8]) -> Result<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !contains(&seen, until) {
        let n = stream.read(&mut buf).await?;
        if n == 0 || seen.len() > 16 * 1024 {
            bail!("no answer: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&buf[..n]);
    }
    if !seen.starts_with(b"HTTP/1.1 200") {
        bail!("{}", String::from_utf8_lossy(&seen));
    }
    Ok(stream)
}

/// The server's memory per idle keep-alive HTTP connection that served one `GET /healthz`: what any open
/// connection costs before it is an event stream. Returns (RSS before, RSS after) in MB.
async fn idle_connections(server: &ServerProcess, n: usize) -> Result<(f64, f64)> {
    let addr = server
        .url
        .strip_prefix("http://")
        .context("server url")?
        .to_string();
    reqwest::get(format!("{}/healthz", server.url)).await?;
    let before = server.peak_rss_kb()? as f64 / 1024.0;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (addr, request, connecting) = (addr.clone(), request.clone(), connecting.clone());
        tasks.spawn(async move {
            let _permit = connecting.acquire_owned().await;
            open_connection(&addr, &request, b"\r\n\r\n").await
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        held.push(joined??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((before, server.peak_rss_kb()? as f64 / 1024.0))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Open streams, each read by its own task that notes when it hears `changes`. Lean on purpose, since the
/// bench shares the machine with the server it measures: a stream's task writes the time into its own slot
/// and counts, and only the stream that completes a round wakes the waiting one.
struct Streams {
    tasks: tokio::task::JoinSet<()>,
    heard: Arc<Heard>,
}

/// When each stream last heard `changes`, in nanoseconds since `epoch`, and how many times streams did.
struct Heard {
    epoch: Instant,
    at: Vec<std::sync::atomic::AtomicU64>,
    count: std::sync::atomic::AtomicUsize,
    /// Every stream has heard the change of the round under way.
    round_done: tokio::sync::Notify,
    round_target: std::sync::atomic::AtomicUsize,
}

impl Heard {
    fn note(&self, stream: usize) {
        use std::sync::atomic::Ordering;
        let nanos = self.epoch.elapsed().as_nanos() as u64;
        self.at[stream].store(nanos, Ordering::Relaxed);
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count == self.round_target.load(Ordering::Acquire) {
            self.round_done.notify_waiters();
        }
    }

    /// Waits until the streams have heard `target` changes in all; each stream's time since `started`.
    async fn round(&self, target: usize, started: Instant) -> Result<Vec<Duration>> {
        use std::sync::atomic::Ordering;
        self.round_target.store(target, Ordering::Release);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = self.round_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.count.load(Ordering::Acquire) >= target {
                break;
            }
            tokio::time::timeout_at(deadline, done)
                .await
                .context("a stream did not hear the change within 30 s")?;
        }
        let base = started.saturating_duration_since(self.epoch);
        Ok(self
            .at
            .iter()
            .map(|at| Duration::from_nanos(at.load(Ordering::Relaxed)).saturating_sub(base))
            .collect())
    }
}

/// Opens `n` streams, at most 256 connecting at once (the listen backlog is finite); `token(i)` for each.
async fn open_streams(addr: &str, n: usize, token: impl Fn(usize) -> String) -> Result<Streams> {
    let heard = Arc::new(Heard {
        epoch: Instant::now(),
        at: (0..n).map(|_| Default::default()).collect(),
        count: Default::default(),
        round_done: Default::default(),
        round_target: std::sync::atomic::AtomicUsize::new(usize::MAX),
    });
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (addr, token) = (addr.to_string(), token(i));
        let (heard, opened_tx, connecting) = (heard.clone(), opened_tx.clone(), connecting.clone());
        tasks.spawn(async move {
            let permit = connecting.acquire_owned().await;
            let mut stream = match open_stream(&addr, &token).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            drop(permit);
            let _ = opened_tx.send(Ok(()));
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                if contains(&buf[..n], b"event: changes") {
                    heard.note(i);
                }
            }
        });
    }
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(120), opened.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e.context("opening an event stream")),
            _ => bail!("the event streams did not all open within 120 s"),
        }
    }
    Ok(Streams { tasks, heard })
}

async fn sse(
    args: &LiveArgs,
    spawn: impl Fn(&str) -> Result<ServerProcess>,
    auth: &syncline_server::Authenticator,
) -> Result<SseFigures> {
    let n = args.sse_streams;
    let now = crate::now_secs();
    let fan_user = auth.mint("fanout", 3600, false, now)?;
    let addr_of = |server: &ServerProcess| -> Result<String> {
        Ok(server
            .url
            .strip_prefix("http://")
            .context("server url")?
            .to_string())
    };

    let server = spawn("sse-idle-http")?;
    eprintln!("SSE: opening {n} idle keep-alive HTTP connections, for comparison ...");
    let (idle_before, idle_after) = idle_connections(&server, n).await?;
    drop(server);

    let server = spawn("sse-users")?;
    // One request first, so the baseline includes a served connection.
    pull(&reqwest::Client::new(), &server.url, &fan_user, 0).await?;
    let base_mb = server.peak_rss_kb()? as f64 / 1024.0;
    eprintln!("SSE: opening {n} idle event streams, one user each ...");
    let tokens: Vec<String> = (0..n)
        .map(|i| auth.mint(&format!("user{i}"), 3600, false, now))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let distinct = open_streams(&addr_of(&server)?, n, |i| tokens[i].clone()).await?;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let distinct_mb = server.peak_rss_kb()? as f64 / 1024.0;
    drop(distinct);
    drop(server);

    let server = spawn("sse-fanout")?;
    eprintln!(
        "SSE: opening {n} event streams of one user, fanning out {} changes ...",
        args.fanout_rounds
    );
    let mut streams = open_streams(&addr_of(&server)?, n, |_| fan_user.clone()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let mut rng = rand::rng();
    let mut fanout = Vec::with_capacity(n * args.fanout_rounds);
    let (mut server_cpu, mut bench_cpu) = (Duration::ZERO, Duration::ZERO);
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    for round in 1..=args.fanout_rounds {
        let (_, json) = record(&mut rng);
        let cpu_before = (process_cpu(server.pid())?, process_cpu(std::process::id())?);
        let started = Instant::now();
        push_one(&http, &server.url, &fan_user, &json).await?;
        fanout.extend(streams.heard.round(n * round, started).await?);
        server_cpu += process_cpu(server.pid())?.saturating_sub(cpu_before.0);
        bench_cpu += process_cpu(std::process::id())?.saturating_sub(cpu_before.1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let one_user_mb = server.peak_rss_kb()? as f64 / 1024.0;
    streams.tasks.abort_all();
    Ok(SseFigures {
        idle_http_kb: (idle_after - idle_before) * 1024.0 / n as f64,
        streams: n,
        base_mb,
        distinct_mb,
        one_user_mb,
        open_secs,
        fanout,
        rounds: args.fanout_rounds,
        server_cpu,
        bench_cpu,
        load_average,
    })
}

/// `bench-client`'s latency: a local write on SDK client A until B has applied it, both syncing
/// automatically and live; returns the sorted samples.
pub fn client_latency(url: &str, token: &str, dir: &Path, writes: usize) -> Result<Vec<Duration>> {
    use syncline_client::{AutoSyncPolicy, Client, ClientConfig};
    let open = |name: &str| Client::open(dir.join(name), ClientConfig::new(url, token));
    let (a, b) = (open("live-a.db")?, open("live-b.db")?);
    let policy = AutoSyncPolicy {
        interval: None,
        debounce: Duration::ZERO,
        min_interval: Duration::ZERO,
        ..AutoSyncPolicy::default()
    };
    // Two clients syncing a thousand times log two thousand "sync finished" lines: not here.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| {
            std::mem::forget(tracing::dispatcher::set_default(&tracing::Dispatch::none()))
        })
        .build()?;
    let _quiet = tracing::dispatcher::set_default(&tracing::Dispatch::none());
    rt.block_on(async {
        let auto_a = a.start_auto_sync(policy);
        let auto_b = b.start_auto_sync(policy);
        for c in [&a, &b] {
            let mut p = c.progress();
            tokio::time::timeout(Duration::from_secs(30), p.wait_for(|p| p.live))
                .await
                .context("an SDK client's event stream did not connect")??;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut rng = rand::rng();
        let mut samples = Vec::with_capacity(writes);
        for i in 0..writes + WARMUP {
            let (id, json) = record(&mut rng);
            let row: serde_json::Value = serde_json::from_str(&json)?;
            let mut progress = b.progress();
            progress.borrow_and_update();
            let started = Instant::now();
            a.json_table("tasks")?.insert(&row)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while b.json_table("tasks")?.get(&id)?.is_none() {
                tokio::time::timeout_at(deadline, progress.changed())
                    .await
                    .with_context(|| format!("write {i} did not reach client B within 30 s"))??;
            }
            if i >= WARMUP {
                samples.push(started.elapsed());
            }
        }
        auto_a.stop().await;
        auto_b.stop().await;
        Ok(sorted(samples))
    })
}

/// Prints `bench-client`'s latency line.
pub fn print_client_latency(samples: &[Duration]) {
    println!(
        "  write on A -> applied on B (two SDK clients, live, debounce 0): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  ({} writes; goal p50 <= 10 ms)",
        pct(samples, 50.0),
        pct(samples, 90.0),
        pct(samples, 99.0),
        samples.len()
    );
}
