//! BSON stream framing (`application/vnd.powersync.bson-stream`, PROTOCOL §1.2): sync lines as BSON
//! documents written back to back, no separator (each document starts with its own i32 length).
//!
//! Own codec rather than the `bson` crate: the subset is tiny (document, array, string, int32, int64,
//! double, bool, null), and the spec fixes the BSON *type* of each number field, which a generic
//! serde mapping would choose by value. Two policies:
//!
//! * [`NumberPolicy::Syncgate`] (the default to send): op checksums (u32) as int64; bucket checksums,
//!   `count`, `priority`, `token_expires_in` and subscription indexes as int32 — always the same type.
//! * [`NumberPolicy::Reference`]: what the reference service does (int32 when the value fits, double
//!   otherwise); only for reproducing its golden bytes in tests.
//!
//! Op ids stay strings, as in JSON. Decoding accepts int32, int64 and doubles for any number.

use serde_json::{Map, Number, Value};

use crate::line::{
    BucketChecksum, BucketSubscription, Checkpoint, CheckpointDiff, DataLine, StreamDescription,
    SubscriptionRef, SyncLine,
};
use crate::oplog::OplogEntry;

const DOUBLE: u8 = 0x01;
const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const ARRAY: u8 = 0x04;
const BOOL: u8 = 0x08;
const NULL: u8 = 0x0A;
const INT32: u8 = 0x10;
const INT64: u8 = 0x12;

/// How numbers are typed in BSON; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumberPolicy {
    #[default]
    Syncgate,
    Reference,
}

/// A BSON document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BsonError {
    #[error("BSON document truncated at byte {0}")]
    Truncated(usize),
    #[error("BSON document length {0} is invalid")]
    BadLength(i64),
    #[error("BSON element type 0x{0:02x} is not used by the sync protocol")]
    UnsupportedType(u8),
    #[error("BSON string or key is not valid UTF-8")]
    Utf8,
    #[error("BSON double {0} cannot be represented in JSON")]
    NonFiniteDouble(String),
    #[error("{0} trailing bytes after the BSON document")]
    TrailingBytes(usize),
}

/// A BSON sync line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BsonLineError {
    #[error("invalid BSON sync line: {0}")]
    Bson(#[from] BsonError),
    #[error("invalid BSON sync line: {0}")]
    Line(#[from] crate::line::LineError),
}

/// Which BSON number type a field gets under [`NumberPolicy::Syncgate`].
#[derive(Clone, Copy)]
enum IntKind {
    I32,
    I64,
}

/// Writes one document; nested documents borrow the same buffer and patch their length on `end`.
struct DocWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    policy: NumberPolicy,
}

impl<'a> DocWriter<'a> {
    fn begin(out: &'a mut Vec<u8>, policy: NumberPolicy) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        DocWriter { out, start, policy }
    }

    fn key(&mut self, kind: u8, key: &str) {
        self.out.push(kind);
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(0);
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(STRING, key);
        let len = i32::try_from(value.len() + 1).expect("a sync-line string is far below 2 GiB");
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(0);
    }

