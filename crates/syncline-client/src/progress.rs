//! What a UI shows about syncing: the state and phase of the current sync, totals and counts per table, a
//! percentage, the last success and the last error, and a summary of each finished sync ("2 items updated
//! from cloud"). Plain data and arithmetic; the engine publishes new values through a `watch` channel.

use std::collections::BTreeMap;
use std::fmt;

/// Where syncing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncState {
    /// No sync has run yet.
    #[default]
    Idle,
    Syncing,
    /// The last sync finished.
    Synced,
    /// The last sync failed; see `last_error`.
    Error,
}

/// The step a running sync is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Push,
    Pull,
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::Idle => "idle",
            SyncState::Syncing => "syncing",
            SyncState::Synced => "synced",
            SyncState::Error => "error",
        })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Push => "push",
            Phase::Pull => "pull",
        })
    }
}

/// One table's part of the current sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableProgress {
    /// Operations this sync set out to push.
    pub to_push: u64,
    /// Operations the server took.
    pub pushed: u64,
    /// Operations that failed and wait for a retry.
    pub failed: u64,
    /// Operations the server refused (parked in the outbox).
    pub rejected: u64,
    /// Records and deletions received from the server.
    pub pulled: u64,
}

impl TableProgress {
    fn push_finished(&self) -> bool {
        self.pushed + self.failed + self.rejected >= self.to_push
    }
}

/// What the server changed here, per table, in one sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloudChanges {
    /// Records that were new here.
    pub created: u64,
    /// Records whose data changed here.
    pub updated: u64,
    /// Records deleted here.
    pub deleted: u64,
}

impl CloudChanges {
    pub fn total(&self) -> u64 {
        self.created + self.updated + self.deleted
    }

    pub(crate) fn add(&mut self, other: CloudChanges) {
        self.created += other.created;
        self.updated += other.updated;
        self.deleted += other.deleted;
    }
}

/// The outcome of one finished sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Operations the server took.
    pub pushed: u64,
    /// Operations the server refused (parked).
    pub rejected: u64,
    /// Operations left to retry later.
    pub failed: u64,
    /// What the server changed here, per table.
    pub from_cloud: BTreeMap<String, CloudChanges>,
    /// Records and deletions received (including this device's own changes coming back).
    pub pulled: u64,
    pub push_requests: u64,
    pub pull_requests: u64,
    /// Pull-and-push-again rounds caused by `409 conflict`.
    pub conflict_rounds: u32,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    /// Time spent pushing and pulling (the rest is local bookkeeping).
    pub push_ms: u64,
    pub pull_ms: u64,
}

impl SyncSummary {
    /// Records the server created, changed or deleted here.
    pub fn changed_from_cloud(&self) -> u64 {
        self.from_cloud.values().map(CloudChanges::total).sum()
    }
}

impl fmt::Display for SyncSummary {
    /// A line for a toast: "2 items updated from cloud, 5 changes sent".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: u64, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        let n = self.changed_from_cloud();
        write!(f, "{n} {} updated from cloud", plural(n, "item", "items"))?;
        write!(
            f,
            ", {} {} sent",
            self.pushed,
            plural(self.pushed, "change", "changes")
        )?;
        if self.rejected > 0 {
            write!(f, ", {} rejected", self.rejected)?;
        }
        if self.failed > 0 {
            write!(f, ", {} to retry", self.failed)?;
        }
        Ok(())
    }
}

/// A snapshot of syncing, for a progress bar, a status line or a settings screen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncProgress {
    pub state: SyncState,
    /// Set while `state` is `Syncing`.
    pub phase: Option<Phase>,
    /// The current (or last) sync, per table.
    pub tables: BTreeMap<String, TableProgress>,
    /// Pull progress as positions in the server's change sequence: (reached, target). The target is the
    /// server's sequence when the pull started; it is known once a pull needs more than one page.
    pub pull_position: Option<(i64, i64)>,
    /// Where the pull started (the saved cursor).
    pub pull_start: i64,
    /// When a sync last finished without error (epoch ms).
    pub last_synced_at: Option<i64>,
    pub last_error: Option<String>,
    /// The last sync failed because the server could not be reached.
    pub offline: bool,
    /// The summary of the last finished sync.
    pub last_summary: Option<SyncSummary>,
    /// The server's event stream is connected: changes made on other devices are pulled within moments.
    pub live: bool,
}

