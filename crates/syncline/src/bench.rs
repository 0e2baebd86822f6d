//! `syncline bench`: pushes N records (~250 bytes, random 16-character ids) to a real server process over
//! HTTP in batches, pulls them all into a fresh cursor, and prints records/s for both, the server's peak RSS
//! and, measured in the same run on the same disk, the raw SQLite upsert ceiling for the same records.
//! A benchmark, not a test: it prints figures and the goals they are read against.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::bench_cpu::{self, CpuMark};
use crate::bench_pg::{Cluster, Durability};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Records to push and pull.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Records per push request (and per ceiling transaction).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Records per pull page.
    #[arg(long, default_value_t = 50_000)]
    page: usize,
    /// Push requests in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Where the databases go (default: a fresh directory under the current one, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the server on PostgreSQL: a throwaway cluster started for the run (only in a build with
    /// `--features bench-postgres`; needs the `postgresql` package and root), with the raw PostgreSQL upsert
    /// ceiling measured on the same cluster.
    #[arg(long)]
    postgres: bool,
    /// Run the server on this PostgreSQL cluster instead (a role that may create databases: the bench
    /// creates one per measurement and drops them at the end). Its durability settings are printed.
    #[arg(long, value_name = "URL", conflicts_with = "postgres")]
    postgres_url: Option<String>,
    /// Small incremental pulls timed (0: no such section).
    #[arg(long, default_value_t = 1_000)]
    small_pulls: usize,
    /// New records each small incremental pull brings.
    #[arg(long, default_value_t = 5)]
    small_pull_records: usize,
    /// The live sections: write-to-other-device latency and many idle event streams.
    #[command(flatten)]
    live: crate::bench_live::LiveArgs,
}

impl BenchArgs {
    fn on_postgres(&self) -> bool {
        self.postgres || self.postgres_url.is_some()
    }

    /// The cluster a PostgreSQL section runs on: the given one, or a throwaway one with `durability`.
    fn cluster(&self, durability: Durability) -> Result<Option<Cluster>> {
        match (&self.postgres_url, self.postgres) {
            (Some(url), _) => Ok(Some(Cluster::given(url)?)),
            (None, true) => Ok(Some(Cluster::throwaway(durability)?)),
            (None, false) => Ok(None),
        }
    }
}

pub(crate) const SECRET: &str = "bench-secret-bench-secret-bench";

