//! The two carriers of the sync stream (PROTOCOL §1.2 and §1.3), behind one interface: open a stream for
//! a [`SyncRequest`], then take its [`SyncLine`]s one at a time. The driver feeds those lines to the state
//! machine the same way whichever carrier brought them.
//!
//! - **HTTP**: `POST /sync/stream`, NDJSON (gzip when the service compresses); a 401 is
//!   [`ClientError::Unauthorized`]. A thread per stream decompresses and parses the body while the driver
//!   stores earlier lines.
//! - **WebSocket**: RSocket over WebSocket as the PowerSync SDKs do it: SETUP (JSON MIME types, metadata
//!   `{"token": "Token <jwt>", "user_agent": …}`), one REQUEST_STREAM (metadata `{"path": "/sync/stream"}`,
//!   data the JSON request), each PAYLOAD one line (BSON as the service sends it, JSON accepted too).
//!   Request-N credit is a window of [`CREDIT_WINDOW`] lines, topped up only when the driver asks for the
//!   next line, so a slow apply stops the service once the window is used. The service's KEEPALIVEs are
//!   answered and ours sent every [`KEEPALIVE_INTERVAL`]; an ERROR whose message carries a `PSYNC_S21xx`
//!   code (bad or expired token) is [`ClientError::Unauthorized`], as the SDKs treat it.
//!
//! Both streams are dead once nothing at all arrived for the idle timeout (over WebSocket counted from
//! the later of the last frame and the driver asking for the next line: without credit the service waits). [`SyncStream::next_line`] is
//! cancel-safe (the driver races it against upload steps): it awaits only reads that take nothing when
//! dropped, and frames to send wait in a queue until the socket has accepted them.

use std::collections::VecDeque;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flate2::write::GzDecoder;
use futures_util::{FutureExt as _, Sink, StreamExt};
use syncgate_protocol::rsocket::{Frame, Payload, Setup};
use syncgate_protocol::{SyncLine, SyncRequest};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::driver::Credentials;
use crate::error::ClientError;

/// How the driver reaches the service's sync stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionMethod {
    /// `POST /sync/stream` with NDJSON lines.
    #[default]
    Http,
    /// RSocket over WebSocket (the service's `ws://…/sync/stream`), BSON lines.
    WebSocket,
}

impl std::str::FromStr for ConnectionMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "http" => Ok(ConnectionMethod::Http),
            "websocket" | "web-socket" => Ok(ConnectionMethod::WebSocket),
            other => Err(format!("unknown transport {other:?}: use http or websocket")),
        }
    }
}

pub(crate) const USER_AGENT: &str = concat!("syncgate-client/", env!("CARGO_PKG_VERSION"));

/// Lines the service may send ahead of the driver (the SDK's buffered default).
pub const CREDIT_WINDOW: u32 = 10;
/// What the SDK sends in its SETUP: our KEEPALIVE period, and how long the service may hear nothing
/// from us before it drops the connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const MAX_LIFETIME: Duration = Duration::from_secs(90);
/// The one stream of a connection (client-initiated stream ids are odd).
const STREAM_ID: u32 = 1;
const SYNC_STREAM_PATH: &str = "/sync/stream";

/// An open sync stream.
pub(crate) enum SyncStream {
    Http(HttpStream),
    // Boxed: one per connection, and twice the HTTP stream's size.
    WebSocket(Box<RSocketStream>),
}

impl SyncStream {
    /// Opens the stream; returns once the service accepted it (HTTP: a 2xx answer; WebSocket: its first
    /// line, since the SETUP's verdict on the token arrives as a frame).
    pub(crate) async fn open(
        method: ConnectionMethod,
        http: &reqwest::Client,
        credentials: &Credentials,
        request: &SyncRequest,
        idle_timeout: Duration,
    ) -> Result<SyncStream, ClientError> {
        match method {
            ConnectionMethod::Http => HttpStream::open(http, credentials, request, idle_timeout)
                .await
                .map(SyncStream::Http),
            ConnectionMethod::WebSocket => RSocketStream::open(credentials, request, idle_timeout)
                .await
                .map(|stream| SyncStream::WebSocket(Box::new(stream))),
        }
    }

    /// Whether lines already received are still being parsed, so the next one may come without waiting
    /// for the network (the driver then keeps its download batch open).
    pub(crate) fn decoding(&self) -> bool {
        match self {
            SyncStream::Http(stream) => stream.decoding(),
            SyncStream::WebSocket(_) => false,
        }
    }

