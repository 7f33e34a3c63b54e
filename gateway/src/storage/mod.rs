//! Bucket storage: the op log of every bucket, the current state of every source row, the parameter
//! lookup index, checkpoints, write checkpoints and sync-rules versions.
//!
//! [`BucketStorage`] is the seam between the replicator (one writer) and sync sessions (many readers).
//! [`SqliteStorage`] implements it on one embedded SQLite file, [`PostgresStorage`] in a schema of a
//! Postgres database (the first step to several gateways sharing one storage); both keep the same
//! invariants with the same observable behaviour, and one test suite runs against both.
//!
//! Invariants kept here (DESIGN.md):
//! 1. **Op ids** come from one sequence for the storage's lifetime, shared by every bucket and every
//!    sync-rules version, strictly increasing. A new storage seeds the sequence from the wall clock in
//!    microseconds, so a rebuilt storage never hands out an op id below one a client may still hold.
//! 3. **Checksums**: a bucket's checksum at checkpoint C is the wrapping u32 sum of its ops' checksums with
//!    op id ≤ C; count is the number of those ops. Running sums per bucket make the checksum of any
//!    checkpoint at or after a bucket's last op a lookup, not a scan. [`BucketStorage::compact`] rewrites
//!    only ops ≤ the latest checkpoint and keeps checksums at every checkpoint ≥ its highest rewritten op.
//! 4. **Restartable replication**: one source transaction is one storage transaction (ops, row state,
//!    parameter index, checkpoint), committed with `synchronous=FULL`, so a returned
//!    [`BucketStorage::apply`] is durable and its LSN may be confirmed to Postgres. A transaction whose
//!    commit LSN ≤ the version's stored LSN is skipped and produces no ops.
//! 6. **Consistent reads**: reads are keyed by checkpoint (op id for ops and checksums, LSN for parameter
//!    lookups and write checkpoints), and history below a checkpoint is immutable except for compaction,
//!    so a session's separate reads agree without holding a read transaction across a network wait.

mod feed;
mod notify;
mod placement;
mod postgres;
mod segment;
mod sqlite;

#[cfg(test)]
mod feed_tests;
#[cfg(test)]
pub(crate) mod postgres_tests;
#[cfg(test)]
mod tests;

use std::fmt;

use syncgate_protocol::{BucketName, Checksum, ClientId, OpId, OplogEntry, UserId, WriteCheckpointId};

pub use feed::{ChangeFeed, PostgresBacked, Reconnect};
pub use notify::{Notifying, StorageEvents};
pub(crate) use postgres::is_identifier;
pub use postgres::{
    DEFAULT_POLL_INTERVAL, DEFAULT_SCHEMA, FeedState, PostgresStorage, PostgresStorageConfig,
};
pub use sqlite::{SqliteStorage, version_ops};

pub use syncgate_protocol::{Lsn, ParseLsnError};

/// A sync-rules version: the `N#` prefix of versioned bucket names, and the namespace of a version's
/// buckets, row state and parameter index in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RulesVersion(pub u64);

impl fmt::Display for RulesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Lifecycle of a sync-rules version (DESIGN invariant 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Created, building its buckets in the background.
    Building,
    /// Serving clients. At most one version is active.
    Active,
    /// Replaced by a newer active version; its data may be removed.
    Retired,
}

/// A stored sync-rules version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRulesVersion {
    pub version: RulesVersion,
    pub rules: String,
    pub state: VersionState,
}

/// Identity of a source row: its table (a stable id or qualified name) and the text form of its replica
/// identity. Storage is keyed by it, so applying a change twice is harmless (invariant 4), and it is the
/// [`Subkey`](syncgate_protocol::Subkey) of the row's PUTs and REMOVEs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRowKey {
    pub table: String,
    pub key: String,
}

/// One output row of a source row in one bucket (what `syncgate_rules::PlacedRow` borrows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub bucket: BucketName,
    /// Output table (`object_type`).
    pub table: String,
    /// Output row id (`object_id`).
    pub id: String,
    /// The row as JSON object text, sent verbatim as PUT `data`.
    pub data: String,
}

