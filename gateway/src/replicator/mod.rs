//! # The replicator: Postgres → sync rules → bucket storage
//!
//! One [`VersionReplicator`] per sync-rules version. It owns the version's replication slot, copies the
//! initial snapshot, then streams its changes (pgoutput or the syncgate output plugin, whichever the slot
//! was created with: invariant 9), evaluates every row change with the rules and applies whole
//! source transactions to storage, confirming an LSN to Postgres only after storage made it durable.
//!
//! ## How the invariants (DESIGN.md) are kept
//! - **2, checkpoints on transaction boundaries.** Transactions are buffered whole and applied with
//!   [`BucketStorage::apply_batch`]; several complete transactions may share one storage commit (one
//!   fsync), each still with its own checkpoint.
//! - **4, restartable.** The ack after a batch is the batch's last `end_lsn`; on restart storage skips
//!   every transaction at or below its stored LSN, so the server's re-sends produce no ops twice.
//! - **5, initial snapshot.** Slot first (exporting a snapshot), then tables copied in key-ordered chunks,
//!   each chunk committed with its progress; a crash resumes at the first unfinished chunk on a fresh
//!   snapshot whose WAL position is recorded. Afterwards a write-checkpoint marker is emitted; the
//!   version becomes active only once streaming has passed it, so no checkpoint from a half-copied
//!   state is ever visible.
//! - **8, bounded WAL.** Keepalives are acked when nothing is pending (so changes to unpublished tables
//!   do not pin WAL), the slot's retained WAL is measured, and a lost slot ends the version's stream
//!   with [`ReplicatorError::SlotLost`] so the supervisor re-snapshots into a new version.

mod catalog;
pub mod metrics;
mod source_conn;
mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use syncgate_rules::{SourceTable, SyncRules, TablePattern};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use catalog::{Catalog, MARKER_PREFIX, SlotDrop, SlotStatus, is_marker_prefix};
pub use metrics::{MetricsSnapshot, ReplicationMetrics};
pub use source_conn::SourceConnection;
pub use table::{Scratch, TableMapper, decode_source_row};

use crate::source::{
    Chunk, ColumnValue, ErrorKind, Lsn, OldRow, OutputPlugin, RelationInfo, ReplicationClient,
    SnapshotReader, SourceError, SourceEvent, StartOptions, StreamItem, TableLayout, TableName,
    WalstreamClient, table_layout, tables_option,
};
use crate::storage::{
    BucketStorage, Checkpoint, ReplicationState, RowChange, RulesVersion, SnapshotChunk, SourceRowKey,
    SourceTransaction, StorageError, TableSnapshot,
};

/// Tunables of one version's replication.
#[derive(Debug, Clone)]
pub struct ReplicatorOptions {
    /// pgoutput's publication (unused by versions that stream through the syncgate plugin).
    pub publication: String,
    /// The output plugin of slots created from now on. A version whose slot exists keeps the plugin
    /// the slot was created with (invariant 9), whatever this says.
    pub decoder: OutputPlugin,
    /// Slot names are this prefix and the version number. Slots with the prefix whose version no longer
    /// exists are dropped as orphans, so one prefix belongs to one storage.
    pub slot_prefix: String,
    /// Rows per snapshot chunk (one storage commit each). 40,000 copied a 300,000-row table 23 % faster
    /// than 10,000 in the replication bench (fewer commits, fresh-row probes and chunk queries); larger
    /// chunks gained less and hold more rows in memory (three chunks are in flight: read, evaluated, written).
    pub snapshot_chunk_rows: usize,
    /// Row changes per storage commit, at most (whole transactions: a bigger one is applied alone).
    pub max_batch_changes: usize,
    /// How long a complete transaction may wait for more to share its storage commit.
    pub max_batch_delay: Duration,
    /// How often the slot's retained WAL and health are checked.
    pub slot_check_interval: Duration,
}

impl Default for ReplicatorOptions {
    fn default() -> Self {
        ReplicatorOptions {
            publication: crate::config::DEFAULT_PUBLICATION.to_owned(),
            decoder: OutputPlugin::Pgoutput,
            slot_prefix: "syncgate_".to_owned(),
            snapshot_chunk_rows: 40_000,
            max_batch_changes: 20_000,
            max_batch_delay: Duration::from_millis(50),
            slot_check_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The slot was dropped or invalidated (WAL it needed was removed): this version can never catch
    /// up; its data must be rebuilt from a new snapshot into a new version.
    #[error(
        "replication slot {slot} is lost ({reason}); the sync rules will be re-replicated from a new snapshot"
    )]
    SlotLost { slot: String, reason: String },
    #[error("storage task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ReplicatorError {
    /// Whether reconnecting may help (a dropped connection, a restarting server, a busy file).
    pub fn is_retryable(&self) -> bool {
        match self {
            // Any failure of the replication session itself (terminated walsender, dropped socket, server
            // shutting down) is worth a reconnect: the next attempt re-checks the slot and resumes from storage.
            ReplicatorError::Source(SourceError::Replication { .. }) => true,
            ReplicatorError::Source(e) => e.kind() == ErrorKind::Retryable,
            ReplicatorError::Storage(e) => e.is_retryable(),
            ReplicatorError::SlotLost { .. } | ReplicatorError::Join(_) => false,
        }
    }

