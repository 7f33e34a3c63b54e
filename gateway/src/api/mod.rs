//! The sync API (PROTOCOL §1): `POST /sync/stream`, write checkpoints, probes and `/metrics`, all on the
//! one configured port.
//!
//! [`session`] decides what each stream sends; [`http`] is the warp server that authenticates requests
//! and frames lines ([`encoding`]); [`websocket`] serves the same sessions over RSocket-over-WebSocket
//! ([`rsocket`] frames); [`write_checkpoint`] records write checkpoints and emits the WAL
//! marker that acknowledges them. [`dashboard`] serves the diagnostics page (off unless enabled), with
//! the open streams from [`clients`].

pub mod clients;
pub mod dashboard;
pub mod encoding;
pub mod http;
pub mod metrics;
/// The RSocket frame codec lives in the protocol crate (the client speaks it too).
pub use syncgate_protocol::rsocket;
pub mod session;
mod wake;
pub mod websocket;
pub mod write_checkpoint;

#[cfg(test)]
mod session_tests;

use std::future::Future;
use std::pin::Pin;

pub use http::{ApiConfig, ApiState, NodeStatus, bind_listener, serve_api};
pub use metrics::ApiMetrics;
pub use session::{Session, SessionClaims, SessionEnd, SessionEnv, SessionError, SessionLimits, SharedReads};

/// An error answered before a stream starts: status and the reference's JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({status}): {description}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub name: &'static str,
    pub description: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, name: &'static str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            name,
            description: description.into(),
        }
    }

    /// 400 `PSYNC_S2001`: the request is malformed.
    pub fn validation(description: impl Into<String>) -> Self {
        ApiError::new(400, "PSYNC_S2001", "ValidationError", description)
    }

    /// 401 `PSYNC_S21xx`.
    pub fn unauthorized(code: &'static str, description: impl Into<String>) -> Self {
        ApiError::new(401, code, "AuthorizationError", description)
    }

    /// 503 `PSYNC_S2003`: shutting down or over a limit; the client retries.
    pub fn unavailable(description: impl Into<String>) -> Self {
        ApiError::new(503, "PSYNC_S2003", "ServiceUnavailable", description)
    }

    pub fn internal(description: impl Into<String>) -> Self {
        ApiError::new(500, "PSYNC_S2001", "InternalError", description)
    }

    /// The reference's body, fields in its order:
    /// `{"error":{"code":"PSYNC_S2103","status":401,"description":"JWT has expired","name":"AuthorizationError"}}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {
            "code": self.code,
            "status": self.status,
            "description": self.description,
            "name": self.name,
        }})
        .to_string()
    }
}

/// Verifies the `Authorization` header (or the RSocket setup's token) of a request.
pub trait Authenticate: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<SessionClaims, ApiError>> + Send + 'a>>;
}

impl Authenticate for crate::auth::Authenticator {
    fn authenticate<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<SessionClaims, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let claims = crate::auth::Authenticator::authenticate(self, authorization)
                .await
                .map_err(|e| ApiError::unauthorized(e.code(), e.description()))?;
            Ok(SessionClaims {
                user_id: claims.user_id().0.clone(),
                payload: claims.payload(),
                expires_at: claims.expires_at_unix(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_match_the_reference_byte_for_byte() {
        let golden = include_str!("../../../testdata/golden/error-expired-token.http.txt");
        let body = golden[golden.find("{\"error\"").expect("body")..].trim_end();
        assert_eq!(
            ApiError::unauthorized("PSYNC_S2103", "JWT has expired").body(),
            body
        );
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        // Port 0: the test only needs some free port; the option must reach the accepted socket.
        let listener = bind_listener(0).expect("bind");
        let port = listener.local_addr().expect("address").port();
        let _client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }
}
