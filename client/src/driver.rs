//! The tokio driver: runs the [`SyncStateMachine`] over HTTP (`POST /sync/stream`, NDJSON, gzip) against a
//! [`LocalDatabase`], reconnecting with backoff and resuming from the stored op ids.
//!
//! All protocol decisions are the state machine's; this module only performs its instructions and turns
//! what happens on the network into events.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flate2::write::GzDecoder;
use futures_util::FutureExt as _;
use syncgate_protocol::{ClientId, SyncLine, WriteCheckpointId};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::database::{ApplyOutcome, CrudTransaction, LocalDatabase};
use crate::error::ClientError;
use crate::sync::{CloseReason, Instruction, SyncEvent, SyncStateMachine, SyncStatus};

/// Where and as whom to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Base URL of the service, e.g. `http://127.0.0.1:8080` (paths are appended to it).
    pub endpoint: String,
    /// The JWT, sent as `Authorization: Token <jwt>`.
    pub token: String,
}

/// What the app provides: credentials, and the upload of queued local writes to its own backend.
pub trait BackendConnector: Send + Sync {
    /// Called at start, after a 401 and when the token is about to expire.
    fn fetch_credentials(&self) -> impl Future<Output = Result<Credentials, ClientError>> + Send;

    /// Sends one queued local transaction to the app's backend. Returning `Ok` marks it complete: its
    /// entries leave the queue. An error leaves them queued; the same transaction is offered again after
    /// a backoff, so the backend must apply it idempotently (by row id). The queue is drained in order,
    /// one transaction at a time.
    fn upload_data(
        &self,
        transaction: &CrudTransaction,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// How the driver retries and when it stops.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Delay before reconnecting; doubled per consecutive failure up to `max_retry_delay`.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// Return once the first complete checkpoint is published to the app's tables.
    pub stop_after_first_sync: bool,
    /// Give up after this many consecutive failed iterations (`None`: never).
    pub max_consecutive_failures: Option<u32>,
    /// A stream silent for this long is considered dead (the service sends a keepalive every ~20 s).
    pub idle_timeout: Duration,
    /// How often the upload queue is checked for writes made by other connections to the database.
    pub upload_poll_interval: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            retry_delay: Duration::from_secs(5),
            max_retry_delay: Duration::from_secs(60),
            stop_after_first_sync: false,
            max_consecutive_failures: None,
            idle_timeout: Duration::from_secs(90),
            upload_poll_interval: Duration::from_millis(500),
        }
    }
}

/// How one stream ended without an error.
enum StreamEnd {
    FirstSyncDone,
    Closed(Option<CloseReason>),
}

/// What one step of the upload loop came to.
enum UploadStep {
    /// The connector accepted the transaction.
    Uploaded(CrudTransaction),
    /// The service issued a write checkpoint for the uploads so far.
    WriteCheckpoint(WriteCheckpointId),
    Failed(ClientError),
    /// A poll interval or a backoff delay passed.
    Waited,
}

type UploadFuture = Pin<Box<dyn Future<Output = UploadStep> + Send>>;

/// Runs sync against the connector's service until stopped (or, with
/// [`SyncOptions::stop_after_first_sync`], until the first checkpoint is published).
///
/// Uploads run alongside the stream (and between streams, so they go on while the service is
/// unreachable): the queue is drained one transaction at a time through
/// [`BackendConnector::upload_data`], then a write checkpoint is requested and becomes the target that
/// held-back downloads wait for (PROTOCOL §4.4).
pub struct SyncDriver<C> {
    db: LocalDatabase,
    connector: Arc<C>,
    options: SyncOptions,
    machine: SyncStateMachine,
    http: reqwest::Client,
    status: watch::Sender<SyncStatus>,
    credentials: Option<Credentials>,
    /// The upload step in flight; always one (polling the queue when there is nothing to upload).
    upload: Option<UploadFuture>,
    upload_failures: u32,
}

