//! `syncline bench-client`: the client SDK's throughput, end to end, against a real server process. One
//! client writes N records locally (into its outbox), then a `syncline sync` process pushes them; a fresh
//! second client (another `syncline sync` process, on an empty database) pulls and applies them all. Each
//! client runs in its own process, so its peak RSS is its own. The same push in individual mode (one
//! request per operation) on a smaller N is the baseline, and a batch-size sweep shows where the default
//! comes from. A benchmark, not a test: it prints figures and the goals they are read against.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use syncline_client::{Client, ClientConfig, Columns, DEFAULT_BATCH_SIZE};

use crate::bench::{SECRET, ServerProcess, record};

#[derive(clap::Args)]
pub struct BenchClientArgs {
    /// Records written, pushed and pulled.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Records for the individual-mode baseline (one request each).
    #[arg(long, default_value_t = 3_000)]
    individual_records: usize,
    /// Operations per push request.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch: usize,
    /// Changes per pull page.
    #[arg(long, default_value_t = 50_000)]
    page: u32,
    /// Records per run of the batch-size sweep (0: no sweep).
    #[arg(long, default_value_t = 100_000)]
    sweep_records: usize,
    /// Where the databases go (default: a fresh directory under the current one, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    live: crate::bench_live::ClientLatencyArgs,
}

/// What `syncline sync --json` prints.
#[derive(Debug, Deserialize)]
struct SyncFigures {
    pushed: u64,
    pulled: u64,
    push_requests: u64,
    push_ms: u64,
    pull_ms: u64,
    duration_ms: u64,
    peak_rss_kb: u64,
}

pub fn run(args: BenchClientArgs) -> Result<()> {
    let own_dir = args.dir.is_none();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("syncline-bench-client-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&args, &dir);
    if own_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Writes `n` demo task records into a fresh client database at `path`; returns records/s.
fn write_local(path: &Path, n: usize) -> Result<(f64, usize)> {
    let client = Client::open(path, ClientConfig::new("", ""))?;
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut bytes = 0;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(50_000);
        let rows: Vec<Columns> = (0..chunk)
            .map(|_| {
                let (_, json) = record(&mut rng);
                bytes += json.len();
                serde_json::from_str(&json)
            })
            .collect::<Result<_, _>>()?;
        client.bulk_write(|tx| {
            let tasks = tx.json_table("tasks")?;
            for row in rows {
                tasks.insert(&serde_json::Value::Object(row))?;
            }
            Ok(())
        })?;
        left -= chunk;
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), bytes / n.max(1)))
}

