//! Change notifications for readers in the same process: sync sessions wait on [`StorageEvents`]
//! instead of polling, so a commit reaches every open stream within one wake-up. Writes of other
//! processes sharing a Postgres storage arrive through its change feed ([`super::feed`]), which
//! raises the same events.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use syncgate_protocol::{BucketName, ClientId, OpId, UserId, WriteCheckpointId};
use tokio::sync::watch;

use super::{
    BucketStorage, BucketSummary, Checkpoint, CompactStats, ReplicationState, Result, RulesVersion,
    SnapshotChunk, SourceRowKey, SourceTransaction, StoredOp, SyncRulesVersion, TableSnapshot,
};

/// What readers can wait for. `commits` counts storage commits that may publish a new checkpoint or
/// a new active version; `compactions` is odd while a compaction runs and changes with each one, so a
/// reader can tell whether a compaction overlapped a group of reads (PROTOCOL §6.1 rule 4).
#[derive(Debug)]
pub struct StorageEvents {
    commits: watch::Sender<u64>,
    /// The published compaction generation, derived from `compaction_sources`.
    compactions: AtomicU64,
    compaction_sources: Mutex<CompactionSources>,
    /// Changed by every stored write checkpoint or checkpoint request.
    write_checkpoints: AtomicU64,
}

/// Where compactions are seen running: in this process (its own counter, odd while running) and in
/// the shared storage (the stored counter mirrored by the change feed, odd while any process
/// compacts). A process's own compaction shows in both; the published generation is odd while
/// either is odd and changes with every change of either, so nothing is counted twice into a wrong
/// parity.
#[derive(Debug, Default)]
struct CompactionSources {
    local: u64,
    remote: u64,
    /// Changes of `local` or `remote` so far: keeps the published generation strictly increasing
    /// whatever values the stored counter takes.
    changes: u64,
}

impl CompactionSources {
    fn generation(&self) -> u64 {
        let running = (self.local | self.remote) & 1;
        self.changes.wrapping_mul(2).wrapping_add(running)
    }
}

impl Default for StorageEvents {
    fn default() -> Self {
        StorageEvents {
            commits: watch::Sender::new(0),
            compactions: AtomicU64::new(0),
            compaction_sources: Mutex::default(),
            write_checkpoints: AtomicU64::new(0),
        }
    }
}

impl StorageEvents {
    /// A receiver that sees every later commit (and is marked changed by none before now).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Wakes every reader: something they read may have changed.
    pub fn notify(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Commits so far (what [`StorageEvents::subscribe`] receivers see change).
    pub fn commit_count(&self) -> u64 {
        *self.commits.borrow()
    }

    /// Changed by every write checkpoint stored since the process started.
    pub fn write_checkpoint_generation(&self) -> u64 {
        self.write_checkpoints.load(Ordering::Acquire)
    }

    /// The compaction generation: even when none runs, changed by every compaction.
    pub fn compaction_generation(&self) -> u64 {
        self.compactions.load(Ordering::Acquire)
    }

    /// A write checkpoint was stored (by this process, or by another one as the change feed saw).
    pub fn note_write_checkpoint(&self) {
        self.write_checkpoints.fetch_add(1, Ordering::AcqRel);
    }

    /// Mirrors the shared storage's compaction counter (odd while a compaction runs anywhere).
    pub fn set_remote_compaction(&self, stored: u64) {
        self.update_compaction(|sources| {
            if sources.remote == stored {
                return false;
            }
            sources.remote = stored;
            true
        });
    }

    /// One step of this process's own compaction: the first makes it running, the next ends it.
    fn step_local_compaction(&self) {
        self.update_compaction(|sources| {
            sources.local = sources.local.wrapping_add(1);
            true
        });
    }

    fn update_compaction(&self, change: impl FnOnce(&mut CompactionSources) -> bool) {
        // A poisoned lock only means another thread panicked mid-update; the counters stay usable.
        let mut sources = self
            .compaction_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if change(&mut sources) {
            sources.changes = sources.changes.wrapping_add(1);
            self.compactions.store(sources.generation(), Ordering::Release);
        }
    }
}

/// A [`BucketStorage`] that notifies [`StorageEvents`] after each write that readers care about.
#[derive(Debug)]
pub struct Notifying<S> {
    inner: S,
    events: std::sync::Arc<StorageEvents>,
}

impl<S: BucketStorage> Notifying<S> {
    pub fn new(inner: S) -> Self {
        Notifying {
            inner,
            events: std::sync::Arc::default(),
        }
    }

