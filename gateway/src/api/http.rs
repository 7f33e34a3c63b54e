//! The HTTP server (warp): routes, authentication before anything else is read, streaming responses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use syncgate_protocol::{ClientId, SyncRequest, UserId, WriteCheckpointId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use warp::http::{HeaderValue, Response, StatusCode, header};
use warp::{Filter, Rejection, Reply};

use super::encoding::{Framing, LineEncoder, OutLine, accepts_gzip};
use super::metrics::ConnectionGuard;
use super::session::{Session, SessionClaims, SessionEnd, SessionEnv};
use super::write_checkpoint::WriteCheckpoints;
use super::{ApiError, Authenticate};
use crate::replicator::ReplicationMetrics;
use crate::storage::BucketStorage;

/// Lines buffered per stream between the session and the socket: small, so a slow client holds
/// little memory and backpressure reaches the session quickly.
pub(super) const LINE_BUFFER: usize = 4;

/// HTTP limits (config `api`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Concurrent sync streams; more are refused with 503 so the client retries elsewhere or later.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1024 * 1024,
            max_connections: 20_000,
        }
    }
}

/// Everything the API serves from.
pub struct ApiState {
    pub env: Arc<SessionEnv<dyn BucketStorage>>,
    pub auth: Arc<dyn Authenticate>,
    pub write_checkpoints: Arc<WriteCheckpoints>,
    pub replication: Arc<ReplicationMetrics>,
    pub config: ApiConfig,
    pub shutdown: watch::Receiver<bool>,
    /// Open sync streams, for the dashboard.
    pub clients: Arc<super::clients::ClientRegistry>,
    /// `/dashboard`: served only when enabled.
    pub dashboard: crate::config::DashboardSettings,
    /// This process's role and whether it replicates now (readiness, sync routes).
    pub node: NodeStatus,
}

/// What this gateway process does among several on one storage.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub role: crate::serve::Role,
    /// True while this process holds the replication lease (or, on SQLite storage, replicates).
    pub replicating: Arc<std::sync::atomic::AtomicBool>,
}