impl SyncProgress {
    /// 0 to 100: operations pushed (done, failed or rejected) and changes pulled, out of what is known.
    /// 100 when the sync is not running.
    pub fn percentage(&self) -> f64 {
        if self.state != SyncState::Syncing {
            return 100.0;
        }
        let to_push: u64 = self.tables.values().map(|t| t.to_push).sum();
        let pushed: u64 = self
            .tables
            .values()
            .map(|t| (t.pushed + t.failed + t.rejected).min(t.to_push))
            .sum();
        let (pull_done, pull_total) = match (self.phase, self.pull_position) {
            (Some(Phase::Pull), Some((reached, target))) if target > self.pull_start => (
                (reached - self.pull_start).clamp(0, target - self.pull_start) as u64,
                (target - self.pull_start) as u64,
            ),
            (Some(Phase::Pull), _) => (0, 0),
            // Before the pull, count it as one unknown unit so that the push alone never shows 100%.
            _ => (0, 1),
        };
        let total = to_push + pull_total;
        if total == 0 {
            return 0.0;
        }
        100.0 * (pushed + pull_done) as f64 / total as f64
    }

    /// Whether `table` has work in the running sync: operations still being pushed, or the pull.
    pub fn is_syncing(&self, table: &str) -> bool {
        self.state == SyncState::Syncing
            && match self.phase {
                Some(Phase::Pull) => true,
                Some(Phase::Push) => self.tables.get(table).is_some_and(|t| !t.push_finished()),
                None => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(
        phase: Phase,
        tables: &[(&str, u64, u64)],
        pull: Option<(i64, i64)>,
    ) -> SyncProgress {
        SyncProgress {
            state: SyncState::Syncing,
            phase: Some(phase),
            tables: tables
                .iter()
                .map(|&(name, to_push, pushed)| {
                    (
                        name.to_string(),
                        TableProgress {
                            to_push,
                            pushed,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            pull_position: pull,
            pull_start: 100,
            ..Default::default()
        }
    }

    fn check(p: SyncProgress, expected: f64) {
        assert!(
            (p.percentage() - expected).abs() < 0.01,
            "{} != {expected}: {p:?}",
            p.percentage()
        );
    }

    #[test]
    fn percentage_counts_push_and_pull() {
        check(
            progress(Phase::Push, &[("a", 10, 5), ("b", 9, 0)], None),
            25.0,
        );
        check(progress(Phase::Push, &[("a", 0, 0)], None), 0.0);
        check(progress(Phase::Pull, &[("a", 10, 10)], None), 100.0);
        check(
            progress(Phase::Pull, &[("a", 10, 10)], Some((150, 200))),
            100.0 * 60.0 / 110.0,
        );
        check(progress(Phase::Pull, &[], Some((400, 200))), 100.0);
        check(SyncProgress::default(), 100.0);
    }

    #[test]
    fn tables_are_syncing_while_their_work_is_open() {
        let p = progress(Phase::Push, &[("a", 10, 5), ("b", 3, 3)], None);
        assert!(p.is_syncing("a") && !p.is_syncing("b") && !p.is_syncing("c"));
        assert!(progress(Phase::Pull, &[], None).is_syncing("c"));
    }

    #[test]
    fn summaries_read_as_toasts() {
        let mut s = SyncSummary {
            pushed: 5,
            ..Default::default()
        };
        s.from_cloud.insert(
            "friends".into(),
            CloudChanges {
                created: 1,
                updated: 1,
                deleted: 0,
            },
        );
        assert_eq!(s.to_string(), "2 items updated from cloud, 5 changes sent");
        s.rejected = 1;
        s.pushed = 1;
        s.from_cloud.clear();
        assert_eq!(
            s.to_string(),
            "0 items updated from cloud, 1 change sent, 1 rejected"
        );
    }
}
