//! The sync state machine: PROTOCOL §2–§4 and §6.2 from the client's side, without I/O.
//!
//! Invariants it keeps:
//! - a bucket's running checksum is the wrapping sum of every op checksum received since its last CLEAR
//!   (a CLEAR sets it to the CLEAR's checksum), so it equals the server's bucket checksum exactly when the
//!   client holds every op up to the checkpoint;
//! - data is published only at a (partial) complete whose buckets all pass that check; on a mismatch the
//!   failing buckets are dropped and the stream closed, so the next request downloads them from 0;
//! - a publish waits for local writes to be acknowledged (the driver's database checks that atomically),
//!   except for priority 0.

use std::collections::BTreeMap;

use syncgate_protocol::{
    BucketChecksum, BucketName, BucketPosition, BucketPriority, Checkpoint, CheckpointDiff, Checksum,
    ClientId, DataLine, OpId, OpType, StreamSubscription, StreamsRequest, SyncLine, SyncRequest,
    WriteCheckpointId,
};

use super::messages::{ApplyPlan, CloseReason, Instruction, StoredBucket, SyncEvent, SyncStatus};

/// `token_expires_in` at or below this many seconds: fetch new credentials and restart the stream.
const REFRESH_CREDENTIALS_BELOW_SECS: i32 = 30;

/// Local download state of one bucket.
#[derive(Debug, Clone, Copy)]
struct LocalBucket {
    last_op: OpId,
    checksum: Checksum,
    /// Ops received during this stream (progress).
    received_ops: u64,
}

/// The checkpoint being downloaded on this stream.
#[derive(Debug, Clone)]
struct TargetCheckpoint {
    last_op_id: OpId,
    write_checkpoint: Option<WriteCheckpointId>,
    buckets: BTreeMap<BucketName, BucketChecksum>,
}

/// Sans-IO sync client: feed [`SyncEvent`]s to [`SyncStateMachine::handle`], execute the returned
/// [`Instruction`]s in order.
#[derive(Debug, Default)]
pub struct SyncStateMachine {
    client_id: Option<ClientId>,
    buckets: BTreeMap<BucketName, LocalBucket>,
    target: Option<TargetCheckpoint>,
    /// Validated but held back by local writes; retried on [`SyncEvent::UploadFinished`].
    held_back: Option<ApplyPlan>,
    /// Sent, awaiting [`SyncEvent::ApplyFinished`].
    applying: Option<ApplyPlan>,
    /// A token refresh was requested; restart the stream once it arrives.
    refreshing: bool,
    streaming: bool,
    status: SyncStatus,
    /// Sent with every stream request: the rules' `request.parameters()` and explicit stream
    /// subscriptions.
    request_options: RequestOptions,
}

/// What the app adds to every sync request.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Client parameters (`request.parameters()` in the sync rules); unauthenticated, so rules must
    /// not grant data on them alone.
    pub client_parameters: serde_json::Map<String, serde_json::Value>,
    /// Explicit sync-stream subscriptions (streams that are not auto-subscribed, or with parameters).
    pub stream_subscriptions: Vec<StreamSubscription>,
}

