//! [`BucketStorage`] on one embedded SQLite file.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a committed transaction survives power loss and the
//! replicator may confirm its LSN as soon as [`BucketStorage::apply`] returns (invariant 4).
//!
//! Concurrency: one writer connection behind a mutex (the replicator; compaction and write checkpoints
//! take it briefly), and a small pool of reader connections. In WAL mode readers see the last committed
//! state and never block the writer or each other. Every read call takes a connection, runs its statements
//! (inside one short read transaction where it needs several) and returns it, so no read transaction
//! outlives a call — a session never pins the WAL while it waits on the network.
//!
//! Format: `schema_version` records the file's format; [`MIGRATIONS`] upgrade older files at open, and a
//! file newer than this build is refused rather than misread.

use std::collections::{BTreeMap, BTreeSet};

// The write path hashes row keys and bucket names several times per row: foldhash is several times
// cheaper than the standard SipHash there (SipHash was ~6 % of the writer's profile).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{
    CachedStatement, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use syncgate_protocol::{
    BucketName, Checksum, ClientId, OpId, OpType, OplogEntry, Subkey, UserId, WriteCheckpointId,
};

use super::placement::{BucketDelta, PlacementOp, PlacementOps, diff_placements, take_op_id};
use super::segment::{self, OpRef, SegmentBuilder};
use super::{
    BucketStorage, BucketSummary, Checkpoint, CompactStats, Lsn, ParameterRow, ReplicationState, Result,
    RowChange, RulesVersion, SnapshotChunk, SourceRowKey, SourceTransaction, StorageError, StoredOp,
    SyncRulesVersion, TableSnapshot, VersionState,
};

/// Schema migrations, index + 1 = the format version they produce. Append only: never edit a released one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: initial format.
    r"
    -- Sequences and other storage-wide counters (next_op_id, next_write_checkpoint_id, next_version).
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;

    -- One row per sync-rules version; last_op_id/last_lsn are its latest checkpoint.
    CREATE TABLE sync_rules (
        version INTEGER PRIMARY KEY,
        rules TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('building', 'active', 'retired')),
        last_op_id INTEGER NOT NULL DEFAULT 0,
        last_lsn INTEGER
    );

    -- Checkpoint history: op id <-> commit LSN of every applied source transaction.
    CREATE TABLE checkpoints (
        version INTEGER NOT NULL,
        lsn INTEGER NOT NULL,
        op_id INTEGER NOT NULL,
        PRIMARY KEY (version, lsn)
    ) WITHOUT ROWID;

    -- The op log. op_id is global (one sequence for all buckets and versions).
    CREATE TABLE ops (
        op_id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL,
        bucket TEXT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('PUT', 'REMOVE', 'MOVE', 'CLEAR')),
        object_type TEXT,
        object_id TEXT,
        subkey TEXT,
        data TEXT,
        checksum INTEGER NOT NULL,
        target_op INTEGER
    );
    CREATE INDEX ops_by_bucket ON ops (version, bucket, op_id);

    -- Running checksum (u32 in an integer) and count per bucket, so checkpoints need no scan.
    CREATE TABLE bucket_state (
        version INTEGER NOT NULL,
        bucket TEXT NOT NULL,
        checksum INTEGER NOT NULL,
        count INTEGER NOT NULL,
        last_op INTEGER NOT NULL,
        PRIMARY KEY (version, bucket)
    ) WITHOUT ROWID;

    -- Current placements of each source row; put_op is the live PUT (never compacted: nothing supersedes it).
    CREATE TABLE current_rows (
        version INTEGER NOT NULL,
        source_table TEXT NOT NULL,
        source_key TEXT NOT NULL,
        bucket TEXT NOT NULL,
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        put_op INTEGER NOT NULL,
        PRIMARY KEY (version, source_table, source_key, bucket, object_type, object_id)
    ) WITHOUT ROWID;

    -- Parameter lookup index with history by LSN, so lookups read the state at a checkpoint.
    CREATE TABLE parameter_index (
        version INTEGER NOT NULL,
        lookup_key TEXT NOT NULL,
        source_table TEXT NOT NULL,
        source_key TEXT NOT NULL,
        values_json TEXT NOT NULL,
        created_lsn INTEGER NOT NULL,
        deleted_lsn INTEGER
    );
    CREATE INDEX parameter_by_lookup ON parameter_index (version, lookup_key, created_lsn);
    CREATE INDEX parameter_live_by_row ON parameter_index (version, source_table, source_key)
        WHERE deleted_lsn IS NULL;

    -- Write checkpoints; history kept so a session finds the newest one at or below its checkpoint's LSN.
    CREATE TABLE write_checkpoints (
        user_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        lsn INTEGER NOT NULL,
        PRIMARY KEY (user_id, client_id, id)
    ) WITHOUT ROWID;
    ",
    // 2: initial-snapshot progress, replication bookkeeping, stored source rows.
    r"
    CREATE TABLE snapshot_progress (
        version INTEGER NOT NULL,
        source_table TEXT NOT NULL,
        resume_after TEXT,
        done INTEGER NOT NULL,
        lsn INTEGER NOT NULL,
        PRIMARY KEY (version, source_table)
    ) WITHOUT ROWID;

    ALTER TABLE sync_rules ADD COLUMN slot_name TEXT;
    ALTER TABLE sync_rules ADD COLUMN start_lsn INTEGER;
    ALTER TABLE sync_rules ADD COLUMN snapshot_done_lsn INTEGER;

    -- The replicator's copy of each source row, to complete UPDATEs that leave TOASTed columns out.
    CREATE TABLE source_rows (
        version INTEGER NOT NULL,
        source_table TEXT NOT NULL,
        source_key TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (version, source_table, source_key)
    ) WITHOUT ROWID;
    ",
    // 3: integer bucket ids and one state row per source row. The write path seeked long text keys in
    // three B-trees per placement (ops by bucket, current_rows, ops by put_op for the data diff); now it
    // is one lookup and one write of `source_state` per row, and ops are indexed by a small integer.
    // `source_state.placements` is packed by `migrate_placements` after this script.
    r"
    -- Buckets of every version: running checksum (u32 in an integer), count and last op, as bucket_state.
    CREATE TABLE buckets (
        id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        checksum INTEGER NOT NULL,
        count INTEGER NOT NULL,
        last_op INTEGER NOT NULL,
        UNIQUE (version, name)
    );
    INSERT INTO buckets (version, name, checksum, count, last_op)
        SELECT version, bucket, checksum, count, last_op FROM bucket_state ORDER BY version, bucket;
    DROP TABLE bucket_state;

    CREATE TABLE ops_v3 (
        op_id INTEGER PRIMARY KEY,
        bucket_id INTEGER NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('PUT', 'REMOVE', 'MOVE', 'CLEAR')),
        object_type TEXT,
        object_id TEXT,
        subkey TEXT,
        data TEXT,
        checksum INTEGER NOT NULL,
        target_op INTEGER
    );
    INSERT INTO ops_v3 (op_id, bucket_id, op, object_type, object_id, subkey, data, checksum, target_op)
        SELECT o.op_id, b.id, o.op, o.object_type, o.object_id, o.subkey, o.data, o.checksum, o.target_op
        FROM ops o JOIN buckets b ON b.version = o.version AND b.name = o.bucket;
    DROP TABLE ops;
    ALTER TABLE ops_v3 RENAME TO ops;
    CREATE INDEX ops_by_bucket ON ops (bucket_id, op_id);

    -- Per source row: its placements (packed, see `PackedPlacement`) and the replicator's copy of the row.
    -- A row with neither has no state row.
    CREATE TABLE source_state (
        version INTEGER NOT NULL,
        source_table TEXT NOT NULL,
        source_key TEXT NOT NULL,
        placements BLOB NOT NULL,
        source_row TEXT,
        PRIMARY KEY (version, source_table, source_key)
    ) WITHOUT ROWID;
    INSERT INTO source_state (version, source_table, source_key, placements, source_row)
        SELECT version, source_table, source_key, X'', data FROM source_rows;

    -- Whether a version ever stored a source row: while not, changes without one skip the state read.
    ALTER TABLE sync_rules ADD COLUMN has_source_rows INTEGER NOT NULL DEFAULT 0;
    UPDATE sync_rules SET has_source_rows = 1
        WHERE EXISTS (SELECT 1 FROM source_rows s WHERE s.version = sync_rules.version);
    DROP TABLE source_rows;
    ",
    // 4: ops packed per bucket in segments (see `segment`): one row per bucket per storage transaction
    // instead of a row and an index entry per op, which were most of the writer's time. Filled from `ops`
    // by `migrate_segments` after this script.
    r"
    CREATE TABLE op_segments (
        bucket_id INTEGER NOT NULL,
        last_op INTEGER NOT NULL,
        first_op INTEGER NOT NULL,
        count INTEGER NOT NULL,
        -- Wrapping u32 sum of the segment's op checksums.
        checksum INTEGER NOT NULL,
        ops BLOB NOT NULL,
        UNIQUE (bucket_id, last_op)
    );
    ",
    // 5: `source_state` keyed by `state_key` (see there) instead of the row key's text, so a snapshot's
    // inserts append to its B-tree in the order the copy reads rows. Must compute what `state_key` does.
    r"
    CREATE TABLE source_state_v5 (
        version INTEGER NOT NULL,
        source_table TEXT NOT NULL,
        state_key TEXT NOT NULL,
        placements BLOB NOT NULL,
        source_row TEXT,
        PRIMARY KEY (version, source_table, state_key)
    ) WITHOUT ROWID;
    INSERT INTO source_state_v5 (version, source_table, state_key, placements, source_row)
        SELECT version, source_table,
            length(length(CAST(source_key AS BLOB))) || length(CAST(source_key AS BLOB)) || source_key,
            placements, source_row
        FROM source_state ORDER BY 1, 2, 3;
    DROP TABLE source_state;
    ALTER TABLE source_state_v5 RENAME TO source_state;
    ",
];

