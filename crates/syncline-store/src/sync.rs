//! The one [`SyncStore`] impl: every backend gets it from its write, pull and bookkeeping seams.

use syncline_core::{PullRequest, WriteBatch};

use crate::pull::PullSource;
use crate::sql::Backend;
use crate::write::WriteBackend;
use crate::{
    GcStats, IdempotencyKey, PullSink, PullStats, StoreError, SyncActivity, SyncStore, UserStats,
    WriteOutcome, WriteSummary,
};

impl<B: Backend + WriteBackend + PullSource> SyncStore for B {
    fn pull(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        let context = self.context();
        crate::pull::pull(self, context.schema, context.tids, user, request, sink)
    }

    fn write_counted(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
        activity: Option<&SyncActivity<'_>>,
    ) -> Result<WriteOutcome, StoreError> {
        crate::write::write(self, user, batch, idempotency, now_ms, respond, activity)
    }

    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError> {
        WriteBackend::collect_garbage(self, tombstone_cutoff_ms, idempotency_cutoff_ms)
    }

    fn user_stats(&self, user: &str) -> Result<UserStats, StoreError> {
        let context = self.context();
        Backend::snapshot(self, |c| {
            crate::activity::user_stats(c, &B::SQL, context.schema, context.tids, user)
        })
    }
}
