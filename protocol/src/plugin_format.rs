//! The binary format of the `syncgate` logical decoding output plugin (pg-ext/), shared by the plugin
//! (encoder) and the gateway (decoder). Byte layout: docs/pg-ext.md.
//!
//! One plugin write is one message: one row of `pg_logical_slot_get_binary_changes`, one CopyData on a
//! replication connection. Every message starts with a tag byte. BEGIN and MESSAGE (the only messages
//! that can open a session's output) carry [`FORMAT_VERSION`]. Column values are the text their type's
//! output function produces, which is what the gateway's value mapping reads, so the decoder hands out
//! `&str` slices of the received buffer and allocates nothing per value.
//!
//! Integers: fixed-width big-endian for ids, LSNs and times; unsigned LEB128 varints for lengths and
//! counts. A value's length and its null/unchanged state share one varint (0 = NULL, 1 = unchanged
//! TOAST, n ≥ 2 = text of n − 2 bytes), so a short value costs one byte of framing.
//!
//! No dependencies beyond std: the extension links this file too.

use std::fmt;

pub use crate::lsn::Lsn;

/// Version of this format, in BEGIN and MESSAGE. A decoder refuses other versions.
pub const FORMAT_VERSION: u8 = 1;

pub const TAG_BEGIN: u8 = b'B';
pub const TAG_COMMIT: u8 = b'C';
pub const TAG_RELATION: u8 = b'R';
pub const TAG_INSERT: u8 = b'I';
pub const TAG_UPDATE: u8 = b'U';
pub const TAG_DELETE: u8 = b'D';
pub const TAG_TRUNCATE: u8 = b'T';
pub const TAG_MESSAGE: u8 = b'M';

/// Old-values kinds of UPDATE and DELETE.
const OLD_NONE: u8 = 0;
const OLD_KEY: u8 = b'K';
const OLD_ROW: u8 = b'O';

/// Column flag: part of the replica identity.
const COLUMN_IS_KEY: u8 = 1;
const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_SEQS: u8 = 2;
const MESSAGE_TRANSACTIONAL: u8 = 1;

/// Value header of a NULL and of an unchanged TOASTed value; text values use `length + 2`.
const VALUE_NULL: u64 = 0;
const VALUE_UNCHANGED_TOAST: u64 = 1;
const VALUE_TEXT_BASE: u64 = 2;

/// `pg_class.relreplident`: which old values UPDATE and DELETE carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// The primary key (`d`).
    Default,
    /// No old values (`n`).
    Nothing,
    /// Every column (`f`).
    Full,
    /// The columns of a chosen unique index (`i`).
    Index,
}

impl ReplicaIdentity {
    /// From the `relreplident` byte; `None` for an unknown one.
    pub fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// BEGIN: sent lazily, before a transaction's first emitted change or message; transactions whose
/// changes were all filtered out send nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub xid: u32,
    /// The commit's LSN (known up front: decoding starts at commit).
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC (Postgres's epoch).
    pub commit_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    /// The position after the commit record: the one to confirm once the transaction is durable.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// A column as RELATION describes it. Dropped and generated columns are left out, as pgoutput does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    pub type_oid: u32,
    /// `atttypmod` (-1 when the type has none).
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub is_key: bool,
}

/// RELATION: sent before a relation's first change in a session and again after its definition may
/// have changed (relcache invalidation); the latest one describes the tuples that follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation<'a> {
    pub oid: u32,
    pub schema: &'a str,
    pub name: &'a str,
    pub replica_identity: ReplicaIdentity,
    pub columns: Columns<'a>,
}

/// One column of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// An out-of-line value the UPDATE did not change; its data is not in the WAL, so it is not sent.
    /// Never NULL: the receiver keeps the value it has.
    UnchangedToast,
    /// The type output function's text.
    Text(&'a str),
}

