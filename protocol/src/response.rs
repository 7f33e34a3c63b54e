//! Non-streaming JSON responses: write checkpoints (PROTOCOL §1.4, §1.5) and error bodies (§1.6, §5).
//!
//! The reference router wraps every successful non-streaming response in `{"data": ...}` and every error
//! in `{"error": ...}`; the SDK reads `response.data.write_checkpoint`, so the wrapper is part of the
//! contract, not decoration.

use crate::op_id::WriteCheckpointId;

/// `{"data": {"write_checkpoint": "88"}}` from `GET /write-checkpoint2.json`. Never send `"0"`: it
/// clears the client's apply gate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteCheckpointResponse {
    pub data: WriteCheckpointData,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteCheckpointData {
    pub write_checkpoint: WriteCheckpointId,
}

impl WriteCheckpointResponse {
    pub fn new(write_checkpoint: WriteCheckpointId) -> Self {
        WriteCheckpointResponse {
            data: WriteCheckpointData { write_checkpoint },
        }
    }
}

/// `{"data": {"checkpoint_request_id": "17"}}` from `POST /sync/checkpoint-request` (opt-in mode).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRequestResponse {
    pub data: CheckpointRequestData,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRequestData {
    pub checkpoint_request_id: WriteCheckpointId,
}

/// A `PSYNC_S....` error code as the reference sends it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub String);

impl ErrorCode {
    /// Validation error (400).
    pub const VALIDATION: &str = "PSYNC_S2001";
    /// Not found (404).
    pub const NOT_FOUND: &str = "PSYNC_S2002";
    /// Shutting down (503).
    pub const SHUTTING_DOWN: &str = "PSYNC_S2003";
    /// Unsupported media type (415).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "PSYNC_S2004";
    /// Token rejected for any other reason (401).
    pub const AUTH_FAILED: &str = "PSYNC_S2101";
    /// Token expired (401).
    pub const AUTH_EXPIRED: &str = "PSYNC_S2103";
    /// Token lifetime too long (401).
    pub const AUTH_LIFETIME: &str = "PSYNC_S2104";
    /// Token audience missing or wrong (401).
    pub const AUTH_AUDIENCE: &str = "PSYNC_S2105";
    /// Missing or garbled Authorization header (401).
    pub const AUTH_REQUIRED: &str = "PSYNC_S2106";
    /// No active sync rules (500).
    pub const NO_SYNC_RULES: &str = "PSYNC_S2302";
    /// Too many buckets for one connection.
    pub const TOO_MANY_BUCKETS: &str = "PSYNC_S2305";
}

/// `{"error": {"code", "status", "description", "name"}}`, field order as the reference writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// The HTTP status, repeated in the body.
    pub status: u16,
    pub description: String,
    /// Error class, e.g. `AuthorizationError`.
    pub name: String,
}

impl ErrorResponse {
    pub fn new(code: &str, status: u16, name: &str, description: impl Into<String>) -> Self {
        ErrorResponse {
            error: ErrorBody {
                code: ErrorCode(code.to_owned()),
                status,
                description: description.into(),
                name: name.to_owned(),
            },
        }
    }

    /// A 401 `AuthorizationError`: the only status that makes the SDK refetch credentials.
    pub fn unauthorized(code: &str, description: impl Into<String>) -> Self {
        Self::new(code, 401, "AuthorizationError", description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_checkpoint_is_wrapped_in_data() {
        let body = WriteCheckpointResponse::new(WriteCheckpointId::new(88).unwrap());
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"data":{"write_checkpoint":"88"}}"#
        );
    }

    #[test]
    fn auth_error_shape() {
        let body = ErrorResponse::unauthorized(ErrorCode::AUTH_EXPIRED, "JWT has expired");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"PSYNC_S2103","status":401,"description":"JWT has expired","name":"AuthorizationError"}}"#
        );
    }
}
