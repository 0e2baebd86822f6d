//! Live notifications: "new changes are available" (and, later, import progress) for each user, delivered
//! over Server-Sent Events at `GET /v1/events`.
//!
//! On SQLite (one process) events go through an in-process broadcast channel. On PostgreSQL they go through
//! `NOTIFY syncline_events` and every instance `LISTEN`s, so a client connected to any instance hears about a
//! push that reached another one. An event is a hint to pull, never data: a missed one costs a delay until
//! the next periodic pull, nothing more.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use postgres::fallible_iterator::FallibleIterator;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::app::{AppState, User};

const CHANNEL: &str = "syncline_events";

/// One notification for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub user: String,
    /// `changes` (pull to get them) or `import` (an import's state moved).
    pub kind: String,
    /// JSON object text.
    pub data: String,
}

/// The event hub of one server instance.
pub struct Events {
    local: broadcast::Sender<Event>,
    /// Set when the server stops: open event streams end, so a graceful shutdown does not wait on them.
    closed: tokio::sync::watch::Sender<bool>,
    /// PostgreSQL: the connection `NOTIFY` goes through (events come back through the listener).
    notify: Option<Mutex<postgres::Client>>,
    url: Option<String>,
}

impl Drop for Events {
    fn drop(&mut self) {
        // A `postgres::Client` closes on a runtime of its own when dropped, which panics on a thread that
        // drives an async runtime: close it elsewhere.
        if let Some(client) = self.notify.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("shared", &self.notify.is_some())
            .finish()
    }
}

impl Events {
    /// Events for a store url: shared through PostgreSQL for `postgres://` urls, in-process otherwise.
    /// Call from a blocking context (it may connect to PostgreSQL).
    pub fn for_storage(url: &str) -> Result<Arc<Events>, crate::ServerError> {
        let (local, _) = broadcast::channel(1024);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Ok(Arc::new(Events {
                local,
                closed: tokio::sync::watch::Sender::new(false),
                notify: None,
                url: None,
            }));
        }
        let client = postgres::Client::connect(url, postgres::NoTls)
            .map_err(|e| crate::ServerError::Config(format!("events connection: {e}")))?;
        let events = Arc::new(Events {
            local,
            closed: tokio::sync::watch::Sender::new(false),
            notify: Some(Mutex::new(client)),
            url: Some(url.to_string()),
        });
        events.clone().spawn_listener()?;
        Ok(events)
    }

    fn spawn_listener(self: Arc<Events>) -> Result<(), crate::ServerError> {
        let url = self.url.clone().expect("only for PostgreSQL");
        let mut client = postgres::Client::connect(&url, postgres::NoTls)
            .map_err(|e| crate::ServerError::Config(format!("events listener: {e}")))?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| crate::ServerError::Config(format!("events listener: {e}")))?;
        let weak = Arc::downgrade(&self);
        std::thread::Builder::new()
            .name("syncline-events".into())
            .spawn(move || {
                loop {
                    let Some(events) = weak.upgrade() else { return };
                    let mut batch = client.notifications();
                    let mut iter = batch.timeout_iter(Duration::from_secs(1));
                    loop {
                        match iter.next() {
                            Ok(Some(n)) => {
                                if let Ok(event) = serde_json::from_str::<Event>(n.payload()) {
                                    let _ = events.local.send(event);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "events listener lost its connection");
                                drop(iter);
                                drop(batch);
                                std::thread::sleep(Duration::from_secs(1));
                                match postgres::Client::connect(&url, postgres::NoTls)
                                    .and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|_| c))
                                {
                                    Ok(c) => client = c,
                                    Err(e) => tracing::warn!(error = %e, "events listener cannot reconnect yet"),
                                }
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| crate::ServerError::Config(format!("events listener thread: {e}")))?;
        Ok(())
    }

    /// Publishes an event to every instance. Blocking on PostgreSQL: call from a blocking thread.
    pub fn publish(&self, event: Event) {
        match &self.notify {
            Some(client) => {
                let payload = serde_json::to_string(&event).expect("events serialise");
                let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]) {
                    tracing::warn!(error = %e, "could not publish an event");
                    if let Some(url) = &self.url
                        && let Ok(fresh) = postgres::Client::connect(url, postgres::NoTls)
                    {
                        *client = fresh;
                    }
                }
            }
            None => {
                let _ = self.local.send(event);
            }
        }
    }

    /// Tells every device of `user` that changes up to `sequence` are there to pull.
    pub fn changes(&self, user: &str, sequence: i64) {
        self.publish(Event {
            user: user.to_string(),
            kind: "changes".into(),
            data: format!("{{\"sequence\":{sequence}}}"),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Ends every open event stream (the server is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// `GET /v1/events`: the caller's events as Server-Sent Events (admins get everyone's), with keep-alives.
pub async fn stream(
    State(state): State<AppState>,
    User(user): User,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.events.subscribe();
    let ready = SseEvent::default()
        .event("ready")
        .data(format!("{{\"user\":{}}}", serde_json::json!(user.user)));
    let closed = state.events.closed.subscribe();
    let updates = futures_util::stream::unfold(
        (receiver, user, closed),
        |(mut receiver, user, mut closed)| async move {
            loop {
                if *closed.borrow() {
                    return None;
                }
                let received = tokio::select! {
                    _ = closed.changed() => return None,
                    received = receiver.recv() => received,
                };
                match received {
                    Ok(e) if user.admin || e.user == user.user => {
                        let out = SseEvent::default().event(e.kind).data(e.data);
                        return Some((Ok(out), (receiver, user, closed)));
                    }
                    Ok(_) => continue,
                    // Fell behind: tell the client to pull, which catches up on everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let out = SseEvent::default().event("changes").data("{}");
                        return Some((Ok(out), (receiver, user, closed)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    use futures_util::StreamExt;
    let stream = futures_util::stream::iter([Ok(ready)]).chain(updates);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
