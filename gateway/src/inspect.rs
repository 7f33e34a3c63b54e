//! `syncgate inspect`: what a user would have after syncing to the latest checkpoint — their buckets,
//! checksums and the net rows of each bucket — read straight from bucket storage.
//!
//! [`net_rows`] replays a bucket's ops the way the client does (PROTOCOL §3.2), so tests (and crash
//! tests) can compare storage contents against an expected state without running a sync session.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use syncgate_protocol::{BucketName, OpId, OpType, OplogEntry};
use syncgate_rules::{ConnectionRequest, ParameterLookup, SqliteValue};

use crate::storage::{BucketStorage, Checkpoint, RulesVersion, SqliteStorage, StorageError};
use crate::versioned_rules::compile_version;

/// Ops read per storage call while replaying a bucket: bounds memory per page, not per bucket.
pub const OPS_PAGE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "bucket storage {} does not exist; check storage.path in the config, or start replication first",
        .0.display()
    )]
    StorageMissing(PathBuf),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("replication has not published a checkpoint yet: the storage has no active sync-rules version")]
    NoActiveVersion,
    #[error(
        "replication has not published a checkpoint yet for sync-rules version {0}; wait for the initial snapshot to finish"
    )]
    NoCheckpoint(RulesVersion),
    #[error("the sync rules stored with version {version} do not compile: {message}")]
    Rules { version: RulesVersion, message: String },
    #[error(
        "bucket {bucket}: op {op_id} is corrupt ({what}); the storage was written by another program or is damaged"
    )]
    CorruptOp {
        bucket: BucketName,
        op_id: OpId,
        what: String,
    },
    #[error("parameter index holds values that are not a JSON array ({0}); the storage is damaged")]
    CorruptLookup(String),
}

/// Opens an existing storage file. `SqliteStorage::open` would create a missing file, which for a read
/// command only hides a wrong `storage.path`.
pub fn open_existing(path: &Path) -> Result<SqliteStorage, InspectError> {
    if !path.is_file() {
        return Err(InspectError::StorageMissing(path.to_owned()));
    }
    Ok(SqliteStorage::open(path)?)
}

/// The result of one inspection, serialized as the command's JSON output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    pub version: u64,
    pub checkpoint: CheckpointView,
    /// Sorted by bucket name.
    pub buckets: Vec<BucketView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointView {
    /// A string, as on the wire.
    pub op_id: OpId,
    /// Postgres text form, `X/X`.
    pub lsn: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketView {
    pub bucket: String,
    pub priority: u8,
    /// Signed, as the checkpoint line sends it.
    pub checksum: i32,
    pub count: u64,
    /// Sorted by (table, id).
    pub rows: Vec<NetRow>,
}

/// One row the client holds for a bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetRow {
    pub table: String,
    pub id: String,
    pub data: serde_json::Value,
}

/// Resolves the buckets of a user (token payload and client parameters) with the rules of the active
/// version at its latest checkpoint, and reads each bucket's checksum, count and net rows.
pub fn inspect<S: BucketStorage + ?Sized>(
    storage: &S,
    token_payload: &serde_json::Value,
    client_parameters: &serde_json::Value,
) -> Result<Inspection, InspectError> {
    let active = storage.active_version()?.ok_or(InspectError::NoActiveVersion)?;
    let version = active.version;
    let checkpoint = storage
        .latest_checkpoint(version)?
        .ok_or(InspectError::NoCheckpoint(version))?;
    // The stored text, not the config file: buckets in storage were built from it.
    let rules = compile_version(version, &active.rules).map_err(|e| InspectError::Rules {
        version,
        message: e.message,
    })?;
    let request = ConnectionRequest::new(token_payload, client_parameters);
    let mut resolved = rules.resolve_buckets(&request, |lookups| {
        lookup_values(storage, version, &checkpoint, lookups)
    })?;
    resolved.sort_by(|a, b| a.bucket.as_str().cmp(b.bucket.as_str()));

    let names: Vec<BucketName> = resolved.iter().map(|b| b.bucket.clone()).collect();
    let summaries = storage.bucket_checksums(version, checkpoint.op_id, &names)?;
    let mut buckets = Vec::with_capacity(resolved.len());
    for (bucket, summary) in resolved.iter().zip(summaries) {
        buckets.push(BucketView {
            bucket: bucket.bucket.as_str().to_owned(),
            priority: bucket.priority.get(),
            checksum: summary.checksum.as_i32(),
            count: summary.count,
            rows: net_rows(storage, version, &summary.bucket, checkpoint.op_id)?,
        });
    }
    Ok(Inspection {
        version: version.0,
        checkpoint: CheckpointView {
            op_id: checkpoint.op_id,
            lsn: checkpoint.lsn.to_string(),
        },
        buckets,
    })
}

