//! When to sync: the orchestrator's decisions as a pure state machine. It takes triggers (startup, network
//! back, a local write, a manual request, changes announced by the server, the periodic timer) and the outcome of each sync, all stamped with
//! a time the caller passes in (milliseconds on any monotonic clock), and answers whether to start a sync
//! now or how long to wait. No timers, no tasks: the async shell in `orchestrator.rs` does the waiting, and
//! the tests here run whole days of triggers without sleeping.
//!
//! The rules: local writes are debounced (each write pushes the start out by `debounce`, but a burst never
//! waits more than `max_debounce`); changes announced by the server are wanted at once (they come one per
//! server write, not per keystroke); triggers that arrive during a sync coalesce into exactly one follow-up;
//! two syncs never start less than `min_interval` apart; after a failure, and while the server cannot be
//! reached, syncs wait out an exponential backoff, which a manual request or `network_available` cuts short.

use std::time::Duration;

/// How and when automatic syncs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoSyncPolicy {
    /// Sync every this often (the seeds use 5 and 15 minutes). `None`: no periodic sync.
    pub interval: Option<Duration>,
    /// Wait this long after a local write for more writes, so that a burst of edits becomes one sync.
    pub debounce: Duration,
    /// A burst of writes waits at most this long after its first write.
    pub max_debounce: Duration,
    /// Two syncs never start closer than this.
    pub min_interval: Duration,
    /// Sync as soon as the orchestrator starts.
    pub on_start: bool,
    /// The first wait after a failed sync or while offline; doubles with each failure.
    pub backoff_base: Duration,
    /// The longest wait after failures.
    pub backoff_max: Duration,
    /// Keep the server's event stream (`GET /v1/events`) open and sync as soon as it announces changes
    /// made elsewhere.
    pub live: bool,
}

impl Default for AutoSyncPolicy {
    fn default() -> AutoSyncPolicy {
        AutoSyncPolicy {
            interval: Some(Duration::from_secs(5 * 60)),
            debounce: Duration::from_millis(300),
            max_debounce: Duration::from_secs(3),
            min_interval: Duration::from_secs(1),
            on_start: true,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            live: true,
        }
    }
}

/// Why a sync is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    NetworkAvailable,
    LocalWrite,
    Manual,
    /// The server announced changes this device has not pulled yet (or a reconnection to its event stream).
    RemoteChanges,
}

/// How a sync ended, for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Ok,
    /// The server could not be reached.
    Offline,
    /// It failed otherwise. `retry_after`: when the failed operations are due again, if known.
    Failed {
        retry_after: Option<Duration>,
    },
}

/// What the orchestrator should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    /// Nothing to do before this time (unless a trigger or an outcome arrives).
    WaitUntil(u64),
    /// Nothing to do until a trigger or an outcome arrives.
    Wait,
}

