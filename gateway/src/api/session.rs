//! One sync session (PROTOCOL §4.2): the lines of one `POST /sync/stream` or WebSocket stream.
//!
//! The session follows the published checkpoints of the active sync-rules version. For each one it
//! resolves the connection's buckets (token claims, client parameters, stream subscriptions and the
//! parameter index at that checkpoint), reads their checksums and the connection's write checkpoint, and
//! sends a `checkpoint` (first time, or a new version) or a `checkpoint_diff`, the ops each changed bucket
//! lacks up to the checkpoint, and the completes. Lines go into a bounded channel: a client that stops
//! reading stops the session (backpressure), and one that stops for longer than the send timeout ends it.
//!
//! Transports ([`super::http`], WebSocket) only encode the lines; everything the protocol decides is here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// foldhash, not SipHash: the dispatcher looks up every concerned session's buckets in these maps, a
// thousand sessions per commit (docs/benchmarks.md, Sync API).
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use serde_json::Value;
use syncgate_protocol::{
    BucketChecksum, BucketName, BucketPriority, BucketSubscription, Checksum, ClientId, OpId,
    StreamDescription, StreamError, SubscriptionRef, SyncLine, SyncRequest, UserId, WriteCheckpointId,
    line::{
        Checkpoint as CheckpointLine, CheckpointComplete, CheckpointDiff, DataLine, PartialCheckpointComplete,
    },
};
use syncgate_rules::{
    BucketOrigin, ConnectionRequest, ParameterLookup, ResolvedConnection, SqliteValue, SyncRules,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::encoding::{OutLine, SharedLine};
use super::metrics::ApiMetrics;
use super::wake::{ParkIndex, ParkState, Parked, ensure_dispatcher};
use crate::storage::{BucketStorage, Checkpoint, Lsn, RulesVersion, StorageError, StorageEvents, StoredOp};
use crate::versioned_rules::{RulesCache, StoredRulesError};

/// Per-connection limits (PROTOCOL §4.2; configurable through `api` in the config).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Buckets one connection may sync (reference default 1,000, error `PSYNC_S2305`).
    pub max_buckets: usize,
    /// Parameter lookups one bucket resolution may make (each is an index read per checkpoint).
    pub max_lookups: usize,
    /// Ops per `data` line.
    pub max_ops_per_line: usize,
    /// Approximate bytes of op data per `data` line; a line holds at least one op however large.
    pub max_line_bytes: usize,
    /// `token_expires_in` cadence (the client's HTTP body timeout and proxies need a byte well within it).
    pub keepalive: Duration,
    /// A client that reads nothing for this long is disconnected (its lines would pile up otherwise).
    pub send_timeout: Duration,
    /// Ops sent for one checkpoint after which a newer checkpoint interrupts it (positions carry over).
    pub interrupt_after_ops: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_buckets: 1_000,
            max_lookups: 1_000,
            max_ops_per_line: 1_000,
            max_line_bytes: 512 * 1024,
            keepalive: Duration::from_secs(20),
            send_timeout: Duration::from_secs(60),
            interrupt_after_ops: 1_000,
        }
    }
}

/// What a session needs from the gateway; shared by every session.
#[derive(Debug)]
pub struct SessionEnv<S: ?Sized> {
    pub storage: Arc<S>,
    pub events: Arc<StorageEvents>,
    pub rules: Arc<RulesCache>,
    pub limits: SessionLimits,
    pub metrics: Arc<ApiMetrics>,
    pub reads: SharedReads,
}

/// Reads that every session makes for the same checkpoint, done once. A commit wakes every open
/// session at the same moment; without this each would read the active version, the checkpoint and the
/// checksums of shared buckets itself, on as many threads and connections as there are sessions.
#[derive(Debug)]
pub struct SharedReads {
    /// Storage reads running at once; the rest wait (a few threads on pooled connections beat a herd).
    permits: tokio::sync::Semaphore,
    /// The active version and its latest checkpoint as of a commit count.
    published: std::sync::Mutex<Option<Published>>,
    /// Bucket summaries at one checkpoint (and compaction generation).
    summaries: std::sync::Mutex<SummaryCache>,
    /// Buckets changed after an op id, as of a checkpoint: most sessions ask for the same one.
    changed: std::sync::Mutex<Option<ChangedSet>>,
    /// Recent op reads: sessions subscribed to the same bucket read the same ops after a commit.
    ops: std::sync::Mutex<HashMap<OpsKey, Arc<Vec<StoredOp>>>>,
    /// Lines many sessions send alike after a commit, built and serialized once.
    lines: std::sync::Mutex<LineCache>,
    /// The commit count (plus one) for which a session has taken on reading what every session needs
    /// after a commit; the others wait for `prefetched` to reach it.
    prefetching: std::sync::atomic::AtomicU64,
    /// The commit count (plus one) of the last such read, done or failed.
    prefetched: watch::Sender<u64>,
    /// Sessions waiting for a commit to one of their buckets rather than for every commit.
    parked: Arc<ParkIndex>,
}

/// Marks a prefetch done however the reading session leaves it (error or not), releasing the waiters.
struct PrefetchDone<'a> {
    prefetched: &'a watch::Sender<u64>,
    mark: u64,
}

impl Drop for PrefetchDone<'_> {
    fn drop(&mut self) {
        self.prefetched.send_if_modified(|done| {
            let newer = *done < self.mark;
            if newer {
                *done = self.mark;
            }
            newer
        });
    }
}

/// Lines shared between sessions. A line is shared only when equal, so the keys only bound the size.
#[derive(Debug, Default)]
struct LineCache {
    complete: Option<Arc<SharedLine>>,
    /// Diffs to the same checkpoint (sessions whose changes are alike send the same one).
    diffs: Vec<Arc<SharedLine>>,
    /// The `data` line of an op read (the limits that shape it are the same for every session).
    data: HashMap<OpsKey, SharedData>,
    /// Approximate op bytes in `data`.
    data_bytes: usize,
}

/// A `data` line with what the session needs to know about it.
#[derive(Debug, Clone)]
struct SharedData {
    line: Arc<SharedLine>,
    last: OpId,
    largest_target: OpId,
    count: usize,
    has_more: bool,
    /// Approximate op bytes (the line-size estimate).
    bytes: usize,
}

/// Op bytes of shared `data` lines kept (each also held serialized); the cache starts over beyond.
const DATA_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Distinct diffs kept per checkpoint; more are sent unshared.
const DIFF_CACHE_ENTRIES: usize = 64;

#[derive(Debug)]
struct ChangedSet {
    version: RulesVersion,
    after: OpId,
    up_to: OpId,
    names: Arc<HashSet<BucketName>>,
}

/// (version, bucket, after, up_to, limit, compaction generation) of an op read.
type OpsKey = (RulesVersion, BucketName, OpId, OpId, usize, u64);

/// Op reads kept for other sessions; the cache starts over beyond this many.
const OPS_CACHE_ENTRIES: usize = 256;

#[derive(Debug, Clone)]
struct Published {
    commits: u64,
    version: RulesVersion,
    rules: Arc<str>,
    checkpoint: Checkpoint,
}

#[derive(Debug, Default)]
struct SummaryCache {
    key: Option<(RulesVersion, OpId, u64)>,
    summaries: HashMap<BucketName, (Checksum, u64)>,
}

/// Shared summaries kept per checkpoint; beyond this many buckets, the cache starts over.
const SUMMARY_CACHE_BUCKETS: usize = 100_000;

impl Default for SharedReads {
    fn default() -> Self {
        SharedReads {
            permits: tokio::sync::Semaphore::new(4),
            published: std::sync::Mutex::new(None),
            summaries: std::sync::Mutex::new(SummaryCache::default()),
            changed: std::sync::Mutex::new(None),
            ops: std::sync::Mutex::new(HashMap::new()),
            lines: std::sync::Mutex::new(LineCache::default()),
            prefetching: std::sync::atomic::AtomicU64::new(0),
            prefetched: watch::Sender::new(0),
            parked: Arc::default(),
        }
    }
}