    pub fn events(&self) -> &std::sync::Arc<StorageEvents> {
        &self.events
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn notify_after<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.events.notify();
        }
        result
    }
}

impl<S: BucketStorage> BucketStorage for Notifying<S> {
    fn apply(&self, version: RulesVersion, txn: &SourceTransaction) -> Result<Option<OpId>> {
        self.notify_after(self.inner.apply(version, txn))
    }

    fn apply_batch(&self, version: RulesVersion, txns: &[SourceTransaction]) -> Result<Option<Checkpoint>> {
        self.notify_after(self.inner.apply_batch(version, txns))
    }

    fn apply_snapshot_chunk(
        &self,
        version: RulesVersion,
        chunk: &SnapshotChunk,
        progress: &TableSnapshot,
    ) -> Result<()> {
        // No checkpoint is published by a snapshot chunk: nothing for readers.
        self.inner.apply_snapshot_chunk(version, chunk, progress)
    }

    fn snapshot_progress(&self, version: RulesVersion) -> Result<Vec<TableSnapshot>> {
        self.inner.snapshot_progress(version)
    }

    fn replication_state(&self, version: RulesVersion) -> Result<ReplicationState> {
        self.inner.replication_state(version)
    }

    fn set_replication_state(&self, version: RulesVersion, state: &ReplicationState) -> Result<()> {
        self.inner.set_replication_state(version, state)
    }

    fn source_row(&self, version: RulesVersion, row: &SourceRowKey) -> Result<Option<String>> {
        self.inner.source_row(version, row)
    }

    fn source_row_keys(&self, version: RulesVersion, table: &str) -> Result<Vec<String>> {
        self.inner.source_row_keys(version, table)
    }

    fn versions(&self) -> Result<Vec<SyncRulesVersion>> {
        self.inner.versions()
    }

    fn latest_checkpoint(&self, version: RulesVersion) -> Result<Option<Checkpoint>> {
        self.inner.latest_checkpoint(version)
    }

    fn bucket_checksums(
        &self,
        version: RulesVersion,
        checkpoint: OpId,
        buckets: &[BucketName],
    ) -> Result<Vec<BucketSummary>> {
        self.inner.bucket_checksums(version, checkpoint, buckets)
    }

    fn changed_buckets(&self, version: RulesVersion, after: OpId) -> Result<Vec<BucketName>> {
        self.inner.changed_buckets(version, after)
    }

    fn ops(
        &self,
        version: RulesVersion,
        bucket: &BucketName,
        after: OpId,
        up_to: OpId,
        limit: usize,
    ) -> Result<Vec<StoredOp>> {
        self.inner.ops(version, bucket, after, up_to, limit)
    }

    fn lookup(
        &self,
        version: RulesVersion,
        checkpoint: &Checkpoint,
        keys: &[String],
    ) -> Result<Vec<Vec<String>>> {
        self.inner.lookup(version, checkpoint, keys)
    }

    fn create_write_checkpoint(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        lsn: syncgate_protocol::Lsn,
    ) -> Result<WriteCheckpointId> {
        let result = self.inner.create_write_checkpoint(user, client_id, lsn);
        self.events.note_write_checkpoint();
        result
    }

    fn request_write_checkpoint(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        requested: WriteCheckpointId,
        lsn: syncgate_protocol::Lsn,
    ) -> Result<WriteCheckpointId> {
        let result = self
            .inner
            .request_write_checkpoint(user, client_id, requested, lsn);
        self.events.note_write_checkpoint();
        result
    }

    fn write_checkpoint_for(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        up_to: syncgate_protocol::Lsn,
    ) -> Result<Option<WriteCheckpointId>> {
        self.inner.write_checkpoint_for(user, client_id, up_to)
    }

    fn create_version(&self, rules: &str) -> Result<RulesVersion> {
        self.inner.create_version(rules)
    }

    fn active_version(&self) -> Result<Option<SyncRulesVersion>> {
        self.inner.active_version()
    }

    fn activate(&self, version: RulesVersion) -> Result<()> {
        self.notify_after(self.inner.activate(version))
    }

    fn delete_version(&self, version: RulesVersion) -> Result<()> {
        self.inner.delete_version(version)
    }

    fn compact(&self, version: RulesVersion, up_to: OpId) -> Result<CompactStats> {
        // Odd while running: a reader that sees the same even value before and after its reads knows
        // no compaction overlapped them.
        self.events.step_local_compaction();
        let result = self.inner.compact(version, up_to);
        self.events.step_local_compaction();
        self.notify_after(result)
    }
}
