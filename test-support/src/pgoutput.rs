//! Decoder for the messages of PostgreSQL's `pgoutput` logical decoding plugin, protocol
//! version 1 ("Logical Replication Message Formats" in the Postgres docs): what
//! `pg_logical_slot_get_binary_changes(…, 'proto_version', '1', 'publication_names', …)` returns
//! in its `data` column, and what a replication connection receives inside XLogData.
//!
//! Integers are big-endian; strings are NUL-terminated. Version 2+ streaming messages
//! (`S`/`E`/`c`/`A`, and the xid that prefixes messages inside a stream) are not supported:
//! they only appear when `streaming` is requested.

use std::collections::HashMap;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 00:00 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Origin {
        commit_lsn: u64,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation_id: u32,
        /// The old key columns (replica identity DEFAULT/INDEX, key changed).
        old_key: Option<Vec<TupleValue>>,
        /// The whole old row (replica identity FULL).
        old: Option<Vec<TupleValue>>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation_id: u32,
        old_key: Option<Vec<TupleValue>>,
        old: Option<Vec<TupleValue>>,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relation_ids: Vec<u32>,
    },
    /// `pg_logical_emit_message` output (only with the `messages` option).
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
}

/// A table's description; sent before the first change to it in a session and after DDL.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One column of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that the update did not change: not sent; the previous value stands.
    UnchangedToast,
    /// Text output format (the only format in protocol version 1).
    Text(String),
    /// Binary format (protocol version 2+ with `binary` on).
    Binary(Vec<u8>),
}

impl TupleValue {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            TupleValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message ends early (at byte {0})")]
    UnexpectedEnd(usize),
    #[error("unknown message type {0:?}")]
    UnknownMessage(char),
    #[error("unknown tuple marker {0:?}")]
    UnknownTupleMarker(char),
    #[error("unknown column value kind {0:?}")]
    UnknownValueKind(char),
    #[error("string is not UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("negative length {0}")]
    NegativeLength(i64),
}

/// Decodes one pgoutput message.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let message = match r.u8()? {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.u64()?,
            name: r.cstring()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstring()?;
            let name = r.cstring()?;
            let replica_identity = r.u8()?;
            let count = r.count16()?;
            let mut columns = Vec::with_capacity(count);
            for _ in 0..count {
                columns.push(RelationColumn {
                    is_key: r.u8()? & 1 == 1,
                    name: r.cstring()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstring()?,
            name: r.cstring()?,
        },
        b'I' => {
            let relation_id = r.u32()?;
            r.expect_marker(b'N')?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32()?;
            let (mut old_key, mut old) = (None, None);
            let new = loop {
                match r.u8()? {
                    b'K' => old_key = Some(r.tuple()?),
                    b'O' => old = Some(r.tuple()?),
                    b'N' => break r.tuple()?,
                    other => return Err(DecodeError::UnknownTupleMarker(char::from(other))),
                }
            };
            Message::Update {
                relation_id,
                old_key,
                old,
                new,
            }
        }
        b'D' => {
            let relation_id = r.u32()?;
            let (old_key, old) = match r.u8()? {
                b'K' => (Some(r.tuple()?), None),
                b'O' => (None, Some(r.tuple()?)),
                other => return Err(DecodeError::UnknownTupleMarker(char::from(other))),
            };
            Message::Delete {
                relation_id,
                old_key,
                old,
            }
        }
        b'T' => {
            let count = r.u32()?;
            let options = r.u8()?;
            let relation_ids = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.u64()?;
            let prefix = r.cstring()?;
            let len = r.len32()?;
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: r.take(len)?.to_vec(),
            }
        }
        other => return Err(DecodeError::UnknownMessage(char::from(other))),
    };
    if r.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - r.pos));
    }
    Ok(message)
}

