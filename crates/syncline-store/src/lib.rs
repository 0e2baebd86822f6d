//! Syncline's storage layer: the [`Store`] trait every backend implements, the embedded SQLite backend and
//! the PostgreSQL backend. [`open`] picks one from a storage url.
//!
//! A store keeps, per user, the current version of every record (or its tombstone) stamped with a global
//! change sequence that follows commit order. It never decides protocol questions (what a valid record is,
//! what a push may contain): the core crate does, and hands the store validated [`WriteBatch`]es.
//!
//! Stores are synchronous; the server calls them from blocking threads.
//!
//! Each job is written once and the backends supply only what differs: `apply` (record writes) and `pull`
//! drive the sync half; `activity` and `imports` implement [`ActivityStore`] and [`ImportStore`] for every
//! backend over `sql` (a connection seam, typed parameters and rows, and each backend's statement text);
//! `sqlite/` and `postgres/` hold connections, transactions, migrations and SQL.

mod activity;
mod apply;
mod imports;
mod notify;
mod postgres;
mod pull;
mod sql;
mod sqlite;
mod sync;
mod write;

use syncline_core::{ImportPhase, ImportState, PullRequest, WriteBatch};

pub use notify::{Deliver, Notifier, notifier};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(String),
    #[error("the reader went away before the response was complete")]
    Aborted,
    #[error("the idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// Every database connection of this instance stayed in use for the whole acquire timeout.
    #[error("every database connection is in use")]
    Busy,
    /// The database cannot be reached (restarting, shut down, or the connection dropped).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("unsupported storage url `{0}`: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("could not prepare the database: {0}")]
    Setup(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        // Another connection (a backup tool, a second process) held the write lock for the whole busy
        // timeout: the same answer as a pool with no free connection.
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Where pull output goes: chunks of JSON text, in order. An error stops the pull.
pub trait PullSink {
    fn write(&mut self, chunk: Vec<u8>) -> Result<(), StoreError>;

    /// The answer's last chunk: nothing is written after it. By default one more [`PullSink::write`]; a sink
    /// may hold it back until its caller has done what must happen before the answer is complete.
    fn finish(&mut self, chunk: Vec<u8>) -> Result<(), StoreError> {
        self.write(chunk)
    }
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

/// A storage backend: every job's half. Implemented for every type that implements all three.
pub trait Store: SyncStore + ImportStore + ActivityStore {}

impl<T: SyncStore + ImportStore + ActivityStore + ?Sized> Store for T {}

/// The sync half: pulls, writes (push and bulk), tombstone collection, per-user counts.
pub trait SyncStore: Send + Sync + 'static {
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
    ) -> Result<WriteOutcome, StoreError> {
        self.write_counted(user, batch, idempotency, now_ms, respond, None)
    }

    /// [`SyncStore::write`] that also counts the request for the dashboard (as
    /// [`ActivityStore::record_sync`] would) when the batch is applied, inside the write's own transaction,
    /// so a push commits once. `activity.records` is replaced by what the write applied (upserted and
    /// deleted). A replayed or conflicting write counts nothing: its caller records that itself.
    fn write_counted(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        idempotency: Option<&IdempotencyKey>,
        now_ms: i64,
        respond: &dyn Fn(&WriteSummary) -> String,
        activity: Option<&SyncActivity<'_>>,
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
}

/// The import half: import states, batches with their checkpoint and lease, leases, credentials. The
/// importer sees only this.
pub trait ImportStore: Send + Sync + 'static {
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
    /// restarted or reset since the step loaded it). Otherwise the lease is renewed, and the batch counted for
    /// the dashboard (what the walk wrote so far, its rows in their time bucket), in the same transaction.
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

    /// Every user's import states, whatever their status (the admin overview), by user, source and stream.
    fn all_import_states(&self) -> Result<Vec<(String, ImportState)>, StoreError>;

    /// Registers the hook told of every import state saved from now on (by `save_import_state`, and by
    /// `write_import` when it applied its batch), after the state committed. One hook per store; a second
    /// call replaces nothing and returns `false`.
    fn observe_imports(&self, observer: std::sync::Arc<dyn ImportObserver>) -> bool;
}