fn random_string(rng: &mut impl Rng, n: usize) -> String {
    rng.sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// One ~250-byte task record of the demo schema, as JSON text.
pub(crate) fn record(rng: &mut impl Rng) -> (String, String) {
    let id = random_string(rng, 16);
    let title = random_string(rng, 120);
    let json = format!(
        r#"{{"id":"{id}","title":"{title}","done":{},"project_id":"{}","position":{:.3},"updated_at":{}}}"#,
        rng.random_bool(0.5),
        random_string(rng, 16),
        rng.random_range(0.0..1e6),
        1_700_000_000_000u64 + rng.random_range(0..1_000_000_000u64),
    );
    (id, json)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let own_dir = args.dir.is_none();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("syncline-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&args, &dir);
    if own_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(args: &BenchArgs, dir: &Path) -> Result<()> {
    let cluster = args.cluster(Durability::Off)?;
    let mut rng = rand::rng();
    eprintln!("generating {} records ...", args.records);
    let records: Vec<(String, String)> = (0..args.records).map(|_| record(&mut rng)).collect();
    let avg = records.iter().map(|r| r.1.len()).sum::<usize>() / records.len().max(1);

    // SQLite's ceiling is measured at both durability levels the server offers, so that each push is read
    // against the raw upsert that waits for the disk exactly as it does.
    // Next to each, the same raw upsert into the store's own `records` layout: what the table and its
    // indexes cost apart from HTTP, parsing and the write flow.
    // CPU time of each SQLite ceiling (plain full, plain normal, layout full, layout normal).
    let mut ceiling_cpu = None;
    let (backend, storage_url, ceiling, normal_ceiling, layout) = match &cluster {
        Some(pg) => {
            eprintln!("measuring the raw PostgreSQL upsert ceiling ...");
            let ceiling = postgres_ceiling(&pg.fresh_database()?, &records, args.batch)?;
            ("PostgreSQL", pg.fresh_database()?, ceiling, None, None)
        }
        None => {
            eprintln!("measuring the raw SQLite upsert ceiling, synchronous=full and normal ...");
            let ceiling = |name: &str, layout, synchronous| {
                sqlite_ceiling(&dir.join(name), &records, args.batch, layout, synchronous)
            };
            let full = ceiling("ceiling.db", Layout::Plain, "FULL")?;
            let normal = ceiling("ceiling-normal.db", Layout::Plain, "NORMAL")?;
            eprintln!("measuring the same upsert into the store's records layout ...");
            let layout_full = ceiling("layout.db", Layout::Store, "FULL")?;
            let layout_normal = ceiling("layout-normal.db", Layout::Store, "NORMAL")?;
            ceiling_cpu = Some([full.1, normal.1, layout_full.1, layout_normal.1]);
            let (full, normal) = (full.0, normal.0);
            let (layout_full, layout_normal) = (layout_full.0, layout_normal.0);
            (
                "SQLite",
                format!("sqlite://{}", dir.join("server.db").display()),
                full,
                Some(normal),
                Some((layout_full, layout_normal)),
            )
        }
    };

    let config = write_config(dir, "bench.toml", args, &storage_url, "")?;
    let mut server = ServerProcess::spawn(&config)?;
    let auth = syncline_server::Authenticator::from_config(&syncline_server::AuthSection {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })?;
    let token = auth.mint("bench", 3600, false, crate::now_secs())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut normal_push_secs = None;
    // The server processes' CPU time over each push: parsing, HTTP and the writer, on every thread.
    let mut push_cpu = [std::time::Duration::ZERO; 2];
    let (push_secs, (pull_secs, pull_cpu), pulled, stream_secs, streamed) =
        runtime.block_on(async {
            let client = reqwest::Client::new();
            let bodies: Vec<String> = records
                .chunks(args.batch.max(1))
                .map(|chunk| {
                    let mut body = String::with_capacity(chunk.len() * (avg + 1) + 100);
                    body.push_str(r#"{"lastPulledAt":0,"changes":{"tasks":{"created":["#);
                    for (i, (_, json)) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(json);
                    }
                    body.push_str(r#"],"updated":[],"deleted":[]}}}"#);
                    body
                })
                .collect();
            eprintln!(
                "pushing {} records in {} requests ...",
                records.len(),
                bodies.len()
            );
            settle_disk();
            let started = Instant::now();
            let cpu = crate::bench_cpu::process_cpu(server.pid())?;
            push_all(
                &client,
                &server.url,
                &token,
                bodies.clone(),
                args.concurrency,
            )
            .await?;
            let push_secs = started.elapsed().as_secs_f64();
            push_cpu[0] = crate::bench_cpu::process_cpu(server.pid())?.saturating_sub(cpu);
            if cluster.is_none() {
                // The same push into a fresh database with SQLite's faster, less durable setting.
                let url = format!("sqlite://{}", dir.join("normal.db").display());
                let config = write_config(
                    dir,
                    "normal.toml",
                    args,
                    &url,
                    "sqlite_synchronous = \"normal\"",
                )?;
                let fast = ServerProcess::spawn(&config)?;
                eprintln!("pushing the same records with synchronous=normal ...");
                settle_disk();
                let started = Instant::now();
                let cpu = crate::bench_cpu::process_cpu(fast.pid())?;
                push_all(&client, &fast.url, &token, bodies, args.concurrency).await?;
                normal_push_secs = Some(started.elapsed().as_secs_f64());
                push_cpu[1] = crate::bench_cpu::process_cpu(fast.pid())?.saturating_sub(cpu);
            }
            eprintln!("pulling into a fresh cursor ...");
            let started = Instant::now();
            let mark = CpuMark::now(server.pid())?;
            let pulled =
                crate::bench_pull::pull_all(&client, &server.url, &token, args.page).await?;
            let pull_secs = started.elapsed().as_secs_f64();
            let pull_cpu = mark.used()?;
            eprintln!("pulling everything in one streamed response ...");
            let started = Instant::now();
            let streamed = crate::bench_pull::pull_whole(&client, &server.url, &token).await?;
            Ok::<_, anyhow::Error>((
                push_secs,
                (pull_secs, pull_cpu),
                pulled,
                started.elapsed().as_secs_f64(),
                streamed,
            ))
        })?;
    let peak_rss_mb = server.peak_rss_kb()? as f64 / 1024.0;
    let read_ceiling = match &cluster {
        Some(_) => None,
        None => {
            eprintln!("measuring the raw SQLite read ceiling ...");
            let (rate, rows) =
                crate::bench_pull::sqlite_read_ceiling(&dir.join("server.db"), args.page)?;
            if rows != records.len() {
                bail!(
                    "the read ceiling read {rows} records, expected {}",
                    records.len()
                );
            }
            Some(rate)
        }
    };
    eprintln!("pulling through the store in process ...");
    let (store_rate, store_rows) = crate::bench_pull::store_pull_rate(&config, "bench", args.page)?;
    if store_rows != records.len() {
        bail!(
            "the store pull read {store_rows} records, expected {}",
            records.len()
        );
    }
    let small = if args.small_pulls > 0 {
        eprintln!("timing {} small incremental pulls ...", args.small_pulls);
        Some(runtime.block_on(crate::bench_pull::small_pulls(
            &server.url,
            &token,
            args.small_pulls,
            args.small_pull_records.max(1),
        ))?)
    } else {
        None
    };
    let stalled = runtime.block_on(stalled_pulls(&server, &token))?;
    let live = crate::bench_live::measure(&args.live, dir, &server.url)?;
    server.stop();
    let pushed = crate::bench_pull::Received::of_ids(records.iter().map(|r| r.0.as_str()));
    if pulled != pushed || streamed != pushed {
        bail!(
            "pulled {} records in pages and {} in one response, expected {} (or other ids than were pushed)",
            pulled.records,
            streamed.records,
            pushed.records
        );
    }
    let n = records.len() as f64;
    let (push_goal, pull_goal) = if args.on_postgres() {
        (
            "goal >= 50000/s, about 60%",
            "no goal set for PostgreSQL".to_string(),
        )
    } else {
        let of_ceiling = read_ceiling
            .map(|c| format!("{:.0}% of the read ceiling; ", 100.0 * n / pull_secs / c))
            .unwrap_or_default();
        (
            "goal >= 80% of the ceiling",
            format!("{of_ceiling}goal >= 1500000/s"),
        )
    };
    let push_rate = n / push_secs;
    let pull_rate = n / pull_secs;
    println!(
        "Syncline bench on {backend}: {} records of ~{avg} bytes, random 16-char ids; push batches of {}, pull pages of {}",
        records.len(),
        args.batch,
        args.page
    );
    let durable = if args.on_postgres() {
        ""
    } else {
        " (synchronous=full)"
    };
    println!(
        "  {backend} upsert ceiling{durable} (same records, same disk, {} per txn): {:>10.0} records/s",
        args.batch, ceiling
    );
    println!(
        "  push over HTTP{durable:<19} {:>10.0} records/s  ({:.0}% of ceiling; {push_goal})",
        push_rate,
        100.0 * push_rate / ceiling
    );
    // The store's layout writes more per record than the plain table: reading the push against it too
    // separates what the layout costs from what HTTP, parsing and the write flow cost.
    let layout_line = |layout: f64, plain: f64, push: f64| {
        println!(
            "    same upsert into the store's records layout (key, log and tombstone indexes): {layout:>8.0} records/s ({:.0}% of the ceiling); the push is {:.0}% of it",
            100.0 * layout / plain,
            100.0 * push / layout
        )
    };
    // CPU per record does not depend on how busy the machine is nearly as much as records/s does.
    let per_record = |cpu: std::time::Duration| 1e6 * cpu.as_secs_f64() / n;
    let cpu_line = |push: std::time::Duration,
                    plain: std::time::Duration,
                    layout: std::time::Duration| {
        println!(
            "    CPU per record: push {:.1} us (the server process, all threads); plain ceiling {:.1} us, store layout {:.1} us (one thread)",
            per_record(push),
            per_record(plain),
            per_record(layout)
        )
    };
    if let Some((full, _)) = layout {
        layout_line(full, ceiling, push_rate);
    }
    if let Some([plain, _, layout, _]) = ceiling_cpu {
        cpu_line(push_cpu[0], plain, layout);
    }
    if let (Some(secs), Some(normal_ceiling)) = (normal_push_secs, normal_ceiling) {
        println!(
            "  SQLite upsert ceiling (synchronous=normal, same records, same disk, {} per txn): {:>10.0} records/s",
            args.batch, normal_ceiling
        );
        println!(
            "  push over HTTP (synchronous=normal): {:>6.0} records/s  ({:.0}% of that ceiling; {push_goal}; survives a process crash, not power loss)",
            n / secs,
            100.0 * n / secs / normal_ceiling
        );
        if let Some((_, normal)) = layout {
            layout_line(normal, normal_ceiling, n / secs);
        }
        if let Some([_, plain, _, layout]) = ceiling_cpu {
            cpu_line(push_cpu[1], plain, layout);
        }
    }
    if let Some(ceiling) = read_ceiling {
        println!(
            "  SQLite read ceiling (the server's file by sequence, pages of {}, stored JSON spliced): {:>10.0} records/s",
            args.page, ceiling
        );
    }
    println!(
        "  pull into a fresh cursor:        {:>10.0} records/s  ({pull_goal})",
        pull_rate
    );
    // /proc counts CPU time in 10 ms ticks: a split of a shorter pull would be mostly rounding.
    if pull_cpu.wall >= std::time::Duration::from_millis(500) {
        println!("    {}", cpu_split(&pull_cpu, n, "record", 2));
    }
    println!(
        "  pull, one streamed response:     {:>10.0} records/s",
        n / stream_secs
    );
    println!(
        "  store paged pull, in process:    {:>10.0} records/s  (the same pages without HTTP or a client)",
        store_rate
    );
    println!(
        "  server peak RSS:                 {:>10.1} MB         (goal <= 200 MB)",
        peak_rss_mb
    );
    if let Some(small) = &small {
        small.print();
    }
    stalled.print();
    live.print();
    drop(cluster);
    small_pushes(args, dir, &runtime)?;
    Ok(())
}

/// Writes a server configuration for `storage_url` (with `storage` lines added to its section).
fn write_config(
    dir: &Path,
    name: &str,
    args: &BenchArgs,
    storage_url: &str,
    storage: &str,
) -> Result<PathBuf> {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_records_per_request = {}\nmax_pulls_per_user = {STALLED_PULLS}\nwrite_timeout_secs = {STALL_TIMEOUT_SECS}\n[storage]\nurl = \"{}\"\n{storage}\n[auth]\njwt_secret = \"{SECRET}\"\n[sync]\nmax_pull_limit = {}\n{}",
            args.batch.max(1000),
            storage_url,
            args.page.max(1),
            include_str!("demo.toml")
        ),
    )?;
    Ok(config)
}

/// Pushes in flight at once in the small-push section, and the users they come from in its second half.
const SMALL_PUSHERS: usize = 16;
/// Records per push in the small-push section.
const SMALL_PUSH_RECORDS: usize = 10;

/// Small pushes, as devices make them: 10-record pushes, 16 in flight at once through one server, first all
/// from one user, then one from each of 16 users. Every commit waits for the disk (PostgreSQL: a cluster
/// with `fsync` and `synchronous_commit` on; SQLite: `synchronous=full`, then `normal` for the trade-off).
/// Writes of one user take turns on its counter; writes of different users should not wait for each other.
fn small_pushes(args: &BenchArgs, dir: &Path, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let secs = 5.0;
    let mut runs: Vec<(String, String, &str)> = Vec::new();
    let cluster = args.cluster(Durability::On)?;
    match &cluster {
        Some(pg) => {
            let url = pg.fresh_database()?;
            let settings = pg.durability_settings(&url)?;
            runs.push((format!("PostgreSQL, {settings}"), url, ""));
        }
        None => {
            for (mode, line) in [
                ("full", "sqlite_synchronous = \"full\""),
                ("normal", "sqlite_synchronous = \"normal\""),
            ] {
                runs.push((
                    format!("SQLite, synchronous={mode}"),
                    format!(
                        "sqlite://{}",
                        dir.join(format!("small-{mode}.db")).display()
                    ),
                    line,
                ));
            }
        }
    }
    let auth = syncline_server::Authenticator::from_config(&syncline_server::AuthSection {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })?;
    println!(
        "Small pushes: {SMALL_PUSH_RECORDS}-record pushes, {SMALL_PUSHERS} in flight through one server, {secs:.0} s each"
    );
    for (i, (label, url, storage)) in runs.iter().enumerate() {
        let config = write_config(dir, &format!("small-{i}.toml"), args, url, storage)?;
        let server = ServerProcess::spawn(&config)?;
        let one_user: Vec<String> = (0..SMALL_PUSHERS)
            .map(|_| auth.mint("solo", 3600, false, crate::now_secs()))
            .collect::<Result<_, _>>()?;
        let many_users: Vec<String> = (0..SMALL_PUSHERS)
            .map(|u| auth.mint(&format!("user{u}"), 3600, false, crate::now_secs()))
            .collect::<Result<_, _>>()?;
        let ((one, one_cpu), (many, many_cpu)) = runtime.block_on(async {
            let mark = CpuMark::now(server.pid())?;
            let one = push_for(&server.url, one_user, secs).await?;
            let one_cpu = mark.used()?;
            let mark = CpuMark::now(server.pid())?;
            let many = push_for(&server.url, many_users, secs).await?;
            Ok::<_, anyhow::Error>(((one, one_cpu), (many, mark.used()?)))
        })?;
        println!("  {label}:");
        println!(
            "    1 user:    {one:>8.0} pushes/s  {}",
            cpu_line(&one_cpu, one)
        );
        println!(
            "    16 users:  {many:>8.0} pushes/s  {}",
            cpu_line(&many_cpu, many)
        );
        // However the writes are ordered, the machine cannot do more pushes per second than its cores
        // divided by the CPU one push takes; that bounds the ratio, whatever the locks allow.
        let cores = bench_cpu::cores() as f64;
        let ceiling = cores * 1e6 / many_cpu.micros_per(many * many_cpu.wall.as_secs_f64());
        println!(
            "    ratio:     {:.1}x of 1 user (goal >= 5x on PostgreSQL, where writes of different users never wait for each other; SQLite has one writer)",
            many / one
        );
        println!(
            "    ceiling:   {ceiling:>8.0} pushes/s = {cores:.0} cores / the CPU of one 16-user push ({:.1}x of 1 user); 5x would need {:.0} us of CPU per push",
            ceiling / one,
            cores * 1e6 / (5.0 * one)
        );
    }
    Ok(())
}

/// How busy the machine was while `rate` pushes/s ran, and what one push cost whom.
fn cpu_line(cpu: &bench_cpu::CpuUse, rate: f64) -> String {
    cpu_split(cpu, rate * cpu.wall.as_secs_f64(), "push", 0)
}

/// How busy the machine was over `ops` operations (`unit`s), and what one cost whom, in microseconds with
/// `decimals` decimals.
fn cpu_split(cpu: &bench_cpu::CpuUse, ops: f64, unit: &str, decimals: usize) -> String {
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / ops.max(1.0);
    format!(
        "{:.2} of {} cores busy; CPU per {unit} {:.decimals$} us (server {:.decimals$}, bench client {:.decimals$}, rest {:.decimals$})",
        cpu.busy_cores(),
        bench_cpu::cores(),
        cpu.micros_per(ops),
        per(cpu.server),
        per(cpu.bench),
        per(cpu.rest()),
    )
}

/// Pushes 10-record batches of new records for `secs` seconds, one pusher per token, all at once; pushes/s.
async fn push_for(url: &str, tokens: Vec<String>, secs: f64) -> Result<f64> {
    let client = reqwest::Client::new();
    let until = Instant::now() + std::time::Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in tokens {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut pushes = 0u64;
            while Instant::now() < until {
                let records: Vec<String> = {
                    let mut rng = rand::rng();
                    (0..SMALL_PUSH_RECORDS)
                        .map(|_| record(&mut rng).1)
                        .collect()
                };
                let body = format!(
                    r#"{{"lastPulledAt":0,"changes":{{"tasks":{{"created":[{}],"updated":[],"deleted":[]}}}}}}"#,
                    records.join(",")
                );
                let response = client
                    .post(format!("{url}/v1/sync/push"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!(
                        "push failed: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                pushes += 1;
            }
            Ok::<_, anyhow::Error>(pushes)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Pulls opened by the stalled-reader measurement (also the bench server's `max_pulls_per_user`).
const STALLED_PULLS: usize = 32;
/// The bench server's `write_timeout_secs`: how long a stalled pull is kept before it is cut off.
const STALL_TIMEOUT_SECS: u64 = 5;

/// What stalled pulls cost the server: RSS before, while `STALLED_PULLS` clients that asked for everything
/// read nothing, and after the server cut them off.
struct Stalled {
    before_kb: u64,
    during_kb: u64,
    after_kb: u64,
    cut_off: usize,
}

impl Stalled {
    fn print(&self) {
        let per_pull = self.during_kb.saturating_sub(self.before_kb) as f64 / STALLED_PULLS as f64;
        println!(
            "  stalled pulls ({STALLED_PULLS} clients read nothing of a full pull): {:>6.0} KiB of RSS each  (goal <= 1024 KiB); RSS {:.1} -> {:.1} MB",
            per_pull,
            self.before_kb as f64 / 1024.0,
            self.during_kb as f64 / 1024.0,
        );
        println!(
            "  after write_timeout_secs = {STALL_TIMEOUT_SECS}: {}/{STALLED_PULLS} cut off by the server, RSS {:.1} MB",
            self.cut_off,
            self.after_kb as f64 / 1024.0
        );
    }
}

/// Opens `STALLED_PULLS` full pulls from sockets with a small receive buffer, reads nothing, and measures the
/// server's RSS while they stall and after the server gives up on them.
async fn stalled_pulls(server: &ServerProcess, token: &str) -> Result<Stalled> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    eprintln!("stalling {STALLED_PULLS} full pulls ...");
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .context("server address")?;
    let before_kb = server.status_kb("VmRSS:")?;
    let request = format!(
        "POST /v1/sync/pull HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let mut streams = Vec::new();
    for _ in 0..STALLED_PULLS {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut stream = socket.connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        streams.push(stream);
    }
    // Let every pull fill what it may buffer before it blocks.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let during_kb = server.status_kb("VmRSS:")?;
    tokio::time::sleep(std::time::Duration::from_secs(STALL_TIMEOUT_SECS + 2)).await;
    let after_kb = server.status_kb("VmRSS:")?;
    // A cut-off stream drains what the kernel still held, then ends.
    let mut cut_off = 0;
    let mut sink = vec![0u8; 256 * 1024];
    for mut stream in streams {
        let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        if drained.await.is_ok() {
            cut_off += 1;
        }
    }
    Ok(Stalled {
        before_kb,
        during_kb,
        after_kb,
        cut_off,
    })
}

/// The table a SQLite ceiling writes into.
#[derive(Clone, Copy)]
enum Layout {
    /// A plain `(id PRIMARY KEY, data)` table: the ceiling the push is read against.
    Plain,
    /// The store's own `records` table with its indexes, from its first migration: one user, one table,
    /// each record given the next sequence, inserted as a push inserts new records.
    Store,
}

/// Upserts the records into `layout` with the store's writer settings and `synchronous` (`FULL` or
/// `NORMAL`), one statement per record, `batch` records per transaction.
fn sqlite_ceiling(
    path: &Path,
    records: &[(String, String)],
    batch: usize,
    layout: Layout,
    synchronous: &str,
) -> Result<(f64, std::time::Duration)> {
    settle_disk();
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "page_size", 8192)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "cache_size", -80_000)?;
    conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    let insert = match layout {
        Layout::Plain => {
            conn.execute_batch("CREATE TABLE records (id TEXT PRIMARY KEY, data TEXT NOT NULL)")?;
            "INSERT INTO records (id, data) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET data = excluded.data"
        }
        Layout::Store => {
            conn.execute_batch(include_str!(
                "../../syncline-store/migrations/sqlite/0001_initial.sql"
            ))?;
            "INSERT INTO records (seq, uid, tid, id, deleted_at, data) VALUES (?3, 1, 1, ?1, NULL, ?2)
             ON CONFLICT (uid, tid, id) DO NOTHING"
        }
    };
    let started = Instant::now();
    // Nothing else runs in this process yet: its CPU time is the loop's.
    let cpu = crate::bench_cpu::process_cpu(std::process::id())?;
    let mut seq = 1i64;
    for chunk in records.chunks(batch.max(1)) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(insert)?;
            for (id, json) in chunk {
                match layout {
                    Layout::Plain => stmt.execute([id, json])?,
                    Layout::Store => {
                        seq += 1;
                        stmt.execute(rusqlite::params![id, json, seq])?
                    }
                };
            }
        }
        tx.commit()?;
    }
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    let cpu = crate::bench_cpu::process_cpu(std::process::id())?.saturating_sub(cpu);
    drop(conn);
    remove_database(path);
    Ok((rate, cpu))
}

/// Removes a measured database and its WAL: its pages are dropped from the page cache instead of being written
/// back to the disk while later sections run.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// Writes back every dirty page of the machine before a timed section, so that no section pays for the
/// write-back of an earlier one.
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// Upserts the records into a plain `(id PRIMARY KEY, data)` table with array `unnest`, one statement and
/// one transaction per batch: the fastest plain path measured on these machines.
fn postgres_ceiling(url: &str, records: &[(String, String)], batch: usize) -> Result<f64> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    client.batch_execute("CREATE TABLE ceiling (id text PRIMARY KEY, data text NOT NULL)")?;
    let started = Instant::now();
    for chunk in records.chunks(batch.max(1)) {
        let ids: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
        let data: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
        client.execute(
            "INSERT INTO ceiling (id, data) SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            &[&ids, &data],
        )?;
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

async fn push_all(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Vec<String>,
    concurrency: usize,
) -> Result<()> {
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(bodies.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, queue, url, token) = (
            client.clone(),
            queue.clone(),
            url.to_string(),
            token.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(body) = queue.lock().await.next() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let response = client
                    .post(format!("{url}/v1/sync/push"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!(
                        "push failed: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The server under test, as a child process (so its peak RSS is its own).
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) url: String,
}

impl ServerProcess {
    pub(crate) fn spawn(config: &Path) -> Result<ServerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let Some(line) = lines.next() else {
                bail!("the server exited before listening")
            };
            if let Some(url) = line?.strip_prefix("Syncline listening on ") {
                break url.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess { child, url })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn peak_rss_kb(&self) -> Result<u64> {
        self.status_kb("VmHWM:")
    }

    /// A `kB` field of the server's `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`).
    fn status_kb(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmHWM value")?
            .parse()?)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
