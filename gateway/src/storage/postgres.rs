//! [`BucketStorage`] in a Postgres database, for gateways that share one storage (DESIGN "Scale-out").
//!
//! Layout: the SQLite storage's logical layout in its own schema (`syncgate_storage` by default): ops
//! packed per bucket in segments (`op_segments`, the same encoding: [`super::segment`]), one state row
//! per source row with its packed placements (`source_state`), running sums per bucket (`buckets`),
//! the parameter index with history by LSN, checkpoints, write checkpoints, versions and snapshot
//! progress. Sequences live in `meta`, seeded from the wall clock (invariant 1).
//!
//! Durability: every write commits with `synchronous_commit = on`, so a returned
//! [`BucketStorage::apply`] is durable and its LSN may be confirmed (invariant 4). Snapshot chunks
//! commit with `synchronous_commit = off` (like SQLite's `NORMAL`): a chunk's progress commits with its
//! rows and nothing is confirmed during the snapshot, so a lost chunk is copied again.
//!
//! Round trips: a storage transaction reads the state of its rows with a few statements of array
//! parameters (`unnest`), computes the ops in memory, and writes each table the same way, so a batch of
//! source transactions costs a few dozen statements whatever its size. The state reads are sent
//! together and the updates of rows the batch is done with follow while it computes (pipelined on the
//! writer connection, [`Pipeline`]): the backend and the writer work at the same time.
//!
//! Concurrency: one writer connection (the replicator, compaction, versions) and a pool of reader
//! connections; readers run single statements (or one snapshot) and never wait for the writer (MVCC).
//!
//! Fencing (several gateways on one storage): `leader_epoch` holds one number. The storage reads it when
//! opened, and every writer transaction locks that row `FOR SHARE` and fails with
//! [`StorageError::Fenced`] when it differs from the epoch this process holds. The gateway that takes
//! the replication lease (`serve::lease`) bumps it (`UPDATE leader_epoch SET epoch = epoch + 1`), which
//! waits for any commit of the old leader in flight and fails all its later ones, and hands the new
//! epoch to its storage ([`PostgresStorage::take_over`]).
//!
//! Change feed: every commit other gateways must see (a published checkpoint, a version activated or
//! removed, a write checkpoint, a compaction starting or ending) sends a `NOTIFY` on
//! [`PostgresStorage::channel`] from inside its own transaction, so it is delivered at commit and
//! never for a rolled-back write. Each gateway's [`super::feed`] listens and, while it cannot, polls
//! [`PostgresStorage::feed_state`]. A compaction bumps the stored `compaction_generation` (odd while
//! it runs) and commits that before rewriting any op, then waits [`PostgresStorage::compaction_grace`]
//! so every gateway (at worst by polling) knows a compaction runs before a compacted op is visible.
//!
//! Driving the driver: the trait is synchronous and is called from blocking threads, plain threads and,
//! in tests, from async code. `tokio-postgres` connections are driven by a private runtime's task; the
//! request futures only talk to those tasks over channels, so the calling thread polls them with a
//! minimal parking executor ([`block_on`]). Unlike the sync `postgres` crate this never panics inside
//! a tokio runtime.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::{HashMap, HashMapExt};
use futures_util::future::{MaybeDone, maybe_done};
use syncgate_protocol::{BucketName, ClientId, OpId, UserId, WriteCheckpointId};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls, Statement};

use super::placement::{BucketDelta, PlacementOp, PlacementOps, diff_placements, take_op_id};
use super::segment::{self, SegmentBuilder};
use super::sqlite::{
    bucket_summary, checkpoint_from, compact_ops, corrupt, lsn_from, lsn_sql, op_from, segments_of,
    sync_rules_version, user_client, version_sql, write_checkpoint_from,
};
use super::{
    BucketStorage, BucketSummary, Checkpoint, CompactStats, Lsn, ReplicationState, Result, RowChange,
    RulesVersion, SnapshotChunk, SourceRowKey, SourceTransaction, StorageError, StoredOp, SyncRulesVersion,
    TableSnapshot,
};
use crate::config::{PostgresConnection, SslMode};

/// Default schema of the storage's tables.
pub const DEFAULT_SCHEMA: &str = "syncgate_storage";

/// Schema migrations, index + 1 = the format version they produce. Append only.
const MIGRATIONS: &[&str] = &[
    r"
    -- Storage-wide sequences (next_op_id, next_write_checkpoint_id, next_version).
    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);

    -- The writer epoch: writer transactions lock this row FOR SHARE and fail when it moved (fencing).
    CREATE TABLE leader_epoch (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        epoch bigint NOT NULL
    );
    INSERT INTO leader_epoch (epoch) VALUES (1);

    CREATE TABLE sync_rules (
        version bigint PRIMARY KEY,
        rules text NOT NULL,
        state text NOT NULL CHECK (state IN ('building', 'active', 'retired')),
        last_op_id bigint NOT NULL DEFAULT 0,
        last_lsn bigint,
        slot_name text,
        start_lsn bigint,
        snapshot_done_lsn bigint
    );

    CREATE TABLE checkpoints (
        version bigint NOT NULL,
        lsn bigint NOT NULL,
        op_id bigint NOT NULL,
        PRIMARY KEY (version, lsn)
    );

    -- Running checksum (u32 in a bigint), count and last op of every bucket.
    CREATE TABLE buckets (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        version bigint NOT NULL,
        name text NOT NULL,
        checksum bigint NOT NULL,
        count bigint NOT NULL,
        last_op bigint NOT NULL,
        UNIQUE (version, name)
    );

    -- Ops packed per bucket (see segment.rs): one row per bucket per storage transaction.
    CREATE TABLE op_segments (
        bucket_id bigint NOT NULL,
        last_op bigint NOT NULL,
        first_op bigint NOT NULL,
        count bigint NOT NULL,
        checksum bigint NOT NULL,
        ops bytea NOT NULL,
        PRIMARY KEY (bucket_id, last_op)
    );
    -- Segments are written once and read whole: compressing them (pglz) cost the writer more than
    -- the space it saves. Large ones still go out of line.
    ALTER TABLE op_segments ALTER COLUMN ops SET STORAGE EXTERNAL;

    -- Per source row: its packed placements and the replicator's copy of the row.
    CREATE TABLE source_state (
        version bigint NOT NULL,
        source_table text NOT NULL,
        source_key text NOT NULL,
        placements bytea NOT NULL,
        source_row text,
        PRIMARY KEY (version, source_table, source_key)
    );

    CREATE TABLE parameter_index (
        version bigint NOT NULL,
        lookup_key text NOT NULL,
        source_table text NOT NULL,
        source_key text NOT NULL,
        values_json text NOT NULL,
        created_lsn bigint NOT NULL,
        deleted_lsn bigint
    );
    CREATE INDEX parameter_by_lookup ON parameter_index (version, lookup_key, created_lsn);
    CREATE INDEX parameter_live_by_row ON parameter_index (version, source_table, source_key)
        WHERE deleted_lsn IS NULL;

    CREATE TABLE write_checkpoints (
        user_id text NOT NULL,
        client_id text NOT NULL,
        id bigint NOT NULL,
        lsn bigint NOT NULL,
        PRIMARY KEY (user_id, client_id, id)
    );

    CREATE TABLE snapshot_progress (
        version bigint NOT NULL,
        source_table text NOT NULL,
        resume_after text,
        done boolean NOT NULL,
        lsn bigint NOT NULL,
        PRIMARY KEY (version, source_table)
    );
",
    r"
    -- Odd while a compaction runs; changed by each start and end (the change feed mirrors it).
    INSERT INTO meta (key, value) VALUES ('compaction_generation', 0) ON CONFLICT DO NOTHING;
",
    r"
    -- Room on each page for the next version of its rows, so updating a row's state (placements and
    -- source row, neither indexed) stays a HOT update that writes no index entry. New pages only.
    ALTER TABLE source_state SET (fillfactor = 70);
",
    r"
    -- The same for the running sums, whose rows every storage transaction updates (new pages only).
    ALTER TABLE buckets SET (fillfactor = 50);
    -- Segments of up to a page stay inline: out of line, each one cost its TOAST chunks and their
    -- index entries, three times the blocks of the insert (docs/benchmarks.md, Scale-out).
    ALTER TABLE op_segments SET (toast_tuple_target = 8160);
",
];

/// The format version this build writes.
#[allow(clippy::cast_possible_wrap)] // a handful of migrations
const FORMAT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory lock key serializing migrations of concurrently starting gateways ("syncgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x7379_6e63_6761_7465;

/// Reader connections kept for reuse; more are opened on demand and closed after use.
const READER_POOL: usize = 8;

/// How often a gateway polls the storage while its change feed cannot listen (`storage.poll_interval_ms`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Added to the poll interval for the compaction grace: covers one poll's round trip and scheduling.
const COMPACTION_GRACE_MARGIN: Duration = Duration::from_millis(500);

/// Where the storage lives: a connection and a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresStorageConfig {
    pub connection: PostgresConnection,
    /// Schema of the storage's tables, created if missing.
    pub schema: String,
    /// How often the change feed polls while it cannot listen; also sets the compaction grace, so
    /// every gateway on one storage should use the same value.
    pub poll_interval: Duration,
}

