//! Op segments: a run of one bucket's ops, consecutive in that bucket, packed into one blob.
//!
//! Storing each op as its own row cost two B-tree entries per op (the op and its bucket index), and those
//! inserts were most of the writer's time. A storage transaction now writes each bucket's new ops as one
//! segment row; readers decode the segments that overlap the op range they want.
//!
//! Layout of one op (integers are LEB128 varints unless stated):
//! - op id, as the difference to the previous op of the segment (the first: to the segment's `first_op`);
//! - one byte: the op type in the low two bits, then flags for `target_op`, object type, object id,
//!   subkey and data being present;
//! - the checksum, u32 little-endian;
//! - `target_op` when flagged;
//! - each flagged text as its byte length and UTF-8 bytes, in the order object type, object id, subkey,
//!   data.

use syncgate_protocol::{Checksum, OpId, OpType, OplogEntry, Subkey};

use super::{StorageError, StoredOp};

/// A segment is closed once it holds this many ops: a reader asking for a page of ops decodes at most
/// about one segment it does not need.
pub(super) const MAX_OPS: usize = 1_000;

/// Or once its blob reaches this size (a single larger op gets a segment of its own).
pub(super) const MAX_BYTES: usize = 512 * 1024;

/// A new segment's buffer: room for a few typical ops, so it is not reallocated op by op while it grows
/// (growing from nothing reallocated and copied each owner bucket's ~3 KiB segment about ten times).
const INITIAL_CAPACITY: usize = 4096;

const HAS_TARGET: u8 = 1 << 2;
const HAS_OBJECT_TYPE: u8 = 1 << 3;
const HAS_OBJECT_ID: u8 = 1 << 4;
const HAS_SUBKEY: u8 = 1 << 5;
const HAS_DATA: u8 = 1 << 6;

/// One op to append, borrowed from the write path.
pub(super) struct OpRef<'a> {
    pub op_id: i64,
    pub op: OpType,
    pub object_type: Option<&'a str>,
    pub object_id: Option<&'a str>,
    pub subkey: Option<&'a str>,
    pub data: Option<&'a str>,
    pub checksum: Checksum,
    pub target_op: Option<i64>,
}

/// A segment being built: its ops in op-id order, with the summary columns stored beside the blob.
#[derive(Debug, Default)]
pub(super) struct SegmentBuilder {
    pub first_op: i64,
    pub last_op: i64,
    pub count: i64,
    /// Wrapping sum of the ops' checksums.
    pub checksum: Checksum,
    pub bytes: Vec<u8>,
}

impl SegmentBuilder {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the segment should be closed before another op is added.
    pub fn is_full(&self) -> bool {
        usize::try_from(self.count).unwrap_or(usize::MAX) >= MAX_OPS || self.bytes.len() >= MAX_BYTES
    }

    /// Appends `op`, whose id must be above every op already in the segment.
    pub fn push(&mut self, op: &OpRef<'_>) {
        debug_assert!(self.is_empty() || op.op_id > self.last_op, "ops out of order");
        let previous = if self.is_empty() {
            if self.bytes.capacity() == 0 {
                self.bytes.reserve(INITIAL_CAPACITY);
            }
            self.first_op = op.op_id;
            op.op_id
        } else {
            self.last_op
        };
        put_varint(&mut self.bytes, (op.op_id - previous).cast_unsigned());
        let kind = match op.op {
            OpType::Put => 0,
            OpType::Remove => 1,
            OpType::Move => 2,
            OpType::Clear => 3,
        };
        let mut flags = kind;
        for (present, flag) in [
            (op.target_op.is_some(), HAS_TARGET),
            (op.object_type.is_some(), HAS_OBJECT_TYPE),
            (op.object_id.is_some(), HAS_OBJECT_ID),
            (op.subkey.is_some(), HAS_SUBKEY),
            (op.data.is_some(), HAS_DATA),
        ] {
            if present {
                flags |= flag;
            }
        }
        self.bytes.push(flags);
        self.bytes.extend_from_slice(&op.checksum.as_u32().to_le_bytes());
        if let Some(target) = op.target_op {
            put_varint(&mut self.bytes, target.cast_unsigned());
        }
        for text in [op.object_type, op.object_id, op.subkey, op.data]
            .into_iter()
            .flatten()
        {
            put_varint(&mut self.bytes, text.len() as u64);
            self.bytes.extend_from_slice(text.as_bytes());
        }
        self.last_op = op.op_id;
        self.count += 1;
        self.checksum += op.checksum;
    }