impl<C: BackendConnector + 'static> SyncDriver<C> {
    pub fn new(db: LocalDatabase, connector: C, options: SyncOptions) -> Self {
        SyncDriver {
            db,
            connector: Arc::new(connector),
            options,
            machine: SyncStateMachine::new(),
            http: reqwest::Client::new(),
            status: watch::channel(SyncStatus::default()).0,
            credentials: None,
            upload: None,
            upload_failures: 0,
        }
    }

    /// Sync status updates.
    pub fn subscribe_status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    /// The local database (when the driver has returned, or between runs).
    pub fn into_database(self) -> LocalDatabase {
        self.db
    }

    /// The sync loop. Returns `Ok` only with `stop_after_first_sync`; errors once
    /// `max_consecutive_failures` is reached or on a non-retryable error.
    pub async fn run(&mut self) -> Result<(), ClientError> {
        let mut failures: u32 = 0;
        loop {
            let result = self.iteration().await;
            let delay = match result {
                Ok(StreamEnd::FirstSyncDone) => return Ok(()),
                Ok(StreamEnd::Closed(reason)) => {
                    self.handle_event(SyncEvent::StreamClosed { error: None })?;
                    match reason {
                        Some(CloseReason::CredentialsRefreshed) => Duration::ZERO,
                        Some(CloseReason::TokenExpired) => {
                            self.credentials = None;
                            self.options.retry_delay
                        }
                        // Checksum mismatches and protocol errors count as failures: a server that keeps
                        // sending them must not be hammered.
                        Some(CloseReason::ChecksumMismatch { .. } | CloseReason::ProtocolError { .. }) => {
                            failures += 1;
                            self.backoff(failures)
                        }
                        None => {
                            failures = 0;
                            self.options.retry_delay
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "sync iteration failed");
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    if matches!(error, ClientError::Unauthorized(_)) {
                        self.credentials = None;
                    }
                    self.handle_event(SyncEvent::StreamClosed {
                        error: Some(error.to_string()),
                    })?;
                    failures += 1;
                    if self
                        .options
                        .max_consecutive_failures
                        .is_some_and(|max| failures >= max)
                    {
                        return Err(error);
                    }
                    self.backoff(failures)
                }
            };
            if !delay.is_zero() {
                tracing::info!(delay_ms = delay.as_millis(), "reconnecting");
                if let Some(StreamEnd::FirstSyncDone) = self.upload_until(Instant::now() + delay).await? {
                    return Ok(());
                }
            }
        }
    }

    /// Runs upload steps until `deadline` (the reconnect delay: uploads do not wait for the stream).
    async fn upload_until(&mut self, deadline: Instant) -> Result<Option<StreamEnd>, ClientError> {
        loop {
            let upload = self.upload_future()?;
            let step = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(None),
                step = upload => step,
            };
            self.upload = None;
            let mut pending = self.upload_done(step)?.into();
            if let Some(end) = self.run_instructions(&mut pending).await? {
                return Ok(Some(end));
            }
        }
    }

    /// The upload step in flight, starting the next one if none is.
    fn upload_future(&mut self) -> Result<&mut UploadFuture, ClientError> {
        if self.upload.is_none() {
            self.upload = Some(self.next_upload()?);
        }
        Ok(self.upload.as_mut().expect("set above"))
    }

    /// The next upload step from the queue's state: upload its oldest transaction, else request a write
    /// checkpoint if the uploads lack one, else wait a poll interval.
    fn next_upload(&mut self) -> Result<UploadFuture, ClientError> {
        let connector = Arc::clone(&self.connector);
        if let Some(transaction) = self.db.next_crud_transaction()? {
            tracing::debug!(
                transaction_id = transaction.transaction_id,
                entries = transaction.entries.len(),
                "uploading"
            );
            return Ok(Box::pin(async move {
                match connector.upload_data(&transaction).await {
                    Ok(()) => UploadStep::Uploaded(transaction),
                    Err(error) => UploadStep::Failed(error),
                }
            }));
        }
        if self.db.needs_write_checkpoint()? {
            let credentials = self.credentials.clone();
            let http = self.http.clone();
            let client_id = self.db.client_id()?;
            return Ok(Box::pin(async move {
                let credentials = match credentials {
                    Some(credentials) => credentials,
                    None => match connector.fetch_credentials().await {
                        Ok(credentials) => credentials,
                        Err(error) => return UploadStep::Failed(error),
                    },
                };
                match request_write_checkpoint(&http, &credentials, &client_id).await {
                    Ok(id) => UploadStep::WriteCheckpoint(id),
                    Err(error) => UploadStep::Failed(error),
                }
            }));
        }
        let interval = self.options.upload_poll_interval;
        Ok(Box::pin(async move {
            tokio::time::sleep(interval).await;
            UploadStep::Waited
        }))
    }

    /// Records a finished upload step; returns the state machine's instructions (a held-back checkpoint
    /// may apply once the write checkpoint is known).
    fn upload_done(&mut self, step: UploadStep) -> Result<Vec<Instruction>, ClientError> {
        match step {
            UploadStep::Uploaded(transaction) => {
                self.db.complete_crud_transaction(&transaction)?;
                self.upload_failures = 0;
                tracing::info!(
                    transaction_id = transaction.transaction_id,
                    entries = transaction.entries.len(),
                    "uploaded"
                );
                Ok(Vec::new())
            }
            UploadStep::WriteCheckpoint(id) => {
                self.upload_failures = 0;
                if self.db.set_write_checkpoint_target(id)? {
                    tracing::info!(write_checkpoint = %id, "uploads done; waiting for their write checkpoint");
                    Ok(self.machine.handle(SyncEvent::UploadFinished))
                } else {
                    // A local write came in meanwhile: its upload asks for a newer checkpoint.
                    Ok(Vec::new())
                }
            }
            UploadStep::Failed(error) => {
                if !error.is_retryable() {
                    return Err(error);
                }
                if matches!(error, ClientError::Unauthorized(_)) {
                    self.credentials = None;
                }
                self.upload_failures += 1;
                let delay = self.backoff(self.upload_failures);
                tracing::warn!(%error, retry_in_ms = delay.as_millis(), "upload failed; the queue is kept");
                self.upload = Some(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    UploadStep::Waited
                }));
                Ok(Vec::new())
            }
            UploadStep::Waited => Ok(Vec::new()),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.options
            .retry_delay
            .saturating_mul(factor)
            .min(self.options.max_retry_delay)
    }

    async fn credentials(&mut self) -> Result<Credentials, ClientError> {
        if let Some(credentials) = &self.credentials {
            return Ok(credentials.clone());
        }
        let credentials = self.connector.fetch_credentials().await?;
        self.credentials = Some(credentials.clone());
        Ok(credentials)
    }

    /// One stream: open it, feed its lines to the state machine, run the instructions.
    async fn iteration(&mut self) -> Result<StreamEnd, ClientError> {
        let credentials = self.credentials().await?;
        let start = SyncEvent::Start {
            client_id: self.db.client_id()?,
            buckets: self.db.stored_buckets()?,
        };
        let mut pending: VecDeque<Instruction> = self.machine.handle(start).into();
        let Some(Instruction::OpenStream { request }) = pending.pop_front() else {
            unreachable!("Start always answers OpenStream first");
        };
        let url = format!("{}/sync/stream", credentials.endpoint.trim_end_matches('/'));
        tracing::info!(%url, buckets = request.buckets.len(), "opening sync stream");
        let mut response = self
            .http
            .post(&url)
            .header("authorization", format!("Token {}", credentials.token))
            .header("content-type", "application/json")
            // For the service's logs (PROTOCOL §1.1).
            .header(
                "x-user-agent",
                concat!("syncgate-client/", env!("CARGO_PKG_VERSION")),
            )
            // No BSON support here: pin NDJSON.
            .header("accept", "application/x-ndjson")
            .header("accept-encoding", "gzip")
            .body(serde_json::to_string(&request).expect("a sync request serializes"))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            if status.as_u16() == 401 {
                return Err(ClientError::Unauthorized(body));
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
        pending.extend(self.machine.handle(SyncEvent::StreamOpened));
        if let Some(end) = self.run_instructions(&mut pending).await? {
            return Ok(end);
        }

        // Decompressing and parsing run on a thread of their own, alongside storing earlier lines here.
        // At most MAX_UNDECODED_BYTES received ahead of it, and PARSED_LINES_AHEAD parsed lines ahead of
        // this loop, so a fast service does not fill the memory.
        let undecoded = Arc::new(AtomicUsize::new(0));
        let (chunks_tx, chunks_rx) = std::sync::mpsc::channel();
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel(PARSED_LINES_AHEAD);
        {
            let undecoded = Arc::clone(&undecoded);
            std::thread::Builder::new()
                .name("syncgate-decode".to_owned())
                .spawn(move || decode_lines(&chunks_rx, gzip, &undecoded, &lines_tx))
                .map_err(ClientError::DecoderThread)?;
        }
        // None once the service ended the response.
        let mut chunks_tx = Some(chunks_tx);
        let mut idle_deadline = Instant::now() + self.options.idle_timeout;
        loop {
            // reqwest's chunk() takes nothing from the body until it resolves, so dropping it unresolved
            // (not ready now, or losing a race) drops no data.
            while let Some(tx) = &chunks_tx
                && undecoded.load(Ordering::Relaxed) < MAX_UNDECODED_BYTES
            {
                let Some(chunk) = response.chunk().now_or_never() else {
                    break;
                };
                idle_deadline = Instant::now() + self.options.idle_timeout;
                match chunk? {
                    Some(chunk) => {
                        undecoded.fetch_add(chunk.len(), Ordering::Relaxed);
                        // A closed channel: the decoder stopped on an error, which it sent as a line.
                        let _ = tx.send(chunk);
                    }
                    None => chunks_tx = None,
                }
            }
            let upload = self.upload_future()?;
            let next = if let Some(step) = upload.now_or_never() {
                Next::Upload(step)
            } else {
                match lines.try_recv() {
                    Ok(item) => Next::Line(item),
                    Err(TryRecvError::Disconnected) => Next::Ended,
                    Err(TryRecvError::Empty) => {
                        // Nothing received is left to handle: commit the download batch before waiting,
                        // so the write lock is not held while the network is idle (not while waiting for
                        // the decoder: that would commit after every line).
                        if undecoded.load(Ordering::Relaxed) == 0 {
                            self.db.commit_downloads()?;
                        }
                        let feeding =
                            chunks_tx.is_some() && undecoded.load(Ordering::Relaxed) < MAX_UNDECODED_BYTES;
                        let upload = self.upload_future()?;
                        tokio::select! {
                            chunk = response.chunk(), if feeding => Next::Chunk(chunk?),
                            item = lines.recv() => item.map_or(Next::Ended, Next::Line),
                            step = upload => Next::Upload(step),
                            () = tokio::time::sleep_until(idle_deadline) => {
                                return Err(ClientError::StreamIdle(self.options.idle_timeout));
                            }
                        }
                    }
                }
            };
            match next {
                Next::Chunk(chunk) => {
                    idle_deadline = Instant::now() + self.options.idle_timeout;
                    match (chunk, &chunks_tx) {
                        (Some(chunk), Some(tx)) => {
                            undecoded.fetch_add(chunk.len(), Ordering::Relaxed);
                            let _ = tx.send(chunk);
                        }
                        _ => chunks_tx = None,
                    }
                }
                Next::Line(item) => {
                    idle_deadline = Instant::now() + self.options.idle_timeout;
                    if let Some(line) = item? {
                        pending.extend(self.machine.handle(SyncEvent::LineReceived(line)));
                        if let Some(end) = self.run_instructions(&mut pending).await? {
                            return Ok(end);
                        }
                    }
                }
                Next::Upload(step) => {
                    self.upload = None;
                    pending.extend(self.upload_done(step)?);
                    if let Some(end) = self.run_instructions(&mut pending).await? {
                        return Ok(end);
                    }
                }
                // The response ended and every line of it was handled.
                Next::Ended => {
                    tracing::info!("sync stream ended by the service");
                    return Ok(StreamEnd::Closed(None));
                }
            }
        }
    }
}