impl PostgresStorageConfig {
    /// Storage in `schema` of a local throwaway cluster that trusts `user` without TLS: for tests and
    /// benchmarks, which cannot share a helper through `syncgate-test-support` (it does not depend on
    /// this crate).
    #[doc(hidden)]
    pub fn local_trusted(host: &str, port: u16, database: &str, user: &str, schema: &str) -> Self {
        PostgresStorageConfig {
            connection: PostgresConnection {
                tag: "storage".into(),
                host: host.into(),
                port,
                database: database.into(),
                user: user.into(),
                password: None,
                sslmode: SslMode::Disable,
                // Replication-only settings, unused for storage.
                publication: String::new(),
                slot_name_prefix: String::new(),
                decoder: Default::default(),
            },
            schema: schema.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// The driver's config; refuses TLS modes ordinary connections cannot honour yet (as the source's
    /// catalog connections do) rather than silently downgrading.
    fn driver_config(&self) -> Result<tokio_postgres::Config> {
        let c = &self.connection;
        let ssl = match c.sslmode {
            SslMode::Disable | SslMode::Allow => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                return Err(StorageError::Configuration(format!(
                    "storage sslmode {} needs TLS, which this syncgate build does not support for storage \
                     connections yet; set storage sslmode: disable (or prefer) on a trusted network",
                    c.sslmode
                )));
            }
        };
        if !is_identifier(&self.schema) {
            return Err(StorageError::Configuration(format!(
                "storage schema `{}` must be lower-case letters, digits and `_`, not starting with a digit",
                self.schema
            )));
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(&c.host)
            .port(c.port)
            .dbname(&c.database)
            .user(&c.user)
            .ssl_mode(ssl)
            .application_name("syncgate-storage")
            // Unqualified names resolve to the storage's schema; commits wait for the WAL flush.
            .options(format!("-c search_path={} -c synchronous_commit=on", self.schema));
        if let Some(password) = &c.password {
            config.password(password.expose());
        }
        Ok(config)
    }
}

/// The change feed's channel for a storage schema. Channel names are identifiers (at most 63 bytes):
/// a long schema is cut, and two such schemas sharing a database then only wake each other's
/// sessions needlessly.
fn channel_for(schema: &str) -> String {
    let mut channel = format!("syncgate_feed_{schema}");
    channel.truncate(63);
    channel
}

/// A Postgres identifier that needs no quoting (the storage schema: spliced into SQL, and in the
/// change feed's channel name, which is cut by bytes).
pub(crate) fn is_identifier(text: &str) -> bool {
    text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Polls `future` to completion on the calling thread, parking between wake-ups. Used only for
/// tokio-postgres request futures, which need no runtime context of their own.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// The runtime driving the storage's connections. Shut down in the background when dropped, which is
/// allowed inside an async context (a plain drop of a runtime there panics).
struct DriverRuntime(Option<tokio::runtime::Runtime>);

impl DriverRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for DriverRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A connection with its prepared statements, keyed by SQL text (statements are `'static` strings).
struct PgConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl PgConn {
    fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = block_on(self.client.prepare(sql))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// Runs a prepared statement on a client or transaction.
fn query(
    client: &impl GenericClient,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    Ok(block_on(client.query(statement, params))?)
}

fn execute(
    client: &impl GenericClient,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    Ok(block_on(client.execute(statement, params))?)
}

/// Bucket storage in a Postgres database. See the module docs.
pub struct PostgresStorage {
    config: tokio_postgres::Config,
    display: String,
    runtime: DriverRuntime,
    writer: Mutex<Option<PgConn>>,
    readers: Mutex<Vec<PgConn>>,
    /// Bucket ids by version and name (ids never change while their version exists).
    bucket_ids: Mutex<HashMap<i64, HashMap<String, i64>>>,
    /// The writer epoch read at open or taken over with the lease: writer commits fail once the stored
    /// one moved past it (module docs: fencing).
    epoch: AtomicI64,
    /// The storage's schema, which keys the replication lease.
    schema: String,
    /// The change feed's `NOTIFY` channel (module docs).
    channel: String,
    poll_interval: Duration,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("database", &self.display)
            .field("epoch", &self.epoch.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Connects, creates the schema if missing and applies pending migrations (under an advisory lock,
    /// so gateways starting together migrate once).
    pub fn open(storage: &PostgresStorageConfig) -> Result<Self> {
        Self::open_checked(storage, None)
    }

    /// Like [`open`](Self::open) for a gateway replicating `source`: refuses, before creating anything,
    /// a storage in the source's own database (it would replicate its own writes, and the gateway never
    /// writes the source). Compares server identity (`system_identifier`) and database name.
    pub fn open_beside_source(
        storage: &PostgresStorageConfig,
        source: &tokio_postgres::Config,
    ) -> Result<Self> {
        Self::open_checked(storage, Some(source))
    }

    fn open_checked(
        storage: &PostgresStorageConfig,
        source: Option<&tokio_postgres::Config>,
    ) -> Result<Self> {
        let config = storage.driver_config()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-storage")
            .enable_all()
            .build()
            .map_err(StorageError::Thread)?;
        let mut this = PostgresStorage {
            config,
            display: storage.connection.display_safe(),
            runtime: DriverRuntime(Some(runtime)),
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            bucket_ids: Mutex::new(HashMap::new()),
            epoch: AtomicI64::new(0),
            schema: storage.schema.clone(),
            channel: channel_for(&storage.schema),
            poll_interval: storage.poll_interval,
        };
        let mut writer = this.connect_writer()?;
        if let Some(source) = source {
            this.refuse_source_database(&mut writer, source)?;
        }
        migrate(&mut writer, &storage.schema)?;
        let epoch = writer.statement("SELECT epoch FROM leader_epoch")?;
        let epoch = query(&writer.client, &epoch, &[])?
            .first()
            .map(|row| row.get(0))
            .ok_or_else(|| corrupt("leader epoch", "missing"))?;
        this.epoch = AtomicI64::new(epoch);
        *this.writer.get_mut().map_err(|_| StorageError::Poisoned)? = Some(writer);
        Ok(this)
    }

    /// The writer's connection. Its statements bind arrays of thousands of keys: planned for their
    /// values (Postgres's first five executions of a prepared statement), they scan whole tables in
    /// hash joins, where the generic plan probes the index per key.
    fn connect_writer(&self) -> Result<PgConn> {
        let conn = self.connect()?;
        block_on(
            conn.client
                .batch_execute("SET plan_cache_mode = force_generic_plan"),
        )?;
        Ok(conn)
    }

    fn connect(&self) -> Result<PgConn> {
        let config = self.config.clone();
        let connect = self.runtime.handle().spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    // The client sees the failure on its next call; this records the cause.
                    tracing::debug!(%error, "storage connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = block_on(connect)
            .map_err(|e| StorageError::Configuration(format!("storage connection task failed: {e}")))?
            .map_err(|source| StorageError::PostgresConnect {
                target: self.display.clone(),
                source,
            })?;
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }

    /// The writer connection, reconnected if it was lost (the failed call was reported retryable).
    fn writer(&self) -> Result<WriterGuard<'_>> {
        let mut guard = self.writer.lock().map_err(|_| StorageError::Poisoned)?;
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = Some(self.connect_writer()?);
        }
        Ok(WriterGuard(guard))
    }

    /// Makes `epoch` (just bumped by this process's lease session) the one its writer commits hold:
    /// from now on they succeed, and those of every earlier leader fail with `Fenced`.
    pub fn take_over(&self, epoch: i64) -> Result<()> {
        // Another leader may have created buckets meanwhile; ids never change, but start clean.
        self.bucket_cache()?.clear();
        self.epoch.store(epoch, Ordering::Release);
        // A deposed leader may have died (or been fenced) mid-compaction.
        self.end_stale_compaction()
    }

    /// The writer epoch this process holds (read at open or taken over with the lease).
    pub fn held_epoch(&self) -> i64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The connection settings of the replication lease's own session (`serve::lease`): this storage's
    /// database as `syncgate-lease`, with TCP keepalives on both ends, so the server notices a dead
    /// leader's host (and releases its lease) within about half a minute, and the leader its server's.
    pub fn lease_connection(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config
            .application_name("syncgate-lease")
            .keepalives(true)
            .keepalives_idle(LEASE_KEEPALIVE_IDLE)
            .keepalives_interval(LEASE_KEEPALIVE_INTERVAL)
            .keepalives_retries(LEASE_KEEPALIVE_RETRIES)
            .options(format!(
                "-c search_path={} -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={}",
                self.schema,
                LEASE_KEEPALIVE_IDLE.as_secs(),
                LEASE_KEEPALIVE_INTERVAL.as_secs(),
                LEASE_KEEPALIVE_RETRIES
            ));
        config
    }

    /// The storage's schema (keys the replication lease).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The channel the storage's commits notify (see the module docs).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// How often a change feed polls while it cannot listen.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// How long a compaction waits between announcing itself and rewriting ops: every other gateway
    /// learns of it within one poll interval even when its feed cannot listen (module docs).
    pub fn compaction_grace(&self) -> Duration {
        self.poll_interval + COMPACTION_GRACE_MARGIN
    }

    /// The change feed's connection settings: the storage's, named `syncgate-feed` in
    /// `pg_stat_activity`.
    pub fn feed_connection(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config.application_name("syncgate-feed");
        config
    }

    /// What the change feed polls: cheap counters that every notifying commit moves.
    pub fn feed_state(&self) -> Result<FeedState> {
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT (SELECT value FROM meta WHERE key = 'next_write_checkpoint_id'),
                   (SELECT value FROM meta WHERE key = 'compaction_generation'),
                   (SELECT COALESCE(MAX(version), 0) FROM sync_rules WHERE state = 'active'),
                   (SELECT COALESCE(MAX(last_op_id), 0) FROM sync_rules),
                   (SELECT COUNT(*) FROM sync_rules)",
            )?;
            let row = query(&conn.client, &statement, &[])?;
            let row = row.first().ok_or_else(|| corrupt("feed state", "no row"))?;
            let generation: Option<i64> = row.get(1);
            Ok(FeedState {
                write_checkpoints: row.get::<_, Option<i64>>(0).unwrap_or_default(),
                compaction_generation: u64::try_from(generation.unwrap_or_default())
                    .map_err(|_| corrupt("compaction generation", generation.unwrap_or_default()))?,
                checkpoints: (row.get(2), row.get(3), row.get(4)),
            })
        })
    }

    /// Ends a compaction whose process died (the stored generation stayed odd, which would keep
    /// every reader waiting). For the process that takes over writing (the replication lease): no other compacts then, and each bucket's rewrite committed whole or not at all.
    pub fn end_stale_compaction(&self) -> Result<()> {
        let ended = self.fenced_write(|tx, conn| self.end_compaction_in(tx, conn))?;
        if let Some(generation) = ended {
            tracing::warn!(generation, "ended a compaction left running by a stopped gateway");
        }
        Ok(())
    }

    /// Makes the stored compaction generation even (ended) if it is odd; returns the new value.
    fn end_compaction_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        conn: &mut StatementCache,
    ) -> Result<Option<i64>> {
        let statement = conn.statement(
            tx,
            "UPDATE meta SET value = value + 1 WHERE key = 'compaction_generation' AND value % 2 = 1
             RETURNING value, pg_notify($1, 'k' || value)",
        )?;
        Ok(query(tx, &statement, &[&self.channel])?.first().map(|r| r.get(0)))
    }

    /// Runs `f` on a pooled reader connection and returns it to the pool. After a retryable failure on
    /// a pooled connection (found dead: the server restarted, an idle timeout) `f` runs again on a new
    /// one: a read can always be repeated.
    fn read<T>(&self, f: impl Fn(&mut PgConn) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().map_err(|_| StorageError::Poisoned)?.pop();
        let (mut conn, was_pooled) = match pooled {
            Some(conn) if !conn.client.is_closed() => (conn, true),
            _ => (self.connect()?, false),
        };
        let mut result = f(&mut conn);
        if was_pooled && result.as_ref().is_err_and(StorageError::is_retryable) {
            conn = self.connect()?;
            result = f(&mut conn);
        }
        let mut pool = self.readers.lock().map_err(|_| StorageError::Poisoned)?;
        // A failed call may have left a transaction open on the connection: only clean ones go back.
        if result.is_ok() && pool.len() < READER_POOL && !conn.client.is_closed() {
            pool.push(conn);
        }
        result
    }

    fn bucket_cache(&self) -> Result<MutexGuard<'_, HashMap<i64, HashMap<String, i64>>>> {
        self.bucket_ids.lock().map_err(|_| StorageError::Poisoned)
    }

