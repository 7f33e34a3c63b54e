//! The client library's error type. Messages are written for the application developer.

use syncgate_protocol::LineError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("local database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema file is not valid JSON of the documented shape: {0}")]
    SchemaJson(#[source] serde_json::Error),
    #[error("schema file is not valid YAML of the documented shape: {0}")]
    SchemaYaml(String),
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("the database holds no schema: run `sync --schema FILE` once, or call LocalDatabase::set_schema")]
    NoSchema,
    #[error("corrupt client state in the local database: {0}")]
    CorruptState(String),
    #[error("sync protocol error: {0}")]
    Protocol(#[from] LineError),
    #[error("sync stream error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("sync protocol error: {0}")]
    BsonLine(#[from] syncgate_protocol::bson::BsonLineError),
    /// HTTP 401, or over WebSocket an ERROR frame with a `PSYNC_S21xx` code: new credentials are fetched.
    #[error("the service rejected the credentials ({0})")]
    Unauthorized(String),
    #[error("WebSocket sync stream failed: {0}")]
    WebSocket(String),
    #[error("the service ended the WebSocket sync stream with RSocket error 0x{code:x}: {message}")]
    StreamRejected { code: u32, message: String },
    #[error("the service answered HTTP {status}: {body}")]
    HttpStatus { status: u16, body: String },
    #[error(
        "the sync stream sent nothing for {0:?} (the service sends a keepalive every ~20 s); reconnecting"
    )]
    StreamIdle(std::time::Duration),
    #[error("the sync stream could not be decompressed: {0}")]
    Decompress(#[source] std::io::Error),
    #[error("could not start the sync stream's decoder thread: {0}")]
    DecoderThread(#[source] std::io::Error),
    #[error("a live query needs a database file: an in-memory database cannot be opened a second time")]
    WatchNeedsFile,
    #[error("the backend connector failed: {0}")]
    Connector(String),
}

impl ClientError {
    /// Whether retrying later may succeed (network, server and protocol hiccups) as opposed to a
    /// problem that needs the app's attention (bad schema, corrupt database).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Protocol(_)
                | ClientError::BsonLine(_)
                | ClientError::Http(_)
                | ClientError::WebSocket(_)
                | ClientError::StreamRejected { .. }
                | ClientError::Unauthorized(_)
                | ClientError::HttpStatus { .. }
                | ClientError::StreamIdle(_)
                | ClientError::Decompress(_)
                | ClientError::Connector(_)
        )
    }
}
