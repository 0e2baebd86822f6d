//! The HTTP routes: pull (streamed), push, bulk, and the operational endpoints. Handlers parse and check the
//! request, then run the store on a blocking thread; they never panic on input and every error is an
//! [`ApiError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use syncline_core::headers;
use syncline_core::{
    BulkCounts, BulkRequest, Clock, ErrorCode, PullRequest, PushOutcome, PushRequest, Schema,
    plan_bulk, plan_push,
};
use syncline_store::{IdempotencyKey, PullSink, Store, StoreError, WriteOutcome};
use tokio::sync::mpsc;

use crate::activity::ClientReport;
use crate::auth::{Authenticator, Principal, TokenError};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub schema: Arc<Schema>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub imports: Arc<syncline_import::Importer>,
    pub config: Arc<Config>,
    pub events: Arc<crate::events::Events>,
    /// Wall-clock time: the store's timestamps, the dashboard's `now`, garbage collection.
    pub clock: Arc<dyn Clock>,
    /// Pulls streaming now, per user (`server.max_pulls_per_user`).
    pub(crate) pulls: Arc<PullSlots>,
    /// Counts finished pulls for the dashboard off their request path.
    pub(crate) recorder: Arc<crate::recorder::PullRecorder>,
}

/// How many pulls each user has streaming. A slot is held while the pull's store snapshot is open.
#[derive(Debug, Default)]
pub(crate) struct PullSlots(std::sync::Mutex<std::collections::HashMap<String, usize>>);

impl PullSlots {
    /// A slot for `user`, or `None` when `max` of theirs are streaming already.
    fn take(self: &Arc<Self>, user: &str, max: usize) -> Option<PullSlot> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(user.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PullSlot {
            slots: self.clone(),
            user: user.to_string(),
        })
    }
}

struct PullSlot {
    slots: Arc<PullSlots>,
    user: String,
}

impl Drop for PullSlot {
    fn drop(&mut self) {
        let mut held = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// Builds the router with every route, the metrics middleware and request tracing.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.server.cors_allowed_origins);
    let router = Router::new()
        .route(
            "/",
            get(|| async { asset(ASSET_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset(ASSET_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(ASSET_CSS, "text/css; charset=utf-8") }),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/sync/pull", post(pull))
        .route("/v1/sync/push", post(push))
        .route("/v1/sync/bulk", post(bulk))
        .route("/v1/me", get(me))
        .route("/v1/events", get(crate::events::stream))
        .route("/v1/admin/gc", post(admin_gc))
        .merge(crate::imports::routes())
        .merge(crate::activity::routes())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state);
    // Outermost, so that a preflight is answered before authentication and every answer, errors included,
    // carries the headers a browser needs to read it.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The CORS policy for web apps on `origins` (`server.cors_allowed_origins`), if any: the methods and request
/// headers the API takes, the response headers a client reads, preflights cached for 10 minutes. No
/// credentials: tokens travel in `Authorization`, never in cookies.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked at start-up (`ServerSection::check`): each is a plain ASCII origin, compared in the form a
        // browser sends.
        AllowOrigin::list(
            origins
                .iter()
                .map(|o| crate::config::serialized_origin(o))
                .filter_map(|o| HeaderValue::from_str(&o).ok()),
        )
    };
    let name = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                name(headers::IDEMPOTENCY_KEY),
                name(headers::DEVICE),
                name(headers::OUTBOX_PENDING),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                name(headers::IDEMPOTENT_REPLAYED),
                name(headers::SERVER_TIMING),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The dashboard, embedded in the binary: no build step, no files to deploy.
const ASSET_HTML: &str = include_str!("../assets/index.html");
pub(crate) const ASSET_JS: &str = include_str!("../assets/app.js");
const ASSET_CSS: &str = include_str!("../assets/app.css");

/// Serves an embedded asset. The page holds a bearer token: scripts and styles come from this server only,
/// and no other site may frame it.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let started = Instant::now();
    let mut response = match head_error(&request) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
    let elapsed = started.elapsed();
    let headers = response.headers_mut();
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    // W3C Server Timing: the time from routing the request to its answer's head, in milliseconds. For an
    // answer sent whole (every one but a long, streamed pull or an event stream) that includes all its work.
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={:.3}", elapsed.as_secs_f64() * 1e3))
    {
        headers.insert(
            header::HeaderName::from_static(syncline_core::headers::SERVER_TIMING),
            value,
        );
    }
    state
        .metrics
        .observe_request(&route, response.status().as_u16(), elapsed.as_secs_f64());
    response
}

/// Requests whose head another HTTP reader could take differently, refused with 400 before any route
/// runs, and their connection closed (what follows them may be a smuggled request):
/// - RFC 9112 §3.2: an HTTP/1.1 request without a `Host` header, or any request with more than one;
/// - RFC 9112 §6.1: `chunked` named more than once (a sender "MUST NOT apply chunked more than once"; hyper
///   reads such a body as chunked). hyper itself refuses other codings, and answers a request with both
///   `Transfer-Encoding` and `Content-Length` by the first alone, then closes the connection (§6.1's "MUST").
fn head_error(request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    let missing = hosts == 0 && request.version() == axum::http::Version::HTTP_11;
    if missing || hosts > 1 {
        return Some(
            ApiError::new(
                ErrorCode::InvalidRequest,
                "an HTTP/1.1 request needs exactly one Host header",
            )
            .closing(),
        );
    }
    let codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let codings = codings.flat_map(|v| v.to_str().unwrap_or("?").split(','));
    if codings.count() > 1 {
        return Some(
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Transfer-Encoding may name chunked once, and nothing else",
            )
            .closing(),
        );
    }
    None
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../../docs/openapi.json"),
    )
}

