//! The WebSocket transport (PROTOCOL §1.3): RSocket over WebSocket, as the PowerSync SDKs use it with
//! `connectionMethod: 'web-socket'`.
//!
//! One task per connection reads frames ([`super::rsocket`]) and writes them; it never blocks on a
//! session. The first frame must be SETUP, whose metadata carries the token (`{"token": "Token <jwt>",
//! "user_agent": …}`, JSON or BSON as the SETUP's metadata MIME type says); a bad token gets an ERROR
//! on stream 0 (`REJECTED_SETUP`, message `[PSYNC_S21xx] …`) and the socket closes. A REQUEST_STREAM
//! (metadata `{"path": "/sync/stream"}`, data = the §1.2 request body) starts a [`Session`]; each sync
//! line becomes one PAYLOAD(NEXT) carrying the line as BSON, sent only while the client has request-N
//! credit. Lines the client has no credit for wait in the session's small channel, so a client that
//! stops requesting stops the session (and the session's send timeout ends it). The stream ends with
//! PAYLOAD(COMPLETE) (token expiry, shutdown) or ERROR with the session error's code; CANCEL ends it
//! silently. KEEPALIVE frames with the respond flag are answered at once; a client that sends nothing
//! for longer than its SETUP's max lifetime is disconnected.
//!
//! Not served: resumption, leases, fragmentation and the other interaction models (they are refused
//! with ERROR frames), and more than one stream at a time per connection (extra ones are refused).

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use syncgate_protocol::SyncRequest;
use syncgate_protocol::bson::decode_document;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::{Filter, Rejection, Reply};

use super::encoding::{Framing, OutLine};
use super::http::{LINE_BUFFER, reject};
use super::metrics::ConnectionGuard;
use super::rsocket::{Frame, Payload, Setup, error_code, frame_type};
use super::session::{Session, SessionClaims, SessionEnd, SessionError};
use super::{ApiError, ApiState};

/// Largest WebSocket message (and frame) accepted from a client; a sync request is far smaller.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Time a new connection has to send its SETUP.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection without an active stream for this long is closed (the SDK opens its stream at once
/// and closes the socket when the stream ends).
const IDLE_WITHOUT_STREAM: Duration = Duration::from_secs(60);
/// Bounds on the SETUP's max lifetime: a silent client is dropped after at most this long, and never
/// sooner than the lower bound whatever it asked for.
const MIN_LIFETIME: Duration = Duration::from_secs(1);
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// Upper bound on one write (a client that stops reading its socket).
const MAX_WRITE_TIME: Duration = Duration::from_secs(30);
/// The only route a REQUEST_STREAM may name.
const SYNC_STREAM_PATH: &str = "/sync/stream";