    /// Whether the slot is held by another process's replication session (PID in the server's message).
    pub fn is_slot_in_use(&self) -> bool {
        match self {
            ReplicatorError::Source(SourceError::Replication { message, .. }) => {
                message.contains("is active for PID") || message.contains("is in use by another process")
            }
            _ => false,
        }
    }
}

/// The longest wait before retrying a slot another process still streams from.
const SLOT_IN_USE_RETRY: Duration = Duration::from_millis(500);

pub type Result<T, E = ReplicatorError> = std::result::Result<T, E>;

/// Why [`VersionReplicator::run_once`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested.
    Shutdown,
    /// Another version became active: this one is retired (its slot and data may be removed).
    Retired,
}

/// The slot name of a version.
pub fn slot_name(prefix: &str, version: RulesVersion) -> String {
    format!("{prefix}{version}")
}

/// Replicates one sync-rules version.
pub struct VersionReplicator<S: BucketStorage + 'static> {
    storage: Arc<S>,
    version: RulesVersion,
    rules: Arc<SyncRules>,
    source: SourceConnection,
    options: ReplicatorOptions,
    metrics: Arc<ReplicationMetrics>,
    /// The active version, as the supervisor publishes it; a replicator activates its own version here.
    active: watch::Sender<Option<RulesVersion>>,
    shutdown: watch::Receiver<bool>,
}

