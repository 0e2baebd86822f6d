//! Live notifications: "new changes are available" (and import progress) for each user, delivered over
//! Server-Sent Events at `GET /v1/events`.
//!
//! Every instance delivers events to its own open streams through the in-process fan-out (`fanout.rs`: a
//! small channel per user with a stream open, so an idle stream costs little and a change wakes only its
//! user's streams). On PostgreSQL, events travel between instances through the store's notifier
//! (`syncline_store::Notifier`: `NOTIFY`/`LISTEN`, which this module never sees), and every instance relays
//! what it hears to its own fan-out, so a client connected to any instance hears about a push that reached
//! another one. An event is a hint to pull, never data: a missed one costs a delay until the next pull,
//! nothing more.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use syncline_store::{Notifier, StorageUrl};

use crate::app::{AppState, User};
use crate::fanout::Hub;

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
        let local = Hub::new();
        let relay = local.clone();
        let notifier = syncline_store::notifier(
            url,
            Box::new(move |payload| {
                if let Ok(event) = serde_json::from_str::<Event>(payload) {
                    relay.send(&event);
                }
            }),
        )?;
        Ok(Arc::new(Events { local, notifier }))
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
            None => self.local.send(&event),
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
/// A stream holds its subscription, nothing else: no timer, no buffer of its own; each frame it sends is
/// the one shared by every listener of that event.
pub async fn stream(State(state): State<AppState>, User(user): User) -> Response {
    let subscription = state.events.local.subscribe(&user.user, user.admin);
    let ready = crate::fanout::frame(
        "ready",
        &serde_json::json!({ "user": user.user }).to_string(),
    );
    let updates = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let frame = subscription.next().await?;
        Some((Ok::<_, Infallible>(frame), subscription))
    });
    let body = Body::from_stream(futures_util::stream::iter([Ok(ready)]).chain(updates));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
