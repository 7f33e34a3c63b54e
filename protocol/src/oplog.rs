//! Bucket operations as sent in `data` lines (PROTOCOL §3.1, §3.2).
//!
//! Field presence follows the reference exactly: PUT and REMOVE carry `object_type`, `object_id`,
//! `checksum`, `subkey` and `data` (`null` for REMOVE); MOVE and CLEAR carry only `op_id`, `op` and
//! `checksum` — compaction drops the rest.

use std::fmt;

use serde::ser::SerializeStruct;

use crate::checksum::Checksum;
use crate::op_id::OpId;

/// The operation kinds. Upper case on the wire; the client rejects any other spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OpType {
    /// Insert or replace the row (full row in `data`).
    Put,
    /// The row left the bucket.
    Remove,
    /// Compaction placeholder for a superseded op; keeps its checksum.
    Move,
    /// Compaction: replaces a leading run of ops; its checksum is their sum.
    Clear,
}

/// Identifies the *source* row behind a PUT/REMOVE, so several source rows can produce one output row
/// in a bucket and a REMOVE supersedes exactly its own PUT (PROTOCOL §3.1). Opaque to the client; the
/// same source row MUST always get the same subkey, because REMOVE checksums hash it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Subkey(pub String);

impl Subkey {
    /// `<source table id>/<row identity>`, the shape the reference uses (table id, then a stable key
    /// of the row's replica identity). Both parts must be stable for the life of the row.
    pub fn for_source_row(table_id: &str, row_identity: &str) -> Self {
        Subkey(format!("{table_id}/{row_identity}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One op in a `data` line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OplogEntry {
    pub op_id: OpId,
    pub op: OpType,
    /// Client table name (`ps_data__<type>`); unknown types land in `ps_untyped`.
    #[serde(default)]
    pub object_type: Option<String>,
    /// The row's `id`.
    #[serde(default)]
    pub object_id: Option<String>,
    /// PUT only: the row as JSON object text, sent as a JSON *string* (the client rejects an object).
    #[serde(default)]
    pub data: Option<String>,
    pub checksum: Checksum,
    #[serde(default)]
    pub subkey: Option<Subkey>,
}

impl OplogEntry {
    /// A PUT whose checksum is computed from exactly the fields sent.
    pub fn put(op_id: OpId, object_type: String, object_id: String, subkey: Subkey, data: String) -> Self {
        let checksum = Checksum::of_put(&object_type, &object_id, &data);
        OplogEntry {
            op_id,
            op: OpType::Put,
            object_type: Some(object_type),
            object_id: Some(object_id),
            data: Some(data),
            checksum,
            subkey: Some(subkey),
        }
    }

    /// A REMOVE; its checksum hashes the subkey only.
    pub fn remove(op_id: OpId, object_type: String, object_id: String, subkey: Subkey) -> Self {
        let checksum = Checksum::of_remove(subkey.as_str());
        OplogEntry {
            op_id,
            op: OpType::Remove,
            object_type: Some(object_type),
            object_id: Some(object_id),
            data: None,
            checksum,
            subkey: Some(subkey),
        }
    }

    /// A compaction MOVE or CLEAR: only id, kind and checksum survive.
    pub fn compacted(op_id: OpId, op: OpType, checksum: Checksum) -> Self {
        OplogEntry {
            op_id,
            op,
            object_type: None,
            object_id: None,
            data: None,
            checksum,
            subkey: None,
        }
    }

    /// The checksum the reference algorithm gives this op, or `None` for MOVE/CLEAR (which carry the
    /// checksum of what they replaced) and for ops missing a hashed field.
    pub fn expected_checksum(&self) -> Option<Checksum> {
        match self.op {
            OpType::Put => Some(Checksum::of_put(
                self.object_type.as_deref()?,
                self.object_id.as_deref()?,
                self.data.as_deref()?,
            )),
            OpType::Remove => Some(Checksum::of_remove(self.subkey.as_ref()?.as_str())),
            OpType::Move | OpType::Clear => None,
        }
    }

    /// Whether the row fields are sent: PUT/REMOVE yes, MOVE/CLEAR no.
    pub(crate) fn has_row_fields(&self) -> bool {
        matches!(self.op, OpType::Put | OpType::Remove)
    }
}

/// Field order and presence as in the golden transcripts: `op_id, op, object_type, object_id, checksum,
/// subkey, data` for PUT/REMOVE (REMOVE with `"data": null`), `op_id, op, checksum` for MOVE/CLEAR.
impl serde::Serialize for OplogEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let row = self.has_row_fields();
        let mut s = serializer.serialize_struct("OplogEntry", if row { 7 } else { 3 })?;
        s.serialize_field("op_id", &self.op_id)?;
        s.serialize_field("op", &self.op)?;
        if row {
            s.serialize_field("object_type", &self.object_type)?;
            s.serialize_field("object_id", &self.object_id)?;
        }
        s.serialize_field("checksum", &self.checksum)?;
        if row {
            s.serialize_field("subkey", &self.subkey)?;
            s.serialize_field("data", &self.data)?;
        }
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u64) -> OpId {
        OpId::new(v).unwrap()
    }

    #[test]
    fn put_and_remove_shapes() {
        let data = r#"{"id":"t1","description":"Buy milk","done":1}"#.to_owned();
        let put = OplogEntry::put(id(1210), "todos".into(), "t1".into(), Subkey("src1".into()), data);
        assert_eq!(put.checksum.as_u32(), 601968737);
        assert_eq!(
            serde_json::to_string(&put).unwrap(),
            r#"{"op_id":"1210","op":"PUT","object_type":"todos","object_id":"t1","checksum":601968737,"subkey":"src1","data":"{\"id\":\"t1\",\"description\":\"Buy milk\",\"done\":1}"}"#
        );
        let remove = OplogEntry::remove(id(1212), "todos".into(), "t1".into(), Subkey("src1".into()));
        assert_eq!(
            serde_json::to_string(&remove).unwrap(),
            r#"{"op_id":"1212","op":"REMOVE","object_type":"todos","object_id":"t1","checksum":4206251849,"subkey":"src1","data":null}"#
        );
    }

    #[test]
    fn compacted_ops_drop_row_fields() {
        let mv = OplogEntry::compacted(id(1201), OpType::Move, Checksum::from_u32(3377212916));
        let text = serde_json::to_string(&mv).unwrap();
        assert_eq!(text, r#"{"op_id":"1201","op":"MOVE","checksum":3377212916}"#);
        assert_eq!(serde_json::from_str::<OplogEntry>(&text).unwrap(), mv);
    }

    #[test]
    fn op_kind_is_case_sensitive_and_data_must_be_a_string() {
        assert!(serde_json::from_str::<OplogEntry>(r#"{"op_id":"1","op":"put","checksum":0}"#).is_err());
        let nested = r#"{"op_id":"1","op":"PUT","checksum":0,"data":{"id":"x"}}"#;
        assert!(serde_json::from_str::<OplogEntry>(nested).is_err());
    }

    #[test]
    fn subkey_joins_table_and_row_identity() {
        assert_eq!(
            Subkey::for_source_row("t-uuid", "row-uuid").as_str(),
            "t-uuid/row-uuid"
        );
    }
}
