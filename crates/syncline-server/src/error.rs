//! Errors: `ServerError` for starting the server, and `ApiError`, the JSON error every route answers with:
//! a stable `code`, the right HTTP status, a message for a person, and never an internal detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use syncline_core::CoreError;
use syncline_store::StoreError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("schema: {0}")]
    Schema(#[from] CoreError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// An error answer: status, stable code, message, and optional extra fields (conflicts, row errors).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<(&'static str, Value)>,
    /// Answer with `Connection: close` (the request was not read whole, so the connection cannot be reused).
    pub close: bool,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            close: false,
            retry_after: None,
        }
    }

    /// Closes the connection after this answer.
    pub fn closing(mut self) -> ApiError {
        self.close = true;
        self
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the request was not applied",
        )
    }

    pub fn with(mut self, key: &'static str, value: Value) -> ApiError {
        self.extra = Some((key, value));
        self
    }

    /// A JSON body that failed to parse: syntax errors are `malformed_json`, shape errors `invalid_request`.
    pub fn from_json(e: &serde_json::Error) -> ApiError {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
            Category::Data => ApiError::bad_request(
                "invalid_request",
                format!("the body has the wrong shape: {e}"),
            ),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        match e {
            CoreError::UnknownTable(_) => ApiError::bad_request("unknown_table", e.to_string()),
            CoreError::InvalidId { .. } => ApiError::bad_request("invalid_id", e.to_string()),
            CoreError::InvalidRows(rows) => {
                let n = rows.len();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_rows",
                    format!("{n} invalid row(s); nothing was applied"),
                )
                .with("errors", serde_json::to_value(rows).unwrap_or_default())
            }
            other => ApiError::bad_request("invalid_request", other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ),
            StoreError::Busy => {
                tracing::warn!("every database connection stayed busy for the acquire timeout");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_busy",
                    "the server is busy (every database connection is in use); nothing was applied, retry later",
                );
                e.retry_after = Some(1);
                e
            }
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "the database is unavailable");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the database is unavailable (restarting?); retry later",
                );
                e.retry_after = Some(5);
                e
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        use axum::http::{HeaderValue, header};
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