impl SharedReads {
    /// The sessions parked until a commit concerns them.
    pub fn parked(&self) -> &Arc<ParkIndex> {
        &self.parked
    }

    /// The active version and its latest checkpoint as of `commits` (cached like [`Self::published`]).
    pub(super) fn published_checkpoint<S: BucketStorage + ?Sized>(
        &self,
        storage: &S,
        commits: u64,
    ) -> Result<Option<(RulesVersion, Checkpoint)>, StorageError> {
        Ok(self
            .published(storage, commits)?
            .map(|p| (p.version, p.checkpoint)))
    }

    /// The active version and its latest checkpoint, read at most once per commit.
    fn published<S: BucketStorage + ?Sized>(
        &self,
        storage: &S,
        commits: u64,
    ) -> Result<Option<Published>, StorageError> {
        let lock = |m: &std::sync::Mutex<Option<Published>>| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        if let Some(cached) = lock(&self.published)
            && cached.commits == commits
        {
            return Ok(Some(cached));
        }
        let Some(active) = storage.active_version()? else {
            return Ok(None);
        };
        let Some(checkpoint) = storage.latest_checkpoint(active.version)? else {
            return Ok(None);
        };
        let published = Published {
            commits,
            version: active.version,
            rules: Arc::from(active.rules),
            checkpoint,
        };
        *self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(published.clone());
        Ok(Some(published))
    }

    /// The published checkpoint as of `commits`, if a session already read it.
    fn cached_published(&self, commits: u64) -> Option<Published> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|p| p.commits == commits)
    }

    /// The changed-bucket set for `(version, after)` covering `up_to`, if a session already read it.
    fn cached_changed(
        &self,
        version: RulesVersion,
        after: OpId,
        up_to: OpId,
    ) -> Option<Arc<HashSet<BucketName>>> {
        let cached = self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|set| set.version == version && set.after == after && set.up_to >= up_to)
            .map(|set| Arc::clone(&set.names))
    }

    fn line_cache(&self) -> std::sync::MutexGuard<'_, LineCache> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `checkpoint_complete` for `last_op_id`, shared.
    fn complete(&self, last_op_id: OpId) -> Arc<SharedLine> {
        let mut cache = self.line_cache();
        if let Some(line) = cache.complete.as_ref()
            && matches!(line.line(), SyncLine::CheckpointComplete(c) if c.last_op_id == last_op_id)
        {
            return Arc::clone(line);
        }
        let line = SharedLine::new(SyncLine::CheckpointComplete(CheckpointComplete { last_op_id }));
        cache.complete = Some(Arc::clone(&line));
        line
    }

    /// `diff` as a line, shared with sessions sending an equal one.
    fn diff(&self, diff: CheckpointDiff) -> OutLine {
        let mut cache = self.line_cache();
        if let Some(line) = cache
            .diffs
            .iter()
            .find(|line| matches!(line.line(), SyncLine::CheckpointDiff(d) if *d == diff))
        {
            return OutLine::Shared(Arc::clone(line));
        }
        if cache.diffs.first().is_some_and(
            |line| !matches!(line.line(), SyncLine::CheckpointDiff(d) if d.last_op_id == diff.last_op_id),
        ) {
            cache.diffs.clear();
        }
        if cache.diffs.len() >= DIFF_CACHE_ENTRIES {
            return SyncLine::CheckpointDiff(diff).into();
        }
        let line = SharedLine::new(SyncLine::CheckpointDiff(diff));
        cache.diffs.push(Arc::clone(&line));
        OutLine::Shared(line)
    }

    fn cached_data(&self, key: &OpsKey) -> Option<SharedData> {
        self.line_cache().data.get(key).cloned()
    }

    fn cache_data(&self, key: OpsKey, data: &SharedData) {
        let mut cache = self.line_cache();
        if cache.data.len() >= OPS_CACHE_ENTRIES || cache.data_bytes + data.bytes > DATA_CACHE_BYTES {
            cache.data.clear();
            cache.data_bytes = 0;
        }
        cache.data_bytes += data.bytes;
        cache.data.insert(key, data.clone());
    }

    /// Checksum and count of each bucket at `checkpoint` if other sessions read them all already.
    fn cached_summaries<'a>(
        &self,
        version: RulesVersion,
        checkpoint: OpId,
        generation: u64,
        names: impl IntoIterator<Item = &'a BucketName>,
    ) -> Option<Vec<(Checksum, u64)>> {
        let cache = self
            .summaries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names = names.into_iter().peekable();
        if names.peek().is_none() {
            return Some(Vec::new());
        }
        if cache.key != Some((version, checkpoint, generation)) {
            return None;
        }
        names.map(|name| cache.summaries.get(name).copied()).collect()
    }

    fn cached_ops(&self, key: &OpsKey) -> Option<Arc<Vec<StoredOp>>> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Buckets with ops after `after`, read once for every session at the same position.
    pub(super) fn changed<S: BucketStorage + ?Sized>(
        &self,
        storage: &S,
        version: RulesVersion,
        after: OpId,
        up_to: OpId,
    ) -> Result<Arc<HashSet<BucketName>>, StorageError> {
        {
            let cached = self
                .changed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(set) = cached.as_ref()
                && set.version == version
                && set.after == after
                && set.up_to >= up_to
            {
                return Ok(Arc::clone(&set.names));
            }
        }
        // Read after `up_to` was published: the set covers every op up to it.
        let names: Arc<HashSet<BucketName>> =
            Arc::new(storage.changed_buckets(version, after)?.into_iter().collect());
        *self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ChangedSet {
            version,
            after,
            up_to,
            names: Arc::clone(&names),
        });
        Ok(names)
    }

    /// Ops of a bucket, shared with other sessions reading the same range.
    fn ops<S: BucketStorage + ?Sized>(
        &self,
        storage: &S,
        key: OpsKey,
    ) -> Result<Arc<Vec<StoredOp>>, StorageError> {
        if let Some(ops) = self
            .ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(ops));
        }
        let (version, bucket, after, up_to, limit, _) = &key;
        let ops = Arc::new(storage.ops(*version, bucket, *after, *up_to, *limit)?);
        let mut cache = self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= OPS_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&ops));
        Ok(ops)
    }

    /// Checksum and count of each bucket at `checkpoint`, from the cache where another session read them.
    fn summaries<S: BucketStorage + ?Sized>(
        &self,
        storage: &S,
        version: RulesVersion,
        checkpoint: OpId,
        generation: u64,
        names: &[BucketName],
    ) -> Result<Vec<(Checksum, u64)>, StorageError> {
        let key = Some((version, checkpoint, generation));
        let mut missing = Vec::new();
        {
            let mut cache = self
                .summaries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.key != key || cache.summaries.len() > SUMMARY_CACHE_BUCKETS {
                cache.key = key;
                cache.summaries.clear();
            }
            for name in names {
                if !cache.summaries.contains_key(name) {
                    missing.push(name.clone());
                }
            }
        }
        let read = if missing.is_empty() {
            Vec::new()
        } else {
            storage.bucket_checksums(version, checkpoint, &missing)?
        };
        let mut cache = self
            .summaries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = cache.key == key;
        let mut found: HashMap<&BucketName, (Checksum, u64)> = HashMap::new();
        for summary in &read {
            found.insert(&summary.bucket, (summary.checksum, summary.count));
        }
        if current {
            for summary in &read {
                cache
                    .summaries
                    .insert(summary.bucket.clone(), (summary.checksum, summary.count));
            }
        }
        Ok(names
            .iter()
            .map(|name| {
                found
                    .get(name)
                    .copied()
                    .or_else(|| current.then(|| cache.summaries.get(name).copied()).flatten())
                    .unwrap_or((Checksum::ZERO, 0))
            })
            .collect())
    }
}

/// The verified identity a stream runs as.
#[derive(Debug, Clone)]
pub struct SessionClaims {
    /// The token's `sub`, stringified.
    pub user_id: String,
    /// The whole verified payload: the rules read it (`auth.parameters()`, `request.jwt()`).
    pub payload: Value,
    /// `exp` as seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// `{"token_expires_in":0}` was sent.
    TokenExpired,
    /// The transport dropped the receiving end.
    ClientGone,
    /// The gateway is shutting down.
    Shutdown,
}