impl Placement {
    /// The placements of one evaluated source row (copies of what `RowEvaluation::rows()` borrows).
    pub fn from_evaluation(evaluation: &syncgate_rules::RowEvaluation) -> Vec<Placement> {
        evaluation
            .rows()
            .map(|row| Placement {
                bucket: BucketName::new(row.bucket),
                table: row.table.to_owned(),
                id: row.id.to_owned(),
                data: row.data.to_owned(),
            })
            .collect()
    }
}

/// The rows of one snapshot chunk, with what can be computed before storage sees them: the PUT digest
/// (`Checksum::put_digest`) of every placement. Built on the evaluating thread, so the single storage
/// writer does not hash (SHA-256 was a tenth of its time in the replication bench).
#[derive(Debug, Clone, Default)]
pub struct SnapshotChunk {
    changes: Vec<RowChange>,
    /// The digests of every change's placements, in order: change by change, placement by placement.
    put_digests: Vec<[u8; 32]>,
    /// Whether the caller knows that no row of the chunk has stored state (see [`Self::assume_unstored`]).
    unstored: bool,
}

impl SnapshotChunk {
    pub fn new(changes: Vec<RowChange>) -> SnapshotChunk {
        let mut chunk = SnapshotChunk::with_capacity(changes.len());
        for change in changes {
            chunk.push(change);
        }
        chunk
    }

    /// An empty chunk with room for `rows` changes, filled with [`Self::push`].
    pub fn with_capacity(rows: usize) -> SnapshotChunk {
        SnapshotChunk {
            changes: Vec::with_capacity(rows),
            // Rows land in one or two buckets in most rule sets.
            put_digests: Vec::with_capacity(rows * 2),
            unstored: false,
        }
    }

    /// Adds a change, hashing its placements now, while the evaluation that produced them is still in
    /// the CPU's cache (a second pass over a chunk of tens of megabytes reads them from memory again).
    pub fn push(&mut self, change: RowChange) {
        self.put_digests.extend(
            change
                .placements
                .iter()
                .flatten()
                .map(|p| Checksum::put_digest(&p.table, &p.id, &p.data)),
        );
        self.changes.push(change);
    }

    /// Declares that no row of the chunk has stored state in the version (placements, parameter entries
    /// or source row), so storage does not probe for any. True of every chunk of a table whose copy
    /// started from the table's beginning in this run: nothing streams into a version before its
    /// snapshot is done, and a table's chunks are disjoint key ranges. The probe was a tenth of the
    /// writer's time.
    pub fn assume_unstored(mut self) -> SnapshotChunk {
        self.unstored = true;
        self
    }

    pub(crate) fn is_unstored(&self) -> bool {
        self.unstored
    }

    pub fn changes(&self) -> &[RowChange] {
        &self.changes
    }

    /// Each change with the digests of its placements.
    pub(crate) fn changes_with_digests(&self) -> impl Iterator<Item = (&RowChange, &[[u8; 32]])> {
        let mut rest = self.put_digests.as_slice();
        self.changes.iter().map(move |change| {
            let (digests, tail) = rest.split_at(change.placements.as_ref().map_or(0, Vec::len));
            rest = tail;
            (change, digests)
        })
    }
}

/// One parameter-index entry of a source row: the canonical lookup key
/// (`syncgate_rules::ParameterLookup::key()`) and the row's output values as a JSON array text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParameterRow {
    pub lookup_key: String,
    pub values_json: String,
}

/// The new state of one source row after a change: every bucket placement and parameter entry it now has.
/// A deleted row (or one no query matches any more) has neither; storage computes the difference.
///
/// `placements` is `None` when the row's table feeds no data query of the version, and `parameters` is
/// `None` when it feeds no parameter query: storage then skips that half entirely (no diff, no reads),
/// which is what keeps a table that only feeds parameter lookups cheap, and vice versa.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub row: SourceRowKey,
    pub placements: Option<Vec<Placement>>,
    pub parameters: Option<Vec<ParameterRow>>,
    /// The source row's column values as the replicator encodes them, kept so a later UPDATE that leaves
    /// a TOASTed column unchanged can be completed from it. `None` deletes the stored copy.
    pub source_row: Option<String>,
}

