//! Live notifications between server instances, behind [`Notifier`]: the server publishes short text
//! messages and hears every instance's (its own included) without knowing how they travel. On PostgreSQL they
//! go through `NOTIFY syncline_events` and a `LISTEN`ing connection per instance; SQLite has one process, so
//! it needs no notifier.
//!
//! A message is a hint, never data: one lost while a connection is down costs a delay, nothing more. This
//! module must never hold a lock or a connection that a write needs.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::{StorageUrl, StoreError};

/// The PostgreSQL channel every instance listens on.
const CHANNEL: &str = "syncline_events";

/// Carries short messages (at most 8000 bytes) to every instance that shares the store's database.
pub trait Notifier: Send + Sync {
    /// Sends `payload` to every instance's listener, this one's included. Blocking: call from a blocking
    /// thread.
    fn publish(&self, payload: &str) -> Result<(), StoreError>;
}

/// What hears the messages: called on the notifier's own thread, once per message.
pub type Deliver = Box<dyn Fn(&str) + Send + Sync>;

/// The notifier for the store at `url`, delivering every instance's messages to `deliver`; `None` when the
/// backend runs in one process (SQLite), where the caller fans out in memory.
pub fn notifier(
    url: &StorageUrl,
    deliver: Deliver,
) -> Result<Option<Arc<dyn Notifier>>, StoreError> {
    match url {
        StorageUrl::Sqlite(_) => Ok(None),
        StorageUrl::Postgres(config) => {
            let notifier: Arc<dyn Notifier> = Arc::new(PgNotifier::start(config, deliver)?);
            Ok(Some(notifier))
        }
    }
}

struct PgNotifier {
    config: postgres::Config,
    /// The connection `NOTIFY` goes through; `None` only while dropped or after it broke.
    client: Mutex<Option<Client>>,
    /// The listener thread runs while this is alive.
    _alive: Arc<()>,
}

impl PgNotifier {
    fn start(config: &postgres::Config, deliver: Deliver) -> Result<PgNotifier, StoreError> {
        let client = config.connect(NoTls)?;
        let listener = listen(config)?;
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let config2 = config.clone();
        std::thread::Builder::new()
            .name("syncline-notify".into())
            .spawn(move || run_listener(listener, config2, weak, deliver))
            .map_err(|e| StoreError::Setup(format!("notification listener thread: {e}")))?;
        Ok(PgNotifier {
            config: config.clone(),
            client: Mutex::new(Some(client)),
            _alive: alive,
        })
    }
}

fn listen(config: &postgres::Config) -> Result<Client, StoreError> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

/// Relays notifications until the notifier is dropped, reconnecting when the connection breaks.
fn run_listener(mut client: Client, config: postgres::Config, alive: Weak<()>, deliver: Deliver) {
    while alive.upgrade().is_some() {
        let mut notifications = client.notifications();
        let mut iter = notifications.timeout_iter(Duration::from_secs(1));
        let broken = loop {
            match iter.next() {
                Ok(Some(n)) => deliver(n.payload()),
                Ok(None) => break false,
                Err(e) => {
                    tracing::warn!(error = %e, "the notification listener lost its connection");
                    break true;
                }
            }
        };
        drop(iter);
        drop(notifications);
        if broken {
            std::thread::sleep(Duration::from_secs(1));
            match listen(&config) {
                Ok(fresh) => client = fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "the notification listener cannot reconnect yet")
                }
            }
        }
    }
}

impl Notifier for PgNotifier {
    fn publish(&self, payload: &str) -> Result<(), StoreError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.config.connect(NoTls)?);
        }
        let client = slot.as_mut().expect("just connected");
        match client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]) {
            Ok(_) => Ok(()),
            Err(e) => {
                // Reconnect on the next message.
                if let Some(old) = slot.take() {
                    close_elsewhere(old);
                }
                Err(e.into())
            }
        }
    }
}

impl Drop for PgNotifier {
    fn drop(&mut self) {
        let slot = self.client.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = slot.take() {
            close_elsewhere(client);
        }
    }
}

/// A `postgres::Client` closes on a runtime of its own when dropped, which panics on a thread that drives an
/// async runtime: close it on a plain thread.
fn close_elsewhere(client: Client) {
    let _ = std::thread::spawn(move || drop(client)).join();
}
