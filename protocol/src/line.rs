//! Sync lines, server → client (PROTOCOL §2), and their NDJSON framing.
//!
//! A line is a JSON object with exactly one key, the line type (`{"checkpoint": {...}}`). Field names,
//! order and value types follow the reference's golden transcripts: op ids are strings, checksums
//! numbers (bucket checksums signed), PUT `data` a JSON-encoded string.

use std::fmt;

use crate::checksum::{self, Checksum};
use crate::op_id::{OpId, WriteCheckpointId};
use crate::oplog::OplogEntry;
use crate::{BucketName, BucketPriority};

/// One sync line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncLine {
    /// The full bucket set at a checkpoint; resets the client's state for this connection.
    Checkpoint(Checkpoint),
    /// Changes against the previous checkpoint of this connection.
    CheckpointDiff(CheckpointDiff),
    /// Ops of one bucket.
    Data(DataLine),
    /// Everything of the current checkpoint was sent: validate and apply.
    CheckpointComplete(CheckpointComplete),
    /// Every bucket with priority number ≤ `priority` was sent.
    PartialCheckpointComplete(PartialCheckpointComplete),
    /// Keepalive: seconds until the token expires (ceil, never negative). 0 ends the stream.
    TokenExpiresIn(i32),
}

/// Line type keys this crate knows; any other single key is a line the client must skip.
const KNOWN_LINE_TYPES: [&str; 6] = [
    "checkpoint",
    "checkpoint_diff",
    "data",
    "checkpoint_complete",
    "partial_checkpoint_complete",
    "token_expires_in",
];

/// A line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("invalid sync line: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid sync line: expected an object with exactly one key, the line type")]
    NotOneKey,
}

impl SyncLine {
    /// The line as compact JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("sync lines have string keys and no failing Serialize impls")
    }

    /// Appends the line as NDJSON: one compact JSON object and `\n`.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("writing to a Vec cannot fail; sync lines serialize");
        out.push(b'\n');
    }

    /// Parses one line as the client does: surrounding whitespace is trimmed; a known line type must
    /// parse or it is an error; an object with one *unknown* key yields `Ok(None)` (skip it).
    pub fn from_json(text: &str) -> Result<Option<SyncLine>, LineError> {
        let text = text.trim();
        match serde_json::from_str::<SyncLine>(text) {
            Ok(line) => Ok(Some(line)),
            // The fast path failed: find out whether it is an unknown line type or a broken line.
            Err(err) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value) => Self::from_value(value),
                Err(_) => Err(LineError::Json(err)),
            },
        }
    }

    /// Reads an already parsed line (JSON, or a decoded BSON document) with the rules of
    /// [`SyncLine::from_json`].
    pub fn from_value(value: serde_json::Value) -> Result<Option<SyncLine>, LineError> {
        match &value {
            serde_json::Value::Object(map) if map.len() == 1 => {
                if !map.keys().any(|k| KNOWN_LINE_TYPES.contains(&k.as_str())) {
                    return Ok(None);
                }
            }
            _ => return Err(LineError::NotOneKey),
        }
        serde_json::from_value(value).map(Some).map_err(LineError::Json)
    }
}

impl fmt::Display for SyncLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// `checkpoint` (PROTOCOL §2.2).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub last_op_id: OpId,
    /// Latest acknowledged write checkpoint of `(sub, client_id)`; omitted when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_checkpoint: Option<WriteCheckpointId>,
    pub buckets: Vec<BucketChecksum>,
    #[serde(default)]
    pub streams: Vec<StreamDescription>,
}

/// `checkpoint_diff` (PROTOCOL §2.3). Repeat `write_checkpoint` in every diff: an absent one clears it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointDiff {
    pub last_op_id: OpId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_checkpoint: Option<WriteCheckpointId>,
    pub removed_buckets: Vec<BucketName>,
    pub updated_buckets: Vec<BucketChecksum>,
}

/// A bucket's state at a checkpoint (PROTOCOL §2.8).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketChecksum {
    pub bucket: BucketName,
    /// Wrapping sum of the bucket's op checksums up to the checkpoint; sent as signed i32.
    #[serde(with = "checksum::signed")]
    pub checksum: Checksum,
    /// Number of ops up to the checkpoint; drives progress only.
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub priority: BucketPriority,
    /// Why the bucket is included (PROTOCOL §6.3).
    #[serde(default)]
    pub subscriptions: Vec<BucketSubscription>,
}

