//! One sync, start to end: push the outbox (batches that a crash or a failure left sealed first, with their
//! original keys and bytes, then new batches, a few requests in flight), pull and push again on a conflict,
//! then pull page by page, each page applied with its cursor. Publishes progress as it goes. The decisions
//! are the pure modules'; the database work runs on blocking threads, one short transaction at a time, so
//! local reads and writes interleave with a long sync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::Rng;
use rusqlite::Connection;
use syncline_core::{PullRequest, PullResponse};
use tokio::sync::watch;

use crate::batch::PushVerdict;
use crate::progress::{Phase, SyncProgress, SyncState, SyncSummary};
use crate::store::{self, SealedBatch};
use crate::transport::Transport;
use crate::{ClientConfig, ClientError, Clock, PushMode, Result};

/// What the client's handles, the engine and the orchestrator share.
pub(crate) struct Shared {
    pub db: Mutex<Connection>,
    pub config: ClientConfig,
    pub transport: Transport,
    pub clock: Arc<dyn Clock>,
    pub progress: watch::Sender<SyncProgress>,
    /// One sync at a time.
    pub sync_lock: tokio::sync::Mutex<()>,
    /// Syncs started so far, and the last finished one: (its number, its result).
    pub started: AtomicU64,
    pub finished: watch::Sender<(u64, Option<Result<SyncSummary>>)>,
    pub triggers: crate::orchestrator::Triggers,
    /// The network is back: failed batches are due at once instead of after their backoff.
    pub retry_failed_now: std::sync::atomic::AtomicBool,
    /// The pull cursor as last saved, for deciding without the database whether an announced change is new.
    pub cursor: std::sync::atomic::AtomicI64,
}

/// Runs `f` on the local database on a blocking thread.
pub(crate) async fn db<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let conn = shared.db.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    })
    .await
    .map_err(|e| ClientError::BadResponse(format!("a database task failed: {e}")))?
}

fn new_key() -> String {
    let mut rng = rand::rng();
    format!("sl-{}", crate::ids::new_id(&mut rng))
}

enum Flow {
    Continue,
    Conflict,
    /// A request was refused as a whole: the rest goes in batches of at most this many operations.
    Split(usize),
}

/// Runs one sync and publishes its progress and result.
pub(crate) async fn run_sync(shared: &Arc<Shared>) -> Result<SyncSummary> {
    let _one_at_a_time = shared.sync_lock.lock().await;
    let number = shared.started.fetch_add(1, Ordering::SeqCst) + 1;
    let started = Instant::now();
    let now = shared.clock.now_ms();
    let mut summary = SyncSummary {
        started_at_ms: now,
        ..Default::default()
    };
    let to_push = db(shared, move |c| store::pushable(c, now)).await;
    if let Ok(tables) = &to_push {
        report_outbox(shared, tables);
    }
    shared.progress.send_modify(|p| {
        p.state = SyncState::Syncing;
        p.phase = Some(Phase::Push);
        p.tables.clear();
        p.pull_position = None;
        for (table, n) in to_push.as_ref().cloned().unwrap_or_default() {
            p.tables.entry(table).or_default().to_push = n;
        }
    });
    let result = match to_push {
        Ok(_) => sync_steps(shared, &mut summary).await,
        Err(e) => Err(e),
    };
    summary.duration_ms = started.elapsed().as_millis() as u64;
    let finished_at = shared.clock.now_ms();
    if result.is_ok() {
        let _ = db(shared, move |c| {
            store::set_meta(c, "last_synced_at", finished_at)
        })
        .await;
    }
    shared.progress.send_modify(|p| {
        p.phase = None;
        p.last_summary = Some(summary.clone());
        match &result {
            Ok(()) => {
                p.state = SyncState::Synced;
                p.last_synced_at = Some(finished_at);
                p.last_error = None;
                p.offline = false;
            }
            Err(e) => {
                p.state = SyncState::Error;
                p.last_error = Some(e.to_string());
                p.offline = e.is_offline();
            }
        }
    });
    let result = result.map(|()| summary);
    match &result {
        Ok(s) => tracing::info!(%s, ms = s.duration_ms, "sync finished"),
        Err(e) => tracing::warn!(error = %e, "sync failed"),
    }
    shared.finished.send_replace((number, Some(result.clone())));
    result
}

