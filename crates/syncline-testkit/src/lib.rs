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
    data: PathBuf,
    options: String,
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

fn pg_ctl_start(bin: &Path, data: &Path, dir: &Path, options: &str) {
    let log = dir.join("log");
    run(
        as_postgres(
            bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-o",
                options,
                "-l",
                log.to_str().expect("utf-8 path"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        ),
        "pg_ctl start",
    );
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

/// Whether a throwaway cluster waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off: fast, for tests.
    Off,
    /// PostgreSQL's defaults: every commit is flushed before it is acknowledged, as in production.
    On,
}

impl TempPostgres {
    /// Starts a new cluster (a few seconds) that does not wait for the disk.
    pub fn start() -> TempPostgres {
        TempPostgres::start_with(Durability::Off)
    }

    /// Starts a new cluster (a few seconds).
    pub fn start_with(durability: Durability) -> TempPostgres {
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
        let speed = match durability {
            Durability::Off => " -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Durability::On => " -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
        };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1{speed} -c max_connections=200",
            dir.display()
        );
        pg_ctl_start(&bin, &data, &dir, &options);
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
            data,
            options,
            _dir: dir,
            _watchdog: watchdog,
        }
    }

    /// Stops the cluster (a fast shutdown: open connections are cut, committed data stays) and starts it
    /// again on the same port, as a database restart in production would. `down` runs while it is stopped.
    pub fn restart(&self, down: impl FnOnce()) {
        run(
            as_postgres(
                &self.bin,
                "pg_ctl",
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
            ),
            "pg_ctl stop",
        );
        down();
        pg_ctl_start(&self.bin, &self.data, &self._dir, &self.options);
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