/// Bytes received and not yet parsed by the decoder thread, at most (then reading pauses).
const MAX_UNDECODED_BYTES: usize = 1 << 20;
/// Parsed lines waiting for the sync loop, at most (then the decoder thread waits).
const PARSED_LINES_AHEAD: usize = 16;

/// What the stream loop handles next.
enum Next<C> {
    /// A chunk of the response (`None`: it ended).
    Chunk(Option<C>),
    /// A parsed line (`None`: an unknown line type, skipped), or why decoding stopped.
    Line(Result<Option<SyncLine>, ClientError>),
    Upload(UploadStep),
    /// The decoder thread is done: the response ended and every line was delivered.
    Ended,
}

/// The decoder thread: decompresses the response's chunks (gzip), splits them into lines and parses
/// them, in order. Stops after sending an error, or when the sync loop is gone.
fn decode_lines<B: AsRef<[u8]>>(
    chunks: &std::sync::mpsc::Receiver<B>,
    gzip: bool,
    undecoded: &AtomicUsize,
    lines: &tokio::sync::mpsc::Sender<Result<Option<SyncLine>, ClientError>>,
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
        // Only now: zero tells the sync loop that everything received was parsed.
        undecoded.fetch_sub(chunk.len(), Ordering::Relaxed);
    }
}

