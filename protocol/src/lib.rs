//! # syncgate-protocol
//!
//! Wire types shared by the gateway, the rules engine and the client. No I/O: only values, their
//! JSON/NDJSON/BSON forms and the checksum arithmetic, so the gateway and a sans-IO client can both be
//! tested against the reference's golden transcripts.
//!
//! The sync protocol is PowerSync's (spec: PROTOCOL.md). In one breath: the client posts a
//! [`SyncRequest`]; the server streams [`SyncLine`]s — a [`Checkpoint`] listing every bucket with its
//! [`Checksum`] and count, [`DataLine`]s with [`OplogEntry`] ops after the client's [`OpId`], then
//! [`CheckpointComplete`]; the client applies data only when the wrapping sum of the op checksums it holds
//! matches each bucket checksum. Op ids are JSON strings, checksums numbers, PUT data a JSON string.

pub mod bson;
pub mod checksum;
pub mod line;
pub mod lsn;
pub mod op_id;
pub mod oplog;
pub mod plugin_format;
pub mod request;
pub mod response;
pub mod rsocket;

pub use checksum::Checksum;
pub use line::{
    BucketChecksum, BucketSubscription, Checkpoint, CheckpointComplete, CheckpointDiff, DataLine, LineError,
    PartialCheckpointComplete, StreamDescription, StreamError, SubscriptionRef, SyncLine,
};
pub use lsn::{Lsn, ParseLsnError};
pub use op_id::{OpId, StringIntError, WriteCheckpointId};
pub use oplog::{OpType, OplogEntry, Subkey};
pub use request::{BucketPosition, ClientId, RequestError, StreamSubscription, StreamsRequest, SyncRequest};
pub use response::{ErrorBody, ErrorCode, ErrorResponse, WriteCheckpointData, WriteCheckpointResponse};

use std::fmt;
use std::sync::Arc;

/// A bucket id as sent on the wire, e.g. `1#by_user["u1"]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BucketName(pub Arc<str>);

impl BucketName {
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        BucketName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bucket priority: 0 (most urgent) to 3 (default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BucketPriority(u8);

impl BucketPriority {
    pub const HIGHEST: BucketPriority = BucketPriority(0);
    pub const DEFAULT: BucketPriority = BucketPriority(3);

    /// A priority from 0 to 3; `None` outside that range.
    pub fn new(value: i64) -> Option<Self> {
        u8::try_from(value).ok().filter(|v| *v <= 3).map(BucketPriority)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for BucketPriority {
    fn default() -> Self {
        BucketPriority::DEFAULT
    }
}

/// The user a connection authenticates as (the JWT `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct UserId(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_range_is_zero_to_three() {
        assert_eq!(BucketPriority::new(0), Some(BucketPriority::HIGHEST));
        assert_eq!(BucketPriority::new(3), Some(BucketPriority::DEFAULT));
        assert_eq!(BucketPriority::new(4), None);
        assert_eq!(BucketPriority::new(-1), None);
        assert_eq!(BucketPriority::default().get(), 3);
    }
}