/// The authenticated caller, from `Authorization: Bearer <JWT>`.
pub struct User(pub Principal);

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<User, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                ErrorCode::MissingToken,
                "send Authorization: Bearer <token>",
            )
            .without_bearer());
        };
        let not_bearer = || {
            ApiError::new(
                ErrorCode::InvalidToken,
                "the Authorization header must be `Bearer <token>`",
            )
        };
        // Two headers could each be read as "the" credential by one proxy or another: neither is.
        if parts
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                "send one Authorization header, not several",
            ));
        }
        // `credentials = auth-scheme [ 1*SP token68 ]`, the scheme compared case-insensitively (RFC 9110
        // §11.1, §11.4); another scheme means no bearer token was sent (RFC 6750 §3.1).
        let value = value.to_str().map_err(|_| not_bearer())?.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(not_bearer().without_bearer());
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(not_bearer());
        }
        match state.auth.verify(token, state.clock.now_ms()) {
            Ok(p) => Ok(User(p)),
            Err(TokenError::Expired) => Err(ApiError::new(
                ErrorCode::TokenExpired,
                "the token has expired; get a new one",
            )),
            Err(TokenError::Invalid) => Err(ApiError::new(
                ErrorCode::InvalidToken,
                "the token is not valid for this server",
            )),
            Err(TokenError::InvalidSubject) => Err(ApiError::new(
                ErrorCode::InvalidSubject,
                "the token's `sub` must be 1-255 bytes with no control characters",
            )),
        }
    }
}

/// Reads the whole body, refusing more than the configured limit with 413, a body with a `Content-Encoding`
/// with 415, and a body that does not arrive within `server.body_read_timeout_secs` with 408 (after each of
/// these the connection is closed: the rest of the body is never read).
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    // No body is ever decompressed (so no decompression bomb): a coded body is refused, not misread as
    // JSON. RFC 9110 §15.5.16: 415, with `Accept-Encoding` naming what is accepted.
    let coded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|coding| !coding.trim().eq_ignore_ascii_case("identity"));
    if coded {
        return Err(ApiError::new(
            ErrorCode::UnsupportedContentEncoding,
            "request bodies are read as sent: send them without Content-Encoding",
        )
        .closing());
    }
    let limit = state.config.server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
        .closing()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let deadline = Duration::from_secs_f64(state.config.server.body_read_timeout_secs);
    let read = tokio::time::timeout(
        deadline,
        http_body_util::Limited::new(body, limit).collect(),
    );
    let Ok(collected) = read.await else {
        return Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} s",
                state.config.server.body_read_timeout_secs
            ),
        )
        .closing());
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        // Broken chunked framing (a chunk size or extension or trailer hyper refuses): nothing after it on
        // the connection can be trusted.
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body could not be read (broken chunked encoding?)",
        )
        .closing()),
    }
}

