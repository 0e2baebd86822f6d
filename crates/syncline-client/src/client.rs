//! The SDK's front door: [`Client`] opens the local database and hands out typed or JSON [`Table`]s, runs
//! local transactions, syncs on demand or automatically, and reports progress and the outbox. Local reads
//! and writes are synchronous SQLite calls; syncing is async and needs a Tokio runtime.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use syncline_core::{Clock, SystemClock};
use tokio::sync::watch;

use crate::batch::RetryPolicy;
use crate::coalesce::Columns;
use crate::engine::{Shared, run_sync};
use crate::ids::{check_id, check_table, new_id};
use crate::orchestrator::{AutoSync, Triggers};
use crate::progress::{SyncProgress, SyncSummary};
use crate::schedule::{AutoSyncPolicy, Trigger};
use crate::store::{self, LocalWrite, OpState, OutboxOp, OutboxStats, WriteCtx};
use crate::{ClientError, Result};

/// How pushes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushMode {
    /// Operations grouped per table in batches of `batch_size`, several requests in flight.
    #[default]
    Batched,
    /// One request per operation (per local transaction, which is never split), one at a time: for servers
    /// without the bulk path, and as the baseline the benchmark compares with.
    Individual,
}

/// How the client talks to the server and how it batches.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub server_url: String,
    /// The bearer token (see [`Client::set_token`] to renew it).
    pub token: String,
    pub push_mode: PushMode,
    /// Operations per push request (a local transaction larger than this goes alone, never split).
    pub batch_size: usize,
    /// Push requests in flight at once.
    pub requests_in_flight: usize,
    /// Changes per pull page. A server whose `sync.max_pull_limit` is lower says so, and its limit is used.
    pub pull_page_size: u32,
    /// Pull-and-push-again rounds after `409 conflict` before the sync gives up.
    pub max_conflict_rounds: u32,
    /// Backoff of failed batches.
    pub retry: RetryPolicy,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// How this device names itself to the server (the `Syncline-Device` header, shown on the dashboard).
    /// `None`: a random id, made once and kept in the local database.
    pub device: Option<String>,
}

impl ClientConfig {
    pub fn new(server_url: impl Into<String>, token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            server_url: server_url.into(),
            token: token.into(),
            push_mode: PushMode::Batched,
            batch_size: DEFAULT_BATCH_SIZE,
            requests_in_flight: 2,
            pull_page_size: 50_000,
            max_conflict_rounds: 3,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(60),
            device: None,
        }
    }
}

/// Operations per push request by default, chosen with `syncline bench-client` (see the crate README).
pub const DEFAULT_BATCH_SIZE: usize = 20_000;

