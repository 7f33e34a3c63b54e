//! # syncgate-client
//!
//! A local SQLite database that stays in sync with Postgres through a PowerSync-compatible service (the
//! syncgate gateway, or PowerSync itself). The app declares a [`Schema`]; synced rows are stored
//! schemaless and each app table is a view over them, so the app reads and writes plain SQL tables.
//!
//! - [`database`]: the local database — op log, synced rows, upload queue, schema views.
//! - [`sync`]: the protocol as a sans-IO state machine (events in, instructions out), tested with golden
//!   transcripts.
//! - [`driver`]: the tokio loop that runs the state machine and a [`BackendConnector`].
//! - [`transport`]: the sync stream over HTTP (NDJSON) or WebSocket (RSocket, BSON lines).
//!
//! Data reaches the app's tables only at a complete checkpoint whose bucket checksums all match, and never
//! while local writes await acknowledgement (except priority-0 buckets).

mod changes;
pub mod database;
pub mod driver;
mod error;
pub mod schema;
pub mod sync;
pub mod transport;

pub use database::{ApplyOutcome, CrudEntry, CrudTransaction, LocalDatabase};
pub use driver::{BackendConnector, Credentials, SyncDriver, SyncOptions};
pub use error::ClientError;
pub use schema::{Column, ColumnType, Index, Schema, Table};
pub use sync::RequestOptions;
pub use transport::ConnectionMethod;