impl ParameterRow {
    /// The storage form of an evaluated parameter entry: its canonical lookup key and its values as a JSON
    /// array (blobs and non-finite reals become `null`, as in synced data).
    pub fn from_entry(entry: &syncgate_rules::ParameterEntry) -> ParameterRow {
        let mut values_json = String::from("[");
        for (i, value) in entry.values.iter().enumerate() {
            if i > 0 {
                values_json.push(',');
            }
            value.write_json(&mut values_json);
        }
        values_json.push(']');
        ParameterRow {
            lookup_key: entry.lookup.key(),
            values_json,
        }
    }
}

impl RowChange {
    /// The new state of `row` from its evaluation by the sync rules: data placements and parameter entries.
    /// `plan` says which halves apply to the row's table.
    pub fn from_evaluation(
        row: SourceRowKey,
        plan: &syncgate_rules::TablePlan,
        evaluation: &syncgate_rules::RowEvaluation,
        parameters: &[syncgate_rules::ParameterEntry],
        source_row: Option<String>,
    ) -> Self {
        RowChange {
            row,
            placements: plan
                .has_data_queries()
                .then(|| Placement::from_evaluation(evaluation)),
            parameters: plan
                .has_parameter_queries()
                .then(|| parameters.iter().map(ParameterRow::from_entry).collect()),
            source_row,
        }
    }

    /// The row was deleted: it leaves every bucket and the parameter index.
    pub fn delete(row: SourceRowKey) -> Self {
        RowChange {
            row,
            placements: Some(Vec::new()),
            parameters: Some(Vec::new()),
            source_row: None,
        }
    }
}

/// One committed source transaction, applied atomically. An empty `changes` is a keepalive or
/// write-checkpoint marker: it only advances the checkpoint's LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTransaction {
    pub commit_lsn: Lsn,
    pub changes: Vec<RowChange>,
}

/// A checkpoint: the last op id written by a fully applied source transaction and its commit LSN.
/// `op_id` is [`OpId::ZERO`] while a version has no ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub op_id: OpId,
    pub lsn: Lsn,
}

/// A bucket's checksum and op count at a checkpoint (PROTOCOL §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSummary {
    pub bucket: BucketName,
    pub checksum: Checksum,
    pub count: u64,
}

/// An op as stored: the wire entry plus compaction's `target_op` (PROTOCOL §6.1 guard rule 2), which
/// sessions need but clients never see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOp {
    pub entry: OplogEntry,
    /// For MOVE: the op that superseded it; for CLEAR: the largest target among the ops it replaced.
    pub target_op: Option<OpId>,
}

/// What one compaction run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactStats {
    /// The highest op id compaction considered (≤ the latest checkpoint).
    pub up_to: OpId,
    pub buckets: u64,
    pub moved: u64,
    /// Ops removed by merging leading runs into CLEARs.
    pub cleared: u64,
}

/// Initial-snapshot progress of one source table of a version (DESIGN invariant 5): chunks commit with
/// their progress, so a crash resumes at the first unfinished chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSnapshot {
    /// `schema.name` of the source table.
    pub table: String,
    /// Replica-identity key of the last copied row (copy order), as the replicator encodes it; `None`
    /// before the first chunk.
    pub resume_after: Option<String>,
    /// All rows copied.
    pub done: bool,
    /// The source's WAL position when the chunk was read: streaming must pass the largest of these
    /// before the version may publish a checkpoint.
    pub lsn: Lsn,
}

/// Replication bookkeeping of a version: its slot and where its initial snapshot stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicationState {
    /// The version's replication slot, once created.
    pub slot_name: Option<String>,
    /// The slot's consistent point: where streaming starts before any transaction was applied.
    pub start_lsn: Option<Lsn>,
    /// Set when every table is copied: the LSN streaming must pass before the version's first checkpoint
    /// may be published (the write-checkpoint marker emitted after the last chunk, or later).
    pub snapshot_done_lsn: Option<Lsn>,
}

