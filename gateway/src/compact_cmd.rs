//! `syncgate compact`: compacts the active version's buckets up to its latest checkpoint. A library
//! function so `serve` can run it on a timer too.

use syncgate_protocol::OpId;

use crate::storage::{BucketStorage, CompactStats, RulesVersion, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("nothing to compact: the storage has no active sync-rules version")]
    NoActiveVersion,
}

/// Compacts the active version up to its latest checkpoint (storage clamps `OpId::MAX` to it, so ops a
/// session may not have seen yet stay untouched).
pub fn compact_active<S: BucketStorage + ?Sized>(
    storage: &S,
) -> Result<(RulesVersion, CompactStats), CompactError> {
    let active = storage.active_version()?.ok_or(CompactError::NoActiveVersion)?;
    let stats = storage.compact(active.version, OpId::MAX)?;
    Ok((active.version, stats))
}

/// The command's one line of output.
pub fn summary(version: RulesVersion, stats: &CompactStats) -> String {
    format!(
        "compacted version {version}: {} bucket(s), {} op(s) moved, {} op(s) cleared, up to op {}",
        stats.buckets, stats.moved, stats.cleared, stats.up_to
    )
}

#[cfg(test)]
mod tests {
    use syncgate_protocol::BucketName;

    use super::*;
    use crate::storage::{Lsn, Placement, RowChange, SourceRowKey, SourceTransaction, SqliteStorage};

    fn put(lsn: u64, data: &str) -> SourceTransaction {
        SourceTransaction {
            commit_lsn: Lsn(lsn),
            changes: vec![RowChange {
                row: SourceRowKey {
                    table: "public.todos".into(),
                    key: "t1".into(),
                },
                placements: Some(vec![Placement {
                    bucket: BucketName::new("b"),
                    table: "todos".into(),
                    id: "t1".into(),
                    data: data.into(),
                }]),
                parameters: None,
                source_row: None,
            }],
        }
    }

    #[test]
    fn compacts_the_active_version_up_to_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("buckets.db")).unwrap();
        assert!(matches!(
            compact_active(&storage),
            Err(CompactError::NoActiveVersion)
        ));
        let version = storage.create_version("bucket_definitions: {}").unwrap();
        storage.activate(version).unwrap();
        storage.apply(version, &put(1, r#"{"v":1}"#)).unwrap();
        storage.apply(version, &put(2, r#"{"v":2}"#)).unwrap();
        let checkpoint = storage.latest_checkpoint(version).unwrap().unwrap();
        let (compacted, stats) = compact_active(&storage).unwrap();
        assert_eq!(compacted, version);
        assert_eq!(stats.up_to, checkpoint.op_id);
        // The first PUT is superseded: MOVE, then merged into a leading CLEAR.
        assert_eq!(stats.buckets, 1);
        assert!(stats.moved + stats.cleared >= 1, "{stats:?}");
        assert!(summary(version, &stats).starts_with(&format!("compacted version {version}: 1 bucket(s)")));
    }
}
