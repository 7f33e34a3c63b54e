//! The local SQLite database: internal tables, the app's schema as views, and the storage side of the sync
//! instructions.
//!
//! Internal tables (all prefixed `sg_`):
//! - `sg_buckets`: per bucket, the last op received (`last_op`, the next request's `after`), the last
//!   checkpoint applied, and the running checksum of every op received since the last CLEAR;
//! - `sg_oplog`: the latest PUT of each row key `(bucket, type, id, subkey)`; a later PUT or REMOVE of the
//!   same key replaces or deletes it (a REMOVE is not stored). Keyed row first: publishing looks up every
//!   pending row's PUTs across buckets, with the data in the same b-tree; a bucket-wide CLEAR or removal
//!   (rare) scans the table instead of every op paying for a second index;
//! - `sg_pending_rows`: rows touched by downloaded ops and not yet published, per bucket;
//! - `sg_fresh_buckets`: buckets downloaded from nothing while no bucket is published (a first sync), not
//!   published yet: every op-log row of theirs counts as pending, so their PUTs skip `sg_pending_rows`;
//! - `sg_data`: the synced rows the app sees, one JSON document per `(type, id)`, whatever the schema
//!   declares (undeclared types stay here until a schema declares them); `sg_local_data` for local-only
//!   tables;
//! - `sg_crud`: the upload queue, one entry per row change, grouped by `tx_id`;
//! - `sg_kv`: client id, schema, write-checkpoint target;
//! - `sg_table_versions`: per row type, a counter bumped by every transaction that changes its rows
//!   (a published checkpoint, a local write), which live queries watch. A rowid table updated in place
//!   (upserts): SQLite's update hook reports rowid tables only, and a type keeps its rowid
//!   (see [`crate::changes`]).
//!
//! Downloaded ops are written in batches: one transaction spans several `data` lines (see
//! [`LocalDatabase::store_ops`]) and is committed before anything else uses the connection. Every write of
//! the download path may be lost in a crash without harm: the op log and bucket positions are committed
//! together, so a lost batch is downloaded again from the positions that were committed, and the app's
//! tables change only when a checkpoint is published. That is also why `synchronous = NORMAL` is enough
//! in WAL mode: a commit is durable once the WAL is synced at the next checkpoint of the WAL; a power loss
//! before that rolls back the latest transactions whole (never part of one), and a process crash loses
//! nothing committed. Local writes have the same guarantee as in the official SDKs, which use the same
//! setting.
//!
//! Publishing a checkpoint recomputes each pending row from the op log (the PUT with the highest op id
//! across buckets wins; no PUT left deletes the row) in one transaction, and only if no local write awaits
//! acknowledgement: the check and the publish are atomic because both happen in that transaction.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value};
use syncgate_protocol::{BucketName, Checksum, ClientId, OpId, OpType, OplogEntry, WriteCheckpointId};

use crate::changes::{FileChanges, WatchSignal, file_changes, install_hooks};
use crate::error::ClientError;
use crate::schema::{Schema, WRITE_CHECKPOINT_SENTINEL};
use crate::sync::{ApplyPlan, StoredBucket};

