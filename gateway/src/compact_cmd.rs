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
