//! Live notifications: "new changes are available" (and, later, import progress) for each user, delivered
//! over Server-Sent Events at `GET /v1/events`.
//!
//! On SQLite (one process) events go through the in-process fan-out (`fanout.rs`: a small channel per user
//! with a stream open, so an idle stream costs little and a change wakes only its user's streams). On
//! PostgreSQL they go through `NOTIFY syncline_events` and every instance `LISTEN`s and relays what it hears
//! to its own fan-out, so a client connected to any instance hears about a push that reached another one. An event is a hint to pull, never data: a missed one costs a delay until
//! the next periodic pull, nothing more.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::Stream;
use postgres::fallible_iterator::FallibleIterator;
use serde::{Deserialize, Serialize};

use crate::app::{AppState, User};
use crate::fanout::{Hub, Next};

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
    /// This instance's open streams. [`Events::close`] ends them, so a graceful shutdown does not wait on
    /// them.
    local: Arc<Hub>,
    /// PostgreSQL: the connection `NOTIFY` goes through (events come back through the listener).
    notify: Option<Mutex<postgres::Client>>,
    url: Option<String>,
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
        let local = Hub::new();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Ok(Arc::new(Events {
                local,
                notify: None,
                url: None,
            }));
        }
        let client = postgres::Client::connect(url, postgres::NoTls)
            .map_err(|e| crate::ServerError::Config(format!("events connection: {e}")))?;
        let events = Arc::new(Events {
            local,
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
                                    events.local.send(event);
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
            None => self.local.send(event),
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

    /// Ends every open event stream (the server is stopping).
    pub fn close(&self) {
        self.local.close();
    }
}

/// `GET /v1/events`: the caller's events as Server-Sent Events (admins get everyone's), with keep-alives.
/// A stream holds its subscription and a shared pulse, nothing else: no timer, no buffer of its own.
pub async fn stream(
    State(state): State<AppState>,
    User(user): User,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let subscription = state.events.local.subscribe(&user.user, user.admin);
    let ready = SseEvent::default()
        .event("ready")
        .data(format!("{{\"user\":{}}}", serde_json::json!(user.user)));
    let updates = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let out = match subscription.next().await {
            Next::Event(e) => SseEvent::default().event(&e.kind).data(&e.data),
            // Fell behind: tell the client to pull, which catches up on everything.
            Next::Lagged => SseEvent::default().event("changes").data("{}"),
            Next::KeepAlive => SseEvent::default().comment("keep-alive"),
            Next::Closed => return None,
        };
        Some((Ok(out), subscription))
    });
    use futures_util::StreamExt;
    Sse::new(futures_util::stream::iter([Ok(ready)]).chain(updates))
}