/// Answers bucket resolution's parameter lookups from the storage's parameter index at `checkpoint`.
pub fn lookup_values<S: BucketStorage + ?Sized>(
    storage: &S,
    version: RulesVersion,
    checkpoint: &Checkpoint,
    lookups: &[ParameterLookup],
) -> Result<Vec<Vec<Vec<SqliteValue>>>, InspectError> {
    let keys: Vec<String> = lookups.iter().map(ParameterLookup::key).collect();
    let found = storage.lookup(version, checkpoint, &keys)?;
    found
        .into_iter()
        .map(|rows| rows.iter().map(|json| parse_values(json)).collect())
        .collect()
}

/// Values are stored as a JSON array (`ParameterRow::values_json`).
fn parse_values(json: &str) -> Result<Vec<SqliteValue>, InspectError> {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Array(values)) => Ok(values.iter().map(SqliteValue::from_json).collect()),
        _ => Err(InspectError::CorruptLookup(json.to_owned())),
    }
}

/// The rows a client holds for `bucket` after receiving every op up to `up_to`, sorted by (table, id).
pub fn net_rows<S: BucketStorage + ?Sized>(
    storage: &S,
    version: RulesVersion,
    bucket: &BucketName,
    up_to: OpId,
) -> Result<Vec<NetRow>, InspectError> {
    net_rows_paged(storage, version, bucket, up_to, OPS_PAGE)
}

fn net_rows_paged<S: BucketStorage + ?Sized>(
    storage: &S,
    version: RulesVersion,
    bucket: &BucketName,
    up_to: OpId,
    page_size: usize,
) -> Result<Vec<NetRow>, InspectError> {
    let mut replay = Replay::new(bucket.clone());
    let mut after = OpId::ZERO;
    loop {
        let page = storage.ops(version, bucket, after, up_to, page_size)?;
        for op in &page {
            replay.apply(&op.entry)?;
        }
        match page.last() {
            Some(last) if page.len() == page_size => after = last.entry.op_id,
            _ => break,
        }
    }
    Ok(replay.finish())
}

/// The client's oplog of one bucket (PROTOCOL §3.2), keyed by (object_type, object_id, subkey).
#[derive(Debug)]
pub struct Replay {
    bucket: BucketName,
    entries: HashMap<(String, String, Option<String>), (OpId, serde_json::Value)>,
}

impl Replay {
    pub fn new(bucket: BucketName) -> Self {
        Replay {
            bucket,
            entries: HashMap::new(),
        }
    }

    /// Applies one op as the client does on receipt.
    pub fn apply(&mut self, op: &OplogEntry) -> Result<(), InspectError> {
        match op.op {
            OpType::Put => {
                let key = self.key(op)?;
                let text = op
                    .data
                    .as_deref()
                    .ok_or_else(|| self.corrupt(op, "PUT without data"))?;
                let data = serde_json::from_str(text)
                    .map_err(|e| self.corrupt(op, &format!("data is not JSON: {e}")))?;
                self.entries.insert(key, (op.op_id, data));
            }
            OpType::Remove => {
                let key = self.key(op)?;
                self.entries.remove(&key);
            }
            // A placeholder: its row, if any, was superseded by a later op.
            OpType::Move => {}
            OpType::Clear => self.entries.clear(),
        }
        Ok(())
    }

    /// The net rows, sorted by (table, id). When several source rows (subkeys) hold the same output
    /// row, the client shows the data of the highest op id (PROTOCOL §3.2).
    pub fn finish(self) -> Vec<NetRow> {
        self.rows()
    }