impl<S: BucketStorage + 'static> std::fmt::Debug for VersionReplicator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionReplicator")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<S: BucketStorage + 'static> VersionReplicator<S> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        storage: Arc<S>,
        version: RulesVersion,
        rules: Arc<SyncRules>,
        source: SourceConnection,
        options: ReplicatorOptions,
        metrics: Arc<ReplicationMetrics>,
        active: watch::Sender<Option<RulesVersion>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        VersionReplicator {
            storage,
            version,
            rules,
            source,
            options,
            metrics,
            active,
            shutdown,
        }
    }

    pub fn version(&self) -> RulesVersion {
        self.version
    }

    pub fn slot_name(&self) -> String {
        slot_name(&self.options.slot_prefix, self.version)
    }

    /// Runs until shutdown, retirement or a non-retryable error, reconnecting with backoff after
    /// retryable ones (a Postgres restart, a dropped connection).
    pub async fn run(&mut self) -> Result<Stopped> {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.run_once().await {
                Ok(stopped) => return Ok(stopped),
                // Stopping anyway: whatever was not confirmed is re-sent at the next start.
                Err(error)
                    if *self.shutdown.borrow() && !matches!(error, ReplicatorError::SlotLost { .. }) =>
                {
                    warn!(version = %self.version, %error, "replication ended with an error while stopping");
                    return Ok(Stopped::Shutdown);
                }
                Err(error) if error.is_retryable() => {
                    // A slot still held by a dead predecessor's walsender (a gateway that was killed or lost
                    // its lease) is released within moments: retry it often, so a takeover is quick.
                    let wait = if error.is_slot_in_use() {
                        backoff.min(SLOT_IN_USE_RETRY)
                    } else {
                        backoff
                    };
                    warn!(version = %self.version, %error, retry_in = ?wait, "replication interrupted; reconnecting");
                    if self.sleep_or_shutdown(wait).await {
                        return Ok(Stopped::Shutdown);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sleeps; true when shutdown was requested meanwhile.
    async fn sleep_or_shutdown(&mut self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => *self.shutdown.borrow(),
            _ = self.shutdown.changed() => true,
        }
    }

    /// One connection's worth of replication: snapshot if unfinished, then stream.
    pub async fn run_once(&mut self) -> Result<Stopped> {
        let mut state = self.blocking(|s, v| s.replication_state(v)).await?;
        let mut catalog = Catalog::new(self.source.connect("catalog queries").await?);
        let slot = self.slot_name();
        let mut client: Option<WalstreamClient> = None;
        // Known once the slot is: created now with the configured decoder, or read from the slot.
        let mut plugin: Option<OutputPlugin> = None;

        if state.snapshot_done_lsn.is_none() {
            let mut chunk_lsn = Lsn::ZERO;
            let reader = match &state.slot_name {
                None => {
                    self.drop_unrecorded_slot(&catalog, &slot).await?;
                    let mut replication = WalstreamClient::connect(&self.source.conninfo).await?;
                    let created = replication.create_slot(&slot, self.options.decoder).await?;
                    plugin = Some(self.options.decoder);
                    // Import before anything else runs on the replication session (the snapshot dies then).
                    let snapshot_client = self.source.connect("the initial snapshot").await?;
                    let reader = SnapshotReader::import(snapshot_client, &created.snapshot_name).await?;
                    state = ReplicationState {
                        slot_name: Some(slot.clone()),
                        start_lsn: Some(created.consistent_point),
                        snapshot_done_lsn: None,
                    };
                    let saved = state.clone();
                    self.blocking(move |s, v| s.set_replication_state(v, &saved))
                        .await?;
                    chunk_lsn = created.consistent_point;
                    client = Some(replication);
                    reader
                }
                Some(existing) => {
                    plugin = Some(self.check_slot(&catalog, existing).await?);
                    let snapshot_client = self.source.connect("resuming the initial snapshot").await?;
                    let (reader, lsn) = SnapshotReader::begin_fresh(snapshot_client).await?;
                    chunk_lsn = chunk_lsn.max(lsn);
                    reader
                }
            };
            let plugin = plugin.expect("set by both arms above");
            let copied_lsn = self
                .copy_snapshot(&mut catalog, reader, chunk_lsn, plugin)
                .await?;
            // The marker puts a commit-free position past every chunk into the stream, so the first
            // checkpoint is published even if the database stays idle.
            let done_lsn = match catalog.emit_marker().await {
                Ok(marker) => marker.max(copied_lsn),
                Err(error) => {
                    warn!(%error, "could not emit a write-checkpoint marker; the first checkpoint waits for the next write or keepalive");
                    catalog.current_wal_lsn().await?.max(copied_lsn)
                }
            };
            state.snapshot_done_lsn = Some(done_lsn);
            let saved = state.clone();
            self.blocking(move |s, v| s.set_replication_state(v, &saved))
                .await?;
            info!(version = %self.version, %done_lsn, "initial snapshot copied; streaming until it is consistent");
        }

        let (client, plugin) = match (client, plugin) {
            (Some(client), Some(plugin)) => (client, plugin),
            _ => {
                let plugin = self.check_slot(&catalog, &slot).await?;
                (WalstreamClient::connect(&self.source.conninfo).await?, plugin)
            }
        };
        self.stream(client, catalog, &state, plugin).await
    }

    /// Drops the version's slot if it exists although storage never recorded it: a run was killed between
    /// creating it and recording it. Its exported snapshot died with that run, so nothing can resume from
    /// it, and creating the slot again would fail forever with "already exists".
    async fn drop_unrecorded_slot(&self, catalog: &Catalog, slot: &str) -> Result<()> {
        match catalog.drop_slot_when_released(slot).await? {
            SlotDrop::Absent => Ok(()),
            SlotDrop::Dropped => {
                warn!(
                    slot,
                    "dropped a replication slot that an interrupted run created but never recorded"
                );
                Ok(())
            }
            SlotDrop::InUse => Err(SourceError::Replication {
                message: format!("replication slot {slot} is in use by another process"),
                retryable: true,
            }
            .into()),
        }
    }

    /// Fails with [`ReplicatorError::SlotLost`] if the slot is gone or invalidated; otherwise returns the
    /// output plugin the slot decodes with, which this version keeps for its lifetime (invariant 9).
    async fn check_slot(&self, catalog: &Catalog, slot: &str) -> Result<OutputPlugin> {
        match catalog.slot_status(slot).await? {
            None => Err(ReplicatorError::SlotLost {
                slot: slot.to_owned(),
                reason: "it no longer exists".to_owned(),
            }),
            Some(status) if status.is_lost() => Err(ReplicatorError::SlotLost {
                slot: slot.to_owned(),
                reason: "Postgres removed WAL it still needed (max_slot_wal_keep_size)".to_owned(),
            }),
            Some(status) => {
                if let Some(bytes) = status.retained_bytes {
                    self.metrics.retained_wal(bytes);
                }
                let name = status.plugin.unwrap_or_default();
                OutputPlugin::from_name(&name).ok_or_else(|| {
                    SourceError::Configuration(format!(
                        "replication slot {slot} decodes with output plugin `{name}`, which syncgate cannot \
                         read; drop the slot (SELECT pg_drop_replication_slot('{slot}')) and restart to \
                         re-replicate from a new snapshot"
                    ))
                    .into()
                })
            }
        }
    }

    /// Runs a storage call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&S, RulesVersion) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T> {
        let storage = Arc::clone(&self.storage);
        let version = self.version;
        Ok(tokio::task::spawn_blocking(move || f(&storage, version)).await??)
    }

    /// Tables the rules read that the version's stream delivers: those of the publication (pgoutput), or
    /// every table of the database (the syncgate plugin filters by the rules' patterns itself).
    async fn snapshot_tables(&self, catalog: &Catalog, plugin: OutputPlugin) -> Result<Vec<TableName>> {
        let patterns = self.rules.source_tables();
        let tables = match plugin {
            OutputPlugin::Pgoutput => catalog.publication_tables(&self.options.publication).await?,
            OutputPlugin::Syncgate => catalog.user_tables().await?,
        };
        Ok(tables
            .into_iter()
            .filter(|table| {
                let source = SourceTable::new(&table.schema, &table.name, &[]);
                patterns.iter().any(|p: &TablePattern| p.matches(&source))
            })
            .collect())
    }

    /// Copies every table not yet done, chunk by chunk; returns the largest WAL position a chunk was
    /// read at (streaming must pass it before the copy is consistent).
    async fn copy_snapshot(
        &self,
        catalog: &mut Catalog,
        reader: SnapshotReader,
        chunk_lsn: Lsn,
        plugin: OutputPlugin,
    ) -> Result<Lsn> {
        let tables = self.snapshot_tables(catalog, plugin).await?;
        let progress = self.blocking(|s, v| s.snapshot_progress(v)).await?;
        let mut max_lsn = progress
            .iter()
            .map(|p| p.lsn)
            .max()
            .unwrap_or(Lsn::ZERO)
            .max(chunk_lsn);
        let started = Instant::now();
        let mut total_rows = 0u64;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.metrics
            .snapshot_tables
            .store(count(tables.len()), Ordering::Relaxed);
        self.metrics.snapshot_tables_done.store(0, Ordering::Relaxed);
        for table in tables {
            let storage_name = format!("{}.{}", table.schema, table.name);
            let previous = progress.iter().find(|p| p.table == storage_name);
            if previous.is_some_and(|p| p.done) {
                self.metrics.snapshot_tables_done.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // A table copied from its beginning has no stored rows, in this chunk or any later one (see
            // `SnapshotChunk::assume_unstored`); a resumed table already holds rows, so storage probes.
            let unstored = previous.is_none();
            let layout = reader.layout(&table).await?;
            let mapper = Arc::new(self.mapper_for_layout(catalog, &layout).await?);
            if !mapper.is_relevant() {
                self.metrics.snapshot_tables_done.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut resume_after: Option<Vec<String>> = previous
                .and_then(|p| p.resume_after.as_deref())
                .and_then(|encoded| serde_json::from_str(encoded).ok());
            info!(%table, resuming = resume_after.is_some(), "copying table");
            let table_started = Instant::now();
            let mut table_rows = 0u64;
            // Three chunks in flight: the next one is read from Postgres while this one is evaluated and
            // the previous one written. Chunks are still written one after another, in order.
            let mut writing: Option<tokio::task::JoinHandle<Result<Duration, StorageError>>> = None;
            // Where the table's time went, for the log: reading from Postgres, evaluating rules, waiting for
            // the previous chunk's write, and the writes themselves (the stages overlap).
            let mut stages = SnapshotStages::default();
            let chunk_rows = self.options.snapshot_chunk_rows;
            let read_chunk = |after: Option<Vec<String>>| {
                let (reader, layout) = (&reader, &layout);
                async move {
                    let started = Instant::now();
                    let chunk = reader.copy_chunk(layout, after.as_deref(), chunk_rows).await?;
                    Ok::<_, ReplicatorError>((chunk, started.elapsed()))
                }
            };
            let (mut chunk, took) = read_chunk(resume_after.clone()).await?;
            stages.read += took;
            loop {
                let rows = u64::try_from(chunk.rows.len()).unwrap_or(u64::MAX);
                table_rows += rows;
                let progress = TableSnapshot {
                    table: storage_name.clone(),
                    resume_after: chunk
                        .resume_after
                        .as_ref()
                        .map(|key| serde_json::to_string(key).unwrap_or_default()),
                    done: chunk.resume_after.is_none(),
                    lsn: chunk_lsn,
                };
                resume_after.clone_from(&chunk.resume_after);
                let done = progress.done;
                let rules = Arc::clone(&self.rules);
                let mapper = Arc::clone(&mapper);
                let evaluation = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let mut scratch = Scratch::default();
                    let mut values = Vec::new();
                    let mut evaluated = SnapshotChunk::with_capacity(chunk.rows.len());
                    for row in &chunk.rows {
                        Chunk::values(row, &mut values);
                        evaluated.push(mapper.evaluate(&rules, &values, &mut scratch));
                    }
                    // The raw rows are freed here, beside the writer rather than on its thread.
                    drop(chunk);
                    let chunk = if unstored {
                        evaluated.assume_unstored()
                    } else {
                        evaluated
                    };
                    (chunk, started.elapsed())
                });
                let (evaluated, next) = if done {
                    (evaluation.await?, None)
                } else {
                    let (evaluated, next) = tokio::join!(evaluation, read_chunk(resume_after.clone()));
                    (evaluated?, Some(next?))
                };
                let (changes, took) = evaluated;
                stages.evaluate += took;
                let started = Instant::now();
                if let Some(previous_write) = writing.take() {
                    stages.write += previous_write.await??;
                }
                stages.wait += started.elapsed();
                let storage = Arc::clone(&self.storage);
                let version = self.version;
                let metrics = Arc::clone(&self.metrics);
                writing = Some(tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    storage.apply_snapshot_chunk(version, &changes, &progress)?;
                    let took = started.elapsed();
                    metrics.snapshot_rows.fetch_add(rows, Ordering::Relaxed);
                    // Hundreds of thousands of small allocations: freed on another thread, so the writer
                    // can start the next chunk at once.
                    tokio::task::spawn_blocking(move || drop(changes));
                    Ok(took)
                }));
                let Some((next_chunk, took)) = next else { break };
                stages.read += took;
                chunk = next_chunk;
                debug!(%table, rows = table_rows, "snapshot progress");
            }
            if let Some(last_write) = writing.take() {
                stages.write += last_write.await??;
            }
            total_rows += table_rows;
            self.metrics.snapshot_tables_done.fetch_add(1, Ordering::Relaxed);
            let seconds = table_started.elapsed().as_secs_f64();
            info!(
                %table,
                rows = table_rows,
                seconds,
                read_seconds = stages.read.as_secs_f64(),
                evaluate_seconds = stages.evaluate.as_secs_f64(),
                write_seconds = stages.write.as_secs_f64(),
                write_wait_seconds = stages.wait.as_secs_f64(),
                "table copied"
            );
            max_lsn = max_lsn.max(chunk_lsn);
        }
        reader.finish().await?;
        info!(
            rows = total_rows,
            seconds = started.elapsed().as_secs_f64(),
            "initial snapshot done"
        );
        Ok(max_lsn)
    }

    async fn mapper_for_layout(&self, catalog: &mut Catalog, layout: &TableLayout) -> Result<TableMapper> {
        let mut types = Vec::with_capacity(layout.type_oids.len());
        for &oid in &layout.type_oids {
            types.push(catalog.column_type(oid).await?);
        }
        Ok(TableMapper::new(
            &self.rules,
            layout.table.clone(),
            layout.columns.clone(),
            &layout.type_oids,
            types,
            layout.identity.clone(),
        ))
    }

    /// A mapper for a relation as pgoutput describes it. The identity comes from the catalog (primary
    /// key first, as the snapshot uses), matched to the relation's columns by name; pgoutput's key flags
    /// are the fallback when the catalog has moved on (the table was altered or dropped since).
    async fn mapper_for_relation(
        &self,
        catalog: &mut Catalog,
        relation: &RelationInfo,
    ) -> Result<TableMapper> {
        catalog.forget_types();
        let name = TableName::new(relation.schema.clone(), relation.name.clone());
        let columns: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let type_oids: Vec<u32> = relation.columns.iter().map(|c| c.type_oid).collect();
        let mut types = Vec::with_capacity(type_oids.len());
        for &oid in &type_oids {
            types.push(catalog.column_type(oid).await?);
        }
        let flagged: Vec<usize> = (0..columns.len())
            .filter(|&i| relation.columns[i].is_key)
            .collect();
        let identity = match table_layout(catalog.client(), &name).await {
            Ok(layout) => {
                let by_name: Option<Vec<usize>> = layout
                    .identity
                    .iter()
                    .map(|&i| columns.iter().position(|c| *c == layout.columns[i]))
                    .collect();
                by_name.unwrap_or(flagged)
            }
            Err(error) => {
                debug!(%error, table = %name, "catalog layout unavailable; using the relation's key flags");
                flagged
            }
        };
        let identity = if identity.is_empty() {
            (0..columns.len()).collect()
        } else {
            identity
        };
        Ok(TableMapper::new(
            &self.rules,
            name,
            columns,
            &type_oids,
            types,
            identity,
        ))
    }

    /// Streams from the slot until shutdown, retirement or an error.
    async fn stream(
        &mut self,
        mut client: WalstreamClient,
        mut catalog: Catalog,
        state: &ReplicationState,
        plugin: OutputPlugin,
    ) -> Result<Stopped> {
        let slot = self.slot_name();
        let stored = self.blocking(|s, v| s.latest_checkpoint(v)).await?;
        let start = stored.map(|c| c.lsn).or(state.start_lsn).unwrap_or(Lsn::ZERO);
        let options = match plugin {
            OutputPlugin::Pgoutput => StartOptions::new(vec![self.options.publication.clone()]),
            OutputPlugin::Syncgate => {
                let tables = tables_option(&self.rules.source_tables()).ok_or_else(|| {
                    SourceError::Configuration(
                        "the sync rules read no table, so there is nothing to replicate".to_owned(),
                    )
                })?;
                StartOptions::syncgate(tables)
            }
        };
        client
            .start(&slot, start, &options)
            .await
            .map_err(|error| match error {
                SourceError::Configuration(message) if message.contains("does not exist") => {
                    ReplicatorError::SlotLost {
                        slot: slot.clone(),
                        reason: message,
                    }
                }
                // Never switch decoders under a version: its stream would change format mid-way. Say
                // why it cannot stream and how to get going again (the retry loop keeps trying).
                SourceError::Replication { message, retryable } if plugin == OutputPlugin::Syncgate => {
                    SourceError::Replication {
                        message: format!(
                            "{message} (version {} was created with the syncgate output plugin and keeps \
                             streaming through it; install the plugin on the server and allow it in \
                             output_plugin_libraries where that setting exists, or change the sync rules \
                             so a new version is built with the configured decoder)",
                            self.version
                        ),
                        retryable,
                    }
                    .into()
                }
                other => other.into(),
            })?;
        let mut stream = StreamState {
            done_lsn: state.snapshot_done_lsn.unwrap_or(Lsn::ZERO),
            activated: self.is_active(),
            ..StreamState::default()
        };
        self.activate_if_caught_up(&mut stream).await?;
        let mut mappers: HashMap<u32, Arc<TableMapper>> = HashMap::new();
        let mut scratch = Scratch::default();
        let mut active_rx = self.active.subscribe();
        let mut next_slot_check = Instant::now() + self.options.slot_check_interval;

        loop {
            if *self.shutdown.borrow() {
                self.flush(&mut client, &mut stream).await?;
                client.close().await?;
                return Ok(Stopped::Shutdown);
            }
            if stream.activated && !self.is_active() {
                info!(version = %self.version, "another sync-rules version is active; stopping this one");
                self.flush(&mut client, &mut stream).await?;
                client.close().await?;
                return Ok(Stopped::Retired);
            }
            let flush_due = stream
                .pending_since
                .filter(|_| stream.open.is_none())
                .map(|since| since + self.options.max_batch_delay);
            let wake = flush_due.unwrap_or(next_slot_check).min(next_slot_check);
            let inflight_done = async {
                match stream.inflight.as_mut() {
                    Some(inflight) => (&mut inflight.task).await,
                    None => std::future::pending().await,
                }
            };
            let item = tokio::select! {
                item = client.next() => item?,
                result = inflight_done => {
                    self.finish_inflight(&mut client, &mut stream, result).await?;
                    continue;
                }
                () = tokio::time::sleep_until(wake) => {
                    if flush_due.is_some_and(|due| Instant::now() >= due) {
                        self.start_flush(&mut client, &mut stream).await?;
                    }
                    if Instant::now() >= next_slot_check {
                        self.check_slot(&catalog, &slot).await?;
                        next_slot_check = Instant::now() + self.options.slot_check_interval;
                    }
                    continue;
                }
                _ = self.shutdown.changed() => continue,
                _ = active_rx.changed() => continue,
            };
            self.metrics
                .stream_bytes
                .fetch_add(client.take_stream_bytes(), Ordering::Relaxed);
            match item {
                StreamItem::Keepalive { wal_end } => {
                    self.metrics.received(wal_end);
                    if stream.open.is_none() {
                        // Every commit before wal_end has arrived: flush it, then confirm wal_end so
                        // changes to unpublished tables do not pin WAL (invariant 8).
                        self.flush(&mut client, &mut stream).await?;
                        if !stream.activated && wal_end >= stream.done_lsn {
                            self.checkpoint_at(&mut stream, wal_end).await?;
                        }
                        client.ack(wal_end).await?;
                        self.metrics.caught_up(wal_end);
                    }
                }
                StreamItem::Event(event) => {
                    self.on_event(
                        event,
                        &mut client,
                        &mut catalog,
                        &mut stream,
                        &mut mappers,
                        &mut scratch,
                    )
                    .await?;
                }
            }
        }
    }

    fn is_active(&self) -> bool {
        *self.active.borrow() == Some(self.version)
    }

    async fn on_event(
        &mut self,
        event: SourceEvent,
        client: &mut WalstreamClient,
        catalog: &mut Catalog,
        stream: &mut StreamState,
        mappers: &mut HashMap<u32, Arc<TableMapper>>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        match event {
            SourceEvent::Begin { final_lsn, .. } => {
                stream.open = Some(OpenTransaction {
                    commit_lsn: final_lsn,
                    changes: Vec::new(),
                });
            }
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                let Some(open) = stream.open.take() else {
                    return Err(SourceError::Protocol("Commit without Begin".into()).into());
                };
                if open.commit_lsn != commit_lsn {
                    return Err(SourceError::Protocol(format!(
                        "Commit at {commit_lsn} closes the transaction announced for {}",
                        open.commit_lsn
                    ))
                    .into());
                }
                stream.pending_changes += open.changes.len();
                stream.pending.push(SourceTransaction {
                    commit_lsn,
                    changes: open.changes,
                });
                stream.pending_ack = stream.pending_ack.max(end_lsn);
                stream.pending_commit_time = Some(commit_time);
                stream.pending_since.get_or_insert_with(Instant::now);
                self.metrics.received(end_lsn);
                if stream.pending_changes >= self.options.max_batch_changes {
                    self.start_flush(client, stream).await?;
                }
            }
            SourceEvent::Relation(relation) => {
                let mapper = self.mapper_for_relation(catalog, &relation).await?;
                debug!(table = %mapper.name, relevant = mapper.is_relevant(), "relation");
                mappers.insert(relation.oid, Arc::new(mapper));
            }
            SourceEvent::Insert { relation, new } => {
                let mapper = mapper_of(mappers, relation.oid)?;
                if mapper.is_relevant() {
                    let values = texts(&new);
                    let change = mapper.evaluate(&self.rules, &values, scratch);
                    stream.record(change)?;
                }
            }
            SourceEvent::Update { relation, old, new } => {
                let mapper = mapper_of(mappers, relation.oid)?;
                if mapper.is_relevant() {
                    self.on_update(&mapper, old.as_ref(), &new, stream, scratch)
                        .await?;
                }
            }
            SourceEvent::Delete { relation, old } => {
                let mapper = mapper_of(mappers, relation.oid)?;
                if mapper.is_relevant() {
                    let key = mapper.row_key(&texts(old.values()));
                    stream.record_delete(key)?;
                }
            }
            SourceEvent::Truncate { relations } => {
                // The stored keys read below must include the batch being written.
                self.wait_inflight(client, stream).await?;
                for relation in relations {
                    let mapper = mapper_of(mappers, relation.oid)?;
                    if !mapper.is_relevant() {
                        continue;
                    }
                    let table = mapper.storage_name.clone();
                    let stored = {
                        let table = table.clone();
                        self.blocking(move |s, v| s.source_row_keys(v, &table)).await?
                    };
                    let mut keys: Vec<String> = stored;
                    for (key, row) in &stream.overlay {
                        if key.table == table && *row != OverlayRow::Deleted {
                            keys.push(key.key.clone());
                        }
                    }
                    keys.sort();
                    keys.dedup();
                    for key in keys {
                        let row = SourceRowKey {
                            table: table.clone(),
                            key,
                        };
                        stream.record_delete(row)?;
                    }
                }
            }
            SourceEvent::Message {
                prefix,
                transactional,
                lsn,
                ..
            } => {
                // A transactional marker is inside a transaction whose commit makes the checkpoint anyway.
                if is_marker_prefix(&prefix) && !transactional && stream.open.is_none() {
                    self.metrics.received(lsn);
                    stream.pending.push(SourceTransaction {
                        commit_lsn: lsn,
                        changes: Vec::new(),
                    });
                    stream.pending_ack = stream.pending_ack.max(lsn);
                    self.flush(client, stream).await?;
                }
            }
        }
        Ok(())
    }

    /// An UPDATE: completes unchanged TOASTed columns from the stored row, and turns a change of the
    /// row's identity into a delete of the old row plus the new row.
    async fn on_update(
        &self,
        mapper: &TableMapper,
        old: Option<&OldRow>,
        new: &[ColumnValue],
        stream: &mut StreamState,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let new_texts = texts(new);
        let new_key = mapper.row_key(&new_texts);
        let old_key = match old {
            // Old values carry the identity (key or full row): the row was keyed by them.
            Some(old) => {
                let old_values = texts(old.values());
                let mut key_values = new_texts.clone();
                for &i in &mapper.identity {
                    if let Some(slot) = key_values.get_mut(i) {
                        *slot = old_values.get(i).copied().flatten();
                    }
                }
                mapper.row_key(&key_values)
            }
            None => new_key.clone(),
        };
        let merged: Vec<Option<String>>;
        let values: Vec<Option<&str>> = if new.iter().any(|v| matches!(v, ColumnValue::UnchangedToast)) {
            let pending = stream.overlay.get(&old_key).or_else(|| {
                stream
                    .inflight
                    .as_ref()
                    .and_then(|inflight| inflight.overlay.get(&old_key))
            });
            let stored = match pending {
                Some(OverlayRow::Present(row)) => row.clone(),
                Some(OverlayRow::Deleted) => None,
                None => {
                    let key = old_key.clone();
                    self.blocking(move |s, v| s.source_row(v, &key)).await?
                }
            };
            let stored = stored
                .map(|encoded| decode_source_row(&encoded))
                .unwrap_or_default();
            merged = new
                .iter()
                .enumerate()
                .map(|(i, value)| match value {
                    ColumnValue::Null => None,
                    ColumnValue::Text(text) => Some(text.clone()),
                    ColumnValue::UnchangedToast => {
                        let column = &mapper.columns[i];
                        let found = stored.iter().find(|(name, _)| name == column).map(|(_, v)| v.clone());
                        if found.is_none() {
                            warn!(table = %mapper.name, column, "unchanged TOASTed value not in storage; syncing NULL until the column is next written");
                        }
                        found.flatten()
                    }
                })
                .collect();
            merged.iter().map(Option::as_deref).collect()
        } else {
            new_texts
        };
        if old_key != new_key {
            stream.record_delete(old_key)?;
        }
        let change = mapper.evaluate(&self.rules, &values, scratch);
        stream.record(change)
    }

    /// Applies the pending transactions in one storage commit, then confirms their last LSN.
    async fn flush(&self, client: &mut WalstreamClient, stream: &mut StreamState) -> Result<()> {
        self.start_flush(client, stream).await?;
        self.wait_inflight(client, stream).await
    }

    /// Starts writing the pending transactions in the background (after the previous batch is done), so
    /// the next batch is received and evaluated while this one is written.
    async fn start_flush(&self, client: &mut WalstreamClient, stream: &mut StreamState) -> Result<()> {
        if stream.pending.is_empty() {
            return Ok(());
        }
        self.wait_inflight(client, stream).await?;
        let txns = std::mem::take(&mut stream.pending);
        let rows = u64::try_from(stream.pending_changes).unwrap_or(u64::MAX);
        let count = u64::try_from(txns.len()).unwrap_or(u64::MAX);
        let last_lsn = txns.last().map_or(Lsn::ZERO, |t| t.commit_lsn);
        let storage = Arc::clone(&self.storage);
        let version = self.version;
        let metrics = Arc::clone(&self.metrics);
        stream.inflight = Some(Inflight {
            task: tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let applied = storage.apply_batch(version, &txns);
                metrics.applying(started.elapsed());
                applied
            }),
            ack: stream.pending_ack,
            commit_time: stream.pending_commit_time.take(),
            rows,
            count,
            last_lsn,
            started: Instant::now(),
            overlay: std::mem::take(&mut stream.overlay),
        });
        stream.pending_changes = 0;
        stream.pending_since = None;
        Ok(())
    }

    /// Waits for the batch being written, if any, and confirms it.
    async fn wait_inflight(&self, client: &mut WalstreamClient, stream: &mut StreamState) -> Result<()> {
        let Some(inflight) = stream.inflight.as_mut() else {
            return Ok(());
        };
        let result = (&mut inflight.task).await;
        self.finish_inflight(client, stream, result).await
    }

    /// Confirms a written batch to the server and in the metrics.
    async fn finish_inflight(
        &self,
        client: &mut WalstreamClient,
        stream: &mut StreamState,
        result: std::result::Result<
            std::result::Result<Option<Checkpoint>, StorageError>,
            tokio::task::JoinError,
        >,
    ) -> Result<()> {
        let Some(inflight) = stream.inflight.take() else {
            return Ok(());
        };
        let checkpoint = result??;
        client.ack(inflight.ack).await?;
        self.metrics
            .applied(inflight.ack, inflight.commit_time, inflight.rows, inflight.count);
        debug!(
            version = %self.version,
            transactions = inflight.count,
            rows = inflight.rows,
            last_lsn = %inflight.last_lsn,
            op_id = ?checkpoint.map(|c| c.op_id),
            millis = inflight.started.elapsed().as_millis(),
            "applied batch"
        );
        self.activate_if_caught_up(stream).await
    }

    /// Activates the version once its stored checkpoint has passed the snapshot's LSN. Reads storage, not
    /// the last batch: after a restart the batch that got there may have been applied before the crash.
    async fn activate_if_caught_up(&self, stream: &mut StreamState) -> Result<()> {
        if stream.activated {
            return Ok(());
        }
        let latest = self.blocking(|s, v| s.latest_checkpoint(v)).await?;
        if latest.is_some_and(|c| c.lsn >= stream.done_lsn) {
            self.activate(stream).await?;
        }
        Ok(())
    }

    /// Records an empty checkpoint at `lsn` (caught up on an idle stream) and activates the version.
    async fn checkpoint_at(&self, stream: &mut StreamState, lsn: Lsn) -> Result<()> {
        let txn = SourceTransaction {
            commit_lsn: lsn,
            changes: Vec::new(),
        };
        self.blocking(move |s, v| s.apply_batch(v, &[txn])).await?;
        self.activate(stream).await
    }

    async fn activate(&self, stream: &mut StreamState) -> Result<()> {
        self.blocking(|s, v| s.activate(v)).await?;
        stream.activated = true;
        info!(version = %self.version, "sync rules version caught up and active");
        self.active.send_replace(Some(self.version));
        Ok(())
    }
}

