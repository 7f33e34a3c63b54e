//! `syncgate inspect`: what a user would have after syncing to the latest checkpoint — their buckets,
//! checksums and the net rows of each bucket — read straight from bucket storage.
//!
//! [`net_rows`] replays a bucket's ops the way the client does (PROTOCOL §3.2), so tests (and crash
//! tests) can compare storage contents against an expected state without running a sync session.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use syncgate_protocol::{BucketName, OpId, OpType, OplogEntry};
use syncgate_rules::{CompileOptions, ConnectionRequest, ParameterLookup, SqliteValue, compile};

use crate::storage::{BucketStorage, Checkpoint, RulesVersion, SqliteStorage, StorageError};

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
    let compiled = compile(&active.rules, &CompileOptions::default());
    let Some(rules) = compiled.rules else {
        let message = compiled
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .unwrap_or_else(|| "unknown error".into());
        return Err(InspectError::Rules { version, message });
    };
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
    let mut replay = Replay::new(bucket.clone());
    let mut after = OpId::ZERO;
    loop {
        let page = storage.ops(version, bucket, after, up_to, OPS_PAGE)?;
        for op in &page {
            replay.apply(&op.entry)?;
        }
        match page.last() {
            Some(last) if page.len() == OPS_PAGE => after = last.entry.op_id,
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
        let mut rows: BTreeMap<(String, String), (OpId, serde_json::Value)> = BTreeMap::new();
        for ((table, id, _subkey), (op_id, data)) in self.entries {
            match rows.get(&(table.clone(), id.clone())) {
                Some((existing, _)) if *existing > op_id => {}
                _ => {
                    rows.insert((table, id), (op_id, data));
                }
            }
        }
        rows.into_iter()
            .map(|((table, id), (_, data))| NetRow { table, id, data })
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