    /// The net rows so far (see [`Replay::finish`]).
    pub fn rows(&self) -> Vec<NetRow> {
        let mut rows: BTreeMap<(&str, &str), (OpId, &serde_json::Value)> = BTreeMap::new();
        for ((table, id, _subkey), (op_id, data)) in &self.entries {
            match rows.get(&(table.as_str(), id.as_str())) {
                Some((existing, _)) if existing > op_id => {}
                _ => {
                    rows.insert((table, id), (*op_id, data));
                }
            }
        }
        rows.into_iter()
            .map(|((table, id), (_, data))| NetRow {
                table: table.to_owned(),
                id: id.to_owned(),
                data: data.clone(),
            })
            .collect()
    }

    fn key(&self, op: &OplogEntry) -> Result<(String, String, Option<String>), InspectError> {
        match (&op.object_type, &op.object_id) {
            (Some(table), Some(id)) => Ok((
                table.clone(),
                id.clone(),
                op.subkey.as_ref().map(|s| s.as_str().to_owned()),
            )),
            _ => Err(self.corrupt(op, "PUT/REMOVE without object_type or object_id")),
        }
    }

    fn corrupt(&self, op: &OplogEntry, what: &str) -> InspectError {
        InspectError::CorruptOp {
            bucket: self.bucket.clone(),
            op_id: op.op_id,
            what: what.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use syncgate_protocol::{Checksum, Subkey};

    use super::*;
    use crate::storage::{Lsn, Placement, RowChange, SourceRowKey, SourceTransaction};

    fn op_id(n: u64) -> OpId {
        OpId::new(n).unwrap()
    }

    fn put(n: u64, id: &str, subkey: &str, data: &str) -> OplogEntry {
        OplogEntry::put(
            op_id(n),
            "todos".into(),
            id.into(),
            Subkey(subkey.into()),
            data.into(),
        )
    }

    fn remove(n: u64, id: &str, subkey: &str) -> OplogEntry {
        OplogEntry::remove(op_id(n), "todos".into(), id.into(), Subkey(subkey.into()))
    }

    fn bare(n: u64, op: OpType) -> OplogEntry {
        OplogEntry {
            op_id: op_id(n),
            op,
            object_type: None,
            object_id: None,
            data: None,
            checksum: Checksum::ZERO,
            subkey: None,
        }
    }

    fn replay(ops: &[OplogEntry]) -> Vec<(String, serde_json::Value)> {
        let mut replay = Replay::new(BucketName::new("b"));
        for op in ops {
            replay.apply(op).unwrap();
        }
        replay.finish().into_iter().map(|r| (r.id, r.data)).collect()
    }

    #[test]
    fn put_replaces_and_remove_deletes_per_subkey() {
        let rows = replay(&[
            put(1, "t1", "s1", r#"{"v":1}"#),
            put(2, "t2", "s2", r#"{"v":2}"#),
            put(3, "t1", "s1", r#"{"v":3}"#),
            remove(4, "t2", "s2"),
            bare(5, OpType::Move),
        ]);
        assert_eq!(rows, [("t1".to_owned(), json!({"v": 3}))]);
    }

    #[test]
    fn clear_drops_everything_before_it() {
        let rows = replay(&[
            put(1, "t1", "s1", "{}"),
            bare(2, OpType::Clear),
            put(3, "t2", "s2", "{}"),
        ]);
        assert_eq!(rows, [("t2".to_owned(), json!({}))]);
    }

    #[test]
    fn several_source_rows_of_one_output_row_show_the_newest() {
        // Two source rows (subkeys) produce todos/t1; the highest op id wins, and removing one keeps
        // the other's data.
        let ops = [
            put(1, "t1", "a", r#"{"from":"a"}"#),
            put(2, "t1", "b", r#"{"from":"b"}"#),
        ];
        assert_eq!(replay(&ops), [("t1".to_owned(), json!({"from": "b"}))]);
        let ops = [ops[0].clone(), ops[1].clone(), remove(3, "t1", "b")];
        assert_eq!(replay(&ops), [("t1".to_owned(), json!({"from": "a"}))]);
    }

    #[test]
    fn a_put_without_row_identity_is_reported_as_corrupt() {
        let mut replay = Replay::new(BucketName::new("b"));
        let err = replay.apply(&bare(7, OpType::Put)).unwrap_err();
        assert!(matches!(err, InspectError::CorruptOp { .. }), "{err}");
        assert!(err.to_string().contains("op 7"), "{err}");
    }

    fn storage() -> (tempfile::TempDir, SqliteStorage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("buckets.db")).unwrap();
        (dir, storage)
    }

    fn todo(id: &str, bucket: &str, data: &str) -> RowChange {
        RowChange {
            row: SourceRowKey {
                table: "public.todos".into(),
                key: id.into(),
            },
            placements: Some(vec![Placement {
                bucket: BucketName::new(bucket),
                table: "todos".into(),
                id: id.into(),
                data: data.into(),
            }]),
            parameters: None,
            source_row: None,
        }
    }

    #[test]
    fn net_rows_reads_every_page_up_to_the_checkpoint() {
        let (_dir, storage) = storage();
        let version = storage.create_version("bucket_definitions: {}").unwrap();
        for (lsn, id) in (1..=5).zip(["t1", "t2", "t3", "t4", "t5"]) {
            let txn = SourceTransaction {
                commit_lsn: Lsn(lsn),
                changes: vec![todo(id, "b", &format!(r#"{{"id":"{id}"}}"#))],
            };
            storage.apply(version, &txn).unwrap();
        }
        let checkpoint = storage.latest_checkpoint(version).unwrap().unwrap();
        let bucket = BucketName::new("b");
        let ids = |rows: Vec<NetRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(net_rows_paged(&storage, version, &bucket, checkpoint.op_id, 2).unwrap()),
            ["t1", "t2", "t3", "t4", "t5"]
        );
        // Up to the op of t3: the client has not seen t4 and t5.
        let ops = storage.ops(version, &bucket, OpId::ZERO, OpId::MAX, 10).unwrap();
        let dyn_storage: &dyn BucketStorage = &storage;
        assert_eq!(
            ids(net_rows(dyn_storage, version, &bucket, ops[2].entry.op_id).unwrap()),
            ["t1", "t2", "t3"]
        );
    }

    #[test]
    fn inspect_needs_an_active_version_with_a_checkpoint() {
        let (_dir, storage) = storage();
        let (payload, params) = (json!({"sub": "u1"}), json!({}));
        let err = inspect(&storage, &payload, &params).unwrap_err();
        assert!(matches!(err, InspectError::NoActiveVersion), "{err}");
        let version = storage
            .create_version("bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM todos\n")
            .unwrap();
        storage.activate(version).unwrap();
        let err = inspect(&storage, &payload, &params).unwrap_err();
        assert!(
            matches!(err, InspectError::NoCheckpoint(v) if v == version),
            "{err}"
        );
        assert!(err.to_string().contains("has not published a checkpoint yet"));

        storage
            .apply(
                version,
                &SourceTransaction {
                    commit_lsn: Lsn(0x10),
                    changes: vec![todo("t1", &format!("{version}#global[]"), r#"{"id":"t1"}"#)],
                },
            )
            .unwrap();
        let inspection = inspect(&storage, &payload, &params).unwrap();
        assert_eq!(inspection.checkpoint.lsn, "0/10");
        assert_eq!(inspection.buckets.len(), 1);
        assert_eq!(inspection.buckets[0].bucket, format!("{version}#global[]"));
        assert_eq!(inspection.buckets[0].count, 1);
        assert_eq!(
            inspection.buckets[0].checksum,
            Checksum::of_put("todos", "t1", r#"{"id":"t1"}"#).as_i32()
        );
    }

    #[test]
    fn stored_rules_that_do_not_compile_are_reported() {
        let (_dir, storage) = storage();
        let version = storage
            .create_version("bucket_definitions:\n  b:\n    priority: 5\n")
            .unwrap();
        storage.activate(version).unwrap();
        storage
            .apply(
                version,
                &SourceTransaction {
                    commit_lsn: Lsn(1),
                    changes: Vec::new(),
                },
            )
            .unwrap();
        let err = inspect(&storage, &json!({"sub": "u1"}), &json!({})).unwrap_err();
        assert!(matches!(err, InspectError::Rules { .. }), "{err}");
    }
}
