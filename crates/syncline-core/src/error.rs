//! The error type of the core crate: what can be wrong with a schema configuration or a sync request.

/// A schema configuration or a request that cannot be used, with what it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoreError {
    #[error(
        "table name `{0}` is not valid: use lowercase letters, digits and `_`, starting with a letter"
    )]
    InvalidTableName(String),
    #[error("column `{column}` of table `{table}` is not a valid or allowed column name")]
    InvalidColumnName { table: String, column: String },
    #[error("table `{table}` declares parent table `{parent}`, which is not declared")]
    UnknownParentTable { table: String, parent: String },
    #[error(
        "table `{table}` declares parent column `{column}`, which is not one of its string columns"
    )]
    InvalidParentColumn { table: String, column: String },
    #[error("owner column `{column}` of table `{table}` is not one of its string columns")]
    InvalidOwnerColumn { table: String, column: String },
    #[error("the parent declarations form a cycle through table `{0}`")]
    ParentCycle(String),
    #[error("the schema declares no tables")]
    Empty,
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    #[error(
        "id {id:?} in table `{table}` is not a safe id: use 1-64 characters from [A-Za-z0-9_.-]"
    )]
    InvalidId { table: String, id: String },
    #[error("lastPulledAt must be null or a sequence from 0 to {max}, got {0}", max = crate::MAX_CURSOR)]
    InvalidCursor(i64),
    #[error("{} invalid row(s); nothing was applied", .0.len())]
    InvalidRows(Vec<crate::RowFailure>),
}