/// The old values of an UPDATE or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldValues<'a> {
    /// Replica identity key: full width, non-key columns are NULL placeholders.
    Key(Tuple<'a>),
    /// The whole old row (REPLICA IDENTITY FULL).
    Row(Tuple<'a>),
}

impl<'a> OldValues<'a> {
    pub fn tuple(&self) -> Tuple<'a> {
        match *self {
            OldValues::Key(tuple) | OldValues::Row(tuple) => tuple,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncate<'a> {
    pub cascade: bool,
    pub restart_seqs: bool,
    pub relation_oids: Oids<'a>,
}

/// `pg_logical_emit_message`: write-checkpoint markers (prefixes `powersync`, `syncgate`) and others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Transactional messages arrive between BEGIN and COMMIT, the others outside any transaction.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

/// One decoded plugin message, borrowing from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Relation(Relation<'a>),
    Insert {
        relation_oid: u32,
        new: Tuple<'a>,
    },
    Update {
        relation_oid: u32,
        /// `None` when the key did not change and identity is not FULL: the key is in `new`.
        old: Option<OldValues<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        relation_oid: u32,
        /// `None` only for REPLICA IDENTITY NOTHING (or a default identity without a primary key).
        old: Option<OldValues<'a>>,
    },
    Truncate(Truncate<'a>),
    Message(LogicalMessage<'a>),
}

/// Why bytes are not a valid plugin message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The message ended inside the named field.
    Truncated(&'static str),
    UnknownTag(u8),
    UnsupportedVersion(u8),
    UnknownReplicaIdentity(u8),
    UnknownOldKind(u8),
    /// A name or value is not UTF-8 (the plugin requires a UTF8 database, so this means corruption).
    NotUtf8(&'static str),
    /// A varint longer than 10 bytes, or a length that does not fit in memory.
    BadVarint,
    /// Bytes left after a complete message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated(field) => write!(f, "syncgate plugin message ends inside its {field}"),
            DecodeError::UnknownTag(tag) => write!(f, "unknown syncgate plugin message tag {tag:#04x}"),
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "syncgate plugin format version {v}, this build reads version {FORMAT_VERSION}: \
                 install the extension version that matches the gateway"
            ),
            DecodeError::UnknownReplicaIdentity(b) => write!(f, "unknown replica identity {b:#04x}"),
            DecodeError::UnknownOldKind(b) => write!(f, "unknown old-values kind {b:#04x}"),
            DecodeError::NotUtf8(field) => write!(f, "syncgate plugin message has a non-UTF-8 {field}"),
            DecodeError::BadVarint => f.write_str("syncgate plugin message has a malformed varint"),
            DecodeError::TrailingBytes(n) => {
                write!(f, "{n} bytes after the end of a syncgate plugin message")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------------------
// Decoding

/// A cursor over a message's bytes.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8(field)?;
            let bits = u64::from(byte & 0x7F);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::BadVarint);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(self.varint(field)?).map_err(|_| DecodeError::BadVarint)
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.length(field)?;
        self.take(len, field)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| DecodeError::NotUtf8(field))
    }

    fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8("format version")? {
            FORMAT_VERSION => Ok(()),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.u64(field)?))
    }

    fn value(&mut self) -> Result<Value<'a>, DecodeError> {
        match self.varint("value header")? {
            VALUE_NULL => Ok(Value::Null),
            VALUE_UNCHANGED_TOAST => Ok(Value::UnchangedToast),
            header => {
                let len = usize::try_from(header - VALUE_TEXT_BASE).map_err(|_| DecodeError::BadVarint)?;
                let bytes = self.take(len, "value")?;
                std::str::from_utf8(bytes)
                    .map(Value::Text)
                    .map_err(|_| DecodeError::NotUtf8("value"))
            }
        }
    }

    /// Checks a tuple completely (lengths and UTF-8), so iterating it later cannot fail.
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let count = self.length("column count")?;
        let start = self.bytes;
        for _ in 0..count {
            self.value()?;
        }
        let used = start.len() - self.bytes.len();
        Ok(Tuple {
            count,
            bytes: &start[..used],
        })
    }

    fn old_values(&mut self) -> Result<Option<OldValues<'a>>, DecodeError> {
        match self.u8("old-values kind")? {
            OLD_NONE => Ok(None),
            OLD_KEY => Ok(Some(OldValues::Key(self.tuple()?))),
            OLD_ROW => Ok(Some(OldValues::Row(self.tuple()?))),
            other => Err(DecodeError::UnknownOldKind(other)),
        }
    }

    fn column(&mut self) -> Result<Column<'a>, DecodeError> {
        let flags = self.u8("column flags")?;
        let type_oid = self.u32("column type")?;
        let type_modifier = self.i32("column type modifier")?;
        let name = self.str("column name")?;
        Ok(Column {
            name,
            type_oid,
            type_modifier,
            is_key: flags & COLUMN_IS_KEY != 0,
        })
    }
}