/// Runs `syncline sync` in its own process and reads its figures.
fn sync_process(url: &str, token: &str, db: &Path, extra: &[&str]) -> Result<SyncFigures> {
    let output = Command::new(std::env::current_exe()?)
        .args(["sync", "--server", url, "--token", token, "--json", "--db"])
        .arg(db)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .context("running `syncline sync`")?;
    if !output.status.success() {
        bail!(
            "`syncline sync` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .context("no figures from `syncline sync`")?;
    Ok(serde_json::from_str(line)?)
}

fn rate(n: u64, ms: u64) -> f64 {
    n as f64 * 1000.0 / ms.max(1) as f64
}

fn run_in(args: &BenchClientArgs, dir: &Path) -> Result<()> {
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_records_per_request = 100000\n[storage]\nurl = \"sqlite://{}\"\n[auth]\njwt_secret = \"{SECRET}\"\n[sync]\nmax_pull_limit = 50000\n{}",
            dir.join("server.db").display(),
            include_str!("demo.toml")
        ),
    )?;
    let server = ServerProcess::spawn(&config)?;
    let auth = syncline_server::Authenticator::from_config(&syncline_server::AuthSection {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })?;
    let token = |user: &str| auth.mint(user, 4 * 3600, false, crate::now_secs());
    let url = server.url.clone();

    let mut sweep = Vec::new();
    if args.sweep_records > 0 {
        for size in [100usize, 1_000, 5_000, 10_000, 20_000] {
            eprintln!(
                "sweep: {} records in batches of {size} ...",
                args.sweep_records
            );
            let db = dir.join(format!("sweep{size}.db"));
            write_local(&db, args.sweep_records)?;
            let size_arg = size.to_string();
            let f = sync_process(
                &url,
                &token(&format!("sweep{size}"))?,
                &db,
                &["--batch-size", &size_arg],
            )?;
            sweep.push((size, rate(f.pushed, f.push_ms), f.push_requests));
        }
    }

    eprintln!(
        "writing {} records into client A's outbox ...",
        args.records
    );
    let a_db = dir.join("a.db");
    let (write_rate, avg) = write_local(&a_db, args.records)?;
    eprintln!("client A: pushing (a `syncline sync` process) ...");
    let user = token("bench")?;
    let batch_arg = args.batch.to_string();
    let page_arg = args.page.to_string();
    let a = sync_process(
        &url,
        &user,
        &a_db,
        &["--batch-size", &batch_arg, "--page-size", &page_arg],
    )?;
    eprintln!("client B: pulling into a fresh database ...");
    let b = sync_process(&url, &user, &dir.join("b.db"), &["--page-size", &page_arg])?;
    eprintln!(
        "individual mode: {} records, one request each ...",
        args.individual_records
    );
    let c_db = dir.join("c.db");
    write_local(&c_db, args.individual_records)?;
    let c = sync_process(&url, &token("individual")?, &c_db, &["--individual"])?;
    let server_rss = server.peak_rss_kb()? as f64 / 1024.0;
    let latency = (args.live.latency_writes > 0)
        .then(|| {
            eprintln!(
                "latency: {} writes from SDK client A to SDK client B ...",
                args.live.latency_writes
            );
            crate::bench_live::client_latency(&url, &token("live")?, dir, args.live.latency_writes)
        })
        .transpose()?;
    drop(server);

    if a.pushed != args.records as u64 || b.pulled != args.records as u64 {
        bail!(
            "client A pushed {} and client B pulled {}, expected {}",
            a.pushed,
            b.pulled,
            args.records
        );
    }
    let push = rate(a.pushed, a.push_ms);
    let pull = rate(b.pulled, b.pull_ms);
    let individual = rate(c.pushed, c.push_ms);
    println!(
        "Syncline client bench: {} records of ~{avg} bytes (demo `tasks`), batches of {}, pages of {}",
        args.records, args.batch, args.page
    );
    println!(
        "  local writes into the outbox:        {write_rate:>10.0} records/s  (one SQLite transaction per 50,000)"
    );
    println!(
        "  push from the outbox (client A):     {push:>10.0} records/s  (goal >= 100000/s; {} requests, {:.1} s)",
        a.push_requests,
        a.push_ms as f64 / 1000.0
    );
    println!(
        "  client A's own records pulled back:  {:>10.0} records/s  ({:.1} s; the whole sync took {:.1} s)",
        rate(a.pulled, a.pull_ms),
        a.pull_ms as f64 / 1000.0,
        a.duration_ms as f64 / 1000.0
    );
    println!(
        "  fresh-device pull and apply (B):     {pull:>10.0} records/s  (goal >= 150000/s; {:.1} s)",
        b.pull_ms as f64 / 1000.0
    );
    println!(
        "  client peak RSS:                     {:>7.1} MB (A) {:>7.1} MB (B)  (goal <= 250 MB each)",
        a.peak_rss_kb as f64 / 1024.0,
        b.peak_rss_kb as f64 / 1024.0
    );
    println!(
        "  individual mode ({} records):      {individual:>10.0} records/s  (batched is {:.0}x; goal >= 50x)",
        args.individual_records,
        push / individual
    );
    println!("  server peak RSS:                     {server_rss:>7.1} MB");
    if let Some(samples) = &latency {
        crate::bench_live::print_client_latency(samples);
    }
    if !sweep.is_empty() {
        println!(
            "  batch-size sweep, {} records each (push records/s, requests):",
            args.sweep_records
        );
        for (size, r, requests) in sweep {
            println!("    {size:>6} per request: {r:>10.0} records/s  ({requests} requests)");
        }
    }
    Ok(())
}
