//! Syncline's Rust client SDK: a local SQLite store whose every write lands in a durable outbox, pushed to
//! a Syncline server in batches and pulled back page by page, with an orchestrator that decides when to
//! sync and a progress stream for the UI. It speaks the server's WatermelonDB-compatible protocol
//! (`docs/protocol.md`), so it works with any schema the server is configured with.
//!
//! # A short guide
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use syncline_client::{AutoSyncPolicy, Client, ClientConfig};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Friend {
//!     #[serde(default)]
//!     id: String,
//!     name: String,
//!     tier: String,
//! }
//!
//! # async fn demo() -> Result<(), syncline_client::ClientError> {
//! let client = Client::open("local.db", ClientConfig::new("http://127.0.0.1:8080", "TOKEN"))?;
//! let friends = client.table::<Friend>("friends")?;
//!
//! // Local writes apply at once and are recorded in the outbox in the same SQLite transaction.
//! let id = friends.insert(&Friend { id: String::new(), name: "Sam".into(), tier: "close".into() })?;
//! friends.patch(&id, serde_json::json!({"tier": "inner"}))?; // folds into the waiting create
//!
//! // Writes that belong together travel together: one push request, never split.
//! client.transaction(|tx| {
//!     let games = tx.json_table("games")?;
//!     let events = tx.json_table("game_events")?;
//!     games.insert(&serde_json::json!({"id": "g1", "opponent": "Riverside"}))?;
//!     events.insert(&serde_json::json!({"game_id": "g1", "event_type": "goal"}))?;
//!     Ok(())
//! })?;
//!
//! // Sync once...
//! let summary = client.sync_now().await?;
//! println!("{summary}"); // "2 items updated from cloud, 3 changes sent"
//!
//! // ...or let the orchestrator do it: on start, after writes (debounced), when the network is back,
//! // as soon as another device's changes reach the server (over `/v1/events`), every few minutes, and on
//! // sync_now().
//! let auto = client.start_auto_sync(AutoSyncPolicy::default());
//! let mut progress = client.progress();
//! progress.changed().await.ok();
//! println!("{:?} {:.0}%", progress.borrow().state, progress.borrow().percentage());
//! client.network_available(); // from the app's connectivity listener
//! auto.stop().await;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! - **Outbox.** Every local write records an operation in the same SQLite transaction. Writes to one
//!   record fold together while the operation waits (create+update → create, update+update → one update
//!   with the union of columns, create+delete → nothing, update+delete → delete), so repeated edits and
//!   double clicks cost nothing. Updates carry only the columns that changed.
//! - **Push.** Operations leave in order, grouped per table, in requests of at most
//!   [`ClientConfig::batch_size`] operations; a local transaction is never split. Each request carries an
//!   `Idempotency-Key` saved with the batch in the transaction that marks it `syncing`, and its body is a
//!   pure function of the batch, so after a crash or a lost answer the batch is resent with the same key
//!   and the same bytes, and the server answers with its first answer instead of applying it twice.
//!   Failed batches are retried with exponential backoff and jitter; rows the server rejects are parked as
//!   `rejected` with their reason and block nothing. A `409 conflict` makes the client pull and push again.
//! - **Pull.** Pages of [`ClientConfig::pull_page_size`] changes, each applied in one transaction with the
//!   new cursor, so an interrupted first sync resumes from its last page. A pulled record is merged with
//!   the local operations still waiting: local changed columns win.
//! - **Live.** While automatic sync runs, one `GET /v1/events` stream stays open. A `changes` event the
//!   local cursor does not cover yet asks the orchestrator for a sync (so the echo of this device's own push
//!   costs nothing), and every (re)connection is followed by one, so changes announced while the stream
//!   was down are pulled too. A dropped stream reconnects with backoff.
//! - **Decisions apart from I/O.** Coalescing, batching, retry schedules, merging, progress arithmetic
//!   and the orchestrator's timing are pure functions (modules `coalesce`, `batch`, `merge`, `progress`,
//!   `schedule`); SQLite, HTTP and timers stay at the edges (`store`, `transport`, `engine`,
//!   `orchestrator`).
//!
//! This crate depends on `syncline-core` for the wire types and on nothing of the server.

mod batch;
mod client;
mod coalesce;
mod engine;
mod error;
mod ids;
mod live;
mod merge;
mod orchestrator;
mod progress;
mod schedule;
mod sse;
mod store;
mod transport;

pub use batch::RetryPolicy;
pub use client::{Client, ClientConfig, DEFAULT_BATCH_SIZE, PushMode, Table, Tx};
pub use coalesce::{Columns, OpKind};
pub use error::{ClientError, Result};
pub use orchestrator::AutoSync;
pub use progress::{CloudChanges, Phase, SyncProgress, SyncState, SyncSummary, TableProgress};
pub use schedule::AutoSyncPolicy;
pub use store::{OpState, OutboxOp, OutboxStats, TableOutbox};
/// Wall-clock time, injected (`Client::open_with_clock`), and the API's error codes: shared with the server.
pub use syncline_core::{Clock, ErrorCode, ManualClock, SystemClock};