/// Decodes one message. Names and values borrow from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader { bytes };
    let message = match r.u8("tag")? {
        TAG_BEGIN => {
            r.version()?;
            Message::Begin(Begin {
                xid: r.u32("xid")?,
                final_lsn: r.lsn("final LSN")?,
                commit_time: r.i64("commit time")?,
            })
        }
        TAG_COMMIT => Message::Commit(Commit {
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.i64("commit time")?,
        }),
        TAG_RELATION => {
            let oid = r.u32("relation oid")?;
            let identity_byte = r.u8("replica identity")?;
            let replica_identity = ReplicaIdentity::from_byte(identity_byte)
                .ok_or(DecodeError::UnknownReplicaIdentity(identity_byte))?;
            let schema = r.str("schema")?;
            let name = r.str("relation name")?;
            let count = r.length("column count")?;
            let start = r.bytes;
            for _ in 0..count {
                r.column()?;
            }
            let used = start.len() - r.bytes.len();
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns: Columns {
                    count,
                    bytes: &start[..used],
                },
            })
        }
        TAG_INSERT => Message::Insert {
            relation_oid: r.u32("relation oid")?,
            new: r.tuple()?,
        },
        TAG_UPDATE => Message::Update {
            relation_oid: r.u32("relation oid")?,
            old: r.old_values()?,
            new: r.tuple()?,
        },
        TAG_DELETE => Message::Delete {
            relation_oid: r.u32("relation oid")?,
            old: r.old_values()?,
        },
        TAG_TRUNCATE => {
            let flags = r.u8("truncate flags")?;
            let count = r.length("relation count")?;
            let len = count.checked_mul(4).ok_or(DecodeError::BadVarint)?;
            Message::Truncate(Truncate {
                cascade: flags & TRUNCATE_CASCADE != 0,
                restart_seqs: flags & TRUNCATE_RESTART_SEQS != 0,
                relation_oids: Oids {
                    bytes: r.take(len, "relation oids")?,
                },
            })
        }
        TAG_MESSAGE => {
            r.version()?;
            Message::Message(LogicalMessage {
                transactional: r.u8("message flags")? & MESSAGE_TRANSACTIONAL != 0,
                lsn: r.lsn("message LSN")?,
                prefix: r.str("message prefix")?,
                content: r.bytes("message content")?,
            })
        }
        other => return Err(DecodeError::UnknownTag(other)),
    };
    match r.bytes.len() {
        0 => Ok(message),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

/// A tuple's values, checked at decode time; iterate with [`Tuple::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Tuple<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = Value<'a>> + 'a {
        let mut r = Reader { bytes: self.bytes };
        (0..self.count).map(move |_| r.value().expect("tuple checked when decoded"))
    }
}

/// A RELATION's columns, checked at decode time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Columns<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Column<'a>> + 'a {
        let mut r = Reader { bytes: self.bytes };
        (0..self.count).map(move |_| r.column().expect("columns checked when decoded"))
    }
}

/// TRUNCATE's relation oids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oids<'a> {
    bytes: &'a [u8],
}

impl<'a> Oids<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.bytes
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("chunks of 4")))
    }
}

// ---------------------------------------------------------------------------------------------------
// Encoding: append-only writers into a reused buffer, so the plugin builds a whole message in Rust
// memory and hands it to Postgres in one call.