fn mapper_of(mappers: &HashMap<u32, Arc<TableMapper>>, oid: u32) -> Result<Arc<TableMapper>> {
    mappers.get(&oid).cloned().ok_or_else(|| {
        SourceError::Protocol(format!("change for relation {oid} before its Relation message")).into()
    })
}

/// Column texts; unchanged TOAST reads as NULL here (callers merge it first where it matters).
fn texts(values: &[ColumnValue]) -> Vec<Option<&str>> {
    values
        .iter()
        .map(|v| match v {
            ColumnValue::Text(text) => Some(text.as_str()),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        })
        .collect()
}

/// Time spent per stage of one table's snapshot.
#[derive(Default)]
struct SnapshotStages {
    read: Duration,
    evaluate: Duration,
    write: Duration,
    wait: Duration,
}

#[derive(Debug)]
struct OpenTransaction {
    commit_lsn: Lsn,
    changes: Vec<RowChange>,
}

/// A batch being written to storage.
#[derive(Debug)]
struct Inflight {
    task: tokio::task::JoinHandle<Result<Option<Checkpoint>, StorageError>>,
    /// Confirmed to the server once the batch is durable.
    ack: Lsn,
    commit_time: Option<i64>,
    rows: u64,
    count: u64,
    last_lsn: Lsn,
    started: Instant,
    /// The batch's source rows, newer than storage's until it commits.
    overlay: HashMap<SourceRowKey, OverlayRow>,
}