async fn sync_steps(shared: &Arc<Shared>, summary: &mut SyncSummary) -> Result<()> {
    loop {
        let started = Instant::now();
        let pushed = push_phase(shared, summary).await;
        summary.push_ms += started.elapsed().as_millis() as u64;
        match pushed? {
            Flow::Conflict => {
                summary.conflict_rounds += 1;
                if summary.conflict_rounds > shared.config.max_conflict_rounds {
                    return Err(ClientError::ConflictsPersist(summary.conflict_rounds - 1));
                }
                tracing::info!(
                    round = summary.conflict_rounds,
                    "push conflicted: pulling, then pushing again"
                );
                timed_pull(shared, summary).await?;
                let now = shared.clock.now_ms();
                let to_push = db(shared, move |c| store::pushable(c, now)).await?;
                shared.progress.send_modify(|p| {
                    p.phase = Some(Phase::Push);
                    for (table, n) in to_push {
                        let t = p.tables.entry(table).or_default();
                        t.to_push = t.pushed + t.rejected + n;
                    }
                });
            }
            Flow::Continue | Flow::Split(_) => break,
        }
    }
    db(shared, store::purge_done).await?;
    let now = shared.clock.now_ms();
    report_outbox(shared, &db(shared, move |c| store::pushable(c, now)).await?);
    timed_pull(shared, summary).await
}

/// Tells the transport how many operations wait to be pushed, for the server's dashboard.
fn report_outbox<'a>(shared: &Shared, tables: impl IntoIterator<Item = (&'a String, &'a u64)>) {
    shared
        .transport
        .set_outbox_pending(tables.into_iter().map(|(_, n)| *n).sum());
}

async fn timed_pull(shared: &Arc<Shared>, summary: &mut SyncSummary) -> Result<()> {
    let started = Instant::now();
    let pulled = pull_phase(shared, summary).await;
    summary.pull_ms += started.elapsed().as_millis() as u64;
    pulled
}

/// Pushes every due batch and then the open operations. Returns `Conflict` when the server refused a
/// batch with 409 (after the requests in flight have settled).
async fn push_phase(shared: &Arc<Shared>, summary: &mut SyncSummary) -> Result<Flow> {
    shared.progress.send_modify(|p| p.phase = Some(Phase::Push));
    let cursor = db(shared, store::cursor).await?;
    let now = shared.clock.now_ms();
    if shared.retry_failed_now.swap(false, Ordering::SeqCst) {
        db(shared, move |c| store::make_failed_due(c, now)).await?;
    }
    for batch in db(shared, move |c| store::due_batches(c, now)).await? {
        let mut sealed = db(shared, move |c| store::reopen_batch(c, batch)).await?;
        tracing::info!(
            batch,
            ops = sealed.ops,
            key = %sealed.key,
            "resending a batch with its original key"
        );
        summary.push_requests += 1;
        let body = std::mem::take(&mut sealed.body);
        let verdict = shared.transport.push(&sealed.key, body).await;
        match settle(shared, summary, &sealed, verdict).await? {
            Flow::Continue | Flow::Split(_) => {}
            Flow::Conflict => return Ok(Flow::Conflict),
        }
    }
    let (mut limit, in_flight) = match shared.config.push_mode {
        PushMode::Batched => (
            shared.config.batch_size.max(1),
            shared.config.requests_in_flight.max(1),
        ),
        PushMode::Individual => (1, 1),
    };
    let mut after = 0i64;
    let mut exhausted = false;
    let mut stop: Option<Result<Flow>> = None;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while stop.is_none() && !exhausted && tasks.len() < in_flight {
            let key = new_key();
            let now = shared.clock.now_ms();
            let next = db(shared, move |c| {
                store::seal_next(c, limit, after, cursor, key, now)
            })
            .await;
            match next {
                Ok(Some((mut sealed, hi))) => {
                    after = hi;
                    summary.push_requests += 1;
                    let body = std::mem::take(&mut sealed.body);
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        let verdict = shared.transport.push(&sealed.key, body).await;
                        (sealed, verdict)
                    });
                }
                Ok(None) => exhausted = true,
                Err(e) => stop = Some(Err(e)),
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (sealed, verdict) =
            joined.map_err(|e| ClientError::BadResponse(format!("a push task failed: {e}")))?;
        match settle(shared, summary, &sealed, verdict).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Split(n)) => {
                limit = n;
                after = 0;
                exhausted = false;
            }
            Ok(Flow::Conflict) => {
                stop.get_or_insert(Ok(Flow::Conflict));
            }
            Err(e) => {
                stop.get_or_insert(Err(e));
            }
        }
    }
    stop.unwrap_or(Ok(Flow::Continue))
}

