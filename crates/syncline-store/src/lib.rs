//! Syncline's storage layer: the [`Store`] trait every backend implements, the embedded SQLite backend and
//! the PostgreSQL backend. [`open`] picks one from a storage url.
//!
//! A store keeps, per user, the current version of every record (or its tombstone) stamped with a global
//! change sequence that follows commit order. It never decides protocol questions (what a valid record is,
//! what a push may contain): the core crate does, and hands the store validated [`WriteBatch`]es.
//!
//! Stores are synchronous; the server calls them from blocking threads.

mod apply;
mod postgres;
mod pull;
mod sqlite;

use syncline_core::{ImportState, PullRequest, WriteBatch};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(String),
    #[error("the reader went away before the response was complete")]
    Aborted,
    #[error("the idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("unsupported storage url `{0}`: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("could not prepare the database: {0}")]
    Setup(String),
}

/// Where pull output goes: chunks of JSON text, in order. An error stops the pull.
pub trait PullSink {
    fn write(&mut self, chunk: Vec<u8>) -> Result<(), StoreError>;
}

impl PullSink for Vec<u8> {
    fn write(&mut self, chunk: Vec<u8>) -> Result<(), StoreError> {
        self.extend_from_slice(&chunk);
        Ok(())
    }
}

/// What a pull sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullStats {
    pub records: u64,
    pub deleted: u64,
    pub replacement: bool,
}

/// A client's `Idempotency-Key` and a hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: [u8; 32],
}

/// What a write did, per table, before it is turned into a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Per table (schema name order): upserted, unchanged, deleted (including cascaded deletes).
    pub counts: std::collections::BTreeMap<String, syncline_core::TableCounts>,
    /// The change sequence after the write.
    pub sequence: i64,
}

/// The result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied now; `response` is the JSON body that was remembered for the idempotency key.
    Applied {
        summary: WriteSummary,
        response: String,
    },
    /// The same idempotency key and request were seen before: the first response, nothing applied.
    Replayed { response: String },
    /// Records changed on the server after the push's cursor: nothing applied. Per table, sorted ids.
    Conflict {
        conflicts: std::collections::BTreeMap<String, Vec<String>>,
    },
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub tombstones: u64,
    pub idempotency_keys: u64,
}

/// Per-user figures for the dashboard and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserStats {
    /// Per table: live records and tombstones.
    pub tables: std::collections::BTreeMap<String, TableStats>,
    pub last_push_at: Option<i64>,
    pub sequence: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    pub records: u64,
    pub tombstones: u64,
}

/// An import job's lease as its holder presents it: who holds it (an instance id) and for how long each
/// claim or renewal keeps it. A job is one user's import from one source; while a lease is live, only its
/// holder runs steps of that job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease<'a> {
    pub owner: &'a str,
    pub ttl_ms: i64,
}

/// Who holds an import job's lease, and until when (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub owner: String,
    pub until: i64,
}

/// A storage backend.
pub trait Store: Send + Sync + 'static {
    /// Streams the pull response for `user` into `sink`, from one consistent snapshot.
    fn pull(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError>;

    /// Applies `batch` for `user` in one transaction. `respond` renders the response body from the summary
    /// inside the transaction, so it is remembered atomically with the writes when `idempotency` is given.
    fn write(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
    ) -> Result<WriteOutcome, StoreError>;

    /// Removes tombstones deleted before `tombstone_cutoff_ms` (raising each user's horizon, so older cursors
    /// get a replacement pull) and idempotency keys created before `idempotency_cutoff_ms`.
    fn collect_garbage(
        &self,
        tombstone_cutoff_ms: i64,
        idempotency_cutoff_ms: i64,
    ) -> Result<GcStats, StoreError>;

    /// Counts for one user.
    fn user_stats(&self, user: &str) -> Result<UserStats, StoreError>;

    /// The user's import states, every source (or only `source`), ordered by source, stream and phase.
    fn import_states(
        &self,
        user: &str,
        source: Option<&str>,
    ) -> Result<Vec<ImportState>, StoreError>;

    /// Every user's imports that the runner should look at (pending, running or rate limited).
    fn active_imports(&self) -> Result<Vec<(String, ImportState)>, StoreError>;

    /// Saves one import state (keyed by user, source, stream and phase) as given.
    fn save_import_state(&self, user: &str, state: &ImportState) -> Result<(), StoreError>;

    /// Applies imported rows and saves `state` (their checkpoint) in one transaction, so a crash loses at
    /// most this batch and never applies it twice. Rows go through the one write path: unchanged rows move
    /// nothing. Returns `None`, applying nothing, when `lease` is no longer held by its owner (another
    /// instance took the job) or the stored state's generation is not `state`'s (the import was stopped,
    /// restarted or reset since the step loaded it). Otherwise the lease is renewed in the same transaction.
    fn write_import(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        state: &ImportState,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<Option<WriteSummary>, StoreError>;

    /// Takes or renews the lease on the user's import job from `source`: succeeds when nobody holds it, its
    /// lease expired, or `lease.owner` already holds it; the lease then lasts until `now_ms + lease.ttl_ms`.
    /// Never waits for another instance: a job whose lease row is busy counts as taken.
    fn claim_import(
        &self,
        user: &str,
        source: &str,
        lease: Lease<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back (only if `owner` holds it), so another instance may take the job at once.
    fn release_import(&self, user: &str, source: &str, owner: &str) -> Result<(), StoreError>;

    /// The live lease on the user's import job from `source`, if any.
    fn import_lease(
        &self,
        user: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<Option<LeaseHolder>, StoreError>;

    /// Stores the user's (encrypted) credential for a source, replacing any earlier one.
    fn put_connection(&self, user: &str, source: &str, sealed: &[u8]) -> Result<(), StoreError>;

    /// The user's (encrypted) credential for a source.
    fn get_connection(&self, user: &str, source: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes the user's credential for a source; whether there was one.
    fn delete_connection(&self, user: &str, source: &str) -> Result<bool, StoreError>;
}

/// The stored form of an import state: the whole state as JSON, next to its key.
pub(crate) fn state_json(state: &ImportState) -> String {
    serde_json::to_string(state).expect("import states serialise")
}

pub(crate) fn state_from_json(text: &str) -> Result<ImportState, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Setup(format!("unreadable import state: {e}")))
}

/// Opens the store a url names: `sqlite://PATH` (embedded) or `postgres://…` / `postgresql://…`.
pub fn open(
    url: &str,
    schema: std::sync::Arc<syncline_core::Schema>,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresStore::open(url, schema)?))
    } else {
        Ok(std::sync::Arc::new(SqliteStore::open_url(url, schema)?))
    }
}