    /// The next sync line (unknown line types skipped); `None` once the service ended the stream. Calling
    /// it says the previous line is processed. Cancel-safe.
    pub(crate) async fn next_line(&mut self) -> Result<Option<SyncLine>, ClientError> {
        match self {
            SyncStream::Http(stream) => stream.next_line().await,
            SyncStream::WebSocket(stream) => stream.next_line().await,
        }
    }
}

/// Bytes received and not yet parsed by the decoder thread, at most (then reading pauses).
const MAX_UNDECODED_BYTES: usize = 1 << 20;
/// Parsed lines waiting for the driver, at most (then the decoder thread waits).
const PARSED_LINES_AHEAD: usize = 16;

/// A parsed line (`None`: an unknown line type, skipped), or why decoding stopped.
type DecodedLine = Result<Option<SyncLine>, ClientError>;

/// The HTTP response body, decompressed and parsed on a thread of its own (see [`decode_lines`]) while
/// the driver stores earlier lines.
pub(crate) struct HttpStream {
    response: reqwest::Response,
    /// To the decoder thread; `None` once the response ended.
    chunks: Option<std::sync::mpsc::Sender<bytes::Bytes>>,
    /// Bytes handed to the decoder thread and not yet parsed.
    undecoded: Arc<AtomicUsize>,
    lines: tokio::sync::mpsc::Receiver<DecodedLine>,
    idle_timeout: Duration,
    idle_deadline: Instant,
}

impl HttpStream {
    async fn open(
        http: &reqwest::Client,
        credentials: &Credentials,
        request: &SyncRequest,
        idle_timeout: Duration,
    ) -> Result<HttpStream, ClientError> {
        let url = format!("{}{SYNC_STREAM_PATH}", credentials.endpoint.trim_end_matches('/'));
        tracing::info!(%url, buckets = request.buckets.len(), "opening sync stream");
        let response = http
            .post(&url)
            .header("authorization", format!("Token {}", credentials.token))
            .header("content-type", "application/json")
            // For the service's logs (PROTOCOL §1.1).
            .header("x-user-agent", USER_AGENT)
            // No BSON support over HTTP here: pin NDJSON.
            .header("accept", "application/x-ndjson")
            .header("accept-encoding", "gzip")
            .body(serde_json::to_string(request).expect("a sync request serializes"))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            if status.as_u16() == 401 {
                return Err(ClientError::Unauthorized(format!("HTTP 401: {body}")));
            }
            return Err(ClientError::HttpStatus {
                status: status.as_u16(),
                body,
            });
        }
        let gzip = response
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        tracing::info!(gzip, "sync stream open");
        let undecoded = Arc::new(AtomicUsize::new(0));
        let (chunks_tx, chunks_rx) = std::sync::mpsc::channel();
        let (lines_tx, lines) = tokio::sync::mpsc::channel(PARSED_LINES_AHEAD);
        {
            let undecoded = Arc::clone(&undecoded);
            std::thread::Builder::new()
                .name("syncgate-decode".to_owned())
                .spawn(move || decode_lines(&chunks_rx, gzip, &undecoded, &lines_tx))
                .map_err(ClientError::DecoderThread)?;
        }
        Ok(HttpStream {
            response,
            chunks: Some(chunks_tx),
            undecoded,
            lines,
            idle_timeout,
            idle_deadline: Instant::now() + idle_timeout,
        })
    }

    /// Whether bytes received are still being parsed (a line may be about to arrive without the network).
    fn decoding(&self) -> bool {
        self.undecoded.load(Ordering::Relaxed) > 0
    }

    fn feeding(&self) -> bool {
        self.chunks.is_some() && self.undecoded.load(Ordering::Relaxed) < MAX_UNDECODED_BYTES
    }

    fn feed(&mut self, chunk: Option<bytes::Bytes>) {
        self.idle_deadline = Instant::now() + self.idle_timeout;
        match (chunk, &self.chunks) {
            (Some(chunk), Some(decoder)) => {
                self.undecoded.fetch_add(chunk.len(), Ordering::Relaxed);
                // A closed channel: the decoder stopped on an error, which it sent as a line.
                let _ = decoder.send(chunk);
            }
            _ => self.chunks = None,
        }
    }

    async fn next_line(&mut self) -> Result<Option<SyncLine>, ClientError> {
        loop {
            // Hand over what has already arrived, so the decoder keeps working while the driver stores.
            // reqwest's chunk() takes nothing from the body until it resolves, so dropping it unresolved
            // drops no data.
            while self.feeding() {
                let Some(chunk) = self.response.chunk().now_or_never() else {
                    break;
                };
                self.feed(chunk?);
            }
            let feeding = self.feeding();
            let next = tokio::select! {
                biased;
                line = self.lines.recv() => Ok(line),
                chunk = self.response.chunk(), if feeding => Err(chunk),
                () = tokio::time::sleep_until(self.idle_deadline) => {
                    return Err(ClientError::StreamIdle(self.idle_timeout));
                }
            };
            match next {
                Ok(Some(line)) => {
                    if let Some(line) = line? {
                        return Ok(Some(line));
                    }
                }
                // The decoder is done: the response ended and every line of it was delivered.
                Ok(None) => {
                    tracing::info!("sync stream ended by the service");
                    return Ok(None);
                }
                Err(chunk) => self.feed(chunk?),
            }
        }
    }
}