/// Storage failures. Messages say what happened and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "bucket storage at {path}: {source}; check the path exists, is writable and is not on a network file system"
    )]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "bucket storage file has format version {found}, newer than this syncgate supports ({supported}); run a newer syncgate or point storage at a new file"
    )]
    FormatTooNew { found: i64, supported: i64 },
    #[error("bucket storage SQLite error: {0}; if it persists, check disk space and file permissions")]
    Sqlite(#[from] rusqlite::Error),
    #[error("sync-rules version {0} does not exist; create it with create_version first")]
    UnknownVersion(RulesVersion),
    #[error("sync-rules version {0} is active; activate another version before deleting it")]
    VersionActive(RulesVersion),
    #[error("{what} {value} does not fit SQLite's signed 64-bit integers; the storage cannot hold it")]
    OutOfRange { what: &'static str, value: u64 },
    #[error(
        "bucket storage holds an invalid {what} ({value}); the file is corrupt or was written by another program: rebuild it"
    )]
    Corrupt { what: &'static str, value: String },
    #[error("op id sequence exhausted at {0}; rebuild the storage")]
    OpIdsExhausted(OpId),
    #[error("internal lock poisoned after a panic in another storage call; restart syncgate")]
    Poisoned,
    #[error("could not start a storage thread: {0}")]
    Thread(std::io::Error),
    // Not a `#[source]`: the message already carries the server's text, which a chain would repeat.
    #[error("bucket storage Postgres error: {}; if it persists, check the storage database", postgres_message(.0))]
    Postgres(tokio_postgres::Error),
    #[error(
        "cannot connect to the storage database {target}: {}; check storage.uri (host, port, user, password, database)",
        postgres_message(source)
    )]
    PostgresConnect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Configuration(String),
    #[error(
        "the storage database is the replication source database `{database}` (server {system_identifier}); \
         bucket storage must live in a separate database: point storage.uri at another database"
    )]
    SourceDatabase {
        database: String,
        system_identifier: String,
    },
    #[error(
        "another gateway took over the bucket storage (writer epoch {found}, this one holds {held}); \
         this gateway must stop writing"
    )]
    Fenced { held: i64, found: i64 },
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(error: tokio_postgres::Error) -> Self {
        StorageError::Postgres(error)
    }
}

/// A Postgres error with the server's message, which `tokio_postgres::Error`'s own text leaves out.
fn postgres_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

impl StorageError {
    /// Whether retrying the same call may succeed: the SQLite file was busy or locked by another
    /// connection (another process writing, a long WAL checkpoint), or the storage database's
    /// connection was lost, a transaction hit a serialization failure or deadlock, or the server is
    /// restarting. Everything else needs an operator or a fix.
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            // The connection is re-opened on the next call.
            StorageError::PostgresConnect { .. } => true,
            StorageError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_some_and(|code| {
                        // Class 08: connection exceptions.
                        code.code().starts_with("08")
                            || [
                                SqlState::T_R_SERIALIZATION_FAILURE,
                                SqlState::T_R_DEADLOCK_DETECTED,
                                SqlState::ADMIN_SHUTDOWN,
                                SqlState::CRASH_SHUTDOWN,
                                SqlState::CANNOT_CONNECT_NOW,
                            ]
                            .contains(code)
                    })
            }
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Bucket storage. Synchronous: calls are short and never wait on the network; async callers wrap
/// them in `spawn_blocking`. One replicator writes; any number of sessions read concurrently and are
/// never blocked by the writer.
pub trait BucketStorage: Send + Sync {
    /// Applies one source transaction in one storage transaction: REMOVE for every bucket a row left,
    /// PUT for every placement that is new or whose data changed, parameter index replaced per row,
    /// running checksums updated, checkpoint recorded. Returns the new checkpoint's op id, or `None`
    /// when `commit_lsn` ≤ the version's stored LSN (already applied: skipped, no ops).
    /// Durable when it returns: the caller may confirm `commit_lsn` to Postgres.
    fn apply(&self, version: RulesVersion, txn: &SourceTransaction) -> Result<Option<OpId>>;

    /// Applies several source transactions, in order, in one storage transaction (one fsync): each still
    /// gets its own checkpoint, and each one whose commit LSN ≤ the stored LSN is skipped. Returns the
    /// latest checkpoint after the batch, `None` when every transaction was skipped. Durable when it
    /// returns; all-or-nothing on error.
    fn apply_batch(&self, version: RulesVersion, txns: &[SourceTransaction]) -> Result<Option<Checkpoint>>;

