//! Syncline's HTTP server: the WatermelonDB-compatible pull/push routes, the bulk RPC, auth, JSON errors,
//! metrics and configuration. [`start`] binds a listener and serves until [`RunningServer::stop`].
//!
//! The server decides nothing about records itself: it authenticates, parses, asks the core to plan the
//! writes, and hands them to the store on a blocking thread.

mod activity;
mod app;
mod auth;
mod config;
mod error;
mod events;
mod fanout;
mod import_watch;
mod imports;
mod metrics;
mod recorder;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

pub use app::{AppState, router};
pub use auth::{Authenticator, Claims, Principal, TokenError};
pub use config::{AuthSection, Config, ServerSection, StorageSection, SyncSection};
pub use error::{ApiError, ServerError};
pub use events::{Event, Events};
pub use serve::OVERFLOW_CONNECTIONS;
use syncline_core::Schema;
use syncline_store::Store;

/// A server that is listening.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish, and returns.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the store at `url` (parsed once from `config.storage.url`) with `config`'s schema.
pub fn open_store(
    config: &Config,
    url: &syncline_store::StorageUrl,
) -> Result<(Arc<dyn Store>, Arc<Schema>), ServerError> {
    let schema = Arc::new(Schema::from_config(&config.tables)?);
    let store = syncline_store::open_at(url, schema.clone(), &config.storage.options())?;
    Ok((store, schema))
}

/// Builds the application state from a configuration, on the system clock.
pub fn build_state(config: Config) -> Result<AppState, ServerError> {
    build_state_with_clock(config, Arc::new(syncline_core::SystemClock))
}

/// Builds the application state from a configuration, reading wall-clock time from `clock`.
pub fn build_state_with_clock(
    config: Config,
    clock: Arc<dyn syncline_core::Clock>,
) -> Result<AppState, ServerError> {
    config.server.check()?;
    let auth = Arc::new(Authenticator::from_config(&config.auth)?);
    let url: syncline_store::StorageUrl = config.storage.url.parse()?;
    let (store, schema) = open_store(&config, &url)?;
    let events = events::Events::for_storage(&url)?;
    // The importer sees only the store's import half; saved states are announced as events.
    store.observe_imports(Arc::new(import_watch::ImportAnnouncer::new(events.clone())));
    let imports = Arc::new(
        syncline_import::Importer::from_config(
            &config.imports,
            store.clone(),
            schema.clone(),
            clock.clone(),
        )
        .map_err(|e| ServerError::Config(e.to_string()))?,
    );
    let shared_store = matches!(url, syncline_store::StorageUrl::Postgres(_));
    let recorder = Arc::new(recorder::PullRecorder::start(store.clone(), shared_store));
    Ok(AppState {
        recorder,
        store,
        schema,
        auth,
        metrics: Default::default(),
        imports,
        events,
        config: Arc::new(config),
        pulls: Default::default(),
        clock,
    })
}

/// Binds `config.server.listen` and serves in the background (with periodic garbage collection).
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with_clock(config, Arc::new(syncline_core::SystemClock)).await
}

/// [`start`], reading wall-clock time from `clock` (a test moves it by hand).
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn syncline_core::Clock>,
) -> Result<RunningServer, ServerError> {
    let listen = config.server.listen.clone();
    // Opening a store may block (PostgreSQL connects and migrates): keep it off the async workers.
    let state = tokio::task::spawn_blocking(move || build_state_with_clock(config, clock))
        .await
        .map_err(|e| ServerError::Config(format!("opening the store failed: {e}")))??;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: listen,
            source,
        })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gc = tokio::spawn(app::gc_loop(state.clone()));
    let events = state.events.clone();
    // The embedded import runner: keeps pending imports going, resumes rate-limited ones at their reset.
    let runner = (state.imports.mode() == syncline_import::RunnerMode::Background
        && !state.imports.source_names().is_empty())
    .then(|| tokio::spawn(state.imports.clone().run()));
    let deadlines = serve::Deadlines::from_config(&state.config.server);
    let max_connections = state.config.server.max_connections;
    let recorder = state.recorder.clone();
    let app = router(state);
    let task = tokio::spawn(async move {
        serve::serve(listener, app, deadlines, max_connections, async move {
            let _ = stopped.await;
            events.close(); // open event streams would otherwise hold the shutdown forever
        })
        .await;
        gc.abort();
        if let Some(runner) = runner {
            runner.abort();
        }
        // The requests have finished: what they queued for the dashboard is written before `stop` returns.
        let _ = tokio::task::spawn_blocking(move || recorder.close()).await;
    });
    Ok(RunningServer { addr, stop, task })
}
