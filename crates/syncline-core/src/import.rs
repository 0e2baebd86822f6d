//! The import state machine: where one (user, source, stream, phase) import stands, and the pure transitions
//! between its statuses. The import runner decides *when* a transition happens; this module decides *what* the
//! state looks like afterwards.
//!
//! No I/O and no clock: every transition takes the current time in milliseconds since the epoch.
//!
//! ```text
//! none ─start─▶ pending ─running─▶ running ─batch_applied─▶ running ─completed─▶ success
//!                 │  ▲                  │                                       │
//!                 │  └──── paused ◀─────┘ (the step's budget ran out)           │
//!                 │  └──────────────────────── start ◀──────────────────────────┘ (and from stopped,
//!                 ├─stopped──▶ stopped                                             rate_limited, error)
//!                 ├─rate_limited──▶ rate_limited (until rate_limit_reset_at)
//!                 └─failed──▶ error
//! ```
//!
//! `running` means a step holds the import's lease and is walking this stream. A step that dies leaves
//! `running` behind; the runner treats it like `pending` once the lease has expired.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an import stands. Closed: the wire and the stores use the snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Never started.
    #[default]
    None,
    /// Started and not finished: the runner (or the next `start` call) takes the next step.
    Pending,
    /// A step is running now.
    Running,
    /// The last walk completed.
    Success,
    /// Stopped by the user; `start` resumes from the checkpoint.
    Stopped,
    /// The source refused more requests until `rate_limit_reset_at`.
    RateLimited,
    /// Failed; `error` says why. `start` retries from the checkpoint.
    Error,
}

impl ImportStatus {
    pub const ALL: [ImportStatus; 7] = [
        ImportStatus::None,
        ImportStatus::Pending,
        ImportStatus::Running,
        ImportStatus::Success,
        ImportStatus::Stopped,
        ImportStatus::RateLimited,
        ImportStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImportStatus::None => "none",
            ImportStatus::Pending => "pending",
            ImportStatus::Running => "running",
            ImportStatus::Success => "success",
            ImportStatus::Stopped => "stopped",
            ImportStatus::RateLimited => "rate_limited",
            ImportStatus::Error => "error",
        }
    }

    /// Whether the runner should take steps for an import in this status.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ImportStatus::Pending | ImportStatus::Running | ImportStatus::RateLimited
        )
    }
}

impl fmt::Display for ImportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status or phase name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown import {kind} `{value}`")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
}

impl FromStr for ImportStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImportStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "status",
                value: s.to_string(),
            })
    }
}

/// Why an import stopped in `error`: the stable `error_code` of its state (docs/protocol.md §10.1 lists each
/// one, with what to do). Stored and sent as the snake_case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImportErrorCode {
    /// The service refused the credential (a 401, a missing field, a bad key): connect again.
    AuthExpired,
    /// Renewing the access token was refused (`invalid_grant`).
    AuthRevoked,
    /// The token endpoint refused the app's `client_id`/`client_secret` (`invalid_client`).
    AuthClientRefused,
    /// The token endpoint refused the scope (`invalid_scope`).
    AuthScopeMissing,
    /// Any other refusal of a sign-in or a renewal.
    AuthRefused,
    /// XSTS: the Microsoft account has no Xbox profile.
    AuthNoXboxAccount,
    /// XSTS: a child account outside a Microsoft family.
    AuthChildAccount,
    /// XSTS: Xbox Live is not available in the account's region.
    AuthRegionUnavailable,
    /// XSTS: the account must be verified (adult verification) first.
    AuthVerificationRequired,
    /// PlayStation refused the NPSSO.
    AuthNpssoRefused,
    /// The source lacks the configuration its sign-in needs (`client_id`).
    AuthNotConfigured,
    /// The source does not sign in this way (no consent flow).
    AuthUnsupported,
    /// The source's sign-in configuration is not usable (its authorize url is not a url).
    AuthMisconfigured,
    /// The credential works, but the profile's privacy settings hide the data.
    ProfilePrivate,
    /// Any other 403 that is not a rate limit: the credential lacks a scope or permission.
    MissingPermission,
    /// The TLS handshake failed; the message names the host and the reason.
    TlsFailed,
    /// The service is down (5xx, timeouts, refused connections) after the retries of one step.
    UpstreamUnavailable,
    /// Any other refusal (4xx).
    UpstreamFailed,
    /// The service sent rows that do not fit the table.
    InvalidRows,
}