    /// Empties the builder for the next segment, keeping its buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
        self.checksum = Checksum::ZERO;
    }
}

/// The sum of the checksums, and the count, of the ops up to `up_to` in a segment whose first op is
/// `first_op`: the part of a segment straddling a checkpoint that belongs to it.
pub(super) fn sums_up_to(first_op: i64, bytes: &[u8], up_to: i64) -> Result<(i64, i64), StorageError> {
    let mut ops = Vec::new();
    decode_into(first_op, bytes, 0, up_to, usize::MAX, &mut ops)?;
    let sum = ops
        .iter()
        .map(|op| i64::from(op.entry.checksum.as_u32()))
        .sum::<i64>();
    Ok((sum, i64::try_from(ops.len()).unwrap_or(i64::MAX)))
}

/// Decodes a segment whose first op is `first_op` into `out`, keeping the ops with
/// `after < op id ≤ up_to` while `out` holds fewer than `limit`.
pub(super) fn decode_into(
    first_op: i64,
    mut bytes: &[u8],
    after: i64,
    up_to: i64,
    limit: usize,
    out: &mut Vec<StoredOp>,
) -> Result<(), StorageError> {
    let mut op_id = first_op;
    while !bytes.is_empty() && out.len() < limit {
        op_id = op_id
            .checked_add(take_varint(&mut bytes)?.cast_signed())
            .ok_or_else(|| malformed("op id overflows"))?;
        if op_id > up_to {
            return Ok(());
        }
        let flags = *take(&mut bytes, 1)?.first().unwrap_or(&0);
        let checksum = Checksum::from_u32(u32::from_le_bytes(
            take(&mut bytes, 4)?.try_into().unwrap_or_default(),
        ));
        let target_op = if flags & HAS_TARGET != 0 {
            Some(take_varint(&mut bytes)?.cast_signed())
        } else {
            None
        };
        let mut texts: [Option<&str>; 4] = [None; 4];
        for (slot, flag) in texts
            .iter_mut()
            .zip([HAS_OBJECT_TYPE, HAS_OBJECT_ID, HAS_SUBKEY, HAS_DATA])
        {
            if flags & flag != 0 {
                let len = usize::try_from(take_varint(&mut bytes)?).map_err(|_| malformed("text length"))?;
                let text = take(&mut bytes, len)?;
                *slot = Some(std::str::from_utf8(text).map_err(|_| malformed("text is not UTF-8"))?);
            }
        }
        if op_id <= after {
            continue;
        }
        let op = match flags & 0b11 {
            0 => OpType::Put,
            1 => OpType::Remove,
            2 => OpType::Move,
            _ => OpType::Clear,
        };
        let [object_type, object_id, subkey, data] = texts;
        out.push(StoredOp {
            entry: OplogEntry {
                op_id: op_id_from(op_id)?,
                op,
                object_type: object_type.map(str::to_owned),
                object_id: object_id.map(str::to_owned),
                data: data.map(str::to_owned),
                checksum,
                subkey: subkey.map(|s| Subkey(s.to_owned())),
            },
            target_op: target_op.map(op_id_from).transpose()?,
        });
    }
    Ok(())
}

fn op_id_from(value: i64) -> Result<OpId, StorageError> {
    OpId::from_i64(value).ok_or_else(|| malformed("op id out of range"))
}

fn malformed(what: &'static str) -> StorageError {
    StorageError::Corrupt {
        what: "op segment",
        value: what.to_owned(),
    }
}