/// The `source_state` key of a source row key: the number of digits of the key's length in bytes, that
/// length, then the key. Keys of non-negative integers (`["123"]`) then sort numerically, the order a
/// snapshot copies a table in, so a copy appends to the B-tree; by their text, each chunk inserted
/// between the entries of earlier chunks, dirtying pages all over the tree (the snapshot writer took
/// 22 % less time with this key: docs/benchmarks.md). Other keys sort by length first, no worse than by
/// text. Row keys are far shorter than
/// 10^9 bytes, so the digit count is one digit. `MIGRATIONS[4]` computes the same in SQL.
pub(super) fn state_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    write_state_key(&mut out, key);
    out
}

/// [`state_key`] into `out` (cleared first): the snapshot writer reuses one buffer for every row.
fn write_state_key(out: &mut String, key: &str) {
    use std::fmt::Write as _;
    let length = key.len();
    let digits = length.checked_ilog10().map_or(1, |d| d + 1);
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(out, "{digits}{length}");
    out.push_str(key);
}

/// The row key of a `state_key` column, in SQL (`substr` counts characters; the prefix is ASCII digits).
const ROW_KEY_OF_STATE_KEY: &str = "substr(state_key, 2 + substr(state_key, 1, 1))";

/// The format version this build writes.
#[allow(clippy::cast_possible_wrap)] // a handful of migrations, far below i64::MAX
const FORMAT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Page size of new storage files (SQLite's default is 4 KiB).
const PAGE_SIZE: i64 = 16_384;

/// The writer's page cache, negative as SQLite expects a size in KiB: 256 MiB.
const WRITER_CACHE_KIB: i64 = -262_144;

/// The writer's memory map of the database file: 16 GiB, as much as SQLite allows.
const WRITER_MMAP_BYTES: i64 = 1 << 34;

/// Prepared statements the writer keeps: the write path alone uses about 15.
const WRITER_STATEMENT_CACHE: usize = 64;

/// Reader connections kept for reuse; more are opened on demand and dropped after use.
const READER_POOL: usize = 8;

/// How long a statement waits for a lock (only the writer and WAL checkpoints contend).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bucket storage in one SQLite file. See the module docs for durability and concurrency.
pub struct SqliteStorage {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Locked only while holding `writer`.
    bucket_ids: Mutex<BucketIds>,
    readers: Mutex<Vec<Connection>>,
    /// Copies the WAL into the database file on its own thread, so the writer's commits do not pay for it.
    /// Held for its `Drop`, which stops the thread.
    _checkpointer: Checkpointer,
}

/// How often the background checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The writer checkpoints by itself when the WAL grows past this many bytes (at 256 MiB the writer's own checkpoints cost a third of the ingest rate in the replication bench). The
/// WAL file keeps its largest size until the last connection closes: truncating it on every restart
/// (`journal_size_limit`) cost 15–20 % of the ingest rate.
/// Under a steady stream of commits the background checkpointer never finds the WAL fully copied at the
/// start of a write, so SQLite cannot restart it; the writer's own checkpoint (by then mostly done in the
/// background) lets it restart, and bounds the WAL should the checkpointer fail.
const WRITER_FALLBACK_CHECKPOINT_BYTES: i64 = 1 << 30;

/// A thread running `PRAGMA wal_checkpoint(PASSIVE)` on its own connection. A passive checkpoint never
/// blocks the writer or readers; it copies what is committed and leaves the rest for the next round.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let (lock, wake) = &*signal;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    stopped = match wake.wait_timeout(stopped, CHECKPOINT_INTERVAL) {
                        Ok((guard, _)) => guard,
                        Err(_) => return,
                    };
                    if *stopped {
                        break;
                    }
                    if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        // The writer's fallback checkpoint keeps the WAL bounded; retry next round.
                        tracing::warn!(%error, "background WAL checkpoint failed");
                    }
                }
            })
            .map_err(StorageError::Thread)?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Puts the file in WAL mode. Switching a new file needs it alone, and SQLite answers BUSY there at once,
/// without the busy handler, when another connection (another process creating the same storage, an
/// `inspect`) has it open too: retried here for up to [`BUSY_TIMEOUT`].
fn switch_to_wal(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

impl SqliteStorage {
    /// Opens (creating if missing) the storage file and brings its format up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StorageError::Open {
            path: path.display().to_string(),
            source,
        };
        // The connection sits behind our mutex: SQLite's per-call mutexes would only add cost.
        let mut writer = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(open_err)?;
        writer.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
        writer.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Takes effect only on a new, empty file (before WAL mode is set). Op segments are blobs of up to
        // 512 KiB: larger pages mean fewer overflow pages to chain and fewer WAL frames per commit.
        writer
            .pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(open_err)?;
        // WAL: readers never block the writer. FULL: a commit is on disk before it returns (invariant 4).
        switch_to_wal(&writer).map_err(open_err)?;
        writer
            .pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        // The write path seeks in several indexes per row: with SQLite's default 2 MiB cache every seek
        // past the first levels is a read syscall. Checkpoints run on a background thread (see
        // `Checkpointer`); the writer's own is only the fallback.
        // Memory-mapped reads: index seeks beyond the page cache read the OS's cache directly instead of
        // a pread and a copy per page (SQLite caps the map at its compiled maximum, 2 GiB by default).
        for (pragma, value) in [("cache_size", WRITER_CACHE_KIB), ("mmap_size", WRITER_MMAP_BYTES)] {
            writer.pragma_update(None, pragma, value).map_err(open_err)?;
        }
        writer
            .pragma_update(None, "temp_store", "MEMORY")
            .map_err(open_err)?;
        // Files created before format 4 keep 4 KiB pages: the fallback is set in bytes, not pages.
        let page_size: i64 = writer
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(open_err)?;
        writer
            .pragma_update(
                None,
                "wal_autocheckpoint",
                WRITER_FALLBACK_CHECKPOINT_BYTES / page_size.max(512),
            )
            .map_err(open_err)?;
        migrate(&mut writer)?;
        let checkpointer = Checkpointer::start(&path)?;
        Ok(SqliteStorage {
            path,
            writer: Mutex::new(writer),
            bucket_ids: Mutex::new(BucketIds::default()),
            readers: Mutex::new(Vec::new()),
            _checkpointer: checkpointer,
        })
    }

    /// The file this storage lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's `PRAGMA synchronous` (2 = FULL), for tests.
    #[cfg(test)]
    pub(super) fn writer_synchronous(&self) -> Result<i64> {
        Ok(self.writer()?.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    fn writer(&self) -> Result<MutexGuard<'_, Connection>> {
        self.writer.lock().map_err(|_| StorageError::Poisoned)
    }

    fn bucket_ids(&self) -> Result<MutexGuard<'_, BucketIds>> {
        self.bucket_ids.lock().map_err(|_| StorageError::Poisoned)
    }

    /// Runs `f` on a reader connection from the pool (opening one if none is free) and returns it.
    fn read<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().map_err(|_| StorageError::Poisoned)?.pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn
            }
        };
        let result = f(&mut conn);
        // A connection is returned only after its statements finished, so it holds no read transaction.
        let mut pool = self.readers.lock().map_err(|_| StorageError::Poisoned)?;
        if pool.len() < READER_POOL && conn.is_autocommit() {
            pool.push(conn);
        }
        result
    }
}

/// Applies pending migrations; seeds the sequences when the file is new.
fn migrate(conn: &mut Connection) -> Result<()> {
    if stored_format(conn)? == FORMAT_VERSION {
        return Ok(());
    }
    // Re-read under the exclusive lock: another process (or connection) opening the same new file at the
    // same moment must not run the same migration twice.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found = stored_format(&tx)?;
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
        let version = i64::try_from(index + 1).expect("a handful of migrations fit i64");
        tx.execute_batch(sql)?;
        match version {
            1 => seed_sequences(&tx)?,
            3 => migrate_placements(&tx)?,
            4 => migrate_segments(&tx)?,
            _ => {}
        }
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [version])?;
    }
    tx.commit()?;
    Ok(())
}

/// The file's format version; 0 for a new file.
fn stored_format(conn: &Connection) -> Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let found: Option<i64> = conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
    Ok(found.unwrap_or(0))
}

/// Seeds the storage-wide sequences above anything a client of an earlier, lost storage may hold
/// (invariant 1): op ids and write-checkpoint ids from the wall clock in microseconds, sync-rules versions
/// (the `N#` bucket prefix) from the wall clock in seconds, which keeps bucket names short.
fn seed_sequences(tx: &Transaction<'_>) -> Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let micros = i64::try_from(now.as_micros()).unwrap_or(i64::MAX / 2);
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX / 2);
    for (key, value) in [
        ("next_op_id", micros.max(1)),
        ("next_write_checkpoint_id", micros.max(1)),
        ("next_version", secs.max(1)),
    ] {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
    }
    Ok(())
}