/// Streaming bookkeeping between storage commits.
#[derive(Debug, Default)]
struct StreamState {
    open: Option<OpenTransaction>,
    /// Complete transactions not yet in storage.
    pending: Vec<SourceTransaction>,
    pending_changes: usize,
    pending_ack: Lsn,
    pending_commit_time: Option<i64>,
    pending_since: Option<Instant>,
    /// Source rows written by pending and open transactions, newer than storage's and the in-flight
    /// batch's.
    overlay: HashMap<SourceRowKey, OverlayRow>,
    inflight: Option<Inflight>,
    /// The version may become active once streaming passes this LSN.
    done_lsn: Lsn,
    activated: bool,
}

/// A row's state in the overlay of not-yet-stored changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OverlayRow {
    /// Written, with its stored source row (`None`: no column worth keeping).
    Present(Option<String>),
    Deleted,
}

impl StreamState {
    fn record(&mut self, change: RowChange) -> Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Err(SourceError::Protocol("row change outside a transaction".into()).into());
        };
        let state = OverlayRow::Present(change.source_row.clone());
        self.overlay.insert(change.row.clone(), state);
        open.changes.push(change);
        Ok(())
    }

    fn record_delete(&mut self, row: SourceRowKey) -> Result<()> {
        self.record(RowChange::delete(row.clone()))?;
        self.overlay.insert(row, OverlayRow::Deleted);
        Ok(())
    }
}