#[allow(clippy::cast_possible_truncation)] // each byte is masked to 7 bits (the last is < 0x80)
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7F) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn encode_begin(out: &mut Vec<u8>, begin: &Begin) {
    out.extend_from_slice(&[TAG_BEGIN, FORMAT_VERSION]);
    out.extend_from_slice(&begin.xid.to_be_bytes());
    out.extend_from_slice(&begin.final_lsn.0.to_be_bytes());
    out.extend_from_slice(&begin.commit_time.to_be_bytes());
}

pub fn encode_commit(out: &mut Vec<u8>, commit: &Commit) {
    out.push(TAG_COMMIT);
    out.extend_from_slice(&commit.commit_lsn.0.to_be_bytes());
    out.extend_from_slice(&commit.end_lsn.0.to_be_bytes());
    out.extend_from_slice(&commit.commit_time.to_be_bytes());
}

/// Starts a RELATION; follow with exactly `column_count` [`encode_column`] calls. Names are bytes
/// because the plugin has them as C strings (UTF-8: the plugin refuses other database encodings).
pub fn encode_relation_start(
    out: &mut Vec<u8>,
    oid: u32,
    replica_identity: ReplicaIdentity,
    schema: &[u8],
    name: &[u8],
    column_count: usize,
) {
    out.push(TAG_RELATION);
    out.extend_from_slice(&oid.to_be_bytes());
    out.push(replica_identity.as_byte());
    put_bytes(out, schema);
    put_bytes(out, name);
    put_varint(out, column_count as u64);
}

pub fn encode_column(out: &mut Vec<u8>, name: &[u8], type_oid: u32, type_modifier: i32, is_key: bool) {
    out.push(if is_key { COLUMN_IS_KEY } else { 0 });
    out.extend_from_slice(&type_oid.to_be_bytes());
    out.extend_from_slice(&type_modifier.to_be_bytes());
    put_bytes(out, name);
}

/// Starts an INSERT; follow with one tuple ([`encode_tuple_start`] and its values).
pub fn encode_insert_start(out: &mut Vec<u8>, relation_oid: u32) {
    out.push(TAG_INSERT);
    out.extend_from_slice(&relation_oid.to_be_bytes());
}

/// Which old values an UPDATE or DELETE carries, for the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    None,
    Key,
    Row,
}

/// Starts an UPDATE; follow with the old tuple (unless `OldKind::None`), then the new tuple.
pub fn encode_update_start(out: &mut Vec<u8>, relation_oid: u32, old: OldKind) {
    out.push(TAG_UPDATE);
    out.extend_from_slice(&relation_oid.to_be_bytes());
    out.push(old_kind_byte(old));
}

/// Starts a DELETE; follow with the old tuple (unless `OldKind::None`).
pub fn encode_delete_start(out: &mut Vec<u8>, relation_oid: u32, old: OldKind) {
    out.push(TAG_DELETE);
    out.extend_from_slice(&relation_oid.to_be_bytes());
    out.push(old_kind_byte(old));
}

fn old_kind_byte(old: OldKind) -> u8 {
    match old {
        OldKind::None => OLD_NONE,
        OldKind::Key => OLD_KEY,
        OldKind::Row => OLD_ROW,
    }
}

/// Starts a tuple; follow with exactly `column_count` values.
pub fn encode_tuple_start(out: &mut Vec<u8>, column_count: usize) {
    put_varint(out, column_count as u64);
}

pub fn encode_null(out: &mut Vec<u8>) {
    put_varint(out, VALUE_NULL);
}

pub fn encode_unchanged_toast(out: &mut Vec<u8>) {
    put_varint(out, VALUE_UNCHANGED_TOAST);
}

/// A value as its type's output function wrote it (UTF-8).
pub fn encode_text(out: &mut Vec<u8>, text: &[u8]) {
    put_varint(out, text.len() as u64 + VALUE_TEXT_BASE);
    out.extend_from_slice(text);
}