/// `GET /write-checkpoint2.json` (PROTOCOL §1.4): `{"data": {"write_checkpoint": "88"}}`.
async fn request_write_checkpoint(
    http: &reqwest::Client,
    credentials: &Credentials,
    client_id: &ClientId,
) -> Result<WriteCheckpointId, ClientError> {
    let url = format!(
        "{}/write-checkpoint2.json",
        credentials.endpoint.trim_end_matches('/')
    );
    let response = http
        .get(&url)
        .query(&[("client_id", client_id.as_str())])
        .header("authorization", format!("Token {}", credentials.token))
        .header(
            "x-user-agent",
            concat!("syncgate-client/", env!("CARGO_PKG_VERSION")),
        )
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if status.as_u16() == 401 {
        return Err(ClientError::Unauthorized(body));
    }
    if !status.is_success() {
        return Err(ClientError::HttpStatus {
            status: status.as_u16(),
            body,
        });
    }
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| ClientError::HttpStatus {
        status: status.as_u16(),
        body: format!("write checkpoint answer is not JSON ({e}): {body}"),
    })?;
    // A string-int, though a small number is accepted too (PROTOCOL §1.4).
    let id = match &value["data"]["write_checkpoint"] {
        serde_json::Value::String(text) => text.parse().ok(),
        serde_json::Value::Number(number) => number.as_u64().and_then(WriteCheckpointId::new),
        _ => None,
    };
    id.ok_or_else(|| ClientError::HttpStatus {
        status: status.as_u16(),
        body: format!("no write_checkpoint in the answer: {body}"),
    })
}