    fn opt_string(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.string(key, v),
            None => self.key(NULL, key),
        }
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(BOOL, key);
        self.out.push(u8::from(value));
    }

    fn int(&mut self, key: &str, value: i64, kind: IntKind) {
        let as_i32 = i32::try_from(value);
        match (self.policy, kind, as_i32) {
            (NumberPolicy::Syncgate, IntKind::I32, Ok(v)) | (NumberPolicy::Reference, _, Ok(v)) => {
                self.key(INT32, key);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            (NumberPolicy::Reference, _, Err(_)) => {
                // Protocol numbers are < 2^53, so the double is exact — that is what the reference sends.
                #[allow(clippy::cast_precision_loss)]
                let v = value as f64;
                self.key(DOUBLE, key);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            // An int32 field whose value does not fit (e.g. count > 2^31) is widened, never truncated.
            (NumberPolicy::Syncgate, _, _) => {
                self.key(INT64, key);
                self.out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }

    fn doc(&mut self, key: &str) -> DocWriter<'_> {
        self.key(DOCUMENT, key);
        DocWriter::begin(self.out, self.policy)
    }

    fn array(&mut self, key: &str) -> DocWriter<'_> {
        self.key(ARRAY, key);
        DocWriter::begin(self.out, self.policy)
    }

    fn end(self) {
        self.out.push(0);
        let len = i32::try_from(self.out.len() - self.start).expect("a sync line is far below 2 GiB");
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Array keys are the decimal indexes "0", "1", ...
fn index_key(i: usize) -> String {
    i.to_string()
}

impl SyncLine {
    /// Appends the line as one BSON document, field order as in the JSON form.
    pub fn write_bson(&self, policy: NumberPolicy, out: &mut Vec<u8>) {
        let mut root = DocWriter::begin(out, policy);
        match self {
            SyncLine::Checkpoint(cp) => write_checkpoint(root.doc("checkpoint"), cp),
            SyncLine::CheckpointDiff(diff) => write_diff(root.doc("checkpoint_diff"), diff),
            SyncLine::Data(data) => write_data(root.doc("data"), data),
            SyncLine::CheckpointComplete(c) => {
                let mut d = root.doc("checkpoint_complete");
                d.string("last_op_id", &c.last_op_id.to_string());
                d.end();
            }
            SyncLine::PartialCheckpointComplete(c) => {
                let mut d = root.doc("partial_checkpoint_complete");
                d.string("last_op_id", &c.last_op_id.to_string());
                d.int("priority", i64::from(c.priority.get()), IntKind::I32);
                d.end();
            }
            SyncLine::TokenExpiresIn(secs) => root.int("token_expires_in", i64::from(*secs), IntKind::I32),
        }
        root.end();
    }

    /// Reads one BSON document (exactly `bytes`) as a sync line; `Ok(None)` for an unknown line type.
    pub fn from_bson(bytes: &[u8]) -> Result<Option<SyncLine>, BsonLineError> {
        let value = decode_document(bytes)?;
        Ok(SyncLine::from_value(value)?)
    }
}

fn write_checkpoint(mut d: DocWriter<'_>, cp: &Checkpoint) {
    d.string("last_op_id", &cp.last_op_id.to_string());
    if let Some(wc) = cp.write_checkpoint {
        d.string("write_checkpoint", &wc.to_string());
    }
    write_buckets(d.array("buckets"), &cp.buckets);
    write_streams(d.array("streams"), &cp.streams);
    d.end();
}

fn write_diff(mut d: DocWriter<'_>, diff: &CheckpointDiff) {
    d.string("last_op_id", &diff.last_op_id.to_string());
    if let Some(wc) = diff.write_checkpoint {
        d.string("write_checkpoint", &wc.to_string());
    }
    let mut removed = d.array("removed_buckets");
    for (i, name) in diff.removed_buckets.iter().enumerate() {
        removed.string(&index_key(i), name.as_str());
    }
    removed.end();
    write_buckets(d.array("updated_buckets"), &diff.updated_buckets);
    d.end();
}

fn write_buckets(mut arr: DocWriter<'_>, buckets: &[BucketChecksum]) {
    for (i, b) in buckets.iter().enumerate() {
        let mut d = arr.doc(&index_key(i));
        d.string("bucket", b.bucket.as_str());
        d.int("checksum", i64::from(b.checksum.as_i32()), IntKind::I32);
        d.int("count", i64::from(b.count), IntKind::I32);
        d.int("priority", i64::from(b.priority.get()), IntKind::I32);
        let mut subs = d.array("subscriptions");
        for (j, s) in b.subscriptions.iter().enumerate() {
            let mut sd = subs.doc(&index_key(j));
            match s {
                BucketSubscription::Default(k) => sd.int("default", i64::from(*k), IntKind::I32),
                BucketSubscription::Sub(k) => sd.int("sub", i64::from(*k), IntKind::I32),
            }
            sd.end();
        }
        subs.end();
        d.end();
    }
    arr.end();
}

fn write_streams(mut arr: DocWriter<'_>, streams: &[StreamDescription]) {
    for (i, s) in streams.iter().enumerate() {
        let mut d = arr.doc(&index_key(i));
        d.string("name", &s.name);
        d.bool("is_default", s.is_default);
        let mut errors = d.array("errors");
        for (j, e) in s.errors.iter().enumerate() {
            let mut ed = errors.doc(&index_key(j));
            match e.subscription {
                SubscriptionRef::Default => ed.string("subscription", "default"),
                SubscriptionRef::Explicit(k) => ed.int("subscription", i64::from(k), IntKind::I32),
            }
            ed.string("message", &e.message);
            ed.end();
        }
        errors.end();
        d.end();
    }
    arr.end();
}

fn write_data(mut d: DocWriter<'_>, data: &DataLine) {
    d.string("bucket", data.bucket.as_str());
    d.string("after", &data.after.to_string());
    d.bool("has_more", data.has_more);
    let mut ops = d.array("data");
    for (i, op) in data.data.iter().enumerate() {
        write_op(ops.doc(&index_key(i)), op);
    }
    ops.end();
    d.string("next_after", &data.next_after.to_string());
    d.end();
}

fn write_op(mut d: DocWriter<'_>, op: &OplogEntry) {
    d.string("op_id", &op.op_id.to_string());
    d.string("op", op_name(op));
    let row = op.has_row_fields();
    if row {
        d.opt_string("object_type", op.object_type.as_deref());
        d.opt_string("object_id", op.object_id.as_deref());
    }
    d.int("checksum", i64::from(op.checksum.as_u32()), IntKind::I64);
    if row {
        d.opt_string("subkey", op.subkey.as_ref().map(|s| s.as_str()));
        d.opt_string("data", op.data.as_deref());
    }
    d.end();
}

fn op_name(op: &OplogEntry) -> &'static str {
    use crate::oplog::OpType;
    match op.op {
        OpType::Put => "PUT",
        OpType::Remove => "REMOVE",
        OpType::Move => "MOVE",
        OpType::Clear => "CLEAR",
    }
}

/// Length of the first complete document at the start of `buf`, or `None` if more bytes are needed.
/// For splitting a received byte stream into documents.
pub fn first_document_len(buf: &[u8]) -> Result<Option<usize>, BsonError> {
    let Some(head) = buf.get(..4) else { return Ok(None) };
    let len = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= 5)
        .ok_or(BsonError::BadLength(i64::from(len)))?;
    Ok((buf.len() >= len).then_some(len))
}

/// Splits a complete BSON stream into its documents.
pub fn split_documents(mut buf: &[u8]) -> Result<Vec<&[u8]>, BsonError> {
    let mut docs = Vec::new();
    let mut offset = 0;
    while !buf.is_empty() {
        let len = first_document_len(buf)?.ok_or(BsonError::Truncated(offset + buf.len()))?;
        let (doc, rest) = buf.split_at(len);
        docs.push(doc);
        buf = rest;
        offset += len;
    }
    Ok(docs)
}

/// Decodes exactly one document into JSON. Whole doubles become JSON integers (the reference sends
/// large checksums as doubles; the client reads them as integers), other doubles stay floats.
pub fn decode_document(bytes: &[u8]) -> Result<Value, BsonError> {
    let mut reader = Reader { bytes, pos: 0 };
    let map = reader.document()?;
    if reader.pos != bytes.len() {
        return Err(BsonError::TrailingBytes(bytes.len() - reader.pos));
    }
    Ok(Value::Object(map))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BsonError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(BsonError::Truncated(self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array4(&mut self) -> Result<[u8; 4], BsonError> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    fn array8(&mut self) -> Result<[u8; 8], BsonError> {
        let b = self.take(8)?;
        Ok([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    fn byte(&mut self) -> Result<u8, BsonError> {
        Ok(self.take(1)?[0])
    }

    fn cstring(&mut self) -> Result<String, BsonError> {
        let rest = &self.bytes[self.pos..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(BsonError::Truncated(self.bytes.len()))?;
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| BsonError::Utf8)?
            .to_owned();
        self.pos += nul + 1;
        Ok(text)
    }

    fn document(&mut self) -> Result<Map<String, Value>, BsonError> {
        let start = self.pos;
        let len = i32::from_le_bytes(self.array4()?);
        let end = usize::try_from(len)
            .ok()
            .filter(|l| *l >= 5)
            .and_then(|l| start.checked_add(l))
            .ok_or(BsonError::BadLength(i64::from(len)))?;
        if end > self.bytes.len() {
            return Err(BsonError::Truncated(self.bytes.len()));
        }
        let mut map = Map::new();
        loop {
            let kind = self.byte()?;
            if kind == 0 {
                break;
            }
            let key = self.cstring()?;
            let value = self.element(kind)?;
            map.insert(key, value);
        }
        if self.pos != end {
            return Err(BsonError::BadLength(i64::from(len)));
        }
        Ok(map)
    }

    fn element(&mut self, kind: u8) -> Result<Value, BsonError> {
        Ok(match kind {
            DOUBLE => double_to_json(f64::from_le_bytes(self.array8()?))?,
            STRING => {
                let len = i32::from_le_bytes(self.array4()?);
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l >= 1)
                    .ok_or(BsonError::BadLength(i64::from(len)))?;
                let raw = self.take(len)?;
                let text = std::str::from_utf8(&raw[..len - 1]).map_err(|_| BsonError::Utf8)?;
                Value::String(text.to_owned())
            }
            DOCUMENT => Value::Object(self.document()?),
            ARRAY => Value::Array(self.document()?.into_iter().map(|(_, v)| v).collect()),
            BOOL => Value::Bool(self.byte()? != 0),
            NULL => Value::Null,
            INT32 => Value::from(i32::from_le_bytes(self.array4()?)),
            INT64 => Value::from(i64::from_le_bytes(self.array8()?)),
            other => return Err(BsonError::UnsupportedType(other)),
        })
    }
}

fn double_to_json(v: f64) -> Result<Value, BsonError> {
    // Whole values within ±2^53 convert exactly, so the cast loses nothing.
    if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Value::from(v as i64));
    }
    Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| BsonError::NonFiniteDouble(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::CheckpointComplete;
    use crate::oplog::Subkey;
    use crate::{Checksum, OpId};

    fn data_line() -> SyncLine {
        let id = |v| OpId::new(v).unwrap();
        SyncLine::Data(DataLine {
            bucket: crate::BucketName::new("b"),
            after: id(0),
            has_more: false,
            data: vec![
                OplogEntry::put(
                    id(1),
                    "t".into(),
                    "1".into(),
                    Subkey("s".into()),
                    "{\"id\":\"1\"}".into(),
                ),
                OplogEntry::remove(id(2), "t".into(), "1".into(), Subkey("s".into())),
                OplogEntry::compacted(id(3), crate::OpType::Clear, Checksum::from_u32(4_000_000_000)),
            ],
            next_after: id(3),
        })
    }

    #[test]
    fn round_trips_under_both_policies() {
        for policy in [NumberPolicy::Syncgate, NumberPolicy::Reference] {
            let line = data_line();
            let mut out = Vec::new();
            line.write_bson(policy, &mut out);
            assert_eq!(first_document_len(&out).unwrap(), Some(out.len()));
            assert_eq!(SyncLine::from_bson(&out).unwrap(), Some(line));
        }
    }

    #[test]
    fn syncgate_policy_fixes_number_types() {
        let mut out = Vec::new();
        data_line().write_bson(NumberPolicy::Syncgate, &mut out);
        // Every op checksum is int64 (0x12), even the small ones.
        let needle = [&[INT64][..], b"checksum\0"].concat();
        assert_eq!(
            out.windows(needle.len())
                .filter(|w| *w == needle.as_slice())
                .count(),
            3
        );
        let mut out = Vec::new();
        SyncLine::TokenExpiresIn(5).write_bson(NumberPolicy::Syncgate, &mut out);
        assert_eq!(out, b"\x1b\0\0\0\x10token_expires_in\0\x05\0\0\0\0");
    }

    #[test]
    fn rejects_broken_documents() {
        let mut out = Vec::new();
        SyncLine::CheckpointComplete(CheckpointComplete {
            last_op_id: OpId::ZERO,
        })
        .write_bson(NumberPolicy::Syncgate, &mut out);
        assert_eq!(first_document_len(&out[..out.len() - 1]).unwrap(), None);
        assert!(decode_document(&out[..out.len() - 1]).is_err());
        assert!(decode_document(&[out.as_slice(), b"x"].concat()).is_err());
        assert!(first_document_len(&[1, 0, 0, 0]).is_err());
        assert!(split_documents(&out[..3]).is_err());
    }
}