    /// Applies rows copied by the initial snapshot together with the table's new progress, in one storage
    /// transaction. No checkpoint is recorded and no LSN is checked (snapshot rows have none); the rows'
    /// parameter entries are visible at every checkpoint. Rows are diffed against the stored state like
    /// [`apply`](BucketStorage::apply), so re-copying a row is harmless.
    fn apply_snapshot_chunk(
        &self,
        version: RulesVersion,
        chunk: &SnapshotChunk,
        progress: &TableSnapshot,
    ) -> Result<()>;

    /// Snapshot progress of every table of `version` recorded so far.
    fn snapshot_progress(&self, version: RulesVersion) -> Result<Vec<TableSnapshot>>;

    /// The version's replication bookkeeping.
    fn replication_state(&self, version: RulesVersion) -> Result<ReplicationState>;

    /// Replaces the version's replication bookkeeping.
    fn set_replication_state(&self, version: RulesVersion, state: &ReplicationState) -> Result<()>;

    /// The stored source row (`RowChange::source_row`) of `row`, as last committed.
    fn source_row(&self, version: RulesVersion, row: &SourceRowKey) -> Result<Option<String>>;

    /// Keys of every source row of `table` (a `SourceRowKey::table`) the version holds state for:
    /// placements, live parameter entries or a stored source row. What a TRUNCATE deletes.
    fn source_row_keys(&self, version: RulesVersion, table: &str) -> Result<Vec<String>>;

    /// Every stored version, oldest first.
    fn versions(&self) -> Result<Vec<SyncRulesVersion>>;

    /// The version's latest checkpoint, `None` before its first applied transaction.
    fn latest_checkpoint(&self, version: RulesVersion) -> Result<Option<Checkpoint>>;

    /// Checksum and count of each bucket at `checkpoint` (an op id ≤ the latest checkpoint). Unknown or
    /// empty buckets give checksum 0, count 0. A bucket whose last op ≤ `checkpoint` costs one lookup of
    /// its running sums; otherwise its ops up to `checkpoint` are summed.
    fn bucket_checksums(
        &self,
        version: RulesVersion,
        checkpoint: OpId,
        buckets: &[BucketName],
    ) -> Result<Vec<BucketSummary>>;

    /// Buckets of `version` with an op after `after` (a superset of those changed up to any later
    /// checkpoint). Sessions use it to skip re-reading buckets a commit did not touch.
    fn changed_buckets(&self, version: RulesVersion, after: OpId) -> Result<Vec<BucketName>>;

    /// Ops of `bucket` with `after < op_id ≤ up_to`, in op id order, at most `limit`.
    fn ops(
        &self,
        version: RulesVersion,
        bucket: &BucketName,
        after: OpId,
        up_to: OpId,
        limit: usize,
    ) -> Result<Vec<StoredOp>>;

    /// For each lookup key, the `values_json` of every parameter row holding it at `checkpoint`
    /// (visible: created at or before the checkpoint's LSN and not deleted by then).
    fn lookup(
        &self,
        version: RulesVersion,
        checkpoint: &Checkpoint,
        keys: &[String],
    ) -> Result<Vec<Vec<String>>>;

    /// Stores a new write checkpoint for `(user, client_id)` at `lsn` and returns its id (strictly
    /// increasing; one storage-wide sequence).
    fn create_write_checkpoint(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        lsn: Lsn,
    ) -> Result<WriteCheckpointId>;

    /// Checkpoint-request mode (PROTOCOL §1.5): stores the client-chosen `requested` id for
    /// `(user, client_id)` at `lsn` unless a larger id is stored already, and returns the larger of the two.
    fn request_write_checkpoint(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        requested: WriteCheckpointId,
        lsn: Lsn,
    ) -> Result<WriteCheckpointId>;

    /// The newest write checkpoint for `(user, client_id)` whose LSN ≤ `up_to`, the LSN of the
    /// checkpoint a session is about to send.
    fn write_checkpoint_for(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        up_to: Lsn,
    ) -> Result<Option<WriteCheckpointId>>;

    /// Stores a new sync-rules version (state [`VersionState::Building`]) and returns its id.
    fn create_version(&self, rules: &str) -> Result<RulesVersion>;