    /// Fails with [`StorageError::SourceDatabase`] when `conn` is connected to the `source` database.
    fn refuse_source_database(&self, conn: &mut PgConn, source: &tokio_postgres::Config) -> Result<()> {
        let storage = ServerIdentity::read_blocking(&conn.client)?;
        let source = source.clone();
        let fetch = self.runtime.handle().spawn(async move {
            let (client, connection) = source.connect(NoTls).await?;
            let driver = tokio::spawn(connection);
            let identity = ServerIdentity::read(&client).await;
            drop(client);
            let _ = driver.await;
            identity
        });
        let source = block_on(fetch)
            .map_err(|e| StorageError::Configuration(format!("source identity task failed: {e}")))??;
        if storage.same_database_as(&source) {
            return Err(StorageError::SourceDatabase {
                database: source.database,
                system_identifier: source.system_identifier.unwrap_or(source.started_and_port),
            });
        }
        Ok(())
    }

    /// A setting of the writer connection's session, for tests.
    #[cfg(test)]
    pub(super) fn writer_setting(&self, name: &str) -> Result<String> {
        let mut writer = self.writer()?;
        Ok(block_on(
            writer
                .conn()
                .client
                .query_one("SELECT current_setting($1)", &[&name]),
        )?
        .get(0))
    }

    /// The current writer epoch in the database (for tests and, later, the lease).
    pub fn stored_epoch(&self) -> Result<i64> {
        self.read(|conn| {
            let statement = conn.statement("SELECT epoch FROM leader_epoch")?;
            Ok(query(&conn.client, &statement, &[])?[0].get(0))
        })
    }
}

/// The storage counters a change feed polls; any change means something may have been published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedState {
    /// The write-checkpoint sequence: moved by every stored write checkpoint.
    pub write_checkpoints: i64,
    /// Odd while a compaction runs.
    pub compaction_generation: u64,
    /// Active version, largest last op id of any version, number of versions: moved by published
    /// checkpoints, activations and removals.
    pub checkpoints: (i64, i64, i64),
}

/// Which server and database a connection reaches.
struct ServerIdentity {
    /// `pg_control_system()`'s identifier; `None` when the role may not call it (it needs no
    /// superuser by default, but an administrator may revoke it).
    system_identifier: Option<String>,
    /// The fallback identity: postmaster start time and port.
    started_and_port: String,
    database: String,
}

impl ServerIdentity {
    // The CASE keeps the call out when not allowed (an uncalled subquery is never run).
    const QUERY: &str = "SELECT
           CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
             THEN (SELECT system_identifier FROM pg_control_system())::text END,
           pg_postmaster_start_time()::text || ' port ' || current_setting('port'),
           current_database()";

    async fn read(client: &Client) -> std::result::Result<ServerIdentity, tokio_postgres::Error> {
        let row = client.query_one(Self::QUERY, &[]).await?;
        Ok(ServerIdentity {
            system_identifier: row.get(0),
            started_and_port: row.get(1),
            database: row.get(2),
        })
    }

    fn read_blocking(client: &Client) -> Result<ServerIdentity> {
        Ok(block_on(Self::read(client))?)
    }

    /// Same server (by identifier when both sides could read it, else by start time and port) and
    /// same database.
    fn same_database_as(&self, other: &ServerIdentity) -> bool {
        let same_server = match (&self.system_identifier, &other.system_identifier) {
            (Some(a), Some(b)) => a == b,
            _ => self.started_and_port == other.started_and_port,
        };
        same_server && self.database == other.database
    }
}

/// The locked writer connection (always present while locked: [`PostgresStorage::writer`] connects).
struct WriterGuard<'a>(MutexGuard<'a, Option<PgConn>>);

impl WriterGuard<'_> {
    fn conn(&mut self) -> &mut PgConn {
        self.0.as_mut().expect("connected by PostgresStorage::writer")
    }

    /// Drops the connection after a retryable failure, so the retry runs on a fresh one: the
    /// driver may not have noticed yet that the server ended the session.
    fn discard_after<T>(&mut self, result: &Result<T>) {
        if result.as_ref().is_err_and(StorageError::is_retryable) {
            *self.0 = None;
        }
    }
}

/// TCP keepalives of the lease session (both ends): idle time before the first probe, then probes
/// every interval, dropped after that many unanswered ones.
const LEASE_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
const LEASE_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
const LEASE_KEEPALIVE_RETRIES: u32 = 3;

/// Creates the schema and applies pending migrations, once across concurrently starting gateways.
fn migrate(conn: &mut PgConn, schema: &str) -> Result<()> {
    let client = &mut conn.client;
    let tx = block_on(client.transaction())?;
    // Transaction-scoped: released at commit or when the connection drops.
    block_on(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]))?;
    // `schema` is a checked identifier (driver_config), safe to splice.
    block_on(tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (version integer NOT NULL)"
    )))?;
    let found: Option<i32> = block_on(tx.query_one("SELECT MAX(version) FROM schema_version", &[]))?.get(0);
    let found = i64::from(found.unwrap_or(0));
    if found > FORMAT_VERSION {
        return Err(StorageError::FormatTooNew {
            found,
            supported: FORMAT_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let version = i32::try_from(index + 1).expect("a handful of migrations");
        block_on(tx.batch_execute(sql))?;
        if version == 1 {
            seed_sequences(&tx)?;
        }
        block_on(tx.execute("DELETE FROM schema_version", &[]))?;
        block_on(tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]))?;
        tracing::info!(version, "bucket storage schema migrated");
    }
    block_on(tx.commit())?;
    Ok(())
}

/// Seeds the sequences above anything a client of an earlier storage may hold (invariant 1), as the
/// SQLite storage does.
fn seed_sequences(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let micros = i64::try_from(now.as_micros()).unwrap_or(i64::MAX / 2).max(1);
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX / 2).max(1);
    block_on(tx.execute(
        "INSERT INTO meta (key, value) VALUES ('next_op_id', $1), ('next_write_checkpoint_id', $1),
           ('next_version', $2)",
        &[&micros, &secs],
    ))?;
    Ok(())
}

/// Locks the epoch row for the rest of the transaction and fails if another writer took over.
fn check_epoch(client: &impl GenericClient, conn_epoch: &Statement, epoch: i64) -> Result<()> {
    let found: i64 = query(client, conn_epoch, &[])?
        .first()
        .map(|row| row.get(0))
        .ok_or_else(|| corrupt("leader epoch", "missing"))?;
    if found != epoch {
        return Err(StorageError::Fenced { held: epoch, found });
    }
    Ok(())
}

const LOCK_EPOCH: &str = "SELECT epoch FROM leader_epoch FOR SHARE";

/// State rows as the columns of a write's array parameters.
#[derive(Default)]
struct StateColumns<'a> {
    tables: Vec<&'a str>,
    keys: Vec<&'a str>,
    packed: Vec<&'a [u8]>,
    rows: Vec<Option<&'a str>>,
}

impl<'a> StateColumns<'a> {
    fn push(&mut self, (table, key): (&'a str, &'a str), state: &'a RowState) {
        self.tables.push(table);
        self.keys.push(key);
        self.packed.push(&state.packed);
        self.rows.push(state.source_row.as_deref());
    }
}

/// A source row's state within one storage transaction.
#[derive(Default)]
struct RowState {
    packed: Vec<u8>,
    /// The source row as of the last change; a stored row's copy is not read (see `changed`).
    source_row: Option<String>,
    /// The stored state row's tuple id (`ctid`, as text) when one exists in the database: read and
    /// updated in the same writer transaction, which no other writer overlaps (fencing), so it stays
    /// valid until the update.
    stored: Option<String>,
    /// Whether the state must be written. A stored row counts as changed once read: the batch changes
    /// its source row as a rule, and reading every stored copy back to compare cost the backend more
    /// than writing the rare unchanged one.
    changed: bool,
}

/// What a row's state needs written when the batch is done with it.
#[derive(PartialEq, Eq)]
enum StateWrite {
    /// Unchanged, or new and empty.
    Nothing,
    /// Stored and now empty.
    Delete,
    /// Stored and changed: by the tuple id the read returned ([`Pipeline`]).
    Update,
    /// Not read as stored (new, or a chunk that skipped the probe): the upsert covers both.
    Upsert,
}

impl RowState {
    fn write(&self) -> StateWrite {
        let empty = self.packed.is_empty() && self.source_row.is_none();
        match (self.changed, empty, self.stored.is_some()) {
            (false, ..) | (true, true, false) => StateWrite::Nothing,
            (true, true, true) => StateWrite::Delete,
            (true, false, true) => StateWrite::Update,
            (true, false, false) => StateWrite::Upsert,
        }
    }
}

/// A parameter entry written by this storage transaction: (lookup key, values, created LSN, deleted LSN).
type WrittenParameter = (String, String, i64, Option<i64>);

/// A row's parameter entries within one storage transaction.
#[derive(Default)]
struct RowParams {
    /// The live entries as of the database, until this transaction retires them.
    stored: Option<BTreeSet<(String, String)>>,
    /// The LSN at which the stored live entries stop being visible (deleted if created at it).
    retire_at: Option<i64>,
    written: Vec<WrittenParameter>,
}

