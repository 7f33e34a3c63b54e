//! # The Postgres side of replication
//!
//! Everything syncgate reads from the source database: the replication slot, the initial snapshot and
//! the decoded change stream. No bucket storage lives here; the replicator consumes [`SourceEvent`]s and
//! decides what is durable.
//!
//! ## Invariants this module keeps (DESIGN.md)
//!
//! - **4, restartable replication.** [`ReplicationClient::ack`] is the only way a position reaches the
//!   server, and callers pass only a [`SourceEvent::Commit`]'s `end_lsn` once storage has made that
//!   transaction durable. Relation messages carry position 0/0 and a Begin can too, so nothing here ever
//!   resumes from an XLogData position. Acks are sent at once (not on an interval) so an ack made just
//!   before shutdown is not lost; after a crash the server re-sends everything after the last ack, and
//!   the replicator skips transactions whose commit LSN is at or below its stored LSN.
//! - **5, initial snapshot.** The slot is created first, exporting a snapshot
//!   ([`ReplicationClient::create_slot`]); [`SnapshotReader`] imports it on a second, ordinary
//!   connection *before* the replication session runs any other command (the exported snapshot dies
//!   with the session's next command), and copies tables in primary-key order, in chunks. Streaming
//!   then starts at the slot's consistent point, so nothing between snapshot and stream is lost.
//! - **8, read-only source.** Only `SELECT`s and replication commands are issued; [`checks`] verifies
//!   up front the privileges and settings this needs and says how to fix what is missing.
//!
//! Values stay in Postgres text form ([`ColumnValue::Text`]). The replication connection and the
//! snapshot connection both use [`SESSION_SETTINGS`], so the text is formatted the same way on both
//! paths and the rules' value mapping parses exactly one form.

pub mod checks;
pub mod error;
pub mod event;
pub mod plugin;
pub mod snapshot;
pub mod walstream;

pub use checks::{SourceRequirements, check_source};
pub use error::{ErrorKind, SourceError};
pub use event::{ColumnInfo, ColumnValue, OldRow, RelationInfo, ReplicaIdentity, SourceEvent};
pub use plugin::{PluginDecoder, tables_option};
pub use snapshot::{Chunk, SnapshotReader, TableLayout, TableName, table_layout};
pub use syncgate_protocol::{Lsn, ParseLsnError};
pub use walstream::WalstreamClient;

use std::future::Future;

/// Session settings for both source connections (notes/build.md): pgoutput and COPY format values as
/// the session says, and the value mapping expects ISO dates, `postgres` intervals, UTC offsets and
/// shortest-exact floats.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
];

/// A slot just created with an exported snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// Import with `SET TRANSACTION SNAPSHOT` before the replication session runs another command.
    pub snapshot_name: String,
    /// Streaming from here replays exactly what the snapshot does not contain.
    pub consistent_point: Lsn,
}

/// The logical decoding output plugin a slot decodes with. Fixed when the slot is created
/// (DESIGN invariant 9): a slot's `plugin` in `pg_replication_slots` says which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputPlugin {
    /// Postgres's built-in plugin: every table of a publication.
    Pgoutput,
    /// syncgate's plugin (pg-ext/): a compact binary format, filtered to the rules' tables in Postgres.
    Syncgate,
}

impl OutputPlugin {
    /// The plugin's name in `CREATE_REPLICATION_SLOT` and `pg_replication_slots.plugin`.
    pub fn name(self) -> &'static str {
        match self {
            OutputPlugin::Pgoutput => "pgoutput",
            OutputPlugin::Syncgate => "syncgate",
        }
    }

    pub fn from_name(name: &str) -> Option<OutputPlugin> {
        match name {
            "pgoutput" => Some(OutputPlugin::Pgoutput),
            "syncgate" => Some(OutputPlugin::Syncgate),
            _ => None,
        }
    }
}

impl std::fmt::Display for OutputPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// pgoutput protocol version. 1 is enough for syncgate today; 2 allows streaming of large in-progress
/// transactions later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoVersion {
    V1,
    V2,
}

/// `START_REPLICATION` options, per output plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOptions {
    Pgoutput {
        publication_names: Vec<String>,
        proto_version: ProtoVersion,
        /// `messages 'true'`: needed for write-checkpoint markers (`pg_logical_emit_message`).
        messages: bool,
    },
    Syncgate {
        /// The plugin's `tables` option ([`tables_option`]): only these tables' changes are sent.
        tables: String,
        /// Forward logical messages (write-checkpoint markers).
        messages: bool,
    },
}

impl StartOptions {
    /// pgoutput proto 1 with messages on: what the replicator uses with pgoutput.
    pub fn new(publication_names: Vec<String>) -> StartOptions {
        StartOptions::Pgoutput {
            publication_names,
            proto_version: ProtoVersion::V1,
            messages: true,
        }
    }

    /// The syncgate plugin with messages on, filtered to `tables` (the `tables` option's text).
    pub fn syncgate(tables: String) -> StartOptions {
        StartOptions::Syncgate {
            tables,
            messages: true,
        }
    }

    pub fn plugin(&self) -> OutputPlugin {
        match self {
            StartOptions::Pgoutput { .. } => OutputPlugin::Pgoutput,
            StartOptions::Syncgate { .. } => OutputPlugin::Syncgate,
        }
    }
}

/// One item from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Event(SourceEvent),
    /// The server is idle at `wal_end`. While no transaction is open, acking this keeps WAL retention
    /// bounded when only unpublished tables change (invariant 8).
    Keepalive {
        wal_end: Lsn,
    },
}

/// The replication transport, kept behind our own trait so the crate underneath can be swapped.
///
/// Protocol: `create_slot` (optional, first command of the session), then `start`, then `next` in a
/// loop with `ack` whenever storage has made a commit durable, then `close`.
pub trait ReplicationClient: Send {
    /// Creates a logical slot decoding with `plugin`, exporting a snapshot. Must be the session's first
    /// command, and the snapshot must be imported elsewhere before any other call on this client.
    fn create_slot(
        &mut self,
        slot_name: &str,
        plugin: OutputPlugin,
    ) -> impl Future<Output = Result<CreatedSlot, SourceError>> + Send;

    /// `START_REPLICATION SLOT … LOGICAL start`.
    fn start(
        &mut self,
        slot_name: &str,
        start: Lsn,
        options: &StartOptions,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The next decoded event or keepalive. Answers the server's keepalive requests and sends periodic
    /// status updates itself, so the walsender does not time out while the caller polls.
    fn next(&mut self) -> impl Future<Output = Result<StreamItem, SourceError>> + Send;

    /// Reports `flushed` as durably applied: the server may discard WAL up to it and resumes after it.
    fn ack(&mut self, flushed: Lsn) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Sends a last status update and ends the session.
    fn close(self) -> impl Future<Output = Result<(), SourceError>> + Send;
}