/// The upgrade filter: any path (as the reference), only requests that ask for a WebSocket upgrade.
/// Anything else is rejected as "not found", so it falls through to the HTTP routes unchanged.
pub fn route(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::header::optional::<String>("upgrade")
        .and_then(|upgrade: Option<String>| async move {
            if upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket")) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::ws())
        .and(warp::any().map(move || Arc::clone(&state)))
        .and_then(upgrade)
}

async fn upgrade(ws: Ws, state: Arc<ApiState>) -> Result<warp::reply::Response, Rejection> {
    if *state.shutdown.borrow() {
        return Err(reject(ApiError::unavailable("the gateway is shutting down")));
    }
    if let Some(error) = over_limit(&state) {
        return Err(reject(error));
    }
    let ws = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    Ok(ws
        .on_upgrade(move |socket| serve_connection(socket, state))
        .into_response())
}

fn over_limit(state: &ApiState) -> Option<ApiError> {
    let limit = u64::try_from(state.config.max_connections).unwrap_or(u64::MAX);
    (state.env.metrics.connections_open() >= limit).then(|| {
        ApiError::unavailable(format!(
            "connection limit reached ({} streams); retry later",
            state.config.max_connections
        ))
    })
}

/// How SETUP metadata and REQUEST_STREAM payloads are encoded: the SETUP's MIME types say. Recent SDKs
/// send JSON, older ones (and the JS sync client) BSON; an unknown MIME type is recognised by its
/// first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Bson,
    Sniff,
}

impl Encoding {
    fn from_mime(mime: &str) -> Encoding {
        let base = mime.split(';').next().unwrap_or_default().trim();
        if base.eq_ignore_ascii_case("application/json") {
            Encoding::Json
        } else if base.eq_ignore_ascii_case("application/bson") {
            Encoding::Bson
        } else {
            Encoding::Sniff
        }
    }

    /// Decodes a payload into JSON.
    fn decode(self, bytes: &[u8]) -> Result<Value, String> {
        let json = match self {
            Encoding::Json => true,
            Encoding::Bson => false,
            Encoding::Sniff => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        };
        if json {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
        } else {
            decode_document(bytes).map_err(|e| format!("invalid BSON: {e}"))
        }
    }
}

/// The frame that ends a connection's handling, or that it goes on.
enum Flow {
    Continue,
    Close,
}

/// The socket failed or a write timed out: nothing more can be sent.
struct Broken;

/// The connection's one active stream.
struct ActiveStream {
    id: u32,
    /// Request-N credit: PAYLOADs the client is ready for.
    credits: u64,
    lines: mpsc::Receiver<OutLine>,
    lines_done: bool,
    /// `None` once the session's outcome was received (the stream is then draining its last lines).
    outcome: Option<oneshot::Receiver<Result<SessionEnd, SessionError>>>,
    /// While draining: when to give up on a client without credit and complete anyway.
    drain_deadline: Option<Instant>,
    _connection: ConnectionGuard,
}

enum StreamEvent {
    Line(OutLine),
    Ended(Result<SessionEnd, SessionError>),
    /// The session ended cleanly and every line it queued was sent (or the drain timed out).
    Drained,
}

/// The next thing the active stream needs from the connection; pending without a stream.
async fn stream_event(stream: &mut Option<ActiveStream>) -> StreamEvent {
    let Some(stream) = stream.as_mut() else {
        return std::future::pending().await;
    };
    if stream.outcome.is_none() && stream.lines_done {
        return StreamEvent::Drained;
    }
    enum Raw {
        Outcome(Result<Result<SessionEnd, SessionError>, oneshot::error::RecvError>),
        Line(Option<OutLine>),
        Deadline,
    }
    let can_send = stream.credits > 0 && !stream.lines_done;
    let raw = {
        let ActiveStream {
            outcome,
            lines,
            drain_deadline,
            ..
        } = &mut *stream;
        tokio::select! {
            biased;
            outcome = async {
                match outcome.as_mut() {
                    Some(outcome) => outcome.await,
                    None => std::future::pending().await,
                }
            } => Raw::Outcome(outcome),
            line = lines.recv(), if can_send => Raw::Line(line),
            () = sleep_until_opt(*drain_deadline) => Raw::Deadline,
        }
    };
    match raw {
        Raw::Outcome(outcome) => {
            stream.outcome = None;
            StreamEvent::Ended(outcome.unwrap_or_else(|_| {
                Err(SessionError::Task(
                    "the session task ended without an outcome".into(),
                ))
            }))
        }
        Raw::Line(Some(line)) => StreamEvent::Line(line),
        Raw::Line(None) => {
            stream.lines_done = true;
            // The session is gone; its outcome follows at once.
            stream_event_outcome(stream).await
        }
        Raw::Deadline => StreamEvent::Drained,
    }
}

async fn stream_event_outcome(stream: &mut ActiveStream) -> StreamEvent {
    match stream.outcome.take() {
        Some(outcome) => StreamEvent::Ended(outcome.await.unwrap_or_else(|_| {
            Err(SessionError::Task(
                "the session task ended without an outcome".into(),
            ))
        })),
        None => StreamEvent::Drained,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the SETUP established.
struct Established {
    claims: SessionClaims,
    encoding: Encoding,
    user_agent: String,
}

struct Connection {
    state: Arc<ApiState>,
    sink: SplitSink<WebSocket, Message>,
    /// After SETUP.
    established: Option<Established>,
    /// Silence allowed from the client: the SETUP's max lifetime, or the setup timeout before it.
    lifetime: Duration,
    stream: Option<ActiveStream>,
    shutting_down: bool,
    write_timeout: Duration,
}

async fn serve_connection(socket: WebSocket, state: Arc<ApiState>) {
    let (sink, incoming) = socket.split();
    let write_timeout = state.env.limits.send_timeout.min(MAX_WRITE_TIME);
    let mut connection = Connection {
        state,
        sink,
        established: None,
        lifetime: SETUP_TIMEOUT,
        stream: None,
        shutting_down: false,
        write_timeout,
    };
    connection.run(incoming).await;
    connection.close().await;
}

impl Connection {
    async fn run(&mut self, mut incoming: SplitStream<WebSocket>) {
        let mut shutdown = self.state.shutdown.clone();
        let mut last_received = Instant::now();
        let mut idle_since = Instant::now();
        loop {
            if self.stream.is_some() {
                idle_since = Instant::now();
            }
            let silence_deadline = last_received + self.lifetime;
            let idle = self.stream.is_none() && self.established.is_some();
            enum Event {
                Message(Option<Result<Message, warp::Error>>),
                Stream(StreamEvent),
                Silent,
                Idle,
                Shutdown,
            }
            let event = tokio::select! {
                message = incoming.next() => Event::Message(message),
                event = stream_event(&mut self.stream) => Event::Stream(event),
                () = tokio::time::sleep_until(silence_deadline) => Event::Silent,
                () = tokio::time::sleep_until(idle_since + IDLE_WITHOUT_STREAM), if idle => Event::Idle,
                _ = wait_shutdown(&mut shutdown), if !self.shutting_down => Event::Shutdown,
            };
            let flow = match event {
                Event::Message(None) => Ok(Flow::Close),
                Event::Message(Some(Err(error))) => {
                    debug!(%error, "WebSocket read failed");
                    Ok(Flow::Close)
                }
                Event::Message(Some(Ok(message))) => {
                    last_received = Instant::now();
                    self.on_message(message).await
                }
                Event::Stream(event) => self.on_stream_event(event).await,
                Event::Silent => {
                    debug!(lifetime = ?self.lifetime, "no frame from the client within its lifetime; closing");
                    let error = Frame::error(
                        0,
                        error_code::CONNECTION_ERROR,
                        format!("no frame received for {:?}", self.lifetime),
                    );
                    self.send(&error).await.map(|()| Flow::Close)
                }
                Event::Idle => {
                    debug!("no sync stream on the connection; closing");
                    Ok(Flow::Close)
                }
                Event::Shutdown => {
                    self.shutting_down = true;
                    self.end_stream_on_shutdown().await.map(|()| Flow::Close)
                }
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) | Err(Broken) => return,
            }
        }
    }

    /// Closes the socket (best effort, bounded).
    async fn close(&mut self) {
        // Dropping the stream releases its connection slot and stops the session.
        self.stream = None;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), Broken> {
        let bytes = frame.encode();
        let len = bytes.len();
        match tokio::time::timeout(self.write_timeout, self.sink.send(Message::binary(bytes))).await {
            Ok(Ok(())) => {
                self.state.env.metrics.bytes_sent(len);
                Ok(())
            }
            Ok(Err(error)) => {
                debug!(%error, "WebSocket write failed");
                Err(Broken)
            }
            Err(_) => {
                debug!(timeout = ?self.write_timeout, "the client does not read its socket; closing");
                Err(Broken)
            }
        }
    }

    async fn end_stream_on_shutdown(&mut self) -> Result<(), Broken> {
        if let Some(stream) = self.stream.take() {
            self.send(&Frame::complete(stream.id)).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Message) -> Result<Flow, Broken> {
        if message.is_close() {
            return Ok(Flow::Close);
        }
        if message.is_ping() || message.is_pong() {
            return Ok(Flow::Continue);
        }
        if !message.is_binary() {
            let error = Frame::error(
                0,
                error_code::CONNECTION_ERROR,
                "RSocket frames must be binary WebSocket messages",
            );
            self.send(&error).await?;
            return Ok(Flow::Close);
        }
        let bytes = message.into_bytes();
        let frame = match Frame::decode(&bytes) {
            Ok(frame) => frame,
            Err(error) => {
                debug!(%error, "malformed frame");
                let code = if self.established.is_none() {
                    error_code::INVALID_SETUP
                } else {
                    error_code::CONNECTION_ERROR
                };
                self.send(&Frame::error(0, code, error.to_string())).await?;
                return Ok(Flow::Close);
            }
        };
        if self.established.is_none() {
            return match frame {
                Frame::Setup(setup) => self.on_setup(setup).await,
                Frame::Other {
                    frame_type: frame_type::RESUME,
                    ..
                } => {
                    let error = Frame::error(0, error_code::REJECTED_RESUME, "resumption is not supported");
                    self.send(&error).await?;
                    Ok(Flow::Close)
                }
                other => {
                    let message = format!("the first frame must be SETUP, not {}", other.type_name());
                    self.send(&Frame::error(0, error_code::INVALID_SETUP, message))
                        .await?;
                    Ok(Flow::Close)
                }
            };
        }
        match frame {
            Frame::Keepalive { respond, data, .. } => {
                if respond {
                    let answer = Frame::Keepalive {
                        respond: false,
                        last_received_position: 0,
                        data,
                    };
                    self.send(&answer).await?;
                }
                Ok(Flow::Continue)
            }
            Frame::RequestStream {
                stream_id,
                initial_n,
                follows,
                payload,
            } => {
                self.on_request_stream(stream_id, initial_n, follows, payload)
                    .await?;
                Ok(Flow::Continue)
            }
            Frame::RequestN { stream_id, n } => {
                if let Some(stream) = self.stream.as_mut().filter(|s| s.id == stream_id) {
                    stream.credits = stream.credits.saturating_add(u64::from(n));
                }
                Ok(Flow::Continue)
            }
            Frame::Cancel { stream_id } => {
                if self.stream.as_ref().is_some_and(|s| s.id == stream_id) {
                    debug!(stream_id, "stream cancelled by the client");
                    self.stream = None;
                }
                Ok(Flow::Continue)
            }
            Frame::Error {
                stream_id: 0,
                code,
                message,
            } => {
                debug!(code, %message, "the client closed the connection with an error");
                Ok(Flow::Close)
            }
            Frame::Error {
                stream_id,
                code,
                message,
            } => {
                if self.stream.as_ref().is_some_and(|s| s.id == stream_id) {
                    debug!(stream_id, code, %message, "the client ended the stream with an error");
                    self.stream = None;
                }
                Ok(Flow::Continue)
            }
            Frame::Setup(_) => {
                let error = Frame::error(0, error_code::CONNECTION_ERROR, "a second SETUP frame");
                self.send(&error).await?;
                Ok(Flow::Close)
            }
            // Request-channel payloads; nothing of ours.
            Frame::Payload { .. } => Ok(Flow::Continue),
            Frame::Other {
                stream_id,
                frame_type,
                ..
            } => self.on_other(stream_id, frame_type).await,
        }
    }

    async fn on_other(&mut self, stream_id: u32, kind: u8) -> Result<Flow, Broken> {
        match kind {
            frame_type::REQUEST_RESPONSE | frame_type::REQUEST_CHANNEL => {
                let error = Frame::error(
                    stream_id,
                    error_code::REJECTED,
                    "only request-stream (path /sync/stream) is served",
                );
                self.send(&error).await?;
                Ok(Flow::Continue)
            }
            frame_type::RESUME | frame_type::RESUME_OK => {
                let error = Frame::error(0, error_code::CONNECTION_ERROR, "resumption is not supported");
                self.send(&error).await?;
                Ok(Flow::Close)
            }
            // Fire-and-forget, metadata push, lease, extensions and ignorable unknown frames.
            _ => Ok(Flow::Continue),
        }
    }

    async fn on_setup(&mut self, setup: Setup) -> Result<Flow, Broken> {
        let unsupported = if setup.major_version != 1 {
            Some(format!(
                "RSocket version {}.{} is not supported (1.x is)",
                setup.major_version, setup.minor_version
            ))
        } else if setup.resume_token.is_some() {
            Some("resumption is not supported".to_owned())
        } else if setup.lease {
            Some("leases are not supported".to_owned())
        } else {
            None
        };
        if let Some(message) = unsupported {
            self.send(&Frame::error(0, error_code::UNSUPPORTED_SETUP, message))
                .await?;
            return Ok(Flow::Close);
        }
        let metadata_encoding = Encoding::from_mime(&setup.metadata_mime);
        let metadata = setup
            .payload
            .metadata
            .as_deref()
            .map(|m| metadata_encoding.decode(m));
        let (token, user_agent) = match &metadata {
            Some(Ok(value)) => (
                value.get("token").and_then(Value::as_str),
                value
                    .get("user_agent")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            Some(Err(error)) => {
                debug!(%error, mime = %setup.metadata_mime, "SETUP metadata unreadable");
                (None, String::new())
            }
            None => (None, String::new()),
        };
        match self.state.auth.authenticate(token).await {
            Ok(claims) => {
                debug!(user = %claims.user_id, %user_agent, "WebSocket connection set up");
                self.lifetime =
                    Duration::from_millis(u64::from(setup.max_lifetime_ms)).clamp(MIN_LIFETIME, MAX_LIFETIME);
                self.established = Some(Established {
                    claims,
                    encoding: Encoding::from_mime(&setup.data_mime),
                    user_agent,
                });
                Ok(Flow::Continue)
            }
            Err(error) => {
                self.state.env.metrics.auth_failed();
                debug!(code = error.code, reason = %error.description, %user_agent, "WebSocket setup refused");
                let message = format!("[{}] {}", error.code, error.description);
                self.send(&Frame::error(0, error_code::REJECTED_SETUP, message))
                    .await?;
                Ok(Flow::Close)
            }
        }
    }

    async fn on_request_stream(
        &mut self,
        stream_id: u32,
        initial_n: u32,
        follows: bool,
        payload: Payload,
    ) -> Result<(), Broken> {
        match self.start_stream(stream_id, initial_n, follows, &payload) {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(())
            }
            Err((code, error)) => {
                debug!(stream_id, code = error.code, reason = %error.description, "stream refused");
                let message = format!("[{}] {}", error.code, error.description);
                self.send(&Frame::error(stream_id, code, message)).await
            }
        }
    }

    fn start_stream(
        &self,
        stream_id: u32,
        initial_n: u32,
        follows: bool,
        payload: &Payload,
    ) -> Result<ActiveStream, (u32, ApiError)> {
        let Some(established) = &self.established else {
            return Err((
                error_code::REJECTED,
                ApiError::validation("no SETUP on this connection"),
            ));
        };
        if let Some(active) = &self.stream {
            return Err((
                error_code::REJECTED,
                ApiError::validation(format!(
                    "one sync stream per connection; stream {} is active",
                    active.id
                )),
            ));
        }
        if follows {
            return Err((
                error_code::REJECTED,
                ApiError::validation("fragmented requests are not supported"),
            ));
        }
        if self.shutting_down || *self.state.shutdown.borrow() {
            return Err((
                error_code::REJECTED,
                ApiError::unavailable("the gateway is shutting down"),
            ));
        }
        if let Some(metadata) = &payload.metadata {
            let meta = established.encoding.decode(metadata).map_err(|e| {
                (
                    error_code::INVALID,
                    ApiError::validation(format!("stream metadata: {e}")),
                )
            })?;
            match meta.get("path").and_then(Value::as_str) {
                None | Some(SYNC_STREAM_PATH) => {}
                Some(other) => {
                    return Err((
                        error_code::INVALID,
                        ApiError::new(
                            404,
                            "PSYNC_S2002",
                            "RouteNotFound",
                            format!("no stream route for {other}; only {SYNC_STREAM_PATH}"),
                        ),
                    ));
                }
            }
        }
        let body = match established.encoding.decode(&payload.data) {
            Ok(value) => serde_json::to_vec(&value).unwrap_or_default(),
            Err(e) => {
                return Err((
                    error_code::INVALID,
                    ApiError::validation(format!("invalid sync request body: {e}")),
                ));
            }
        };
        let request = SyncRequest::from_json(&body)
            .map_err(|e| (error_code::INVALID, ApiError::validation(e.to_string())))?;
        if let Some(error) = over_limit(&self.state) {
            return Err((error_code::REJECTED, error));
        }

        let claims = established.claims.clone();
        debug!(
            user = %claims.user_id,
            user_agent = %established.user_agent,
            stream_id,
            initial_n,
            buckets = request.buckets.len(),
            "WebSocket sync stream opened"
        );
        let guard = self.state.env.metrics.connection_opened();
        let (lines_tx, lines) = mpsc::channel(LINE_BUFFER);
        let (outcome_tx, outcome) = oneshot::channel();
        let registration = self
            .state
            .clients
            .register(&claims.user_id, super::clients::Transport::WebSocket);
        let session = Session::new(Arc::clone(&self.state.env), claims, &request, lines_tx)
            .with_client(Arc::clone(registration.entry()));
        let shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            let _ = outcome_tx.send(session.run(shutdown).await);
            drop(registration);
        });
        Ok(ActiveStream {
            id: stream_id,
            credits: u64::from(initial_n),
            lines,
            lines_done: false,
            outcome: Some(outcome),
            drain_deadline: None,
            _connection: guard,
        })
    }

    async fn on_stream_event(&mut self, event: StreamEvent) -> Result<Flow, Broken> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Flow::Continue);
        };
        let id = stream.id;
        match event {
            StreamEvent::Line(line) => {
                stream.credits -= 1;
                self.send(&Frame::next(id, line.serialized(Framing::Bson)))
                    .await?;
            }
            StreamEvent::Ended(Ok(SessionEnd::ClientGone)) => self.stream = None,
            StreamEvent::Ended(Ok(end)) => {
                debug!(stream_id = id, ?end, "sync stream ended");
                if end == SessionEnd::Shutdown {
                    self.stream = None;
                    self.send(&Frame::complete(id)).await?;
                } else {
                    // Deliver what the session queued (the final `token_expires_in: 0`) as credit allows.
                    stream.drain_deadline = Some(Instant::now() + self.state.env.limits.send_timeout);
                }
            }
            StreamEvent::Ended(Err(error)) => {
                self.state.env.metrics.session_failed();
                warn!(stream_id = id, %error, "sync stream failed");
                self.stream = None;
                let message = format!("[{}] {error}", error.code());
                self.send(&Frame::error(id, error_code::APPLICATION_ERROR, message))
                    .await?;
            }
            StreamEvent::Drained => {
                self.stream = None;
                self.send(&Frame::complete(id)).await?;
            }
        }
        Ok(Flow::Continue)
    }
}