/// Told of import states as they are saved (the server announces them as live events). Called on the
/// saving thread after the commit; must not block for long and cannot fail the import.
pub trait ImportObserver: Send + Sync {
    fn state_saved(&self, user: &str, state: &ImportState);
}

/// The hook a backend holds for [`ImportStore::observe_imports`].
#[derive(Default)]
pub(crate) struct ImportHook(std::sync::OnceLock<std::sync::Arc<dyn ImportObserver>>);

impl ImportHook {
    pub(crate) fn set(&self, observer: std::sync::Arc<dyn ImportObserver>) -> bool {
        self.0.set(observer).is_ok()
    }

    pub(crate) fn saved(&self, user: &str, state: &ImportState) {
        if let Some(observer) = self.0.get() {
            observer.state_saved(user, state);
        }
    }
}

/// The activity half: what the dashboard shows about each user's syncs and imports.
pub trait ActivityStore: Send + Sync + 'static {
    /// Counts one pull or push for the dashboard: the user's and the device's last contact, the request's
    /// records in their time bucket, rejections. A handful of upserts in one transaction, whatever the size
    /// of the request.
    fn record_sync(&self, user: &str, activity: &SyncActivity<'_>) -> Result<(), StoreError> {
        self.record_syncs(&[(user, *activity)])
    }

    /// Counts many pulls and pushes, of any users, in one transaction whose commit does not wait for the
    /// disk: a few upserts per entry. Rows are taken in (user, device, time bucket) order whatever the order
    /// of `batch`, as every counting transaction takes them, so two never deadlock.
    fn record_syncs(&self, batch: &[(&str, SyncActivity<'_>)]) -> Result<(), StoreError>;

    /// Sync activity of one user (`Some`; empty when the user never synced or imported) or of the `limit`
    /// most recently active users (`None`), most recent first.
    fn user_activity(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserActivity>, StoreError>;

    /// Records pushed, pulled and imported per time bucket from `since_ms` on, oldest first: one user's, or
    /// everyone's added up.
    fn activity_series(
        &self,
        user: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError>;

    /// Forgets activity buckets older than `before_ms`; how many went.
    fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// Opens the store a url names: `sqlite://PATH` (embedded) or `postgres://…` / `postgresql://…`, with the
/// default [`StoreOptions`].
pub fn open(
    url: &str,
    schema: std::sync::Arc<syncline_core::Schema>,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_with(url, schema, &StoreOptions::default())
}

/// Opens the store a url names with `options`.
pub fn open_with(
    url: &str,
    schema: std::sync::Arc<syncline_core::Schema>,
    options: &StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_at(&url.parse()?, schema, options)
}

/// Opens the store at a parsed url with `options`.
pub fn open_at(
    url: &StorageUrl,
    schema: std::sync::Arc<syncline_core::Schema>,
    options: &StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match url {
        StorageUrl::Postgres(config) => std::sync::Arc::new(PostgresStore::open_config(
            (**config).clone(),
            schema,
            options,
        )?),
        StorageUrl::Sqlite(path) => {
            std::sync::Arc::new(SqliteStore::open_with(path, schema, options)?)
        }
    })
}

/// Where the store lives, parsed once from the configured url: `sqlite://PATH` (or `sqlite:PATH`), or
/// `postgres://…` / `postgresql://…` (any connection string the PostgreSQL client accepts).
#[derive(Debug, Clone)]
pub enum StorageUrl {
    Sqlite(std::path::PathBuf),
    Postgres(Box<::postgres::Config>),
}

impl std::str::FromStr for StorageUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<StorageUrl, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let config = url
                .parse()
                .map_err(|e| StoreError::Setup(format!("invalid PostgreSQL url: {e}")))?;
            return Ok(StorageUrl::Postgres(Box::new(config)));
        }
        match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some(path) if !path.is_empty() => Ok(StorageUrl::Sqlite(path.into())),
            _ => Err(StoreError::UnsupportedUrl(url.to_string())),
        }
    }
}

/// How a store uses its database. Each backend reads the fields that concern it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// PostgreSQL: the most connections this instance holds open at once.
    pub max_connections: u32,
    /// How long a request waits for a free connection (PostgreSQL) or for the database's write lock held by
    /// another process (SQLite) before it fails with [`StoreError::Busy`].
    pub acquire_timeout: std::time::Duration,
    /// SQLite: how hard a commit waits for the disk.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(5),
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }
}

