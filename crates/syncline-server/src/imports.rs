//! The import routes: start, status, stop and reset of a user's imports from a third-party source, the list
//! of every source, and the user's credentials (`/v1/connections/{source}`), which are sealed before they
//! are stored and never returned or logged.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use syncline_import::{ImportError, RunnerMode};

use crate::app::{ApiPath, AppState, User, blocking, now_ms, parse_json, read_body};
use crate::error::ApiError;

/// The import routes, merged into the main router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/imports", get(list))
        .route("/v1/imports/{source}/start", post(start))
        .route("/v1/imports/{source}/status", get(status))
        .route("/v1/imports/{source}/stop", post(stop))
        .route("/v1/imports/{source}/reset", post(reset))
        .route("/v1/connections/{source}", put(connect).delete(disconnect))
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> ApiError {
        match e {
            ImportError::UnknownSource(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_source", e.to_string())
            }
            ImportError::NoConnection(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_connection", e.to_string())
            }
            ImportError::Sealed => ApiError::new(
                StatusCode::CONFLICT,
                "connection_unreadable",
                "the stored connection cannot be opened: connect again",
            ),
            ImportError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "import error");
                ApiError::internal()
            }
        }
    }
}

/// One source for one user: what it is and what a connect form asks for, whether the user is connected, every
/// stream's state (and the table it fills), and what each stream's latest walk wrote (`outcomes`).
async fn states(state: &AppState, user: &str, source: &str) -> Result<Value, ApiError> {
    let states = state.imports.status(user, source).await?;
    let connected = state.imports.connected(user, source).await?;
    let config = state.config.imports.sources.get(source);
    let (st, name) = (state.clone(), user.to_string());
    let activity = blocking(move || Ok(st.store.user_activity(Some(&name), 1)?.pop())).await?;
    let outcomes: Vec<_> = activity
        .into_iter()
        .flat_map(|a| a.imports)
        .filter(|o| o.source == source)
        .collect();
    Ok(json!({
        "source": source,
        "kind": config.map(|c| c.kind.as_str()),
        "fields": state.imports.credential_fields(source)?,
        "tables": config.map(|c| &c.streams),
        "connected": connected,
        "streams": states,
        "outcomes": outcomes,
        "now": now_ms(),
    }))
}

async fn list(State(state): State<AppState>, User(user): User) -> Result<Response, ApiError> {
    let mut sources = Vec::new();
    for source in state.imports.source_names() {
        sources.push(states(&state, &user.user, &source).await?);
    }
    Ok(Json(json!({"now": now_ms(), "sources": sources})).into_response())
}

async fn start(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.imports.start(&user.user, &source).await?;
    let body = states(&state, &user.user, &source).await?;
    let status = match state.imports.mode() {
        RunnerMode::Background => StatusCode::ACCEPTED,
        RunnerMode::Call => StatusCode::OK,
    };
    Ok((status, Json(body)).into_response())
}

async fn status(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

async fn stop(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.imports.stop(&user.user, &source).await?;
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

async fn reset(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.imports.reset(&user.user, &source).await?;
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

/// Body: the credential as a JSON object (`{"access_token": "..."}`, `{"api_key": "...", "steam_id": "..."}`).
async fn connect(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let Value::Object(credential) = parse_json::<Value>(&body)? else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "send the credential as a JSON object, e.g. {\"access_token\": \"...\"}",
        ));
    };
    let fields = state.imports.credential_fields(&source)?;
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| {
            credential
                .get(f.as_str())
                .and_then(Value::as_str)
                .is_none_or(|v| v.trim().is_empty())
        })
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_credential",
            format!(
                "a `{source}` credential needs {}: {} missing or empty",
                join_fields(&fields),
                join_fields(&missing)
            ),
        ));
    }
    state
        .imports
        .connect(&user.user, &source, credential)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn disconnect(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    if state.imports.disconnect(&user.user, &source).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_connection",
            format!("no connection for source `{source}`"),
        ))
    }
}

/// `a`, `a and b`, `a, b and c`, each in backquotes.
fn join_fields(fields: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = fields.iter().map(|f| format!("`{}`", f.as_ref())).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}