impl ImportErrorCode {
    /// Every code, in the order of docs/protocol.md's table.
    pub const ALL: [ImportErrorCode; 19] = [
        ImportErrorCode::AuthExpired,
        ImportErrorCode::AuthRevoked,
        ImportErrorCode::AuthClientRefused,
        ImportErrorCode::AuthScopeMissing,
        ImportErrorCode::AuthRefused,
        ImportErrorCode::AuthNoXboxAccount,
        ImportErrorCode::AuthChildAccount,
        ImportErrorCode::AuthRegionUnavailable,
        ImportErrorCode::AuthVerificationRequired,
        ImportErrorCode::AuthNpssoRefused,
        ImportErrorCode::AuthNotConfigured,
        ImportErrorCode::AuthUnsupported,
        ImportErrorCode::AuthMisconfigured,
        ImportErrorCode::ProfilePrivate,
        ImportErrorCode::MissingPermission,
        ImportErrorCode::TlsFailed,
        ImportErrorCode::UpstreamUnavailable,
        ImportErrorCode::UpstreamFailed,
        ImportErrorCode::InvalidRows,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ImportErrorCode::AuthExpired => "auth_expired",
            ImportErrorCode::AuthRevoked => "auth_revoked",
            ImportErrorCode::AuthClientRefused => "auth_client_refused",
            ImportErrorCode::AuthScopeMissing => "auth_scope_missing",
            ImportErrorCode::AuthRefused => "auth_refused",
            ImportErrorCode::AuthNoXboxAccount => "auth_no_xbox_account",
            ImportErrorCode::AuthChildAccount => "auth_child_account",
            ImportErrorCode::AuthRegionUnavailable => "auth_region_unavailable",
            ImportErrorCode::AuthVerificationRequired => "auth_verification_required",
            ImportErrorCode::AuthNpssoRefused => "auth_npsso_refused",
            ImportErrorCode::AuthNotConfigured => "auth_not_configured",
            ImportErrorCode::AuthUnsupported => "auth_unsupported",
            ImportErrorCode::AuthMisconfigured => "auth_misconfigured",
            ImportErrorCode::ProfilePrivate => "profile_private",
            ImportErrorCode::MissingPermission => "missing_permission",
            ImportErrorCode::TlsFailed => "tls_failed",
            ImportErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ImportErrorCode::UpstreamFailed => "upstream_failed",
            ImportErrorCode::InvalidRows => "invalid_rows",
        }
    }

    /// A refusal of the account (the codes beginning with `auth`): the person must connect again or the
    /// operator fix the source's configuration.
    pub fn is_auth(self) -> bool {
        self.as_str().starts_with("auth_")
    }
}

impl fmt::Display for ImportErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImportErrorCode {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImportErrorCode::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "error code",
                value: s.to_string(),
            })
    }
}

impl TryFrom<&str> for ImportErrorCode {
    type Error = UnknownName;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl Serialize for ImportErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ImportErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a stored `error_code`; a code this version does not know (written by a newer one) reads as none,
/// so the state, its checkpoint and its message still load.
fn lenient_error_code<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ImportErrorCode>, D::Error> {
    let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
    Ok(text.and_then(|t| t.parse().ok()))
}

/// Which walk an import state belongs to: the first full walk, or the later walks over what is new.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ImportPhase {
    #[default]
    Initial,
    Incremental,
}

