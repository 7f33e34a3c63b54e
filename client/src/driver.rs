//! The tokio driver: runs the [`SyncStateMachine`] over HTTP (`POST /sync/stream`, NDJSON, gzip) against a
//! [`LocalDatabase`], reconnecting with backoff and resuming from the stored op ids.
//!
//! All protocol decisions are the state machine's; this module only performs its instructions and turns
//! what happens on the network into events.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::time::Duration;

use flate2::write::GzDecoder;
use syncgate_protocol::SyncLine;
use tokio::sync::watch;

use crate::database::{ApplyOutcome, CrudEntry, LocalDatabase};
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

/// What the app provides: credentials, and (once uploads are wired, a later increment) the upload of
/// queued local writes to its own backend.
pub trait BackendConnector: Send + Sync {
    /// Called at start, after a 401 and when the token is about to expire.
    fn fetch_credentials(&self) -> impl Future<Output = Result<Credentials, ClientError>> + Send;

    /// Sends queued local writes to the app's backend; the entries are removed from the queue once this
    /// returns `Ok`. Not called by the driver yet.
    fn upload_data(&self, entries: Vec<CrudEntry>) -> impl Future<Output = Result<(), ClientError>> + Send;
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
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            retry_delay: Duration::from_secs(5),
            max_retry_delay: Duration::from_secs(60),
            stop_after_first_sync: false,
            max_consecutive_failures: None,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// How one stream ended without an error.
enum StreamEnd {
    FirstSyncDone,
    Closed(Option<CloseReason>),
}

/// Runs sync against the connector's service until stopped (or, with
/// [`SyncOptions::stop_after_first_sync`], until the first checkpoint is published).
pub struct SyncDriver<C> {
    db: LocalDatabase,
    connector: C,
    options: SyncOptions,
    machine: SyncStateMachine,
    http: reqwest::Client,
    status: watch::Sender<SyncStatus>,
    credentials: Option<Credentials>,
}

impl<C: BackendConnector> SyncDriver<C> {
    pub fn new(db: LocalDatabase, connector: C, options: SyncOptions) -> Self {
        SyncDriver {
            db,
            connector,
            options,
            machine: SyncStateMachine::new(),
            http: reqwest::Client::new(),
            status: watch::channel(SyncStatus::default()).0,
            credentials: None,
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
                tokio::time::sleep(delay).await;
            }
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
        let mut decoder = gzip.then(|| GzDecoder::new(Vec::new()));
        tracing::info!(gzip, "sync stream open");
        pending.extend(self.machine.handle(SyncEvent::StreamOpened));
        if let Some(end) = self.run_instructions(&mut pending).await? {
            return Ok(end);
        }

        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.options.idle_timeout, response.chunk())
                .await
                .map_err(|_| ClientError::StreamIdle(self.options.idle_timeout))??;
            let Some(chunk) = chunk else {
                tracing::info!("sync stream ended by the service");
                return Ok(StreamEnd::Closed(None));
            };
            match &mut decoder {
                Some(decoder) => {
                    decoder.write_all(&chunk).map_err(ClientError::Decompress)?;
                    decoder.flush().map_err(ClientError::Decompress)?;
                    buffer.append(decoder.get_mut());
                }
                None => buffer.extend_from_slice(&chunk),
            }
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                let Some(line) = SyncLine::from_json(&text)? else {
                    tracing::debug!(line = %text.trim(), "unknown sync line type skipped");
                    continue;
                };
                pending.extend(self.machine.handle(SyncEvent::LineReceived(line)));
                if let Some(end) = self.run_instructions(&mut pending).await? {
                    return Ok(end);
                }
            }
        }
    }

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