/// Why a session failed. The transport aborts the stream; the client reconnects after its retry delay.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Rules(#[from] StoredRulesError),
    #[error(
        "PSYNC_S2305: too many buckets: this connection would sync {count}, the limit is {limit}; narrow the sync rules or raise api.max_buckets_per_connection"
    )]
    TooManyBuckets { count: usize, limit: usize },
    #[error(
        "PSYNC_S2305: too many parameter lookups: bucket resolution needs {count}, the limit is {limit}; raise api.max_lookups_per_connection"
    )]
    TooManyLookups { count: usize, limit: usize },
    #[error("the client read nothing for {0:?}; disconnected")]
    SlowClient(Duration),
    #[error("storage task failed: {0}")]
    Task(String),
}

impl SessionError {
    /// The reference's error code, for transports that can send one (RSocket ERROR frames).
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::TooManyBuckets { .. } | SessionError::TooManyLookups { .. } => "PSYNC_S2305",
            _ => "PSYNC_S2001",
        }
    }
}

/// One bucket of a connection at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BucketView {
    checksum: Checksum,
    count: u64,
    priority: BucketPriority,
    subscriptions: Vec<BucketSubscription>,
}

/// Everything a session reads for one checkpoint, from one consistent storage state.
#[derive(Debug, Clone)]
struct CheckpointView {
    version: RulesVersion,
    checkpoint: Checkpoint,
    /// In resolution order (the order lines list them).
    order: Vec<BucketName>,
    buckets: HashMap<BucketName, BucketView>,
    streams: Vec<StreamDescription>,
    write_checkpoint: Option<WriteCheckpointId>,
    reads: ReadMarks,
}

/// What a view's reads were based on, so the next read can reuse what cannot have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ReadMarks {
    compaction_generation: u64,
    write_checkpoint_generation: u64,
    /// A write checkpoint newer than the one at the checkpoint exists: re-read it at the next one.
    write_checkpoint_pending: bool,
}

/// The previous view's results handed to the next read.
#[derive(Debug, Clone)]
struct PreviousRead {
    version: RulesVersion,
    checkpoint: OpId,
    marks: ReadMarks,
    write_checkpoint: Option<WriteCheckpointId>,
    summaries: HashMap<BucketName, (Checksum, u64)>,
}

/// What the client has been told.
#[derive(Debug)]
struct Sent {
    version: RulesVersion,
    checkpoint: Checkpoint,
    buckets: HashMap<BucketName, BucketView>,
    write_checkpoint: Option<WriteCheckpointId>,
    /// Whether the client received the complete for `checkpoint`.
    completed: bool,
    reads: ReadMarks,
}

/// What a parked session leaves with the dispatcher ([`super::wake`]) and takes back when it wakes:
/// enough to send a checkpoint's lines as the session would and to advance its state past them.
#[derive(Debug)]
pub(super) struct Parcel {
    sent: Sent,
    positions: HashMap<BucketName, OpId>,
    /// The static resolution the session parked with (the order lines list buckets in).
    resolution: Arc<ResolvedConnection>,
    out: LineSink,
    client: Option<Arc<super::clients::ClientEntry>>,
}

impl Parcel {
    /// The buckets the session holds.
    pub(super) fn buckets(&self) -> impl Iterator<Item = &BucketName> {
        self.sent.buckets.keys()
    }

    /// The client's position in `bucket`, if the session holds it.
    pub(super) fn position(&self, bucket: &BucketName) -> Option<OpId> {
        self.positions.get(bucket).copied()
    }
}

/// How sending a checkpoint's data ended.
enum DataOutcome {
    Complete,
    /// A newer checkpoint exists and enough was sent for this one: move on, positions carry over.
    Interrupted,
    /// An op superseded after this checkpoint was sent (compaction, PROTOCOL §6.1 rule 3): the
    /// checkpoint cannot be completed; a newer one covering `target_op` exists.
    Compacted {
        target_op: OpId,
    },
}

/// Where a session's lines go: transports take [`OutLine`]s (shared lines serialized once); a plain
/// line channel gets every line as its own copy.
#[derive(Debug, Clone)]
pub enum LineSink {
    Lines(mpsc::Sender<SyncLine>),
    Out(mpsc::Sender<OutLine>),
}

impl From<mpsc::Sender<SyncLine>> for LineSink {
    fn from(sender: mpsc::Sender<SyncLine>) -> Self {
        LineSink::Lines(sender)
    }
}

impl From<mpsc::Sender<OutLine>> for LineSink {
    fn from(sender: mpsc::Sender<OutLine>) -> Self {
        LineSink::Out(sender)
    }
}

impl LineSink {
    /// Queues `line` if there is room; gives it back when the buffer is full.
    fn try_send(&self, line: OutLine) -> Result<Result<(), OutLine>, ()> {
        use mpsc::error::TrySendError;
        match self {
            LineSink::Lines(sender) => match sender.try_send(line.into_line()) {
                Ok(()) => Ok(Ok(())),
                Err(TrySendError::Full(line)) => Ok(Err(line.into())),
                Err(TrySendError::Closed(_)) => Err(()),
            },
            LineSink::Out(sender) => match sender.try_send(line) {
                Ok(()) => Ok(Ok(())),
                Err(TrySendError::Full(line)) => Ok(Err(line)),
                Err(TrySendError::Closed(_)) => Err(()),
            },
        }
    }

    /// Queues all of `lines` back to back, or none when the buffer lacks room for them all (or the
    /// receiver is gone): a client must never get part of a checkpoint from one sender and the rest from
    /// another.
    fn try_send_all(&self, lines: Vec<OutLine>) -> bool {
        match self {
            LineSink::Lines(sender) => match sender.try_reserve_many(lines.len()) {
                Ok(permits) => permits
                    .zip(lines)
                    .for_each(|(permit, line)| permit.send(line.into_line())),
                Err(_) => return false,
            },
            LineSink::Out(sender) => match sender.try_reserve_many(lines.len()) {
                Ok(permits) => permits.zip(lines).for_each(|(permit, line)| permit.send(line)),
                Err(_) => return false,
            },
        }
        true
    }

    /// `Err` when the receiver is gone.
    async fn send(&self, line: OutLine) -> Result<(), ()> {
        match self {
            LineSink::Lines(sender) => sender.send(line.into_line()).await.map_err(|_| ()),
            LineSink::Out(sender) => sender.send(line).await.map_err(|_| ()),
        }
    }

    async fn closed(&self) {
        match self {
            LineSink::Lines(sender) => sender.closed().await,
            LineSink::Out(sender) => sender.closed().await,
        }
    }
}

/// A running session.
pub struct Session<S: BucketStorage + ?Sized + 'static> {
    env: Arc<SessionEnv<S>>,
    claims: SessionClaims,
    user: UserId,
    client_id: Option<ClientId>,
    connection: Arc<ConnectionRequest>,
    /// Positions the request claimed, for buckets the session has not listed yet.
    requested: HashMap<BucketName, OpId>,
    /// The client's position in each bucket of the current set: it has every op up to it.
    positions: HashMap<BucketName, OpId>,
    /// Buckets whose ops up to the last sent checkpoint are not all sent yet.
    unfinished: HashSet<BucketName>,
    sent: Option<Sent>,
    /// Rules whose resolution reads no parameter index are resolved once per version.
    static_resolution: Option<(RulesVersion, Arc<ResolvedConnection>)>,
    out: LineSink,
    /// This stream's entry in the dashboard's client registry.
    client: Option<Arc<super::clients::ClientEntry>>,
}