/// Carries out a push verdict on its batch, in one local transaction, and updates the progress.
async fn settle(
    shared: &Arc<Shared>,
    summary: &mut SyncSummary,
    sealed: &SealedBatch,
    verdict: PushVerdict,
) -> Result<Flow> {
    let batch = sealed.id;
    let now = shared.clock.now_ms();
    match verdict {
        PushVerdict::Applied { response, replayed } => {
            if replayed {
                tracing::info!(batch, "the server replayed its first answer to this batch");
            }
            let rejected = response.rejected;
            for r in &rejected {
                tracing::warn!(table = %r.table, id = %r.id, code = %r.code, message = %r.message, "the server rejected a record; it is parked in the outbox");
            }
            let done = db(shared, move |c| store::complete_batch(c, batch, &rejected)).await?;
            count_done(shared, summary, &done.done, &done.rejected);
            Ok(Flow::Continue)
        }
        PushVerdict::AppliedEarlier => {
            tracing::warn!(
                batch,
                "the server already applied this batch (idempotency key reused); its answer is lost"
            );
            let done = db(shared, move |c| store::complete_batch(c, batch, &[])).await?;
            count_done(shared, summary, &done.done, &done.rejected);
            Ok(Flow::Continue)
        }
        PushVerdict::Conflict { conflicts } => {
            tracing::info!(batch, ?conflicts, "push conflict");
            db(shared, move |c| store::unseal_batch(c, batch, now)).await?;
            Ok(Flow::Conflict)
        }
        PushVerdict::Refused { code, message } => {
            if sealed.groups > 1 {
                tracing::warn!(batch, %code, %message, "the server refused a batch; splitting it");
                db(shared, move |c| store::unseal_batch(c, batch, now)).await?;
                Ok(Flow::Split((sealed.ops as usize / 2).max(1)))
            } else {
                tracing::warn!(batch, %code, %message, "the server refused a request; its operations are parked");
                let parked = db(shared, move |c| {
                    store::reject_batch(c, batch, &code, &message)
                })
                .await?;
                count_done(shared, summary, &Default::default(), &parked);
                Ok(Flow::Continue)
            }
        }
        PushVerdict::Unauthorized { code, message } => {
            db(shared, move |c| store::unseal_batch(c, batch, now)).await?;
            Err(ClientError::Unauthorized { code, message })
        }
        PushVerdict::Retry { reason, offline } => {
            let policy = shared.config.retry;
            let error = reason.clone();
            let due = db(shared, move |c| {
                store::fail_batch(c, batch, &error, |attempts| {
                    let unit: f64 = rand::rng().random();
                    now + policy.delay(attempts, unit).as_millis() as i64
                })
            })
            .await?;
            tracing::warn!(batch, %reason, retry_at = due, "push failed; the batch will be resent with the same key");
            summary.failed += sealed.ops;
            shared.progress.send_modify(|p| {
                for (table, n) in &sealed.per_table {
                    p.tables.entry(table.clone()).or_default().failed += n;
                }
            });
            Err(if offline {
                ClientError::Offline(reason)
            } else {
                ClientError::Server {
                    status: 0,
                    code: "push_failed".into(),
                    message: reason,
                }
            })
        }
    }
}

