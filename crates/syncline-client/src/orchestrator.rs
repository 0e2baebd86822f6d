//! The automatic-sync task: feeds triggers (startup, local writes, `network_available`, `sync_now`, the
//! server's `changes` events, the periodic timer) and sync outcomes to the pure
//! [`Scheduler`](crate::schedule::Scheduler), and does what it answers: start a sync now, or sleep until a
//! time or the next trigger. Triggers are flags plus one `Notify`, so a burst of a million local writes
//! costs a million atomic stores, not a million messages. While it runs, `live.rs` keeps the server's event
//! stream open next to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engine::{Shared, db, run_sync};
use crate::schedule::{Action, AutoSyncPolicy, Finished, Scheduler, Trigger};
use crate::{ClientError, store};

/// Triggers waiting for the orchestrator.
#[derive(Debug, Default)]
pub(crate) struct Triggers {
    pub active: AtomicBool,
    local_write: AtomicBool,
    network: AtomicBool,
    manual: AtomicBool,
    /// The highest sequence the server announced since the last drain; `i64::MAX` when an announcement
    /// named none (a reconnection, a stream that fell behind); 0 when nothing was announced.
    remote: AtomicI64,
    pub notify: Notify,
}

impl Triggers {
    pub(crate) fn fire(&self, trigger: Trigger) {
        let flag = match trigger {
            Trigger::LocalWrite => &self.local_write,
            Trigger::NetworkAvailable => &self.network,
            Trigger::Manual => &self.manual,
            Trigger::Startup => return,
            Trigger::RemoteChanges => return self.fire_remote(None),
        };
        flag.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// The server announced changes up to `sequence` (`None`: up to an unknown point).
    pub(crate) fn fire_remote(&self, sequence: Option<i64>) {
        self.remote
            .fetch_max(sequence.unwrap_or(i64::MAX).max(1), Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Hands the waiting triggers to the scheduler. Announced changes the local cursor already covers (the
    /// echo of this device's own push, or changes a sync already pulled) start nothing.
    fn drain(&self, scheduler: &mut Scheduler, now: u64, cursor: i64) {
        let announced = self.remote.swap(0, Ordering::SeqCst);
        if announced > cursor {
            scheduler.trigger(Trigger::RemoteChanges, now);
        }
        for (flag, trigger) in [
            (&self.network, Trigger::NetworkAvailable),
            (&self.manual, Trigger::Manual),
            (&self.local_write, Trigger::LocalWrite),
        ] {
            if flag.swap(false, Ordering::SeqCst) {
                scheduler.trigger(trigger, now);
            }
        }
    }
}

/// The running automatic sync. Dropping it (or calling [`stop`](AutoSync::stop)) stops it after the sync in
/// progress, if any, is cancelled at its next step; nothing is lost, since every step is committed locally.
pub struct AutoSync {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The event stream, when the policy listens to it.
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for AutoSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoSync").finish_non_exhaustive()
    }
}

impl AutoSync {
    pub(crate) fn start(shared: Arc<Shared>, policy: AutoSyncPolicy) -> AutoSync {
        shared.triggers.active.store(true, Ordering::SeqCst);
        let task = tokio::spawn(run(shared.clone(), policy));
        let listener = policy
            .live
            .then(|| tokio::spawn(crate::live::listen(shared.clone())));
        AutoSync {
            shared,
            task: Some(task),
            listener,
        }
    }

    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(listener) = self.listener.take() {
            let _ = listener.await;
            self.shared.progress.send_modify(|p| p.live = false);
        }
    }

    fn shutdown(&mut self) {
        self.shared.triggers.active.store(false, Ordering::SeqCst);
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(listener) = &self.listener {
            listener.abort();
            self.shared.progress.send_modify(|p| p.live = false);
        }
    }
}

impl Drop for AutoSync {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(shared: Arc<Shared>, policy: AutoSyncPolicy) {
    let epoch = Instant::now();
    let now = move || epoch.elapsed().as_millis() as u64;
    let mut scheduler = Scheduler::new(policy, now());
    loop {
        let cursor = shared.cursor.load(Ordering::SeqCst);
        shared.triggers.drain(&mut scheduler, now(), cursor);
        match scheduler.poll(now()) {
            Action::Start => {
                let result = run_sync(&shared).await;
                let outcome = match &result {
                    Ok(_) => Finished::Ok,
                    Err(e) if e.is_offline() => Finished::Offline,
                    Err(_) => {
                        let retry_at = db(&shared, store::next_retry_at).await.ok().flatten();
                        let wall = shared.clock.now_ms();
                        Finished::Failed {
                            retry_after: retry_at.map(|t| {
                                std::time::Duration::from_millis((t - wall).max(0) as u64)
                            }),
                        }
                    }
                };
                if let Err(ClientError::Unauthorized { .. }) = &result {
                    tracing::warn!("the token was refused; automatic sync waits for a new one");
                }
                scheduler.finished(outcome, now());
            }
            Action::WaitUntil(at) => {
                let deadline = epoch + std::time::Duration::from_millis(at);
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = shared.triggers.notify.notified() => {}
                }
            }
            Action::Wait => shared.triggers.notify.notified().await,
        }
    }
}
