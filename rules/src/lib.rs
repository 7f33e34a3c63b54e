//! # syncgate-rules
//!
//! PowerSync-compatible sync rules: a YAML file of SQL queries that decides which rows go into
//! which **buckets**, and which buckets each connection may download.
//!
//! - [`value`]: SQLite-style values, truthiness, number and JSON formatting.
//! - [`sql`]: the SQL dialect's parser (hand-written, position-preserving).
//! - [`functions`]: scalar functions and operators.
//! - [`pgtype`]: how a Postgres column value (as logical replication sends it) becomes a synced value.
//!
//! Rules are compiled once and evaluated many times: evaluation never re-parses SQL.

pub mod compat;
pub mod error;
pub mod functions;
pub mod pgtype;
pub mod sql;
pub mod value;

pub use compat::{Compatibility, TimestampPrecision};
pub use error::EvalError;
pub use value::{SqliteType, SqliteValue};