impl ImportPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportPhase::Initial => "initial",
            ImportPhase::Incremental => "incremental",
        }
    }
}

impl fmt::Display for ImportPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImportPhase {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "initial" => Ok(ImportPhase::Initial),
            "incremental" => Ok(ImportPhase::Incremental),
            _ => Err(UnknownName {
                kind: "phase",
                value: s.to_string(),
            }),
        }
    }
}

/// The state of one (user, source, stream, phase) import: seed 004's `sync_states` row.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportState {
    pub source: String,
    pub stream: String,
    pub phase: ImportPhase,
    pub status: ImportStatus,
    /// 0–100; 100 only once the walk is complete.
    pub progress: u8,
    /// Items fetched and applied in the current walk.
    pub processed: u64,
    /// What the source says the walk holds, when it says.
    pub total_estimated: Option<u64>,
    /// Where the next page starts (an offset, a cursor or a url, opaque to everything but the connector).
    /// `None`: from the beginning.
    pub checkpoint: Option<String>,
    /// The newest item seen by the last completed walk; an incremental walk stops when it reaches it.
    pub watermark: Option<String>,
    /// The newest item seen by the walk in progress; becomes `watermark` when it completes.
    pub next_watermark: Option<String>,
    pub is_complete: bool,
    pub rate_limit_hit_at: Option<i64>,
    pub rate_limit_reset_at: Option<i64>,
    pub rate_limit_remaining: Option<u64>,
    pub started_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub last_success_at: Option<i64>,
    /// A stable code for the last failure.
    #[serde(default, deserialize_with = "lenient_error_code")]
    pub error_code: Option<ImportErrorCode>,
    pub error: Option<String>,
    /// Bumped by `start`, `stopped` and `reset`: a step that loaded an older generation must not save.
    pub generation: i64,
}

impl ImportState {
    /// A state that was never started.
    pub fn new(source: &str, stream: &str, phase: ImportPhase) -> ImportState {
        ImportState {
            source: source.to_string(),
            stream: stream.to_string(),
            phase,
            ..Default::default()
        }
    }

    /// Asked to run: a finished, stopped or failed walk starts (or resumes from its checkpoint). A completed
    /// walk starts over from the beginning, keeping its watermark. Pending and rate-limited imports keep
    /// their state (a rate limit is not lifted by asking again), and so does a walk stopped while it waited
    /// out a rate limit that is not over: it is rate limited again, until the same reset.
    pub fn start(&mut self, now_ms: i64) {
        match self.status {
            ImportStatus::Pending | ImportStatus::Running | ImportStatus::RateLimited => return,
            ImportStatus::None | ImportStatus::Success => {
                self.checkpoint = None;
                self.processed = 0;
                self.total_estimated = None;
                self.progress = 0;
                self.is_complete = false;
                self.completed_at = None;
                self.next_watermark = None;
                self.started_at = Some(now_ms);
            }
            ImportStatus::Stopped | ImportStatus::Error => {
                self.started_at.get_or_insert(now_ms);
            }
        }
        self.status = match self.rate_limit_reset_at {
            Some(reset) if reset > now_ms => ImportStatus::RateLimited,
            _ => ImportStatus::Pending,
        };
        self.error = None;
        self.error_code = None;
        self.generation += 1;
        self.updated_at = Some(now_ms);
    }

