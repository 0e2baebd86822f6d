//! The write flow, once for every backend: a push or bulk write (idempotency lookup, apply, advance the
//! user's counter, remember the answer, count the request for the dashboard, commit) and an import batch
//! (lease check and renewal, generation check, apply, advance, checkpoint, count, commit). A backend only
//! opens a [`WriteTx`] holding whatever orders its user's writes (PostgreSQL: the user's counter row;
//! SQLite: the single writer) and supplies its SQL; the records themselves go through [`crate::apply`].

use std::collections::HashMap;

use syncline_core::{ImportState, Schema, WriteBatch};

use crate::apply::{Applied, RecordTx, apply};
use crate::{
    GcStats, IdempotencyKey, ImportActivity, ImportHook, Lease, StoreError, SyncActivity,
    WriteOutcome, WriteSummary,
};

/// A backend that opens write transactions.
pub(crate) trait WriteBackend {
    type Tx<'a>: WriteTx
    where
        Self: 'a;

    /// Opens a write transaction for `user` (creating the user on its first write) holding, until commit or
    /// drop, what makes the user's writers commit in sequence order. Returns it with the user's internal id
    /// and the user's sequence before it: its changes take the numbers after that.
    fn begin(&self, user: &str) -> Result<(Self::Tx<'_>, i64, i64), StoreError>;

    fn context(&self) -> WriteContext<'_>;

    /// Collects tombstones older than `tombstone_cutoff_ms` (raising each affected user's horizon) and
    /// idempotency answers older than `idempotency_cutoff_ms`.
    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError>;
}

/// What the flow needs of a backend besides its transactions.
pub(crate) struct WriteContext<'a> {
    pub schema: &'a Schema,
    /// Table name -> the backend's table id.
    pub tids: &'a HashMap<String, i64>,
    pub import_hook: &'a ImportHook,
}

/// One open write transaction of one user (`uid`, as [`WriteBackend::begin`] returned it). Dropping it
/// without [`WriteTx::commit`] rolls it back.
pub(crate) trait WriteTx: RecordTx {
    /// The request hash and response remembered for idempotency key `key`, if any.
    fn remembered(&mut self, uid: i64, key: &str) -> Result<Option<(Vec<u8>, String)>, StoreError>;

    /// Stores `sequence` as the user's new counter and, for a push or bulk write, `push_at` as its last push,
    /// and counts `activity` (an applied push or bulk write) for the dashboard.
    fn advance(
        &mut self,
        uid: i64,
        sequence: i64,
        push_at: Option<i64>,
        activity: Option<&SyncActivity<'_>>,
    ) -> Result<(), StoreError>;

    /// Remembers `response` for `key`.
    fn remember(
        &mut self,
        uid: i64,
        key: &IdempotencyKey,
        response: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Extends the user's import lease from `source` to `until` if `owner` holds it; whether it did.
    fn renew_lease(
        &mut self,
        uid: i64,
        source: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError>;

    /// The generation of the stored import state with `state`'s key, if there is one (locked until commit
    /// where the backend has row locks).
    fn stored_generation(
        &mut self,
        uid: i64,
        state: &ImportState,
    ) -> Result<Option<i64>, StoreError>;

    /// Saves `state` (the batch's checkpoint).
    fn save_state(&mut self, uid: i64, state: &ImportState) -> Result<(), StoreError>;

    /// Counts an applied import batch for the dashboard.
    fn count_import(&mut self, uid: i64, activity: &ImportActivity<'_>) -> Result<(), StoreError>;

    fn commit(self) -> Result<(), StoreError>;
}

/// Applies `batch` in `tx` after its start sequence.
fn apply_in<T: WriteTx>(
    tx: &mut T,
    context: &WriteContext<'_>,
    (uid, start): (i64, i64),
    now_ms: i64,
    batch: &WriteBatch<'_>,
) -> Result<Applied, StoreError> {
    apply(tx, context.schema, context.tids, uid, start, now_ms, batch)
}

/// A push or bulk write: [`crate::SyncStore::write_counted`].
pub(crate) fn write<B: WriteBackend>(
    backend: &B,
    user: &str,
    batch: &WriteBatch<'_>,
    idempotency: Option<&IdempotencyKey>,
    now_ms: i64,
    respond: &dyn Fn(&WriteSummary) -> String,
    activity: Option<&SyncActivity<'_>>,
) -> Result<WriteOutcome, StoreError> {
    let (mut tx, uid, start) = backend.begin(user)?;
    if let Some(key) = idempotency
        && let Some((hash, response)) = tx.remembered(uid, &key.key)?
    {
        return if hash == key.request_hash {
            Ok(WriteOutcome::Replayed { response })
        } else {
            Err(StoreError::IdempotencyKeyReused)
        };
    }
    let context = backend.context();
    let applied = apply_in(&mut tx, &context, (uid, start), now_ms, batch)?;
    if !applied.conflicts.is_empty() {
        return Ok(WriteOutcome::Conflict {
            conflicts: applied.conflicts,
        });
    }
    let summary = WriteSummary {
        counts: applied.counts,
        sequence: applied.sequence,
    };
    let response = respond(&summary);
    if let Some(key) = idempotency {
        tx.remember(uid, key, &response, now_ms)?;
    }
    // One commit per push: the dashboard's counters ride in the write's own transaction.
    let counted = activity.map(|a| SyncActivity {
        records: summary
            .counts
            .values()
            .map(|c| c.upserted + c.deleted)
            .sum(),
        ..*a
    });
    tx.advance(uid, summary.sequence, Some(now_ms), counted.as_ref())?;
    tx.commit()?;
    Ok(WriteOutcome::Applied { summary, response })
}

/// An import batch with its checkpoint and lease: [`crate::ImportStore::write_import`].
pub(crate) fn write_import<B: WriteBackend>(
    backend: &B,
    user: &str,
    batch: &WriteBatch<'_>,
    state: &ImportState,
    lease: Lease<'_>,
    now_ms: i64,
) -> Result<Option<WriteSummary>, StoreError> {
    let (mut tx, uid, start) = backend.begin(user)?;
    if !tx.renew_lease(uid, &state.source, lease.owner, now_ms + lease.ttl_ms)? {
        return Ok(None);
    }
    if tx
        .stored_generation(uid, state)?
        .is_some_and(|g| g != state.generation)
    {
        return Ok(None);
    }
    let context = backend.context();
    let applied = apply_in(&mut tx, &context, (uid, start), now_ms, batch)?;
    if applied.conflicts.is_empty() {
        tx.advance(uid, applied.sequence, None, None)?;
    }
    tx.save_state(uid, state)?;
    if !batch.tables.is_empty() {
        tx.count_import(
            uid,
            &ImportActivity::of_batch(state, &applied.counts, now_ms),
        )?;
    }
    tx.commit()?;
    context.import_hook.saved(user, state);
    Ok(Some(WriteSummary {
        counts: applied.counts,
        sequence: applied.sequence,
    }))
}
