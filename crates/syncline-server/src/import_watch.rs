//! The server's hook on the store's import half: when an import state is saved (on its own, or with a
//! batch), it publishes an `import` event with the state, for live progress on the dashboard. The store
//! itself counts each batch's rows for the activity charts, in the batch's transaction.
//!
//! It decides nothing about imports and never fails one.

use std::sync::Arc;

use syncline_core::ImportState;
use syncline_store::ImportObserver;

use crate::events::{Event, Events};

/// Announces saved import states as events.
pub(crate) struct ImportAnnouncer {
    events: Arc<Events>,
}

impl ImportAnnouncer {
    pub(crate) fn new(events: Arc<Events>) -> ImportAnnouncer {
        ImportAnnouncer { events }
    }
}

impl ImportObserver for ImportAnnouncer {
    /// Publishes the state with its user (admins hear about everyone's imports).
    fn state_saved(&self, user: &str, state: &ImportState) {
        let mut data = serde_json::to_value(state).unwrap_or_default();
        data["user"] = serde_json::Value::from(user);
        self.events.publish(Event {
            user: user.to_string(),
            kind: "import".into(),
            data: data.to_string(),
        });
    }
}