impl RowParams {
    fn live(&self) -> BTreeSet<(&str, &str)> {
        let mut live: BTreeSet<(&str, &str)> = BTreeSet::new();
        if self.retire_at.is_none()
            && let Some(stored) = &self.stored
        {
            live.extend(stored.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        live.extend(
            self.written
                .iter()
                .filter(|w| w.3.is_none())
                .map(|w| (w.0.as_str(), w.1.as_str())),
        );
        live
    }

    /// Replaces the live entries at `lsn` as the SQLite storage does: entries created at `lsn` were never
    /// visible and go; the others end at `lsn`.
    fn replace(&mut self, new: &BTreeSet<(&str, &str)>, lsn: i64) {
        if self.retire_at.is_none() && self.stored.as_ref().is_some_and(|s| !s.is_empty()) {
            self.retire_at = Some(lsn);
        }
        self.written.retain(|w| !(w.3.is_none() && w.2 == lsn));
        for w in &mut self.written {
            if w.3.is_none() {
                w.3 = Some(lsn);
            }
        }
        for (k, v) in new {
            self.written.push(((*k).to_owned(), (*v).to_owned(), lsn, None));
        }
    }
}

/// One storage transaction's work, computed in memory and written in a few statements.
struct Batch<'a> {
    version: i64,
    next_op: i64,
    last_op: i64,
    /// Bucket ids committed before this transaction, and those created or found by it.
    known: &'a HashMap<String, i64>,
    resolved: &'a HashMap<String, i64>,
    rows: HashMap<(&'a str, &'a str), RowState>,
    params: HashMap<(&'a str, &'a str), RowParams>,
    buckets: HashMap<i64, BucketDelta>,
    closed: Vec<(i64, SegmentBuilder)>,
}

impl<'a> Batch<'a> {
    /// Applies one row change at `lsn` (0 for snapshot rows), as `sqlite::Writer::change` does.
    fn change(&mut self, change: &'a RowChange, put_digests: &[[u8; 32]], lsn: i64) -> Result<()> {
        let key = (change.row.table.as_str(), change.row.key.as_str());
        if let Some(parameters) = &change.parameters {
            let entry = self.params.entry(key).or_default();
            let new: BTreeSet<(&str, &str)> = parameters
                .iter()
                .map(|p| (p.lookup_key.as_str(), p.values_json.as_str()))
                .collect();
            if entry.live() != new {
                entry.replace(&new, lsn);
            }
        }
        let mut state = self.rows.remove(&key).unwrap_or_default();
        let packed = match &change.placements {
            Some(placements) => diff_placements(self, &change.row, &state.packed, placements, put_digests)?,
            None => state.packed.clone(),
        };
        let source_row = change.source_row.clone();
        if packed != state.packed || source_row != state.source_row {
            state.packed = packed;
            state.source_row = source_row;
            state.changed = true;
        }
        self.rows.insert(key, state);
        Ok(())
    }
}

impl PlacementOps for Batch<'_> {
    fn resolve_bucket(&mut self, bucket: &str) -> Result<i64> {
        self.known
            .get(bucket)
            .or_else(|| self.resolved.get(bucket))
            .copied()
            .ok_or_else(|| corrupt("bucket id", format!("{bucket} not resolved")))
    }

    /// Appends one op to its bucket's open segment and adds it to the bucket's running-sum change.
    fn append_op(&mut self, bucket_id: i64, op: PlacementOp<'_>) -> Result<()> {
        let op_id = take_op_id(&mut self.next_op, &mut self.last_op)?;
        let delta = self.buckets.entry(bucket_id).or_default();
        delta.record(op_id, &op);
        if delta.segment.is_full() {
            self.closed.push((bucket_id, std::mem::take(&mut delta.segment)));
        }
        Ok(())
    }
}

// Statements of the write path. Arrays keep each to one round trip per storage transaction.
const WRITER_HEAD: &str = "SELECT r.last_op_id, r.last_lsn, m.value FROM sync_rules r, meta m
     WHERE r.version = $1 AND m.key = 'next_op_id' FOR UPDATE";
// Rows are matched back to the keys by their position in the arrays (1-based).
const SELECT_STATES: &str = "SELECT k.i, s.placements, s.ctid::text
     FROM source_state s JOIN unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(t, k, i)
       ON s.version = $1 AND s.source_table = k.t AND s.source_key = k.k";
const SELECT_PARAMS: &str = "SELECT k.i, p.lookup_key, p.values_json
     FROM parameter_index p JOIN unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(t, k, i)
       ON p.version = $1 AND p.source_table = k.t AND p.source_key = k.k AND p.deleted_lsn IS NULL";
const SELECT_BUCKET_IDS: &str = "SELECT name, id FROM buckets WHERE version = $1 AND name = ANY($2)";
const INSERT_BUCKETS: &str = "INSERT INTO buckets (version, name, checksum, count, last_op)
     SELECT $1, n, 0, 0, 0 FROM unnest($2::text[]) AS n ON CONFLICT DO NOTHING";
const INSERT_SEGMENTS: &str = "INSERT INTO op_segments (bucket_id, last_op, first_op, count, checksum, ops)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bytea[])";
// Checksums are u32 in a bigint: the modulo keeps the running sum a wrapping u32 sum.
const UPDATE_BUCKETS: &str = "UPDATE buckets b SET checksum = (b.checksum + d.checksum) % 4294967296,
       count = b.count + d.count, last_op = d.last_op
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS d(id, checksum, count, last_op)
     WHERE b.id = d.id";
const UPSERT_STATES: &str =
    "INSERT INTO source_state (version, source_table, source_key, placements, source_row)
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[])
     ON CONFLICT (version, source_table, source_key)
       DO UPDATE SET placements = excluded.placements, source_row = excluded.source_row";
// Stored rows are updated by tuple id (a TID scan, no primary-key probe); the key check makes a
// stale id update nothing, which the caller detects by the row count.
const UPDATE_STATES: &str = "UPDATE source_state s SET placements = u.p, source_row = u.r
     FROM unnest($2::text[]::tid[], $3::text[], $4::text[], $5::bytea[], $6::text[]) AS u(id, t, k, p, r)
     WHERE s.ctid = u.id AND s.version = $1 AND s.source_table = u.t AND s.source_key = u.k";
const DELETE_STATES: &str = "DELETE FROM source_state s USING unnest($2::text[], $3::text[]) AS k(t, k)
     WHERE s.version = $1 AND s.source_table = k.t AND s.source_key = k.k";
// Entries created at the retiring LSN were never visible at a checkpoint: deleted, the others ended.
const RETIRE_PARAMS: &str = "WITH dropped AS (
       DELETE FROM parameter_index p USING unnest($2::text[], $3::text[], $4::bigint[]) AS r(t, k, lsn)
       WHERE p.version = $1 AND p.source_table = r.t AND p.source_key = r.k AND p.deleted_lsn IS NULL
         AND p.created_lsn = r.lsn)
     UPDATE parameter_index p SET deleted_lsn = r.lsn
     FROM unnest($2::text[], $3::text[], $4::bigint[]) AS r(t, k, lsn)
     WHERE p.version = $1 AND p.source_table = r.t AND p.source_key = r.k AND p.deleted_lsn IS NULL
       AND p.created_lsn <> r.lsn";
const INSERT_PARAMS: &str = "INSERT INTO parameter_index
       (version, lookup_key, source_table, source_key, values_json, created_lsn, deleted_lsn)
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])";
// $7 is the change feed's channel, NULL when nothing is published (a snapshot chunk).
const RECORD_CHECKPOINTS: &str = "WITH version AS (
       UPDATE sync_rules SET last_op_id = $4, last_lsn = COALESCE($5, last_lsn) WHERE version = $1
       RETURNING (SELECT COUNT(*) FROM (SELECT pg_notify($7::text, 'c') WHERE $7::text IS NOT NULL) n)),
     sequence AS (UPDATE meta SET value = $6 WHERE key = 'next_op_id')
     INSERT INTO checkpoints (version, lsn, op_id) SELECT $1, * FROM unnest($2::bigint[], $3::bigint[])";
const UPSERT_PROGRESS: &str = "INSERT INTO snapshot_progress (version, source_table, resume_after, done, lsn)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (version, source_table) DO UPDATE SET resume_after = excluded.resume_after,
       done = excluded.done, lsn = excluded.lsn";

/// Owned parameters of a statement sent without waiting for its response ([`Writes::send`], the
/// pipeline's updates).
macro_rules! owned {
    ($($param:expr),* $(,)?) => {
        vec![$(Box::new($param)),*]
    };
}

/// What one storage transaction writes: source transactions (with LSNs) or a snapshot chunk.
enum Work<'a> {
    Transactions(&'a [SourceTransaction]),
    Chunk(&'a SnapshotChunk, &'a TableSnapshot),
}

impl PostgresStorage {
    /// One storage transaction for `work`; returns the latest checkpoint it recorded.
    fn write(&self, version: RulesVersion, work: Work<'_>) -> Result<Option<Checkpoint>> {
        version_sql(version)?;
        // LSNs are checked before anything is written, so an out-of-range one fails the whole batch.
        if let Work::Transactions(txns) = work {
            for txn in txns {
                lsn_sql(txn.commit_lsn)?;
            }
        }
        let mut guard = self.writer()?;
        let result = self.write_on(&mut guard, version, work);
        guard.discard_after(&result);
        result
    }