    /// A batch was fetched and applied: `processed` more items, the source's latest total and the checkpoint
    /// after the batch. `newest` is the first item's watermark of a walk, kept for the next incremental walk.
    pub fn batch_applied(
        &mut self,
        processed: u64,
        total: Option<u64>,
        checkpoint: Option<String>,
        newest: Option<String>,
        now_ms: i64,
    ) {
        self.processed += processed;
        if total.is_some() {
            self.total_estimated = total;
        }
        self.checkpoint = checkpoint;
        if self.next_watermark.is_none() {
            self.next_watermark = newest;
        }
        if self.status != ImportStatus::Stopped {
            self.status = ImportStatus::Running;
        }
        self.rate_limit_hit_at = None;
        self.rate_limit_reset_at = None;
        // A total that grows mid-walk (a track saved meanwhile) lowers the ratio; what is shown never
        // goes back within a walk.
        self.progress = self
            .progress
            .max(progress(self.processed, self.total_estimated, false));
        self.updated_at = Some(now_ms);
    }

    /// A step took the stream up: pending (or a rate limit that is over) becomes running.
    pub fn running(&mut self, now_ms: i64) {
        if matches!(
            self.status,
            ImportStatus::Pending | ImportStatus::RateLimited
        ) {
            self.status = ImportStatus::Running;
            self.updated_at = Some(now_ms);
        }
    }

    /// The step walking the stream ended before the stream did (its budget ran out): the next step goes on.
    pub fn paused(&mut self, now_ms: i64) {
        if self.status == ImportStatus::Running {
            self.status = ImportStatus::Pending;
            self.updated_at = Some(now_ms);
        }
    }

    /// The source said "not before `reset_at`".
    pub fn rate_limited(&mut self, reset_at: i64, remaining: Option<u64>, now_ms: i64) {
        self.status = ImportStatus::RateLimited;
        self.rate_limit_hit_at = Some(now_ms);
        self.rate_limit_reset_at = Some(reset_at);
        self.rate_limit_remaining = remaining;
        self.updated_at = Some(now_ms);
    }

    /// Whether a rate-limited import may run again at `now_ms`.
    pub fn rate_limit_over(&self, now_ms: i64) -> bool {
        self.rate_limit_reset_at.is_none_or(|t| now_ms >= t)
    }

    /// Stopped by the user: the step in flight finishes its batch, then nothing runs until `start`.
    pub fn stopped(&mut self, now_ms: i64) {
        if matches!(self.status, ImportStatus::None | ImportStatus::Success) {
            return;
        }
        self.status = ImportStatus::Stopped;
        self.generation += 1;
        self.updated_at = Some(now_ms);
    }

    /// Failed with a stable `code` and a message for a person. The code is an [`ImportErrorCode`]; one given
    /// as text this version does not know leaves `error_code` empty (as when such a state is read).
    pub fn failed<C: TryInto<ImportErrorCode>>(
        &mut self,
        code: C,
        message: impl Into<String>,
        now_ms: i64,
    ) {
        self.status = ImportStatus::Error;
        self.error_code = code.try_into().ok();
        self.error = Some(message.into());
        self.updated_at = Some(now_ms);
    }

    /// The walk reached the end of the stream.
    pub fn completed(&mut self, now_ms: i64) {
        self.status = ImportStatus::Success;
        self.is_complete = true;
        self.progress = 100;
        self.checkpoint = None;
        if self.next_watermark.is_some() {
            self.watermark = self.next_watermark.take();
        }
        self.rate_limit_hit_at = None;
        self.rate_limit_reset_at = None;
        self.error = None;
        self.error_code = None;
        self.completed_at = Some(now_ms);
        self.last_success_at = Some(now_ms);
        self.updated_at = Some(now_ms);
    }

    /// Forgets everything: the next `start` walks the stream from the beginning as if it were new.
    pub fn reset(&mut self) {
        let generation = self.generation + 1;
        *self = ImportState::new(&self.source, &self.stream, self.phase);
        self.generation = generation;
    }
}

