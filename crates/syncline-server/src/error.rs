//! Errors: `ServerError` for starting the server, and `ApiError`, the JSON error every route answers with:
//! a stable `code`, the HTTP status that code goes with (`ErrorCode::status`, the one mapping), a message for
//! a person, and never an internal detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use syncline_core::{CoreError, ErrorCode};
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

/// An error answer: stable code (which decides the status), message, and optional extra fields (conflicts,
/// row errors).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub extra: Option<(&'static str, Value)>,
    /// Answer with `Connection: close` (the request was not read whole, so the connection cannot be reused).
    pub close: bool,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// A `401` whose request sent no bearer token at all (no `Authorization` header, or another scheme): its
    /// `WWW-Authenticate` challenge then names no error (RFC 6750 §3.1).
    pub(crate) no_bearer: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            extra: None,
            close: false,
            retry_after: None,
            no_bearer: false,
        }
    }

    /// A `401` for a request that carried no bearer token (see [`ApiError::no_bearer`]).
    pub(crate) fn without_bearer(mut self) -> ApiError {
        self.no_bearer = true;
        self
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

    /// The HTTP status of this answer: the one its code goes with.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            ErrorCode::Internal,
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
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {e}"),
            ),
            Category::Data => ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the body has the wrong shape: {e}"),
            ),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        match e {
            CoreError::UnknownTable(_) => ApiError::new(ErrorCode::UnknownTable, e.to_string()),
            CoreError::InvalidId { .. } => ApiError::new(ErrorCode::InvalidId, e.to_string()),
            CoreError::InvalidRows(rows) => {
                let n = rows.len();
                ApiError::new(
                    ErrorCode::InvalidRows,
                    format!("{n} invalid row(s); nothing was applied"),
                )
                .with("errors", serde_json::to_value(rows).unwrap_or_default())
            }
            other => ApiError::new(ErrorCode::InvalidRequest, other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::IdempotencyKeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used for a different request",
            ),
            StoreError::Busy => {
                tracing::warn!("every database connection stayed busy for the acquire timeout");
                ApiError::new(
                    ErrorCode::StorageBusy,
                    "the server is busy (every database connection is in use); nothing was applied, retry later",
                )
                .retry_after(1)
            }
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "the database is unavailable");
                ApiError::new(
                    ErrorCode::StorageUnavailable,
                    "the database is unavailable (restarting?); retry later",
                )
                .retry_after(5)
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::internal()
            }
        }
    }
}

/// The `WWW-Authenticate` header of a `401` (RFC 6750 §3): the `Bearer` scheme and its realm; for a token
/// that was sent and refused, also `error="invalid_token"` (expired, badly signed, malformed and bad-subject
/// tokens alike: §3.1 has one code for them) and the message as `error_description`, whose characters §3
/// limits to printable ASCII without `"` and `\`.
fn challenge(no_bearer: bool, message: &str) -> axum::http::HeaderValue {
    const REALM: &str = "Bearer realm=\"syncline\"";
    if no_bearer {
        return axum::http::HeaderValue::from_static(REALM);
    }
    let description: String = message
        .chars()
        .filter(|c| matches!(c, ' '..='~') && !matches!(c, '"' | '\\'))
        .collect();
    axum::http::HeaderValue::from_str(&format!(
        "{REALM}, error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| axum::http::HeaderValue::from_static(REALM))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"code": self.code.as_str(), "message": self.message});
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        use axum::http::{HeaderValue, header};
        let mut response = (
            status,
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
        if self.code == ErrorCode::UnsupportedContentEncoding {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                challenge(self.no_bearer, &self.message),
            );
        }
        response
    }
}
