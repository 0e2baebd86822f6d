//! The pull recorder: takes the dashboard's counting of pulls off the pull's request path. A finished pull
//! only queues its count (a map entry under a mutex); one writer thread per instance writes everything
//! queued in one relaxed transaction ([`ActivityStore::record_syncs`]). While a write is in progress, the
//! pulls that arrive add up, per user, device and time bucket, into the next one. The writer starts as soon
//! as something is queued: there is no timer.
//!
//! Every read of activity on this instance calls [`PullRecorder::settle`] first, which waits until
//! everything queued before it has been written, so a client that pulls and then reads its activity on the
//! same instance always sees its pull. [`PullRecorder::close`] (server shutdown, or the last handle
//! dropped) writes what is queued before the thread ends. On a store that several instances share
//! (PostgreSQL), a pull also waits for its batch to commit before the last of its answer goes out, so a read
//! on any instance after the answer sees it; the batching still spares concurrent pulls a transaction each.
//!
//! It never fails or slows a pull on a store error: the error is logged and that batch's counts are lost,
//! as a failed count was before. Pushes do not come here: an applied push counts itself in its own write
//! transaction, and the rare refused or replayed push counts itself on its request.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use syncline_store::{ActivityStore, SyncActivity, SyncKind, activity_bucket};

/// Which pulls add up: one user's, from one device (or none named), in one time bucket.
type Key = (String, Option<String>, i64);

/// Pulls added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    pulls: u64,
    records: u64,
    /// The latest pull's time.
    at_ms: i64,
    /// The latest outbox count a pull reported.
    outbox_pending: Option<u64>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: BTreeMap<Key, Tally>,
    /// Pulls queued since the start.
    queued: u64,
    /// The first `written` of those are written (or were given up on after an error).
    written: u64,
    /// Asked to close: the writer writes what is queued, then ends.
    closing: bool,
    /// The writer has ended: pulls are counted on their own thread from now on.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Something was queued, or closing was asked for.
    work: Condvar,
    /// `written` moved, or the writer ended.
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One instance's queue of pull counts and its writer thread.
pub(crate) struct PullRecorder {
    shared: Arc<Shared>,
    /// Other instances read this store: a pull waits until its count is written.
    wait_for_write: bool,
    store: Arc<dyn ActivityStore>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PullRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullRecorder")
            .field("queue", &*self.shared.lock())
            .finish_non_exhaustive()
    }
}

impl PullRecorder {
    /// Starts the writer thread on `store`; `wait_for_write` when other instances share it.
    pub(crate) fn start(store: Arc<dyn ActivityStore>, wait_for_write: bool) -> PullRecorder {
        let shared = Arc::new(Shared::default());
        let writer = {
            let (shared, store) = (shared.clone(), store.clone());
            std::thread::Builder::new()
                .name("syncline-activity".into())
                .spawn(move || write_loop(&shared, &*store))
        };
        let writer = match writer {
            Ok(handle) => Some(handle),
            Err(e) => {
                // Without a thread every pull counts itself, as it did before the recorder.
                tracing::warn!(error = %e, "no activity writer thread; pulls are counted inline");
                shared.lock().closed = true;
                None
            }
        };
        PullRecorder {
            shared,
            wait_for_write,
            store,
            writer: Mutex::new(writer),
        }
    }

    /// Queues one finished pull of `user` by `device` at `at_ms` that brought `records` changes. Call before
    /// the pull's answer is complete, so that a read after it waits for it.
    pub(crate) fn pulled(
        &self,
        user: String,
        device: Option<String>,
        outbox_pending: Option<u64>,
        records: u64,
        at_ms: i64,
    ) {
        let mut queue = self.shared.lock();
        if queue.closed {
            drop(queue);
            let activity =
                pull_activity(device.as_deref(), &tally(1, records, at_ms, outbox_pending));
            if let Err(e) = self.store.record_sync(&user, &activity) {
                tracing::warn!(error = %e, "could not record pull activity");
            }
            return;
        }
        let idle = queue.pending.is_empty();
        let entry = queue
            .pending
            .entry((user, device, activity_bucket(at_ms)))
            .or_insert(tally(0, 0, at_ms, None));
        entry.pulls += 1;
        entry.records += records;
        entry.at_ms = entry.at_ms.max(at_ms);
        if outbox_pending.is_some() {
            entry.outbox_pending = outbox_pending;
        }
        queue.queued += 1;
        let ticket = queue.queued;
        drop(queue);
        if idle {
            self.shared.work.notify_one();
        }
        if self.wait_for_write {
            self.settle_until(ticket);
        }
    }

    /// Waits until every pull queued before this call is written. Call from a blocking thread.
    pub(crate) fn settle(&self) {
        let target = self.shared.lock().queued;
        self.settle_until(target);
    }