    fn write_on(
        &self,
        guard: &mut WriterGuard<'_>,
        version: RulesVersion,
        work: Work<'_>,
    ) -> Result<Option<Checkpoint>> {
        let v = version_sql(version)?;
        let started = std::time::Instant::now();
        let conn = guard.conn();
        let s = WriterStatements::prepare(conn)?;
        let mut cache = self.bucket_cache()?;
        let known = cache.entry(v).or_default();
        let tx = block_on(conn.client.transaction())?;
        if matches!(work, Work::Chunk(..)) {
            // See the module docs: nothing is confirmed during the snapshot.
            block_on(tx.batch_execute("SET LOCAL synchronous_commit = off"))?;
        }
        check_epoch(&tx, &s.lock_epoch, self.held_epoch())?;
        let head = query(&tx, &s.head, &[&v])?;
        let head = head.first().ok_or(StorageError::UnknownVersion(version))?;
        let (last_op, mut last_lsn): (i64, Option<i64>) = (head.get(0), head.get(1));
        let head_last_op = last_op;
        let next_op: i64 = head.get(2);

        // The changes this transaction applies, in order, with their LSN and precomputed digests.
        let mut changes: Vec<(&RowChange, &[[u8; 32]], i64)> = Vec::new();
        let mut checkpoints: Vec<(i64, usize)> = Vec::new();
        let mut probe = true;
        match work {
            Work::Transactions(txns) => {
                for txn in txns {
                    let lsn = lsn_sql(txn.commit_lsn)?;
                    if last_lsn.is_some_and(|stored| lsn <= stored) {
                        // Already applied before a restart (invariant 4), or out of order.
                        continue;
                    }
                    changes.extend(txn.changes.iter().map(|c| (c, &[][..], lsn)));
                    checkpoints.push((lsn, changes.len()));
                    last_lsn = Some(lsn);
                }
                if checkpoints.is_empty() {
                    // Nothing to apply: the transaction rolls back having written nothing.
                    return Ok(None);
                }
            }
            Work::Chunk(chunk, _) => {
                probe = !chunk.is_unstored();
                changes.extend(chunk.changes_with_digests().map(|(c, d)| (c, d, 0)));
            }
        }

        // Bucket ids for every placement, creating new buckets.
        let mut resolved: HashMap<String, i64> = HashMap::new();
        let missing: BTreeSet<&str> = changes
            .iter()
            .flat_map(|(c, ..)| c.placements.iter().flatten())
            .map(|p| p.bucket.as_str())
            .filter(|name| !known.contains_key(*name))
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.into_iter().collect();
            execute(&tx, &s.insert_buckets, &[&v, &names])?;
            for row in query(&tx, &s.select_bucket_ids, &[&v, &names])? {
                resolved.insert(row.get(0), row.get(1));
            }
        }
        let mut batch = Batch {
            version: v,
            next_op,
            last_op,
            known,
            resolved: &resolved,
            rows: HashMap::with_capacity(changes.len()),
            params: HashMap::new(),
            buckets: HashMap::new(),
            closed: Vec::new(),
        };
        let plan = if probe {
            read_params(&tx, &s, &mut batch, &changes)?;
            ReadPlan::of(&changes)
        } else {
            ReadPlan::default()
        };
        let mut pipeline = Pipeline::start(&tx, &s, &v, &plan);
        // Each source transaction's changes, then its checkpoint (a transaction without changes, a
        // keepalive or marker, records the op id before it); a chunk has no checkpoints.
        let mut recorded: Vec<(i64, i64)> = Vec::with_capacity(checkpoints.len());
        for (i, &(change, digests, lsn)) in changes.iter().enumerate() {
            while checkpoints.get(recorded.len()).is_some_and(|&(_, end)| end == i) {
                recorded.push((checkpoints[recorded.len()].0, batch.last_op));
            }
            pipeline.apply(i, (change, digests, lsn), &plan, &mut batch)?;
        }
        while let Some(&(lsn, _)) = checkpoints.get(recorded.len()) {
            recorded.push((lsn, batch.last_op));
        }
        // The rest is sent before waiting for the state updates still in flight: the backend works
        // through those while the writer encodes the rest.
        pipeline.send_rest(&mut batch);
        let mut writes = Writes {
            tx: &tx,
            in_flight: Vec::new(),
        };
        write_batch(&mut writes, &s, &batch);
        let (lsns, op_ids): (Vec<i64>, Vec<i64>) = recorded.iter().copied().unzip();
        let checkpoint_lsn = lsns.last().copied();
        writes.send(
            &s.record_checkpoints,
            owned![
                v,
                lsns,
                op_ids,
                batch.last_op,
                checkpoint_lsn,
                batch.next_op,
                checkpoint_lsn.map(|_| self.channel.as_str())
            ],
        );
        if let Work::Chunk(_, progress) = work {
            writes.send(
                &s.upsert_progress,
                owned![
                    v,
                    progress.table.as_str(),
                    progress.resume_after.as_deref(),
                    progress.done,
                    lsn_sql(progress.lsn)?
                ],
            );
        }
        let read_wait = pipeline.finish()?;
        let computed = started.elapsed();
        writes.finish()?;
        let last_op = batch.last_op;
        let (changes, buckets) = (changes.len(), batch.buckets.len());
        drop(batch);
        let written = started.elapsed();
        block_on(tx.commit())?;
        // `computing`: from the start until the pipeline's state updates are done (reads, ops, updates);
        // `written`: until the rest, sent before those were done, is too.
        tracing::debug!(
            changes,
            buckets,
            ops = last_op - head_last_op,
            computing = ?computed,
            read_wait = ?read_wait,
            written = ?written - computed,
            committed = ?started.elapsed() - written,
            "postgres storage commit"
        );
        if known.len() + resolved.len() > 1 << 20 {
            known.clear();
        }
        known.extend(resolved);
        Ok(match checkpoint_lsn {
            Some(lsn) => Some(Checkpoint {
                op_id: op_from(last_op)?,
                lsn: lsn_from(lsn)?,
            }),
            None => None,
        })
    }
}

/// The write path's statements, prepared once per connection.
struct WriterStatements {
    lock_epoch: Statement,
    head: Statement,
    select_states: Statement,
    select_params: Statement,
    select_bucket_ids: Statement,
    insert_buckets: Statement,
    insert_segments: Statement,
    update_buckets: Statement,
    upsert_states: Statement,
    update_states: Statement,
    delete_states: Statement,
    retire_params: Statement,
    insert_params: Statement,
    record_checkpoints: Statement,
    upsert_progress: Statement,
}

impl WriterStatements {
    fn prepare(conn: &mut PgConn) -> Result<Self> {
        Ok(WriterStatements {
            lock_epoch: conn.statement(LOCK_EPOCH)?,
            head: conn.statement(WRITER_HEAD)?,
            select_states: conn.statement(SELECT_STATES)?,
            select_params: conn.statement(SELECT_PARAMS)?,
            select_bucket_ids: conn.statement(SELECT_BUCKET_IDS)?,
            insert_buckets: conn.statement(INSERT_BUCKETS)?,
            insert_segments: conn.statement(INSERT_SEGMENTS)?,
            update_buckets: conn.statement(UPDATE_BUCKETS)?,
            upsert_states: conn.statement(UPSERT_STATES)?,
            update_states: conn.statement(UPDATE_STATES)?,
            delete_states: conn.statement(DELETE_STATES)?,
            retire_params: conn.statement(RETIRE_PARAMS)?,
            insert_params: conn.statement(INSERT_PARAMS)?,
            record_checkpoints: conn.statement(RECORD_CHECKPOINTS)?,
            upsert_progress: conn.statement(UPSERT_PROGRESS)?,
        })
    }
}

/// Reads the live parameter entries of every row `changes` touch that carries a parameter half: one
/// statement, before the state reads (a change needs both).
fn read_params<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    s: &WriterStatements,
    batch: &mut Batch<'a>,
    changes: &[(&'a RowChange, &[[u8; 32]], i64)],
) -> Result<()> {
    let param_keys: BTreeSet<(&'a str, &'a str)> = changes
        .iter()
        .filter(|(change, ..)| change.parameters.is_some())
        .map(|(change, ..)| (change.row.table.as_str(), change.row.key.as_str()))
        .collect();
    if param_keys.is_empty() {
        return Ok(());
    }
    let (tables, source_keys): (Vec<&str>, Vec<&str>) = param_keys.iter().copied().unzip();
    for key in &param_keys {
        batch.params.insert(
            *key,
            RowParams {
                stored: Some(BTreeSet::new()),
                ..RowParams::default()
            },
        );
    }
    for row in query(tx, &s.select_params, &[&batch.version, &tables, &source_keys])? {
        let key = key_at(&tables, &source_keys, &row)?;
        if let Some(stored) = batch.params.get_mut(&key).and_then(|p| p.stored.as_mut()) {
            stored.insert((row.get(1), row.get(2)));
        }
    }
    Ok(())
}

/// The key a read's row belongs to: its first column is the key's 1-based position in the arrays.
fn key_at<'a>(tables: &[&'a str], keys: &[&'a str], row: &tokio_postgres::Row) -> Result<(&'a str, &'a str)> {
    let i: i64 = row.get(0);
    usize::try_from(i - 1)
        .ok()
        .and_then(|i| Some((*tables.get(i)?, *keys.get(i)?)))
        .ok_or_else(|| corrupt("row position", i))
}

/// Distinct rows per state read, and stored rows per state update sent while computing. A batch's reads
/// go out together, pipelined on the writer connection, and its rows' updates follow as the writer is
/// done with them, so the backend works through them while the writer computes instead of each waiting
/// for the other (docs/benchmarks.md, "Scale-out").
const PIPELINE_CHUNK: usize = 2_000;

/// Changes computed between two polls of the statements in flight ([`Pipeline::pump`]).
const PUMP_EVERY: usize = 100;

/// A batch's rows in the order its changes first touch them, cut into chunks of [`PIPELINE_CHUNK`].
#[derive(Default)]
struct ReadPlan<'a> {
    /// Each chunk's keys as the read's two array columns, sorted (neighbouring index pages).
    chunks: Vec<(Vec<&'a str>, Vec<&'a str>)>,
    /// Per change, in order: how many chunks must be loaded before it is applied (non-decreasing).
    needs: Vec<usize>,
    /// Per change: whether it is the last change of its row in the batch.
    last: Vec<bool>,
}

impl<'a> ReadPlan<'a> {
    fn of(changes: &[(&'a RowChange, &[[u8; 32]], i64)]) -> Self {
        let key = |change: &'a RowChange| (change.row.table.as_str(), change.row.key.as_str());
        let mut seen: HashMap<(&'a str, &'a str), ()> = HashMap::with_capacity(changes.len());
        let mut first_touched: Vec<(&'a str, &'a str)> = Vec::with_capacity(changes.len());
        let mut needs = Vec::with_capacity(changes.len());
        for (change, ..) in changes {
            if seen.insert(key(change), ()).is_none() {
                first_touched.push(key(change));
            }
            needs.push(first_touched.len().div_ceil(PIPELINE_CHUNK));
        }
        seen.clear();
        let mut last: Vec<bool> = changes
            .iter()
            .rev()
            .map(|(change, ..)| seen.insert(key(change), ()).is_none())
            .collect();
        last.reverse();
        let chunks = first_touched
            .chunks_mut(PIPELINE_CHUNK)
            .map(|chunk| {
                chunk.sort_unstable();
                chunk.iter().copied().unzip()
            })
            .collect();
        ReadPlan { chunks, needs, last }
    }
}

/// A statement sent on the writer connection whose response has not been taken yet.
type InFlight<'t, T> =
    MaybeDone<Pin<Box<dyn Future<Output = std::result::Result<T, tokio_postgres::Error>> + 't>>>;

/// Sends `future`'s request: a request goes to the connection on its future's first poll, and the
/// response waits there until the future is polled again.
fn send<'t, T>(
    future: impl Future<Output = std::result::Result<T, tokio_postgres::Error>> + 't,
) -> InFlight<'t, T> {
    let mut in_flight = maybe_done(Box::pin(future) as Pin<Box<dyn Future<Output = _> + 't>>);
    let _ = Pin::new(&mut in_flight).poll(&mut Context::from_waker(Waker::noop()));
    in_flight
}

/// Waits for a sent statement's response.
fn receive<T>(mut in_flight: InFlight<'_, T>) -> Result<T> {
    block_on(&mut in_flight);
    Ok(Pin::new(&mut in_flight)
        .take_output()
        .ok_or_else(|| corrupt("statement", "no response"))??)
}

/// Stored rows the batch is done with, as the tuple-id update's array columns (owned: the update is in
/// flight while the batch goes on).
#[derive(Default)]
struct DoneRows<'a> {
    tuple_ids: Vec<String>,
    tables: Vec<&'a str>,
    keys: Vec<&'a str>,
    packed: Vec<Vec<u8>>,
    rows: Vec<Option<String>>,
}