impl<S: BucketStorage + ?Sized + 'static> Session<S> {
    pub fn new(
        env: Arc<SessionEnv<S>>,
        claims: SessionClaims,
        request: &SyncRequest,
        out: impl Into<LineSink>,
    ) -> Self {
        let connection = connection_request(&claims, request);
        Session {
            user: UserId(claims.user_id.clone()),
            client_id: request.client_id.clone(),
            requested: request
                .buckets
                .iter()
                .map(|b| (b.name.clone(), b.after))
                .collect(),
            env,
            claims,
            connection: Arc::new(connection),
            positions: HashMap::new(),
            unfinished: HashSet::new(),
            sent: None,
            static_resolution: None,
            out: out.into(),
            client: None,
        }
    }

    /// Reports the checkpoints this session sends to `entry` (the dashboard's client list).
    #[must_use]
    pub fn with_client(mut self, entry: Arc<super::clients::ClientEntry>) -> Self {
        self.client = Some(entry);
        self
    }

    /// Runs until the token expires, the client goes away, shutdown, or an error.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<SessionEnd, SessionError> {
        let mut commits = self.env.events.subscribe();
        let keepalive = self.env.limits.keepalive;
        let mut next_keepalive = tokio::time::Instant::now() + keepalive;
        // Timers made once and reset, not on every wake-up: a commit wakes every open session.
        let keepalive_timer = tokio::time::sleep_until(next_keepalive);
        let expiry_timer = tokio::time::sleep_until(tokio::time::Instant::now() + self.seconds_left());
        tokio::pin!(keepalive_timer, expiry_timer);
        loop {
            if *shutdown.borrow() {
                return Ok(SessionEnd::Shutdown);
            }
            if let Some(end) = self.sync_to_latest(&mut commits).await? {
                return Ok(end);
            }
            let parked = self.park(&commits);
            tokio::select! {
                changed = commits.changed(), if parked.is_none() => {
                    if changed.is_err() {
                        return Ok(SessionEnd::Shutdown);
                    }
                }
                () = woken(parked.as_ref()) => {}
                () = &mut keepalive_timer => {
                    next_keepalive += keepalive;
                    keepalive_timer.as_mut().reset(next_keepalive);
                    // At zero the expiry timer ends the stream.
                    let left = self.seconds_left().as_secs();
                    if left > 0 {
                        let left = i32::try_from(left).unwrap_or(i32::MAX);
                        if let Some(end) = self.send(SyncLine::TokenExpiresIn(left)).await? {
                            return Ok(end);
                        }
                    }
                }
                () = &mut expiry_timer => {
                    self.send(SyncLine::TokenExpiresIn(0)).await?;
                    return Ok(SessionEnd::TokenExpired);
                }
                _ = shutdown.changed() => {}
                () = self.out.closed() => return Ok(SessionEnd::ClientGone),
            }
            if let Some(parked) = parked {
                self.unpark(parked);
            }
        }
    }

    /// Parks the session until a commit concerns it, when its bucket set cannot change without a
    /// generation change the dispatcher checks: static resolution, the last checkpoint completed, nothing
    /// left to send, no write checkpoint pending. Its sent state and positions move to the dispatcher
    /// meanwhile ([`Self::unpark`] takes them back). `None`: wait for every commit as before.
    fn park(&mut self, commits: &watch::Receiver<u64>) -> Option<Parked> {
        let sent = self.sent.as_ref().filter(|s| s.completed)?;
        let events = &self.env.events;
        if !self.unfinished.is_empty()
            || sent.reads.write_checkpoint_pending
            || sent.reads.write_checkpoint_generation != events.write_checkpoint_generation()
            || sent.reads.compaction_generation != events.compaction_generation()
        {
            return None;
        }
        let resolution = match &self.static_resolution {
            Some((version, resolution)) if *version == sent.version => Arc::clone(resolution),
            _ => return None,
        };
        ensure_dispatcher(&self.env);
        let state = ParkState {
            version: sent.version,
            at: sent.checkpoint,
            compaction_generation: sent.reads.compaction_generation,
            write_checkpoint_generation: sent.reads.write_checkpoint_generation,
        };
        let parcel = Box::new(Parcel {
            sent: self.sent.take()?,
            positions: std::mem::take(&mut self.positions),
            resolution,
            out: self.out.clone(),
            client: self.client.clone(),
        });
        let parked = self.env.reads.parked.park(state, parcel);
        // Registered first, then checked: a commit since the last read may have been dispatched before
        // the registration; then wait as for every commit.
        if commits.has_changed().unwrap_or(true) {
            self.unpark(parked);
            return None;
        }
        Some(parked)
    }

    /// Takes back the state the session parked with, as the dispatcher left it: advanced to the
    /// checkpoints it delivered, and to the ones that changed none of its buckets.
    fn unpark(&mut self, parked: Parked) {
        let Some((state, parcel)) = parked.leave() else {
            return;
        };
        let Parcel {
            mut sent, positions, ..
        } = *parcel;
        if sent.completed
            && sent.version == state.version
            && sent.reads.compaction_generation == state.compaction_generation
            && sent.reads.write_checkpoint_generation == state.write_checkpoint_generation
            && state.at.op_id >= sent.checkpoint.op_id
        {
            sent.checkpoint = state.at;
        }
        self.sent = Some(sent);
        self.positions = positions;
    }

    /// Time until the token's `exp`, rounded up to whole seconds.
    fn seconds_left(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let exp = Duration::from_secs(self.claims.expires_at);
        let left = exp.saturating_sub(now);
        if left.subsec_nanos() > 0 {
            Duration::from_secs(left.as_secs() + 1)
        } else {
            left
        }
    }

    /// Sends a line; `Some` when the session must end.
    async fn send(&self, line: impl Into<OutLine>) -> Result<Option<SessionEnd>, SessionError> {
        // Most lines find room: no timer for them (a commit sends thousands of lines at once).
        let line = match self.out.try_send(line.into()) {
            Ok(Ok(())) => {
                self.env.metrics.line_sent();
                return Ok(None);
            }
            Ok(Err(line)) => line,
            Err(()) => return Ok(Some(SessionEnd::ClientGone)),
        };
        let timeout = self.env.limits.send_timeout;
        match tokio::time::timeout(timeout, self.out.send(line)).await {
            Ok(Ok(())) => {
                self.env.metrics.line_sent();
                Ok(None)
            }
            Ok(Err(_)) => Ok(Some(SessionEnd::ClientGone)),
            Err(_) => Err(SessionError::SlowClient(timeout)),
        }
    }

    /// Sends what the client lacks for the latest checkpoint, moving on to newer checkpoints while they
    /// appear. Returns `Some` when the session must end.
    async fn sync_to_latest(
        &mut self,
        commits: &mut watch::Receiver<u64>,
    ) -> Result<Option<SessionEnd>, SessionError> {
        loop {
            commits.mark_unchanged();
            let started = Instant::now();
            let Some(view) = self.read_view().await? else {
                // No published checkpoint of an active version yet (initial snapshot running): keepalives
                // only, never an empty checkpoint in its place.
                return Ok(None);
            };
            let Some(line) = self.checkpoint_line(&view) else {
                if let Some(sent) = self.sent.as_mut()
                    && sent.completed
                    && sent.version == view.version
                {
                    // Nothing changed for this client: its state is also that of the newer checkpoint,
                    // which the next read can start from.
                    sent.checkpoint = view.checkpoint;
                    sent.reads = view.reads;
                }
                return Ok(None);
            };
            let full = matches!(line.line(), SyncLine::Checkpoint(_));
            if let Some(end) = self.send(line).await? {
                return Ok(Some(end));
            }
            self.env.metrics.checkpoint_sent(started.elapsed());
            if let Some(client) = &self.client {
                client.checkpoint_sent(view.checkpoint.op_id.get(), view.order.len());
            }
            let to_send = self.accept(view, full);
            let (version, checkpoint) = match &self.sent {
                Some(sent) => (sent.version, sent.checkpoint),
                None => return Ok(None),
            };
            let outcome = match self.send_data(version, checkpoint, &to_send, commits).await? {
                Ok(outcome) => outcome,
                Err(end) => return Ok(Some(end)),
            };
            match outcome {
                DataOutcome::Complete => {
                    if let Some(sent) = self.sent.as_mut() {
                        sent.completed = true;
                    }
                    return Ok(None);
                }
                DataOutcome::Interrupted => {
                    debug!(user = %self.user.0, "newer checkpoint while downloading; moving on")
                }
                DataOutcome::Compacted { target_op } => {
                    debug!(user = %self.user.0, %target_op, checkpoint = %checkpoint.op_id,
                        "op compacted after this checkpoint was sent; moving to a newer one");
                }
            }
        }
    }

    /// Reads the connection's state at the latest checkpoint of the active version, all from one
    /// consistent storage state (no compaction overlapping the reads).
    /// Whether the latest commit cannot concern this client, decided from what other sessions already
    /// read (no storage access, no blocking thread): same version and resolution, no compaction or write
    /// checkpoint since, and none of its buckets among those the commit changed. Then its state is also
    /// that of the newer checkpoint.
    fn skip_unconcerned(&mut self) -> bool {
        let reads = &self.env.reads;
        let Some(sent) = self.sent.as_mut().filter(|s| s.completed) else {
            return false;
        };
        if !self.unfinished.is_empty()
            || sent.reads.write_checkpoint_pending
            || sent.reads.write_checkpoint_generation != self.env.events.write_checkpoint_generation()
            || sent.reads.compaction_generation != self.env.events.compaction_generation()
            || self
                .static_resolution
                .as_ref()
                .is_none_or(|(v, _)| *v != sent.version)
        {
            return false;
        }
        let Some(published) = reads.cached_published(self.env.events.commit_count()) else {
            return false;
        };
        if published.version != sent.version || published.checkpoint.op_id < sent.checkpoint.op_id {
            return false;
        }
        let Some(changed) =
            reads.cached_changed(sent.version, sent.checkpoint.op_id, published.checkpoint.op_id)
        else {
            return false;
        };
        if sent.buckets.keys().any(|name| changed.contains(name)) {
            return false;
        }
        sent.checkpoint = published.checkpoint;
        true
    }

    async fn read_view(&mut self) -> Result<Option<CheckpointView>, SessionError> {
        if self.skip_unconcerned() {
            return Ok(None);
        }
        self.prefetch_shared().await?;
        if self.skip_unconcerned() {
            return Ok(None);
        }
        let env = Arc::clone(&self.env);
        let connection = Arc::clone(&self.connection);
        let user = self.user.clone();
        let client_id = self.client_id.clone();
        let cached = self.static_resolution.clone();
        let previous = self.sent.as_ref().filter(|s| s.completed).map(|s| PreviousRead {
            version: s.version,
            checkpoint: s.checkpoint.op_id,
            marks: s.reads,
            write_checkpoint: s.write_checkpoint,
            summaries: s
                .buckets
                .iter()
                .map(|(name, b)| (name.clone(), (b.checksum, b.count)))
                .collect(),
        });
        // What every concerned session reads alike is usually cached by now: no blocking-pool hop.
        let result = match read_view(
            &env,
            &connection,
            &user,
            client_id.as_ref(),
            cached.clone(),
            previous.as_ref(),
            Reads::CacheOnly,
        )? {
            Ok(result) => result,
            Err(Uncached) => {
                let shared = Arc::clone(&self.env);
                let _permit = shared
                    .reads
                    .permits
                    .acquire()
                    .await
                    .map_err(|e| SessionError::Task(e.to_string()))?;
                // Sessions that waited for a permit usually find everything read by the ones before them.
                if self.skip_unconcerned() {
                    return Ok(None);
                }
                let positions = previous.as_ref().map(|_| self.positions.clone());
                tokio::task::spawn_blocking(move || {
                    let read = read_view(
                        &env,
                        &connection,
                        &user,
                        client_id.as_ref(),
                        cached,
                        previous.as_ref(),
                        Reads::Storage,
                    );
                    if let (Ok(Ok(Some((view, _)))), Some(previous), Some(positions)) =
                        (&read, &previous, &positions)
                    {
                        warm_ops(&env, view, previous, positions);
                    }
                    read
                })
                .await
                .map_err(|e| SessionError::Task(e.to_string()))??
                .unwrap_or(None) // Reads::Storage never answers Uncached.
            }
        };
        Ok(result.map(|(view, resolution)| {
            if let Some(resolution) = resolution {
                self.static_resolution = Some((view.version, resolution));
            }
            view
        }))
    }

    /// After a commit, the first session to wake reads what decides whether a session is concerned (the
    /// published checkpoint, the buckets changed since the one it has) in one blocking hop, while the
    /// others wait for it instead of queueing for read permits; then most skip in memory, and a
    /// concerned session finds a free permit.
    async fn prefetch_shared(&self) -> Result<(), SessionError> {
        use std::sync::atomic::Ordering;
        let Some(sent) = self.sent.as_ref().filter(|s| s.completed) else {
            return Ok(());
        };
        let (version, after) = (sent.version, sent.checkpoint.op_id);
        let reads = &self.env.reads;
        let commits = self.env.events.commit_count();
        let mark = commits.wrapping_add(1);
        let cached = reads.cached_published(commits).is_some_and(|p| {
            p.version != version || reads.cached_changed(version, after, p.checkpoint.op_id).is_some()
        });
        if cached || *reads.prefetched.borrow() >= mark {
            return Ok(());
        }
        if reads.prefetching.fetch_max(mark, Ordering::AcqRel) >= mark {
            // Another session is reading it: wait (a failed read releases us too).
            let mut done = reads.prefetched.subscribe();
            let _ = done.wait_for(|done| *done >= mark).await;
            return Ok(());
        }
        let _done = PrefetchDone {
            prefetched: &reads.prefetched,
            mark,
        };
        let env = Arc::clone(&self.env);
        tokio::task::spawn_blocking(move || -> Result<(), SessionError> {
            if let Some(published) = env.reads.published(&*env.storage, commits)?
                && published.version == version
                && published.checkpoint.op_id >= after
            {
                env.reads
                    .changed(&*env.storage, version, after, published.checkpoint.op_id)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| SessionError::Task(e.to_string()))??;
        Ok(())
    }

    /// The line announcing `view`, or `None` when the client already has exactly this state.
    fn checkpoint_line(&self, view: &CheckpointView) -> Option<OutLine> {
        let bucket_line = |name: &BucketName| {
            let b = &view.buckets[name];
            BucketChecksum {
                bucket: name.clone(),
                checksum: b.checksum,
                count: u32::try_from(b.count).unwrap_or(u32::MAX),
                priority: b.priority,
                subscriptions: b.subscriptions.clone(),
            }
        };
        match &self.sent {
            Some(sent) if sent.version == view.version => {
                let updated: Vec<BucketChecksum> = view
                    .order
                    .iter()
                    .filter(|name| sent.buckets.get(*name) != Some(&view.buckets[*name]))
                    .map(bucket_line)
                    .collect();
                let removed: Vec<BucketName> = {
                    let mut removed: Vec<BucketName> = sent
                        .buckets
                        .keys()
                        .filter(|name| !view.buckets.contains_key(*name))
                        .cloned()
                        .collect();
                    removed.sort();
                    removed
                };
                let unchanged = updated.is_empty()
                    && removed.is_empty()
                    && sent.write_checkpoint == view.write_checkpoint
                    && self.unfinished.is_empty()
                    && sent.completed;
                if unchanged {
                    return None;
                }
                if sent.checkpoint == view.checkpoint
                    && updated.is_empty()
                    && removed.is_empty()
                    && sent.write_checkpoint == view.write_checkpoint
                    && !sent.completed
                    && self.unfinished.is_empty()
                {
                    // Only reachable when a complete could not be sent for this checkpoint (compaction):
                    // wait for a newer one rather than announce the same again.
                    return None;
                }
                Some(self.env.reads.diff(CheckpointDiff {
                    last_op_id: view.checkpoint.op_id,
                    write_checkpoint: view.write_checkpoint,
                    removed_buckets: removed,
                    updated_buckets: updated,
                }))
            }
            // First checkpoint of the connection, or of a newly active sync-rules version: a full one,
            // which makes the client drop every bucket it does not list.
            _ => Some(
                SyncLine::Checkpoint(CheckpointLine {
                    last_op_id: view.checkpoint.op_id,
                    write_checkpoint: view.write_checkpoint,
                    buckets: view.order.iter().map(bucket_line).collect(),
                    streams: view.streams.clone(),
                })
                .into(),
            ),
        }
    }

    /// Records `view` as sent; returns the buckets whose ops must be sent, in line order.
    fn accept(&mut self, view: CheckpointView, full: bool) -> Vec<(BucketName, BucketPriority)> {
        let previous = self.sent.take();
        if full {
            // A new version (or the first checkpoint): buckets the client still holds from before are
            // dropped by it; anything unlisted is forgotten here too.
            self.positions.retain(|name, _| view.buckets.contains_key(name));
            self.unfinished.retain(|name| view.buckets.contains_key(name));
        } else {
            for name in previous.iter().flat_map(|p| p.buckets.keys()) {
                if !view.buckets.contains_key(name) {
                    // Removed: the client deletes it; if it comes back it starts from zero.
                    self.positions.remove(name);
                    self.unfinished.remove(name);
                    self.requested.remove(name);
                }
            }
        }
        let mut to_send = Vec::new();
        for name in &view.order {
            let bucket = &view.buckets[name];
            let known = !full
                && previous
                    .as_ref()
                    .and_then(|p| p.buckets.get(name))
                    .is_some_and(|b| b.checksum == bucket.checksum && b.count == bucket.count);
            if !self.positions.contains_key(name) {
                let start = self.requested.remove(name).unwrap_or(OpId::ZERO);
                self.positions.insert(name.clone(), start);
            }
            if !known || self.unfinished.contains(name) {
                self.unfinished.insert(name.clone());
                to_send.push((name.clone(), bucket.priority));
            }
        }
        self.sent = Some(Sent {
            version: view.version,
            checkpoint: view.checkpoint,
            buckets: view.buckets,
            write_checkpoint: view.write_checkpoint,
            completed: false,
            reads: view.reads,
        });
        to_send
    }

    /// Sends the ops of `buckets` up to `checkpoint`, highest priority first, with the completes.
    async fn send_data(
        &mut self,
        version: RulesVersion,
        checkpoint: Checkpoint,
        buckets: &[(BucketName, BucketPriority)],
        commits: &mut watch::Receiver<u64>,
    ) -> Result<Result<DataOutcome, SessionEnd>, SessionError> {
        let mut groups: BTreeMap<BucketPriority, Vec<BucketName>> = BTreeMap::new();
        for (name, priority) in buckets {
            groups.entry(*priority).or_default().push(name.clone());
        }
        let last_group = groups.keys().next_back().copied();
        let mut ops_sent = 0usize;
        let mut largest_target = OpId::ZERO;
        for (priority, names) in &groups {
            for name in names {
                loop {
                    let after = self.positions.get(name).copied().unwrap_or(OpId::ZERO);
                    let Some(data) = self.data_line(version, name, after, checkpoint.op_id).await? else {
                        break;
                    };
                    largest_target = largest_target.max(data.largest_target);
                    if let Some(end) = self.send(OutLine::Shared(data.line)).await? {
                        return Ok(Err(end));
                    }
                    self.env.metrics.ops_sent(data.count);
                    self.positions.insert(name.clone(), data.last);
                    ops_sent += data.count;
                    if !data.has_more {
                        break;
                    }
                    if ops_sent >= self.env.limits.interrupt_after_ops
                        && commits.has_changed().unwrap_or(false)
                    {
                        return Ok(Ok(DataOutcome::Interrupted));
                    }
                }
                self.unfinished.remove(name);
            }
            if largest_target > checkpoint.op_id {
                return Ok(Ok(DataOutcome::Compacted {
                    target_op: largest_target,
                }));
            }
            if Some(*priority) != last_group {
                let line = SyncLine::PartialCheckpointComplete(PartialCheckpointComplete {
                    last_op_id: checkpoint.op_id,
                    priority: *priority,
                });
                if let Some(end) = self.send(line).await? {
                    return Ok(Err(end));
                }
            }
        }
        let complete = self.env.reads.complete(checkpoint.op_id);
        if let Some(end) = self.send(OutLine::Shared(complete)).await? {
            return Ok(Err(end));
        }
        Ok(Ok(DataOutcome::Complete))
    }

    /// The next `data` line of `bucket` after `after`, up to `up_to`, shared with every session sending
    /// the same range. `None` when nothing is left.
    async fn data_line(
        &self,
        version: RulesVersion,
        bucket: &BucketName,
        after: OpId,
        up_to: OpId,
    ) -> Result<Option<SharedData>, SessionError> {
        if after >= up_to {
            return Ok(None);
        }
        let key = ops_key(&self.env, version, bucket, after, up_to);
        if let Some(data) = self.env.reads.cached_data(&key) {
            return Ok(Some(data));
        }
        let ops = match self.env.reads.cached_ops(&key) {
            Some(ops) => ops,
            None => {
                let env = Arc::clone(&self.env);
                let key = key.clone();
                tokio::task::spawn_blocking(move || env.reads.ops(&*env.storage, key))
                    .await
                    .map_err(|e| SessionError::Task(e.to_string()))??
            }
        };
        Ok(shared_data(&self.env, key, &ops))
    }
}

/// The `data` line of the op read `key` found (`None` for no ops), cached for other sessions.
fn shared_data<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    key: OpsKey,
    ops: &[StoredOp],
) -> Option<SharedData> {
    if ops.is_empty() {
        return None;
    }
    let limit = env.limits.max_ops_per_line;
    let max_bytes = env.limits.max_line_bytes;
    let (_, bucket, after, ..) = &key;
    let mut bytes = 0usize;
    let mut keep = 0usize;
    for op in ops {
        if keep == limit || (keep > 0 && bytes >= max_bytes) {
            break;
        }
        bytes += 64
            + op.entry.data.as_ref().map_or(0, String::len)
            + op.entry.object_id.as_ref().map_or(0, String::len);
        keep += 1;
    }
    let has_more = ops.len() > keep;
    let ops = &ops[..keep];
    let largest_target = ops
        .iter()
        .filter_map(|op| op.target_op)
        .max()
        .unwrap_or(OpId::ZERO);
    let last = ops.last().map_or(*after, |op| op.entry.op_id);
    let count = ops.len();
    let line = DataLine {
        bucket: bucket.clone(),
        after: *after,
        has_more,
        data: ops.iter().map(|op| op.entry.clone()).collect(),
        next_after: last,
    };
    let data = SharedData {
        line: SharedLine::new(SyncLine::Data(line)),
        last,
        largest_target,
        count,
        has_more,
        bytes,
    };
    env.reads.cache_data(key, &data);
    Some(data)
}