/// Format 3: packs each source row's `current_rows` into `source_state.placements`, hashing the data of
/// its live PUT, then drops `current_rows`.
fn migrate_placements(tx: &Transaction<'_>) -> Result<()> {
    let mut select = tx.prepare(
        "SELECT c.version, c.source_table, c.source_key, b.id, c.object_type, c.object_id, o.data
         FROM current_rows c
         JOIN buckets b ON b.version = c.version AND b.name = c.bucket
         LEFT JOIN ops o ON o.op_id = c.put_op
         ORDER BY c.version, c.source_table, c.source_key, c.bucket, c.object_type, c.object_id",
    )?;
    let mut upsert = tx.prepare(
        "INSERT INTO source_state (version, source_table, source_key, placements) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO UPDATE SET placements = excluded.placements",
    )?;
    let mut rows = select.query([])?;
    let mut current: Option<(i64, String, String)> = None;
    let mut packed = Vec::new();
    while let Some(r) = rows.next()? {
        let key: (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if current.as_ref() != Some(&key) {
            if let Some((v, table, source_key)) = current.take() {
                upsert.execute(params![v, table, source_key, packed])?;
            }
            packed.clear();
            current = Some(key);
        }
        let data: Option<String> = r.get(6)?;
        // A missing PUT (never expected: nothing compacts a live PUT) gets a hash no data has, so the
        // row's next change writes a PUT.
        let hash = data.as_deref().map_or([0; HASH_LEN], data_hash);
        pack_placement(
            &mut packed,
            r.get(3)?,
            &r.get::<_, String>(4)?,
            &r.get::<_, String>(5)?,
            &hash,
        )?;
    }
    if let Some((v, table, source_key)) = current {
        upsert.execute(params![v, table, source_key, packed])?;
    }
    drop(rows);
    tx.execute_batch("DROP TABLE current_rows")?;
    Ok(())
}

/// Format 4: moves every op of `ops` into segments, in op-id order per bucket, then drops `ops`; and
/// rehashes placements the format-4 way ([`put_hash`]) from the data of each one's latest PUT, so an
/// unchanged row still writes no op after the upgrade.
fn migrate_segments(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "CREATE TEMP TABLE put_hashes (
            bucket_id INTEGER NOT NULL, object_type TEXT NOT NULL, object_id TEXT NOT NULL, hash BLOB NOT NULL,
            PRIMARY KEY (bucket_id, object_type, object_id)
        ) WITHOUT ROWID",
    )?;
    let mut remember = tx.prepare(
        "INSERT INTO put_hashes (bucket_id, object_type, object_id, hash) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO UPDATE SET hash = excluded.hash",
    )?;
    let mut select = tx.prepare(
        "SELECT bucket_id, op_id, op, object_type, object_id, subkey, data, checksum, target_op FROM ops
         ORDER BY bucket_id, op_id",
    )?;
    let mut rows = select.query([])?;
    let mut builder = SegmentBuilder::default();
    let mut bucket = None;
    while let Some(r) = rows.next()? {
        let bucket_id: i64 = r.get(0)?;
        if bucket != Some(bucket_id) || builder.is_full() {
            if let Some(previous) = bucket {
                insert_segment(tx, previous, &builder)?;
            }
            builder.clear();
            bucket = Some(bucket_id);
        }
        let kind: String = r.get(2)?;
        let op = OpRef {
            op_id: r.get(1)?,
            op: op_type_from(&kind)?,
            object_type: text_or_null(r, 3)?,
            object_id: text_or_null(r, 4)?,
            subkey: text_or_null(r, 5)?,
            data: text_or_null(r, 6)?,
            checksum: checksum_from(r.get(7)?)?,
            target_op: r.get(8)?,
        };
        // In op-id order, so the last PUT of a placement leaves its hash.
        if let (OpType::Put, Some(object_type), Some(object_id), Some(data)) =
            (op.op, op.object_type, op.object_id, op.data)
        {
            let hash = put_hash(&Checksum::put_digest(object_type, object_id, data));
            remember.execute(params![bucket_id, object_type, object_id, &hash[..]])?;
        }
        builder.push(&op);
    }
    if let Some(previous) = bucket {
        insert_segment(tx, previous, &builder)?;
    }
    drop(rows);
    drop(select);
    drop(remember);
    rehash_placements(tx)?;
    tx.execute_batch("DROP TABLE ops; DROP TABLE temp.put_hashes")?;
    Ok(())
}

/// Replaces each stored placement's hash by the one `migrate_segments` computed for its latest PUT.
fn rehash_placements(tx: &Transaction<'_>) -> Result<()> {
    let mut select = tx.prepare(
        "SELECT version, source_table, source_key, placements FROM source_state WHERE placements != X''",
    )?;
    let mut lookup = tx.prepare(
        "SELECT hash FROM put_hashes WHERE bucket_id = ?1 AND object_type = ?2 AND object_id = ?3",
    )?;
    // Collected first and applied after the scan: SQLite leaves a scan of a table changed under it undefined.
    tx.execute_batch(
        "CREATE TEMP TABLE rehashed (
            version INTEGER NOT NULL, source_table TEXT NOT NULL, source_key TEXT NOT NULL, placements BLOB NOT NULL
        )",
    )?;
    let mut update = tx.prepare(
        "INSERT INTO rehashed (version, source_table, source_key, placements) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut rows = select.query([])?;
    while let Some(r) = rows.next()? {
        let old = blob(r, 3)?;
        let mut packed = Vec::with_capacity(old.len());
        for placement in unpack_placements(old)? {
            let found: Option<Vec<u8>> = lookup
                .query_row(
                    params![placement.bucket_id, placement.object_type, placement.object_id],
                    |r| r.get(0),
                )
                .optional()?;
            // Without a PUT (never expected: nothing compacts a live PUT) the old hash stays; it matches
            // no new hash, so the row's next change writes a PUT.
            let hash = match found.as_deref().map(<[u8; HASH_LEN]>::try_from) {
                Some(Ok(hash)) => hash,
                _ => placement.hash,
            };
            pack_placement(
                &mut packed,
                placement.bucket_id,
                placement.object_type,
                placement.object_id,
                &hash,
            )?;
        }
        if packed != old {
            update.execute(params![
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                packed
            ])?;
        }
    }
    drop(rows);
    tx.execute_batch(
        "UPDATE source_state SET placements = r.placements FROM temp.rehashed r
         WHERE source_state.version = r.version AND source_state.source_table = r.source_table
           AND source_state.source_key = r.source_key;
         DROP TABLE temp.rehashed",
    )?;
    Ok(())
}

/// Column `index` of `row` as a blob, borrowed from the row.
fn blob<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<&'r [u8]> {
    row.get_ref(index)?
        .as_blob()
        .map_err(|e| corrupt("op segment column", e))
}

/// Column `index` of `row` as text or NULL, borrowed from the row.
fn text_or_null<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<Option<&'r str>> {
    row.get_ref(index)?
        .as_str_or_null()
        .map_err(|e| corrupt("op column", e))
}

/// Writes one segment of `bucket_id`.
fn insert_segment(conn: &Connection, bucket_id: i64, segment: &SegmentBuilder) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO op_segments (bucket_id, last_op, first_op, count, checksum, ops)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        bucket_id,
        segment.last_op,
        segment.first_op,
        segment.count,
        i64::from(segment.checksum.as_u32()),
        segment.bytes
    ])?;
    Ok(())
}

/// Bytes of a placement's data hash: 128 bits of a SHA-256 over the data, so "same hash" means "same
/// data" even for data chosen to collide (a 32-bit op checksum would not do).
pub(super) const HASH_LEN: usize = 16;

/// Format 3's placement hash: of the data alone (only its migration still computes it).
fn data_hash(data: &str) -> [u8; HASH_LEN] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data.as_bytes());
    let mut hash = [0; HASH_LEN];
    hash.copy_from_slice(&digest[..HASH_LEN]);
    hash
}

/// Format 4's placement hash: the first 128 bits of the PUT checksum's digest. The placement key already
/// fixes object type and id, so for one placement equal digests mean equal data.
pub(super) fn put_hash(digest: &[u8; 32]) -> [u8; HASH_LEN] {
    let mut hash = [0; HASH_LEN];
    hash.copy_from_slice(&digest[..HASH_LEN]);
    hash
}

/// One placement of a source row as packed in `source_state.placements`: bucket id (i64 LE), data hash,
/// then object type and object id, each as a u32 LE length and UTF-8 bytes. Entries are in the order
/// (bucket name, object type, object id), the order their ops were written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackedPlacement<'a> {
    pub bucket_id: i64,
    pub hash: [u8; HASH_LEN],
    pub object_type: &'a str,
    pub object_id: &'a str,
}

/// The bytes [`pack_placement`] appends for one placement: a row's packed placements are sized up front
/// instead of growing by reallocation.
pub(super) fn packed_placement_len(object_type: &str, object_id: &str) -> usize {
    8 + HASH_LEN + 4 + object_type.len() + 4 + object_id.len()
}

pub(super) fn pack_placement(
    out: &mut Vec<u8>,
    bucket_id: i64,
    object_type: &str,
    object_id: &str,
    hash: &[u8; HASH_LEN],
) -> Result<()> {
    out.extend_from_slice(&bucket_id.to_le_bytes());
    out.extend_from_slice(hash);
    for text in [object_type, object_id] {
        let len = u32::try_from(text.len()).map_err(|_| StorageError::OutOfRange {
            what: "object type or id length",
            value: u64::try_from(text.len()).unwrap_or(u64::MAX),
        })?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    Ok(())
}

pub(super) fn unpack_placements(mut packed: &[u8]) -> Result<Vec<PackedPlacement<'_>>> {
    fn take<'a>(packed: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if packed.len() < n {
            return Err(corrupt(
                "packed placements",
                format!("{} bytes left, {n} needed", packed.len()),
            ));
        }
        let (head, tail) = packed.split_at(n);
        *packed = tail;
        Ok(head)
    }
    fn text<'a>(packed: &mut &'a [u8]) -> Result<&'a str> {
        let mut len = [0; 4];
        len.copy_from_slice(take(packed, 4)?);
        let len = usize::try_from(u32::from_le_bytes(len)).map_err(|e| corrupt("packed placements", e))?;
        std::str::from_utf8(take(packed, len)?).map_err(|e| corrupt("packed placements", e))
    }
    let mut out = Vec::new();
    while !packed.is_empty() {
        let mut id = [0; 8];
        id.copy_from_slice(take(&mut packed, 8)?);
        let mut hash = [0; HASH_LEN];
        hash.copy_from_slice(take(&mut packed, HASH_LEN)?);
        out.push(PackedPlacement {
            bucket_id: i64::from_le_bytes(id),
            hash,
            object_type: text(&mut packed)?,
            object_id: text(&mut packed)?,
        });
    }
    Ok(out)
}

fn meta_get(conn: &Connection, key: &'static str) -> Result<i64> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?
        .ok_or(StorageError::Corrupt {
            what: "meta key",
            value: format!("{key} missing"),
        })
}