/// Parses a request body as JSON. The whole body must be UTF-8 (RFC 8259 §8.1), including the parts the
/// request type ignores, which serde_json alone would skip unchecked. A body that is not JSON is
/// `malformed_json` even where its first error is one of shape.
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!(
                "the body is not valid UTF-8 (at byte {}); JSON is UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    serde_json::from_str(text).map_err(|e| {
        // serde stops at the first error: a shape error early in a body that is not JSON at all (`[[[…`
        // unclosed, `{…} trailing`) is reported as what it is. Only refused bodies are read twice.
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(syntax) if e.classify() == serde_json::error::Category::Data => {
                ApiError::from_json(&syntax)
            }
            _ => ApiError::from_json(&e),
        }
    })
}

/// `Query<T>` whose rejection is the JSON error (`invalid_query`) instead of axum's plain text.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))
    }
}

/// `Path<T>` whose rejection is the JSON error (`invalid_path`) instead of axum's plain text.
pub(crate) struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.body_text()))
    }
}

fn idempotency_key(
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(headers::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    let valid = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if !valid {
        return Err(ApiError::new(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1-128 characters from [A-Za-z0-9_.:-]",
        ));
    }
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(body);
    Ok(Some(IdempotencyKey {
        key: key.to_string(),
        request_hash: hash.finalize().into(),
    }))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        ApiError::internal()
    })?
}

/// Refuses a request carrying more records than `server.max_records_per_request` (413).
fn check_count(state: &AppState, n: usize) -> Result<(), ApiError> {
    let limit = state.config.server.max_records_per_request;
    if n <= limit {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::TooManyRecords,
        format!("{n} records in one request; at most {limit} are allowed: split it"),
    ))
}

/// Applies a planned batch in one store transaction (counting it for the dashboard there when it applies),
/// then tells the user's other devices (on any instance) when something changed. In that order: a dashboard
/// that refreshes on the event must find the push's activity (its device, its outbox) already there.
fn write_and_announce(
    state: &AppState,
    user: &str,
    batch: &syncline_core::WriteBatch<'_>,
    key: Option<&IdempotencyKey>,
    respond: &dyn Fn(&syncline_store::WriteSummary) -> String,
    activity: &syncline_store::SyncActivity<'_>,
) -> Result<WriteOutcome, ApiError> {
    let outcome = state.store.write_counted(
        user,
        batch,
        key,
        state.clock.now_ms(),
        respond,
        Some(activity),
    )?;
    announce(state, user, &outcome);
    Ok(outcome)
}

fn write_response(
    outcome: WriteOutcome,
    state: &AppState,
    pushed: impl Fn(&syncline_store::WriteSummary) -> u64,
) -> Response {
    match outcome {
        WriteOutcome::Applied { summary, response } => {
            Metrics::add(&state.metrics.records_pushed, pushed(&summary));
            ([(header::CONTENT_TYPE, "application/json")], response).into_response()
        }
        WriteOutcome::Replayed { response } => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    header::HeaderName::from_static(headers::IDEMPOTENT_REPLAYED),
                    HeaderValue::from_static("true"),
                ),
            ],
            response,
        )
            .into_response(),
        WriteOutcome::Conflict { conflicts } => {
            Metrics::add(&state.metrics.push_conflicts, 1);
            let n: usize = conflicts.values().map(Vec::len).sum();
            ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{n} record(s) changed on the server since lastPulledAt; pull, then push again"
                ),
            )
            .with(
                "conflicts",
                serde_json::to_value(conflicts).unwrap_or_default(),
            )
            .into_response()
        }
    }
}

/// Tells the user's other devices (on any instance) that there is something new to pull.
fn announce(state: &AppState, user: &str, outcome: &WriteOutcome) {
    if let WriteOutcome::Applied { summary, .. } = outcome
        && summary.counts.values().any(|c| c.upserted + c.deleted > 0)
    {
        state.events.changes(user, summary.sequence);
    }
}

pub(crate) fn applied_count(summary: &syncline_store::WriteSummary) -> u64 {
    summary
        .counts
        .values()
        .map(|c| c.upserted + c.deleted)
        .sum()
}