/// Reads (blocking) what the dispatcher needs to deliver `at.op_id` to parked sessions from the shared
/// caches: the checksums of the changed buckets and the `data` lines from the positions in `ranges`.
pub(super) fn prepare_delivery<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    at: &ParkState,
    ranges: &HashMap<BucketName, HashSet<OpId>>,
) -> Result<(), StorageError> {
    let (version, up_to) = (at.version, at.at.op_id);
    let names: Vec<BucketName> = ranges.keys().cloned().collect();
    env.reads
        .summaries(&*env.storage, version, up_to, at.compaction_generation, &names)?;
    for (bucket, positions) in ranges {
        for &position in positions {
            let mut after = position;
            while after < up_to {
                let key = ops_key(env, version, bucket, after, up_to);
                let data = match env.reads.cached_data(&key) {
                    Some(data) => data,
                    None => match shared_data(env, key.clone(), &env.reads.ops(&*env.storage, key)?) {
                        Some(data) => data,
                        None => break,
                    },
                };
                if !data.has_more {
                    break;
                }
                after = data.last;
            }
        }
    }
    Ok(())
}

/// A bucket whose checksum or count changed, with the new ones.
type ChangedBucket<'a> = (&'a BucketName, (Checksum, u64));

/// Queues the lines a parked session would send for the checkpoint `at` (the diff of its changed
/// buckets, their `data` lines, the completes) into its channel, built only from the shared caches,
/// and advances its state past them as sending them would. `false` (nothing queued, nothing changed):
/// the session must be woken to send them itself, since a line is not cached or not shared, an op
/// was compacted, or its channel lacks room for every line.
pub(super) fn deliver_parked<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    at: &ParkState,
    changed: &HashSet<BucketName>,
    parcel: &mut Parcel,
    started: Instant,
) -> bool {
    let checkpoint = at.at;
    let sent = &parcel.sent;
    let version = sent.version;
    if !sent.completed || version != at.version {
        return false;
    }
    // Held locally so the names borrow from it, not from the parcel being updated.
    let resolution = Arc::clone(&parcel.resolution);
    let held: Vec<&BucketName> = resolution
        .buckets
        .iter()
        .map(|b| &b.bucket)
        .filter(|name| changed.contains(*name))
        .collect();
    let Some(summaries) = env.reads.cached_summaries(
        version,
        checkpoint.op_id,
        sent.reads.compaction_generation,
        held.iter().copied(),
    ) else {
        return false;
    };
    // As `checkpoint_line` and `accept` would find: the buckets whose checksum or count changed.
    let mut updated = Vec::new();
    let mut groups: BTreeMap<BucketPriority, Vec<ChangedBucket<'_>>> = BTreeMap::new();
    for (name, summary) in held.into_iter().zip(summaries) {
        let Some(bucket) = sent.buckets.get(name) else {
            return false;
        };
        if (bucket.checksum, bucket.count) == summary {
            continue;
        }
        updated.push(BucketChecksum {
            bucket: name.clone(),
            checksum: summary.0,
            count: u32::try_from(summary.1).unwrap_or(u32::MAX),
            priority: bucket.priority,
            subscriptions: bucket.subscriptions.clone(),
        });
        groups.entry(bucket.priority).or_default().push((name, summary));
    }
    if updated.is_empty() {
        parcel.sent.checkpoint = checkpoint;
        return true;
    }
    let OutLine::Shared(diff) = env.reads.diff(CheckpointDiff {
        last_op_id: checkpoint.op_id,
        write_checkpoint: sent.write_checkpoint,
        removed_buckets: Vec::new(),
        updated_buckets: updated,
    }) else {
        return false;
    };
    // As `send_data` would send them.
    let mut lines = vec![OutLine::Shared(diff)];
    let mut positions = Vec::new();
    let mut ops = 0usize;
    let last_group = groups.keys().next_back().copied();
    for (priority, buckets) in &groups {
        for (name, _) in buckets {
            let mut after = parcel.positions.get(*name).copied().unwrap_or(OpId::ZERO);
            while after < checkpoint.op_id {
                let key = ops_key(env, version, name, after, checkpoint.op_id);
                let Some(data) = env.reads.cached_data(&key) else {
                    return false;
                };
                if data.largest_target > checkpoint.op_id {
                    return false;
                }
                lines.push(OutLine::Shared(data.line));
                ops += data.count;
                after = data.last;
                if !data.has_more {
                    break;
                }
            }
            positions.push((*name, after));
        }
        if Some(*priority) != last_group {
            lines.push(
                SyncLine::PartialCheckpointComplete(PartialCheckpointComplete {
                    last_op_id: checkpoint.op_id,
                    priority: *priority,
                })
                .into(),
            );
        }
    }
    lines.push(OutLine::Shared(env.reads.complete(checkpoint.op_id)));
    let count = lines.len();
    if !parcel.out.try_send_all(lines) {
        return false;
    }
    for _ in 0..count {
        env.metrics.line_sent();
    }
    env.metrics.ops_sent(ops);
    env.metrics.checkpoint_sent(started.elapsed());
    if let Some(client) = &parcel.client {
        client.checkpoint_sent(checkpoint.op_id.get(), resolution.buckets.len());
    }
    for (name, position) in positions {
        if let Some(p) = parcel.positions.get_mut(name) {
            *p = position;
        }
    }
    for (name, (checksum, count)) in groups.into_values().flatten() {
        if let Some(bucket) = parcel.sent.buckets.get_mut(name) {
            bucket.checksum = checksum;
            bucket.count = count;
        }
    }
    parcel.sent.checkpoint = checkpoint;
    true
}

