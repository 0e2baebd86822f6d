//! The import routes: start, status, stop and reset of a user's imports from a third-party source, the list
//! of every source, and the user's credentials (`/v1/connections/{source}`), which are sealed before they
//! are stored and never returned or logged.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use syncline_import::{ImportError, RunnerMode};

use crate::app::{AppState, User};
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

async fn states(state: &AppState, user: &str, source: &str) -> Result<Value, ApiError> {
    let states = state.imports.status(user, source).await?;
    let connected = state.imports.connected(user, source).await?;
    Ok(json!({"source": source, "connected": connected, "streams": states}))
}

async fn list(State(state): State<AppState>, User(user): User) -> Result<Response, ApiError> {
    let mut sources = Vec::new();
    for source in state.imports.source_names() {
        sources.push(states(&state, &user.user, &source).await?);
    }
    Ok(Json(json!({"sources": sources})).into_response())
}

async fn start(
    State(state): State<AppState>,
    User(user): User,
    Path(source): Path<String>,
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
    Path(source): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

async fn stop(
    State(state): State<AppState>,
    User(user): User,
    Path(source): Path<String>,
) -> Result<Response, ApiError> {
    state.imports.stop(&user.user, &source).await?;
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

async fn reset(
    State(state): State<AppState>,
    User(user): User,
    Path(source): Path<String>,
) -> Result<Response, ApiError> {
    state.imports.reset(&user.user, &source).await?;
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

/// Body: the credential as a JSON object (`{"access_token": "..."}`, `{"api_key": "...", "steam_id": "..."}`).
async fn connect(
    State(state): State<AppState>,
    User(user): User,
    Path(source): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Ok(Value::Object(credential)) = serde_json::from_slice::<Value>(&body) else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "send the credential as a JSON object",
        ));
    };
    state
        .imports
        .connect(&user.user, &source, credential)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn disconnect(
    State(state): State<AppState>,
    User(user): User,
    Path(source): Path<String>,
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
