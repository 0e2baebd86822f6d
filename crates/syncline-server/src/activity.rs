//! Sync activity for the dashboard: what a client says about itself on pull and push (`Syncline-Device`,
//! `Syncline-Outbox-Pending`), what each sync request moved or had rejected, and the read routes
//! `GET /v1/activity` (the caller's) and `GET /v1/admin/overview` (everyone's). A pull's count is queued for
//! the instance's [`crate::recorder::PullRecorder`]; an applied push counts itself in its own write
//! transaction; a refused or replayed push is one small store write on its request. Every read here first
//! lets the recorder write what was queued before it.
//!
//! Recording activity never fails a sync request: a store error is logged and the request goes on.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use syncline_core::ErrorCode;
use syncline_core::headers::{DEVICE as DEVICE_HEADER, OUTBOX_PENDING as OUTBOX_HEADER};
use syncline_store::{ACTIVITY_BUCKET_MS, SyncActivity, SyncKind, WriteOutcome};

use crate::app::{ApiQuery, AppState, User, blocking};
use crate::error::ApiError;

/// Users the admin overview lists at most (the most recently active).
const OVERVIEW_USERS: usize = 200;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/activity", get(mine))
        .route("/v1/admin/overview", get(overview))
}

/// What the client told about itself in its request headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientReport {
    device: Option<String>,
    outbox_pending: Option<u64>,
}

impl ClientReport {
    /// Reads the optional headers; a present but malformed one is a 400, so a client learns of its bug.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<ClientReport, ApiError> {
        let device = match headers.get(DEVICE_HEADER) {
            None => None,
            Some(v) => {
                let text = v.to_str().unwrap_or_default().trim();
                if text.is_empty()
                    || text.len() > 128
                    || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidDevice,
                        "Syncline-Device must be 1-128 visible ASCII characters",
                    ));
                }
                Some(text.to_string())
            }
        };
        let outbox_pending = match headers.get(OUTBOX_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidOutboxPending,
                            "Syncline-Outbox-Pending must be a whole number",
                        )
                    })?,
            ),
        };
        Ok(ClientReport {
            device,
            outbox_pending,
        })
    }

    fn activity(&self, kind: SyncKind, records: u64, at_ms: i64) -> SyncActivity<'_> {
        SyncActivity {
            kind,
            at_ms,
            requests: 1,
            device: self.device.as_deref(),
            outbox_pending: self.outbox_pending,
            records,
            rejected: 0,
            conflicts: 0,
            rejection: None,
        }
    }

    /// Queues a finished pull for the instance's [`crate::recorder::PullRecorder`], which writes it off the
    /// request path.
    pub(crate) fn pulled(self, state: &AppState, user: String, records: u64) {
        state.recorder.pulled(
            user,
            self.device,
            self.outbox_pending,
            records,
            state.clock.now_ms(),
        );
    }

    /// What an applied push or bulk write counts: the invalid records it left out (`rejected`, with
    /// `message` about them). The store adds what the write applied and counts it in the write's own
    /// transaction ([`syncline_store::SyncStore::write_counted`]).
    pub(crate) fn applied<'a>(
        &'a self,
        rejected: u64,
        message: Option<&'a str>,
        at_ms: i64,
    ) -> SyncActivity<'a> {
        let mut activity = self.activity(SyncKind::Push, 0, at_ms);
        activity.rejected = rejected;
        activity.rejection = message;
        activity
    }

    /// Records a push or bulk write that the store did not count itself (replayed or refused for conflicts;
    /// see [`ClientReport::applied`]): what it applied, the invalid records it left out (`rejected`, with a
    /// message about the first), or the conflicts that refused it. Call from a blocking thread.
    pub(crate) fn pushed(
        &self,
        state: &AppState,
        user: &str,
        outcome: &WriteOutcome,
        rejected: u64,
        first_rejection: Option<String>,
    ) {
        let mut activity = self.activity(SyncKind::Push, 0, state.clock.now_ms());
        let message;
        match outcome {
            WriteOutcome::Applied { summary, .. } => {
                activity.records = crate::app::applied_count(summary);
                activity.rejected = rejected;
                message = rejection_message(rejected, first_rejection);
            }
            WriteOutcome::Replayed { .. } => message = None,
            WriteOutcome::Conflict { conflicts } => {
                let n = conflicts.values().map(Vec::len).sum::<usize>() as u64;
                activity.conflicts = n;
                let tables: Vec<&str> = conflicts.keys().map(String::as_str).collect();
                message = Some(format!(
                    "{n} record(s) in {} changed on the server since the device last pulled; the push was refused (409)",
                    tables.join(", ")
                ));
            }
        }
        activity.rejection = message.as_deref();
        record(state, user, &activity);
    }

    /// Records a bulk write refused whole because rows were invalid. Call from a blocking thread.
    pub(crate) fn refused(&self, state: &AppState, user: &str, rejected: u64, first: String) {
        let message =
            format!("a bulk write of {rejected} invalid row(s) was refused (422); first: {first}");
        let mut activity = self.activity(SyncKind::Push, 0, state.clock.now_ms());
        activity.rejected = rejected;
        activity.rejection = Some(&message);
        record(state, user, &activity);
    }
}