impl NodeStatus {
    fn replicating(&self) -> bool {
        self.replicating.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Rejected(ApiError);

impl warp::reject::Reject for Rejected {}

pub(super) fn reject(error: ApiError) -> Rejection {
    warp::reject::custom(Rejected(error))
}

/// Binds the API's listening socket on every IPv4 address. Accepted connections inherit its `TCP_NODELAY`
/// (Linux copies it to each accepted socket; warp exposes no per-connection hook): without it, Nagle holds
/// a commit's `data` and `checkpoint_complete` writes until the client acknowledges the first one.
pub fn bind_listener(port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    // As std's bind does, so a restarted gateway can reuse its port while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(std::net::SocketAddr::from(([0, 0, 0, 0], port)))?;
    socket.listen(1024)
}

/// Serves the API on `listener` until `state.shutdown` turns true; open streams end cleanly first.
pub async fn serve_api(state: Arc<ApiState>, listener: TcpListener) {
    let mut shutdown = state.shutdown.clone();
    let signal = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Ok(address) = listener.local_addr() {
        info!(%address, "sync API listening");
    }
    warp::serve(routes(Arc::clone(&state)))
        .incoming(listener)
        .graceful(signal)
        .run()
        .await;
    // Upgraded WebSocket connections are not tracked by the server: give their streams a moment to
    // send their final COMPLETE (they end at the same shutdown signal).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while state.env.metrics.connections_open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every route, with CORS headers on every response (also errors), as the reference sends them.
pub fn routes(state: Arc<ApiState>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let authenticated = warp::header::optional::<String>("authorization")
        .and(with_state.clone())
        .and_then(|authorization: Option<String>, state: Arc<ApiState>| async move {
            match state.auth.authenticate(authorization.as_deref()).await {
                Ok(claims) => Ok(claims),
                Err(error) => {
                    state.env.metrics.auth_failed();
                    debug!(code = error.code, reason = %error.description, "request refused");
                    Err(reject(error))
                }
            }
        });
    let body = warp::body::stream()
        .and(with_state.clone())
        .and_then(|body, state: Arc<ApiState>| read_body(body, state.config.max_body_bytes));

    // `--role replicator` serves no sync routes: they answer 404 there.
    let sync_served = with_state
        .clone()
        .and_then(|state: Arc<ApiState>| async move {
            if state.node.role.serves_sync() {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one();
    let sync_stream = warp::path!("sync" / "stream")
        .and(warp::post())
        .and(authenticated.clone())
        .and(warp::header::optional::<String>("accept"))
        .and(warp::header::optional::<String>("accept-encoding"))
        .and(body.clone())
        .and(with_state.clone())
        .and_then(sync_stream);
    let write_checkpoint = warp::path!("write-checkpoint2.json")
        .and(warp::get())
        .and(authenticated.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state.clone())
        .and_then(write_checkpoint);
    let checkpoint_request = warp::path!("sync" / "checkpoint-request")
        .and(warp::post())
        .and(authenticated)
        .and(body)
        .and(with_state.clone())
        .and_then(checkpoint_request);
    let liveness = warp::path!("probes" / "liveness")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"alive": true})));
    let readiness = warp::path!("probes" / "readiness")
        .or(warp::path!("probes" / "startup"))
        .unify()
        .and(warp::get())
        .and(with_state.clone())
        .and_then(readiness);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state)
        .map(|state: Arc<ApiState>| {
            let text = state.env.metrics.render(&state.replication.snapshot());
            let mut response: warp::reply::Response = Response::new(text.into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        });
    let preflight = warp::options()
        .and(warp::header::optional::<String>("access-control-request-headers"))
        .map(|requested: Option<String>| {
            let mut response = Response::new(warp::reply::Response::default().into_body());
            *response.status_mut() = StatusCode::NO_CONTENT;
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            let allowed = requested
                .and_then(|r| HeaderValue::from_str(&r).ok())
                .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type, x-user-agent"));
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
            response
        });

    // WebSocket (RSocket) transport: any path, only upgrade requests; others fall through unchanged.
    let websocket = super::websocket::route(Arc::clone(&state));
    let dashboard = super::dashboard::routes(Arc::clone(&state));

    let sync_routes = sync_served.and(
        websocket
            .or(sync_stream)
            .or(write_checkpoint)
            .or(checkpoint_request),
    );
    sync_routes
        .or(preflight)
        .or(liveness)
        .or(readiness)
        .or(metrics)
        .or(dashboard)
        .recover(recover)
        .with(warp::reply::with::header("access-control-allow-origin", "*"))
        .with(warp::reply::with::header(
            "access-control-expose-headers",
            "Content-Type",
        ))
}

pub(super) fn json_reply(status: StatusCode, body: &Value) -> warp::reply::Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn error_reply(error: &ApiError) -> warp::reply::Response {
    let mut response = Response::new(error.body().into());
    *response.status_mut() = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read, so the connection cannot carry another request: say so,
        // or a client may pool it and send its next request into a closing socket.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let error = if let Some(Rejected(error)) = rejection.find() {
        error.clone()
    } else if rejection.is_not_found() {
        ApiError::new(404, "PSYNC_S2002", "RouteNotFound", "route not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            404,
            "PSYNC_S2002",
            "RouteNotFound",
            "route not found for this method",
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::validation(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::validation(e.to_string())
    } else {
        ApiError::validation(format!("{rejection:?}"))
    };
    Ok(error_reply(&error))
}

/// Reads a request body up to `limit` bytes (413 beyond), without trusting `Content-Length`.
async fn read_body<S, B>(mut body: S, limit: usize) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    let mut collected = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| reject(ApiError::validation(format!("reading the request body: {e}"))))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(reject(ApiError::new(
                413,
                "PSYNC_S2001",
                "PayloadTooLarge",
                format!("request body larger than {limit} bytes"),
            )));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            collected.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(collected))
}