impl<C: BackendConnector + 'static> SyncDriver<C> {
    fn handle_event(&mut self, event: SyncEvent) -> Result<(), ClientError> {
        for instruction in self.machine.handle(event) {
            // Outside a stream only status changes are expected.
            if let Instruction::UpdateStatus(status) = instruction {
                self.status.send_replace(status);
            }
        }
        Ok(())
    }

    /// Executes instructions (and those their results produce) until none is left or the stream must end.
    async fn run_instructions(
        &mut self,
        pending: &mut VecDeque<Instruction>,
    ) -> Result<Option<StreamEnd>, ClientError> {
        while let Some(instruction) = pending.pop_front() {
            match instruction {
                Instruction::OpenStream { .. } => {
                    unreachable!("the state machine opens a stream only on Start")
                }
                Instruction::StoreOps {
                    bucket,
                    ops,
                    last_op,
                    checksum,
                } => self.db.store_ops(&bucket, &ops, last_op, checksum)?,
                Instruction::DeleteBuckets { buckets } => {
                    tracing::info!(?buckets, "deleting buckets");
                    self.db.delete_buckets(&buckets)?;
                }
                Instruction::ApplyCheckpoint(plan) => {
                    let outcome = self.db.apply_checkpoint(&plan)?;
                    let applied = outcome == ApplyOutcome::Applied;
                    if applied {
                        tracing::info!(checkpoint = %plan.last_op_id, priority = ?plan.priority, "checkpoint applied");
                    }
                    pending.extend(self.machine.handle(SyncEvent::ApplyFinished { applied }));
                    if applied && plan.priority.is_none() && self.options.stop_after_first_sync {
                        // Publish the final status before returning.
                        for instruction in pending.drain(..) {
                            if let Instruction::UpdateStatus(status) = instruction {
                                self.status.send_replace(status);
                            }
                        }
                        return Ok(Some(StreamEnd::FirstSyncDone));
                    }
                }
                Instruction::RefreshCredentials => {
                    self.credentials = None;
                    self.credentials().await?;
                    pending.extend(self.machine.handle(SyncEvent::CredentialsRefreshed));
                }
                Instruction::CloseStream { reason } => {
                    tracing::info!(?reason, "closing sync stream");
                    return Ok(Some(StreamEnd::Closed(Some(reason))));
                }
                Instruction::UpdateStatus(status) => {
                    tracing::debug!(?status, "sync status");
                    self.status.send_replace(status);
                }
            }
        }
        Ok(None)
    }
}