/// `{"default": k}` (index into `checkpoint.streams`) or `{"sub": i}` (index into the request's
/// subscriptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketSubscription {
    Default(u32),
    Sub(u32),
}

/// An entry of `checkpoint.streams`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamDescription {
    pub name: String,
    pub is_default: bool,
    pub errors: Vec<StreamError>,
}

/// A stream that could not be resolved for a subscription.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamError {
    pub subscription: SubscriptionRef,
    pub message: String,
}

/// `"default"` or the index of an explicit subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionRef {
    Default,
    Explicit(u32),
}

impl serde::Serialize for SubscriptionRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SubscriptionRef::Default => serializer.serialize_str("default"),
            SubscriptionRef::Explicit(i) => serializer.serialize_u32(*i),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SubscriptionRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        impl serde::de::Visitor<'_> for RefVisitor {
            type Value = SubscriptionRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"default\" or a subscription index")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SubscriptionRef, E> {
                if v == "default" {
                    Ok(SubscriptionRef::Default)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SubscriptionRef, E> {
                u32::try_from(v)
                    .map(SubscriptionRef::Explicit)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SubscriptionRef, E> {
                u32::try_from(v)
                    .map(SubscriptionRef::Explicit)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        deserializer.deserialize_any(RefVisitor)
    }
}

/// `data` (PROTOCOL §2.4): ops of one bucket, strictly ascending `op_id`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataLine {
    pub bucket: BucketName,
    /// Start position of this chunk (ignored by core 0.5.3, used by older SDKs: always sent).
    pub after: OpId,
    /// Whether more ops of this bucket follow for this checkpoint.
    #[serde(default)]
    pub has_more: bool,
    pub data: Vec<OplogEntry>,
    /// Op id of the chunk's last op.
    pub next_after: OpId,
}

/// `checkpoint_complete` (PROTOCOL §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointComplete {
    pub last_op_id: OpId,
}

/// `partial_checkpoint_complete` (PROTOCOL §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartialCheckpointComplete {
    pub last_op_id: OpId,
    pub priority: BucketPriority,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_and_complete_shapes() {
        let mut out = Vec::new();
        SyncLine::TokenExpiresIn(1480).write_ndjson(&mut out);
        let id = OpId::new(1212).unwrap();
        SyncLine::CheckpointComplete(CheckpointComplete { last_op_id: id }).write_ndjson(&mut out);
        let partial = PartialCheckpointComplete {
            last_op_id: id,
            priority: BucketPriority::HIGHEST,
        };
        SyncLine::PartialCheckpointComplete(partial).write_ndjson(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"token_expires_in\":1480}\n{\"checkpoint_complete\":{\"last_op_id\":\"1212\"}}\n\
             {\"partial_checkpoint_complete\":{\"last_op_id\":\"1212\",\"priority\":0}}\n"
        );
    }

    #[test]
    fn unknown_lines_are_skipped_but_two_keys_are_errors() {
        assert!(
            SyncLine::from_json(r#"{"future_line":{"x":1}}"#)
                .unwrap()
                .is_none()
        );
        assert!(SyncLine::from_json(r#"{"checkpoint_complete":{"last_op_id":"1"},"type":"x"}"#).is_err());
        assert!(SyncLine::from_json(r#"{"checkpoint_complete":{"last_op_id":1}}"#).is_err());
        assert!(SyncLine::from_json("[1]").is_err());
        let line = SyncLine::from_json(" {\"token_expires_in\":0} \r").unwrap();
        assert_eq!(line, Some(SyncLine::TokenExpiresIn(0)));
    }

    #[test]
    fn stream_error_refs() {
        let e: StreamError = serde_json::from_str(r#"{"subscription":"default","message":"m"}"#).unwrap();
        assert_eq!(e.subscription, SubscriptionRef::Default);
        let e: StreamError = serde_json::from_str(r#"{"subscription":2,"message":"m"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"subscription":2,"message":"m"}"#
        );
    }
}