async fn sync_stream(
    claims: SessionClaims,
    accept: Option<String>,
    accept_encoding: Option<String>,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let request = SyncRequest::from_json(&body).map_err(|e| reject(ApiError::validation(e.to_string())))?;
    if *state.shutdown.borrow() {
        return Err(reject(ApiError::unavailable("the gateway is shutting down")));
    }
    if state.env.metrics.connections_open() >= u64::try_from(state.config.max_connections).unwrap_or(u64::MAX)
    {
        return Err(reject(ApiError::unavailable(format!(
            "connection limit reached ({} streams); retry later",
            state.config.max_connections
        ))));
    }
    let framing = Framing::negotiate(accept.as_deref());
    let gzip = accepts_gzip(accept_encoding.as_deref());
    debug!(user = %claims.user_id, ?framing, gzip, buckets = request.buckets.len(), "sync stream opened");
    let body = open_stream(&state, claims, &request, LineEncoder::new(framing, gzip));

    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(framing.content_type()),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

/// Starts a session and returns its response body.
fn open_stream(
    state: &Arc<ApiState>,
    claims: SessionClaims,
    request: &SyncRequest,
    encoder: LineEncoder,
) -> LineBody {
    let guard = state.env.metrics.connection_opened();
    let (lines, receiver) = mpsc::channel(LINE_BUFFER);
    let (outcome_tx, outcome) = oneshot::channel();
    let user = claims.user_id.clone();
    let registration = state
        .clients
        .register(&claims.user_id, super::clients::Transport::Http);
    let session = Session::new(Arc::clone(&state.env), claims, request, lines)
        .with_client(Arc::clone(registration.entry()));
    let shutdown = state.shutdown.clone();
    let metrics = Arc::clone(&state.env.metrics);
    tokio::spawn(async move {
        let result = session.run(shutdown).await;
        drop(registration);
        let result = match result {
            Ok(end) => {
                debug!(%user, ?end, "sync stream ended");
                Ok(end)
            }
            Err(error) => {
                metrics.session_failed();
                warn!(%user, %error, "sync stream failed");
                Err(error.to_string())
            }
        };
        let _ = outcome_tx.send(result);
    });
    LineBody {
        lines: receiver,
        batch: Vec::with_capacity(LINE_BUFFER),
        encoder,
        outcome: Some(outcome),
        metrics: Arc::clone(&state.env.metrics),
        _connection: guard,
    }
}

/// The response body of a sync stream: encoded lines as they come; aborted (not ended) when the session
/// fails, so the client does not mistake a failure for a clean end.
struct LineBody {
    lines: mpsc::Receiver<OutLine>,
    /// The lines of the chunk being encoded (kept to reuse its allocation).
    batch: Vec<OutLine>,
    encoder: LineEncoder,
    outcome: Option<oneshot::Receiver<Result<SessionEnd, String>>>,
    metrics: Arc<super::ApiMetrics>,
    _connection: ConnectionGuard,
}

impl Stream for LineBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(outcome) = this.outcome.as_mut() {
            match this.lines.poll_recv(cx) {
                Poll::Ready(Some(line)) => {
                    // Lines queued together (a checkpoint's diff, data and complete) go out as one
                    // chunk: one frame for the server to write, one sync flush when compressing.
                    let mut lines = std::mem::take(&mut this.batch);
                    lines.push(line);
                    while lines.len() < LINE_BUFFER
                        && let Ok(line) = this.lines.try_recv()
                    {
                        lines.push(line);
                    }
                    let bytes = this.encoder.encode(&lines);
                    lines.clear();
                    this.batch = lines;
                    this.metrics.bytes_sent(bytes.len());
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => match Pin::new(outcome).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Err(error))) => {
                        this.outcome = None;
                        return Poll::Ready(Some(Err(std::io::Error::other(error))));
                    }
                    Poll::Ready(_) => this.outcome = None,
                },
            }
        }
        Poll::Ready(this.encoder.finish().map(Ok))
    }
}

use std::future::Future as _;

async fn write_checkpoint(
    claims: SessionClaims,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let client_id = query
        .get("client_id")
        .filter(|c| !c.is_empty())
        .cloned()
        .map(ClientId);
    let id = state
        .write_checkpoints
        .create(&state.env.storage, UserId(claims.user_id), client_id)
        .await
        .map_err(reject)?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": {"write_checkpoint": id.get().to_string()}}),
    ))
}

async fn checkpoint_request(
    claims: SessionClaims,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<warp::reply::Response, Rejection> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| reject(ApiError::validation(format!("invalid JSON body: {e}"))))?;
    let client_id = request
        .get("client_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(|c| ClientId(c.to_owned()));
    let requested = match request.get("checkpoint_request_id") {
        Some(Value::String(text)) => text.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .filter(|id| *id > 0)
    .and_then(WriteCheckpointId::from_i64)
    .ok_or_else(|| {
        reject(ApiError::validation(
            "checkpoint_request_id must be an integer from 1 to 2^63-1",
        ))
    })?;
    let id = state
        .write_checkpoints
        .request(&state.env.storage, UserId(claims.user_id), client_id, requested)
        .await
        .map_err(reject)?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": {"checkpoint_request_id": id.get().to_string()}}),
    ))
}

/// 200 once the active sync-rules version has published a checkpoint (its initial snapshot is
/// complete), 503 before; on any node of several sharing one storage, whether it replicates or not.
/// Says the node's role and whether it replicates now.
async fn readiness(state: Arc<ApiState>) -> Result<warp::reply::Response, Rejection> {
    let storage = Arc::clone(&state.env.storage);
    let ready = tokio::task::spawn_blocking(move || -> Result<bool, crate::storage::StorageError> {
        let Some(active) = storage.active_version()? else {
            return Ok(false);
        };
        Ok(storage.latest_checkpoint(active.version)?.is_some())
    })
    .await;
    let (role, replicating) = (state.node.role.name(), state.node.replicating());
    let not_ready = |reason: String| {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "reason": reason, "role": role, "replicating": replicating}),
        )
    };
    Ok(match ready {
        Ok(Ok(true)) => json_reply(
            StatusCode::OK,
            &json!({"ready": true, "role": role, "replicating": replicating}),
        ),
        Ok(Ok(false)) => not_ready("the initial snapshot of the sync rules is not complete yet".to_owned()),
        Ok(Err(error)) => not_ready(error.to_string()),
        Err(error) => not_ready(error.to_string()),
    })
}
