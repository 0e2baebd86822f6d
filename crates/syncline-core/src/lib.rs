//! Syncline's core: the schema, record validation and normalisation, the wire types of the sync protocol and
//! the JSON writer for pull responses.
//!
//! This crate does no I/O and reads no clock: the store and the server pass time and data in. Everything that
//! decides what a valid record is, or what a pull response looks like, lives here so both storage backends and
//! the client SDK agree on it.

mod error;
mod import;
mod names;
mod plan;
mod record;
mod schema;
mod value;
mod wire;

pub use error::CoreError;
pub use import::{ImportPhase, ImportState, ImportStatus, UnknownName, progress};
pub use names::{is_safe_id, is_valid_name};
pub use plan::{OnTombstone, RowFailure, TableWrites, Upsert, WriteBatch, plan_bulk, plan_push};
pub use record::{NormalizedRecord, RowError, RowErrorCode, normalize_record, render_record};
pub use schema::{
    Column, ColumnConfig, ColumnSpec, ColumnType, ParentConfig, ParentRef, Schema, Table,
    TableConfig,
};
pub use value::MAX_DEPTH;
pub use wire::{
    BulkCounts, BulkRequest, ErrorBody, Migration, MigrationColumns, PullRequest, PullResponse,
    PullWriter, PushOutcome, PushRequest, PushResponse, RejectedRecord, RejectedRow, TableChanges,
    TableCounts,
};