#[allow(clippy::cast_possible_truncation)] // keeps the low 7 bits on purpose
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, StorageError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *take(bytes, 1)?.first().unwrap_or(&0);
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("varint too long"))
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], StorageError> {
    if bytes.len() < n {
        return Err(malformed("truncated"));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kind(n: u8) -> OpType {
        [OpType::Put, OpType::Remove, OpType::Move, OpType::Clear][usize::from(n % 4)]
    }

    type RawOp = (
        u16,
        u8,
        u32,
        Option<u32>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    proptest! {
        /// Whatever goes in comes out, and a range read returns exactly the ops in the range.
        #[test]
        fn round_trip(
            first in 1i64..1 << 50,
            raw in proptest::collection::vec(
                (1u16..500, 0u8..4, any::<u32>(), proptest::option::of(any::<u32>()),
                 proptest::option::of(".{0,8}"), proptest::option::of(".{0,8}"),
                 proptest::option::of(".{0,8}"), proptest::option::of(".{0,300}")),
                1..60),
            after_pick in any::<prop::sample::Index>(),
            up_to_pick in any::<prop::sample::Index>(),
            limit in 0usize..80,
        ) {
            let raw: Vec<RawOp> = raw;
            let mut builder = SegmentBuilder::default();
            let mut expected = Vec::new();
            let mut op_id = first;
            for (gap, k, checksum, target, t, i, s, d) in &raw {
                let op = OpRef {
                    op_id,
                    op: kind(*k),
                    object_type: t.as_deref(),
                    object_id: i.as_deref(),
                    subkey: s.as_deref(),
                    data: d.as_deref(),
                    checksum: Checksum::from_u32(*checksum),
                    target_op: target.map(i64::from),
                };
                builder.push(&op);
                expected.push(StoredOp {
                    entry: OplogEntry {
                        op_id: OpId::from_i64(op_id).unwrap(),
                        op: kind(*k),
                        object_type: t.clone(),
                        object_id: i.clone(),
                        data: d.clone(),
                        checksum: Checksum::from_u32(*checksum),
                        subkey: s.clone().map(Subkey),
                    },
                    target_op: target.map(|t| OpId::from_i64(i64::from(t)).unwrap()),
                });
                op_id += i64::from(*gap);
            }
            prop_assert_eq!(builder.first_op, first);
            prop_assert_eq!(builder.count, i64::try_from(raw.len()).unwrap());
            let sum = expected.iter().fold(Checksum::ZERO, |sum, op| sum + op.entry.checksum);
            prop_assert_eq!(builder.checksum, sum);
            let mut all = Vec::new();
            decode_into(builder.first_op, &builder.bytes, i64::MIN, i64::MAX, usize::MAX, &mut all).unwrap();
            prop_assert_eq!(&all, &expected);

            let after = expected[after_pick.index(expected.len())].entry.op_id.as_i64() - 1;
            let up_to = expected[up_to_pick.index(expected.len())].entry.op_id.as_i64();
            let mut ranged = Vec::new();
            decode_into(builder.first_op, &builder.bytes, after, up_to, limit, &mut ranged).unwrap();
            let want: Vec<_> = expected
                .iter()
                .filter(|op| op.entry.op_id.as_i64() > after && op.entry.op_id.as_i64() <= up_to)
                .take(limit)
                .cloned()
                .collect();
            prop_assert_eq!(&ranged, &want);
        }
    }

    #[test]
    fn truncated_segment_is_an_error() {
        let mut builder = SegmentBuilder::default();
        builder.push(&OpRef {
            op_id: 7,
            op: OpType::Put,
            object_type: Some("t"),
            object_id: Some("1"),
            subkey: Some("s"),
            data: Some("{}"),
            checksum: Checksum::from_u32(1),
            target_op: None,
        });
        let cut = &builder.bytes[..builder.bytes.len() - 1];
        assert!(decode_into(7, cut, 0, i64::MAX, usize::MAX, &mut Vec::new()).is_err());
    }
}