fn meta_set(conn: &Connection, key: &'static str, value: i64) -> Result<()> {
    conn.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![key, value])?;
    Ok(())
}

/// Takes the next value of a sequence in `meta`.
fn meta_next(conn: &Connection, key: &'static str) -> Result<i64> {
    let value = meta_get(conn, key)?;
    meta_set(
        conn,
        key,
        value
            .checked_add(1)
            .ok_or(StorageError::OpIdsExhausted(OpId::MAX))?,
    )?;
    Ok(value)
}

pub(super) fn to_i64(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange { what, value })
}

pub(super) fn lsn_sql(lsn: Lsn) -> Result<i64> {
    to_i64("LSN", lsn.0)
}

pub(super) fn lsn_from(value: i64) -> Result<Lsn> {
    u64::try_from(value).map(Lsn).map_err(|_| corrupt("LSN", value))
}

pub(super) fn op_from(value: i64) -> Result<OpId> {
    OpId::from_i64(value).ok_or_else(|| corrupt("op id", value))
}

pub(super) fn write_checkpoint_from(value: i64) -> Result<WriteCheckpointId> {
    WriteCheckpointId::from_i64(value).ok_or_else(|| corrupt("write checkpoint id", value))
}

pub(super) fn corrupt(what: &'static str, value: impl ToString) -> StorageError {
    StorageError::Corrupt {
        what,
        value: value.to_string(),
    }
}

pub(super) fn checksum_from(value: i64) -> Result<Checksum> {
    u32::try_from(value)
        .map(Checksum::from_u32)
        .map_err(|_| corrupt("checksum", value))
}

pub(super) fn op_type_from(text: &str) -> Result<OpType> {
    match text {
        "PUT" => Ok(OpType::Put),
        "REMOVE" => Ok(OpType::Remove),
        "MOVE" => Ok(OpType::Move),
        "CLEAR" => Ok(OpType::Clear),
        other => Err(corrupt("op type", other)),
    }
}

pub(super) fn version_sql(version: RulesVersion) -> Result<i64> {
    to_i64("sync-rules version", version.0)
}

pub(super) fn state_from(text: &str) -> Result<VersionState> {
    match text {
        "building" => Ok(VersionState::Building),
        "active" => Ok(VersionState::Active),
        "retired" => Ok(VersionState::Retired),
        other => Err(corrupt("sync-rules state", other)),
    }
}

pub(super) fn sync_rules_version(version: i64, rules: String, state: &str) -> Result<SyncRulesVersion> {
    Ok(SyncRulesVersion {
        version: RulesVersion(u64::try_from(version).map_err(|_| corrupt("sync-rules version", version))?),
        rules,
        state: state_from(state)?,
    })
}

/// The checkpoint of a version's stored (last op id, last LSN): none before its first commit.
pub(super) fn checkpoint_from(op_id: i64, lsn: Option<i64>) -> Result<Option<Checkpoint>> {
    lsn.map(|lsn| {
        Ok(Checkpoint {
            op_id: op_from(op_id)?,
            lsn: lsn_from(lsn)?,
        })
    })
    .transpose()
}

/// A bucket's summary from the sum of its op checksums (wrapped to the u32 checksum here) and op count.
pub(super) fn bucket_summary(bucket: &BucketName, sum: i64, count: i64) -> Result<BucketSummary> {
    Ok(BucketSummary {
        bucket: bucket.clone(),
        checksum: checksum_from(sum.rem_euclid(1 << 32))?,
        count: u64::try_from(count).map_err(|_| corrupt("count", count))?,
    })
}

/// A version's checkpoint row: (last op id, last LSN); `UnknownVersion` if it does not exist.
fn version_checkpoint(conn: &Connection, version: RulesVersion) -> Result<(i64, Option<i64>)> {
    conn.query_row(
        "SELECT last_op_id, last_lsn FROM sync_rules WHERE version = ?1",
        [version_sql(version)?],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or(StorageError::UnknownVersion(version))
}

/// Statements of the write path, prepared once per storage transaction: a row change runs several of
/// them, and the statement cache's lookup by SQL text would otherwise be paid per statement.
struct Stmts<'c> {
    /// Inserts [`OPS_PER_INSERT`] ops, bound as they are appended (see [`Writer::append`]).
    select_bucket: CachedStatement<'c>,
    insert_bucket: CachedStatement<'c>,
    select_state: CachedStatement<'c>,
    /// Upserts [`STATES_PER_INSERT`] state rows, bound as they come (see [`Writer::change`]).
    upsert_states: CachedStatement<'c>,
    /// Inserts [`SEGMENTS_PER_INSERT`] segments, bound as they are closed (see [`PendingSegments`]).
    insert_segments: CachedStatement<'c>,
    delete_state: CachedStatement<'c>,
    select_params: CachedStatement<'c>,
    drop_new_params: CachedStatement<'c>,
    retire_params: CachedStatement<'c>,
    insert_param: CachedStatement<'c>,
}

impl<'c> Stmts<'c> {
    fn prepare(conn: &'c Connection) -> Result<Self> {
        Ok(Stmts {
            upsert_states: conn.prepare_cached(&multi_row_insert(
                STATE_INSERT,
                STATE_COLUMNS,
                STATES_PER_INSERT,
                " ON CONFLICT DO UPDATE SET placements = excluded.placements, source_row = excluded.source_row",
            ))?,
            insert_segments: conn.prepare_cached(&multi_row_insert(
                "op_segments (bucket_id, last_op, first_op, count, checksum, ops)",
                SEGMENT_COLUMNS,
                SEGMENTS_PER_INSERT,
                "",
            ))?,
            select_bucket: conn.prepare_cached("SELECT id FROM buckets WHERE version = ?1 AND name = ?2")?,
            insert_bucket: conn.prepare_cached(
                "INSERT INTO buckets (version, name, checksum, count, last_op) VALUES (?1, ?2, 0, 0, 0)",
            )?,
            select_state: conn.prepare_cached(
                "SELECT placements, source_row FROM source_state
                 WHERE version = ?1 AND source_table = ?2 AND state_key = ?3",
            )?,
            delete_state: conn.prepare_cached(
                "DELETE FROM source_state WHERE version = ?1 AND source_table = ?2 AND state_key = ?3",
            )?,
            select_params: conn.prepare_cached(
                "SELECT lookup_key, values_json FROM parameter_index
                 WHERE version = ?1 AND source_table = ?2 AND source_key = ?3 AND deleted_lsn IS NULL",
            )?,
            drop_new_params: conn.prepare_cached(
                "DELETE FROM parameter_index WHERE version = ?1 AND source_table = ?2 AND source_key = ?3
                 AND deleted_lsn IS NULL AND created_lsn = ?4",
            )?,
            retire_params: conn.prepare_cached(
                "UPDATE parameter_index SET deleted_lsn = ?4
                 WHERE version = ?1 AND source_table = ?2 AND source_key = ?3 AND deleted_lsn IS NULL",
            )?,
            insert_param: conn.prepare_cached(
                "INSERT INTO parameter_index (version, lookup_key, source_table, source_key, values_json, created_lsn)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
        })
    }
}

/// State rows per upsert: each statement execution opens and closes cursors and runs the VM's prologue,
/// which cost as much as the insert itself when done per row.
const STATES_PER_INSERT: usize = 64;
const STATE_COLUMNS: usize = 5;
const STATE_INSERT: &str = "source_state (version, source_table, state_key, placements, source_row)";

/// Segments per insert, for the same reason: a snapshot chunk closes thousands of small segments (one per
/// bucket it touches), whose single-row inserts were a sixth of the writer's time.
const SEGMENTS_PER_INSERT: usize = 32;
const SEGMENT_COLUMNS: usize = 6;

/// Closed segments bound into [`Stmts::insert_segments`] and not yet executed. Nothing reads
/// `op_segments` during a write, so they need only be flushed before the transaction ends.
#[derive(Default)]
struct PendingSegments {
    bound: usize,
}

impl PendingSegments {
    /// Binds (copies) `segment` into the multi-row insert, executing it when full.
    fn push(
        &mut self,
        insert: &mut CachedStatement<'_>,
        bucket_id: i64,
        segment: &SegmentBuilder,
    ) -> Result<()> {
        let base = self.bound * SEGMENT_COLUMNS;
        insert.raw_bind_parameter(base + 1, bucket_id)?;
        insert.raw_bind_parameter(base + 2, segment.last_op)?;
        insert.raw_bind_parameter(base + 3, segment.first_op)?;
        insert.raw_bind_parameter(base + 4, segment.count)?;
        insert.raw_bind_parameter(base + 5, i64::from(segment.checksum.as_u32()))?;
        insert.raw_bind_parameter(base + 6, segment.bytes.as_slice())?;
        self.bound += 1;
        if self.bound == SEGMENTS_PER_INSERT {
            insert.raw_execute()?;
            self.bound = 0;
        }
        Ok(())
    }

    fn flush(&mut self, insert: &mut CachedStatement<'_>) -> Result<()> {
        if self.bound > 0 {
            execute_partial(insert, self.bound, SEGMENTS_PER_INSERT, SEGMENT_COLUMNS)?;
            self.bound = 0;
        }
        Ok(())
    }
}

/// `INSERT OR FAIL INTO <table> SELECT * FROM (VALUES (?, …), …) WHERE column1 IS NOT NULL<suffix>`:
/// `rows` rows of `columns` parameters. A row whose first parameter is NULL is skipped, so a partly filled
/// statement can be flushed without a statement per remaining size. (`WHERE` also makes `ON CONFLICT`
/// parse after a `SELECT`.) `OR FAIL`: a multi-row statement that may abort needs a statement journal
/// (a copy of every page it changes) to undo its own rows; an error fails the whole storage transaction
/// anyway.
fn multi_row_insert(table: &str, columns: usize, rows: usize, suffix: &str) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!(
        "INSERT OR FAIL INTO {table} SELECT * FROM (VALUES {}) WHERE column1 IS NOT NULL{suffix}",
        vec![row.as_str(); rows].join(", ")
    )
}