async fn push(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report = ClientReport::from_headers(&headers)?;
    let bytes = read_body(&state, &headers, body).await?;
    let key = idempotency_key(&headers, "push", &bytes)?;
    let st = state.clone();
    let outcome = blocking(move || {
        let request: PushRequest = parse_json(&bytes)?;
        check_count(&st, request.changes.values().map(|c| c.len()).sum())?;
        let (batch, rejected) = plan_push(&st.schema, &request, &user.user)?;
        if !rejected.is_empty() {
            Metrics::add(&st.metrics.records_rejected, rejected.len() as u64);
            tracing::info!(rejected = rejected.len(), "push carried invalid records");
        }
        let respond = |s: &syncline_store::WriteSummary| {
            serde_json::to_string(&PushOutcome {
                timestamp: s.sequence,
                rejected: rejected.clone(),
            })
            .unwrap_or_default()
        };
        let first = rejected
            .first()
            .map(|r| format!("{}/{}: {}", r.table, r.id, r.message));
        let n = rejected.len() as u64;
        let message = crate::activity::rejection_message(n, first.clone());
        let activity = report.applied(n, message.as_deref(), st.clock.now_ms());
        let outcome =
            write_and_announce(&st, &user.user, &batch, key.as_ref(), &respond, &activity)?;
        if !matches!(outcome, WriteOutcome::Applied { .. }) {
            report.pushed(&st, &user.user, &outcome, n, first);
        }
        Ok(outcome)
    })
    .await?;
    Ok(write_response(outcome, &state, applied_count))
}

async fn bulk(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report = ClientReport::from_headers(&headers)?;
    let bytes = read_body(&state, &headers, body).await?;
    let key = idempotency_key(&headers, "bulk", &bytes)?;
    let st = state.clone();
    let outcome = blocking(move || {
        let request: BulkRequest = parse_json(&bytes)?;
        let upserts = request.upserts.values().map(Vec::len);
        check_count(
            &st,
            upserts.chain(request.deletes.values().map(Vec::len)).sum(),
        )?;
        let batch = plan_bulk(&st.schema, &request, &user.user).inspect_err(|e| {
            if let syncline_core::CoreError::InvalidRows(rows) = e {
                Metrics::add(&st.metrics.bulk_rows_invalid, rows.len() as u64);
                if let Some(first) = rows.first() {
                    let first = format!("{}[{}]: {}", first.table, first.index, first.message);
                    report.refused(&st, &user.user, rows.len() as u64, first);
                }
            }
        })?;
        let respond = |s: &syncline_store::WriteSummary| {
            serde_json::to_string(&BulkCounts {
                counts: s.counts.clone(),
                timestamp: s.sequence,
            })
            .unwrap_or_default()
        };
        let activity = report.applied(0, None, st.clock.now_ms());
        let outcome =
            write_and_announce(&st, &user.user, &batch, key.as_ref(), &respond, &activity)?;
        if !matches!(outcome, WriteOutcome::Applied { .. }) {
            report.pushed(&st, &user.user, &outcome, 0, None);
        }
        Ok(outcome)
    })
    .await?;
    Ok(write_response(outcome, &state, applied_count))
}

/// One piece of a pull answer on its way to the HTTP response.
struct Chunk {
    bytes: Bytes,
    /// The answer's last piece: the pull is done (and counted).
    last: bool,
}

/// Sends pull output to the HTTP response as it is produced; fails when the client has gone. The last chunk
/// is held back until [`ChannelSink::end`], so the answer completes only after the pull is counted, and an
/// answer of one chunk reaches the connection in one message.
struct ChannelSink {
    tx: mpsc::Sender<Result<Chunk, ApiError>>,
    last: Option<Vec<u8>>,
}

impl ChannelSink {
    fn send(&self, item: Result<Chunk, ApiError>) -> Result<(), StoreError> {
        self.tx.blocking_send(item).map_err(|_| StoreError::Aborted)
    }

    /// Sends the held-back last chunk.
    fn end(&mut self) {
        if let Some(chunk) = self.last.take() {
            let bytes = Bytes::from(chunk);
            let _ = self.send(Ok(Chunk { bytes, last: true }));
        }
    }
}

impl PullSink for ChannelSink {
    fn write(&mut self, chunk: Vec<u8>) -> Result<(), StoreError> {
        let bytes = Bytes::from(chunk);
        self.send(Ok(Chunk { bytes, last: false }))
    }

    fn finish(&mut self, chunk: Vec<u8>) -> Result<(), StoreError> {
        self.last = Some(chunk);
        Ok(())
    }
}