pub fn encode_truncate(out: &mut Vec<u8>, cascade: bool, restart_seqs: bool, relation_oids: &[u32]) {
    out.push(TAG_TRUNCATE);
    let mut flags = 0;
    if cascade {
        flags |= TRUNCATE_CASCADE;
    }
    if restart_seqs {
        flags |= TRUNCATE_RESTART_SEQS;
    }
    out.push(flags);
    put_varint(out, relation_oids.len() as u64);
    for oid in relation_oids {
        out.extend_from_slice(&oid.to_be_bytes());
    }
}

/// A logical message; the prefix as bytes (a C string in the plugin).
pub fn encode_message(out: &mut Vec<u8>, transactional: bool, lsn: Lsn, prefix: &[u8], content: &[u8]) {
    out.extend_from_slice(&[TAG_MESSAGE, FORMAT_VERSION]);
    out.push(if transactional { MESSAGE_TRANSACTIONAL } else { 0 });
    out.extend_from_slice(&lsn.0.to_be_bytes());
    put_bytes(out, prefix);
    put_bytes(out, content);
}

// ---------------------------------------------------------------------------------------------------
// The `tables` option: which tables' changes the plugin emits.

/// One entry of the `tables` option: `schema.table`, or `schema.prefix%` (the sync rules' wildcard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    pub schema: String,
    /// The table name, or the prefix of a wildcard pattern (without `%`).
    pub name: String,
    pub wildcard: bool,
}

impl TablePattern {
    pub fn matches(&self, schema: &[u8], name: &[u8]) -> bool {
        self.schema.as_bytes() == schema
            && if self.wildcard {
                name.starts_with(self.name.as_bytes())
            } else {
                self.name.as_bytes() == name
            }
    }
}

/// Why a `tables` option value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablesOptionError {
    pub entry: String,
    pub reason: &'static str,
}

impl fmt::Display for TablesOptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid entry {:?} in option \"tables\": {} (expected a comma-separated list of \
             schema.table, a table name may end in % to match by prefix, names may be double-quoted)",
            self.entry, self.reason
        )
    }
}

impl std::error::Error for TablesOptionError {}

/// Parses the `tables` option: `schema.table` entries separated by commas. Names are case-sensitive
/// and taken as written (no lower-casing, unlike SQL identifiers), as sync rules compare them; a name
/// containing `.`, `,` or `"` is double-quoted with `""` for a quote. A trailing `%` on the table name
/// makes the entry a prefix match.
pub fn parse_tables_option(value: &str) -> Result<Vec<TablePattern>, TablesOptionError> {
    let mut patterns = Vec::new();
    let mut rest = value;
    loop {
        let entry_start = rest;
        let error = |reason| TablesOptionError {
            entry: entry_start
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            reason,
        };
        let (schema, after) = parse_name(rest.trim_start()).map_err(error)?;
        let after = after
            .strip_prefix('.')
            .ok_or_else(|| error("missing \".\" between schema and table"))?;
        let (table, after) = parse_name(after).map_err(error)?;
        let (name, wildcard) = match table.strip_suffix('%') {
            Some(prefix) => (prefix.to_owned(), true),
            None => (table, false),
        };
        patterns.push(TablePattern {
            schema,
            name,
            wildcard,
        });
        let after = after.trim_start();
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(patterns),
            None => return Err(error("unexpected text after the table name")),
        }
    }
}