/// A local store that syncs with a Syncline server. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server_url", &self.shared.config.server_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens (or creates) the local database at `path`. Operations a crash left `syncing` go back to
    /// `pending` and will be resent with their original idempotency keys.
    pub fn open(path: impl AsRef<Path>, config: ClientConfig) -> Result<Client> {
        Client::open_with_clock(path, config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: ClientConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Client> {
        let conn = store::open(path.as_ref())?;
        let last_synced_at = store::meta_i64(&conn, "last_synced_at")?;
        let last_error = store::meta_text(&conn, "last_error")?;
        let cursor = store::cursor(&conn)?;
        let device = match (&config.device, store::meta_text(&conn, "device_id")?) {
            (Some(name), _) => name.clone(),
            (None, Some(id)) => id,
            (None, None) => {
                let id = format!("device-{}", crate::ids::new_id(&mut rand::rng()));
                store::set_meta(&conn, "device_id", &id)?;
                id
            }
        };
        let transport = crate::transport::Transport::new(
            &config.server_url,
            config.token.clone(),
            config.request_timeout,
            device,
        );
        let (progress, _) = watch::channel(SyncProgress {
            last_synced_at,
            last_error,
            ..Default::default()
        });
        let (finished, _) = watch::channel((0, None));
        Ok(Client {
            shared: Arc::new(Shared {
                db: Mutex::new(conn),
                config,
                transport,
                clock,
                progress,
                sync_lock: tokio::sync::Mutex::new(()),
                started: AtomicU64::new(0),
                finished,
                triggers: Triggers::default(),
                retry_failed_now: Default::default(),
                cursor: cursor.into(),
            }),
        })
    }

    /// A typed view of a table: records are `T`s (serde types with an `id` field).
    pub fn table<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Table<'_, T>> {
        Table::new(self, name)
    }

    /// An untyped view of a table: records are JSON objects.
    pub fn json_table(&self, name: &str) -> Result<Table<'_, Value>> {
        Table::new(self, name)
    }

    /// Runs `f` in one local transaction. Its writes apply locally at once (or not at all, if `f` fails)
    /// and travel to the server together, in one push request, never split across batches.
    pub fn transaction<R>(&self, f: impl FnOnce(&Tx<'_>) -> Result<R>) -> Result<R> {
        self.run_tx(true, f)
    }

    /// Runs `f` in one local transaction for speed (imports, backups), but lets its writes travel to the
    /// server independently, in as many batches as needed.
    pub fn bulk_write<R>(&self, f: impl FnOnce(&Tx<'_>) -> Result<R>) -> Result<R> {
        self.run_tx(false, f)
    }

    fn run_tx<R>(&self, grouped: bool, f: impl FnOnce(&Tx<'_>) -> Result<R>) -> Result<R> {
        let conn = self.shared.db.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.unchecked_transaction()?;
        let handle = Tx {
            conn: &tx,
            ctx: std::cell::RefCell::new(WriteCtx::new(self.shared.clock.now_ms(), grouped)),
        };
        let out = f(&handle)?;
        let mut ctx = handle.ctx.into_inner();
        store::finish_write(&tx, &mut ctx)?;
        tx.commit()?;
        drop(conn);
        if ctx.wrote {
            self.wrote();
        }
        Ok(out)
    }

    fn wrote(&self) {
        if self.shared.triggers.active.load(Ordering::Relaxed) {
            self.shared.triggers.fire(Trigger::LocalWrite);
        }
    }

    /// Syncs now: push the outbox, then pull. With automatic sync running, this asks the orchestrator (a
    /// sync already running is followed by one more) and waits for that sync's result.
    pub async fn sync_now(&self) -> Result<SyncSummary> {
        let triggers = &self.shared.triggers;
        if !triggers.active.load(Ordering::SeqCst) {
            return run_sync(&self.shared).await;
        }
        let mut finished = self.shared.finished.subscribe();
        let after = self.shared.started.load(Ordering::SeqCst);
        triggers.fire(Trigger::Manual);
        loop {
            if let (n, Some(result)) = &*finished.borrow_and_update()
                && *n > after
            {
                return result.clone();
            }
            finished.changed().await.map_err(|_| ClientError::Stopped)?;
        }
    }

    /// Starts syncing automatically (needs a Tokio runtime): on start, after local writes (debounced), on
    /// [`network_available`](Client::network_available), every `policy.interval`, on
    /// [`sync_now`](Client::sync_now), and, with `policy.live`, as soon as the server announces changes
    /// made elsewhere (one `GET /v1/events` stream stays open; [`SyncProgress::live`] says whether it is
    /// connected). Runs until the returned handle is stopped or dropped.
    pub fn start_auto_sync(&self, policy: AutoSyncPolicy) -> AutoSync {
        AutoSync::start(self.shared.clone(), policy)
    }

    /// Tells the client the network is back: the orchestrator syncs now, cutting short any offline backoff,
    /// and batches that failed are resent now rather than after their retry time.
    pub fn network_available(&self) {
        self.shared.retry_failed_now.store(true, Ordering::SeqCst);
        self.shared.triggers.fire(Trigger::NetworkAvailable);
    }

    /// Replaces the bearer token (after `token_expired`).
    pub fn set_token(&self, token: impl Into<String>) {
        self.shared.transport.set_token(token.into());
    }

    /// The progress stream: the current value, and a new one at every step of every sync.
    pub fn progress(&self) -> watch::Receiver<SyncProgress> {
        self.shared.progress.subscribe()
    }

    /// How this device names itself to the server (`ClientConfig::device`, or the id kept in its database).
    pub fn device(&self) -> &str {
        self.shared.transport.device()
    }

    /// Counts of the outbox per table and state, the oldest unsynced write, the last error.
    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        self.read(store::outbox_stats)
    }

    /// The outbox's operations, all or in one state (`Some(OpState::Rejected)` to review refusals).
    pub fn outbox(&self, state: Option<OpState>) -> Result<Vec<OutboxOp>> {
        self.read(|c| store::list_ops(c, state))
    }

    /// Puts rejected operations back in line, to be pushed by the next sync.
    pub fn retry_rejected(&self) -> Result<u64> {
        let now = self.shared.clock.now_ms();
        let n = self.read(|c| store::retry_rejected(c, now))?;
        if n > 0 {
            self.wrote();
        }
        Ok(n)
    }

    /// Forgets rejected operations.
    pub fn discard_rejected(&self) -> Result<u64> {
        self.read(store::discard_rejected)
    }

    /// The pull cursor: the server sequence this device has caught up to.
    pub fn cursor(&self) -> Result<i64> {
        self.read(store::cursor)
    }

    fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self.shared.db.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }
}

/// A local transaction in progress (see [`Client::transaction`]).
pub struct Tx<'c> {
    conn: &'c Connection,
    ctx: std::cell::RefCell<WriteCtx>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Tx<'_> {
    pub fn table<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Table<'_, T>> {
        Table::new(self, name)
    }

    pub fn json_table(&self, name: &str) -> Result<Table<'_, Value>> {
        Table::new(self, name)
    }
}