/// Executes a multi-row statement of `rows` rows of `columns` parameters with only the first `bound` rows
/// bound: the others get a NULL first column, which the statement skips (`WHERE` on it).
fn execute_partial(
    statement: &mut CachedStatement<'_>,
    bound: usize,
    rows: usize,
    columns: usize,
) -> Result<()> {
    for row in bound..rows {
        statement.raw_bind_parameter(row * columns + 1, rusqlite::types::Null)?;
    }
    statement.raw_execute()?;
    Ok(())
}

/// The writer connection with `synchronous=NORMAL` until dropped, then `FULL` again (every other write
/// relies on FULL: see the module docs).
struct RelaxedSync<'a, 'c>(&'a mut MutexGuard<'c, Connection>);

impl<'a, 'c> RelaxedSync<'a, 'c> {
    fn new(conn: &'a mut MutexGuard<'c, Connection>) -> Result<Self> {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(RelaxedSync(conn))
    }
}

impl std::ops::Deref for RelaxedSync<'_, '_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.0
    }
}

impl std::ops::DerefMut for RelaxedSync<'_, '_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.0
    }
}

impl Drop for RelaxedSync<'_, '_> {
    fn drop(&mut self) {
        if let Err(error) = self.0.pragma_update(None, "synchronous", "FULL") {
            // Never expected (the pragma cannot fail outside a transaction); a writer left at NORMAL would
            // confirm LSNs before their fsync, so poison the writer rather than go on.
            tracing::error!(%error, "could not restore synchronous=FULL on the storage writer");
            std::process::abort();
        }
    }
}

/// Bucket ids by version and name, kept across storage transactions so the write path resolves a name
/// without a seek. Ids only change when a version is deleted, or when another connection writes the file
/// (`data_version` moves): then the cache is dropped.
#[derive(Default)]
struct BucketIds {
    data_version: i64,
    by_version: HashMap<i64, HashMap<String, i64>>,
}

/// Cached bucket names beyond which the cache starts over, bounding its memory (~100 bytes a name).
const BUCKET_ID_CACHE: usize = 1 << 20;

impl BucketIds {
    /// The committed ids of `version`, after dropping the cache if another connection wrote the file.
    fn for_version(&mut self, conn: &Connection, version: i64) -> Result<&mut HashMap<String, i64>> {
        let data_version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if data_version != self.data_version {
            self.by_version.clear();
            self.data_version = data_version;
        }
        Ok(self.by_version.entry(version).or_default())
    }

    /// Adds the ids a committed storage transaction resolved.
    fn extend(known: &mut HashMap<String, i64>, resolved: HashMap<String, i64>) {
        if known.len() + resolved.len() > BUCKET_ID_CACHE {
            known.clear();
        }
        known.extend(resolved);
    }
}

/// Op-id allocation and per-bucket bookkeeping for one storage transaction.
struct Writer<'c, 'k> {
    conn: &'c Connection,
    stmts: Stmts<'c>,
    version: i64,
    next_op: i64,
    /// The version's latest op id: the op id of the next checkpoint.
    last_op: i64,
    /// Whether the version may hold stored source rows: while it holds none (tables whose UPDATEs need
    /// no completion), a change of a table feeding no data query skips the state read.
    has_source_rows: bool,
    had_source_rows: bool,
    /// Bucket ids committed before this transaction, and those resolved or created in it (cached only
    /// once it commits: a rolled-back transaction's new ids do not exist).
    known: &'k HashMap<String, i64>,
    resolved: HashMap<String, i64>,
    /// Running sums are folded here and written once per bucket at the end: readers only see committed
    /// state, so one update per touched bucket is equivalent to one per op. New ops gather in each
    /// bucket's open segment.
    buckets: HashMap<i64, BucketDelta>,
    /// Rows bound into `stmts.upsert_states` and not yet executed.
    pending_states: usize,
    pending_segments: PendingSegments,
    /// Reused for every row's `source_state` key (see [`Writer::change`]).
    state_key: String,
}

impl<'c, 'k> Writer<'c, 'k> {
    fn new(
        conn: &'c Connection,
        version: i64,
        last_op: i64,
        known: &'k HashMap<String, i64>,
    ) -> Result<Self> {
        let has_source_rows = conn
            .prepare_cached("SELECT has_source_rows FROM sync_rules WHERE version = ?1")?
            .query_row([version], |r| r.get(0))?;
        Ok(Writer {
            conn,
            stmts: Stmts::prepare(conn)?,
            version,
            next_op: meta_get(conn, "next_op_id")?,
            last_op,
            has_source_rows,
            had_source_rows: has_source_rows,
            known,
            resolved: HashMap::new(),
            buckets: HashMap::new(),
            pending_states: 0,
            pending_segments: PendingSegments::default(),
            state_key: String::new(),
        })
    }

    /// Writes the folded running sums and the op-id sequence; returns the bucket ids to cache once the
    /// transaction commits.
    fn finish(mut self) -> Result<HashMap<String, i64>> {
        for (&bucket, delta) in &self.buckets {
            if !delta.segment.is_empty() {
                self.pending_segments
                    .push(&mut self.stmts.insert_segments, bucket, &delta.segment)?;
            }
        }
        self.pending_segments.flush(&mut self.stmts.insert_segments)?;
        self.flush_states()?;
        let mut update = self.conn.prepare_cached(
            "UPDATE buckets SET checksum = (checksum + ?2) % 4294967296, count = count + ?3, last_op = ?4
             WHERE id = ?1",
        )?;
        // Checksums are u32 stored in an i64 column; the modulo keeps the running sum a u32 (wrapping add).
        for (bucket, delta) in &self.buckets {
            update.execute(params![
                bucket,
                i64::from(delta.checksum.as_u32()),
                delta.count,
                delta.last_op
            ])?;
        }
        if self.has_source_rows && !self.had_source_rows {
            self.conn.execute(
                "UPDATE sync_rules SET has_source_rows = 1 WHERE version = ?1",
                [self.version],
            )?;
        }
        meta_set(self.conn, "next_op_id", self.next_op)?;
        Ok(self.resolved)
    }

    /// Writes state rows with a plain insert instead of an upsert: for a storage transaction whose rows
    /// all have no stored state (the usual snapshot chunk), where no conflict can occur.
    fn insert_fresh_states(&mut self) -> Result<()> {
        self.flush_states()?;
        self.stmts.upsert_states = self.conn.prepare_cached(&multi_row_insert(
            STATE_INSERT,
            STATE_COLUMNS,
            STATES_PER_INSERT,
            "",
        ))?;
        Ok(())
    }

    /// Upserts the state rows bound so far (the rows left unbound are skipped by their NULL first column);
    /// due before any read of `source_state`.
    fn flush_states(&mut self) -> Result<()> {
        if self.pending_states == 0 {
            return Ok(());
        }
        execute_partial(
            &mut self.stmts.upsert_states,
            self.pending_states,
            STATES_PER_INSERT,
            STATE_COLUMNS,
        )?;
        self.pending_states = 0;
        Ok(())
    }

    /// Binds a row's new state into the multi-row upsert, executing it when full.
    fn push_state(
        &mut self,
        row: &SourceRowKey,
        state_key: &str,
        packed: &[u8],
        source_row: Option<&str>,
    ) -> Result<()> {
        let base = self.pending_states * STATE_COLUMNS;
        let upsert = &mut self.stmts.upsert_states;
        upsert.raw_bind_parameter(base + 1, self.version)?;
        upsert.raw_bind_parameter(base + 2, row.table.as_str())?;
        upsert.raw_bind_parameter(base + 3, state_key)?;
        upsert.raw_bind_parameter(base + 4, packed)?;
        upsert.raw_bind_parameter(base + 5, source_row)?;
        self.pending_states += 1;
        if self.pending_states == STATES_PER_INSERT {
            upsert.raw_execute()?;
            self.pending_states = 0;
        }
        Ok(())
    }

    /// The id of `bucket`, creating the bucket (empty running sums) on its first op.
    fn bucket_id(&mut self, bucket: &str) -> Result<i64> {
        if let Some(&id) = self.known.get(bucket).or_else(|| self.resolved.get(bucket)) {
            return Ok(id);
        }
        let id = match self
            .stmts
            .select_bucket
            .query_row(params![self.version, bucket], |r| r.get(0))
            .optional()?
        {
            Some(id) => id,
            None => {
                self.stmts.insert_bucket.execute(params![self.version, bucket])?;
                self.conn.last_insert_rowid()
            }
        };
        self.resolved.insert(bucket.to_owned(), id);
        Ok(id)
    }

