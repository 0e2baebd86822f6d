//! Live notifications between server instances, behind [`Notifier`]: the server publishes short text
//! messages and hears every instance's (its own included) without knowing how they travel. On PostgreSQL they
//! go through `NOTIFY syncline_events` and a `LISTEN`ing connection per instance; SQLite has one process, so
//! it needs no notifier.
//!
//! Publishing only queues the message: one publisher thread per instance sends whatever is queued in one
//! statement on its own connection, whose commits do not wait for the disk (they hold no data). So a write's
//! request never waits for a notification, and writes of different users never take turns on one.
//!
//! A message is a hint, never data: one lost while a connection is down costs a delay, nothing more. This
//! module must never hold a lock or a connection that a write needs.

use std::sync::{Arc, Weak};
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

/// Messages waiting for the publisher thread at most; past that, new ones are dropped (they are hints).
const QUEUE: usize = 10_000;

/// Messages the publisher sends in one statement (and one transaction) at most.
const BATCH: usize = 1_000;

struct PgNotifier {
    /// To the publisher thread, which owns the publishing connection. `publish` never waits for the
    /// database: a write's request only hands its message over.
    queue: std::sync::mpsc::SyncSender<String>,
    _alive: Arc<()>,
}

impl PgNotifier {
    fn start(config: &postgres::Config, deliver: Deliver) -> Result<PgNotifier, StoreError> {
        let publisher = publishing_connection(config)?;
        let listener = listen(config)?;
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let config2 = config.clone();
        std::thread::Builder::new()
            .name("syncline-notify".into())
            .spawn(move || run_listener(listener, config2, weak, deliver))
            .map_err(|e| StoreError::Setup(format!("notification listener thread: {e}")))?;
        let (queue, messages) = std::sync::mpsc::sync_channel(QUEUE);
        let config = config.clone();
        std::thread::Builder::new()
            .name("syncline-publish".into())
            .spawn(move || run_publisher(publisher, config, messages))
            .map_err(|e| StoreError::Setup(format!("notification publisher thread: {e}")))?;
        Ok(PgNotifier {
            queue,
            _alive: alive,
        })
    }
}

/// The publisher's connection. Its transactions write no data, only queue notifications (which PostgreSQL
/// does not keep across a crash anyway), so their commits need not wait for the disk; every data commit
/// still does.
fn publishing_connection(config: &postgres::Config) -> Result<Client, StoreError> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute("SET synchronous_commit = off")?;
    Ok(client)
}

/// Sends what the writers queued, as it comes: everything queued meanwhile goes in one statement, so any
/// number of concurrent writers cost one round trip and one commit here, and none of them waits for it.
/// Ends when the notifier is dropped (the queue closes).
fn run_publisher(
    client: Client,
    config: postgres::Config,
    messages: std::sync::mpsc::Receiver<String>,
) {
    let mut client = Some(client);
    while let Ok(first) = messages.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match messages.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = publishing_connection(&config)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "the notification publisher cannot connect yet"),
                )
                .ok();
        }
        let Some(conn) = client.as_mut() else {
            // The database is away: these hints are lost, the devices catch up at their next pull.
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Err(e) = conn.execute(
            "SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m",
            &[&CHANNEL, &batch],
        ) {
            tracing::warn!(error = %e, "could not publish events");
            client = None;
        }
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
        match self.queue.try_send(payload.to_string()) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                tracing::warn!("the notification queue is full: an event was dropped");
                Ok(())
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(StoreError::Unavailable(
                "the notification publisher has stopped".into(),
            )),
        }
    }
}
