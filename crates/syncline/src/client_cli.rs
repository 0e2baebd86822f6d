//! `syncline sync` and `syncline outbox`: the client SDK from the command line. `sync` runs one sync of a
//! local database with a progress bar and prints its summary; `sync --watch` keeps syncing automatically,
//! live over the server's event stream, and prints a line per sync until Ctrl-C; `outbox` shows what waits
//! to be pushed. Thin: all the work is `syncline_client`'s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use syncline_client::{
    AutoSyncPolicy, Client, ClientConfig, DEFAULT_BATCH_SIZE, OpState, Phase, PushMode,
};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// The Syncline server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SYNCLINE_SERVER")]
    server: String,
    /// A bearer token for the user whose data this is.
    #[arg(long, env = "SYNCLINE_TOKEN")]
    token: String,
    /// The local database (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Operations per push request.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Changes per pull page.
    #[arg(long, default_value_t = 50_000)]
    page_size: u32,
    /// One push request per operation (the baseline; for servers without the bulk path).
    #[arg(long)]
    individual: bool,
    /// Also print the figures as one JSON line (timings, counts, this process's peak RSS).
    #[arg(long)]
    json: bool,
    /// Keep syncing until Ctrl-C: live over the server's event stream (another device's write arrives
    /// within moments), after a periodic check, and printing a line per sync.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// With --watch: seconds between periodic syncs besides the live ones (0: none).
    #[arg(long, default_value_t = 300, requires = "watch")]
    interval: u64,
}

#[derive(clap::Args)]
pub struct OutboxArgs {
    /// The local database.
    #[arg(long)]
    db: PathBuf,
    /// List the rejected operations with their reasons.
    #[arg(long)]
    rejected: bool,
}

pub fn sync(args: SyncArgs) -> Result<()> {
    let mut config = ClientConfig::new(&args.server, &args.token);
    config.batch_size = args.batch_size;
    config.pull_page_size = args.page_size;
    if args.individual {
        config.push_mode = PushMode::Individual;
    }
    let client =
        Client::open(&args.db, config).with_context(|| format!("opening {}", args.db.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.watch {
        return runtime.block_on(watch(&client, args.interval));
    }
    let summary = runtime.block_on(async {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>5} [{bar:40}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let mut progress = client.progress();
        let watcher = {
            let bar = bar.clone();
            tokio::spawn(async move {
                while progress.changed().await.is_ok() {
                    let p = progress.borrow_and_update().clone();
                    bar.set_position((p.percentage() * 10.0) as u64);
                    bar.set_prefix(match p.phase {
                        Some(Phase::Push) => "push",
                        Some(Phase::Pull) => "pull",
                        None => "",
                    });
                    let pushed: u64 = p.tables.values().map(|t| t.pushed).sum();
                    let to_push: u64 = p.tables.values().map(|t| t.to_push).sum();
                    let pulled: u64 = p.tables.values().map(|t| t.pulled).sum();
                    bar.set_message(format!("{pushed}/{to_push} pushed, {pulled} pulled"));
                }
            })
        };
        let result = client.sync_now().await;
        watcher.abort();
        bar.finish_and_clear();
        result
    });
    let summary = summary.context("sync failed")?;
    println!("Synced: {summary}.");
    for (table, changes) in &summary.from_cloud {
        println!(
            "  {table}: {} new, {} changed, {} deleted from cloud",
            changes.created, changes.updated, changes.deleted
        );
    }
    println!(
        "  {} push request(s), {} pull request(s), {} pulled, {} ms",
        summary.push_requests, summary.pull_requests, summary.pulled, summary.duration_ms
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "pushed": summary.pushed,
                "rejected": summary.rejected,
                "pulled": summary.pulled,
                "push_requests": summary.push_requests,
                "pull_requests": summary.pull_requests,
                "push_ms": summary.push_ms,
                "pull_ms": summary.pull_ms,
                "duration_ms": summary.duration_ms,
                "peak_rss_kb": peak_rss_kb(),
            })
        );
    }
    Ok(())
}

/// `sync --watch`: automatic, live sync until Ctrl-C, one line per sync and per change of the stream.
async fn watch(client: &Client, interval: u64) -> Result<()> {
    let auto = client.start_auto_sync(AutoSyncPolicy {
        interval: (interval > 0).then(|| Duration::from_secs(interval)),
        ..AutoSyncPolicy::default()
    });
    println!(
        "Watching {} (device {}); Ctrl-C to stop.",
        client.cursor().map(|c| format!("from sequence {c}"))?,
        client.device()
    );
    let mut progress = client.progress();
    let (mut live, mut last) = (false, None);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = progress.changed() => if changed.is_err() { break },
        }
        let p = progress.borrow_and_update().clone();
        if p.live != live {
            live = p.live;
            println!(
                "{} live: {}",
                clock(),
                if live {
                    "connected to the event stream"
                } else {
                    "event stream down, reconnecting"
                }
            );
        }
        if p.state != syncline_client::SyncState::Syncing && p.last_summary != last {
            last = p.last_summary.clone();
            match (&p.last_error, &last) {
                (Some(e), _) => println!("{} sync failed: {e}", clock()),
                (None, Some(s)) => println!(
                    "{} synced: {s} ({} ms, cursor {})",
                    clock(),
                    s.duration_ms,
                    client.cursor()?
                ),
                (None, None) => {}
            }
        }
    }
    auto.stop().await;
    Ok(())
}

/// The time of day (UTC) for `--watch` lines.
fn clock() -> String {
    let ms = syncline_core::Clock::now_ms(&syncline_core::SystemClock);
    let secs = (ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms % 1000
    )
}

/// This process's peak resident set (VmHWM), in KiB; 0 where /proc is not available.
pub(crate) fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn outbox(args: OutboxArgs) -> Result<()> {
    let client = Client::open(&args.db, ClientConfig::new("", ""))
        .with_context(|| format!("opening {}", args.db.display()))?;
    let stats = client.outbox_stats()?;
    println!("Outbox of {}:", args.db.display());
    if stats.tables.is_empty() {
        println!("  empty: everything is synced");
    } else {
        println!(
            "  {:<24} {:>9} {:>9} {:>9} {:>9}",
            "table", "pending", "syncing", "failed", "rejected"
        );
        for (table, t) in &stats.tables {
            println!(
                "  {table:<24} {:>9} {:>9} {:>9} {:>9}",
                t.pending, t.syncing, t.failed, t.rejected
            );
        }
    }
    if let Some(age) = stats.oldest_pending_age_ms(crate::now_secs() * 1000) {
        println!("  oldest unsynced write: {:.1} s ago", age as f64 / 1000.0);
    }
    if let Some(error) = &stats.last_error {
        println!("  last error: {error}");
    }
    println!("  pull cursor: {}", client.cursor()?);
    if args.rejected {
        for op in client.outbox(Some(OpState::Rejected))? {
            println!(
                "  rejected {} {}/{}: {} ({})",
                op.kind,
                op.table,
                op.id,
                op.error.as_deref().unwrap_or(""),
                op.error_code.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