    /// Applies one row's new state: the halves its table feeds, then its stored source row. `fresh`: the
    /// caller knows the row has no stored state at all, so there is nothing to read or diff.
    ///
    /// `repeat`: the row occurred earlier in this storage transaction, so its state may still be bound
    /// in the multi-row upsert and must be written before it is read. Other rows' state is upserted in
    /// batches, never read again in the transaction.
    /// `put_digests`: the digests of `change.placements`, when the caller computed them; else (empty)
    /// they are computed here.
    fn change(
        &mut self,
        change: &RowChange,
        put_digests: &[[u8; 32]],
        lsn: i64,
        fresh: bool,
        repeat: bool,
    ) -> Result<()> {
        let row = &change.row;
        if let Some(parameters) = &change.parameters {
            self.parameters(row, parameters, lsn, fresh)?;
        }
        // Without placements and without a source row to store or possibly clear, the state row is
        // untouched: no read.
        if change.placements.is_none() && change.source_row.is_none() && (fresh || !self.has_source_rows) {
            return Ok(());
        }
        // One buffer for every row's key: an allocation per row was a few percent of the writer's time.
        let mut state_key = std::mem::take(&mut self.state_key);
        write_state_key(&mut state_key, &row.key);
        let stored: Option<(Vec<u8>, Option<String>)> = if fresh {
            None
        } else {
            if repeat {
                self.flush_states()?;
            }
            self.stmts
                .select_state
                .query_row(params![self.version, row.table, state_key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
        };
        let (old_packed, old_source_row) = match &stored {
            Some((packed, source_row)) => (packed.as_slice(), source_row.as_deref()),
            None => (&[][..], None),
        };
        let packed = match &change.placements {
            Some(placements) => diff_placements(self, row, old_packed, placements, put_digests)?,
            None => old_packed.to_vec(),
        };
        let source_row = change.source_row.as_deref();
        if source_row.is_some() {
            self.has_source_rows = true;
        }
        if packed.is_empty() && source_row.is_none() {
            if stored.is_some() {
                self.stmts
                    .delete_state
                    .execute(params![self.version, row.table, state_key])?;
            }
        } else if stored.is_none() || packed != old_packed || source_row != old_source_row {
            self.push_state(row, &state_key, &packed, source_row)?;
        }
        self.state_key = state_key;
        Ok(())
    }

    /// Replaces the row's parameter entries when they changed; history is kept by LSN for lookups at
    /// older checkpoints.
    fn parameters(
        &mut self,
        row: &SourceRowKey,
        parameters: &[ParameterRow],
        lsn: i64,
        fresh: bool,
    ) -> Result<()> {
        let old: BTreeSet<(String, String)> = if fresh {
            BTreeSet::new()
        } else {
            self.stmts
                .select_params
                .query_map(params![self.version, row.table, row.key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?
        };
        let new: BTreeSet<(&str, &str)> = parameters
            .iter()
            .map(|p| (p.lookup_key.as_str(), p.values_json.as_str()))
            .collect();
        if old.len() == new.len()
            && old
                .iter()
                .zip(&new)
                .all(|((ok, ov), (nk, nv))| (ok.as_str(), ov.as_str()) == (*nk, *nv))
        {
            return Ok(());
        }
        if !old.is_empty() {
            let key = params![self.version, row.table, row.key, lsn];
            // Entries created by this same transaction were never visible at any checkpoint: drop them.
            self.stmts.drop_new_params.execute(key)?;
            self.stmts.retire_params.execute(key)?;
        }
        for (lookup_key, values_json) in new {
            self.stmts.insert_param.execute(params![
                self.version,
                lookup_key,
                row.table,
                row.key,
                values_json,
                lsn
            ])?;
        }
        Ok(())
    }
}

impl PlacementOps for Writer<'_, '_> {
    fn resolve_bucket(&mut self, bucket: &str) -> Result<i64> {
        self.bucket_id(bucket)
    }

    /// Appends one op to its bucket's open segment and adds it to the bucket's running checksum and count.
    fn append_op(&mut self, bucket_id: i64, op: PlacementOp<'_>) -> Result<()> {
        let op_id = take_op_id(&mut self.next_op, &mut self.last_op)?;
        let delta = self.buckets.entry(bucket_id).or_default();
        delta.record(op_id, &op);
        // Nothing reads the segments during a write, so a full one can go out now, bounding memory.
        if delta.segment.is_full() {
            self.pending_segments
                .push(&mut self.stmts.insert_segments, bucket_id, &delta.segment)?;
            delta.segment.clear();
        }
        Ok(())
    }
}

/// How a snapshot chunk's row relates to storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkRow {
    /// First in the chunk, with no stored state (placements, live parameter entries or source row): no
    /// diff needed.
    Fresh,
    /// First in the chunk, with stored state to diff against.
    Stored,
    /// Seen earlier in the chunk: diffed against that occurrence's state, written just before.
    Repeat,
}

/// Classifies a snapshot chunk's rows. A table being copied usually has none of its rows stored, but a
/// chunk replayed after a crash has them all, so this asks storage, in one statement per table instead of
/// a few per row. A table whose changes carry no parameter half feeds no parameter query of the version,
/// so it has no parameter entries to probe. Without `probe` no row is looked up: the caller knows none is
/// stored.
fn classify_chunk(
    conn: &Connection,
    version: i64,
    changes: &[RowChange],
    probe: bool,
) -> Result<Vec<ChunkRow>> {
    let mut tables: BTreeMap<&str, (Vec<&str>, bool)> = BTreeMap::new();
    for change in changes {
        let (keys, has_parameters) = tables.entry(change.row.table.as_str()).or_default();
        keys.push(change.row.key.as_str());
        *has_parameters |= change.parameters.is_some();
    }
    let mut stored: HashMap<&str, HashSet<&str>> = HashMap::new();
    if !probe {
        tables.clear();
    }
    for (table, (keys, has_parameters)) in &tables {
        let state_keys: Vec<String> = keys.iter().map(|key| state_key(key)).collect();
        let mut found = probe_keys(
            conn,
            "SELECT j.key FROM json_each(?3) j
             WHERE EXISTS (SELECT 1 FROM source_state s
                           WHERE s.version = ?1 AND s.source_table = ?2 AND s.state_key = j.value)",
            version,
            table,
            &state_keys,
        )?;
        if *has_parameters {
            found.extend(probe_keys(
                conn,
                "SELECT j.key FROM json_each(?3) j
                 WHERE EXISTS (SELECT 1 FROM parameter_index p
                               WHERE p.version = ?1 AND p.source_table = ?2 AND p.source_key = j.value
                                 AND p.deleted_lsn IS NULL)",
                version,
                table,
                keys,
            )?);
        }
        let stored = stored.entry(table).or_default();
        for index in found {
            let key = keys
                .get(index)
                .ok_or_else(|| corrupt("probed key position", index))?;
            stored.insert(key);
        }
    }
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(changes.len());
    Ok(changes
        .iter()
        .map(|c| {
            let (table, key) = (c.row.table.as_str(), c.row.key.as_str());
            if !seen.insert((table, key)) {
                ChunkRow::Repeat
            } else if stored.get(table).is_some_and(|s| s.contains(key)) {
                ChunkRow::Stored
            } else {
                ChunkRow::Fresh
            }
        })
        .collect())
}

/// Runs `probe`, which selects the positions (`j.key`) of those of `keys` (bound as a JSON array to
/// `json_each(?3) j`) that it finds stored for `version` (?1) and `table` (?2).
fn probe_keys<K: AsRef<str>>(
    conn: &Connection,
    probe: &str,
    version: i64,
    table: &str,
    keys: &[K],
) -> Result<Vec<usize>> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    let keys = serde_json::to_string(&keys).map_err(|e| corrupt("source row key", e))?;
    let mut probe = conn.prepare_cached(probe)?;
    let positions = probe.query_map(params![version, table, keys], |r| r.get::<_, i64>(0))?;
    positions
        .map(|position| {
            let position = position?;
            usize::try_from(position).map_err(|_| corrupt("probed key position", position))
        })
        .collect()
}

pub(super) fn user_client(user: &UserId, client_id: Option<&ClientId>) -> (String, String) {
    // No client id is stored as '' (the reference keys such checkpoints by the user alone).
    (
        user.0.clone(),
        client_id.map(|c| c.as_str().to_owned()).unwrap_or_default(),
    )
}

/// Every op of `version` with an op id above `after`, with its bucket's name, in op-id order: for tests
/// and tools that inspect a storage file on a connection of their own (read-only is enough), e.g. while
/// the gateway that owns it is stopped or killed.
pub fn version_ops(
    conn: &Connection,
    version: RulesVersion,
    after: OpId,
) -> Result<Vec<(BucketName, StoredOp)>> {
    let mut stmt = conn.prepare(
        "SELECT b.name, s.first_op, s.ops FROM op_segments s JOIN buckets b ON b.id = s.bucket_id
         WHERE b.version = ?1 AND s.last_op > ?2",
    )?;
    let mut rows = stmt.query(params![version_sql(version)?, after.as_i64()])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let bucket = BucketName::new(row.get::<_, String>(0)?);
        let mut ops = Vec::new();
        segment::decode_into(
            row.get(1)?,
            blob(row, 2)?,
            after.as_i64(),
            i64::MAX,
            usize::MAX,
            &mut ops,
        )?;
        out.extend(ops.into_iter().map(|op| (bucket.clone(), op)));
    }
    out.sort_by_key(|(_, op)| op.entry.op_id);
    Ok(out)
}

impl BucketStorage for SqliteStorage {
    fn apply(&self, version: RulesVersion, txn: &SourceTransaction) -> Result<Option<OpId>> {
        Ok(self
            .apply_batch(version, std::slice::from_ref(txn))?
            .map(|checkpoint| checkpoint.op_id))
    }

    fn apply_batch(&self, version: RulesVersion, txns: &[SourceTransaction]) -> Result<Option<Checkpoint>> {
        let v = version_sql(version)?;
        let mut conn = self.writer()?;
        // IMMEDIATE: take the write lock up front, so the read of the sequence cannot race another writer.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (last_op, mut last_lsn) = version_checkpoint(&tx, version)?;
        let mut bucket_ids = self.bucket_ids()?;
        let known = bucket_ids.for_version(&tx, v)?;
        let mut applied = None;
        let mut resolved = HashMap::new();
        {
            let mut writer = Writer::new(&tx, v, last_op, known)?;
            let mut checkpoint =
                tx.prepare_cached("INSERT INTO checkpoints (version, lsn, op_id) VALUES (?1, ?2, ?3)")?;
            let mut seen: HashSet<(&str, &str)> = HashSet::new();
            for txn in txns {
                let lsn = lsn_sql(txn.commit_lsn)?;
                if last_lsn.is_some_and(|stored| lsn <= stored) {
                    // Already applied before a restart (invariant 4), or out of order: no ops a second time.
                    continue;
                }
                for change in &txn.changes {
                    let repeat = !seen.insert((change.row.table.as_str(), change.row.key.as_str()));
                    writer.change(change, &[], lsn, false, repeat)?;
                }
                checkpoint.execute(params![v, lsn, writer.last_op])?;
                last_lsn = Some(lsn);
                applied = Some((writer.last_op, lsn));
            }
            if applied.is_some() {
                resolved = writer.finish()?;
            }
        }
        let Some((op_id, lsn)) = applied else {
            // Nothing applied: the transaction wrote nothing, and dropping it costs no fsync.
            return Ok(None);
        };
        tx.execute(
            "UPDATE sync_rules SET last_op_id = ?2, last_lsn = ?3 WHERE version = ?1",
            params![v, op_id, lsn],
        )?;
        tx.commit()?;
        BucketIds::extend(known, resolved);
        Ok(Some(Checkpoint {
            op_id: op_from(op_id)?,
            lsn: lsn_from(lsn)?,
        }))
    }