    /// The active version, if any.
    fn active_version(&self) -> Result<Option<SyncRulesVersion>>;

    /// Makes `version` the active one and retires the previously active version, atomically.
    fn activate(&self, version: RulesVersion) -> Result<()>;

    /// Deletes a version that is not active (a retired one, or an abandoned build) with all its ops, row
    /// state, parameter index and checkpoints. The op-id sequence is not reset (invariant 1).
    fn delete_version(&self, version: RulesVersion) -> Result<()>;

    /// Compacts every bucket of `version` up to `min(up_to, latest checkpoint)` (PROTOCOL §6.1): a
    /// PUT/REMOVE superseded by a later op of the same row becomes MOVE with `target_op` = the row's latest
    /// op; each bucket's leading run of REMOVE/MOVE/CLEAR becomes one CLEAR at the run's largest op id with
    /// the run's checksum sum and largest `target_op`.
    fn compact(&self, version: RulesVersion, up_to: OpId) -> Result<CompactStats>;
}

/// The storage a config selects: `serve`, `inspect` and `compact` run on either.
#[derive(Debug)]
// One value per process: the size gap between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ConfiguredStorage {
    Sqlite(SqliteStorage),
    Postgres(PostgresStorage),
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

/// Forwards every trait method to the selected storage.
macro_rules! forward {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl BucketStorage for ConfiguredStorage {
            $(
                fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        ConfiguredStorage::Sqlite(s) => s.$name($($arg),*),
                        ConfiguredStorage::Postgres(s) => s.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

forward! {
    fn apply(&self, version: RulesVersion, txn: &SourceTransaction) -> Result<Option<OpId>>;
    fn apply_batch(&self, version: RulesVersion, txns: &[SourceTransaction]) -> Result<Option<Checkpoint>>;
    fn apply_snapshot_chunk(&self, version: RulesVersion, chunk: &SnapshotChunk, progress: &TableSnapshot) -> Result<()>;
    fn snapshot_progress(&self, version: RulesVersion) -> Result<Vec<TableSnapshot>>;
    fn replication_state(&self, version: RulesVersion) -> Result<ReplicationState>;
    fn set_replication_state(&self, version: RulesVersion, state: &ReplicationState) -> Result<()>;
    fn source_row(&self, version: RulesVersion, row: &SourceRowKey) -> Result<Option<String>>;
    fn source_row_keys(&self, version: RulesVersion, table: &str) -> Result<Vec<String>>;
    fn versions(&self) -> Result<Vec<SyncRulesVersion>>;
    fn latest_checkpoint(&self, version: RulesVersion) -> Result<Option<Checkpoint>>;
    fn bucket_checksums(&self, version: RulesVersion, checkpoint: OpId, buckets: &[BucketName]) -> Result<Vec<BucketSummary>>;
    fn changed_buckets(&self, version: RulesVersion, after: OpId) -> Result<Vec<BucketName>>;
    fn ops(&self, version: RulesVersion, bucket: &BucketName, after: OpId, up_to: OpId, limit: usize) -> Result<Vec<StoredOp>>;
    fn lookup(&self, version: RulesVersion, checkpoint: &Checkpoint, keys: &[String]) -> Result<Vec<Vec<String>>>;
    fn create_write_checkpoint(&self, user: &UserId, client_id: Option<&ClientId>, lsn: Lsn) -> Result<WriteCheckpointId>;
    fn request_write_checkpoint(&self, user: &UserId, client_id: Option<&ClientId>, requested: WriteCheckpointId, lsn: Lsn) -> Result<WriteCheckpointId>;
    fn write_checkpoint_for(&self, user: &UserId, client_id: Option<&ClientId>, up_to: Lsn) -> Result<Option<WriteCheckpointId>>;
    fn create_version(&self, rules: &str) -> Result<RulesVersion>;
    fn active_version(&self) -> Result<Option<SyncRulesVersion>>;
    fn activate(&self, version: RulesVersion) -> Result<()>;
    fn delete_version(&self, version: RulesVersion) -> Result<()>;
    fn compact(&self, version: RulesVersion, up_to: OpId) -> Result<CompactStats>;
}