async fn pull(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report = ClientReport::from_headers(&headers)?;
    let bytes = read_body(&state, &headers, body).await?;
    let request: PullRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        PullRequest::default()
    } else {
        parse_json(&bytes)?
    };
    let max = state.config.sync.max_pull_limit;
    if let Some(limit) = request.limit
        && !(1..=max).contains(&limit)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be between 1 and {max}"),
        )
        .with("maxLimit", json!(max)));
    }
    // A cursor ahead of the user's counter moves the counter up to it: see `syncline_core::MAX_CURSOR`.
    syncline_core::check_cursor(request.last_pulled_at)?;
    let max = state.config.server.max_pulls_per_user;
    let Some(slot) = state.pulls.take(&user.user, max) else {
        return Err(ApiError::new(
            ErrorCode::TooManyPulls,
            format!("{max} pulls of this user are streaming already; retry when one has finished"),
        )
        .retry_after(1));
    };
    // One chunk in the channel (and one in hyper's buffer) bound the memory a pull holds, whatever the
    // dataset size and however slowly the client reads. When the connection is dropped (the client left, or
    // stopped reading for `write_timeout_secs`), the next send fails and the store ends its snapshot.
    let (tx, mut rx) = mpsc::channel::<Result<Chunk, ApiError>>(1);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut sink = ChannelSink { tx, last: None };
        match st.store.pull(&user.user, &request, &mut sink) {
            Ok(stats) => {
                Metrics::add(&st.metrics.records_pulled, stats.records);
                Metrics::add(&st.metrics.tombstones_pulled, stats.deleted);
                // Queued before the last chunk goes, so a read after the answer waits for it.
                report.pulled(&st, user.user, stats.records + stats.deleted);
                sink.end();
            }
            Err(StoreError::Aborted) => tracing::info!("client went away during a pull"),
            Err(e) => {
                let _ = sink.send(Err(ApiError::from(e)));
            }
        }
    });
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return Err(e),
        None => return Err(ApiError::internal()),
    };
    // An answer of one chunk (every small pull) goes out whole, with its length, once the pull is done; a
    // longer one streams as it is produced.
    if first.last {
        return Ok(([(header::CONTENT_TYPE, "application/json")], first.bytes).into_response());
    }
    let rest = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            Ok(chunk) => Some((Ok(chunk.bytes), (!chunk.last).then_some(rx))),
            Err(e) => Some((Err(std::io::Error::other(e.message)), None)),
        }
    });
    let stream = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(first.bytes)]).chain(rest);
    use futures_util::StreamExt;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn me(State(state): State<AppState>, User(user): User) -> Result<Response, ApiError> {
    let st = state.clone();
    let name = user.user.clone();
    let stats = blocking(move || Ok(st.store.user_stats(&name)?)).await?;
    Ok(Json(json!({"user": user.user, "admin": user.admin, "stats": stats})).into_response())
}

async fn admin_gc(State(state): State<AppState>, User(user): User) -> Result<Response, ApiError> {
    if !user.admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route needs an admin token",
        ));
    }
    let stats = run_gc(&state).await?;
    Ok(Json(json!({"tombstonesCollected": stats.tombstones, "idempotencyKeysCollected": stats.idempotency_keys})).into_response())
}

/// How long the dashboard's activity time series keeps its buckets.
const ACTIVITY_RETENTION_MS: i64 = 30 * 86_400_000;

/// Collects tombstones older than the retention, expired idempotency keys and old activity buckets.
pub async fn run_gc(state: &AppState) -> Result<syncline_store::GcStats, ApiError> {
    let st = state.clone();
    blocking(move || {
        let now = st.clock.now_ms();
        let retention = (st.config.sync.tombstone_retention_days * 86_400_000.0) as i64;
        let ttl = (st.config.sync.idempotency_ttl_hours * 3_600_000.0) as i64;
        let stats = st.store.collect_garbage(now - retention, now - ttl)?;
        st.store.prune_activity(now - ACTIVITY_RETENTION_MS)?;
        if stats.tombstones > 0 || stats.idempotency_keys > 0 {
            tracing::info!(
                tombstones = stats.tombstones,
                idempotency_keys = stats.idempotency_keys,
                "garbage collected"
            );
        }
        Ok(stats)
    })
    .await
}

/// Runs garbage collection every `gc_interval_seconds` until the process ends.
pub async fn gc_loop(state: AppState) {
    let every = Duration::from_secs(state.config.sync.gc_interval_seconds.max(1));
    // The first collection runs one interval after start, not at start: a restart loop must not turn into a
    // collection loop, and a just-started server answers requests first.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticker.tick().await;
        let _ = run_gc(&state).await;
    }
}