/// One name, bare (up to `.`, `,` or the end, surrounding spaces trimmed) or double-quoted.
fn parse_name(input: &str) -> Result<(String, &str), &'static str> {
    if let Some(quoted) = input.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
            } else if quoted[i + 1..].starts_with('"') {
                name.push('"');
                chars.next();
            } else if name.is_empty() {
                return Err("empty name");
            } else {
                return Ok((name, &quoted[i + 1..]));
            }
        }
        return Err("unterminated double quote");
    }
    let end = input.find(['.', ',']).unwrap_or(input.len());
    let name = input[..end].trim();
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('"') {
        return Err("a double quote inside an unquoted name");
    }
    Ok((name.to_owned(), &input[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_layout_is_tag_version_then_big_endian_fields() {
        let mut out = Vec::new();
        encode_begin(
            &mut out,
            &Begin {
                xid: 0x0102_0304,
                final_lsn: Lsn(0x1122_3344_5566_7788),
                commit_time: -2,
            },
        );
        let mut expected = vec![
            b'B', 1, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
        ];
        expected.extend_from_slice(&(-2i64).to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn value_headers_share_one_varint_with_the_length() {
        let mut out = Vec::new();
        encode_insert_start(&mut out, 7);
        encode_tuple_start(&mut out, 4);
        encode_null(&mut out);
        encode_unchanged_toast(&mut out);
        encode_text(&mut out, b"hi");
        encode_text(&mut out, &[b'x'; 200]);
        assert_eq!(&out[..10], &[b'I', 0, 0, 0, 7, 4, 0, 1, 4, b'h']);
        // 202 = 0b1_1001010 → LEB128 0xCA 0x01
        assert_eq!(&out[11..13], &[0xCA, 0x01]);
        let Message::Insert { relation_oid, new } = decode(&out).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(relation_oid, 7);
        let values: Vec<_> = new.values().collect();
        assert_eq!(
            values[..3],
            [Value::Null, Value::UnchangedToast, Value::Text("hi")]
        );
        assert_eq!(values[3], Value::Text(&"x".repeat(200)));
    }

    #[test]
    fn decoder_refuses_other_versions_truncation_and_trailing_bytes() {
        let mut out = Vec::new();
        encode_message(&mut out, false, Lsn(5), b"powersync", b"1");
        assert!(decode(&out).is_ok());
        let mut wrong_version = out.clone();
        wrong_version[1] = 2;
        assert_eq!(decode(&wrong_version), Err(DecodeError::UnsupportedVersion(2)));
        for cut in 0..out.len() {
            assert!(
                matches!(decode(&out[..cut]), Err(DecodeError::Truncated(_))),
                "cut at {cut}"
            );
        }
        out.push(0);
        assert_eq!(decode(&out), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownTag(b'Z')));
    }

    #[test]
    fn non_utf8_values_are_refused() {
        let mut out = Vec::new();
        encode_insert_start(&mut out, 1);
        encode_tuple_start(&mut out, 1);
        encode_text(&mut out, &[0xFF]);
        assert_eq!(decode(&out), Err(DecodeError::NotUtf8("value")));
    }

    #[test]
    fn overlong_varints_are_refused() {
        let mut out = vec![b'T', 0];
        out.extend_from_slice(&[0xFF; 10]);
        out.push(0);
        assert_eq!(decode(&out), Err(DecodeError::BadVarint));
    }

    #[test]
    fn tables_option_parses_plain_quoted_and_wildcard_names() {
        let patterns =
            parse_tables_option(r#" public.todos , app.lists_% ,"my.schema"."Odd ""name"",x""#).unwrap();
        assert_eq!(
            patterns,
            vec![
                TablePattern {
                    schema: "public".into(),
                    name: "todos".into(),
                    wildcard: false
                },
                TablePattern {
                    schema: "app".into(),
                    name: "lists_".into(),
                    wildcard: true
                },
                TablePattern {
                    schema: "my.schema".into(),
                    name: "Odd \"name\",x".into(),
                    wildcard: false
                },
            ]
        );
        assert!(patterns[0].matches(b"public", b"todos"));
        assert!(!patterns[0].matches(b"public", b"todos2"));
        assert!(patterns[1].matches(b"app", b"lists_2024"));
        assert!(!patterns[1].matches(b"public", b"lists_2024"));
    }

    #[test]
    fn tables_option_errors_name_the_entry() {
        let err = parse_tables_option("public.todos,lists").unwrap_err();
        assert_eq!(err.entry, "lists");
        assert_eq!(err.reason, "missing \".\" between schema and table");
        assert!(parse_tables_option("").is_err());
        assert!(parse_tables_option("public.").is_err());
        assert!(parse_tables_option("public.a,").is_err());
        assert!(parse_tables_option("\"public.a").is_err());
        assert!(parse_tables_option("public.a b.c").is_err());
    }

    #[test]
    fn lsn_displays_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
    }

    mod round_trip {
        use super::super::*;
        use proptest::prelude::*;

        /// An owned model of every message, encoded with the writers and compared with what decodes.
        #[derive(Debug, Clone, PartialEq)]
        enum Model {
            Begin(Begin),
            Commit(Commit),
            Relation {
                oid: u32,
                identity: ReplicaIdentity,
                schema: String,
                name: String,
                columns: Vec<(String, u32, i32, bool)>,
            },
            Insert(u32, Vec<ModelValue>),
            Update(u32, Option<(OldKind, Vec<ModelValue>)>, Vec<ModelValue>),
            Delete(u32, Option<(OldKind, Vec<ModelValue>)>),
            Truncate(bool, bool, Vec<u32>),
            Message(bool, u64, String, Vec<u8>),
        }

        #[derive(Debug, Clone, PartialEq)]
        enum ModelValue {
            Null,
            UnchangedToast,
            Text(String),
        }

        fn put_tuple(out: &mut Vec<u8>, values: &[ModelValue]) {
            encode_tuple_start(out, values.len());
            for value in values {
                match value {
                    ModelValue::Null => encode_null(out),
                    ModelValue::UnchangedToast => encode_unchanged_toast(out),
                    ModelValue::Text(text) => encode_text(out, text.as_bytes()),
                }
            }
        }

        fn encode_model(model: &Model) -> Vec<u8> {
            let mut out = Vec::new();
            match model {
                Model::Begin(begin) => encode_begin(&mut out, begin),
                Model::Commit(commit) => encode_commit(&mut out, commit),
                Model::Relation {
                    oid,
                    identity,
                    schema,
                    name,
                    columns,
                } => {
                    encode_relation_start(
                        &mut out,
                        *oid,
                        *identity,
                        schema.as_bytes(),
                        name.as_bytes(),
                        columns.len(),
                    );
                    for (name, type_oid, typmod, is_key) in columns {
                        encode_column(&mut out, name.as_bytes(), *type_oid, *typmod, *is_key);
                    }
                }
                Model::Insert(oid, new) => {
                    encode_insert_start(&mut out, *oid);
                    put_tuple(&mut out, new);
                }
                Model::Update(oid, old, new) => {
                    encode_update_start(&mut out, *oid, old.as_ref().map_or(OldKind::None, |o| o.0));
                    if let Some((_, values)) = old {
                        put_tuple(&mut out, values);
                    }
                    put_tuple(&mut out, new);
                }
                Model::Delete(oid, old) => {
                    encode_delete_start(&mut out, *oid, old.as_ref().map_or(OldKind::None, |o| o.0));
                    if let Some((_, values)) = old {
                        put_tuple(&mut out, values);
                    }
                }
                Model::Truncate(cascade, restart, oids) => {
                    encode_truncate(&mut out, *cascade, *restart, oids)
                }
                Model::Message(transactional, lsn, prefix, content) => {
                    encode_message(&mut out, *transactional, Lsn(*lsn), prefix.as_bytes(), content)
                }
            }
            out
        }

        fn tuple_model(tuple: Tuple<'_>) -> Vec<ModelValue> {
            tuple
                .values()
                .map(|v| match v {
                    Value::Null => ModelValue::Null,
                    Value::UnchangedToast => ModelValue::UnchangedToast,
                    Value::Text(text) => ModelValue::Text(text.to_owned()),
                })
                .collect()
        }

        fn old_model(old: Option<OldValues<'_>>) -> Option<(OldKind, Vec<ModelValue>)> {
            old.map(|old| match old {
                OldValues::Key(t) => (OldKind::Key, tuple_model(t)),
                OldValues::Row(t) => (OldKind::Row, tuple_model(t)),
            })
        }

        fn model_of(message: Message<'_>) -> Model {
            match message {
                Message::Begin(begin) => Model::Begin(begin),
                Message::Commit(commit) => Model::Commit(commit),
                Message::Relation(r) => Model::Relation {
                    oid: r.oid,
                    identity: r.replica_identity,
                    schema: r.schema.to_owned(),
                    name: r.name.to_owned(),
                    columns: r
                        .columns
                        .iter()
                        .map(|c| (c.name.to_owned(), c.type_oid, c.type_modifier, c.is_key))
                        .collect(),
                },
                Message::Insert { relation_oid, new } => Model::Insert(relation_oid, tuple_model(new)),
                Message::Update {
                    relation_oid,
                    old,
                    new,
                } => Model::Update(relation_oid, old_model(old), tuple_model(new)),
                Message::Delete { relation_oid, old } => Model::Delete(relation_oid, old_model(old)),
                Message::Truncate(t) => {
                    Model::Truncate(t.cascade, t.restart_seqs, t.relation_oids.iter().collect())
                }
                Message::Message(m) => {
                    Model::Message(m.transactional, m.lsn.0, m.prefix.to_owned(), m.content.to_vec())
                }
            }
        }

        fn value() -> impl Strategy<Value = ModelValue> {
            prop_oneof![
                Just(ModelValue::Null),
                Just(ModelValue::UnchangedToast),
                // Lengths across the one- and two-byte varint boundary (126 = 127 + 1 - 2).
                ".{0,140}".prop_map(ModelValue::Text),
            ]
        }

        fn tuple() -> impl Strategy<Value = Vec<ModelValue>> {
            prop::collection::vec(value(), 0..12)
        }

        fn old() -> impl Strategy<Value = Option<(OldKind, Vec<ModelValue>)>> {
            prop_oneof![
                Just(None),
                tuple().prop_map(|t| Some((OldKind::Key, t))),
                tuple().prop_map(|t| Some((OldKind::Row, t))),
            ]
        }

        fn identity() -> impl Strategy<Value = ReplicaIdentity> {
            prop_oneof![
                Just(ReplicaIdentity::Default),
                Just(ReplicaIdentity::Nothing),
                Just(ReplicaIdentity::Full),
                Just(ReplicaIdentity::Index),
            ]
        }

        fn model() -> impl Strategy<Value = Model> {
            prop_oneof![
                (any::<u32>(), any::<u64>(), any::<i64>()).prop_map(|(xid, lsn, time)| Model::Begin(Begin {
                    xid,
                    final_lsn: Lsn(lsn),
                    commit_time: time
                })),
                (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(c, e, time)| Model::Commit(Commit {
                    commit_lsn: Lsn(c),
                    end_lsn: Lsn(e),
                    commit_time: time
                })),
                (
                    any::<u32>(),
                    identity(),
                    ".{0,20}",
                    ".{0,70}",
                    prop::collection::vec((".{0,20}", any::<u32>(), any::<i32>(), any::<bool>()), 0..8)
                )
                    .prop_map(|(oid, identity, schema, name, columns)| Model::Relation {
                        oid,
                        identity,
                        schema,
                        name,
                        columns
                    }),
                (any::<u32>(), tuple()).prop_map(|(oid, t)| Model::Insert(oid, t)),
                (any::<u32>(), old(), tuple()).prop_map(|(oid, o, t)| Model::Update(oid, o, t)),
                (any::<u32>(), old()).prop_map(|(oid, o)| Model::Delete(oid, o)),
                (
                    any::<bool>(),
                    any::<bool>(),
                    prop::collection::vec(any::<u32>(), 0..6)
                )
                    .prop_map(|(c, r, oids)| Model::Truncate(c, r, oids)),
                (
                    any::<bool>(),
                    any::<u64>(),
                    ".{0,12}",
                    prop::collection::vec(any::<u8>(), 0..300)
                )
                    .prop_map(|(t, lsn, prefix, content)| Model::Message(t, lsn, prefix, content)),
            ]
        }

        proptest! {
            #[test]
            fn every_message_round_trips(model in model()) {
                let bytes = encode_model(&model);
                let decoded = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(model_of(decoded), model);
            }

            /// A cut-off message is an error, never a panic or a shorter valid message.
            #[test]
            fn truncated_messages_are_errors(model in model(), cut in any::<prop::sample::Index>()) {
                let bytes = encode_model(&model);
                let cut = cut.index(bytes.len());
                prop_assert!(decode(&bytes[..cut]).is_err());
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                let _ = decode(&bytes);
            }
        }
    }
}