    fn apply_snapshot_chunk(
        &self,
        version: RulesVersion,
        chunk: &SnapshotChunk,
        progress: &TableSnapshot,
    ) -> Result<()> {
        let v = version_sql(version)?;
        let mut conn = self.writer()?;
        // A chunk commits without waiting for its fsync (`synchronous=NORMAL`; in WAL mode the commit is
        // still atomic and survives a crash of the process, only power loss can undo it). Nothing is
        // confirmed to Postgres during the snapshot, and the chunk's progress commits with its rows, so
        // power loss rolls both back together and the copy resumes at an earlier chunk (invariants 4, 5).
        // The next FULL commit (the replication state at the snapshot's end) syncs everything before it.
        // The writer waited on a 40–60 MiB WAL fsync per chunk.
        let mut conn = RelaxedSync::new(&mut conn)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (last_op, _) = version_checkpoint(&tx, version)?;
        let mut bucket_ids = self.bucket_ids()?;
        let known = bucket_ids.for_version(&tx, v)?;
        let resolved = {
            let mut writer = Writer::new(&tx, v, last_op, known)?;
            let rows = classify_chunk(&tx, v, chunk.changes(), !chunk.is_unstored())?;
            if rows.iter().all(|&row| row == ChunkRow::Fresh) {
                writer.insert_fresh_states()?;
            }
            // Created at LSN 0: snapshot rows are visible at every checkpoint.
            for ((change, put_digests), row) in chunk.changes_with_digests().zip(rows) {
                writer.change(
                    change,
                    put_digests,
                    0,
                    row == ChunkRow::Fresh,
                    row == ChunkRow::Repeat,
                )?;
            }
            // The version's op id advances, so its next checkpoint covers these ops; the LSN stays.
            tx.execute(
                "UPDATE sync_rules SET last_op_id = ?2 WHERE version = ?1",
                params![v, writer.last_op],
            )?;
            writer.finish()?
        };
        tx.execute(
            "INSERT INTO snapshot_progress (version, source_table, resume_after, done, lsn)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO UPDATE SET resume_after = excluded.resume_after, done = excluded.done,
               lsn = excluded.lsn",
            params![
                v,
                progress.table,
                progress.resume_after,
                progress.done,
                lsn_sql(progress.lsn)?
            ],
        )?;
        tx.commit()?;
        BucketIds::extend(known, resolved);
        Ok(())
    }