impl SyncStateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// A machine whose stream requests carry `options`.
    pub fn with_request_options(options: RequestOptions) -> Self {
        SyncStateMachine {
            request_options: options,
            ..Self::default()
        }
    }

    pub fn status(&self) -> &SyncStatus {
        &self.status
    }

    /// Processes one event; returns what the driver must do, in order.
    pub fn handle(&mut self, event: SyncEvent) -> Vec<Instruction> {
        let before = self.status.clone();
        let mut out = Vec::new();
        match event {
            SyncEvent::Start { client_id, buckets } => self.start(client_id, buckets, &mut out),
            SyncEvent::StreamOpened => {
                self.status.connected = true;
                self.status.last_error = None;
            }
            SyncEvent::LineReceived(line) => self.line(line, &mut out),
            SyncEvent::StreamClosed { error } => {
                self.streaming = false;
                self.target = None;
                self.refreshing = false;
                self.status.connected = false;
                self.status.downloading = false;
                if error.is_some() {
                    self.status.last_error = error;
                }
            }
            SyncEvent::ApplyFinished { applied } => self.apply_finished(applied),
            SyncEvent::UploadFinished => {
                if self.applying.is_none()
                    && let Some(plan) = self.held_back.take()
                {
                    self.applying = Some(plan.clone());
                    out.push(Instruction::ApplyCheckpoint(plan));
                }
            }
            SyncEvent::CredentialsRefreshed => {
                if self.refreshing && self.streaming {
                    self.refreshing = false;
                    out.push(Instruction::CloseStream {
                        reason: CloseReason::CredentialsRefreshed,
                    });
                }
            }
        }
        if self.status != before {
            out.push(Instruction::UpdateStatus(self.status.clone()));
        }
        out
    }

    fn start(&mut self, client_id: ClientId, stored: Vec<StoredBucket>, out: &mut Vec<Instruction>) {
        self.buckets = stored
            .into_iter()
            .map(|b| {
                let local = LocalBucket {
                    last_op: b.last_op,
                    checksum: b.checksum,
                    received_ops: 0,
                };
                (b.name, local)
            })
            .collect();
        self.target = None;
        // The service will resend the current checkpoint; until then nothing is known to be complete.
        self.held_back = None;
        self.refreshing = false;
        self.streaming = true;
        let request = SyncRequest {
            buckets: self
                .buckets
                .iter()
                .map(|(name, b)| BucketPosition {
                    name: name.clone(),
                    after: b.last_op,
                })
                .collect(),
            include_checksum: true,
            raw_data: true,
            binary_data: true,
            client_id: Some(client_id.clone()),
            parameters: Some(self.request_options.client_parameters.clone()),
            streams: StreamsRequest {
                subscriptions: self.request_options.stream_subscriptions.clone(),
                ..StreamsRequest::default()
            },
            app_metadata: None,
            only: None,
        };
        self.client_id = Some(client_id);
        out.push(Instruction::OpenStream { request });
    }

    fn line(&mut self, line: SyncLine, out: &mut Vec<Instruction>) {
        match line {
            SyncLine::Checkpoint(checkpoint) => self.checkpoint(checkpoint, out),
            SyncLine::CheckpointDiff(diff) => self.checkpoint_diff(diff, out),
            SyncLine::Data(data) => self.data(data, out),
            SyncLine::CheckpointComplete(_) => self.complete(None, out),
            SyncLine::PartialCheckpointComplete(partial) => self.complete(Some(partial.priority), out),
            SyncLine::TokenExpiresIn(seconds) => {
                if seconds <= 0 {
                    out.push(Instruction::CloseStream {
                        reason: CloseReason::TokenExpired,
                    });
                } else if seconds <= REFRESH_CREDENTIALS_BELOW_SECS && !self.refreshing {
                    self.refreshing = true;
                    out.push(Instruction::RefreshCredentials);
                }
            }
        }
    }

    fn checkpoint(&mut self, checkpoint: Checkpoint, out: &mut Vec<Instruction>) {
        let buckets: BTreeMap<BucketName, BucketChecksum> = checkpoint
            .buckets
            .into_iter()
            .map(|b| (b.bucket.clone(), b))
            .collect();
        // A full checkpoint lists every bucket the client may keep; anything else was revoked.
        let removed: Vec<BucketName> = self
            .buckets
            .keys()
            .filter(|name| !buckets.contains_key(*name))
            .cloned()
            .collect();
        self.delete_buckets(removed, out);
        self.target = Some(TargetCheckpoint {
            last_op_id: checkpoint.last_op_id,
            write_checkpoint: checkpoint.write_checkpoint,
            buckets,
        });
        self.begin_download();
    }

    fn checkpoint_diff(&mut self, diff: CheckpointDiff, out: &mut Vec<Instruction>) {
        let Some(target) = self.target.as_mut() else {
            self.protocol_error("checkpoint_diff before any checkpoint on this stream", out);
            return;
        };
        target.last_op_id = diff.last_op_id;
        // A diff without write_checkpoint clears it (PROTOCOL §7.1 trap 4).
        target.write_checkpoint = diff.write_checkpoint;
        for name in &diff.removed_buckets {
            target.buckets.remove(name);
        }
        for bucket in diff.updated_buckets {
            target.buckets.insert(bucket.bucket.clone(), bucket);
        }
        let removed: Vec<BucketName> = diff
            .removed_buckets
            .into_iter()
            .filter(|name| self.buckets.contains_key(name))
            .collect();
        self.delete_buckets(removed, out);
        self.begin_download();
    }

    fn begin_download(&mut self) {
        // Ops of the new checkpoint will reach the op log before it completes; publishing the held-back
        // older one then would show part of the newer one. The new checkpoint supersedes it.
        self.held_back = None;
        for bucket in self.buckets.values_mut() {
            bucket.received_ops = 0;
        }
        self.status.downloading = true;
        self.update_progress();
    }

    fn data(&mut self, line: DataLine, out: &mut Vec<Instruction>) {
        if line.data.is_empty() {
            return;
        }
        let bucket = self.buckets.entry(line.bucket.clone()).or_insert(LocalBucket {
            last_op: OpId::ZERO,
            checksum: Checksum::ZERO,
            received_ops: 0,
        });
        for op in &line.data {
            if op.op == OpType::Clear {
                bucket.checksum = op.checksum;
            } else {
                bucket.checksum += op.checksum;
            }
            bucket.last_op = bucket.last_op.max(op.op_id);
        }
        bucket.received_ops += line.data.len() as u64;
        out.push(Instruction::StoreOps {
            bucket: line.bucket,
            last_op: bucket.last_op,
            checksum: bucket.checksum,
            ops: line.data,
        });
        self.update_progress();
    }

    fn update_progress(&mut self) {
        let Some(target) = &self.target else { return };
        self.status.total_ops = target.buckets.values().map(|b| u64::from(b.count)).sum();
        self.status.downloaded_ops = target
            .buckets
            .keys()
            .filter_map(|name| self.buckets.get(name))
            .map(|b| b.received_ops)
            .sum();
    }

    /// `checkpoint_complete` (priority `None`) or `partial_checkpoint_complete`.
    fn complete(&mut self, priority: Option<BucketPriority>, out: &mut Vec<Instruction>) {
        let Some(target) = &self.target else {
            self.protocol_error("checkpoint_complete before any checkpoint on this stream", out);
            return;
        };
        let included: Vec<&BucketChecksum> = target
            .buckets
            .values()
            .filter(|b| priority.is_none_or(|p| b.priority <= p))
            .collect();
        let mismatched: Vec<BucketName> = included
            .iter()
            .filter(|expected| {
                let local = self
                    .buckets
                    .get(&expected.bucket)
                    .map_or(Checksum::ZERO, |b| b.checksum);
                local != expected.checksum
            })
            .map(|b| b.bucket.clone())
            .collect();
        if !mismatched.is_empty() {
            tracing::warn!(buckets = ?mismatched, "checksums didn't match; downloading these buckets again");
            self.status.last_error = Some(format!(
                "checksum mismatch for {}",
                mismatched
                    .iter()
                    .map(BucketName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.delete_buckets(mismatched.clone(), out);
            out.push(Instruction::CloseStream {
                reason: CloseReason::ChecksumMismatch { buckets: mismatched },
            });
            return;
        }
        let plan = ApplyPlan {
            last_op_id: target.last_op_id,
            // A partial complete never applies write_checkpoint (PROTOCOL §6.2).
            write_checkpoint: if priority.is_none() {
                target.write_checkpoint
            } else {
                None
            },
            priority,
            buckets: included.iter().map(|b| b.bucket.clone()).collect(),
            wait_for_local_writes: priority != Some(BucketPriority::HIGHEST),
        };
        if priority.is_none() {
            self.status.downloading = false;
        }
        if self.applying.is_some() {
            // The driver runs instructions in order, so this cannot happen with a well-behaved driver;
            // holding the plan back keeps the newest checkpoint rather than losing it.
            self.held_back = Some(plan);
            return;
        }
        self.held_back = None;
        self.applying = Some(plan.clone());
        out.push(Instruction::ApplyCheckpoint(plan));
    }

    fn apply_finished(&mut self, applied: bool) {
        let Some(plan) = self.applying.take() else {
            return;
        };
        if applied {
            // Every op of these buckets up to the checkpoint is now held (PROTOCOL §4.1 note).
            for name in &plan.buckets {
                if let Some(bucket) = self.buckets.get_mut(name) {
                    bucket.last_op = bucket.last_op.max(plan.last_op_id);
                }
            }
            match plan.priority {
                None => {
                    self.status.applied_checkpoint = Some(plan.last_op_id);
                    self.status.applied_priority = None;
                }
                Some(p) => self.status.applied_priority = Some(p),
            }
            self.status.waiting_for_uploads = false;
            // A newer checkpoint held back while this one was applying supersedes it; a held-back
            // partial one of the same checkpoint is covered by a full apply.
            if plan.priority.is_none()
                && self
                    .held_back
                    .as_ref()
                    .is_some_and(|h| h.last_op_id == plan.last_op_id)
            {
                self.held_back = None;
            }
        } else {
            tracing::info!(
                checkpoint = %plan.last_op_id,
                "could not apply checkpoint due to local data; waiting for uploads to be acknowledged"
            );
            self.status.waiting_for_uploads = true;
            if self.held_back.is_none() {
                self.held_back = Some(plan);
            }
        }
    }

    fn delete_buckets(&mut self, names: Vec<BucketName>, out: &mut Vec<Instruction>) {
        if names.is_empty() {
            return;
        }
        for name in &names {
            self.buckets.remove(name);
        }
        out.push(Instruction::DeleteBuckets { buckets: names });
    }

    fn protocol_error(&mut self, message: &str, out: &mut Vec<Instruction>) {
        self.status.last_error = Some(message.to_owned());
        out.push(Instruction::CloseStream {
            reason: CloseReason::ProtocolError {
                message: message.to_owned(),
            },
        });
    }
}
