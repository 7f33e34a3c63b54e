//! The tokio driver: runs the [`SyncStateMachine`] over a [`SyncStream`] (HTTP or WebSocket, see
//! [`crate::transport`]) against a [`LocalDatabase`], reconnecting with backoff and resuming from the
//! stored op ids.
//!
//! All protocol decisions are the state machine's; this module only performs its instructions and turns
//! what happens on the network into events.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use syncgate_protocol::{ClientId, SyncLine, WriteCheckpointId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::database::{ApplyOutcome, CrudTransaction, LocalDatabase};
use crate::error::ClientError;
use crate::sync::{CloseReason, Instruction, RequestOptions, SyncEvent, SyncStateMachine, SyncStatus};
use crate::transport::{ConnectionMethod, SyncStream, USER_AGENT};

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

/// How the driver connects, retries and when it stops.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// HTTP (default) or WebSocket; reconnects, backoff and credential refreshes are the same for both.
    pub connection_method: ConnectionMethod,
    /// Delay before reconnecting; doubled per consecutive failure up to `max_retry_delay`.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// Return once the first complete checkpoint is published to the app's tables.
    pub stop_after_first_sync: bool,
    /// Give up after this many consecutive failed iterations (`None`: never).
    pub max_consecutive_failures: Option<u32>,
    /// A stream silent for this long is considered dead (the service sends a keepalive every ~20 s over
    /// HTTP, and answers ours every 20 s over WebSocket).
    pub idle_timeout: Duration,
    /// How often the upload queue is checked for writes made by other connections to the database.
    pub upload_poll_interval: Duration,
    /// Client parameters and stream subscriptions sent with every sync request.
    pub request: RequestOptions,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            connection_method: ConnectionMethod::Http,
            retry_delay: Duration::from_secs(5),
            max_retry_delay: Duration::from_secs(60),
            stop_after_first_sync: false,
            max_consecutive_failures: None,
            idle_timeout: Duration::from_secs(90),
            upload_poll_interval: Duration::from_millis(500),
            request: RequestOptions::default(),
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
    /// The status fields the driver owns (uploads, last sync time), laid over the state machine's.
    driver_status: DriverStatus,
}

/// The [`SyncStatus`] fields the driver owns (uploads, last sync time); see the fields of the same names.
#[derive(Debug, Clone, Default)]
struct DriverStatus {
    upload_pending: u64,
    uploading: bool,
    last_upload_error: Option<String>,
    last_synced_at: Option<std::time::SystemTime>,
}

impl<C: BackendConnector + 'static> SyncDriver<C> {
    pub fn new(db: LocalDatabase, connector: C, options: SyncOptions) -> Self {
        SyncDriver {
            db,
            connector: Arc::new(connector),
            machine: SyncStateMachine::with_request_options(options.request.clone()),
            options,
            http: reqwest::Client::new(),
            status: watch::channel(SyncStatus::default()).0,
            credentials: None,
            upload: None,
            upload_failures: 0,
            driver_status: DriverStatus::default(),
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
        self.driver_status.last_synced_at = self.db.last_synced_at()?;
        self.driver_status.upload_pending = self.db.upload_queue_len()?;
        self.publish_status();
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
        let next = self.db.next_crud_transaction()?;
        self.driver_status.uploading = next.is_some();
        self.driver_status.upload_pending = match next {
            Some(_) => self.db.upload_queue_len()?,
            None => 0,
        };
        self.publish_status();
        if let Some(transaction) = next {
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
                self.driver_status.uploading = false;
                self.driver_status.last_upload_error = None;
                self.driver_status.upload_pending = self.db.upload_queue_len()?;
                self.publish_status();
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
                self.driver_status.uploading = false;
                self.driver_status.last_upload_error = Some(error.to_string());
                self.publish_status();
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
        let mut stream = SyncStream::open(
            self.options.connection_method,
            &self.http,
            &credentials,
            &request,
            self.options.idle_timeout,
        )
        .await?;
        pending.extend(self.machine.handle(SyncEvent::StreamOpened));
        if let Some(end) = self.run_instructions(&mut pending).await? {
            return Ok(end);
        }

        loop {
            // Upload steps first, then lines already received. Only when neither is ready is the download
            // batch committed, so the write lock is not held while the network is idle; not while the
            // stream still parses what arrived, which would commit after every line.
            let next = match self.upload_future()?.now_or_never() {
                Some(step) => Next::Upload(step),
                None => match stream.next_line().now_or_never() {
                    Some(line) => Next::Line(line?),
                    None => {
                        if !stream.decoding() {
                            self.db.commit_downloads()?;
                        }
                        let upload = self.upload_future()?;
                        // next_line() is cancel-safe: losing the race to an upload step drops no data.
                        tokio::select! {
                            line = stream.next_line() => Next::Line(line?),
                            step = upload => Next::Upload(step),
                        }
                    }
                },
            };
            match next {
                Next::Upload(step) => {
                    self.upload = None;
                    pending.extend(self.upload_done(step)?);
                }
                Next::Line(None) => return Ok(StreamEnd::Closed(None)),
                Next::Line(Some(line)) => {
                    pending.extend(self.machine.handle(SyncEvent::LineReceived(line)));
                }
            }
            if let Some(end) = self.run_instructions(&mut pending).await? {
                return Ok(end);
            }
        }
    }
}

/// What the stream loop handles next.
enum Next {
    /// A line of the stream; `None` once the service ended it.
    Line(Option<SyncLine>),
    Upload(UploadStep),
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
        .header("x-user-agent", USER_AGENT)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if status.as_u16() == 401 {
        return Err(ClientError::Unauthorized(format!("HTTP 401: {body}")));
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
            if let Instruction::UpdateStatus(_) = instruction {
                self.publish_status();
            }
        }
        Ok(())
    }

    /// Sends the state machine's status with the driver's upload fields laid over it, if it changed.
    fn publish_status(&self) {
        let mut status = self.machine.status().clone();
        let upload = &self.driver_status;
        status.upload_pending = upload.upload_pending;
        status.uploading = upload.uploading;
        status.last_upload_error.clone_from(&upload.last_upload_error);
        status.last_synced_at = upload.last_synced_at;
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
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
                    tracing::info!(checkpoint = %plan.last_op_id, priority = ?plan.priority, "applying checkpoint");
                    let outcome = self.db.apply_checkpoint(&plan)?;
                    let applied = outcome == ApplyOutcome::Applied;
                    if applied {
                        tracing::info!(checkpoint = %plan.last_op_id, priority = ?plan.priority, "checkpoint applied");
                        if plan.priority.is_none() {
                            self.driver_status.last_synced_at = self.db.last_synced_at()?;
                            self.publish_status();
                        }
                    }
                    pending.extend(self.machine.handle(SyncEvent::ApplyFinished { applied }));
                    if applied && plan.priority.is_none() && self.options.stop_after_first_sync {
                        // Publish the final status before returning.
                        for instruction in pending.drain(..) {
                            if let Instruction::UpdateStatus(_) = instruction {
                                self.publish_status();
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
                    self.publish_status();
                }
            }
        }
        Ok(None)
    }
}