/// Resolves when a parked session is woken; never without one.
async fn woken(parked: Option<&Parked>) {
    match parked {
        Some(parked) => parked.woken().await,
        None => std::future::pending().await,
    }
}

/// The key of the op read behind the next `data` line of `bucket` after `after`. One op more than a
/// line holds tells whether more follow; a compaction changes what the range holds, so its generation
/// is part of the key.
fn ops_key<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    version: RulesVersion,
    bucket: &BucketName,
    after: OpId,
    up_to: OpId,
) -> OpsKey {
    (
        version,
        bucket.clone(),
        after,
        up_to,
        env.limits.max_ops_per_line + 1,
        env.events.compaction_generation(),
    )
}

/// Buckets whose ops [`warm_ops`] reads ahead in one view read.
const WARM_BUCKETS: usize = 4;

/// Reads the ops a concerned session is about to send for a few buckets that changed, in the blocking
/// hop that read its view, so its first `data` lines need no second hop. Best effort: a failed read is
/// left to the `data` line's own read to report.
fn warm_ops<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    view: &CheckpointView,
    previous: &PreviousRead,
    positions: &HashMap<BucketName, OpId>,
) {
    if previous.version != view.version {
        return;
    }
    let changed = view.order.iter().filter(|name| {
        let bucket = &view.buckets[*name];
        previous.summaries.get(*name) != Some(&(bucket.checksum, bucket.count))
    });
    for name in changed.take(WARM_BUCKETS) {
        let Some(&after) = positions.get(name) else {
            continue;
        };
        if after >= view.checkpoint.op_id {
            continue;
        }
        let key = ops_key(env, view.version, name, after, view.checkpoint.op_id);
        if env.reads.cached_data(&key).is_none() && env.reads.cached_ops(&key).is_none() {
            let _ = env.reads.ops(&*env.storage, key);
        }
    }
}