/// The decoder thread: decompresses the response's chunks (gzip), splits them into lines and parses
/// them, in order. Stops after sending an error, or when the stream is dropped.
fn decode_lines<B: AsRef<[u8]>>(
    chunks: &std::sync::mpsc::Receiver<B>,
    gzip: bool,
    undecoded: &AtomicUsize,
    lines: &tokio::sync::mpsc::Sender<DecodedLine>,
) {
    let mut decoder = gzip.then(|| GzDecoder::new(Vec::new()));
    let mut buffer: Vec<u8> = Vec::new();
    for chunk in chunks {
        let chunk = chunk.as_ref();
        let decoded = match &mut decoder {
            Some(decoder) => decoder
                .write_all(chunk)
                .and_then(|()| decoder.flush())
                .map(|()| buffer.append(decoder.get_mut())),
            None => {
                buffer.extend_from_slice(chunk);
                Ok(())
            }
        };
        if let Err(error) = decoded {
            let _ = lines.blocking_send(Err(ClientError::Decompress(error)));
            return;
        }
        let mut consumed = 0;
        while let Some(end) = buffer[consumed..].iter().position(|b| *b == b'\n') {
            let text = String::from_utf8_lossy(&buffer[consumed..consumed + end]);
            consumed += end + 1;
            if text.trim().is_empty() {
                continue;
            }
            let item = SyncLine::from_json(&text).map_err(ClientError::from);
            if let Ok(None) = item {
                tracing::debug!(line = %text.trim(), "unknown sync line type skipped");
            }
            let failed = item.is_err();
            if lines.blocking_send(item).is_err() || failed {
                return;
            }
        }
        buffer.drain(..consumed);
        // Only now: zero tells the stream that everything received was parsed.
        undecoded.fetch_sub(chunk.len(), Ordering::Relaxed);
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) struct RSocketStream {
    socket: Socket,
    /// Frames waiting for the socket to accept them (KEEPALIVE answers, REQUEST_N top-ups).
    outgoing: VecDeque<Frame>,
    /// Lines the service may still send: credit granted minus PAYLOADs received.
    credit: u32,
    /// The line read while opening, handed out by the first `next_line`.
    first_line: Option<SyncLine>,
    /// The service sent COMPLETE (possibly with the last line).
    completed: bool,
    /// A line was handed out and the driver has not asked for the next one yet.
    line_in_use: bool,
    keepalive: Interval,
    idle_timeout: Duration,
    idle_deadline: Instant,
}

impl RSocketStream {
    async fn open(
        credentials: &Credentials,
        request: &SyncRequest,
        idle_timeout: Duration,
    ) -> Result<RSocketStream, ClientError> {
        let url = websocket_url(&credentials.endpoint)?;
        tracing::info!(%url, buckets = request.buckets.len(), "opening sync stream over WebSocket");
        let (socket, _response) = tokio::time::timeout(idle_timeout, tokio_tungstenite::connect_async(&url))
            .await
            .map_err(|_| ClientError::StreamIdle(idle_timeout))?
            .map_err(websocket_error)?;
        let json = |value: serde_json::Value| value.to_string().into_bytes();
        let setup = Frame::Setup(Setup {
            major_version: 1,
            minor_version: 0,
            keepalive_interval_ms: millis(KEEPALIVE_INTERVAL),
            max_lifetime_ms: millis(MAX_LIFETIME),
            resume_token: None,
            lease: false,
            metadata_mime: "application/json".to_owned(),
            data_mime: "application/json".to_owned(),
            payload: Payload::with_metadata(
                json(serde_json::json!({
                    "token": format!("Token {}", credentials.token),
                    "user_agent": USER_AGENT,
                })),
                Vec::new(),
            ),
        });
        let request_stream = Frame::RequestStream {
            stream_id: STREAM_ID,
            initial_n: CREDIT_WINDOW,
            follows: false,
            payload: Payload::with_metadata(
                json(serde_json::json!({"path": SYNC_STREAM_PATH})),
                serde_json::to_vec(request).expect("a sync request serializes"),
            ),
        };
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stream = RSocketStream {
            socket,
            outgoing: VecDeque::from([setup, request_stream]),
            credit: CREDIT_WINDOW,
            first_line: None,
            completed: false,
            line_in_use: false,
            keepalive,
            idle_timeout,
            idle_deadline: Instant::now() + idle_timeout,
        };
        // Like the SDK, the stream counts as open at its first line: a refused token arrives as an ERROR
        // frame after the SETUP was sent.
        match stream.receive_line().await? {
            Some(line) => stream.first_line = Some(line),
            None => stream.completed = true,
        }
        tracing::info!("sync stream open over WebSocket");
        Ok(stream)
    }

    async fn next_line(&mut self) -> Result<Option<SyncLine>, ClientError> {
        if let Some(line) = self.first_line.take() {
            self.line_in_use = true;
            return Ok(Some(line));
        }
        if self.completed {
            tracing::info!("sync stream completed by the service");
            return Ok(None);
        }
        if std::mem::take(&mut self.line_in_use) {
            // The previous line is processed: top the credit back up once half the window is used, so
            // the service keeps sending while lines are consumed and stops when they are not.
            if self.credit <= CREDIT_WINDOW / 2 {
                self.outgoing.push_back(Frame::RequestN {
                    stream_id: STREAM_ID,
                    n: CREDIT_WINDOW - self.credit,
                });
                self.credit = CREDIT_WINDOW;
            }
            // Silence while the driver was busy is not the service's: without credit it had to wait.
            self.idle_deadline = Instant::now() + self.idle_timeout;
        }
        let line = self.receive_line().await?;
        match &line {
            Some(_) => self.line_in_use = true,
            None => tracing::info!("sync stream completed by the service"),
        }
        Ok(line)
    }

    /// Sends what is queued, then reads frames until a line, the stream's end or an error.
    async fn receive_line(&mut self) -> Result<Option<SyncLine>, ClientError> {
        loop {
            self.send_queued().await?;
            let message = tokio::select! {
                message = tokio::time::timeout_at(self.idle_deadline, self.socket.next()) => {
                    message.map_err(|_| ClientError::StreamIdle(self.idle_timeout))?
                }
                _ = self.keepalive.tick() => {
                    self.outgoing.push_back(Frame::Keepalive {
                        respond: true,
                        last_received_position: 0,
                        data: bytes::Bytes::new(),
                    });
                    continue;
                }
            };
            self.idle_deadline = Instant::now() + self.idle_timeout;
            let bytes = match message {
                None => {
                    return Err(closed(
                        "the service closed the WebSocket without ending the stream",
                    ));
                }
                Some(Err(error)) => return Err(websocket_error(error)),
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Close(frame))) => {
                    return Err(closed(&format!(
                        "the service closed the WebSocket without ending the stream ({frame:?})"
                    )));
                }
                // Pings are answered by tungstenite itself; nothing else carries frames.
                Some(Ok(_)) => continue,
            };
            let frame = Frame::decode(&bytes).map_err(|e| {
                ClientError::WebSocket(format!("malformed RSocket frame from the service: {e}"))
            })?;
            match frame {
                Frame::Keepalive {
                    respond: true, data, ..
                } => self.outgoing.push_back(Frame::Keepalive {
                    respond: false,
                    last_received_position: 0,
                    data,
                }),
                Frame::Payload {
                    stream_id: STREAM_ID,
                    complete,
                    next,
                    payload,
                    ..
                } => {
                    self.completed = complete;
                    if !next {
                        if complete {
                            return Ok(None);
                        }
                        continue;
                    }
                    self.credit = self.credit.saturating_sub(1);
                    match decode_line(&payload.data)? {
                        Some(line) => return Ok(Some(line)),
                        None if complete => return Ok(None),
                        None => tracing::debug!("unknown sync line type skipped"),
                    }
                }
                Frame::Error {
                    stream_id,
                    code,
                    message,
                } if stream_id == 0 || stream_id == STREAM_ID => {
                    // The SDK's rule: a PSYNC_S21xx code means the credentials are bad or expired.
                    if message.contains("PSYNC_S21") {
                        return Err(ClientError::Unauthorized(format!("RSocket ERROR: {message}")));
                    }
                    return Err(ClientError::StreamRejected { code, message });
                }
                // KEEPALIVE answers, frames of other streams, extensions: nothing to do.
                _ => {}
            }
        }
    }

    /// Hands the queued frames to the socket and flushes it. A frame leaves the queue only once the
    /// socket took it, so a cancelled call loses nothing.
    async fn send_queued(&mut self) -> Result<(), ClientError> {
        while let Some(frame) = self.outgoing.front() {
            std::future::poll_fn(|cx| Pin::new(&mut self.socket).poll_ready(cx))
                .await
                .map_err(websocket_error)?;
            let message = Message::binary(frame.encode());
            Pin::new(&mut self.socket)
                .start_send(message)
                .map_err(websocket_error)?;
            self.outgoing.pop_front();
        }
        std::future::poll_fn(|cx| Pin::new(&mut self.socket).poll_flush(cx))
            .await
            .map_err(websocket_error)
    }
}

