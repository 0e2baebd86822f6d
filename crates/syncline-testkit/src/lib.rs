//! Dev-only test support: a throwaway PostgreSQL cluster started from Debian's `postgresql` package, and
//! (in `fake_apis` and `tls`) fake third-party APIs served over HTTPS with a throwaway CA.
//!
//! `initdb` and `pg_ctl` run as the `postgres` user, with data and socket in a temp dir and a free loopback
//! port. A watchdog process stops the cluster and removes its directory when the test process exits, however
//! it exits, so no server outlives the tests.

pub mod fake_apis;
mod tls;

pub use tls::{FakeTls, Validity, serve_https, serve_tls, tls_proxy};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TempPostgres {
    port: u16,
    bin: PathBuf,
    _dir: PathBuf,
    /// Outlives this process on purpose: it stops the cluster once the process is gone.
    _watchdog: std::process::Child,
}

fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not installed ({}: {e}); install the `postgresql` package",
                root.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL version with initdb under /usr/lib/postgresql")
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args);
    cmd
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TempPostgres {
    /// Starts a new cluster (a few seconds).
    pub fn start() -> TempPostgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("syncline-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let data = dir.join("data");
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(&dir);
        run(chown, "chown the cluster dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data_s = data.to_str().expect("utf-8 path");
        run(
            as_postgres(
                &bin,
                "initdb",
                &[
                    "-D",
                    data_s,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            ),
            "initdb",
        );
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            dir.display()
        );
        let log = dir.join("log");
        run(
            as_postgres(
                &bin,
                "pg_ctl",
                &[
                    "-D",
                    data_s,
                    "-o",
                    &options,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ),
            "pg_ctl start",
        );
        // Stop and remove the cluster once this process is gone.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; runuser -u postgres -- {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster watchdog");
        TempPostgres {
            port,
            bin,
            _dir: dir,
            _watchdog: watchdog,
        }
    }

    /// The cluster shared by every test of this process.
    pub fn shared() -> &'static TempPostgres {
        static SHARED: OnceLock<TempPostgres> = OnceLock::new();
        SHARED.get_or_init(TempPostgres::start)
    }

    /// A url for the `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a fresh, empty database and returns its url.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
        ])
        .arg(format!("CREATE DATABASE {name}"));
        run(cmd, "create a test database");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}