const INTERNAL_TABLES: &str = "
CREATE TABLE IF NOT EXISTS sg_kv (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sg_buckets (
    name TEXT PRIMARY KEY,
    last_op INTEGER NOT NULL DEFAULT 0,
    last_applied_op INTEGER NOT NULL DEFAULT 0,
    checksum INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sg_oplog (
    bucket TEXT NOT NULL,
    row_type TEXT NOT NULL,
    row_id TEXT NOT NULL,
    subkey TEXT NOT NULL,
    op_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (row_type, row_id, bucket, subkey)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sg_pending_rows (
    bucket TEXT NOT NULL,
    row_type TEXT NOT NULL,
    row_id TEXT NOT NULL,
    -- Row first: publishing reads the distinct rows in key order, without a temporary sort.
    PRIMARY KEY (row_type, row_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sg_fresh_buckets (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sg_data (type TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (type, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sg_local_data (type TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS sg_crud (id INTEGER PRIMARY KEY AUTOINCREMENT, tx_id INTEGER, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sg_table_versions (type TEXT PRIMARY KEY, version INTEGER NOT NULL);
";

/// SQLite's page cache for a client connection, in KiB (the official SDKs use 50 MiB too; SQLite's default
/// of 2 MiB makes a large download re-read op-log pages it just wrote).
const CACHE_SIZE_KIB: i64 = 50 * 1024;

/// The page size of new database files. SQLite's default is 4 KiB; a first sync writes every op twice
/// (op log, then the app's rows), and larger pages mean fewer pages to split, look up and copy from the
/// WAL per row (docs/benchmarks.md, "Client").
const PAGE_SIZE: i64 = 16 * 1024;

/// A download batch older than this is committed after the `data` line that ends it: it bounds how long
/// the sync writer holds the write lock while lines keep arriving (an app's write waits at most that
/// long), while a transaction per line would cost a WAL commit per line.
const MAX_DOWNLOAD_BATCH_AGE: Duration = Duration::from_millis(100);

/// Stands for an absent subkey in the op-log key (the reference client uses the literal `null` too).
const NO_SUBKEY: &str = "null";

/// Whether a checkpoint was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// Local writes await acknowledgement; nothing changed.
    WaitingForUploads,
}

/// One entry of the upload queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CrudEntry {
    pub op_id: i64,
    pub tx_id: Option<i64>,
    /// `{"op": "PUT"|"PATCH"|"DELETE", "type", "id", "data"}`.
    pub data: Value,
}

/// The queued changes of one local transaction, uploaded together. Complete it (return `Ok` from
/// [`crate::BackendConnector::upload_data`]) only once the backend has durably applied it: its entries are
/// then removed from the queue; until then the same transaction is offered again.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CrudTransaction {
    pub transaction_id: i64,
    /// In queue order; never empty.
    pub entries: Vec<CrudEntry>,
}

/// A local SQLite database file managed by the client.
#[derive(Debug)]
pub struct LocalDatabase {
    conn: Connection,
    /// This process's live queries on the same file, woken by this connection's commits (None in memory).
    changes: Option<Arc<FileChanges>>,
    /// When the open download batch began (None: no batch open).
    download_batch: Cell<Option<Instant>>,
}

impl Drop for LocalDatabase {
    fn drop(&mut self) {
        // Keep what was downloaded (dropping the connection would roll it back; either is consistent).
        if let Err(error) = self.commit_downloads() {
            tracing::warn!(%error, "committing the last download batch failed; it will be downloaded again");
        }
    }
}

impl LocalDatabase {
    /// Opens (creating if needed) the database file and its internal tables.
    pub fn open(path: &Path) -> Result<LocalDatabase, ClientError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database (tests, tools).
    pub fn open_in_memory() -> Result<LocalDatabase, ClientError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<LocalDatabase, ClientError> {
        // Only takes effect on a new file (before its first table); existing files keep theirs.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        // WAL: readers (another process running `query`) do not block the sync writer. NORMAL: see the
        // module header.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -CACHE_SIZE_KIB)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Files from before sg_table_versions was a rowid table: its counters may start over.
        let versions_without_rowid: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'sg_table_versions'
                            AND sql LIKE '%WITHOUT ROWID%')",
            [],
            |row| row.get(0),
        )?;
        if versions_without_rowid {
            conn.execute_batch("DROP TABLE sg_table_versions")?;
        }
        conn.execute_batch(INTERNAL_TABLES)?;
        let changes = conn.path().filter(|p| !p.is_empty()).map(file_changes);
        if let Some(changes) = &changes {
            install_hooks(&mut conn, Arc::clone(changes))?;
        }
        Ok(LocalDatabase {
            conn,
            changes,
            download_batch: Cell::new(None),
        })
    }

    /// The connection, for the app's own reads and writes. Writes through the schema's views queue
    /// uploads; group several into one upload transaction with [`LocalDatabase::write_transaction`].
    pub fn connection(&self) -> &Connection {
        if let Err(error) = self.commit_downloads() {
            tracing::warn!(%error, "committing the download batch failed; it will be downloaded again");
        }
        &self.conn
    }

    /// Commits the open download batch, if any (see [`LocalDatabase::store_ops`]). Every other method
    /// does this first; the driver calls it before waiting for the network.
    pub fn commit_downloads(&self) -> Result<(), ClientError> {
        if self.download_batch.take().is_some() {
            self.conn.execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Runs `f` in one transaction and gives its queued changes one upload transaction id.
    pub fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.commit_downloads()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        assign_transaction_ids(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// The persistent client id (a random UUID v4, created on first use).
    pub fn client_id(&self) -> Result<ClientId, ClientError> {
        self.commit_downloads()?;
        if let Some(id) = self.kv_get("client_id")? {
            return Ok(ClientId(id));
        }
        // SQLite's randomblob is a CSPRNG; format its 16 bytes as a version-4 UUID.
        let id: String = self.conn.query_row(
            "WITH r(b) AS (SELECT lower(hex(randomblob(16))))
             SELECT substr(b,1,8) || '-' || substr(b,9,4) || '-4' || substr(b,14,3) || '-' ||
                    substr('89ab', 1 + (abs(random()) % 4), 1) || substr(b,18,3) || '-' || substr(b,21,12) FROM r",
            [],
            |row| row.get(0),
        )?;
        self.kv_set("client_id", &id)?;
        Ok(ClientId(id))
    }

    /// Installs `schema`: recreates the views, triggers and indexes (no data migration) and stores it.
    pub fn set_schema(&mut self, schema: &Schema) -> Result<(), ClientError> {
        schema.validate()?;
        self.commit_downloads()?;
        let previous = self.schema()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(previous) = previous {
            for statement in previous.drop_statements() {
                tx.execute_batch(&statement)?;
            }
        }
        for statement in schema.create_statements() {
            tx.execute_batch(&statement)?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO sg_kv(key, value) VALUES ('schema', ?1)",
            [schema.to_json()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The stored schema, if one was set.
    pub fn schema(&self) -> Result<Option<Schema>, ClientError> {
        self.kv_get("schema")?
            .map(|text| Schema::from_json(&text))
            .transpose()
    }

    /// Buckets and their download positions, for [`crate::sync::SyncEvent::Start`].
    pub fn stored_buckets(&self) -> Result<Vec<StoredBucket>, ClientError> {
        self.commit_downloads()?;
        let mut statement = self
            .conn
            .prepare("SELECT name, last_op, checksum FROM sg_buckets ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut buckets = Vec::new();
        for row in rows {
            let (name, last_op, checksum) = row?;
            buckets.push(StoredBucket {
                name: BucketName::new(name),
                last_op: op_id_from_sql(last_op)?,
                checksum: checksum_from_sql(checksum)?,
            });
        }
        Ok(buckets)
    }

    /// Persists ops of one bucket with its new position and running checksum, atomically.
    ///
    /// Consecutive calls share one transaction (a download batch), committed once it is
    /// `MAX_DOWNLOAD_BATCH_AGE` old, by [`LocalDatabase::commit_downloads`], or before any other use of the
    /// database. On an error the whole batch is rolled back: the stored positions then still match the
    /// stored ops, and the next stream resumes from them.
    pub fn store_ops(
        &mut self,
        bucket: &BucketName,
        ops: &[OplogEntry],
        last_op: OpId,
        checksum: Checksum,
    ) -> Result<(), ClientError> {
        if self.download_batch.get().is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.download_batch.set(Some(Instant::now()));
        }
        if let Err(error) = self.store_ops_in_batch(bucket, ops, last_op, checksum) {
            self.download_batch.set(None);
            if let Err(rollback) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(%rollback, "rolling back the download batch failed");
            }
            return Err(error);
        }
        if self
            .download_batch
            .get()
            .is_some_and(|began| began.elapsed() >= MAX_DOWNLOAD_BATCH_AGE)
        {
            self.commit_downloads()?;
        }
        Ok(())
    }

    fn store_ops_in_batch(
        &self,
        bucket: &BucketName,
        ops: &[OplogEntry],
        last_op: OpId,
        checksum: Checksum,
    ) -> Result<(), ClientError> {
        let tx = &self.conn;
        // A bucket with nothing stored is fresh until published (its PUTs need no pending-row entries),
        // but only while no bucket has been published (a first sync, or everything downloaded again):
        // publishing fresh buckets scans the whole op log, which then holds little else.
        let known: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM sg_buckets WHERE name = ?1)")?
            .query_row([bucket.as_str()], |row| row.get(0))?;
        if !known {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO sg_fresh_buckets(name) SELECT ?1 WHERE NOT EXISTS (
                     SELECT 1 FROM sg_buckets WHERE name NOT IN (SELECT name FROM sg_fresh_buckets))",
            )?
            .execute([bucket.as_str()])?;
        }
        let fresh: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM sg_fresh_buckets WHERE name = ?1)")?
            .query_row([bucket.as_str()], |row| row.get(0))?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO sg_oplog(bucket, row_type, row_id, subkey, op_id, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut remove = tx.prepare_cached(
                "DELETE FROM sg_oplog WHERE bucket = ?1 AND row_type = ?2 AND row_id = ?3 AND subkey = ?4",
            )?;
            let mut pending = tx.prepare_cached(
                "INSERT OR IGNORE INTO sg_pending_rows(bucket, row_type, row_id) VALUES (?1, ?2, ?3)",
            )?;
            for op in ops {
                let row = op.object_type.as_deref().zip(op.object_id.as_deref());
                let subkey = op.subkey.as_ref().map_or(NO_SUBKEY, |s| s.as_str());
                match (op.op, row) {
                    (OpType::Put, Some((row_type, row_id))) => {
                        let data = op.data.as_deref().unwrap_or("{}");
                        put.execute(params![
                            bucket.as_str(),
                            row_type,
                            row_id,
                            subkey,
                            op.op_id.as_i64(),
                            data
                        ])?;
                        if !fresh {
                            pending.execute(params![bucket.as_str(), row_type, row_id])?;
                        }
                    }
                    // Pending even in a fresh bucket: the removed row is no longer in its op log.
                    (OpType::Remove, Some((row_type, row_id))) => {
                        remove.execute(params![bucket.as_str(), row_type, row_id, subkey])?;
                        pending.execute(params![bucket.as_str(), row_type, row_id])?;
                    }
                    (OpType::Clear, _) => {
                        tx.execute(
                            "INSERT OR IGNORE INTO sg_pending_rows(bucket, row_type, row_id)
                             SELECT bucket, row_type, row_id FROM sg_oplog WHERE bucket = ?1",
                            [bucket.as_str()],
                        )?;
                        tx.execute("DELETE FROM sg_oplog WHERE bucket = ?1", [bucket.as_str()])?;
                    }
                    // MOVE only carries a checksum; a PUT/REMOVE without a row is counted, not stored.
                    _ => {}
                }
            }
        }
        tx.prepare_cached(
            "INSERT INTO sg_buckets(name, last_op, checksum) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET last_op = excluded.last_op, checksum = excluded.checksum",
        )?
        .execute(params![
            bucket.as_str(),
            last_op.as_i64(),
            i64::from(checksum.as_u32())
        ])?;
        Ok(())
    }

    /// Drops buckets: their ops and positions. Their rows are marked pending, so the next published
    /// checkpoint removes them unless another bucket holds them.
    pub fn delete_buckets(&mut self, buckets: &[BucketName]) -> Result<(), ClientError> {
        self.commit_downloads()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // One scan of the op log for all of them (it is keyed by row, not bucket).
        let names = Value::Array(
            buckets
                .iter()
                .map(|b| Value::String(b.as_str().to_owned()))
                .collect(),
        )
        .to_string();
        tx.execute(
            "INSERT OR IGNORE INTO sg_pending_rows(bucket, row_type, row_id)
             SELECT bucket, row_type, row_id FROM sg_oplog WHERE bucket IN (SELECT value FROM json_each(?1))",
            [&names],
        )?;
        tx.execute(
            "DELETE FROM sg_oplog WHERE bucket IN (SELECT value FROM json_each(?1))",
            [&names],
        )?;
        tx.execute(
            "DELETE FROM sg_buckets WHERE name IN (SELECT value FROM json_each(?1))",
            [&names],
        )?;
        tx.execute(
            "DELETE FROM sg_fresh_buckets WHERE name IN (SELECT value FROM json_each(?1))",
            [&names],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Publishes a validated checkpoint to the app's tables, unless `plan.wait_for_local_writes` and
    /// local writes await acknowledgement (PROTOCOL §4.3).
    pub fn apply_checkpoint(&mut self, plan: &ApplyPlan) -> Result<ApplyOutcome, ClientError> {
        self.commit_downloads()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if plan.wait_for_local_writes {
            let queued: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM sg_crud)", [], |row| row.get(0))?;
            let target: Option<i64> = tx
                .query_row(
                    "SELECT CAST(value AS INTEGER) FROM sg_kv WHERE key = 'write_checkpoint_target'",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            let reached = match (target, plan.write_checkpoint) {
                (None, _) => true,
                (Some(target), Some(seen)) => target <= seen.as_i64(),
                (Some(_), None) => false,
            };
            if queued || !reached {
                return Ok(ApplyOutcome::WaitingForUploads);
            }
        }
        let buckets = Value::Array(
            plan.buckets
                .iter()
                .map(|b| Value::String(b.as_str().to_owned()))
                .collect(),
        )
        .to_string();
        let full = plan.priority.is_none();
        // Full checkpoint: every pending row, whatever bucket touched it (removed buckets included);
        // partial: rows touched by the included buckets, valued from those buckets only.
        let included_pending = "(?2 OR p.bucket IN (SELECT value FROM json_each(?1)))";
        let included_op = "(?2 OR o.bucket IN (SELECT value FROM json_each(?1)))";
        let fresh: String = tx.query_row(
            "SELECT json_group_array(name) FROM sg_fresh_buckets
             WHERE ?2 OR name IN (SELECT value FROM json_each(?1))",
            params![buckets, full],
            |row| row.get(0),
        )?;
        if fresh == "[]" {
            // One pass in key order (both tables are keyed row first; CROSS JOIN keeps the pending rows
            // outside, so no temporary sort): per row, the PUT with the highest op id. SQLite takes the
            // bare column `o.data` from the row where max() is found.
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO sg_data(type, id, data)
                     SELECT row_type, row_id, data FROM (
                         SELECT o.row_type, o.row_id, o.data, max(o.op_id)
                         FROM sg_pending_rows p CROSS JOIN sg_oplog o
                             ON o.row_type = p.row_type AND o.row_id = p.row_id
                         WHERE {included_pending} AND {included_op}
                         GROUP BY p.row_type, p.row_id)"
                ),
                params![buckets, full],
            )?;
        } else {
            // Fresh buckets (typically a first download): every row of theirs is pending, so one pass over
            // the whole op log in key order, keeping the rows a fresh bucket holds or a pending entry names.
            // total() is no min()/max(), so `o.data` still comes from the row of max(o.op_id). Costs a scan
            // of the op log once per fresh bucket, instead of a pending entry per op.
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO sg_data(type, id, data)
                     SELECT w.row_type, w.row_id, w.data FROM (
                         SELECT o.row_type, o.row_id, o.data, max(o.op_id),
                                total(o.bucket IN (SELECT value FROM json_each(?3))) AS fresh_ops
                         FROM sg_oplog o
                         WHERE {included_op}
                         GROUP BY o.row_type, o.row_id) w
                     WHERE w.fresh_ops > 0 OR EXISTS (
                         SELECT 1 FROM sg_pending_rows p
                         WHERE p.row_type = w.row_type AND p.row_id = w.row_id AND {included_pending})"
                ),
                params![buckets, full, fresh],
            )?;
        }
        tx.execute(
            &format!(
                "DELETE FROM sg_data WHERE (type, id) IN (
                     SELECT p.row_type, p.row_id FROM sg_pending_rows p WHERE {included_pending} AND NOT EXISTS (
                         SELECT 1 FROM sg_oplog o
                         WHERE o.row_type = p.row_type AND o.row_id = p.row_id AND {included_op}))"
            ),
            params![buckets, full],
        )?;
        // Once per type per publish: a live query re-runs at most once per applied checkpoint. With fresh
        // buckets, every type in the op log (found by skipping from one type to the next, not by a scan):
        // a superset, at worst one needless re-check by a watch. Upserts keep each type's rowid.
        let fresh_types = if fresh == "[]" {
            ""
        } else {
            "UNION SELECT t FROM oplog_types WHERE t IS NOT NULL"
        };
        tx.execute(
            &format!(
                "WITH RECURSIVE oplog_types(t) AS (
                     SELECT min(row_type) FROM sg_oplog
                     UNION ALL
                     SELECT (SELECT min(row_type) FROM sg_oplog WHERE row_type > t) FROM oplog_types
                     WHERE t IS NOT NULL AND ?3)
                 INSERT INTO sg_table_versions(type, version)
                 SELECT row_type, 1 FROM (
                     SELECT p.row_type FROM sg_pending_rows p WHERE {included_pending} {fresh_types})
                 WHERE true
                 ON CONFLICT(type) DO UPDATE SET version = version + 1"
            ),
            params![buckets, full, fresh != "[]"],
        )?;
        tx.execute(
            "DELETE FROM sg_fresh_buckets WHERE name IN (SELECT value FROM json_each(?1))",
            [&fresh],
        )?;
        if full {
            // Unconditional: SQLite truncates the table instead of deleting row by row.
            tx.execute("DELETE FROM sg_pending_rows", [])?;
        } else {
            tx.execute(
                "DELETE FROM sg_pending_rows WHERE bucket IN (SELECT value FROM json_each(?1))",
                [&buckets],
            )?;
        }
        tx.execute(
            "UPDATE sg_buckets SET last_op = max(last_op, ?2), last_applied_op = ?2
             WHERE name IN (SELECT value FROM json_each(?1))",
            params![buckets, plan.last_op_id.as_i64()],
        )?;
        if full {
            tx.execute(
                "INSERT OR REPLACE INTO sg_kv(key, value) VALUES ('applied_checkpoint', ?1)",
                [plan.last_op_id.as_i64()],
            )?;
            // Wall time of this publish in Unix milliseconds, for SyncStatus::last_synced_at.
            tx.execute(
                "INSERT OR REPLACE INTO sg_kv(key, value)
                 VALUES ('last_synced_at_ms', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
                [],
            )?;
            // The acknowledged target is done with: later checkpoints (which may omit write_checkpoint,
            // e.g. on a fresh stream) apply freely until the next local write sets a new one.
            if let Some(write_checkpoint) = plan.write_checkpoint {
                tx.execute(
                    "DELETE FROM sg_kv WHERE key = 'write_checkpoint_target' AND CAST(value AS INTEGER) <= ?1",
                    [write_checkpoint.as_i64()],
                )?;
            }
        }
        tx.commit()?;
        Ok(ApplyOutcome::Applied)
    }

    /// The last checkpoint published in full, if any.
    pub fn applied_checkpoint(&self) -> Result<Option<OpId>, ClientError> {
        self.commit_downloads()?;
        let value: Option<i64> = self
            .conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM sg_kv WHERE key = 'applied_checkpoint'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        value.map(op_id_from_sql).transpose()
    }

    /// When the last full checkpoint was published (wall time, millisecond precision), if ever.
    pub fn last_synced_at(&self) -> Result<Option<std::time::SystemTime>, ClientError> {
        let millis: Option<i64> = self
            .conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM sg_kv WHERE key = 'last_synced_at_ms'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        Ok(millis.map(|ms| {
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        }))
    }

    /// Row changes in the upload queue.
    pub fn upload_queue_len(&self) -> Result<u64, ClientError> {
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sg_crud", [], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The upload queue in order; entries written outside [`LocalDatabase::write_transaction`] get a
    /// transaction id of their own first.
    pub fn upload_queue(&mut self) -> Result<Vec<CrudEntry>, ClientError> {
        self.commit_downloads()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        assign_transaction_ids(&tx)?;
        let entries = {
            let mut statement = tx.prepare("SELECT id, tx_id, data FROM sg_crud ORDER BY id")?;
            let rows = statement.query_map([], crud_row)?;
            rows.map(|row| crud_entry(row?)).collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(entries)
    }

    /// The oldest queued transaction, if any (entries written outside
    /// [`LocalDatabase::write_transaction`] get a transaction id first).
    pub fn next_crud_transaction(&mut self) -> Result<Option<CrudTransaction>, ClientError> {
        self.commit_downloads()?;
        // A cheap read first: the driver polls this, and the assignment below takes the write lock.
        let queued: bool = self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM sg_crud)", [], |row| row.get(0))?;
        if !queued {
            return Ok(None);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        assign_transaction_ids(&tx)?;
        let entries = {
            let mut statement = tx.prepare(
                "SELECT id, tx_id, data FROM sg_crud WHERE tx_id = (SELECT tx_id FROM sg_crud ORDER BY id LIMIT 1)
                 ORDER BY id",
            )?;
            let rows = statement.query_map([], crud_row)?;
            rows.map(|row| crud_entry(row?)).collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(entries
            .first()
            .and_then(|e| e.tx_id)
            .map(|transaction_id| CrudTransaction {
                transaction_id,
                entries,
            }))
    }

    /// Removes an uploaded transaction's entries from the queue.
    pub fn complete_crud_transaction(&mut self, transaction: &CrudTransaction) -> Result<(), ClientError> {
        self.commit_downloads()?;
        let last = transaction.entries.iter().map(|e| e.op_id).max().unwrap_or(0);
        self.conn.execute(
            "DELETE FROM sg_crud WHERE tx_id = ?1 AND id <= ?2",
            params![transaction.transaction_id, last],
        )?;
        Ok(())
    }

    /// Whether the queue is empty but no write checkpoint was obtained for the uploads (the target is
    /// still the sentinel a local write sets): the next step is `GET /write-checkpoint2.json`.
    pub fn needs_write_checkpoint(&self) -> Result<bool, ClientError> {
        self.commit_downloads()?;
        Ok(self.conn.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM sg_crud)
                AND EXISTS (SELECT 1 FROM sg_kv WHERE key = 'write_checkpoint_target' AND value = ?1)",
            [WRITE_CHECKPOINT_SENTINEL],
            |row| row.get(0),
        )?)
    }

    /// Makes `id` (from the service) the write checkpoint downloads wait for, unless a local write
    /// happened since the queue was drained (then that write's upload asks for a newer one). Returns
    /// whether it was set.
    pub fn set_write_checkpoint_target(&mut self, id: WriteCheckpointId) -> Result<bool, ClientError> {
        self.commit_downloads()?;
        let changed = self.conn.execute(
            "UPDATE sg_kv SET value = ?1 WHERE key = 'write_checkpoint_target' AND value = ?2
               AND NOT EXISTS (SELECT 1 FROM sg_crud)",
            params![id.as_i64(), WRITE_CHECKPOINT_SENTINEL],
        )?;
        Ok(changed == 1)
    }

    /// Whether local writes await upload or acknowledgement (queued, or a write-checkpoint target set).
    pub fn has_pending_writes(&self) -> Result<bool, ClientError> {
        self.commit_downloads()?;
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sg_crud)
                OR EXISTS (SELECT 1 FROM sg_kv WHERE key = 'write_checkpoint_target')",
            [],
            |row| row.get(0),
        )?)
    }

    /// A live query: a stream whose first item is the result of `sql` now, then a new result each time a
    /// transaction changes a table the query reads (a published checkpoint, a local write from any
    /// connection or process), at most once per such transaction and only when the result differs.
    ///
    /// The stream has its own connection to the database file (not available for in-memory databases).
    /// A commit by any [`LocalDatabase`] connection of this process wakes it at once, and only if it
    /// changed a table the query names (SQLite's update and WAL hooks, see [`crate::changes`]). Commits by
    /// other processes are seen every `poll_interval`: it reads `PRAGMA data_version` — a cheap read that
    /// moves only when another connection commits. Either way it re-runs the query only when the versions
    /// of the tables the query names (`sg_table_versions`) moved, so a commit to other tables costs no
    /// re-run. A query naming no declared table re-runs on any change.
    pub fn watch(
        &self,
        sql: &str,
        params: Vec<rusqlite::types::Value>,
        poll_interval: Duration,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<Map<String, Value>>, ClientError>> + Send + 'static,
        ClientError,
    > {
        let state = self.watch_state(sql, params, poll_interval)?;
        Ok(futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await;
            Some((item, state))
        }))
    }

    fn watch_state(
        &self,
        sql: &str,
        params: Vec<rusqlite::types::Value>,
        poll_interval: Duration,
    ) -> Result<WatchState, ClientError> {
        let path = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .ok_or(ClientError::WatchNeedsFile)?
            .to_owned();
        let watcher = LocalDatabase::init(Connection::open(&path)?)?;
        // The query is checked now, so a typo fails here and not on the first poll.
        watcher.conn.prepare(sql)?;
        let tables = watcher.schema()?.map(|schema| referenced_tables(sql, &schema));
        let tables = tables.unwrap_or_default();
        let signal = watcher
            .changes
            .as_ref()
            .expect("a file connection tracks changes")
            .register((!tables.is_empty()).then(|| tables.iter().map(|t| t.to_lowercase()).collect()));
        let tables = Value::Array(tables.into_iter().map(Value::String).collect()).to_string();
        Ok(WatchState {
            db: watcher,
            sql: sql.to_owned(),
            params,
            tables,
            poll_interval,
            signal,
            seen: None,
            last: None,
            runs: Arc::default(),
        })
    }

    /// Runs a read query and returns its rows as JSON objects (column name → value; blobs as hex).
    pub fn query_json(&self, sql: &str) -> Result<Vec<Map<String, Value>>, ClientError> {
        self.query_json_with(sql, &[])
    }

    /// [`LocalDatabase::query_json`] with positional parameters.
    pub fn query_json_with(
        &self,
        sql: &str,
        params: &[rusqlite::types::Value],
    ) -> Result<Vec<Map<String, Value>>, ClientError> {
        self.commit_downloads()?;
        let mut statement = self.conn.prepare_cached(sql)?;
        let names: Vec<String> = statement.column_names().map(str::to_owned).collect();
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut object = Map::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                object.insert(name.clone(), sql_value_to_json(row.get_ref(i)?));
            }
            out.push(object);
        }
        Ok(out)
    }

    fn kv_get(&self, key: &str) -> Result<Option<String>, ClientError> {
        self.commit_downloads()?;
        Ok(self
            .conn
            .query_row(
                "SELECT CAST(value AS TEXT) FROM sg_kv WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn kv_set(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.commit_downloads()?;
        self.conn.execute(
            "INSERT OR REPLACE INTO sg_kv(key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(())
    }
}

/// A live query's connection and what it last saw.
struct WatchState {
    db: LocalDatabase,
    sql: String,
    params: Vec<rusqlite::types::Value>,
    /// JSON array of the table names the query reads; empty: any table.
    tables: String,
    poll_interval: Duration,
    /// Wakes it after a commit in this process that concerns it.
    signal: Arc<WatchSignal>,
    /// `(data_version, sum of the watched tables' versions)` at the last run.
    seen: Option<(i64, i64)>,
    last: Option<Vec<Map<String, Value>>>,
    /// How many times the query ran.
    runs: Arc<AtomicU64>,
}

impl WatchState {
    /// Waits for the next differing result (the first call returns the current one).
    async fn next(&mut self) -> Result<Vec<Map<String, Value>>, ClientError> {
        loop {
            if let Some(rows) = self.check()? {
                return Ok(rows);
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                () = self.signal.notify.notified() => {}
            }
        }
    }

    /// Re-runs the query if a table it reads changed since the last check; returns a differing result.
    fn check(&mut self) -> Result<Option<Vec<Map<String, Value>>>, ClientError> {
        let data_version: i64 = self
            .db
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?;
        if self.seen.is_some_and(|(seen, _)| seen == data_version) {
            return Ok(None);
        }
        // One read transaction: the versions, the names for the change hooks and the result agree.
        self.db.conn.execute_batch("BEGIN")?;
        let result = self.check_in_transaction(data_version);
        self.db.conn.execute_batch("COMMIT")?;
        result
    }

    fn check_in_transaction(
        &mut self,
        data_version: i64,
    ) -> Result<Option<Vec<Map<String, Value>>>, ClientError> {
        let conn = &self.db.conn;
        let mut versions = 0_i64;
        let mut names = HashMap::new();
        {
            let mut statement = conn.prepare_cached(
                "SELECT rowid, type, version, json_array_length(?1) = 0 OR type IN (SELECT value FROM json_each(?1))
                 FROM sg_table_versions",
            )?;
            let mut rows = statement.query([&self.tables])?;
            while let Some(row) = rows.next()? {
                let name: String = row.get(1)?;
                if row.get::<_, bool>(3)? {
                    versions = versions.wrapping_add(row.get::<_, i64>(2)?);
                }
                names.insert(row.get::<_, i64>(0)?, name.to_lowercase());
            }
        }
        if let Some(changes) = &self.db.changes {
            changes.set_names(names);
        }
        let changed = self.seen.is_none_or(|(_, seen)| seen != versions);
        self.seen = Some((data_version, versions));
        if !changed {
            return Ok(None);
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let rows = self.db.query_json_with(&self.sql, &self.params)?;
        if self.last.as_ref() == Some(&rows) {
            return Ok(None);
        }
        self.last = Some(rows.clone());
        Ok(Some(rows))
    }
}

/// The schema's tables whose names appear as words in `sql` (a superset of what it reads is harmless:
/// at worst an extra re-run).
fn referenced_tables(sql: &str, schema: &Schema) -> Vec<String> {
    let words: HashSet<String> = sql
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    schema
        .tables
        .iter()
        .filter(|t| words.contains(&t.name.to_lowercase()))
        .map(|t| t.name.clone())
        .collect()
}

/// Gives every queue entry without a transaction id one id (they were written since the last
/// assignment, by one transaction or by several outside our wrapper): the first entry's id, which
/// AUTOINCREMENT never reuses, so transaction ids keep increasing after the queue drains.
fn assign_transaction_ids(tx: &rusqlite::Transaction<'_>) -> Result<(), ClientError> {
    tx.execute(
        "UPDATE sg_crud SET tx_id = (SELECT min(id) FROM sg_crud WHERE tx_id IS NULL) WHERE tx_id IS NULL",
        [],
    )?;
    Ok(())
}

fn crud_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Option<i64>, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn crud_entry((op_id, tx_id, data): (i64, Option<i64>, String)) -> Result<CrudEntry, ClientError> {
    let data = serde_json::from_str(&data)
        .map_err(|e| ClientError::CorruptState(format!("upload queue entry {op_id}: {e}")))?;
    Ok(CrudEntry { op_id, tx_id, data })
}

fn sql_value_to_json(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(b.iter().map(|byte| format!("{byte:02x}")).collect()),
    }
}

fn op_id_from_sql(value: i64) -> Result<OpId, ClientError> {
    OpId::from_i64(value).ok_or_else(|| ClientError::CorruptState(format!("negative op id {value}")))
}

fn checksum_from_sql(value: i64) -> Result<Checksum, ClientError> {
    u32::try_from(value)
        .map(Checksum::from_u32)
        .map_err(|_| ClientError::CorruptState(format!("checksum {value} out of u32 range")))
}

#[cfg(test)]
mod tests {
    use syncgate_protocol::{BucketPriority, Subkey, WriteCheckpointId};

    use super::*;

    fn schema(json: &str) -> Schema {
        Schema::from_json(json).expect("schema")
    }

    fn todos_schema() -> Schema {
        schema(
            r#"{"tables": [{"name": "todos", "columns": [{"name": "title", "type": "text"},
               {"name": "done", "type": "integer"}, {"name": "weight", "type": "real"}],
               "indexes": [{"name": "by_title", "columns": ["title"]}]},
               {"name": "drafts", "columns": [{"name": "body", "type": "text"}], "local_only": true}]}"#,
        )
    }

    fn op_id(value: u64) -> OpId {
        OpId::new(value).expect("op id")
    }

    fn put(id: u64, object_type: &str, object_id: &str, data: &str) -> OplogEntry {
        OplogEntry::put(
            op_id(id),
            object_type.to_owned(),
            object_id.to_owned(),
            Subkey(format!("s/{object_id}")),
            data.to_owned(),
        )
    }

    fn remove(id: u64, object_type: &str, object_id: &str) -> OplogEntry {
        OplogEntry::remove(
            op_id(id),
            object_type.to_owned(),
            object_id.to_owned(),
            Subkey(format!("s/{object_id}")),
        )
    }

    fn store(db: &mut LocalDatabase, bucket: &str, ops: &[OplogEntry]) {
        let last = ops.iter().map(|o| o.op_id).max().expect("ops");
        db.store_ops(&BucketName::new(bucket), ops, last, Checksum::ZERO)
            .expect("store");
    }

    fn plan(last: u64, buckets: &[&str], write_checkpoint: Option<u64>) -> ApplyPlan {
        ApplyPlan {
            last_op_id: op_id(last),
            write_checkpoint: write_checkpoint.and_then(WriteCheckpointId::new),
            priority: None,
            buckets: buckets.iter().map(|b| BucketName::new(*b)).collect(),
            wait_for_local_writes: true,
        }
    }

    fn rows(db: &LocalDatabase, sql: &str) -> String {
        Value::Array(
            db.query_json(sql)
                .expect("query")
                .into_iter()
                .map(Value::Object)
                .collect(),
        )
        .to_string()
    }

    #[test]
    fn views_type_the_synced_documents_and_only_complete_checkpoints_show() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        store(
            &mut db,
            "b",
            &[put(
                1,
                "todos",
                "t1",
                r#"{"id":"t1","title":"milk","done":1,"weight":"2.5"}"#,
            )],
        );
        assert_eq!(
            rows(&db, "SELECT * FROM todos"),
            "[]",
            "nothing shows before the checkpoint applies"
        );
        assert_eq!(
            db.apply_checkpoint(&plan(1, &["b"], None)).expect("apply"),
            ApplyOutcome::Applied
        );
        assert_eq!(
            rows(&db, "SELECT * FROM todos"),
            r#"[{"id":"t1","title":"milk","done":1,"weight":2.5}]"#
        );
        let plan_text: String = db
            .connection()
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM todos WHERE title = 'milk'",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan_text.contains("sg_index_todos_by_title"), "{plan_text}");
        assert_eq!(db.stored_buckets().expect("buckets")[0].last_op, op_id(1));
    }

    #[test]
    fn the_highest_op_across_buckets_wins_and_a_row_no_bucket_holds_is_deleted() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        store(&mut db, "a", &[put(1, "todos", "t1", r#"{"title":"old"}"#)]);
        store(&mut db, "b", &[put(2, "todos", "t1", r#"{"title":"new"}"#)]);
        db.apply_checkpoint(&plan(2, &["a", "b"], None)).expect("apply");
        assert_eq!(rows(&db, "SELECT title FROM todos"), r#"[{"title":"new"}]"#);
        store(&mut db, "b", &[remove(3, "todos", "t1")]);
        db.apply_checkpoint(&plan(3, &["a", "b"], None)).expect("apply");
        assert_eq!(rows(&db, "SELECT title FROM todos"), r#"[{"title":"old"}]"#);
        db.delete_buckets(&[BucketName::new("a")]).expect("delete");
        db.apply_checkpoint(&plan(3, &["b"], None)).expect("apply");
        assert_eq!(rows(&db, "SELECT title FROM todos"), "[]");
    }

    #[test]
    fn local_writes_queue_uploads_and_hold_back_downloads_until_acknowledged() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        db.write_transaction(|tx| {
            tx.execute("INSERT INTO todos(id, title, done) VALUES ('t1', 'milk', 0)", [])?;
            tx.execute("UPDATE todos SET done = 1 WHERE id = 't1'", [])?;
            Ok(())
        })
        .expect("write");
        db.connection()
            .execute("DELETE FROM todos WHERE id = 't1'", [])
            .expect("delete");
        db.connection()
            .execute("INSERT INTO drafts(id, body) VALUES ('d1', 'local only')", [])
            .expect("local-only insert");
        let queue = db.upload_queue().expect("queue");
        let ops: Vec<String> = queue.iter().map(|e| e.data.to_string()).collect();
        assert_eq!(
            ops,
            [
                r#"{"op":"PUT","type":"todos","id":"t1","data":{"title":"milk","done":0,"weight":null}}"#,
                r#"{"op":"PATCH","type":"todos","id":"t1","data":{"done":1}}"#,
                r#"{"op":"DELETE","type":"todos","id":"t1","data":null}"#,
            ]
        );
        assert_eq!(
            queue[0].tx_id, queue[1].tx_id,
            "one transaction, one upload transaction id"
        );
        assert_ne!(queue[1].tx_id, queue[2].tx_id);
        assert_eq!(
            rows(&db, "SELECT * FROM drafts"),
            r#"[{"id":"d1","body":"local only"}]"#
        );

        store(&mut db, "b", &[put(5, "todos", "t2", r#"{"title":"server"}"#)]);
        assert_eq!(
            db.apply_checkpoint(&plan(5, &["b"], Some(7))).expect("apply"),
            ApplyOutcome::WaitingForUploads
        );
        // Priority 0 ignores local writes.
        let mut urgent = plan(5, &["b"], None);
        urgent.priority = Some(BucketPriority::HIGHEST);
        urgent.wait_for_local_writes = false;
        assert_eq!(
            db.apply_checkpoint(&urgent).expect("apply"),
            ApplyOutcome::Applied
        );
        assert_eq!(rows(&db, "SELECT id FROM todos"), r#"[{"id":"t2"}]"#);

        // Queue drained but the write checkpoint (the i64::MAX sentinel) is not reached yet.
        db.connection().execute("DELETE FROM sg_crud", []).expect("drain");
        assert_eq!(
            db.apply_checkpoint(&plan(5, &["b"], Some(7))).expect("apply"),
            ApplyOutcome::WaitingForUploads
        );
        db.kv_set("write_checkpoint_target", "7").expect("target");
        assert_eq!(
            db.apply_checkpoint(&plan(5, &["b"], Some(6))).expect("apply"),
            ApplyOutcome::WaitingForUploads
        );
        assert_eq!(
            db.apply_checkpoint(&plan(5, &["b"], Some(7))).expect("apply"),
            ApplyOutcome::Applied
        );
        assert_eq!(
            db.apply_checkpoint(&plan(6, &["b"], None)).expect("apply"),
            ApplyOutcome::Applied,
            "an acknowledged write no longer holds back checkpoints without write_checkpoint"
        );
    }

    #[test]
    fn the_queue_drains_one_transaction_at_a_time_then_asks_for_a_write_checkpoint() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        assert!(!db.has_pending_writes().expect("pending"));
        assert_eq!(db.next_crud_transaction().expect("next"), None);
        db.write_transaction(|tx| {
            tx.execute("INSERT INTO todos(id, title) VALUES ('t1', 'a')", [])?;
            tx.execute("INSERT INTO todos(id, title) VALUES ('t2', 'b')", [])?;
            Ok(())
        })
        .expect("write");
        db.connection()
            .execute("DELETE FROM todos WHERE id = 't1'", [])
            .expect("delete");
        assert!(db.has_pending_writes().expect("pending"));

        let first = db.next_crud_transaction().expect("next").expect("queued");
        assert_eq!(first.entries.len(), 2);
        assert_eq!(
            db.next_crud_transaction().expect("next"),
            Some(first.clone()),
            "offered again until completed"
        );
        db.complete_crud_transaction(&first).expect("complete");
        let second = db.next_crud_transaction().expect("next").expect("queued");
        assert_eq!(second.entries.len(), 1);
        assert_eq!(second.entries[0].data["op"], "DELETE");
        assert!(
            !db.needs_write_checkpoint().expect("check"),
            "queue not empty yet"
        );
        db.complete_crud_transaction(&second).expect("complete");
        assert_eq!(db.next_crud_transaction().expect("next"), None);
        assert!(db.needs_write_checkpoint().expect("check"));

        // A write between draining and the answer keeps the sentinel: its upload asks again.
        db.connection()
            .execute("INSERT INTO todos(id, title) VALUES ('t3', 'c')", [])
            .expect("insert");
        let id = WriteCheckpointId::new(42).expect("id");
        assert!(!db.set_write_checkpoint_target(id).expect("set"));
        let third = db.next_crud_transaction().expect("next").expect("queued");
        db.complete_crud_transaction(&third).expect("complete");
        assert!(db.set_write_checkpoint_target(id).expect("set"));
        assert!(!db.needs_write_checkpoint().expect("check"));
        assert!(db.has_pending_writes().expect("pending"), "until acknowledged");
        assert_eq!(
            db.apply_checkpoint(&plan(1, &[], Some(41))).expect("apply"),
            ApplyOutcome::WaitingForUploads
        );
        assert_eq!(
            db.apply_checkpoint(&plan(1, &[], Some(42))).expect("apply"),
            ApplyOutcome::Applied
        );
        assert!(!db.has_pending_writes().expect("pending"));
    }

    /// The watch's next result as JSON text; fails the test after 30 s without one.
    async fn next_result(
        watch: &mut (impl futures_util::Stream<Item = Result<Vec<Map<String, Value>>, ClientError>> + Unpin),
    ) -> String {
        use futures_util::StreamExt as _;
        let rows = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
            .await
            .expect("a new result in time")
            .expect("stream open")
            .expect("query");
        Value::Array(rows.into_iter().map(Value::Object).collect()).to_string()
    }

    #[test]
    fn new_files_get_large_pages_and_existing_files_keep_theirs() {
        let dir = tempfile::tempdir().expect("dir");
        let page_size = |db: &LocalDatabase| -> i64 {
            db.connection()
                .query_row("PRAGMA page_size", [], |row| row.get(0))
                .expect("page size")
        };
        let fresh = LocalDatabase::open(&dir.path().join("new.db")).expect("db");
        assert_eq!(page_size(&fresh), PAGE_SIZE);

        // A file from before, with SQLite's default page size and a row in it.
        let old_path = dir.path().join("old.db");
        {
            let conn = Connection::open(&old_path).expect("old file");
            conn.execute_batch(INTERNAL_TABLES).expect("old tables");
            conn.execute(
                "INSERT INTO sg_data(type, id, data) VALUES ('todos', 't1', '{}')",
                [],
            )
            .expect("old row");
        }
        let mut old = LocalDatabase::open(&old_path).expect("reopened");
        assert_eq!(page_size(&old), 4096);
        old.set_schema(&todos_schema()).expect("schema");
        assert_eq!(
            old.query_json("SELECT id FROM todos").expect("rows"),
            vec![Map::from_iter([("id".to_owned(), Value::from("t1"))])]
        );
    }

    #[tokio::test]
    async fn a_live_query_sees_local_writes_and_published_checkpoints() {
        let dir = tempfile::tempdir().expect("dir");
        let mut db = LocalDatabase::open(&dir.path().join("c.db")).expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        let watch = db
            .watch(
                "SELECT id, title FROM todos WHERE done = ?1 ORDER BY id",
                vec![rusqlite::types::Value::Integer(0)],
                std::time::Duration::from_millis(5),
            )
            .expect("watch");
        let mut watch = std::pin::pin!(watch);
        let mut next = async || next_result(&mut watch).await;
        assert_eq!(next().await, "[]");

        db.connection()
            .execute("INSERT INTO todos(id, title, done) VALUES ('t1', 'local', 0)", [])
            .expect("local write");
        assert_eq!(next().await, r#"[{"id":"t1","title":"local"}]"#);

        // Synced rows show once the checkpoint publishes, both in one new result.
        db.connection()
            .execute("DELETE FROM sg_crud", [])
            .expect("acknowledged");
        db.connection()
            .execute("DELETE FROM sg_kv WHERE key = 'write_checkpoint_target'", [])
            .expect("acknowledged");
        store(
            &mut db,
            "b",
            &[
                put(1, "todos", "t2", r#"{"title":"synced","done":0}"#),
                put(2, "todos", "t3", r#"{"title":"synced too","done":0}"#),
            ],
        );
        db.connection()
            .execute("INSERT INTO drafts(id, body) VALUES ('d1', 'another table')", [])
            .expect("unrelated write");
        db.apply_checkpoint(&plan(2, &["b"], None)).expect("apply");
        assert_eq!(
            next().await,
            r#"[{"id":"t1","title":"local"},{"id":"t2","title":"synced"},{"id":"t3","title":"synced too"}]"#
        );
        assert!(matches!(
            LocalDatabase::open_in_memory().expect("db").watch(
                "SELECT 1",
                Vec::new(),
                std::time::Duration::from_millis(5)
            ),
            Err(ClientError::WatchNeedsFile)
        ));
    }

    #[tokio::test]
    async fn a_commit_in_this_process_wakes_a_live_query_without_waiting_for_its_poll() {
        let dir = tempfile::tempdir().expect("dir");
        let mut db = LocalDatabase::open(&dir.path().join("c.db")).expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        // A poll interval no test waits for: only the commit notification can produce the second result.
        let watch = db
            .watch(
                "SELECT id FROM todos",
                Vec::new(),
                std::time::Duration::from_secs(3600),
            )
            .expect("watch");
        let mut watch = std::pin::pin!(watch);
        let mut next = async || next_result(&mut watch).await;
        assert_eq!(next().await, "[]");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            db.write_transaction(|tx| {
                tx.execute("INSERT INTO todos(id, title) VALUES ('t1', 'a')", [])?;
                Ok(())
            })
            .expect("write");
        });
        assert_eq!(next().await, r#"[{"id":"t1"}]"#);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_live_query_re_runs_once_per_commit_to_its_tables_and_never_for_other_tables() {
        let dir = tempfile::tempdir().expect("dir");
        let mut db = LocalDatabase::open(&dir.path().join("c.db")).expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        // Never polled within the test: only the change hooks wake it.
        let mut watch = db
            .watch_state(
                "SELECT id, title FROM todos ORDER BY id",
                Vec::new(),
                std::time::Duration::from_secs(3600),
            )
            .expect("watch");
        let runs = Arc::clone(&watch.runs);
        let runs = move || runs.load(Ordering::Relaxed);
        let rows = |rows: Vec<Map<String, Value>>| {
            Value::Array(rows.into_iter().map(Value::Object).collect()).to_string()
        };
        // The next result; a generous bound so a lost wake-up fails instead of hanging.
        async fn next_result(watch: &mut WatchState) -> Vec<Map<String, Value>> {
            tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
                .await
                .expect("in time")
                .expect("query")
        }
        assert_eq!(rows(watch.next().await.expect("first")), "[]");
        assert_eq!(runs(), 1);

        // Commits to other tables (a local-only table, the upload queue) give the watch a window to
        // (wrongly) re-run: it must not.
        db.connection()
            .execute("INSERT INTO drafts(id, body) VALUES ('d1', 'x')", [])
            .expect("unrelated write");
        db.connection()
            .execute("DELETE FROM sg_crud", [])
            .expect("unrelated write");
        let idle = tokio::time::timeout(std::time::Duration::from_millis(300), watch.next()).await;
        assert!(idle.is_err(), "no new result: {idle:?}");
        assert_eq!(runs(), 1, "no re-run for commits to other tables");

        // One transaction with three writes to its table: one re-run.
        db.write_transaction(|tx| {
            for id in ["t1", "t2", "t3"] {
                tx.execute("INSERT INTO todos(id, title) VALUES (?1, 'a')", [id])?;
            }
            Ok(())
        })
        .expect("write");
        assert_eq!(
            rows(next_result(&mut watch).await),
            r#"[{"id":"t1","title":"a"},{"id":"t2","title":"a"},{"id":"t3","title":"a"}]"#
        );
        assert_eq!(runs(), 2);

        // A plain statement on the connection (autocommit) wakes it too; a change the result does not
        // show re-runs the query without a new item, then a visible change brings one.
        db.connection()
            .execute("UPDATE todos SET done = 1 WHERE id = 't1'", [])
            .expect("invisible change");
        db.connection()
            .execute("UPDATE todos SET title = 'b' WHERE id = 't2'", [])
            .expect("visible change");
        assert_eq!(
            rows(next_result(&mut watch).await),
            r#"[{"id":"t1","title":"a"},{"id":"t2","title":"b"},{"id":"t3","title":"a"}]"#
        );
        assert!(
            (3..=4).contains(&runs()),
            "one re-run per commit, or one for both when they came before the watch looked: {}",
            runs()
        );

        // A published checkpoint of two rows: one re-run.
        let before = runs();
        db.connection()
            .execute("DELETE FROM sg_crud", [])
            .expect("acknowledged");
        db.connection()
            .execute("DELETE FROM sg_kv WHERE key = 'write_checkpoint_target'", [])
            .expect("acknowledged");
        store(
            &mut db,
            "b",
            &[
                put(1, "todos", "t8", r#"{"title":"s"}"#),
                put(2, "todos", "t9", r#"{"title":"s"}"#),
            ],
        );
        db.apply_checkpoint(&plan(2, &["b"], None)).expect("apply");
        assert!(rows(next_result(&mut watch).await).contains(r#"{"id":"t9","title":"s"}"#));
        assert_eq!(runs(), before + 1);
    }

    #[test]
    fn fresh_buckets_publish_without_pending_entries_and_the_highest_op_still_wins() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        let pending = |db: &LocalDatabase| -> i64 {
            db.connection()
                .query_row("SELECT count(*) FROM sg_pending_rows", [], |r| r.get(0))
                .expect("count")
        };
        // A first sync: both buckets are fresh; their PUTs leave no pending entries, a REMOVE does.
        store(&mut db, "a", &[put(1, "todos", "t1", r#"{"title":"a1"}"#)]);
        store(
            &mut db,
            "b",
            &[
                put(2, "todos", "t1", r#"{"title":"b1"}"#),
                put(3, "todos", "t2", r#"{"title":"b2"}"#),
                remove(4, "todos", "t2"),
                put(5, "todos", "t4", r#"{"title":"b4"}"#),
            ],
        );
        store(&mut db, "a", &[put(6, "todos", "t3", r#"{"title":"a3"}"#)]);
        assert_eq!(pending(&db), 1, "t2, removed in b");
        db.apply_checkpoint(&plan(6, &["a", "b"], None)).expect("apply");
        assert_eq!(
            rows(&db, "SELECT id, title FROM todos ORDER BY id"),
            r#"[{"id":"t1","title":"b1"},{"id":"t3","title":"a3"},{"id":"t4","title":"b4"}]"#
        );
        assert_eq!(pending(&db), 0);

        // Published: a new bucket is not fresh (its publish must not scan the whole op log), and b's
        // REMOVE brings back the row a holds.
        store(&mut db, "c", &[put(7, "todos", "t5", r#"{"title":"c5"}"#)]);
        store(&mut db, "b", &[remove(8, "todos", "t1")]);
        assert_eq!(pending(&db), 2, "t5 from c, t1 from b");
        db.apply_checkpoint(&plan(8, &["a", "b", "c"], None))
            .expect("apply");
        assert_eq!(
            rows(&db, "SELECT id, title FROM todos ORDER BY id"),
            r#"[{"id":"t1","title":"a1"},{"id":"t3","title":"a3"},{"id":"t4","title":"b4"},{"id":"t5","title":"c5"}]"#
        );
    }

    #[test]
    fn undeclared_types_are_kept_and_appear_when_a_schema_declares_them() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        store(&mut db, "b", &[put(1, "lists", "l1", r#"{"name":"Groceries"}"#)]);
        db.apply_checkpoint(&plan(1, &["b"], None)).expect("apply");
        assert!(db.query_json("SELECT * FROM lists").is_err(), "no view yet");
        db.set_schema(&schema(
            r#"{"tables": [{"name": "lists", "columns": [{"name": "name", "type": "text"}]}]}"#,
        ))
        .expect("new schema");
        assert_eq!(
            rows(&db, "SELECT * FROM lists"),
            r#"[{"id":"l1","name":"Groceries"}]"#
        );
        assert!(
            db.query_json("SELECT * FROM todos").is_err(),
            "the old view is gone"
        );
        assert!(db.schema().expect("schema").is_some());
    }

    #[test]
    fn clear_drops_the_buckets_ops() {
        let mut db = LocalDatabase::open_in_memory().expect("db");
        db.set_schema(&todos_schema()).expect("schema");
        store(&mut db, "b", &[put(1, "todos", "t1", r#"{"title":"a"}"#)]);
        db.apply_checkpoint(&plan(1, &["b"], None)).expect("apply");
        store(
            &mut db,
            "b",
            &[OplogEntry::compacted(
                op_id(2),
                OpType::Clear,
                Checksum::from_u32(9),
            )],
        );
        db.apply_checkpoint(&plan(2, &["b"], None)).expect("apply");
        assert_eq!(rows(&db, "SELECT * FROM todos"), "[]");
    }

    #[test]
    fn the_client_id_is_a_persistent_uuid_v4() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.db");
        let first = LocalDatabase::open(&path).expect("db").client_id().expect("id");
        assert_eq!(first.as_str().len(), 36);
        assert_eq!(first.as_str().as_bytes()[14], b'4');
        assert_eq!(
            LocalDatabase::open(&path).expect("db").client_id().expect("id"),
            first
        );
    }
}