/// What a person reads about a push that left out invalid records.
pub(crate) fn rejection_message(rejected: u64, first: Option<String>) -> Option<String> {
    first.map(|first| format!("{rejected} record(s) rejected as invalid; first: {first}"))
}

fn record(state: &AppState, user: &str, activity: &SyncActivity<'_>) {
    if let Err(e) = state.store.record_sync(user, activity) {
        tracing::warn!(error = %e, "could not record sync activity");
    }
}

/// `?hours=N`: how far back the time series goes (1 to 720, default 24).
#[derive(Debug, serde::Deserialize)]
struct Window {
    hours: Option<u32>,
}

impl Window {
    fn since(&self, now: i64) -> Result<i64, ApiError> {
        let hours = self.hours.unwrap_or(24);
        if !(1..=720).contains(&hours) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "hours must be between 1 and 720",
            ));
        }
        Ok(now - i64::from(hours) * 3_600_000)
    }
}

fn series(buckets: Vec<syncline_store::ActivityBucket>, since: i64) -> Value {
    json!({"bucketMs": ACTIVITY_BUCKET_MS, "since": since, "buckets": buckets})
}

/// `GET /v1/activity`: the caller's last contacts, devices, rejections, import outcomes and time series.
async fn mine(
    State(state): State<AppState>,
    User(user): User,
    ApiQuery(window): ApiQuery<Window>,
) -> Result<Response, ApiError> {
    let now = state.clock.now_ms();
    let since = window.since(now)?;
    let st = state.clone();
    let name = user.user.clone();
    let (activity, buckets) = blocking(move || {
        st.recorder.settle();
        let activity = st.store.user_activity(Some(&name), 1)?.pop();
        Ok((activity, st.store.activity_series(Some(&name), since)?))
    })
    .await?;
    let activity = activity.unwrap_or_else(|| syncline_store::UserActivity {
        user: user.user.clone(),
        ..Default::default()
    });
    Ok(
        Json(json!({"now": now, "activity": activity, "series": series(buckets, since)}))
            .into_response(),
    )
}

/// `GET /v1/admin/overview`: every user's imports (status, progress, errors) and sync activity, and the
/// records synced and imported over time by everyone. Admins only.
async fn overview(
    State(state): State<AppState>,
    User(user): User,
    ApiQuery(window): ApiQuery<Window>,
) -> Result<Response, ApiError> {
    if !user.admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route needs an admin token",
        ));
    }
    let now = state.clock.now_ms();
    let since = window.since(now)?;
    let st = state.clone();
    let (users, imports, buckets) = blocking(move || {
        st.recorder.settle();
        Ok((
            st.store.user_activity(None, OVERVIEW_USERS)?,
            st.store.all_import_states()?,
            st.store.activity_series(None, since)?,
        ))
    })
    .await?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, s) in &imports {
        *counts.entry(s.status.as_str()).or_default() += 1;
    }
    let imports: Vec<Value> = imports
        .iter()
        .map(|(user, s)| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["user"] = json!(user);
            v
        })
        .collect();
    Ok(Json(json!({
        "now": now,
        "users": users,
        "imports": imports,
        "importsByStatus": counts,
        "series": series(buckets, since),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(headers: &[(&'static str, &str)]) -> Result<ClientReport, &'static str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        ClientReport::from_headers(&map).map_err(|e| e.code.as_str())
    }

    #[test]
    fn client_headers_are_optional_and_checked() {
        assert_eq!(report(&[]), Ok(ClientReport::default()));
        assert_eq!(
            report(&[(DEVICE_HEADER, " phone-1 "), (OUTBOX_HEADER, "12")]),
            Ok(ClientReport {
                device: Some("phone-1".into()),
                outbox_pending: Some(12)
            })
        );
        assert_eq!(report(&[(DEVICE_HEADER, "")]), Err("invalid_device"));
        assert_eq!(
            report(&[(DEVICE_HEADER, &"x".repeat(129))]),
            Err("invalid_device")
        );
        assert_eq!(
            report(&[(OUTBOX_HEADER, "-1")]),
            Err("invalid_outbox_pending")
        );
        assert_eq!(
            report(&[(OUTBOX_HEADER, "many")]),
            Err("invalid_outbox_pending")
        );
    }
}