fn count_done(
    shared: &Arc<Shared>,
    summary: &mut SyncSummary,
    done: &std::collections::BTreeMap<String, u64>,
    rejected: &std::collections::BTreeMap<String, u64>,
) {
    summary.pushed += done.values().sum::<u64>();
    summary.rejected += rejected.values().sum::<u64>();
    shared.progress.send_modify(|p| {
        for (table, n) in done {
            p.tables.entry(table.clone()).or_default().pushed += n;
        }
        for (table, n) in rejected {
            p.tables.entry(table.clone()).or_default().rejected += n;
        }
    });
}

/// Pulls page by page from the saved cursor. Each page is parsed and applied with its cursor in one local
/// transaction on a blocking thread, while the next page is already being fetched.
async fn pull_phase(shared: &Arc<Shared>, summary: &mut SyncSummary) -> Result<()> {
    let start = db(shared, store::cursor).await?;
    shared.progress.send_modify(|p| {
        p.phase = Some(Phase::Pull);
        p.pull_start = start;
        p.pull_position = None;
    });
    let mut limit = shared.config.pull_page_size.max(1);
    let fetch = |cursor: i64, limit: u32| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let request = PullRequest {
                last_pulled_at: (cursor > 0).then_some(cursor),
                limit: Some(limit),
                ..Default::default()
            };
            shared.transport.pull(&request).await
        })
    };
    let mut next = fetch(start, limit);
    let mut cursor = start;
    let mut target: Option<tokio::task::JoinHandle<Result<i64>>> = None;
    let mut target_seq: Option<i64> = None;
    loop {
        let fetched = next
            .await
            .map_err(|e| ClientError::BadResponse(format!("a pull task failed: {e}")))?;
        summary.pull_requests += 1;
        // A server configured with a smaller `max_pull_limit` says so: use its limit.
        if let Err(ClientError::Server {
            status: 400,
            message,
            ..
        }) = &fetched
            && let Some(max) = message
                .strip_prefix("limit must be between 1 and ")
                .and_then(|m| m.trim().parse::<u32>().ok())
            && max < limit
        {
            limit = max.max(1);
            next = fetch(cursor, limit);
            continue;
        }
        let bytes = fetched?;
        let (head_tx, head_rx) = tokio::sync::oneshot::channel::<(i64, bool)>();
        let applying = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let page: PullResponse<'_> = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::BadResponse(format!("pull answer: {e}")))?;
                let _ = head_tx.send((page.timestamp, page.has_more));
                let conn = shared.db.lock().unwrap_or_else(|e| e.into_inner());
                store::apply_page(&conn, &page).map(|applied| (applied, page.timestamp))
            })
        };
        let head = head_rx.await.ok();
        let mut prefetch = None;
        if let Some((timestamp, true)) = head {
            prefetch = Some(fetch(timestamp, limit));
            if target.is_none() && target_seq.is_none() {
                let shared = shared.clone();
                target = Some(tokio::spawn(async move {
                    shared.transport.server_sequence().await
                }));
            }
        }
        let applied = applying
            .await
            .map_err(|e| ClientError::BadResponse(format!("applying a page failed: {e}")));
        let (applied, timestamp) = match applied.and_then(|r| r) {
            Ok(a) => {
                cursor = a.1;
                shared.cursor.store(cursor, Ordering::SeqCst);
                a
            }
            Err(e) => {
                if let Some(p) = prefetch {
                    p.abort();
                }
                return Err(e);
            }
        };
        if target.as_ref().is_some_and(|t| t.is_finished())
            && let Some(t) = target.take()
        {
            target_seq = t.await.ok().and_then(|r| r.ok());
        }
        summary.pulled += applied.received.values().sum::<u64>();
        for (table, changes) in &applied.changes {
            summary
                .from_cloud
                .entry(table.clone())
                .or_default()
                .add(*changes);
        }
        shared.progress.send_modify(|p| {
            for (table, n) in &applied.received {
                p.tables.entry(table.clone()).or_default().pulled += n;
            }
            p.pull_position = target_seq.map(|t| (timestamp, t.max(timestamp)));
        });
        match prefetch {
            Some(p) => next = p,
            None => break,
        }
    }
    if let Some(t) = target {
        t.abort();
    }
    summary.from_cloud.retain(|_, c| c.total() > 0);
    Ok(())
}
