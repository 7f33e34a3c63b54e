//! The `POST /sync/stream` request body (PROTOCOL §1.2, §6.3).
//!
//! Every field may be missing: older clients and plain HTTP readers send only some of them, and the
//! service must accept unknown extra fields. Defaults are the spec's, so code downstream never has to
//! guess what an absent field meant.

use std::fmt;

use serde_json::{Map, Value};

use crate::op_id::OpId;
use crate::{BucketName, BucketPriority};

/// The client's persistent id (a UUID per local database); keys write checkpoints (PROTOCOL §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub String);

impl ClientId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sync request body that is not valid: the gateway answers 400 (`PSYNC_S2001`) with this text.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid sync request body: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("invalid sync request body: expected a JSON object")]
    NotAnObject,
}

/// The body of `POST /sync/stream`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncRequest {
    /// Buckets the client already holds and its position in each; omitted buckets start at 0.
    #[serde(default)]
    pub buckets: Vec<BucketPosition>,
    /// Legacy flag, always `true` from current clients; ignored.
    #[serde(default = "yes")]
    pub include_checksum: bool,
    /// `true`: PUT `data` stays a string. The only mode the client supports, hence the default.
    #[serde(default = "yes")]
    pub raw_data: bool,
    /// Legacy workaround for old services; ignored.
    #[serde(default)]
    pub binary_data: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    /// Client parameters for sync rules (unauthenticated). JS sends `{}`, the core may send `null`: both
    /// read as "none given".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Sync-stream subscriptions; missing means defaults only.
    #[serde(default)]
    pub streams: StreamsRequest,
    /// For logging only (string → string from the SDK; any JSON accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_metadata: Option<Map<String, Value>>,
    /// Old filter never sent by current clients; kept so it can be honoured or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl Default for SyncRequest {
    fn default() -> Self {
        SyncRequest {
            buckets: Vec::new(),
            include_checksum: true,
            raw_data: true,
            binary_data: false,
            client_id: None,
            parameters: None,
            streams: StreamsRequest::default(),
            app_metadata: None,
            only: None,
        }
    }
}

impl SyncRequest {
    /// Parses a request body. An empty body is not valid JSON and is rejected like any malformed one.
    pub fn from_json(body: &[u8]) -> Result<Self, RequestError> {
        // serde's derived struct visitor also accepts a JSON array (fields by position); a body that is
        // not an object is a client bug, so it is refused rather than read positionally.
        if body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[')
        {
            return Err(RequestError::NotAnObject);
        }
        serde_json::from_slice(body).map_err(RequestError::Malformed)
    }
}

/// `{name, after}`: the client has every op of `name` up to `after`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketPosition {
    pub name: BucketName,
    pub after: OpId,
}

/// `streams` of the request (PROTOCOL §6.3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamsRequest {
    #[serde(default = "yes")]
    pub include_defaults: bool,
    /// Explicit subscriptions; the index in this list is the subscription's id for this connection.
    #[serde(default)]
    pub subscriptions: Vec<StreamSubscription>,
}

impl Default for StreamsRequest {
    fn default() -> Self {
        StreamsRequest {
            include_defaults: true,
            subscriptions: Vec::new(),
        }
    }
}

/// One explicit sync-stream subscription.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamSubscription {
    pub stream: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub override_priority: Option<BucketPriority>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_optional() {
        let req = SyncRequest::from_json(b"{}").unwrap();
        assert_eq!(req, SyncRequest::default());
        assert!(req.streams.include_defaults && req.streams.subscriptions.is_empty());
        assert!(req.raw_data && req.include_checksum && !req.binary_data);
    }

    #[test]
    fn full_body_with_unknown_fields() {
        let body = br#"{"buckets":[{"name":"global[]","after":"1207"}],"include_checksum":true,"raw_data":true,
            "binary_data":true,"client_id":"c1","parameters":null,"future_field":[1],
            "streams":{"include_defaults":false,"subscriptions":[{"stream":"s","parameters":{"a":1},"override_priority":1}]},
            "app_metadata":{"app":"x"}}"#;
        let req = SyncRequest::from_json(body).unwrap();
        assert_eq!(req.buckets[0].after.get(), 1207);
        assert_eq!(req.buckets[0].name.as_str(), "global[]");
        assert_eq!(req.client_id, Some(ClientId("c1".into())));
        assert_eq!(req.parameters, None);
        assert!(!req.streams.include_defaults);
        assert_eq!(
            req.streams.subscriptions[0].override_priority,
            BucketPriority::new(1)
        );
    }

    #[test]
    fn malformed_bodies_are_clear_errors() {
        for body in [
            &b""[..],
            b"[]",
            b"{\"buckets\":[{\"name\":\"a\",\"after\":5}]}",
            b"{\"raw_data\":\"yes\"}",
        ] {
            let err = SyncRequest::from_json(body).unwrap_err();
            assert!(err.to_string().starts_with("invalid sync request body"), "{err}");
        }
    }
}
