//! # syncgate-rules
//!
//! PowerSync-compatible sync rules: a YAML file of SQL queries that decides which rows go into
//! which **buckets**, and which buckets each connection may download.
//!
//! - [`compile`] turns a rules file into [`SyncRules`] plus [`Diagnostic`]s with file positions.
//! - [`SyncRules::plan_table`] resolves the queries of one source table once;
//!   [`SyncRules::evaluate_row`] then places each row of that table into buckets, and
//!   [`SyncRules::evaluate_parameter_row`] turns rows of parameter tables into lookup entries.
//! - [`SyncRules::resolve_buckets`] gives a connection its buckets, answering parameter lookups
//!   through a callback (the gateway's parameter index).
//! - [`pgtype`] maps a Postgres column value, as logical replication sends it, to a synced value.
//!
//! Rules are compiled once and evaluated many times: evaluation never re-parses SQL.
//! Building blocks: [`value`] (SQLite-style values, truthiness, number and JSON formatting),
//! [`sql`] (the SQL dialect's hand-written, position-preserving parser), [`functions`]
//! (scalar functions and operators), [`yaml`] (YAML with positions).

mod calendar;
pub mod cases;
pub mod compat;
mod compiler;
pub mod diagnostic;
pub mod error;
mod expr;
pub mod functions;
pub mod pgtype;
pub mod request;
pub mod sql;
mod sync_rules;
pub mod table;
pub mod value;
pub mod yaml;

pub use compat::{Compatibility, TimestampPrecision};
pub use compiler::{CompileOptions, compile};
pub use diagnostic::{Diagnostic, Severity};
pub use error::EvalError;
pub use request::{ConnectionRequest, RequestParameters, StreamSubscription};
pub use sync_rules::{
    BucketOrigin, CompileResult, EvaluatedRow, ParameterEntry, ParameterLookup, ResolvedBucket,
    ResolvedConnection, ResolvedStream, RowError, RowEvaluation, SyncRules, TablePlan,
};
pub use table::{SchemaTable, SourceSchema, SourceTable, TablePattern};
pub use value::{SqliteType, SqliteValue};
