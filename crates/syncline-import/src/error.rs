//! The error type of the import crate.

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
    #[error(transparent)]
    Store(#[from] StoreError),
}
