//! The error type of the import crate.

use syncline_core::ImportErrorCode;
use syncline_store::StoreError;

/// Why an import request could not be served. Failures of a source are not errors of this kind: they land in
/// the import state (`error`, `rate_limited`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("unknown import source `{0}`")]
    UnknownSource(String),
    #[error("no connection for source `{0}`: PUT /v1/connections/{0} first")]
    NoConnection(String),
    #[error("the stored connection cannot be opened with the configured encryption key")]
    Sealed,
    #[error("invalid import configuration: {0}")]
    Config(String),
    /// What was sent to connect an account lacks what the source needs.
    #[error("{0}")]
    InvalidCredential(String),
    /// The service refused to connect the account; `code` begins with `auth`, or is `tls_failed`.
    #[error("{message}")]
    Refused {
        code: ImportErrorCode,
        message: String,
    },
    /// The service could not be reached to connect the account.
    #[error("the service could not be reached to connect the account: {0}")]
    Unavailable(String),
    /// The service's sign-in is rate limiting: try again after `retry_after_secs`.
    #[error("the service is rate limiting sign-ins: try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The source has no consent (authorization-code) flow configured.
    #[error("source `{0}` has no consent flow: configure its `client_id`")]
    NoConsentFlow(String),
    /// The `state` of a consent callback is missing, forged, for another source or expired.
    #[error("{0}")]
    ConsentState(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