/// Where a [`Table`]'s calls go: straight to the client (one transaction per write) or into a [`Tx`].
trait Target {
    fn read_conn(&self, f: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()>;
    fn write_conn(&self, f: &mut dyn FnMut(&Connection, &mut WriteCtx) -> Result<()>)
    -> Result<()>;
}

impl Target for Client {
    fn read_conn(&self, f: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()> {
        self.read(|c| f(c))
    }

    fn write_conn(
        &self,
        f: &mut dyn FnMut(&Connection, &mut WriteCtx) -> Result<()>,
    ) -> Result<()> {
        self.run_tx(true, |tx| tx.write_conn(f))
    }
}

impl Target for Tx<'_> {
    fn read_conn(&self, f: &mut dyn FnMut(&Connection) -> Result<()>) -> Result<()> {
        f(self.conn)
    }

    fn write_conn(
        &self,
        f: &mut dyn FnMut(&Connection, &mut WriteCtx) -> Result<()>,
    ) -> Result<()> {
        f(self.conn, &mut self.ctx.borrow_mut())
    }
}

/// One table, typed as `T` (use `serde_json::Value` for untyped JSON). Records are JSON objects with an
/// `id`; inserts without one get a fresh 16-character id.
pub struct Table<'a, T> {
    target: &'a dyn Target,
    name: String,
    _records: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Table<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.name).finish()
    }
}

fn to_columns(record: &impl Serialize) -> Result<(Option<String>, Columns)> {
    let Value::Object(mut columns) = serde_json::to_value(record)? else {
        return Err(ClientError::NotAnObject);
    };
    let id = match columns.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => {
            check_id(&id)?;
            Some(id)
        }
        Some(Value::String(_)) | Some(Value::Null) | None => None,
        Some(_) => return Err(ClientError::NotAnObject),
    };
    if columns.keys().any(|k| check_table(k).is_err()) {
        return Err(ClientError::NotAnObject);
    }
    Ok((id, columns))
}

impl<'a, T: Serialize + DeserializeOwned> Table<'a, T> {
    fn new(target: &'a dyn Target, name: &str) -> Result<Table<'a, T>> {
        check_table(name)?;
        Ok(Table {
            target,
            name: name.to_string(),
            _records: PhantomData,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Result<Option<T>> {
        let mut out = None;
        self.target.read_conn(&mut |c| {
            out = store::get(c, &self.name, id)?;
            Ok(())
        })?;
        out.map(|text| serde_json::from_str(&text).map_err(ClientError::from))
            .transpose()
    }

    /// Every record, in id order.
    pub fn all(&self) -> Result<Vec<T>> {
        self.query(&[], None)
    }

    /// Records whose columns equal the given values (`null` matches a missing column), in id order.
    pub fn query(&self, filters: &[(&str, Value)], limit: Option<usize>) -> Result<Vec<T>> {
        let filters: Vec<(String, Value)> = filters
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut texts = Vec::new();
        self.target.read_conn(&mut |c| {
            texts = store::query(c, &self.name, &filters, limit)?;
            Ok(())
        })?;
        texts
            .iter()
            .map(|t| serde_json::from_str(t).map_err(ClientError::from))
            .collect()
    }

    /// Inserts a record and returns its id (the record's own, or a new one when it has none).
    pub fn insert(&self, record: &T) -> Result<String> {
        let (id, columns) = to_columns(record)?;
        let id = id.unwrap_or_else(|| new_id(&mut rand::rng()));
        let mut columns = Some(columns);
        self.target.write_conn(&mut |c, ctx| {
            let columns = columns.take().unwrap_or_default();
            store::write(c, ctx, &self.name, &id, LocalWrite::Insert(columns)).map(drop)
        })?;
        Ok(id)
    }

    /// Saves a record over the stored one; only the columns that differ become part of the pushed update.
    /// Returns false when nothing changed.
    pub fn update(&self, record: &T) -> Result<bool> {
        let (id, columns) = to_columns(record)?;
        let id = id.ok_or(ClientError::NotAnObject)?;
        self.write(&id, LocalWrite::Update(columns))
    }

    /// Sets some columns of a record (`patch` is a JSON object). Returns false when nothing changed.
    pub fn patch(&self, id: &str, patch: Value) -> Result<bool> {
        let (_, columns) = to_columns(&patch)?;
        self.write(id, LocalWrite::Update(columns))
    }

    /// Deletes a record. Returns false when there was no such record.
    pub fn delete(&self, id: &str) -> Result<bool> {
        self.write(id, LocalWrite::Delete)
    }

    fn write(&self, id: &str, write: LocalWrite) -> Result<bool> {
        check_id(id)?;
        let mut write = Some(write);
        let mut changed = false;
        self.target.write_conn(&mut |c, ctx| {
            if let Some(w) = write.take() {
                changed = store::write(c, ctx, &self.name, id, w)?;
            }
            Ok(())
        })?;
        Ok(changed)
    }
}