/// Progress in percent: 100 only when complete; otherwise at most 99, and 0 while the total is unknown.
pub fn progress(processed: u64, total: Option<u64>, complete: bool) -> u8 {
    if complete {
        return 100;
    }
    match total {
        Some(t) if t > 0 => (processed.saturating_mul(100) / t).min(99) as u8,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ImportState {
        ImportState::new("steam", "owned_games", ImportPhase::Initial)
    }

    #[test]
    fn error_codes_are_their_text_on_the_wire_and_an_unknown_stored_one_still_loads() {
        for c in ImportErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ImportErrorCode>(), Ok(c));
            let mut s = state();
            s.failed(c, "m", 1);
            let text = serde_json::to_string(&s).unwrap();
            assert!(text.contains(&format!("\"error_code\":\"{c}\"")), "{text}");
            assert_eq!(serde_json::from_str::<ImportState>(&text).unwrap(), s);
        }
        let mut s = state();
        s.failed(ImportErrorCode::UpstreamFailed, "kept", 1);
        let newer = serde_json::to_string(&s)
            .unwrap()
            .replace("upstream_failed", "from_a_newer_version");
        let read: ImportState = serde_json::from_str(&newer).unwrap();
        assert_eq!(
            (read.status, read.error_code, read.error.as_deref()),
            (ImportStatus::Error, None, Some("kept"))
        );
    }

    /// docs/protocol.md's table of import `error_code`s lists every code, and nothing else.
    #[test]
    fn import_error_codes_are_documented() {
        let documented: std::collections::BTreeSet<String> =
            crate::doc_tables::rows("### 10.1 Imports from third-party APIs", "| `error_code` |")
                .iter()
                .flat_map(|row| crate::doc_tables::codes(&row[0]))
                .map(str::to_string)
                .collect();
        let enumerated: std::collections::BTreeSet<String> = ImportErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        assert_eq!(documented, enumerated);
    }

    #[test]
    fn names_round_trip_and_are_snake_case_on_the_wire() {
        for s in ImportStatus::ALL {
            assert_eq!(s.as_str().parse::<ImportStatus>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(ImportStatus::RateLimited.to_string(), "rate_limited");
        assert!("paused".parse::<ImportStatus>().is_err());
        for p in [ImportPhase::Initial, ImportPhase::Incremental] {
            assert_eq!(p.as_str().parse::<ImportPhase>(), Ok(p));
        }
    }

    #[test]
    fn a_walk_goes_pending_then_success() {
        let mut s = state();
        s.start(10);
        assert_eq!(
            (s.status, s.started_at, s.generation),
            (ImportStatus::Pending, Some(10), 1)
        );
        s.running(15);
        assert_eq!(s.status, ImportStatus::Running);
        s.batch_applied(50, Some(200), Some("50".into()), Some("w1".into()), 20);
        assert_eq!(
            (s.processed, s.progress, s.checkpoint.as_deref()),
            (50, 25, Some("50"))
        );
        s.paused(25);
        assert_eq!(s.status, ImportStatus::Pending, "the budget ran out");
        s.running(26);
        s.batch_applied(150, Some(200), None, Some("w2".into()), 30);
        assert_eq!(s.progress, 99, "100 only when complete");
        s.completed(40);
        assert_eq!(s.status, ImportStatus::Success);
        assert_eq!((s.progress, s.is_complete), (100, true));
        assert_eq!(
            s.watermark.as_deref(),
            Some("w1"),
            "the first page's newest"
        );
        assert_eq!((s.completed_at, s.last_success_at), (Some(40), Some(40)));
    }

    #[test]
    fn stop_then_start_resumes_from_the_checkpoint() {
        let mut s = state();
        s.start(1);
        s.batch_applied(10, None, Some("10".into()), None, 2);
        s.stopped(3);
        assert_eq!((s.status, s.generation), (ImportStatus::Stopped, 2));
        s.start(4);
        assert_eq!(s.status, ImportStatus::Pending);
        assert_eq!((s.checkpoint.as_deref(), s.processed), (Some("10"), 10));
        assert_eq!(s.started_at, Some(1));
    }

    #[test]
    fn a_completed_walk_starts_over_but_keeps_its_watermark() {
        let mut s = state();
        s.start(1);
        s.batch_applied(10, Some(10), Some("10".into()), Some("w".into()), 2);
        s.completed(3);
        s.start(4);
        assert_eq!((s.checkpoint, s.processed, s.is_complete), (None, 0, false));
        assert_eq!(s.watermark.as_deref(), Some("w"));
        assert_eq!(s.last_success_at, Some(3));
    }

    #[test]
    fn rate_limits_hold_until_their_reset_time() {
        let mut s = state();
        s.start(1);
        s.rate_limited(5_000, Some(0), 1_000);
        assert_eq!(s.status, ImportStatus::RateLimited);
        s.start(2_000);
        assert_eq!(
            s.status,
            ImportStatus::RateLimited,
            "asking again does not lift it"
        );
        assert!(!s.rate_limit_over(4_999));
        assert!(s.rate_limit_over(5_000));
        s.running(5_000);
        s.batch_applied(1, None, None, None, 5_001);
        assert_eq!(s.status, ImportStatus::Running);
        assert_eq!(s.rate_limit_reset_at, None);
    }

    #[test]
    fn failures_keep_the_checkpoint_and_reset_forgets_everything() {
        let mut s = state();
        s.start(1);
        s.batch_applied(10, None, Some("10".into()), None, 2);
        s.failed(ImportErrorCode::AuthExpired, "the credential expired", 3);
        assert_eq!(s.error_code, Some(ImportErrorCode::AuthExpired));
        s.start(4);
        assert_eq!(
            (s.error.as_deref(), s.checkpoint.as_deref()),
            (None, Some("10"))
        );
        let before = s.generation;
        s.reset();
        assert_eq!(s.status, ImportStatus::None);
        assert_eq!((s.checkpoint, s.processed), (None, 0));
        assert_eq!(s.generation, before + 1);
    }

    #[test]
    fn a_walk_stopped_during_a_rate_limit_wait_waits_for_the_same_reset_when_started() {
        let mut s = state();
        s.start(1);
        s.batch_applied(10, Some(100), Some("10".into()), None, 2);
        s.rate_limited(5_000, Some(0), 3);
        s.stopped(4);
        s.start(5);
        assert_eq!(s.status, ImportStatus::RateLimited);
        assert_eq!(s.rate_limit_reset_at, Some(5_000));
        assert_eq!(s.checkpoint.as_deref(), Some("10"));
        // Once the reset has passed, a stopped walk is simply pending again.
        s.stopped(6);
        s.start(5_000);
        assert_eq!(s.status, ImportStatus::Pending);
    }

    #[test]
    fn progress_never_goes_back_within_a_walk_and_reaches_100_only_at_the_end() {
        let mut s = state();
        s.start(1);
        s.batch_applied(50, Some(100), Some("50".into()), None, 2);
        assert_eq!(s.progress, 50);
        // The source's total grew (something was added meanwhile): 100 of 400 would be 25%.
        s.batch_applied(50, Some(400), Some("100".into()), None, 3);
        assert_eq!(s.progress, 50);
        s.batch_applied(250, Some(400), Some("350".into()), None, 4);
        assert_eq!(s.progress, 87);
        s.rate_limited(10, Some(0), 5);
        assert_eq!(s.progress, 87);
        s.batch_applied(60, Some(400), Some("410".into()), None, 6);
        assert_eq!(s.progress, 99, "more than the total, not complete: 99");
        s.completed(7);
        assert_eq!(s.progress, 100);
        // A new walk starts from 0 again.
        s.start(8);
        assert_eq!(s.progress, 0);
    }

    #[test]
    fn progress_arithmetic() {
        assert_eq!(progress(0, None, false), 0);
        assert_eq!(progress(5, Some(0), false), 0);
        assert_eq!(progress(1, Some(3), false), 33);
        assert_eq!(progress(7, Some(5), false), 99);
        assert_eq!(progress(0, None, true), 100);
    }
}
