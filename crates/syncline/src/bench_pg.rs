//! Where `syncline bench` gets its PostgreSQL: a cluster the operator names (`--postgres-url`), where it
//! creates a fresh database per measurement and drops them at the end, or, only in a build with the
//! `bench-postgres` feature, a throwaway cluster started for the run from the test kit. The default release
//! binary carries no test-support code.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

/// A PostgreSQL cluster the benchmark may create databases in.
pub(crate) enum Cluster {
    /// Started for this run; stops when dropped (and when the process is gone).
    #[cfg(feature = "bench-postgres")]
    Throwaway(syncline_testkit::TempPostgres),
    /// The operator's: `url` names a database the benchmark may connect to and create databases from.
    Given {
        url: String,
        created: Mutex<Vec<String>>,
    },
}

/// How a throwaway cluster waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off (the 1M-record figures).
    Off,
    /// Every commit flushed before it is acknowledged, as in production (the small-push figures).
    On,
}

impl Cluster {
    /// A throwaway cluster, where the binary was built with `--features bench-postgres`.
    pub(crate) fn throwaway(durability: Durability) -> Result<Cluster> {
        #[cfg(feature = "bench-postgres")]
        {
            let durability = match durability {
                Durability::Off => syncline_testkit::Durability::Off,
                Durability::On => syncline_testkit::Durability::On,
            };
            Ok(Cluster::Throwaway(
                syncline_testkit::TempPostgres::start_with(durability),
            ))
        }
        #[cfg(not(feature = "bench-postgres"))]
        {
            let _ = durability;
            bail!(
                "this binary was built without a throwaway cluster: pass `--postgres-url postgres://…` (a role \
                 that may create databases), or build with \
                 `cargo run --release --features bench-postgres -- bench --postgres`"
            )
        }
    }

    /// The operator's cluster at `url`.
    pub(crate) fn given(url: &str) -> Result<Cluster> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("--postgres-url must be a postgres:// url, got `{url}`");
        }
        Ok(Cluster::Given {
            url: url.to_string(),
            created: Mutex::new(Vec::new()),
        })
    }

    /// Creates a fresh, empty database and returns its url.
    pub(crate) fn fresh_database(&self) -> Result<String> {
        match self {
            #[cfg(feature = "bench-postgres")]
            Cluster::Throwaway(pg) => Ok(pg.fresh_database()),
            Cluster::Given { url, created } => {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let name = format!(
                    "syncline_bench_{}_{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::SeqCst)
                );
                let mut client = connect(url)?;
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .with_context(|| format!("creating database {name} on --postgres-url"))?;
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(name.clone());
                Ok(with_database(url, &name))
            }
        }
    }

    /// The cluster's settings that decide what a commit waits for, as `name=value` pairs.
    pub(crate) fn durability_settings(&self, database_url: &str) -> Result<String> {
        let mut client = connect(database_url)?;
        let mut out = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "commit_delay",
            "commit_siblings",
        ] {
            let row = client.query_one(&format!("SHOW {name}"), &[])?;
            out.push(format!("{name}={}", row.get::<_, String>(0)));
        }
        Ok(out.join(" "))
    }
}

impl Drop for Cluster {
    // Without the `bench-postgres` feature `Given` is the only variant.
    #[allow(irrefutable_let_patterns)]
    fn drop(&mut self) {
        if let Cluster::Given { url, created } = self {
            let names = std::mem::take(created.get_mut().unwrap_or_else(|e| e.into_inner()));
            if names.is_empty() {
                return;
            }
            // The servers that used them are stopped by now; FORCE ends any session still attached.
            if let Ok(mut client) = connect(url) {
                for name in names {
                    if let Err(e) = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    {
                        eprintln!("could not drop the bench database {name}: {e}");
                    }
                }
            }
        }
    }
}

fn connect(url: &str) -> Result<postgres::Client> {
    // A `postgres::Client` runs a runtime of its own: keep it off the bench's async threads.
    postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// `url` with its password (if any) left out, for messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}/{path}")
        }
        None => url.to_string(),
    }
}

/// `url` naming database `name` instead of its own (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or_default();
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_keeps_the_host_user_and_parameters_of_the_given_url() {
        assert_eq!(
            with_database(
                "postgres://bench:pw@db.local:5433/postgres?sslmode=disable",
                "b_1"
            ),
            "postgres://bench:pw@db.local:5433/b_1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://127.0.0.1", "b_2"),
            "postgresql://127.0.0.1/b_2"
        );
        assert_eq!(
            redact("postgres://bench:secret@db.local/x"),
            "postgres://bench@db.local/x"
        );
        assert!(Cluster::given("host=db user=bench").is_err());
    }
}
