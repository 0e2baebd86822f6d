//! The `syncline` binary: `serve` runs the sync server, `token` mints a bearer token, `bench` measures push and
//! pull throughput against the SQLite ceiling; `sync`, `outbox` and `bench-client` drive the client SDK. Thin:
//! everything it does is a call into the library crates.

mod bench;
mod bench_client;
mod bench_cpu;
mod bench_live;
mod bench_pg;
mod bench_pull;
mod client_cli;
mod import_cli;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use syncline_core::{Clock, SystemClock};
use syncline_server::{Authenticator, Config};

#[derive(Parser)]
#[command(
    name = "syncline",
    version,
    about = "An offline-first sync engine speaking the WatermelonDB protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync server. Without --config: dev mode on ./syncline-data with a demo schema.
    Serve {
        #[arg(long, env = "SYNCLINE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a bearer token for a user.
    Token {
        #[arg(long, env = "SYNCLINE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        user: String,
        /// How long the token lives: 3600s, 90m, 24h, 30d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Give the token the admin role.
        #[arg(long)]
        admin: bool,
    },
    /// Measure push and pull throughput over HTTP and the raw SQLite ceiling, in one run.
    Bench(bench::BenchArgs),
    /// Sync a local client database with a server once, with a progress bar, and print the summary.
    Sync(client_cli::SyncArgs),
    /// Show a local client database's outbox: what waits to be pushed, what failed, what was rejected.
    Outbox(client_cli::OutboxArgs),
    /// Measure the client SDK: outbox push, fresh-device pull, peak RSS, batched vs individual mode.
    BenchClient(bench_client::BenchClientArgs),
    /// Start, follow, inspect, stop or reset an import from a third-party source, through a running server.
    Import(import_cli::ImportArgs),
}

const DEV_DIR: &str = "syncline-data";

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let fd_limit = raise_fd_limit();
    match cli.command {
        Command::Serve { config } => serve(config, fd_limit),
        Command::Token {
            config,
            user,
            ttl,
            admin,
        } => {
            let (config, _) = load(config.as_deref())?;
            let auth = Authenticator::from_config(&config.auth)?;
            println!("{}", auth.mint(&user, parse_ttl(&ttl)?, admin, now_secs())?);
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::Sync(args) => client_cli::sync(args),
        Command::Outbox(args) => client_cli::outbox(args),
        Command::BenchClient(args) => bench_client::run(args),
        Command::Import(args) => import_cli::run(args),
    }
}

/// Raises the open-file soft limit to the hard limit: every live device holds one connection (one file
/// descriptor) open on the server, and the benchmarks open thousands. Where the OS refuses, the limit
/// stays and the server still runs (README, "Many live connections"). Returns the soft limit now in force.
fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open-file limit");
            Some(limit)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// File descriptors kept free for what is not a client connection: database files, the listener, the
/// connections refused past the limit, outbound HTTPS of imports.
const RESERVED_FDS: u64 = 256;

/// Lowers `max_connections` to what the open-file limit can hold, saying so: accepting a connection the
/// process has no descriptor left for would only fail later, and a database file the store cannot open
/// would fail requests that are already in.
fn fit_connections_to(server: &mut syncline_server::ServerSection, fd_limit: Option<u64>) {
    let Some(limit) = fd_limit else { return };
    let room = limit.saturating_sub(RESERVED_FDS).max(16) as usize;
    if server.max_connections > room {
        tracing::warn!(
            configured = server.max_connections,
            open_file_limit = limit,
            max_connections = room,
            "max_connections lowered to fit the open-file limit (raise it with ulimit -Hn / LimitNOFILE)"
        );
        server.max_connections = room;
    }
}

/// Loads the configuration, or the dev-mode one (demo schema, secret kept in ./syncline-data/dev-secret).
fn load(path: Option<&Path>) -> Result<(Config, bool)> {
    if let Some(path) = path {
        return Ok((Config::load(path)?, false));
    }
    std::fs::create_dir_all(DEV_DIR).with_context(|| format!("creating {DEV_DIR}"))?;
    let secret_path = Path::new(DEV_DIR).join("dev-secret");
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) if s.trim().len() >= 16 => s.trim().to_string(),
        _ => {
            use rand::Rng;
            let s: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(40)
                .map(char::from)
                .collect();
            std::fs::write(&secret_path, &s)
                .with_context(|| format!("writing {}", secret_path.display()))?;
            s
        }
    };
    // The key that seals import credentials, kept next to the dev secret.
    let key_path = Path::new(DEV_DIR).join("imports-key");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
        _ => {
            let k = syncline_import::Sealer::generate_key();
            std::fs::write(&key_path, &k)
                .with_context(|| format!("writing {}", key_path.display()))?;
            k
        }
    };
    let text = format!(
        "[storage]\nurl = \"sqlite://./{DEV_DIR}/syncline.db\"\n[auth]\njwt_secret = \"{secret}\"\n[imports]\nencryption_key = \"{key}\"\n{}",
        include_str!("demo.toml")
    );
    Ok((Config::from_toml(&text, std::env::vars())?, true))
}

fn serve(config_path: Option<PathBuf>, fd_limit: Option<u64>) -> Result<()> {
    let (mut config, dev) = load(config_path.as_deref())?;
    fit_connections_to(&mut config.server, fd_limit);
    let auth = Authenticator::from_config(&config.auth)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = syncline_server::start(config).await?;
        let url = format!("http://{}", server.addr);
        println!("Syncline listening on {url}");
        println!("Dashboard: {url}/");
        if dev {
            let token = auth.mint("demo", 30 * 86_400, true, now_secs())?;
            println!("Dev mode: data in ./{DEV_DIR}/, demo schema (projects, tasks).");
            println!("Bearer token for user \"demo\" (admin, valid 30 days):\n\n{token}\n");
            println!(
                "Try: curl -s -X POST {url}/v1/sync/pull -H \"Authorization: Bearer <token>\" -d '{{\"lastPulledAt\":null}}'"
            );
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
        tracing::info!("shutting down");
        server.stop().await;
        Ok::<_, anyhow::Error>(())
    })
}

#[cfg(unix)]
async fn terminate() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}

fn now_secs() -> i64 {
    SystemClock.now_ms() / 1000
}

fn parse_ttl(ttl: &str) -> Result<i64> {
    let (number, unit) = ttl.split_at(ttl.find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.len()));
    let n: i64 = number
        .parse()
        .with_context(|| format!("bad --ttl `{ttl}`: use e.g. 3600s, 90m, 24h, 30d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad --ttl unit in `{ttl}`: use s, m, h or d"),
    };
    Ok(n * secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls() {
        assert_eq!(super::parse_ttl("24h").unwrap(), 86_400);
        assert_eq!(super::parse_ttl("90m").unwrap(), 5_400);
        assert_eq!(super::parse_ttl("30").unwrap(), 30);
        assert!(super::parse_ttl("1w").is_err());
        assert!(super::parse_ttl("h").is_err());
    }

    #[test]
    fn max_connections_is_lowered_to_what_the_open_file_limit_holds() {
        use super::fit_connections_to;
        use syncline_server::ServerSection;
        let mut server = ServerSection::default();
        fit_connections_to(&mut server, Some(1024));
        assert_eq!(server.max_connections, 1024 - 256);

        let mut server = ServerSection::default();
        fit_connections_to(&mut server, Some(1 << 20));
        assert_eq!(
            server.max_connections, 16_384,
            "a limit that holds it leaves it"
        );

        let mut server = ServerSection::default();
        fit_connections_to(&mut server, None);
        assert_eq!(server.max_connections, 16_384, "an unknown limit leaves it");
    }
}
