//! Live notifications: "new changes are available" (and, later, import progress) for each user, delivered
//! over Server-Sent Events at `GET /v1/events`.
//!
//! On SQLite (one process) events go through an in-process broadcast channel. On PostgreSQL they go through
//! the store's notifier (`syncline_store::Notifier`: `NOTIFY`/`LISTEN`, which this module never sees), so a
//! client connected to any instance hears about a push that reached another one. An event is a hint to pull, never data: a missed one costs a delay until
//! the next periodic pull, nothing more.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use syncline_store::{Notifier, StorageUrl};
use tokio::sync::broadcast;

use crate::app::{AppState, User};

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
    /// Shared storage (PostgreSQL): events go to every instance through the store's notifier, and come
    /// back, this instance's included, into `local`.
    notifier: Option<Arc<dyn Notifier>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("shared", &self.notifier.is_some())
            .finish()
    }
}

impl Events {
    /// Events for the store at `url`: shared between instances when the store has a notifier, in-process
    /// otherwise. Call from a blocking context (it may connect to the database).
    pub fn for_storage(url: &StorageUrl) -> Result<Arc<Events>, crate::ServerError> {
        let (local, _) = broadcast::channel(1024);
        let relay = local.clone();
        let notifier = syncline_store::notifier(
            url,
            Box::new(move |payload| {
                if let Ok(event) = serde_json::from_str::<Event>(payload) {
                    let _ = relay.send(event);
                }
            }),
        )?;
        Ok(Arc::new(Events {
            local,
            closed: tokio::sync::watch::Sender::new(false),
            notifier,
        }))
    }

    /// Publishes an event to every instance. Blocking with a shared store: call from a blocking thread.
    pub fn publish(&self, event: Event) {
        match &self.notifier {
            Some(notifier) => {
                let payload = serde_json::to_string(&event).expect("events serialise");
                if let Err(e) = notifier.publish(&payload) {
                    tracing::warn!(error = %e, "could not publish an event");
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
