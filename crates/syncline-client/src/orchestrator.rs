//! The automatic-sync task: feeds triggers (startup, local writes, `network_available`, `sync_now`, the
//! periodic timer) and sync outcomes to the pure [`Scheduler`](crate::schedule::Scheduler), and does what it
//! answers: start a sync now, or sleep until a time or the next trigger. Triggers are flags plus one
//! `Notify`, so a burst of a million local writes costs a million atomic stores, not a million messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    pub notify: Notify,
}

impl Triggers {
    pub(crate) fn fire(&self, trigger: Trigger) {
        let flag = match trigger {
            Trigger::LocalWrite => &self.local_write,
            Trigger::NetworkAvailable => &self.network,
            Trigger::Manual => &self.manual,
            Trigger::Startup => return,
        };
        flag.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn drain(&self, scheduler: &mut Scheduler, now: u64) {
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
        AutoSync {
            shared,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn shutdown(&mut self) {
        self.shared.triggers.active.store(false, Ordering::SeqCst);
        if let Some(task) = &self.task {
            task.abort();
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
        shared.triggers.drain(&mut scheduler, now());
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