/// A PAYLOAD's line: BSON when it is exactly one BSON document (its little-endian length prefix is the
/// payload's length), else JSON text.
fn decode_line(data: &[u8]) -> Result<Option<SyncLine>, ClientError> {
    let bson_length = data
        .get(..4)
        .map(|prefix| i32::from_le_bytes(prefix.try_into().expect("four bytes")));
    if bson_length.and_then(|n| usize::try_from(n).ok()) == Some(data.len()) {
        return Ok(SyncLine::from_bson(data)?);
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| ClientError::WebSocket("a sync line is neither BSON nor UTF-8 JSON".to_owned()))?;
    Ok(SyncLine::from_json(text)?)
}

/// `http(s)://host/base` → `ws(s)://host/base/sync/stream`.
fn websocket_url(endpoint: &str) -> Result<String, ClientError> {
    let endpoint = endpoint.trim_end_matches('/');
    let rest = if let Some(rest) = endpoint.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if endpoint.starts_with("ws://") || endpoint.starts_with("wss://") {
        endpoint.to_owned()
    } else {
        return Err(ClientError::WebSocket(format!(
            "endpoint {endpoint:?} is not an http(s):// or ws(s):// URL"
        )));
    };
    Ok(format!("{rest}{SYNC_STREAM_PATH}"))
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).expect("protocol durations fit 31 bits")
}

fn closed(why: &str) -> ClientError {
    ClientError::WebSocket(why.to_owned())
}

fn websocket_error(error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::Http(response) => ClientError::HttpStatus {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        other => ClientError::WebSocket(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use syncgate_protocol::bson::NumberPolicy;

    use super::*;

    #[test]
    fn lines_decode_from_bson_and_from_json() {
        let line = SyncLine::TokenExpiresIn(123);
        let mut bson = Vec::new();
        line.write_bson(NumberPolicy::Syncgate, &mut bson);
        assert_eq!(decode_line(&bson).expect("bson"), Some(line.clone()));
        assert_eq!(
            decode_line(br#"{"token_expires_in":123}"#).expect("json"),
            Some(line)
        );
        assert!(decode_line(b"\x05\x00\x00").is_err());
    }

    #[test]
    fn websocket_urls_follow_the_endpoint_scheme() {
        assert_eq!(
            websocket_url("http://127.0.0.1:8080/").expect("url"),
            "ws://127.0.0.1:8080/sync/stream"
        );
        assert_eq!(
            websocket_url("https://sync.example/base").expect("url"),
            "wss://sync.example/base/sync/stream"
        );
        assert!(websocket_url("ftp://x").is_err());
    }
}
