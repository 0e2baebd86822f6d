//! Syncline's core: the schema, record validation and normalisation, the wire types of the sync protocol and
//! the JSON writer for pull responses.
//!
//! This crate does no I/O and its logic reads no clock: the store and the server pass time and data in.
//! Everything that decides what a valid record is, or what a pull response looks like, lives here so both
//! storage backends and the client SDK agree on it. So do the closed names the server and its clients share:
//! the API's error codes ([`ErrorCode`]), the import error codes ([`ImportErrorCode`]), the protocol's
//! header names ([`headers`]) and the [`clock`] abstraction every library takes its wall-clock time from.

pub mod clock;
#[cfg(test)]
mod doc_tables;
mod error;
mod error_code;
pub mod headers;
mod import;
mod names;
mod plan;
mod record;
mod schema;
mod value;
mod wire;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::CoreError;
pub use error_code::{ErrorCode, UnknownErrorCode};
pub use import::{ImportErrorCode, ImportPhase, ImportState, ImportStatus, UnknownName, progress};
pub use names::{is_safe_id, is_valid_name};
pub use plan::{
    OnTombstone, RowFailure, TableWrites, Upsert, WriteBatch, check_cursor, plan_bulk, plan_push,
};
pub use record::{NormalizedRecord, RowError, RowErrorCode, normalize_record, render_record};
pub use schema::{
    Column, ColumnConfig, ColumnSpec, ColumnType, ParentConfig, ParentRef, Schema, Table,
    TableConfig,
};
pub use value::MAX_DEPTH;
pub use wire::{
    BulkCounts, BulkRequest, ErrorBody, MAX_CURSOR, Migration, MigrationColumns, PullRequest,
    PullResponse, PullWriter, PushOutcome, PushRequest, PushResponse, RejectedRecord, RejectedRow,
    TableChanges, TableCounts,
};