/// SQLite's `synchronous` setting for its WAL journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Every commit reaches the disk before it is acknowledged: an acknowledged write survives power loss
    /// and OS crashes.
    #[default]
    Full,
    /// Commits reach the disk at WAL checkpoints: survives a crash of the process, but the last
    /// acknowledged transactions may be lost on power loss or an OS crash. Faster for small writes.
    Normal,
}

impl SqliteSynchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Normal => "NORMAL",
        }
    }
}

/// Width of the time buckets sync and import activity is counted in.
pub const ACTIVITY_BUCKET_MS: i64 = 60_000;

/// The bucket a time falls in.
pub fn activity_bucket(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(ACTIVITY_BUCKET_MS)
}

/// Which sync route a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    Pull,
    /// Push and bulk.
    Push,
}

/// One pull or push as the dashboard counts it, or several pulls of one device in one time bucket added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncActivity<'a> {
    pub kind: SyncKind,
    /// When it happened (the latest of them, for pulls added up).
    pub at_ms: i64,
    /// How many requests this counts: 1, or more for pulls added up.
    pub requests: u64,
    /// The `Syncline-Device` the client sent, if any.
    pub device: Option<&'a str>,
    /// The `Syncline-Outbox-Pending` count the client sent, if any (the latest one sent, for pulls added
    /// up). A device's count moves only with a report at least as recent as its last contact.
    pub outbox_pending: Option<u64>,
    /// Records (and deletions) pulled, or applied by the push.
    pub records: u64,
    /// Records refused as invalid.
    pub rejected: u64,
    /// Records that conflicted (the push was refused with 409).
    pub conflicts: u64,
    /// What a person should read about the rejection, when there was one.
    pub rejection: Option<&'a str>,
}

/// One applied import batch as the dashboard counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImportActivity<'a> {
    pub source: &'a str,
    pub stream: &'a str,
    pub phase: ImportPhase,
    /// When the walk the batch belongs to started: a new walk starts its counts from zero.
    pub walk_started_at: i64,
    pub at_ms: i64,
    pub upserted: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

impl<'a> ImportActivity<'a> {
    /// The batch `write_import` applied for `state` at `now_ms`, with what it did per table.
    pub(crate) fn of_batch(
        state: &'a ImportState,
        counts: &std::collections::BTreeMap<String, syncline_core::TableCounts>,
        now_ms: i64,
    ) -> ImportActivity<'a> {
        let mut activity = ImportActivity {
            source: &state.source,
            stream: &state.stream,
            phase: state.phase,
            walk_started_at: state.started_at.unwrap_or(now_ms),
            at_ms: now_ms,
            upserted: 0,
            unchanged: 0,
            deleted: 0,
        };
        for c in counts.values() {
            activity.upserted += c.upserted;
            activity.unchanged += c.unchanged;
            activity.deleted += c.deleted;
        }
        activity
    }
}

/// What a user's devices and imports did, for the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserActivity {
    pub user: String,
    pub last_pull_at: Option<i64>,
    pub last_push_at: Option<i64>,
    pub pulls: u64,
    pub pushes: u64,
    pub records_pulled: u64,
    pub records_pushed: u64,
    pub rejected: u64,
    pub conflicts: u64,
    pub last_rejection: Option<String>,
    pub last_rejection_at: Option<i64>,
    /// Most recently seen first.
    pub devices: Vec<DeviceActivity>,
    /// By source, stream and phase.
    pub imports: Vec<ImportOutcome>,
}

/// One device's last contact, as its `Syncline-Device` header named it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceActivity {
    pub device: String,
    pub last_seen_at: i64,
    pub last_pull_at: Option<i64>,
    pub last_push_at: Option<i64>,
    pub outbox_pending: Option<u64>,
}

/// What the latest walk of one import stream wrote so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportOutcome {
    pub source: String,
    pub stream: String,
    pub phase: ImportPhase,
    pub walk_started_at: i64,
    pub last_batch_at: i64,
    pub batches: u64,
    /// Rows new or changed.
    pub upserted: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

/// Records moved in one time bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActivityBucket {
    /// The bucket's start, epoch ms.
    pub at: i64,
    pub pushed: u64,
    pub pulled: u64,
    pub imported: u64,
}