/// The writer's statements in flight while a batch is computed: the state reads of a [`ReadPlan`], all
/// sent at once and loaded chunk by chunk as the changes need them, then the updates of the stored rows
/// whose last change is computed.
struct Pipeline<'t, 'a> {
    tx: &'t tokio_postgres::Transaction<'t>,
    update_states: &'t Statement,
    version: i64,
    reads: VecDeque<InFlight<'t, Vec<tokio_postgres::Row>>>,
    loaded: usize,
    done: DoneRows<'a>,
    /// Each update in flight with the number of rows it must update.
    updates: Vec<(usize, InFlight<'t, u64>)>,
    /// Time spent waiting for reads (the rest of the computing overlapped them).
    waited: Duration,
}

impl<'t, 'a: 't> Pipeline<'t, 'a> {
    fn start(
        tx: &'t tokio_postgres::Transaction<'t>,
        s: &'t WriterStatements,
        version: &'t i64,
        plan: &'t ReadPlan<'a>,
    ) -> Self {
        let reads = plan
            .chunks
            .iter()
            .map(|(tables, keys)| {
                send(async move { tx.query(&s.select_states, &[version, tables, keys]).await })
            })
            .collect();
        Pipeline {
            tx,
            update_states: &s.update_states,
            version: *version,
            reads,
            loaded: 0,
            done: DoneRows::default(),
            updates: Vec::new(),
            waited: Duration::ZERO,
        }
    }

    /// Applies change `i` of the batch: loads the state it needs, computes it, and sends its row's update
    /// once the row is done (its last change in the batch, stored, changed, not deleted).
    fn apply(
        &mut self,
        i: usize,
        (change, digests, lsn): (&'a RowChange, &[[u8; 32]], i64),
        plan: &ReadPlan<'a>,
        batch: &mut Batch<'a>,
    ) -> Result<()> {
        self.load(plan.needs.get(i).copied().unwrap_or(0), plan, batch)?;
        batch.change(change, digests, lsn)?;
        if i.is_multiple_of(PUMP_EVERY) {
            self.pump();
        }
        if !plan.last.get(i).copied().unwrap_or(false) {
            return Ok(());
        }
        let key = (change.row.table.as_str(), change.row.key.as_str());
        self.take_update(key, batch);
        if self.done.tuple_ids.len() >= PIPELINE_CHUNK {
            self.send_done();
        }
        Ok(())
    }

    /// Takes in the responses that arrived for the statements in flight. The driver's connection task
    /// hands each response to its request through a one-slot channel and stops reading the socket while
    /// that slot is full, so unread responses would stop the backend once the socket's buffers filled.
    fn pump(&mut self) {
        let mut context = Context::from_waker(Waker::noop());
        for read in &mut self.reads {
            let _ = Pin::new(read).poll(&mut context);
        }
        for (_, update) in &mut self.updates {
            let _ = Pin::new(update).poll(&mut context);
        }
    }

    /// Moves the row's state into the next update if it needs one; the other writes are
    /// [`write_batch`]'s.
    fn take_update(&mut self, key: (&'a str, &'a str), batch: &mut Batch<'a>) {
        let Entry::Occupied(entry) = batch.rows.entry(key) else {
            return;
        };
        if entry.get().write() != StateWrite::Update {
            return;
        }
        let RowState {
            packed,
            source_row,
            stored,
            ..
        } = entry.remove();
        self.done.tuple_ids.push(stored.unwrap_or_default());
        self.done.tables.push(key.0);
        self.done.keys.push(key.1);
        self.done.packed.push(packed);
        self.done.rows.push(source_row);
    }

    fn load(&mut self, needed: usize, plan: &ReadPlan<'a>, batch: &mut Batch<'a>) -> Result<()> {
        while self.loaded < needed {
            let read = self
                .reads
                .pop_front()
                .ok_or_else(|| corrupt("state read", "missing chunk"))?;
            let wait_started = std::time::Instant::now();
            let rows = receive(read)?;
            self.waited += wait_started.elapsed();
            let (tables, keys) = &plan.chunks[self.loaded];
            for row in rows {
                batch.rows.insert(
                    key_at(tables, keys, &row)?,
                    RowState {
                        packed: row.get(1),
                        source_row: None,
                        stored: Some(row.get(2)),
                        changed: true,
                    },
                );
            }
            self.loaded += 1;
        }
        Ok(())
    }

    fn send_done(&mut self) {
        let done = std::mem::take(&mut self.done);
        let rows = done.tuple_ids.len();
        if rows == 0 {
            return;
        }
        let params: Vec<Box<dyn ToSql + Sync + 'a>> = owned![
            self.version,
            done.tuple_ids,
            done.tables,
            done.keys,
            done.packed,
            done.rows
        ];
        self.updates
            .push((rows, send(self.tx.execute_raw(self.update_states, params))));
    }

    /// Sends the last update. The updates of all stored, changed rows go through the pipeline: each
    /// row's last change already sent its own, and any left in `batch` join the last one.
    fn send_rest(&mut self, batch: &mut Batch<'a>) {
        let left: Vec<(&'a str, &'a str)> = batch
            .rows
            .iter()
            .filter(|(_, state)| state.write() == StateWrite::Update)
            .map(|(key, _)| *key)
            .collect();
        for key in left {
            self.take_update(key, batch);
        }
        self.send_done();
    }

    /// Waits for the updates; returns the time spent waiting for reads.
    fn finish(self) -> Result<Duration> {
        for (rows, update) in self.updates {
            let updated = receive(update)?;
            if updated != rows as u64 {
                return Err(corrupt(
                    "source state",
                    format!("{updated} of {rows} rows read in this transaction updated"),
                ));
            }
        }
        Ok(self.waited)
    }
}

/// A writer transaction's statements sent without waiting for their responses (owned parameters: a
/// statement is in flight while the writer goes on).
struct Writes<'w> {
    tx: &'w tokio_postgres::Transaction<'w>,
    in_flight: Vec<InFlight<'w, u64>>,
}

impl<'w> Writes<'w> {
    fn send(&mut self, statement: &'w Statement, params: Vec<Box<dyn ToSql + Sync + 'w>>) {
        self.in_flight.push(send(self.tx.execute_raw(statement, params)));
    }

    /// Waits for every response; the first error fails the transaction (the later statements fail
    /// as the transaction is aborted).
    fn finish(self) -> Result<()> {
        for statement in self.in_flight {
            receive(statement)?;
        }
        Ok(())
    }
}

/// Sends the writes of a computed batch: segments, running sums, row state, parameter index.
fn write_batch<'w>(writes: &mut Writes<'w>, s: &'w WriterStatements, batch: &'w Batch<'_>) {
    let v = batch.version;
    let segments: Vec<(i64, &SegmentBuilder)> = batch
        .closed
        .iter()
        .map(|(id, segment)| (*id, segment))
        .chain(
            batch
                .buckets
                .iter()
                .filter(|(_, d)| !d.segment.is_empty())
                .map(|(id, d)| (*id, &d.segment)),
        )
        .collect();
    if !segments.is_empty() {
        let bucket_ids: Vec<i64> = segments.iter().map(|(id, _)| *id).collect();
        let last_ops: Vec<i64> = segments.iter().map(|(_, s)| s.last_op).collect();
        let first_ops: Vec<i64> = segments.iter().map(|(_, s)| s.first_op).collect();
        let counts: Vec<i64> = segments.iter().map(|(_, s)| s.count).collect();
        let sums: Vec<i64> = segments
            .iter()
            .map(|(_, s)| i64::from(s.checksum.as_u32()))
            .collect();
        let bytes: Vec<&[u8]> = segments.iter().map(|(_, s)| s.bytes.as_slice()).collect();
        writes.send(
            &s.insert_segments,
            owned![bucket_ids, last_ops, first_ops, counts, sums, bytes],
        );
        let ids: Vec<i64> = batch.buckets.keys().copied().collect();
        let sums: Vec<i64> = ids
            .iter()
            .map(|id| i64::from(batch.buckets[id].checksum.as_u32()))
            .collect();
        let counts: Vec<i64> = ids.iter().map(|id| batch.buckets[id].count).collect();
        let last: Vec<i64> = ids.iter().map(|id| batch.buckets[id].last_op).collect();
        writes.send(&s.update_buckets, owned![ids, sums, counts, last]);
    }
    // Updates of stored rows went out with the pipeline (`Pipeline::send_rest`).
    let (mut upsert, mut delete) = (StateColumns::default(), Vec::new());
    for (key, state) in &batch.rows {
        match state.write() {
            StateWrite::Nothing | StateWrite::Update => {}
            StateWrite::Delete => delete.push(*key),
            StateWrite::Upsert => upsert.push(*key, state),
        }
    }
    if !upsert.tables.is_empty() {
        let StateColumns {
            tables,
            keys,
            packed,
            rows,
        } = upsert;
        writes.send(&s.upsert_states, owned![v, tables, keys, packed, rows]);
    }
    if !delete.is_empty() {
        let (tables, keys): (Vec<&str>, Vec<&str>) = delete.into_iter().unzip();
        writes.send(&s.delete_states, owned![v, tables, keys]);
    }
    let retired: Vec<(&str, &str, i64)> = batch
        .params
        .iter()
        .filter_map(|(key, p)| p.retire_at.map(|lsn| (key.0, key.1, lsn)))
        .collect();
    if !retired.is_empty() {
        let tables: Vec<&str> = retired.iter().map(|r| r.0).collect();
        let keys: Vec<&str> = retired.iter().map(|r| r.1).collect();
        let lsns: Vec<i64> = retired.iter().map(|r| r.2).collect();
        writes.send(&s.retire_params, owned![v, tables, keys, lsns]);
    }
    let written: Vec<(&str, &str, &WrittenParameter)> = batch
        .params
        .iter()
        .flat_map(|(key, p)| p.written.iter().map(move |w| (key.0, key.1, w)))
        .collect();
    if !written.is_empty() {
        let lookup: Vec<&str> = written.iter().map(|w| w.2.0.as_str()).collect();
        let tables: Vec<&str> = written.iter().map(|w| w.0).collect();
        let keys: Vec<&str> = written.iter().map(|w| w.1).collect();
        let values: Vec<&str> = written.iter().map(|w| w.2.1.as_str()).collect();
        let created: Vec<i64> = written.iter().map(|w| w.2.2).collect();
        let deleted: Vec<Option<i64>> = written.iter().map(|w| w.2.3).collect();
        writes.send(
            &s.insert_params,
            owned![v, lookup, tables, keys, values, created, deleted],
        );
    }
}

/// Write-checkpoint ids come from a sequence row of their own, so they never wait for the replicator.
/// Both write-checkpoint statements notify the change feed (`$4`/`$5`: its channel) and move the
/// sequence, which the feed polls.
const NEXT_WRITE_CHECKPOINT: &str = "WITH id AS (
       UPDATE meta SET value = value + 1 WHERE key = 'next_write_checkpoint_id'
       RETURNING value - 1 AS id, pg_notify($4, 'w') AS notified)
     INSERT INTO write_checkpoints (user_id, client_id, id, lsn) SELECT $1, $2, id, $3 FROM id RETURNING id";