    fn snapshot_progress(&self, version: RulesVersion) -> Result<Vec<TableSnapshot>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT source_table, resume_after, done, lsn FROM snapshot_progress
                 WHERE version = ?1 ORDER BY source_table",
            )?;
            let rows = stmt.query_map([v], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (table, resume_after, done, lsn) = row?;
                out.push(TableSnapshot {
                    table,
                    resume_after,
                    done,
                    lsn: lsn_from(lsn)?,
                });
            }
            Ok(out)
        })
    }

    fn replication_state(&self, version: RulesVersion) -> Result<ReplicationState> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let row: Option<(Option<String>, Option<i64>, Option<i64>)> = conn
                .query_row(
                    "SELECT slot_name, start_lsn, snapshot_done_lsn FROM sync_rules WHERE version = ?1",
                    [v],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let (slot_name, start_lsn, snapshot_done_lsn) =
                row.ok_or(StorageError::UnknownVersion(version))?;
            Ok(ReplicationState {
                slot_name,
                start_lsn: start_lsn.map(lsn_from).transpose()?,
                snapshot_done_lsn: snapshot_done_lsn.map(lsn_from).transpose()?,
            })
        })
    }

    fn set_replication_state(&self, version: RulesVersion, state: &ReplicationState) -> Result<()> {
        let v = version_sql(version)?;
        let start = state.start_lsn.map(lsn_sql).transpose()?;
        let done = state.snapshot_done_lsn.map(lsn_sql).transpose()?;
        let conn = self.writer()?;
        let updated = conn.execute(
            "UPDATE sync_rules SET slot_name = ?2, start_lsn = ?3, snapshot_done_lsn = ?4 WHERE version = ?1",
            params![v, state.slot_name, start, done],
        )?;
        if updated == 0 {
            return Err(StorageError::UnknownVersion(version));
        }
        Ok(())
    }

    fn source_row(&self, version: RulesVersion, row: &SourceRowKey) -> Result<Option<String>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT source_row FROM source_state WHERE version = ?1 AND source_table = ?2 AND state_key = ?3",
                )?
                .query_row(params![v, row.table, state_key(&row.key)], |r| r.get(0))
                .optional()?
                .flatten())
        })
    }

    fn source_row_keys(&self, version: RulesVersion, table: &str) -> Result<Vec<String>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            // Each part is an index range scan on (version, source_table, ...); UNION dedups. A state row
            // exists only while the row has placements or a stored source row.
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROW_KEY_OF_STATE_KEY} FROM source_state WHERE version = ?1 AND source_table = ?2
                 UNION SELECT source_key FROM parameter_index
                   WHERE version = ?1 AND source_table = ?2 AND deleted_lsn IS NULL
                 ORDER BY 1",
            ))?;
            let keys = stmt.query_map(params![v, table], |r| r.get(0))?;
            Ok(keys.collect::<Result<Vec<String>, _>>()?)
        })
    }

    fn versions(&self) -> Result<Vec<SyncRulesVersion>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT version, rules, state FROM sync_rules ORDER BY version")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (version, rules, state) = row?;
                out.push(sync_rules_version(version, rules, &state)?);
            }
            Ok(out)
        })
    }

    fn latest_checkpoint(&self, version: RulesVersion) -> Result<Option<Checkpoint>> {
        self.read(|conn| {
            let (op_id, lsn) = version_checkpoint(conn, version)?;
            checkpoint_from(op_id, lsn)
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
        self.read(|conn| {
            // One read transaction so all buckets come from one snapshot; it ends before we return.
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(buckets.len());
            {
                let mut state = tx.prepare_cached(
                    "SELECT id, checksum, count, last_op FROM buckets WHERE version = ?1 AND name = ?2",
                )?;
                let mut whole = tx.prepare_cached(
                    "SELECT COALESCE(SUM(checksum), 0), COALESCE(SUM(count), 0) FROM op_segments
                     WHERE bucket_id = ?1 AND last_op <= ?2",
                )?;
                // Segments of a bucket do not overlap: at most one holds ops on both sides of `c`.
                let mut straddling = tx.prepare_cached(
                    "SELECT first_op, ops FROM op_segments WHERE bucket_id = ?1 AND last_op > ?2 AND first_op <= ?2",
                )?;
                for bucket in buckets {
                    let running: Option<(i64, i64, i64, i64)> = state
                        .query_row(params![v, bucket.as_str()], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .optional()?;
                    let (sum, count) = match running {
                        None => (0, 0),
                        // No op of this bucket after the checkpoint: the running sums are its state there.
                        Some((_, sum, count, last_op)) if last_op <= c => (sum, count),
                        // An older checkpoint: sum the segments up to it. SUM cannot overflow below 2^31 segments.
                        Some((id, ..)) => {
                            let (mut sum, mut count): (i64, i64) =
                                whole.query_row(params![id, c], |r| Ok((r.get(0)?, r.get(1)?)))?;
                            let part = straddling
                                .query_row(params![id, c], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                                .optional()?;
                            if let Some((first_op, bytes)) = part {
                                let (part_sum, part_count) = segment::sums_up_to(first_op, &bytes, c)?;
                                sum += part_sum;
                                count += part_count;
                            }
                            (sum, count)
                        }
                    };
                    out.push(bucket_summary(bucket, sum, count)?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn changed_buckets(&self, version: RulesVersion, after: OpId) -> Result<Vec<BucketName>> {
        let v = version_sql(version)?;
        self.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT name FROM buckets WHERE version = ?1 AND last_op > ?2")?;
            let names = statement
                .query_map(params![v, after.as_i64()], |r| r.get::<_, String>(0))?
                .map(|name| name.map(BucketName::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names)
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
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT first_op, ops FROM op_segments
                 WHERE bucket_id = (SELECT id FROM buckets WHERE version = ?1 AND name = ?2)
                   AND last_op > ?3 AND first_op <= ?4 ORDER BY last_op",
            )?;
            let mut rows = stmt.query(params![v, bucket.as_str(), after, up_to])?;
            let mut out = Vec::new();
            while out.len() < limit
                && let Some(row) = rows.next()?
            {
                let bytes = blob(row, 1)?;
                segment::decode_into(row.get(0)?, bytes, after, up_to, limit, &mut out)?;
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
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(keys.len());
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT values_json FROM parameter_index
                     WHERE version = ?1 AND lookup_key = ?2 AND created_lsn <= ?3
                       AND (deleted_lsn IS NULL OR deleted_lsn > ?3)
                     ORDER BY source_table, source_key, values_json",
                )?;
                for key in keys {
                    let rows = stmt.query_map(params![v, key, lsn], |r| r.get(0))?;
                    out.push(rows.collect::<Result<Vec<String>, _>>()?);
                }
            }
            tx.commit()?;
            Ok(out)
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
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = meta_next(&tx, "next_write_checkpoint_id")?;
        tx.execute(
            "INSERT INTO write_checkpoints (user_id, client_id, id, lsn) VALUES (?1, ?2, ?3, ?4)",
            params![user, client, id, lsn],
        )?;
        tx.commit()?;
        write_checkpoint_from(id)
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
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<i64> = tx.query_row(
            "SELECT MAX(id) FROM write_checkpoints WHERE user_id = ?1 AND client_id = ?2",
            params![user, client],
            |r| r.get(0),
        )?;
        let id = match stored {
            Some(stored) if stored >= requested => stored,
            _ => {
                tx.execute(
                    "INSERT INTO write_checkpoints (user_id, client_id, id, lsn) VALUES (?1, ?2, ?3, ?4)",
                    params![user, client, requested, lsn],
                )?;
                requested
            }
        };
        tx.commit()?;
        write_checkpoint_from(id)
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
            let id: Option<i64> = conn.query_row(
                "SELECT MAX(id) FROM write_checkpoints WHERE user_id = ?1 AND client_id = ?2 AND lsn <= ?3",
                params![user, client, lsn],
                |r| r.get(0),
            )?;
            id.map(write_checkpoint_from).transpose()
        })
    }

    fn create_version(&self, rules: &str) -> Result<RulesVersion> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = meta_next(&tx, "next_version")?;
        tx.execute(
            "INSERT INTO sync_rules (version, rules, state) VALUES (?1, ?2, 'building')",
            params![version, rules],
        )?;
        tx.commit()?;
        u64::try_from(version)
            .map(RulesVersion)
            .map_err(|_| corrupt("sync-rules version", version))
    }

    fn active_version(&self) -> Result<Option<SyncRulesVersion>> {
        self.read(|conn| {
            let row: Option<(i64, String, String)> = conn
                .query_row(
                    "SELECT version, rules, state FROM sync_rules WHERE state = 'active' ORDER BY version DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(version, rules, state)| sync_rules_version(version, rules, &state))
                .transpose()
        })
    }

    fn activate(&self, version: RulesVersion) -> Result<()> {
        let v = version_sql(version)?;
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        version_checkpoint(&tx, version)?;
        tx.execute(
            "UPDATE sync_rules SET state = 'retired' WHERE state = 'active' AND version <> ?1",
            [v],
        )?;
        tx.execute("UPDATE sync_rules SET state = 'active' WHERE version = ?1", [v])?;
        tx.commit()?;
        Ok(())
    }

    fn delete_version(&self, version: RulesVersion) -> Result<()> {
        let v = version_sql(version)?;
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let state: Option<String> = tx
            .query_row("SELECT state FROM sync_rules WHERE version = ?1", [v], |r| {
                r.get(0)
            })
            .optional()?;
        match state.as_deref() {
            None => return Err(StorageError::UnknownVersion(version)),
            Some("active") => return Err(StorageError::VersionActive(version)),
            Some(_) => {}
        }
        tx.execute(
            "DELETE FROM op_segments WHERE bucket_id IN (SELECT id FROM buckets WHERE version = ?1)",
            [v],
        )?;
        for table in [
            "buckets",
            "source_state",
            "parameter_index",
            "checkpoints",
            "snapshot_progress",
            "sync_rules",
        ] {
            tx.execute(&format!("DELETE FROM {table} WHERE version = ?1"), [v])?;
        }
        // The version's bucket ids are gone (and may be reused): forget them before anyone writes again.
        self.bucket_ids()?.by_version.remove(&v);
        tx.commit()?;
        Ok(())
    }

    fn compact(&self, version: RulesVersion, up_to: OpId) -> Result<CompactStats> {
        let v = version_sql(version)?;
        let (limit, buckets) = {
            let conn = self.writer()?;
            let (latest, _) = version_checkpoint(&conn, version)?;
            let mut stmt = conn.prepare("SELECT id FROM buckets WHERE version = ?1 ORDER BY name")?;
            let buckets: Vec<i64> = stmt.query_map([v], |r| r.get(0))?.collect::<Result<_, _>>()?;
            // Guard rule 1: only ops at or below the latest checkpoint, so every target_op is published.
            (up_to.as_i64().min(latest), buckets)
        };
        let mut stats = CompactStats {
            up_to: op_from(limit)?,
            ..CompactStats::default()
        };
        for bucket in buckets {
            // One write transaction per bucket: the replicator waits for one bucket at most, not the run.
            let mut conn = self.writer()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (moved, cleared) = compact_bucket(&tx, bucket, limit)?;
            tx.commit()?;
            if moved + cleared > 0 {
                stats.buckets += 1;
            }
            stats.moved += moved;
            stats.cleared += cleared;
        }
        Ok(stats)
    }
}

/// Compacts one bucket's ops ≤ `limit`; returns (ops turned into MOVE, ops merged away into a CLEAR).
/// The bucket's segments are rewritten, which also merges the small segments streaming leaves behind.
fn compact_bucket(tx: &Transaction<'_>, bucket: i64, limit: i64) -> Result<(u64, u64)> {
    let (rowids, mut ops) = {
        // Segments up to the one holding `limit`; ops above it in that one are rewritten unchanged.
        let mut stmt = tx.prepare_cached(
            "SELECT rowid, first_op, ops FROM op_segments WHERE bucket_id = ?1 AND first_op <= ?2
             ORDER BY last_op",
        )?;
        let mut rows = stmt.query(params![bucket, limit])?;
        let (mut rowids, mut ops) = (Vec::new(), Vec::new());
        while let Some(row) = rows.next()? {
            rowids.push(row.get::<_, i64>(0)?);
            let bytes = blob(row, 2)?;
            segment::decode_into(row.get(1)?, bytes, i64::MIN, i64::MAX, usize::MAX, &mut ops)?;
        }
        (rowids, ops)
    };
    let (moved, cleared) = compact_ops(&mut ops, limit);
    let segments = segments_of(&ops);
    if moved + cleared == 0 && segments.len() >= rowids.len() {
        // Nothing to rewrite: every op stays and the segments are as few as they get.
        return Ok((0, 0));
    }
    let mut delete = tx.prepare_cached("DELETE FROM op_segments WHERE rowid = ?1")?;
    for rowid in rowids {
        delete.execute([rowid])?;
    }
    for segment in &segments {
        insert_segment(tx, bucket, segment)?;
    }
    if cleared > 0 {
        // Checksums are unchanged by construction; the count drops (guard rule 4: cached counts change).
        tx.prepare_cached("UPDATE buckets SET count = count - ?2 WHERE id = ?1")?
            .execute(params![bucket, i64::try_from(cleared).unwrap_or(i64::MAX)])?;
    }
    Ok((moved, cleared))
}

/// Compacts `ops` (one bucket's ops in op-id order, from its first) up to `limit` in place (PROTOCOL §6.1);
/// returns (ops turned into MOVE, ops merged away into a CLEAR). Shared by both storages.
pub(super) fn compact_ops(ops: &mut Vec<StoredOp>, limit: i64) -> (u64, u64) {
    let head = ops.partition_point(|op| op.entry.op_id.as_i64() <= limit);
    // Newest first: the first op seen for a row key is its latest; every earlier PUT/REMOVE of that key is
    // superseded and becomes a MOVE pointing at it (the op the client's row state comes from).
    let mut latest: HashMap<(String, String, String), OpId> = HashMap::new();
    let mut moved = 0;
    for op in ops[..head].iter_mut().rev() {
        let entry = &mut op.entry;
        if !matches!(entry.op, OpType::Put | OpType::Remove) {
            continue;
        }
        let (Some(object_type), Some(object_id), Some(subkey)) =
            (&entry.object_type, &entry.object_id, &entry.subkey)
        else {
            continue;
        };
        let key = (object_type.clone(), object_id.clone(), subkey.0.clone());
        match latest.get(&key) {
            Some(&target) => {
                entry.op = OpType::Move;
                (entry.object_type, entry.object_id, entry.subkey, entry.data) = (None, None, None, None);
                op.target_op = Some(target);
                moved += 1;
            }
            None => {
                latest.insert(key, entry.op_id);
            }
        }
    }
    // The leading run of REMOVE/MOVE/CLEAR holds no live row: one CLEAR at its last op id carries its sum.
    let run = ops[..head]
        .iter()
        .take_while(|op| matches!(op.entry.op, OpType::Remove | OpType::Move | OpType::Clear))
        .count();
    let mut cleared = 0;
    if run > 1 || (run == 1 && ops[0].entry.op != OpType::Clear) {
        let sum = ops[..run]
            .iter()
            .fold(Checksum::ZERO, |sum, op| sum + op.entry.checksum);
        let target = ops[..run].iter().filter_map(|op| op.target_op).max();
        let last = ops.drain(..run).next_back().expect("the run is not empty");
        ops.insert(
            0,
            StoredOp {
                entry: OplogEntry {
                    op_id: last.entry.op_id,
                    op: OpType::Clear,
                    object_type: None,
                    object_id: None,
                    data: None,
                    checksum: sum,
                    subkey: None,
                },
                target_op: target,
            },
        );
        cleared = u64::try_from(run - 1).unwrap_or(0);
    }
    (moved, cleared)
}

/// `ops` (in op-id order) packed into segments of at most [`segment::MAX_OPS`] ops / bytes each.
pub(super) fn segments_of(ops: &[StoredOp]) -> Vec<SegmentBuilder> {
    let mut segments = Vec::new();
    let mut builder = SegmentBuilder::default();
    for op in ops {
        if builder.is_full() {
            segments.push(std::mem::take(&mut builder));
        }
        let entry = &op.entry;
        builder.push(&OpRef {
            op_id: entry.op_id.as_i64(),
            op: entry.op,
            object_type: entry.object_type.as_deref(),
            object_id: entry.object_id.as_deref(),
            subkey: entry.subkey.as_ref().map(Subkey::as_str),
            data: entry.data.as_deref(),
            checksum: entry.checksum,
            target_op: op.target_op.map(OpId::as_i64),
        });
    }
    if !builder.is_empty() {
        segments.push(builder);
    }
    segments
}