/// The orchestrator's state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    policy: AutoSyncPolicy,
    running: bool,
    /// A sync is wanted from this time on.
    want: Option<u64>,
    /// The wanted sync came from an urgent trigger (not debounced).
    urgent: bool,
    burst_start: Option<u64>,
    last_start: Option<u64>,
    next_periodic: Option<u64>,
    /// After failures: non-urgent syncs wait until then.
    blocked_until: Option<u64>,
    failures: u32,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Scheduler {
    pub fn new(policy: AutoSyncPolicy, now: u64) -> Scheduler {
        let mut s = Scheduler {
            policy,
            running: false,
            want: None,
            urgent: false,
            burst_start: None,
            last_start: None,
            next_periodic: policy.interval.map(|i| now + ms(i)),
            blocked_until: None,
            failures: 0,
        };
        if policy.on_start {
            s.trigger(Trigger::Startup, now);
        }
        s
    }

    pub fn trigger(&mut self, trigger: Trigger, now: u64) {
        match trigger {
            Trigger::Startup
            | Trigger::NetworkAvailable
            | Trigger::Manual
            | Trigger::RemoteChanges => {
                // Only the user (or the network coming back) cuts a failure backoff short.
                if matches!(trigger, Trigger::NetworkAvailable | Trigger::Manual) {
                    self.blocked_until = None;
                }
                self.want = Some(self.want.map_or(now, |w| w.min(now)));
                self.urgent = true;
            }
            Trigger::LocalWrite => {
                let start = *self.burst_start.get_or_insert(now);
                let debounced =
                    (now + ms(self.policy.debounce)).min(start + ms(self.policy.max_debounce));
                self.want = Some(match self.want {
                    Some(w) if self.urgent => w.min(debounced),
                    _ => debounced,
                });
            }
        }
    }

    /// A sync ended.
    pub fn finished(&mut self, outcome: Finished, now: u64) {
        self.running = false;
        match outcome {
            Finished::Ok => {
                self.failures = 0;
                self.blocked_until = None;
            }
            Finished::Offline | Finished::Failed { .. } => {
                self.failures += 1;
                let exp = self
                    .policy
                    .backoff_base
                    .saturating_mul(1u32 << (self.failures - 1).min(20))
                    .min(self.policy.backoff_max);
                let wait = match outcome {
                    Finished::Failed {
                        retry_after: Some(due),
                    } => due.min(exp).max(self.policy.min_interval),
                    _ => exp,
                };
                self.blocked_until = Some(now + ms(wait));
                // Try again once the wait is over (a probe, when offline).
                self.want = Some(self.want.unwrap_or(now));
            }
        }
    }

    /// Decides what to do at `now`. `Start` marks the sync as running; report its end with [`finished`].
    ///
    /// [`finished`]: Scheduler::finished
    pub fn poll(&mut self, now: u64) -> Action {
        if let (Some(at), Some(interval)) = (self.next_periodic, self.policy.interval)
            && now >= at
        {
            self.next_periodic = Some(now + ms(interval));
            self.want = Some(self.want.map_or(now, |w| w.min(now)));
            self.urgent = true;
        }
        let wake = |t: Option<u64>, periodic: Option<u64>| match (t, periodic) {
            (Some(a), Some(b)) => Action::WaitUntil(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Action::WaitUntil(a),
            (None, None) => Action::Wait,
        };
        if self.running {
            return wake(None, self.next_periodic);
        }
        let Some(want) = self.want else {
            return wake(None, self.next_periodic);
        };
        let start_at = [
            Some(want),
            self.last_start.map(|t| t + ms(self.policy.min_interval)),
            self.blocked_until,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
        if now >= start_at {
            self.running = true;
            self.want = None;
            self.urgent = false;
            self.burst_start = None;
            self.last_start = Some(now);
            Action::Start
        } else {
            wake(Some(start_at), self.next_periodic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a script: at a time, an input, or a poll with the action expected.
    enum Step {
        Fire(u64, T),
        Finish(u64, Finished),
        Poll(u64, Action),
    }
    use super::Trigger as T;
    use Step::*;

    fn policy() -> AutoSyncPolicy {
        AutoSyncPolicy {
            interval: Some(Duration::from_secs(300)),
            debounce: Duration::from_millis(300),
            max_debounce: Duration::from_millis(2000),
            min_interval: Duration::from_millis(1000),
            on_start: false,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            live: true,
        }
    }

    fn check(policy: AutoSyncPolicy, script: &[Step]) {
        let mut s = Scheduler::new(policy, 0);
        for (i, step) in script.iter().enumerate() {
            match step {
                Fire(t, trigger) => s.trigger(*trigger, *t),
                Finish(t, outcome) => s.finished(*outcome, *t),
                Poll(t, expected) => assert_eq!(s.poll(*t), *expected, "step {i} at {t} ms"),
            }
        }
    }

    #[test]
    fn startup_syncs_at_once() {
        let p = AutoSyncPolicy {
            on_start: true,
            ..policy()
        };
        check(
            p,
            &[Poll(0, Action::Start), Poll(10, Action::WaitUntil(300_000))],
        );
    }

    #[test]
    fn a_burst_of_writes_becomes_one_sync() {
        let mut script = vec![Poll(0, Action::WaitUntil(300_000))];
        for i in 0..20 {
            script.push(Fire(i * 10, T::LocalWrite));
        }
        script.extend([
            Poll(200, Action::WaitUntil(490)),
            Poll(490, Action::Start),
            Poll(500, Action::WaitUntil(300_000)),
        ]);
        check(policy(), &script);
    }

    #[test]
    fn endless_writes_still_sync_after_max_debounce() {
        let mut script = Vec::new();
        for i in 0..20 {
            script.push(Fire(i * 100, T::LocalWrite));
        }
        script.push(Poll(2000, Action::Start));
        check(policy(), &script);
    }

    #[test]
    fn triggers_during_a_sync_make_one_follow_up() {
        check(
            policy(),
            &[
                Fire(0, T::Manual),
                Poll(0, Action::Start),
                Fire(100, T::Manual),
                Fire(150, T::NetworkAvailable),
                Fire(200, T::LocalWrite),
                Poll(250, Action::WaitUntil(300_000)),
                Finish(1500, Finished::Ok),
                Poll(1500, Action::Start),
                Finish(1600, Finished::Ok),
                Poll(1600, Action::WaitUntil(300_000)),
            ],
        );
    }

    #[test]
    fn announced_changes_sync_at_once_and_during_a_sync_make_exactly_one_more() {
        check(
            policy(),
            &[
                Fire(5000, T::RemoteChanges),
                Poll(5000, Action::Start),
                Fire(5010, T::RemoteChanges),
                Fire(5020, T::RemoteChanges),
                Fire(5030, T::RemoteChanges),
                Poll(5040, Action::WaitUntil(300_000)),
                Finish(5100, Finished::Ok),
                Poll(6000, Action::Start),
                Finish(6050, Finished::Ok),
                Poll(6050, Action::WaitUntil(300_000)),
            ],
        );
    }

    #[test]
    fn announced_changes_do_not_cut_a_failure_backoff_short() {
        check(
            policy(),
            &[
                Fire(0, T::Manual),
                Poll(0, Action::Start),
                Finish(10, Finished::Failed { retry_after: None }),
                Fire(100, T::RemoteChanges),
                Poll(100, Action::WaitUntil(2010)),
                Poll(2010, Action::Start),
            ],
        );
    }

    #[test]
    fn a_minimum_interval_stops_storms() {
        check(
            policy(),
            &[
                Fire(0, T::Manual),
                Poll(0, Action::Start),
                Finish(50, Finished::Ok),
                Fire(60, T::Manual),
                Poll(60, Action::WaitUntil(1000)),
                Poll(1000, Action::Start),
            ],
        );
    }

    #[test]
    fn periodic_syncs_run_every_interval() {
        check(
            policy(),
            &[
                Poll(299_999, Action::WaitUntil(300_000)),
                Poll(300_000, Action::Start),
                Finish(300_100, Finished::Ok),
                Poll(300_100, Action::WaitUntil(600_000)),
                Poll(600_001, Action::Start),
            ],
        );
    }

    #[test]
    fn offline_is_waited_out_with_backoff_until_the_network_returns() {
        check(
            policy(),
            &[
                Fire(0, T::Manual),
                Poll(0, Action::Start),
                Finish(10, Finished::Offline),
                Poll(10, Action::WaitUntil(2010)),
                Fire(500, T::LocalWrite),
                Poll(500, Action::WaitUntil(2010)),
                Poll(2010, Action::Start),
                Finish(2020, Finished::Offline),
                Poll(2020, Action::WaitUntil(6020)),
                Fire(3500, T::NetworkAvailable),
                Poll(3500, Action::Start),
                Finish(3600, Finished::Ok),
                Fire(3700, T::LocalWrite),
                Poll(3700, Action::WaitUntil(4500)),
            ],
        );
    }

    #[test]
    fn failed_operations_are_retried_when_due() {
        check(
            policy(),
            &[
                Fire(0, T::Manual),
                Poll(0, Action::Start),
                Finish(
                    100,
                    Finished::Failed {
                        retry_after: Some(Duration::from_millis(1500)),
                    },
                ),
                Poll(100, Action::WaitUntil(1600)),
                Poll(1600, Action::Start),
            ],
        );
    }
}