/// Stores the requested id unless a larger one is stored; returns the larger.
const REQUEST_WRITE_CHECKPOINT: &str = "WITH stored AS (
       SELECT MAX(id) AS id FROM write_checkpoints WHERE user_id = $1 AND client_id = $2),
     inserted AS (
       INSERT INTO write_checkpoints (user_id, client_id, id, lsn)
       SELECT $1, $2, $3, $4 FROM stored WHERE stored.id IS NULL OR stored.id < $3
       ON CONFLICT DO NOTHING RETURNING id),
     moved AS (
       UPDATE meta SET value = value + 1
       WHERE key = 'next_write_checkpoint_id' AND EXISTS (SELECT 1 FROM inserted)
       RETURNING pg_notify($5, 'w'))
     SELECT GREATEST(COALESCE(id, $3), $3) FROM stored";

impl BucketStorage for PostgresStorage {
    fn apply(&self, version: RulesVersion, txn: &SourceTransaction) -> Result<Option<OpId>> {
        Ok(self
            .apply_batch(version, std::slice::from_ref(txn))?
            .map(|checkpoint| checkpoint.op_id))
    }

    fn apply_batch(&self, version: RulesVersion, txns: &[SourceTransaction]) -> Result<Option<Checkpoint>> {
        if txns.is_empty() {
            return Ok(None);
        }
        self.write(version, Work::Transactions(txns))
    }

    fn apply_snapshot_chunk(
        &self,
        version: RulesVersion,
        chunk: &SnapshotChunk,
        progress: &TableSnapshot,
    ) -> Result<()> {
        self.write(version, Work::Chunk(chunk, progress))?;
        Ok(())
    }

    fn snapshot_progress(&self, version: RulesVersion) -> Result<Vec<TableSnapshot>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT source_table, resume_after, done, lsn FROM snapshot_progress
                 WHERE version = $1 ORDER BY source_table COLLATE \"C\"",
            )?;
            query(&conn.client, &statement, &[&v])?
                .into_iter()
                .map(|row| {
                    Ok(TableSnapshot {
                        table: row.get(0),
                        resume_after: row.get(1),
                        done: row.get(2),
                        lsn: lsn_from(row.get(3))?,
                    })
                })
                .collect()
        })
    }

    fn replication_state(&self, version: RulesVersion) -> Result<ReplicationState> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT slot_name, start_lsn, snapshot_done_lsn FROM sync_rules WHERE version = $1",
            )?;
            let rows = query(&conn.client, &statement, &[&v])?;
            let row = rows.first().ok_or(StorageError::UnknownVersion(version))?;
            Ok(ReplicationState {
                slot_name: row.get(0),
                start_lsn: row.get::<_, Option<i64>>(1).map(lsn_from).transpose()?,
                snapshot_done_lsn: row.get::<_, Option<i64>>(2).map(lsn_from).transpose()?,
            })
        })
    }

    fn set_replication_state(&self, version: RulesVersion, state: &ReplicationState) -> Result<()> {
        let v = version_sql(version)?;
        let start = state.start_lsn.map(lsn_sql).transpose()?;
        let done = state.snapshot_done_lsn.map(lsn_sql).transpose()?;
        self.fenced_write(|tx, conn| {
            let statement = conn.statement(
                tx,
                "UPDATE sync_rules SET slot_name = $2, start_lsn = $3, snapshot_done_lsn = $4 WHERE version = $1",
            )?;
            if execute(tx, &statement, &[&v, &state.slot_name, &start, &done])? == 0 {
                return Err(StorageError::UnknownVersion(version));
            }
            Ok(())
        })
    }

    fn source_row(&self, version: RulesVersion, row: &SourceRowKey) -> Result<Option<String>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT source_row FROM source_state WHERE version = $1 AND source_table = $2 AND source_key = $3",
            )?;
            Ok(query(&conn.client, &statement, &[&v, &row.table, &row.key])?
                .first()
                .and_then(|r| r.get(0)))
        })
    }

    fn source_row_keys(&self, version: RulesVersion, table: &str) -> Result<Vec<String>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT k FROM (
                   SELECT source_key FROM source_state WHERE version = $1 AND source_table = $2
                   UNION SELECT source_key FROM parameter_index
                     WHERE version = $1 AND source_table = $2 AND deleted_lsn IS NULL
                 ) AS keys(k) ORDER BY k COLLATE \"C\"",
            )?;
            Ok(query(&conn.client, &statement, &[&v, &table])?
                .into_iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn versions(&self) -> Result<Vec<SyncRulesVersion>> {
        self.read(|conn| {
            let statement =
                conn.statement("SELECT version, rules, state FROM sync_rules ORDER BY version")?;
            query(&conn.client, &statement, &[])?
                .into_iter()
                .map(|r| sync_rules_version(r.get(0), r.get(1), r.get(2)))
                .collect()
        })
    }

    fn latest_checkpoint(&self, version: RulesVersion) -> Result<Option<Checkpoint>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let statement =
                conn.statement("SELECT last_op_id, last_lsn FROM sync_rules WHERE version = $1")?;
            let rows = query(&conn.client, &statement, &[&v])?;
            let row = rows.first().ok_or(StorageError::UnknownVersion(version))?;
            checkpoint_from(row.get(0), row.get(1))
        })
    }

    fn bucket_checksums(
        &self,
        version: RulesVersion,
        checkpoint: OpId,
        buckets: &[BucketName],
    ) -> Result<Vec<BucketSummary>> {
        let v = version_sql(version)?;
        let c = checkpoint.as_i64();
        let names: Vec<&str> = buckets.iter().map(BucketName::as_str).collect();
        self.read(|conn| {
            let running = conn.statement(
                "SELECT name, id, checksum, count, last_op FROM buckets WHERE version = $1 AND name = ANY($2)",
            )?;
            let mut state: HashMap<String, (i64, i64, i64, i64)> = HashMap::new();
            for row in query(&conn.client, &running, &[&v, &names])? {
                state.insert(row.get(0), (row.get(1), row.get(2), row.get(3), row.get(4)));
            }
            // Buckets with ops after the checkpoint: summed from their segments, in one statement (one
            // snapshot, so a concurrent compaction is seen entirely or not at all). Segments of a bucket
            // do not overlap: at most one straddles the checkpoint, and is decoded.
            let older: Vec<i64> = state
                .values()
                .filter(|(.., last_op)| *last_op > c)
                .map(|(id, ..)| *id)
                .collect();
            let mut summed: HashMap<i64, (i64, i64)> = HashMap::new();
            if !older.is_empty() {
                let segments = conn.statement(
                    "SELECT bucket_id,
                       COALESCE(SUM(checksum) FILTER (WHERE last_op <= $2), 0)::bigint,
                       COALESCE(SUM(count) FILTER (WHERE last_op <= $2), 0)::bigint,
                       MAX(first_op) FILTER (WHERE last_op > $2),
                       (array_agg(ops) FILTER (WHERE last_op > $2))[1]
                     FROM op_segments WHERE bucket_id = ANY($1) AND first_op <= $2 GROUP BY bucket_id",
                )?;
                for row in query(&conn.client, &segments, &[&older, &c])? {
                    let (mut sum, mut count): (i64, i64) = (row.get(1), row.get(2));
                    if let (Some(first_op), Some(bytes)) =
                        (row.get::<_, Option<i64>>(3), row.get::<_, Option<&[u8]>>(4))
                    {
                        let (part_sum, part_count) = segment::sums_up_to(first_op, bytes, c)?;
                        sum += part_sum;
                        count += part_count;
                    }
                    summed.insert(row.get(0), (sum, count));
                }
            }
            buckets
                .iter()
                .map(|bucket| {
                    let (sum, count) = match state.get(bucket.as_str()) {
                        None => (0, 0),
                        Some(&(_, sum, count, last_op)) if last_op <= c => (sum, count),
                        Some((id, ..)) => summed.get(id).copied().unwrap_or((0, 0)),
                    };
                    bucket_summary(bucket, sum, count)
                })
                .collect()
        })
    }

    fn changed_buckets(&self, version: RulesVersion, after: OpId) -> Result<Vec<BucketName>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let statement = conn.statement("SELECT name FROM buckets WHERE version = $1 AND last_op > $2")?;
            Ok(query(&conn.client, &statement, &[&v, &after.as_i64()])?
                .into_iter()
                .map(|r| BucketName::new(r.get::<_, String>(0)))
                .collect())
        })
    }

    fn ops(
        &self,
        version: RulesVersion,
        bucket: &BucketName,
        after: OpId,
        up_to: OpId,
        limit: usize,
    ) -> Result<Vec<StoredOp>> {
        let v = version_sql(version)?;
        let (after, up_to) = (after.as_i64(), up_to.as_i64());
        // Every segment holds at least one op: `limit` segments are always enough.
        let segments = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT first_op, ops FROM op_segments
                 WHERE bucket_id = (SELECT id FROM buckets WHERE version = $1 AND name = $2)
                   AND last_op > $3 AND first_op <= $4 ORDER BY last_op LIMIT $5",
            )?;
            let mut out = Vec::new();
            for row in query(
                &conn.client,
                &statement,
                &[&v, &bucket.as_str(), &after, &up_to, &segments],
            )? {
                if out.len() >= limit {
                    break;
                }
                segment::decode_into(row.get(0), row.get(1), after, up_to, limit, &mut out)?;
            }
            Ok(out)
        })
    }

    fn lookup(
        &self,
        version: RulesVersion,
        checkpoint: &Checkpoint,
        keys: &[String],
    ) -> Result<Vec<Vec<String>>> {
        let v = version_sql(version)?;
        let lsn = lsn_sql(checkpoint.lsn)?;
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT lookup_key, values_json FROM parameter_index
                 WHERE version = $1 AND lookup_key = ANY($2) AND created_lsn <= $3
                   AND (deleted_lsn IS NULL OR deleted_lsn > $3)
                 ORDER BY source_table COLLATE \"C\", source_key COLLATE \"C\", values_json COLLATE \"C\"",
            )?;
            let mut found: HashMap<String, Vec<String>> = HashMap::new();
            for row in query(&conn.client, &statement, &[&v, &keys, &lsn])? {
                found.entry(row.get(0)).or_default().push(row.get(1));
            }
            Ok(keys
                .iter()
                .map(|key| found.get(key).cloned().unwrap_or_default())
                .collect())
        })
    }

    fn create_write_checkpoint(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        lsn: Lsn,
    ) -> Result<WriteCheckpointId> {
        let (user, client) = user_client(user, client_id);
        let lsn = lsn_sql(lsn)?;
        self.read(|conn| {
            let statement = conn.statement(NEXT_WRITE_CHECKPOINT)?;
            let id: i64 = query(&conn.client, &statement, &[&user, &client, &lsn, &self.channel])?
                .first()
                .map(|r| r.get(0))
                .ok_or_else(|| corrupt("meta key", "next_write_checkpoint_id missing"))?;
            write_checkpoint_from(id)
        })
    }

    fn request_write_checkpoint(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        requested: WriteCheckpointId,
        lsn: Lsn,
    ) -> Result<WriteCheckpointId> {
        let (user, client) = user_client(user, client_id);
        let lsn = lsn_sql(lsn)?;
        let requested = requested.as_i64();
        self.read(|conn| {
            let statement = conn.statement(REQUEST_WRITE_CHECKPOINT)?;
            let id: i64 = query(
                &conn.client,
                &statement,
                &[&user, &client, &requested, &lsn, &self.channel],
            )?[0]
                .get(0);
            write_checkpoint_from(id)
        })
    }

    fn write_checkpoint_for(
        &self,
        user: &UserId,
        client_id: Option<&ClientId>,
        up_to: Lsn,
    ) -> Result<Option<WriteCheckpointId>> {
        let (user, client) = user_client(user, client_id);
        let lsn = lsn_sql(up_to)?;
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT MAX(id) FROM write_checkpoints WHERE user_id = $1 AND client_id = $2 AND lsn <= $3",
            )?;
            let id: Option<i64> = query(&conn.client, &statement, &[&user, &client, &lsn])?[0].get(0);
            id.map(write_checkpoint_from).transpose()
        })
    }

    fn create_version(&self, rules: &str) -> Result<RulesVersion> {
        let version: i64 = self.fenced_write(|tx, conn| {
            let statement = conn.statement(
                tx,
                "WITH next AS (UPDATE meta SET value = value + 1 WHERE key = 'next_version' RETURNING value - 1 AS v)
                 INSERT INTO sync_rules (version, rules, state) SELECT v, $1, 'building' FROM next RETURNING version",
            )?;
            Ok(query(tx, &statement, &[&rules])?[0].get(0))
        })?;
        u64::try_from(version)
            .map(RulesVersion)
            .map_err(|_| corrupt("sync-rules version", version))
    }

    fn active_version(&self) -> Result<Option<SyncRulesVersion>> {
        self.read(|conn| {
            let statement = conn.statement(
                "SELECT version, rules, state FROM sync_rules WHERE state = 'active' ORDER BY version DESC LIMIT 1",
            )?;
            query(&conn.client, &statement, &[])?
                .first()
                .map(|r| sync_rules_version(r.get(0), r.get(1), r.get(2)))
                .transpose()
        })
    }

    fn activate(&self, version: RulesVersion) -> Result<()> {
        let v = version_sql(version)?;
        self.fenced_write(|tx, conn| {
            let statement = conn.statement(
                tx,
                "WITH retired AS (
                   UPDATE sync_rules SET state = 'retired'
                   WHERE state = 'active' AND version <> $1 AND EXISTS (SELECT 1 FROM sync_rules WHERE version = $1))
                 UPDATE sync_rules SET state = 'active' WHERE version = $1",
            )?;
            if execute(tx, &statement, &[&v])? == 0 {
                return Err(StorageError::UnknownVersion(version));
            }
            self.notify_commit(tx, conn)
        })
    }

    fn delete_version(&self, version: RulesVersion) -> Result<()> {
        let v = version_sql(version)?;
        self.fenced_write(|tx, conn| {
            let state = conn.statement(tx, "SELECT state FROM sync_rules WHERE version = $1 FOR UPDATE")?;
            match query(tx, &state, &[&v])?
                .first()
                .map(|r| r.get::<_, String>(0))
                .as_deref()
            {
                None => return Err(StorageError::UnknownVersion(version)),
                Some("active") => return Err(StorageError::VersionActive(version)),
                Some(_) => {}
            }
            let delete = conn.statement(
                tx,
                "WITH segments AS (
                   DELETE FROM op_segments WHERE bucket_id IN (SELECT id FROM buckets WHERE version = $1)),
                 b AS (DELETE FROM buckets WHERE version = $1),
                 s AS (DELETE FROM source_state WHERE version = $1),
                 p AS (DELETE FROM parameter_index WHERE version = $1),
                 c AS (DELETE FROM checkpoints WHERE version = $1),
                 g AS (DELETE FROM snapshot_progress WHERE version = $1)
                 DELETE FROM sync_rules WHERE version = $1",
            )?;
            execute(tx, &delete, &[&v])?;
            self.notify_commit(tx, conn)
        })?;
        self.bucket_cache()?.remove(&v);
        Ok(())
    }

    fn compact(&self, version: RulesVersion, up_to: OpId) -> Result<CompactStats> {
        let v = version_sql(version)?;
        let (limit, buckets) = self.read(|conn| {
            let latest = conn.statement("SELECT last_op_id FROM sync_rules WHERE version = $1")?;
            let latest: i64 = query(&conn.client, &latest, &[&v])?
                .first()
                .map(|r| r.get(0))
                .ok_or(StorageError::UnknownVersion(version))?;
            let ids =
                conn.statement("SELECT id FROM buckets WHERE version = $1 ORDER BY name COLLATE \"C\"")?;
            let buckets: Vec<i64> = query(&conn.client, &ids, &[&v])?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            // Guard rule 1: only ops at or below the latest checkpoint, so every target_op is published.
            Ok((up_to.as_i64().min(latest), buckets))
        })?;
        let mut stats = CompactStats {
            up_to: op_from(limit)?,
            ..CompactStats::default()
        };
        // Announced (committed) before any op changes; see the module docs for the grace.
        self.fenced_write(|tx, conn| {
            let start = conn.statement(
                tx,
                "UPDATE meta SET value = value + 1 + value % 2 WHERE key = 'compaction_generation'
                 RETURNING value, pg_notify($1, 'k' || value)",
            )?;
            query(tx, &start, &[&self.channel])
        })?;
        std::thread::sleep(self.compaction_grace());
        let compacted = self.compact_buckets(&buckets, limit, &mut stats);
        // Ended whether or not the run failed: a stuck odd generation would keep readers waiting.
        let ended = self.fenced_write(|tx, conn| self.end_compaction_in(tx, conn));
        compacted?;
        ended?;
        Ok(stats)
    }
}

