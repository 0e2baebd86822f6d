//! The store the import runner writes through: it forwards every call to the real store, and when an import
//! state is saved it publishes an `import` event (the state, for live progress on the dashboard). The store
//! itself counts each batch's rows for the activity charts, in the batch's transaction.
//!
//! It decides nothing about imports and never fails one.

use std::sync::Arc;

use syncline_core::{ImportState, PullRequest, WriteBatch};
use syncline_store::{
    ActivityBucket, GcStats, IdempotencyKey, Lease, LeaseHolder, PullSink, PullStats, Store,
    StoreError, SyncActivity, UserActivity, UserStats, WriteOutcome, WriteSummary,
};

use crate::events::{Event, Events};

/// The importer's view of the store.
pub(crate) struct WatchedStore {
    inner: Arc<dyn Store>,
    events: Arc<Events>,
}

impl WatchedStore {
    pub(crate) fn new(inner: Arc<dyn Store>, events: Arc<Events>) -> WatchedStore {
        WatchedStore { inner, events }
    }

    /// Publishes the state with its user (admins hear about everyone's imports).
    fn announce(&self, user: &str, state: &ImportState) {
        let mut data = serde_json::to_value(state).unwrap_or_default();
        data["user"] = serde_json::Value::from(user);
        self.events.publish(Event {
            user: user.to_string(),
            kind: "import".into(),
            data: data.to_string(),
        });
    }
}

impl Store for WatchedStore {
    fn pull(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        self.inner.pull(user, request, sink)
    }

    fn write(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.write(user, batch, idempotency, now_ms, respond)
    }

    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError> {
        self.inner
            .collect_garbage(tombstone_cutoff_ms, idempotency_cutoff_ms)
    }

    fn user_stats(&self, user: &str) -> Result<UserStats, StoreError> {
        self.inner.user_stats(user)
    }

    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError> {
        self.inner.import_states(user, source)
    }

    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        self.inner.active_imports()
    }

    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError> {
        self.inner.save_import_state(user, state)?;
        self.announce(user, state);
        Ok(())
    }

    fn write_import(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        state: &ImportState,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<Option<WriteSummary>, StoreError> {
        let written = self.inner.write_import(user, batch, state, lease, now_ms)?;
        if written.is_some() {
            self.announce(user, state);
        }
        Ok(written)
    }

    fn claim_import(
        &self,
        user: &str,
        source: &str,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner.claim_import(user, source, lease, now_ms)
    }

    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError> {
        self.inner.release_import(user, source, owner)
    }

    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        self.inner.import_lease(user, source, now_ms)
    }

    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.inner.put_connection(user, source, sealed)
    }

    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_connection(user, source)
    }

    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError> {
        self.inner.delete_connection(user, source)
    }

    fn record_sync(&self, user: &str, activity: &SyncActivity<'_>) -> Result<(), StoreError> {
        self.inner.record_sync(user, activity)
    }

    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError> {
        self.inner.user_activity(user, limit)
    }

    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        self.inner.activity_series(user, since_ms)
    }

    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError> {
        self.inner.all_import_states()
    }

    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_activity(before_ms)
    }
}