/// Relations seen so far, to give row values their column names and type OIDs.
#[derive(Debug, Default, Clone)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    /// Remembers a Relation message; other messages are ignored.
    pub fn observe(&mut self, message: &Message) {
        if let Message::Relation(relation) = message {
            self.relations.insert(relation.id, relation.clone());
        }
    }

    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(DecodeError::UnexpectedEnd(self.bytes.len()))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(i64::from(n)))
    }

    fn len32(&mut self) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(i64::from(n)))
    }

    fn cstring(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnexpectedEnd(self.bytes.len()))?;
        let s = self.take(len)?;
        self.pos += 1; // the NUL
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::InvalidUtf8(start))
    }

    fn expect_marker(&mut self, marker: u8) -> Result<(), DecodeError> {
        match self.u8()? {
            b if b == marker => Ok(()),
            other => Err(DecodeError::UnknownTupleMarker(char::from(other))),
        }
    }

    /// TupleData: Int16 column count, then per column `n` (null), `u` (unchanged TOAST),
    /// `t` (text) or `b` (binary) — the last two followed by Int32 length and the bytes.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let count = self.count16()?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let start = self.pos;
                    let len = self.len32()?;
                    let bytes = self.take(len)?;
                    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8(start))?;
                    TupleValue::Text(text.to_owned())
                }
                b'b' => {
                    let len = self.len32()?;
                    TupleValue::Binary(self.take(len)?.to_vec())
                }
                other => return Err(DecodeError::UnknownValueKind(char::from(other))),
            };
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way pgoutput writes them.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u8(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn cstr(mut self, s: &str) -> Self {
            self.0.extend(s.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, s: &str) -> Self {
            let len = i32::try_from(s.len()).unwrap();
            let mut w = self.u8(b't').i32(len);
            w.0.extend(s.as_bytes());
            w
        }
    }

    #[test]
    fn begin_and_commit() {
        let begin = W::default().u8(b'B').u64(0x16_B374_D848).i64(-5).u32(770).0;
        assert_eq!(
            decode(&begin),
            Ok(Message::Begin {
                final_lsn: 0x16_B374_D848,
                commit_time: -5,
                xid: 770
            })
        );
        let commit = W::default().u8(b'C').u8(0).u64(1).u64(2).i64(3).0;
        assert_eq!(
            decode(&commit),
            Ok(Message::Commit {
                flags: 0,
                commit_lsn: 1,
                end_lsn: 2,
                commit_time: 3
            })
        );
    }

    #[test]
    fn relation_and_rows() {
        let relation = W::default()
            .u8(b'R')
            .u32(16_385)
            .cstr("public")
            .cstr("todos")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .cstr("id")
            .u32(25)
            .i32(-1)
            .u8(0)
            .cstr("n")
            .u32(1043)
            .i32(14)
            .0;
        let message = decode(&relation).unwrap();
        let Message::Relation(r) = &message else {
            panic!("{message:?}")
        };
        assert_eq!(
            (r.id, r.namespace.as_str(), r.name.as_str(), r.replica_identity),
            (16_385, "public", "todos", b'd')
        );
        assert_eq!(
            r.columns[1],
            RelationColumn {
                is_key: false,
                name: "n".into(),
                type_oid: 1043,
                type_modifier: 14
            }
        );
        assert!(r.columns[0].is_key);
        let mut cache = RelationCache::default();
        cache.observe(&message);
        assert_eq!(cache.get(16_385).unwrap().columns.len(), 2);

        let insert = W::default()
            .u8(b'I')
            .u32(16_385)
            .u8(b'N')
            .i16(3)
            .text("t1")
            .u8(b'n')
            .text("ü")
            .0;
        assert_eq!(
            decode(&insert),
            Ok(Message::Insert {
                relation_id: 16_385,
                new: vec![
                    TupleValue::Text("t1".into()),
                    TupleValue::Null,
                    TupleValue::Text("ü".into())
                ]
            })
        );
        let update = W::default()
            .u8(b'U')
            .u32(7)
            .u8(b'K')
            .i16(1)
            .text("old")
            .u8(b'N')
            .i16(2)
            .text("new")
            .u8(b'u')
            .0;
        assert_eq!(
            decode(&update),
            Ok(Message::Update {
                relation_id: 7,
                old_key: Some(vec![TupleValue::Text("old".into())]),
                old: None,
                new: vec![TupleValue::Text("new".into()), TupleValue::UnchangedToast]
            })
        );
        let delete = W::default().u8(b'D').u32(7).u8(b'O').i16(1).u8(b'n').0;
        assert_eq!(
            decode(&delete),
            Ok(Message::Delete {
                relation_id: 7,
                old_key: None,
                old: Some(vec![TupleValue::Null])
            })
        );
        let truncate = W::default().u8(b'T').u32(2).u8(1).u32(7).u32(8).0;
        assert_eq!(
            decode(&truncate),
            Ok(Message::Truncate {
                options: 1,
                relation_ids: vec![7, 8]
            })
        );
    }

    #[test]
    fn other_messages() {
        let origin = W::default().u8(b'O').u64(9).cstr("node").0;
        assert_eq!(
            decode(&origin),
            Ok(Message::Origin {
                commit_lsn: 9,
                name: "node".into()
            })
        );
        let ty = W::default().u8(b'Y').u32(16_390).cstr("public").cstr("mood").0;
        assert_eq!(
            decode(&ty),
            Ok(Message::Type {
                oid: 16_390,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
        let mut message = W::default().u8(b'M').u8(1).u64(5).cstr("p").i32(2).0;
        message.extend([0xff, 0]);
        assert_eq!(
            decode(&message),
            Ok(Message::LogicalMessage {
                transactional: true,
                lsn: 5,
                prefix: "p".into(),
                content: vec![0xff, 0]
            })
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::UnexpectedEnd(0)));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessage('Z')));
        assert!(matches!(
            decode(&W::default().u8(b'B').u64(1).0),
            Err(DecodeError::UnexpectedEnd(_))
        ));
        let trailing = W::default().u8(b'C').u8(0).u64(1).u64(2).i64(3).u8(0).0;
        assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));
        let bad_kind = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0;
        assert_eq!(decode(&bad_kind), Err(DecodeError::UnknownValueKind('x')));
        let bad_marker = W::default().u8(b'I').u32(1).u8(b'K').0;
        assert_eq!(decode(&bad_marker), Err(DecodeError::UnknownTupleMarker('K')));
        let negative = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1).0;
        assert_eq!(decode(&negative), Err(DecodeError::NegativeLength(-1)));
        let too_long = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(10).0;
        assert!(matches!(decode(&too_long), Err(DecodeError::UnexpectedEnd(_))));
        let unterminated = W::default()
            .u8(b'O')
            .u64(1)
            .0
            .into_iter()
            .chain(*b"abc")
            .collect::<Vec<u8>>();
        assert!(matches!(
            decode(&unterminated),
            Err(DecodeError::UnexpectedEnd(_))
        ));
        let not_utf8 = W::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(1)
            .u8(0xff)
            .0;
        assert!(matches!(decode(&not_utf8), Err(DecodeError::InvalidUtf8(_))));
    }
}