impl PostgresStorage {
    fn compact_buckets(&self, buckets: &[i64], limit: i64, stats: &mut CompactStats) -> Result<()> {
        for &bucket in buckets {
            // One transaction per bucket: the replicator waits for one bucket at most, not the run.
            let (moved, cleared) = self.fenced_write(|tx, conn| compact_bucket(tx, conn, bucket, limit))?;
            if moved + cleared > 0 {
                stats.buckets += 1;
            }
            stats.moved += moved;
            stats.cleared += cleared;
        }
        Ok(())
    }

    /// Tells the change feeds, at commit, that readers may see something new.
    fn notify_commit(&self, tx: &tokio_postgres::Transaction<'_>, conn: &mut StatementCache) -> Result<()> {
        let statement = conn.statement(tx, "SELECT pg_notify($1, 'c')")?;
        query(tx, &statement, &[&self.channel])?;
        Ok(())
    }
}

impl PostgresStorage {
    /// Runs `f` in a writer transaction that holds the epoch row (fencing) and commits it.
    fn fenced_write<T>(
        &self,
        f: impl FnOnce(&tokio_postgres::Transaction<'_>, &mut StatementCache) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.writer()?;
        let conn = guard.conn();
        let lock = conn.statement(LOCK_EPOCH)?;
        let mut cache = StatementCache(std::mem::take(&mut conn.statements));
        let result = (|| {
            let tx = block_on(conn.client.transaction())?;
            check_epoch(&tx, &lock, self.held_epoch())?;
            let value = f(&tx, &mut cache)?;
            block_on(tx.commit())?;
            Ok(value)
        })();
        // Statements prepared in `f` stay cached (preparing needs the client, held by the transaction).
        let prepared = cache.0;
        conn.statements = prepared;
        guard.discard_after(&result);
        result
    }
}

/// Statements prepared through an open transaction (the connection's client is borrowed by it).
struct StatementCache(HashMap<&'static str, Statement>);

impl StatementCache {
    fn statement(&mut self, tx: &tokio_postgres::Transaction<'_>, sql: &'static str) -> Result<Statement> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = block_on(tx.prepare(sql))?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// Compacts one bucket's ops ≤ `limit` (see [`compact_ops`]) and rewrites its segments up to the one
/// holding `limit`; returns (ops turned into MOVE, ops merged away into a CLEAR). The writer only ever
/// adds segments above the latest checkpoint, so it never touches the rows locked here.
fn compact_bucket(
    tx: &tokio_postgres::Transaction<'_>,
    cache: &mut StatementCache,
    bucket: i64,
    limit: i64,
) -> Result<(u64, u64)> {
    let select = cache.statement(
        tx,
        "SELECT last_op, first_op, ops FROM op_segments WHERE bucket_id = $1 AND first_op <= $2
         ORDER BY last_op FOR UPDATE",
    )?;
    let (mut last_ops, mut ops): (Vec<i64>, Vec<StoredOp>) = (Vec::new(), Vec::new());
    for row in query(tx, &select, &[&bucket, &limit])? {
        last_ops.push(row.get(0));
        segment::decode_into(row.get(1), row.get(2), i64::MIN, i64::MAX, usize::MAX, &mut ops)?;
    }
    let (moved, cleared) = compact_ops(&mut ops, limit);
    let segments = segments_of(&ops);
    if moved + cleared == 0 && segments.len() >= last_ops.len() {
        return Ok((0, 0));
    }
    let delete = cache.statement(
        tx,
        "DELETE FROM op_segments WHERE bucket_id = $1 AND last_op = ANY($2)",
    )?;
    execute(tx, &delete, &[&bucket, &last_ops])?;
    let insert = cache.statement(tx, INSERT_SEGMENTS)?;
    let ids = vec![bucket; segments.len()];
    let last: Vec<i64> = segments.iter().map(|s| s.last_op).collect();
    let first: Vec<i64> = segments.iter().map(|s| s.first_op).collect();
    let counts: Vec<i64> = segments.iter().map(|s| s.count).collect();
    let sums: Vec<i64> = segments.iter().map(|s| i64::from(s.checksum.as_u32())).collect();
    let bytes: Vec<&[u8]> = segments.iter().map(|s| s.bytes.as_slice()).collect();
    execute(tx, &insert, &[&ids, &last, &first, &counts, &sums, &bytes])?;
    if cleared > 0 {
        // Checksums are unchanged by construction; the count drops.
        let update = cache.statement(tx, "UPDATE buckets SET count = count - $2 WHERE id = $1")?;
        execute(
            tx,
            &update,
            &[&bucket, &i64::try_from(cleared).unwrap_or(i64::MAX)],
        )?;
    }
    Ok((moved, cleared))
}