type ViewRead = Option<(CheckpointView, Option<Arc<ResolvedConnection>>)>;

/// Where [`read_view`] may get what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// Storage where the shared cache lacks it (blocking).
    Storage,
    /// The shared cache only: fine on an async thread, and after a commit most sessions find all there.
    CacheOnly,
}

/// Only storage has what a [`Reads::CacheOnly`] view needs.
#[derive(Debug)]
struct Uncached;

/// Reads a connection's view of the latest checkpoint (blocking with [`Reads::Storage`]). Retries when
/// a compaction ran meanwhile, since checksums below a compacted range change (PROTOCOL §6.1 rule 4).
fn read_view<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    connection: &ConnectionRequest,
    user: &UserId,
    client_id: Option<&ClientId>,
    cached: Option<(RulesVersion, Arc<ResolvedConnection>)>,
    previous: Option<&PreviousRead>,
    reads: Reads,
) -> Result<Result<ViewRead, Uncached>, SessionError> {
    let cache_only = reads == Reads::CacheOnly;
    loop {
        let generation = env.events.compaction_generation();
        if generation % 2 == 1 {
            if cache_only {
                return Ok(Err(Uncached));
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let commits = env.events.commit_count();
        let published = if cache_only {
            match env.reads.cached_published(commits) {
                Some(published) => published,
                None => return Ok(Err(Uncached)),
            }
        } else {
            match env.reads.published(&*env.storage, commits)? {
                Some(published) => published,
                None => return Ok(Ok(None)),
            }
        };
        let version = published.version;
        let checkpoint = published.checkpoint;
        let (resolution, newly_static) = match &cached {
            Some((v, resolution)) if *v == version => (Arc::clone(resolution), None),
            _ if cache_only => return Ok(Err(Uncached)),
            _ => {
                let rules = env.rules.get(version, &published.rules)?;
                let (resolution, used_lookups) = resolve(env, &rules, connection, version, &checkpoint)?;
                let resolution = Arc::new(resolution);
                let newly_static = (!used_lookups).then(|| Arc::clone(&resolution));
                (resolution, newly_static)
            }
        };
        if resolution.buckets.len() > env.limits.max_buckets {
            return Err(SessionError::TooManyBuckets {
                count: resolution.buckets.len(),
                limit: env.limits.max_buckets,
            });
        }
        let names: Vec<BucketName> = resolution.buckets.iter().map(|b| b.bucket.clone()).collect();
        let write_checkpoint_generation = env.events.write_checkpoint_generation();
        // The previous view stays valid for what the commits since did not touch.
        let previous = previous.filter(|p| {
            p.version == version
                && p.marks.compaction_generation == generation
                && p.checkpoint <= checkpoint.op_id
        });
        let changed = match previous {
            Some(p) if cache_only => {
                match env.reads.cached_changed(version, p.checkpoint, checkpoint.op_id) {
                    Some(changed) => Some(changed),
                    None => return Ok(Err(Uncached)),
                }
            }
            Some(p) => Some(
                env.reads
                    .changed(&*env.storage, version, p.checkpoint, checkpoint.op_id)?,
            ),
            None => None,
        };
        let mut sums: Vec<Option<(Checksum, u64)>> = names
            .iter()
            .map(|name| {
                let p = previous?;
                let changed = changed.as_ref()?;
                if changed.contains(name) {
                    return None;
                }
                p.summaries.get(name).copied()
            })
            .collect();
        let missing: Vec<BucketName> = names
            .iter()
            .zip(&sums)
            .filter(|(_, sum)| sum.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        let read = if cache_only {
            match env
                .reads
                .cached_summaries(version, checkpoint.op_id, generation, &missing)
            {
                Some(read) => read,
                None => return Ok(Err(Uncached)),
            }
        } else {
            env.reads
                .summaries(&*env.storage, version, checkpoint.op_id, generation, &missing)?
        };
        let mut read = read.into_iter();
        for sum in &mut sums {
            if sum.is_none() {
                *sum = read.next();
            }
        }
        let (write_checkpoint, write_checkpoint_pending) = match previous {
            Some(p)
                if p.marks.write_checkpoint_generation == write_checkpoint_generation
                    && !p.marks.write_checkpoint_pending =>
            {
                (p.write_checkpoint, false)
            }
            _ if cache_only => return Ok(Err(Uncached)),
            _ => {
                let at_checkpoint = env
                    .storage
                    .write_checkpoint_for(user, client_id, checkpoint.lsn)?;
                let newest = env.storage.write_checkpoint_for(user, client_id, Lsn::MAX)?;
                (at_checkpoint, newest != at_checkpoint)
            }
        };
        if env.events.compaction_generation() != generation {
            if cache_only {
                return Ok(Err(Uncached));
            }
            continue;
        }
        let mut buckets = HashMap::with_capacity(names.len());
        for (bucket, (checksum, count)) in resolution.buckets.iter().zip(sums.into_iter().flatten()) {
            buckets.insert(
                bucket.bucket.clone(),
                BucketView {
                    checksum,
                    count,
                    priority: bucket.priority,
                    subscriptions: bucket.origins.iter().map(|o| subscription_of(*o)).collect(),
                },
            );
        }
        let streams = resolution
            .streams
            .iter()
            .map(|s| StreamDescription {
                name: s.name.to_string(),
                is_default: s.is_default,
                errors: s
                    .errors
                    .iter()
                    .map(|(subscription, message)| StreamError {
                        subscription: subscription
                            .and_then(|i| u32::try_from(i).ok())
                            .map_or(SubscriptionRef::Default, SubscriptionRef::Explicit),
                        message: message.clone(),
                    })
                    .collect(),
            })
            .collect();
        let view = CheckpointView {
            version,
            checkpoint,
            order: names,
            buckets,
            streams,
            write_checkpoint,
            reads: ReadMarks {
                compaction_generation: generation,
                write_checkpoint_generation,
                write_checkpoint_pending,
            },
        };
        return Ok(Ok(Some((view, newly_static))));
    }
}

/// The connection a sync request and token describe: what bucket resolution reads.
fn connection_request(claims: &SessionClaims, request: &SyncRequest) -> ConnectionRequest {
    let client_parameters = Value::Object(request.parameters.clone().unwrap_or_default());
    let mut connection = ConnectionRequest::new(&claims.payload, &client_parameters);
    connection.include_defaults = request.streams.include_defaults;
    connection.subscriptions = request
        .streams
        .subscriptions
        .iter()
        .map(|s| syncgate_rules::StreamSubscription {
            stream: s.stream.clone(),
            parameters: s.parameters.clone().map(Value::Object),
            override_priority: s.override_priority.map(BucketPriority::get),
        })
        .collect();
    connection
}

/// A connection's buckets at the latest published checkpoint, as its first `checkpoint` line would list
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionView {
    pub version: RulesVersion,
    pub checkpoint: Checkpoint,
    /// In the order the checkpoint line lists them.
    pub buckets: Vec<ConnectionBucket>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionBucket {
    pub bucket: BucketName,
    pub priority: BucketPriority,
    pub checksum: Checksum,
    pub count: u64,
}

/// Reads what a new session of `claims` with `request` would be sent as its first checkpoint, through the
/// session's own read (same resolution, limits and consistency), so the dashboard's answer cannot differ
/// from a real sync. Blocking: call it on the blocking pool. `None` while no checkpoint is published.
pub fn read_connection_view<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    claims: &SessionClaims,
    request: &SyncRequest,
) -> Result<Option<ConnectionView>, SessionError> {
    let connection = connection_request(claims, request);
    let user = UserId(claims.user_id.clone());
    let read = read_view(
        env,
        &connection,
        &user,
        request.client_id.as_ref(),
        None,
        None,
        Reads::Storage,
    )?;
    let Ok(Some((view, _))) = read else {
        return Ok(None);
    };
    let buckets = view
        .order
        .iter()
        .map(|name| {
            let bucket = &view.buckets[name];
            ConnectionBucket {
                bucket: name.clone(),
                priority: bucket.priority,
                checksum: bucket.checksum,
                count: bucket.count,
            }
        })
        .collect();
    Ok(Some(ConnectionView {
        version: view.version,
        checkpoint: view.checkpoint,
        buckets,
    }))
}

fn subscription_of(origin: BucketOrigin) -> BucketSubscription {
    match origin {
        BucketOrigin::Default(k) => BucketSubscription::Default(u32::try_from(k).unwrap_or(u32::MAX)),
        BucketOrigin::Subscription(i) => BucketSubscription::Sub(u32::try_from(i).unwrap_or(u32::MAX)),
    }
}

/// Resolves the connection's buckets at `checkpoint`; the flag says whether the parameter index was read
/// (if not, the result holds for every checkpoint of the version).
fn resolve<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    rules: &SyncRules,
    connection: &ConnectionRequest,
    version: RulesVersion,
    checkpoint: &Checkpoint,
) -> Result<(ResolvedConnection, bool), SessionError> {
    let mut used_lookups = false;
    let resolution = rules.resolve_connection(connection, |lookups: &[ParameterLookup]| {
        used_lookups = true;
        if lookups.len() > env.limits.max_lookups {
            return Err(SessionError::TooManyLookups {
                count: lookups.len(),
                limit: env.limits.max_lookups,
            });
        }
        let keys: Vec<String> = lookups.iter().map(ParameterLookup::key).collect();
        let found = env.storage.lookup(version, checkpoint, &keys)?;
        Ok(found
            .into_iter()
            .map(|rows| rows.iter().map(|json| parse_values(json)).collect())
            .collect())
    })?;
    Ok((resolution, used_lookups))
}

/// Parameter-index values are stored as a JSON array (`ParameterRow::values_json`); a damaged entry
/// matches nothing rather than failing every session of the user.
fn parse_values(json: &str) -> Vec<SqliteValue> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Array(values)) => values.iter().map(SqliteValue::from_json).collect(),
        _ => {
            warn!(
                values = json,
                "parameter index entry is not a JSON array; ignored"
            );
            Vec::new()
        }
    }
}
