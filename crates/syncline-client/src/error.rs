//! The one error type of the client crate. Every variant is cheap to clone (causes from other crates are kept
//! behind an `Arc`), so a sync's failure can be both returned and shown in the progress stream.

use std::sync::Arc;

use syncline_core::ErrorCode;

/// What went wrong in a local operation or a sync.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("local database: {0}")]
    Database(#[source] Arc<rusqlite::Error>),
    #[error("JSON: {0}")]
    Json(#[source] Arc<serde_json::Error>),
    #[error(
        "table name {0:?} is not valid: use lowercase letters, digits and `_`, starting with a letter"
    )]
    InvalidTable(String),
    #[error("record id {0:?} is not valid: use 1-64 characters from [A-Za-z0-9_.-]")]
    InvalidId(String),
    #[error("a record must be a JSON object, with column names that are valid names")]
    NotAnObject,
    #[error("record `{table}/{id}` does not exist")]
    NotFound { table: String, id: String },
    #[error("record `{table}/{id}` already exists")]
    AlreadyExists { table: String, id: String },
    #[error("the server cannot be reached: {0}")]
    Offline(String),
    /// The TLS handshake with the server failed (code `tls_failed`): the message names the host and the
    /// reason (unknown issuer, name mismatch, expired). Not retried: the certificate will not change by
    /// itself.
    #[error("{0}")]
    Tls(String),
    #[error("the server answered {status} `{code}`: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the server refused the token (`{code}`): {message}")]
    Unauthorized { code: String, message: String },
    #[error("the push still conflicted after {0} pull-and-push rounds")]
    ConflictsPersist(u32),
    #[error("the server's answer could not be read: {0}")]
    BadResponse(String),
    #[error("the sync task has stopped")]
    Stopped,
}

impl ClientError {
    /// The server's error code, for an error answer with a code this version knows: match on it instead of
    /// the text (`ClientError::Server { code, .. }` keeps the text of any code).
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Unauthorized { code, .. } => {
                ErrorCode::parse(code)
            }
            ClientError::Tls(_) => Some(ErrorCode::TlsFailed),
            _ => None,
        }
    }

    /// Network trouble: worth retrying later without any change.
    pub fn is_offline(&self) -> bool {
        matches!(self, ClientError::Offline(_))
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> ClientError {
        ClientError::Database(Arc::new(e))
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> ClientError {
        ClientError::Json(Arc::new(e))
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