/// Resolves when the shutdown flag is (or becomes) true, or its sender is gone.
async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use syncgate_protocol::SyncLine;
    use syncgate_protocol::bson::NumberPolicy;

    use super::*;

    #[test]
    fn payload_encoding_follows_the_setup_mime_type() {
        assert_eq!(Encoding::from_mime("application/json"), Encoding::Json);
        assert_eq!(
            Encoding::from_mime("Application/JSON; charset=utf-8"),
            Encoding::Json
        );
        assert_eq!(Encoding::from_mime("application/bson"), Encoding::Bson);
        assert_eq!(Encoding::from_mime("application/octet-stream"), Encoding::Sniff);

        let json = br#"{"token":"Token x"}"#;
        let mut bson = Vec::new();
        SyncLine::TokenExpiresIn(5).write_bson(NumberPolicy::Syncgate, &mut bson);
        assert_eq!(Encoding::Json.decode(json).expect("json")["token"], "Token x");
        assert_eq!(Encoding::Bson.decode(&bson).expect("bson")["token_expires_in"], 5);
        assert_eq!(
            Encoding::Sniff.decode(json).expect("sniffed json")["token"],
            "Token x"
        );
        assert_eq!(
            Encoding::Sniff.decode(&bson).expect("sniffed bson")["token_expires_in"],
            5
        );
        assert!(Encoding::Json.decode(&bson).is_err());
        assert!(Encoding::Bson.decode(json).is_err());
    }
}
