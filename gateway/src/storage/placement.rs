//! The storage-independent half of applying a row's placements: diffing them against the row's stored
//! placements into REMOVE and PUT ops. Both storages call [`diff_placements`], so they write the same ops
//! in the same order, and so assign the same op ids for the same input.

use syncgate_protocol::{Checksum, OpId, OpType, Subkey};

use super::segment::{OpRef, SegmentBuilder};
use super::sqlite::{pack_placement, packed_placement_len, put_hash, unpack_placements};
use super::{Placement, Result, SourceRowKey, StorageError};

/// One op produced by [`diff_placements`], before its op id is assigned.
pub(super) struct PlacementOp<'a> {
    pub op: OpType,
    pub object_type: &'a str,
    pub object_id: &'a str,
    pub subkey: &'a Subkey,
    pub data: Option<&'a str>,
    pub checksum: Checksum,
}

/// What a storage provides to [`diff_placements`]: bucket ids and somewhere to append ops.
pub(super) trait PlacementOps {
    /// The id of bucket `bucket`, resolved (or created) within the storage transaction.
    fn resolve_bucket(&mut self, bucket: &str) -> Result<i64>;
    /// Appends `op` to bucket `bucket_id` with the next op id.
    fn append_op(&mut self, bucket_id: i64, op: PlacementOp<'_>) -> Result<()>;
}

/// Diffs the row's placements against its stored ones (`old_packed`): REMOVE where it left, PUT where it
/// is new or its data changed. Returns the new packed placements. `put_digests`: the digests of
/// `placements`, when the caller computed them; else (empty) they are computed here.
pub(super) fn diff_placements(
    storage: &mut impl PlacementOps,
    row: &SourceRowKey,
    old_packed: &[u8],
    placements: &[Placement],
    put_digests: &[[u8; 32]],
) -> Result<Vec<u8>> {
    let old = unpack_placements(old_packed)?;
    if old.is_empty() && placements.is_empty() {
        return Ok(Vec::new());
    }
    // New placements, deduplicated (the last one for a (bucket, table, id) wins) and sorted, so op
    // ids are deterministic. Rows land in a handful of buckets: a sorted Vec beats a map.
    // The digest index travels with its placement (`usize::MAX`: not precomputed).
    let mut new: Vec<(&str, &str, &str, &str, usize)> = Vec::with_capacity(placements.len());
    for (i, p) in placements.iter().enumerate() {
        let key = (p.bucket.as_str(), p.table.as_str(), p.id.as_str());
        let digest = if put_digests.is_empty() { usize::MAX } else { i };
        match new.iter_mut().find(|n| (n.0, n.1, n.2) == key) {
            Some(n) => (n.3, n.4) = (p.data.as_str(), digest),
            None => new.push((key.0, key.1, key.2, p.data.as_str(), digest)),
        }
    }
    new.sort_unstable();
    let mut resolved = Vec::with_capacity(new.len());
    for (bucket, table, id, data, digest) in new {
        resolved.push((storage.resolve_bucket(bucket)?, table, id, data, digest));
    }
    let subkey = Subkey::for_source_row(&row.table, &row.key);
    // Leaving buckets first, in stored order (the order of their bucket names).
    for o in &old {
        if resolved
            .iter()
            .any(|n| (n.0, n.1, n.2) == (o.bucket_id, o.object_type, o.object_id))
        {
            continue;
        }
        storage.append_op(
            o.bucket_id,
            PlacementOp {
                op: OpType::Remove,
                object_type: o.object_type,
                object_id: o.object_id,
                subkey: &subkey,
                data: None,
                checksum: Checksum::of_remove(subkey.as_str()),
            },
        )?;
    }
    // A PUT only when the row enters the bucket or its data changed: an unchanged PUT would cost every
    // client a download and the bucket an op for nothing.
    let mut packed = Vec::with_capacity(
        resolved
            .iter()
            .map(|&(_, table, id, ..)| packed_placement_len(table, id))
            .sum(),
    );
    for (bucket_id, table, id, data, digest) in resolved {
        let digest = match put_digests.get(digest) {
            Some(digest) => *digest,
            None => Checksum::put_digest(table, id, data),
        };
        let hash = put_hash(&digest);
        let unchanged = old
            .iter()
            .any(|o| (o.bucket_id, o.object_type, o.object_id, o.hash) == (bucket_id, table, id, hash));
        if !unchanged {
            storage.append_op(
                bucket_id,
                PlacementOp {
                    op: OpType::Put,
                    object_type: table,
                    object_id: id,
                    subkey: &subkey,
                    data: Some(data),
                    checksum: Checksum::from_put_digest(&digest),
                },
            )?;
        }
        pack_placement(&mut packed, bucket_id, table, id, &hash)?;
    }
    Ok(packed)
}

/// Takes the next op id from `next_op`, recording it as the transaction's `last_op`; an error once op
/// ids run out rather than a wrapped or out-of-range id.
pub(super) fn take_op_id(next_op: &mut i64, last_op: &mut i64) -> Result<i64> {
    let op_id = *next_op;
    if OpId::from_i64(op_id).is_none() || op_id == i64::MAX {
        return Err(StorageError::OpIdsExhausted(OpId::MAX));
    }
    *next_op += 1;
    *last_op = op_id;
    Ok(op_id)
}

/// A bucket's new ops and running-sum change within one storage transaction.
pub(super) struct BucketDelta {
    pub checksum: Checksum,
    pub count: i64,
    pub last_op: i64,
    /// The bucket's ops of this transaction not yet written.
    pub segment: SegmentBuilder,
}

impl Default for BucketDelta {
    fn default() -> Self {
        BucketDelta {
            checksum: Checksum::ZERO,
            count: 0,
            last_op: 0,
            segment: SegmentBuilder::default(),
        }
    }
}

impl BucketDelta {
    /// Adds `op` as op `op_id` to the open segment and the running sums. The caller writes the segment out
    /// once it is full.
    pub fn record(&mut self, op_id: i64, op: &PlacementOp<'_>) {
        self.segment.push(&OpRef {
            op_id,
            op: op.op,
            object_type: Some(op.object_type),
            object_id: Some(op.object_id),
            subkey: Some(op.subkey.as_str()),
            data: op.data,
            checksum: op.checksum,
            target_op: None,
        });
        self.checksum += op.checksum;
        self.count += 1;
        self.last_op = op_id;
    }
}