    /// Waits until the first `target` pulls queued are written.
    fn settle_until(&self, target: u64) {
        let mut queue = self.shared.lock();
        while queue.written < target && !queue.closed {
            queue = self
                .shared
                .progress
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Writes what is queued and ends the writer thread; later pulls count themselves. Blocks until done.
    pub(crate) fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the activity writer thread panicked");
        }
    }
}

impl Drop for PullRecorder {
    fn drop(&mut self) {
        self.close();
    }
}

fn tally(pulls: u64, records: u64, at_ms: i64, outbox_pending: Option<u64>) -> Tally {
    Tally {
        pulls,
        records,
        at_ms,
        outbox_pending,
    }
}

fn pull_activity<'a>(device: Option<&'a str>, t: &Tally) -> SyncActivity<'a> {
    SyncActivity {
        kind: SyncKind::Pull,
        at_ms: t.at_ms,
        requests: t.pulls,
        device,
        outbox_pending: t.outbox_pending,
        records: t.records,
        rejected: 0,
        conflicts: 0,
        rejection: None,
    }
}

/// Marks the writer ended when it returns or panics, and wakes every reader waiting for it.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.closed = true;
        queue.written = queue.queued;
        drop(queue);
        self.0.progress.notify_all();
    }
}

/// The writer thread: waits for pulls, writes each batch in one transaction, ends when asked to close and
/// nothing is left.
fn write_loop(shared: &Shared, store: &dyn ActivityStore) {
    let _ended = Ended(shared);
    loop {
        let (batch, through) = {
            let mut queue = shared.lock();
            while queue.pending.is_empty() && !queue.closing {
                queue = shared.work.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.pending.is_empty() {
                // Closed under the lock: a pull queued after this counts itself instead.
                queue.closed = true;
                return;
            }
            (std::mem::take(&mut queue.pending), queue.queued)
        };
        let entries: Vec<(&str, SyncActivity<'_>)> = batch
            .iter()
            .map(|((user, device, _), t)| (user.as_str(), pull_activity(device.as_deref(), t)))
            .collect();
        if let Err(e) = store.record_syncs(&entries) {
            let pulls: u64 = batch.values().map(|t| t.pulls).sum();
            tracing::warn!(error = %e, pulls, "could not record pull activity");
        }
        shared.lock().written = through;
        shared.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use syncline_store::{ActivityBucket, Store, StoreError, UserActivity};

    use super::*;

    const MINUTE: i64 = syncline_store::ACTIVITY_BUCKET_MS;
    const T0: i64 = 1_000 * MINUTE;

    /// What one entry of a batch counted: user, device, pulls.
    type Entry = (String, Option<String>, u64);

    /// A real SQLite store whose batches are logged, and whose first batch waits for the test's word.
    struct Gated {
        store: Arc<dyn Store>,
        /// Told when the first batch has reached the store.
        entered: Mutex<Option<mpsc::Sender<()>>>,
        /// The first batch waits for this.
        release: Mutex<Option<mpsc::Receiver<()>>>,
        /// Each batch: (user, device, pulls) of every entry.
        batches: Mutex<Vec<Vec<Entry>>>,
    }

    impl ActivityStore for Gated {
        fn record_syncs(&self, batch: &[(&str, SyncActivity<'_>)]) -> Result<(), StoreError> {
            let entered = self.entered.lock().unwrap().take();
            if let Some(entered) = entered {
                entered.send(()).unwrap();
                let release = self.release.lock().unwrap().take().unwrap();
                release.recv().unwrap();
            }
            let seen = batch
                .iter()
                .map(|(u, a)| (u.to_string(), a.device.map(str::to_string), a.requests))
                .collect();
            self.batches.lock().unwrap().push(seen);
            self.store.record_syncs(batch)
        }

        fn user_activity(
            &self,
            user: Option<&str>,
            limit: usize,
        ) -> Result<Vec<UserActivity>, StoreError> {
            self.store.user_activity(user, limit)
        }

        fn activity_series(
            &self,
            user: Option<&str>,
            since_ms: i64,
        ) -> Result<Vec<ActivityBucket>, StoreError> {
            self.store.activity_series(user, since_ms)
        }

        fn prune_activity(&self, before_ms: i64) -> Result<u64, StoreError> {
            self.store.prune_activity(before_ms)
        }
    }

    fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let text = format!(
            "[storage]\nurl = \"{url}\"\n[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n[tables.tasks]\ncolumns = {{ title = \"string\" }}"
        );
        let config = crate::Config::from_toml(&text, []).unwrap();
        crate::open_store(&config, &url.parse().unwrap()).unwrap().0
    }

    /// A recorder whose first batch is held at the store until the returned sender is used.
    fn gated(
        store: Arc<dyn Store>,
    ) -> (
        PullRecorder,
        Arc<Gated>,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
    ) {
        gated_with(store, false)
    }

    fn gated_with(
        store: Arc<dyn Store>,
        wait_for_write: bool,
    ) -> (
        PullRecorder,
        Arc<Gated>,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
    ) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gated = Arc::new(Gated {
            store,
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(Some(release_rx)),
            batches: Mutex::default(),
        });
        (
            PullRecorder::start(gated.clone(), wait_for_write),
            gated,
            entered,
            release,
        )
    }

    fn pull(r: &PullRecorder, device: &str, outbox: Option<u64>, records: u64, at_ms: i64) {
        r.pulled("alice".into(), Some(device.into()), outbox, records, at_ms);
    }

    fn alice(store: &dyn Store) -> UserActivity {
        store
            .user_activity(Some("alice"), 1)
            .unwrap()
            .pop()
            .unwrap()
    }

    #[test]
    fn pulls_queued_during_a_write_add_up_into_the_next_with_exact_totals() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (r, gated, entered, release) = gated(store.clone());
        pull(&r, "phone", Some(4), 1, T0);
        entered.recv().unwrap();
        // The first write is in progress: these wait, and add up per device and time bucket.
        for i in 0..100 {
            pull(&r, "phone", Some(100 - i), 2, T0 + 1 + i as i64);
        }
        for _ in 0..10 {
            pull(&r, "tablet", None, 3, T0 + 5);
        }
        pull(&r, "tablet", None, 7, T0 + MINUTE);
        release.send(()).unwrap();
        r.settle();
        let batches = gated.batches.lock().unwrap().clone();
        let phone = || Some("phone".to_string());
        let tablet = || Some("tablet".to_string());
        assert_eq!(
            batches,
            [
                vec![("alice".into(), phone(), 1)],
                vec![
                    ("alice".into(), phone(), 100),
                    ("alice".into(), tablet(), 10),
                    ("alice".into(), tablet(), 1)
                ]
            ]
        );
        let a = alice(&*store);
        assert_eq!((a.pulls, a.records_pulled), (112, 1 + 200 + 30 + 7));
        assert_eq!(a.last_pull_at, Some(T0 + MINUTE));
        let devices: Vec<_> = a
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.last_pull_at, d.outbox_pending))
            .collect();
        assert_eq!(
            devices,
            [
                ("tablet", Some(T0 + MINUTE), None),
                ("phone", Some(T0 + 100), Some(1))
            ]
        );
        let series: Vec<_> = store
            .activity_series(Some("alice"), T0)
            .unwrap()
            .iter()
            .map(|b| (b.at, b.pulled))
            .collect();
        assert_eq!(series, [(T0, 1 + 200 + 30), (T0 + MINUTE, 7)]);
    }

    #[test]
    fn settle_waits_for_what_was_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (r, _gated, entered, release) = gated(store.clone());
        let r = Arc::new(r);
        pull(&r, "phone", None, 1, T0);
        entered.recv().unwrap();
        pull(&r, "phone", None, 1, T0 + 1);
        let (settled_tx, settled) = mpsc::channel();
        let reader = {
            let r = r.clone();
            std::thread::spawn(move || {
                r.settle();
                settled_tx.send(()).unwrap();
            })
        };
        assert!(
            settled
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "settle returned while the pulls before it were not written"
        );
        assert!(store.user_activity(Some("alice"), 1).unwrap().is_empty());
        release.send(()).unwrap();
        settled.recv().unwrap();
        reader.join().unwrap();
        assert_eq!(alice(&*store).pulls, 2);
    }

    #[test]
    fn on_a_shared_store_a_pull_returns_only_once_its_count_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (r, _gated, entered, release) = gated_with(store.clone(), true);
        let r = Arc::new(r);
        let (done_tx, done) = mpsc::channel();
        let puller = {
            let r = r.clone();
            std::thread::spawn(move || {
                pull(&r, "phone", None, 3, T0);
                done_tx.send(()).unwrap();
            })
        };
        entered.recv().unwrap();
        assert!(
            done.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the pull finished while its count was not written"
        );
        release.send(()).unwrap();
        done.recv().unwrap();
        puller.join().unwrap();
        // Without settling: what another instance would read right after the answer.
        assert_eq!(alice(&*store).records_pulled, 3);
    }

    #[test]
    fn closing_writes_what_is_queued_and_later_pulls_count_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (r, _gated, entered, release) = gated(store.clone());
        pull(&r, "phone", None, 1, T0);
        entered.recv().unwrap();
        for _ in 0..5 {
            pull(&r, "phone", None, 1, T0 + 1);
        }
        let r = Arc::new(r);
        let closer = {
            let r = r.clone();
            std::thread::spawn(move || r.close())
        };
        release.send(()).unwrap();
        closer.join().unwrap();
        pull(&r, "phone", None, 1, T0 + 2);
        r.settle();
        drop(r);
        drop(store);
        // What a restarted server reads.
        let store = open(&dir);
        let a = alice(&*store);
        assert_eq!((a.pulls, a.records_pulled), (7, 7));
    }
}
