//! What goes into the sync state machine ([`SyncEvent`]) and what comes out ([`Instruction`]).
//!
//! Both serialize to JSON so golden transcripts (client/tests/transcripts/) can be checked in as files.

use syncgate_protocol::{
    BucketName, BucketPriority, Checksum, ClientId, OpId, OplogEntry, SyncLine, SyncRequest,
    WriteCheckpointId,
};

/// A bucket as the local database holds it when a sync iteration starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredBucket {
    pub name: BucketName,
    /// Every op up to here was received (the next request's `after`).
    pub last_op: OpId,
    /// Wrapping sum of every op checksum received since the bucket's last CLEAR.
    #[serde(with = "syncgate_protocol::checksum::signed")]
    pub checksum: Checksum,
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncEvent {
    /// Start a sync iteration (one stream) from the local database's state.
    Start {
        client_id: ClientId,
        buckets: Vec<StoredBucket>,
    },
    /// The service accepted the request (2xx, headers received).
    StreamOpened,
    /// One parsed sync line.
    LineReceived(SyncLine),
    /// The stream ended (`error` = why, if it failed).
    StreamClosed { error: Option<String> },
    /// The driver ran an [`Instruction::ApplyCheckpoint`].
    ApplyFinished { applied: bool },
    /// The upload queue was drained (or the write-checkpoint target changed): a checkpoint held back by
    /// local writes may apply now.
    UploadFinished,
    /// New credentials are available after [`Instruction::RefreshCredentials`].
    CredentialsRefreshed,
}

/// Outputs of the state machine, executed by the driver in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instruction {
    /// `POST /sync/stream` with this body.
    OpenStream { request: SyncRequest },
    /// Persist ops of one bucket to the op log and the bucket's new position and running checksum.
    StoreOps {
        bucket: BucketName,
        ops: Vec<OplogEntry>,
        last_op: OpId,
        #[serde(with = "syncgate_protocol::checksum::signed")]
        checksum: Checksum,
    },
    /// Drop these buckets' ops and positions; their rows disappear at the next applied checkpoint unless
    /// another bucket holds them.
    DeleteBuckets { buckets: Vec<BucketName> },
    /// Publish a validated checkpoint to the app's tables in one transaction; answer with
    /// [`SyncEvent::ApplyFinished`].
    ApplyCheckpoint(ApplyPlan),
    /// Fetch new credentials in the background; answer with [`SyncEvent::CredentialsRefreshed`].
    RefreshCredentials,
    /// End the current stream. The driver reconnects after its retry delay, or at once for
    /// [`CloseReason::CredentialsRefreshed`].
    CloseStream { reason: CloseReason },
    /// The sync status changed.
    UpdateStatus(SyncStatus),
}

/// What to publish: the buckets of a checkpoint, or of its priorities up to `priority`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyPlan {
    pub last_op_id: OpId,
    pub write_checkpoint: Option<WriteCheckpointId>,
    /// `None`: the full checkpoint. `Some(p)`: only buckets with priority number ≤ p.
    pub priority: Option<BucketPriority>,
    pub buckets: Vec<BucketName>,
    /// Apply only if the upload queue is empty and the write-checkpoint target is reached; false for
    /// priority 0, which applies regardless of local writes (PROTOCOL §6.2).
    pub wait_for_local_writes: bool,
}

/// Why a stream is closed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Bucket checksums did not match; the buckets were dropped and are downloaded again.
    ChecksumMismatch { buckets: Vec<BucketName> },
    /// `token_expires_in` ≤ 0: fetch credentials, then reconnect.
    TokenExpired,
    /// New credentials arrived: reconnect at once with them.
    CredentialsRefreshed,
    /// The service sent something the protocol does not allow.
    ProtocolError { message: String },
}

/// The state of sync as an app shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncStatus {
    pub connected: bool,
    /// A checkpoint is being downloaded.
    pub downloading: bool,
    /// Ops received / expected for the checkpoint being downloaded (from bucket counts; progress only).
    pub downloaded_ops: u64,
    pub total_ops: u64,
    /// The last checkpoint published to the app's tables.
    pub applied_checkpoint: Option<OpId>,
    /// The highest priority fully published, if only a partial checkpoint was applied since.
    pub applied_priority: Option<BucketPriority>,
    /// A validated checkpoint waits for local writes to be acknowledged.
    pub waiting_for_uploads: bool,
    pub last_error: Option<String>,
    /// Row changes in the upload queue, not yet accepted by the backend. Filled by the driver (the state
    /// machine does no uploads), as are the fields below.
    #[serde(default)]
    pub upload_pending: u64,
    /// A queued transaction is being sent to the backend right now.
    #[serde(default)]
    pub uploading: bool,
    /// Why the last upload failed; cleared when an upload succeeds.
    #[serde(default)]
    pub last_upload_error: Option<String>,
    /// Wall time at which the last full checkpoint was published to the app's tables (kept in the
    /// database, so it survives restarts; millisecond precision).
    #[serde(default)]
    pub last_synced_at: Option<std::time::SystemTime>,
}
