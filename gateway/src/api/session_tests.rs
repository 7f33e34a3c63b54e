//! Session behaviour on a real SQLite storage (and, for the change feed, a Postgres one), without HTTP: the
//! lines a client receives.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use syncgate_protocol::{BucketName, Checksum, ClientId, OpId, OpType, SyncLine, SyncRequest, UserId};
use tokio::sync::{mpsc, watch};

use super::metrics::ApiMetrics;
use super::session::{
    Session, SessionClaims, SessionEnd, SessionEnv, SessionError, SessionLimits, SharedReads,
};
use crate::storage::{
    BucketStorage, Lsn, Notifying, Placement, RowChange, RulesVersion, SourceRowKey, SourceTransaction,
    SqliteStorage,
};
use crate::versioned_rules::RulesCache;

const RULES: &str = "
bucket_definitions:
  global:
    data:
      - SELECT * FROM lists
  by_user:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM todos WHERE owner = bucket.user_id
";

/// `(table, id, Some((bucket, data)))` rows of one transaction; `None` removes the row from every bucket.
type Rows<'a> = [(&'a str, &'a str, Option<(&'a str, &'a str)>)];

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Arc<Notifying<SqliteStorage>>,
    env: Arc<SessionEnv<dyn BucketStorage>>,
    version: RulesVersion,
    lsn: u64,
    shutdown: watch::Sender<bool>,
}

impl Fixture {
    fn new(limits: SessionLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Notifying::new(
            SqliteStorage::open(dir.path().join("buckets.db")).unwrap(),
        ));
        let version = storage.create_version(RULES).unwrap();
        let events = Arc::clone(storage.events());
        let dyn_storage: Arc<dyn BucketStorage> = storage.clone();
        let env = Arc::new(SessionEnv {
            storage: dyn_storage,
            events,
            rules: Arc::new(RulesCache::default()),
            limits,
            metrics: Arc::new(ApiMetrics::default()),
            reads: SharedReads::default(),
        });
        Fixture {
            _dir: dir,
            storage,
            env,
            version,
            lsn: 100,
            shutdown: watch::Sender::new(false),
        }
    }

    fn bucket(&self, name: &str) -> BucketName {
        BucketName::new(format!("{}#{name}", self.version))
    }

    /// Applies one transaction setting `(table, id)` rows with their buckets; returns its checkpoint.
    fn commit(&mut self, rows: &Rows<'_>) -> OpId {
        self.lsn += 10;
        let changes = rows
            .iter()
            .map(|(table, id, placement)| RowChange {
                row: SourceRowKey {
                    table: format!("public.{table}"),
                    key: (*id).to_owned(),
                },
                placements: Some(
                    placement
                        .iter()
                        .map(|(bucket, data)| Placement {
                            bucket: self.bucket(bucket),
                            table: (*table).to_owned(),
                            id: (*id).to_owned(),
                            data: (*data).to_owned(),
                        })
                        .collect(),
                ),
                parameters: None,
                source_row: None,
            })
            .collect();
        self.storage
            .apply_batch(
                self.version,
                &[SourceTransaction {
                    commit_lsn: Lsn(self.lsn),
                    changes,
                }],
            )
            .unwrap()
            .unwrap()
            .op_id
    }

    fn start(&self, user: &str, request: SyncRequest) -> Stream {
        self.start_with_capacity(user, request, 16)
    }

    fn start_with_capacity(&self, user: &str, request: SyncRequest, capacity: usize) -> Stream {
        self.start_expiring(user, request, capacity, 3600)
    }

    fn start_expiring(&self, user: &str, request: SyncRequest, capacity: usize, ttl_seconds: u64) -> Stream {
        let expires_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + ttl_seconds;
        let claims = SessionClaims {
            user_id: user.into(),
            payload: json!({"sub": user, "exp": expires_at}),
            expires_at,
        };
        let (tx, rx) = mpsc::channel(capacity);
        let session = Session::new(Arc::clone(&self.env), claims, &request, tx);
        let task = tokio::spawn(session.run(self.shutdown.subscribe()));
        Stream { rx, task }
    }
}

struct Stream {
    rx: mpsc::Receiver<SyncLine>,
    task: tokio::task::JoinHandle<Result<SessionEnd, SessionError>>,
}

impl Stream {
    async fn next(&mut self) -> SyncLine {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a line within 10 s")
            .expect("stream open")
    }

    /// Asserts nothing arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await {
            panic!("unexpected line {line:?}");
        }
    }
}

fn ops_of(line: &SyncLine) -> Vec<(u64, OpType)> {
    match line {
        SyncLine::Data(d) => d.data.iter().map(|o| (o.op_id.get(), o.op)).collect(),
        other => panic!("expected data, got {other:?}"),
    }
}

fn checksum_sum(lines: &[SyncLine], bucket: &BucketName) -> Checksum {
    lines
        .iter()
        .filter_map(|l| match l {
            SyncLine::Data(d) if &d.bucket == bucket => {
                Some(d.data.iter().map(|o| o.checksum).sum::<Checksum>())
            }
            _ => None,
        })
        .sum()
}

#[tokio::test]
async fn waits_for_the_first_checkpoint_then_sends_checkpoint_data_and_complete() {
    let mut f = Fixture::new(SessionLimits::default());
    let mut stream = f.start("u1", SyncRequest::default());
    // The version is not active yet: keepalives only, never an empty checkpoint.
    stream.quiet().await;

    f.commit(&[
        ("lists", "l1", Some(("global[]", r#"{"id":"l1"}"#))),
        (
            "todos",
            "t1",
            Some(("by_user[\"u1\"]", r#"{"id":"t1","owner":"u1"}"#)),
        ),
        (
            "todos",
            "t2",
            Some(("by_user[\"u2\"]", r#"{"id":"t2","owner":"u2"}"#)),
        ),
    ]);
    f.storage.activate(f.version).unwrap();
    let checkpoint = f.storage.latest_checkpoint(f.version).unwrap().unwrap().op_id;

    let SyncLine::Checkpoint(line) = stream.next().await else {
        panic!("first line must be the checkpoint")
    };
    assert_eq!(line.last_op_id, checkpoint);
    let names: Vec<&str> = line.buckets.iter().map(|b| b.bucket.as_str()).collect();
    let (global, mine) = (f.bucket("global[]"), f.bucket("by_user[\"u1\"]"));
    assert_eq!(
        names,
        vec![global.as_str(), mine.as_str()],
        "definition order, u2's bucket absent"
    );
    assert_eq!(line.streams.len(), 2);
    assert!(line.buckets.iter().all(|b| b.count == 1));

    let mut lines = vec![stream.next().await, stream.next().await];
    for line in &lines {
        let SyncLine::Data(d) = line else {
            panic!("data expected: {line:?}")
        };
        assert!(d.data.iter().all(|o| o.op_id <= checkpoint));
        assert!(!d.has_more);
        assert_eq!(d.after, OpId::ZERO);
    }
    lines.push(stream.next().await);
    assert!(matches!(lines[2], SyncLine::CheckpointComplete(c) if c.last_op_id == checkpoint));
    for bucket in &line.buckets {
        assert_eq!(
            checksum_sum(&lines, &bucket.bucket),
            bucket.checksum,
            "{}",
            bucket.bucket
        );
    }
    stream.quiet().await;
}

#[tokio::test]
async fn later_commits_send_diffs_and_write_checkpoints_empty_diffs() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[("todos", "t1", Some(("by_user[\"u1\"]", r#"{"id":"t1","v":1}"#)))]);
    f.storage.activate(f.version).unwrap();
    let request = SyncRequest {
        client_id: Some(ClientId("c1".into())),
        ..SyncRequest::default()
    };
    let mut stream = f.start("u1", request);
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    assert_eq!(ops_of(&stream.next().await).len(), 1);
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));

    // An update of the user's row and a change in someone else's bucket.
    let update = f.commit(&[
        ("todos", "t1", Some(("by_user[\"u1\"]", r#"{"id":"t1","v":2}"#))),
        ("todos", "t9", Some(("by_user[\"u9\"]", r#"{"id":"t9"}"#))),
    ]);
    let SyncLine::CheckpointDiff(diff) = stream.next().await else {
        panic!("diff expected")
    };
    assert_eq!(diff.last_op_id, update);
    assert_eq!(
        diff.updated_buckets.len(),
        1,
        "only the user's bucket changed for them"
    );
    assert!(diff.removed_buckets.is_empty());
    let data = stream.next().await;
    let ops = ops_of(&data);
    assert_eq!(ops.len(), 1);
    assert!(
        ops[0].0 < update.get() && ops[0].1 == OpType::Put,
        "t1's PUT, below t9's op: {ops:?}"
    );
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(c) if c.last_op_id == update));

    // A change only another user sees: nothing for u1.
    f.commit(&[("todos", "t9", Some(("by_user[\"u9\"]", r#"{"id":"t9","v":2}"#)))]);
    stream.quiet().await;

    // A write checkpoint at an LSN the next commit passes: an empty diff carrying it, then a complete.
    let id = f
        .storage
        .create_write_checkpoint(&UserId("u1".into()), Some(&ClientId("c1".into())), Lsn(f.lsn + 1))
        .unwrap();
    f.commit(&[]);
    let SyncLine::CheckpointDiff(diff) = stream.next().await else {
        panic!("diff expected")
    };
    assert_eq!(diff.write_checkpoint, Some(id));
    assert!(diff.updated_buckets.is_empty() && diff.removed_buckets.is_empty());
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));

    // Every later diff repeats it (an absent one would clear it on the client).
    let next = f.commit(&[("todos", "t1", Some(("by_user[\"u1\"]", r#"{"id":"t1","v":3}"#)))]);
    let SyncLine::CheckpointDiff(diff) = stream.next().await else {
        panic!("diff expected")
    };
    assert_eq!((diff.last_op_id, diff.write_checkpoint), (next, Some(id)));
}

#[tokio::test]
async fn a_reconnect_resumes_after_the_clients_positions() {
    let mut f = Fixture::new(SessionLimits::default());
    let first = f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1"}"#)))]);
    let second = f.commit(&[("lists", "l2", Some(("global[]", r#"{"id":"l2"}"#)))]);
    f.storage.activate(f.version).unwrap();
    let request: SyncRequest = serde_json::from_value(json!({
        "buckets": [{"name": f.bucket("global[]").as_str(), "after": first.get().to_string()},
                    {"name": "unknown[]", "after": "5"}]
    }))
    .unwrap();
    let mut stream = f.start("u1", request);
    let SyncLine::Checkpoint(line) = stream.next().await else {
        panic!()
    };
    assert!(
        line.buckets.iter().all(|b| b.bucket.as_str() != "unknown[]"),
        "unknown buckets are dropped"
    );
    let data = stream.next().await;
    assert_eq!(ops_of(&data), vec![(second.get(), OpType::Put)]);
    let SyncLine::Data(d) = &data else { panic!() };
    assert_eq!((d.after, d.next_after), (first, second));
    // The user's own (empty) bucket has nothing to send; the complete follows.
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));
}

#[tokio::test]
async fn large_buckets_stream_in_bounded_lines_with_has_more() {
    let mut f = Fixture::new(SessionLimits {
        max_ops_per_line: 2,
        ..SessionLimits::default()
    });
    for i in 0..5 {
        f.commit(&[("lists", &format!("l{i}"), Some(("global[]", r#"{"id":"x"}"#)))]);
    }
    f.storage.activate(f.version).unwrap();
    let mut stream = f.start("u1", SyncRequest::default());
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    let mut sizes = Vec::new();
    let mut more = Vec::new();
    loop {
        match stream.next().await {
            SyncLine::Data(d) => {
                sizes.push(d.data.len());
                more.push(d.has_more);
            }
            SyncLine::CheckpointComplete(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(more, vec![true, true, false]);
}

#[tokio::test]
async fn a_new_active_version_gets_a_full_checkpoint_on_the_same_stream() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1"}"#)))]);
    f.storage.activate(f.version).unwrap();
    let mut stream = f.start("u1", SyncRequest::default());
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    stream.next().await;
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));

    let old = f.bucket("global[]");
    f.version = f.storage.create_version(RULES).unwrap();
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1"}"#)))]);
    f.storage.activate(f.version).unwrap();
    let SyncLine::Checkpoint(line) = stream.next().await else {
        panic!("a full checkpoint for the new version")
    };
    assert!(line.buckets.iter().all(|b| b.bucket != old));
    assert!(line.buckets.iter().any(|b| b.bucket == f.bucket("global[]")));
    assert_eq!(ops_of(&stream.next().await).len(), 1);
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));
}

/// PROTOCOL §6.1 rule 3: an op compacted into a MOVE whose target lies beyond the checkpoint being
/// sent must not be completed at that checkpoint; the session moves on to one that covers the target.
#[tokio::test]
async fn compaction_during_a_download_never_completes_a_checkpoint_with_a_missing_row() {
    let mut f = Fixture::new(SessionLimits {
        max_ops_per_line: 1,
        ..SessionLimits::default()
    });
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1"}"#)))]);
    f.commit(&[("lists", "l2", Some(("global[]", r#"{"id":"l2","v":1}"#)))]);
    let first = f.storage.latest_checkpoint(f.version).unwrap().unwrap().op_id;
    f.storage.activate(f.version).unwrap();
    // Room for one line: the session queues the checkpoint, reads l1's op and blocks sending it, before
    // it has read l2's op.
    let mut stream = f.start_with_capacity("u1", SyncRequest::default(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // l2 is superseded after `first`, and compaction turns its PUT into a MOVE targeting the new op.
    let second = f.commit(&[("lists", "l2", Some(("global[]", r#"{"id":"l2","v":2}"#)))]);
    let stats = f.storage.compact(f.version, OpId::MAX).unwrap();
    assert!(stats.moved >= 1);

    assert!(matches!(stream.next().await, SyncLine::Checkpoint(c) if c.last_op_id == first));
    let mut lines = Vec::new();
    loop {
        let line = stream.next().await;
        let done = matches!(line, SyncLine::CheckpointComplete(_));
        lines.push(line);
        if done {
            break;
        }
    }
    let completes: Vec<u64> = lines
        .iter()
        .filter_map(|l| match l {
            SyncLine::CheckpointComplete(c) => Some(c.last_op_id.get()),
            _ => None,
        })
        .collect();
    assert_eq!(
        completes,
        vec![second.get()],
        "no complete for the first checkpoint: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| matches!(l, SyncLine::CheckpointDiff(d) if d.last_op_id == second))
    );
    let received: Vec<(u64, OpType)> = lines
        .iter()
        .filter(|l| matches!(l, SyncLine::Data(_)))
        .flat_map(ops_of)
        .collect();
    assert!(received.contains(&(second.get(), OpType::Put)), "{received:?}");
    stream.task.abort();
}

#[tokio::test]
async fn too_many_buckets_end_the_session_with_the_reference_code() {
    let mut f = Fixture::new(SessionLimits {
        max_buckets: 1,
        ..SessionLimits::default()
    });
    f.commit(&[]);
    f.storage.activate(f.version).unwrap();
    let stream = f.start("u1", SyncRequest::default());
    let result = tokio::time::timeout(Duration::from_secs(10), stream.task)
        .await
        .unwrap()
        .unwrap();
    let error = result.unwrap_err();
    assert_eq!(error.code(), "PSYNC_S2305");
    assert!(error.to_string().contains("limit is 1"), "{error}");
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_session() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[]);
    f.storage.activate(f.version).unwrap();
    let mut stream = f.start("u1", SyncRequest::default());
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    drop(stream.rx);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::ClientGone);
}

#[tokio::test]
async fn keepalives_count_down_and_the_stream_ends_at_token_expiry() {
    let mut f = Fixture::new(SessionLimits {
        keepalive: Duration::from_millis(700),
        ..SessionLimits::default()
    });
    f.commit(&[]);
    f.storage.activate(f.version).unwrap();
    let mut stream = f.start_expiring("u1", SyncRequest::default(), 16, 3);
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));
    let mut countdown = Vec::new();
    loop {
        match stream.next().await {
            SyncLine::TokenExpiresIn(0) => break,
            SyncLine::TokenExpiresIn(n) => countdown.push(n),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !countdown.is_empty() && countdown.iter().all(|n| (1..=3).contains(n)),
        "{countdown:?}"
    );
    assert!(countdown.windows(2).all(|w| w[0] >= w[1]), "{countdown:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::TokenExpired);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let mut f = Fixture::new(SessionLimits {
        send_timeout: Duration::from_millis(300),
        max_ops_per_line: 1,
        ..SessionLimits::default()
    });
    for i in 0..10 {
        f.commit(&[("lists", &format!("l{i}"), Some(("global[]", r#"{"id":"x"}"#)))]);
    }
    f.storage.activate(f.version).unwrap();
    // Room for one line and nobody reading: the session may not queue more, and gives up.
    let stream = f.start_with_capacity("u1", SyncRequest::default(), 1);
    let result = tokio::time::timeout(Duration::from_secs(10), stream.task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(SessionError::SlowClient(_))), "{result:?}");
    assert_eq!(
        stream.rx.len(),
        1,
        "nothing beyond the channel's capacity was buffered"
    );
}

#[tokio::test]
async fn shutdown_ends_open_sessions_cleanly() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[]);
    f.storage.activate(f.version).unwrap();
    let mut stream = f.start("u1", SyncRequest::default());
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    f.shutdown.send_replace(true);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::Shutdown);
}

/// Waits (generously) until `n` sessions are parked for targeted wake-ups.
async fn parked(f: &Fixture, n: usize) {
    let parked = f.env.reads.parked();
    tokio::time::timeout(Duration::from_secs(10), async {
        while parked.parked() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} parked sessions within 10 s, {} are", parked.parked()));
}

/// Waits until the wake-up dispatcher has handled every commit so far.
async fn dispatched(f: &Fixture) {
    let target = f.env.events.commit_count();
    let mut done = f.env.reads.parked().dispatched();
    tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d >= target))
        .await
        .expect("dispatched within 10 s")
        .unwrap();
}

/// Waits until the dispatcher has woken parked sessions more than `before` times.
async fn woken_after(f: &Fixture, before: u64) {
    let parked = f.env.reads.parked();
    tokio::time::timeout(Duration::from_secs(10), async {
        while parked.wakeups() <= before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a parked session woken within 10 s");
}

/// Reads a stream's first checkpoint through its complete.
async fn synced(stream: &mut Stream) {
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    while !matches!(stream.next().await, SyncLine::CheckpointComplete(_)) {}
}

#[tokio::test]
async fn a_parked_session_is_woken_only_by_a_commit_to_one_of_its_buckets() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[("todos", "t1", Some(("by_user[\"u1\"]", r#"{"id":"t1","v":1}"#)))]);
    f.storage.activate(f.version).unwrap();
    let mut stream = f.start("u1", SyncRequest::default());
    synced(&mut stream).await;
    parked(&f, 1).await;
    let wakeups = f.env.reads.parked().wakeups();

    // Someone else's bucket, twice: the session is not woken, sends nothing.
    f.commit(&[("todos", "t9", Some(("by_user[\"u9\"]", r#"{"id":"t9"}"#)))]);
    dispatched(&f).await;
    let skipped = f.commit(&[("todos", "t9", Some(("by_user[\"u9\"]", r#"{"id":"t9","v":2}"#)))]);
    dispatched(&f).await;
    assert_eq!(
        f.env.reads.parked().wakeups(),
        wakeups,
        "no wake-up for another bucket"
    );
    assert!(stream.rx.try_recv().is_err(), "nothing sent for another bucket");
    assert_eq!(f.env.reads.parked().parked(), 1);

    // Its own bucket: woken once or served by the dispatcher; the diff (from the checkpoint advanced
    // while parked) lists only it.
    let update = f.commit(&[("todos", "t1", Some(("by_user[\"u1\"]", r#"{"id":"t1","v":2}"#)))]);
    let SyncLine::CheckpointDiff(diff) = stream.next().await else {
        panic!("diff expected")
    };
    assert_eq!(diff.last_op_id, update);
    let names: Vec<_> = diff.updated_buckets.iter().map(|b| b.bucket.clone()).collect();
    assert_eq!(names, vec![f.bucket("by_user[\"u1\"]")]);
    let SyncLine::Data(data) = stream.next().await else {
        panic!("data expected")
    };
    assert!(
        data.after < skipped,
        "from the client's position, not the skipped checkpoint"
    );
    assert_eq!(ops_of(&SyncLine::Data(data)), vec![(update.get(), OpType::Put)]);
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(c) if c.last_op_id == update));
    dispatched(&f).await;
    let parked_index = f.env.reads.parked();
    assert!(
        parked_index.wakeups() > wakeups || parked_index.deliveries() > 0,
        "woken, or served by the dispatcher"
    );
    parked(&f, 1).await;
}

#[tokio::test]
async fn write_checkpoints_compactions_and_new_versions_reach_parked_sessions() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1","v":1}"#)))]);
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1","v":2}"#)))]);
    f.storage.activate(f.version).unwrap();
    let request = SyncRequest {
        client_id: Some(ClientId("c1".into())),
        ..SyncRequest::default()
    };
    let mut stream = f.start("u1", request);
    synced(&mut stream).await;
    parked(&f, 1).await;

    // A write checkpoint the next commit (to another bucket) passes.
    let id = f
        .storage
        .create_write_checkpoint(&UserId("u1".into()), Some(&ClientId("c1".into())), Lsn(f.lsn + 1))
        .unwrap();
    f.commit(&[("todos", "t9", Some(("by_user[\"u9\"]", r#"{"id":"t9"}"#)))]);
    let SyncLine::CheckpointDiff(diff) = stream.next().await else {
        panic!("diff expected")
    };
    assert_eq!(diff.write_checkpoint, Some(id));
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));
    parked(&f, 1).await;

    // A compaction wakes it (checksums are kept, so it has nothing to send).
    let wakeups = f.env.reads.parked().wakeups();
    let checkpoint = f.storage.latest_checkpoint(f.version).unwrap().unwrap().op_id;
    f.storage.compact(f.version, checkpoint).unwrap();
    woken_after(&f, wakeups).await;
    parked(&f, 1).await;

    // A new active version: a full checkpoint.
    f.version = f.storage.create_version(RULES).unwrap();
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1"}"#)))]);
    f.storage.activate(f.version).unwrap();
    let SyncLine::Checkpoint(line) = stream.next().await else {
        panic!("a full checkpoint for the new version")
    };
    assert!(line.buckets.iter().any(|b| b.bucket == f.bucket("global[]")));
    assert_eq!(ops_of(&stream.next().await).len(), 1);
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));
}

/// Reads lines up to the complete of `last` (generously), then checks that nothing else follows.
async fn lines_through(stream: &mut Stream, last: OpId) -> Vec<SyncLine> {
    let mut lines = Vec::new();
    loop {
        let line = stream.next().await;
        let done = matches!(&line, SyncLine::CheckpointComplete(c) if c.last_op_id == last);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// `lines` as JSON, comparable across stores: op and write-checkpoint ids (one sequence, seeded from
/// the clock when a store is created) relative to `base`, bucket names without the version prefix.
fn comparable(lines: &[SyncLine], base: OpId, version: RulesVersion) -> Vec<serde_json::Value> {
    use serde_json::Value;
    fn walk(value: &mut Value, base: i128, prefix: &str) {
        // Checksums and counts are far below a clock-seeded id.
        let relative = |n: u64| (n > 1 << 40).then(|| Value::String(format!("{:+}", i128::from(n) - base)));
        match value {
            Value::String(s) => {
                if let Some(relative) = s.parse::<u64>().ok().and_then(relative) {
                    *value = relative;
                } else if let Some(rest) = s.strip_prefix(prefix) {
                    *s = rest.to_owned();
                }
            }
            Value::Number(n) => {
                if let Some(relative) = n.as_u64().and_then(relative) {
                    *value = relative;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, base, prefix)),
            Value::Object(fields) => fields.values_mut().for_each(|v| walk(v, base, prefix)),
            _ => {}
        }
    }
    let prefix = format!("{version}#");
    lines
        .iter()
        .map(|line| {
            let mut value = serde_json::to_value(line).unwrap();
            walk(&mut value, i128::from(base.get()), &prefix);
            value
        })
        .collect()
}

/// A parked session's lines for a run of commits, with deliveries by the dispatcher on or off:
/// its shared bucket alone, its own bucket in more `data` lines than one, another user's bucket, both
/// of its buckets, a write checkpoint, then its shared bucket again. Returns the lines from the first
/// commit on (see [`comparable`]) and the dispatcher's deliveries.
async fn parked_session_lines(delivering: bool) -> (Vec<serde_json::Value>, u64) {
    let mut f = Fixture::new(SessionLimits {
        max_ops_per_line: 2,
        ..SessionLimits::default()
    });
    f.env.reads.parked().set_delivering(delivering);
    let base = f.commit(&[
        ("lists", "l1", Some(("global[]", r#"{"id":"l1","v":1}"#))),
        ("todos", "t1", Some(("by_user[\"u1\"]", r#"{"id":"t1","v":1}"#))),
    ]);
    f.storage.activate(f.version).unwrap();
    let request = SyncRequest {
        client_id: Some(ClientId("c1".into())),
        ..SyncRequest::default()
    };
    let mut stream = f.start_with_capacity("u1", request, 64);
    synced(&mut stream).await;
    let mut lines = Vec::new();
    let user = "by_user[\"u1\"]";
    // (whether the commit concerns u1, its rows)
    let steps: [(bool, &Rows<'_>); 4] = [
        (
            true,
            &[("lists", "l1", Some(("global[]", r#"{"id":"l1","v":2}"#)))],
        ),
        (
            true,
            &[
                ("todos", "t1", Some((user, r#"{"id":"t1","v":2}"#))),
                ("todos", "t2", Some((user, r#"{"id":"t2"}"#))),
                ("todos", "t3", Some((user, r#"{"id":"t3"}"#))),
            ],
        ),
        (
            false,
            &[("todos", "t9", Some(("by_user[\"u9\"]", r#"{"id":"t9"}"#)))],
        ),
        (
            true,
            &[
                ("lists", "l2", Some(("global[]", r#"{"id":"l2"}"#))),
                ("todos", "t2", None),
            ],
        ),
    ];
    for (concerns, rows) in steps {
        parked(&f, 1).await;
        let at = f.commit(rows);
        dispatched(&f).await;
        if concerns {
            lines.extend(lines_through(&mut stream, at).await);
        } else {
            stream.quiet().await;
        }
    }
    // A write checkpoint passed by a commit to the shared bucket: the session is woken for it.
    parked(&f, 1).await;
    f.storage
        .create_write_checkpoint(&UserId("u1".into()), Some(&ClientId("c1".into())), Lsn(f.lsn + 1))
        .unwrap();
    let at = f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1","v":3}"#)))]);
    lines.extend(lines_through(&mut stream, at).await);
    // And the commit after it is delivered again, with the write checkpoint the session took over.
    parked(&f, 1).await;
    let at = f.commit(&[("lists", "l3", Some(("global[]", r#"{"id":"l3"}"#)))]);
    lines.extend(lines_through(&mut stream, at).await);
    stream.quiet().await;
    (
        comparable(&lines, base, f.version),
        f.env.reads.parked().deliveries(),
    )
}

#[tokio::test]
async fn the_dispatcher_delivers_to_a_parked_session_exactly_the_lines_it_would_send_when_woken() {
    let (delivered, deliveries) = parked_session_lines(true).await;
    let (woken, no_deliveries) = parked_session_lines(false).await;
    assert_eq!(no_deliveries, 0);
    assert_eq!(
        deliveries, 4,
        "the concerning commits without a new write checkpoint are delivered"
    );
    assert_eq!(delivered, woken);
    // The run covers what it claims: `data` lines with has_more, and the write checkpoint.
    assert!(delivered.iter().any(|l| l["data"]["has_more"] == true));
    let write_checkpoints: Vec<_> = delivered
        .iter()
        .filter_map(|l| l.get("checkpoint_diff"))
        .map(|d| d.get("write_checkpoint").cloned().unwrap_or_default())
        .collect();
    assert_eq!(write_checkpoints.len(), 5, "{delivered:#?}");
    assert!(write_checkpoints[..3].iter().all(serde_json::Value::is_null));
    assert!(!write_checkpoints[3].is_null() && write_checkpoints[3] == write_checkpoints[4]);
}

#[tokio::test]
async fn a_parked_session_whose_channel_lacks_room_is_woken_to_send_its_lines() {
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1","v":1}"#)))]);
    f.storage.activate(f.version).unwrap();
    // Room for two lines: a diff, a `data` line and a complete do not fit at once.
    let mut stream = f.start_with_capacity("u1", SyncRequest::default(), 2);
    synced(&mut stream).await;
    parked(&f, 1).await;
    let wakeups = f.env.reads.parked().wakeups();
    let at = f.commit(&[("lists", "l1", Some(("global[]", r#"{"id":"l1","v":2}"#)))]);
    woken_after(&f, wakeups).await;
    let lines = lines_through(&mut stream, at).await;
    assert_eq!(f.env.reads.parked().deliveries(), 0);
    assert!(matches!(&lines[0], SyncLine::CheckpointDiff(d) if d.last_op_id == at));
    assert_eq!(ops_of(&lines[1]), vec![(at.get(), OpType::Put)]);
    assert_eq!(lines.len(), 3);
}

/// Many parked sessions and commits that interleave with their wake-ups: each ends at the latest
/// checkpoint with the checksums storage has, and the ops it received add up to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sessions_follow_interleaved_commits_to_the_latest_checkpoint() {
    const USERS: usize = 12;
    let mut f = Fixture::new(SessionLimits::default());
    f.commit(&[("lists", "l0", Some(("global[]", r#"{"id":"l0"}"#)))]);
    f.storage.activate(f.version).unwrap();
    let mut streams: Vec<Stream> = (0..USERS)
        .map(|u| f.start_with_capacity(&format!("u{u}"), SyncRequest::default(), 4096))
        .collect();
    let mut announced: Vec<HashMap<BucketName, Checksum>> = vec![HashMap::new(); USERS];
    let mut received: Vec<HashMap<BucketName, Checksum>> = vec![HashMap::new(); USERS];
    let drain = |streams: &mut Vec<Stream>, last: Option<OpId>| {
        let streams = std::mem::take(streams);
        async move {
            let mut out = Vec::new();
            for mut stream in streams {
                let mut lines = Vec::new();
                loop {
                    let line = stream.next().await;
                    let done = matches!(&line, SyncLine::CheckpointComplete(c) if last.is_none_or(|l| c.last_op_id == l));
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                out.push((stream, lines));
            }
            out
        }
    };
    let mut record = |user: usize, lines: &[SyncLine]| {
        for line in lines {
            match line {
                SyncLine::Checkpoint(c) => {
                    announced[user] = c.buckets.iter().map(|b| (b.bucket.clone(), b.checksum)).collect();
                }
                SyncLine::CheckpointDiff(d) => {
                    for b in &d.updated_buckets {
                        announced[user].insert(b.bucket.clone(), b.checksum);
                    }
                    for b in &d.removed_buckets {
                        announced[user].remove(b);
                    }
                }
                SyncLine::Data(d) => {
                    let sum: Checksum = d.data.iter().map(|o| o.checksum).sum();
                    let entry = received[user].entry(d.bucket.clone()).or_insert(Checksum::ZERO);
                    *entry += sum;
                }
                _ => {}
            }
        }
    };
    for (user, (stream, lines)) in drain(&mut streams, None).await.into_iter().enumerate() {
        record(user, &lines);
        streams.push(stream);
    }
    parked(&f, USERS).await;

    // A fixed-seed xorshift: reproducible, no timing in the assertions.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for i in 0..60 {
        let users = 1 + next(2);
        let rows: Vec<(String, String, String)> = (0..users)
            .map(|_| {
                let user = next(USERS as u64 + 1);
                let id = format!("t{}", next(8));
                let bucket = if user == USERS as u64 {
                    "global[]".to_owned()
                } else {
                    format!("by_user[\"u{user}\"]")
                };
                (id.clone(), bucket, format!(r#"{{"id":"{id}","v":{i}}}"#))
            })
            .collect();
        let rows: Vec<_> = rows
            .iter()
            .map(|(id, bucket, data)| ("todos", id.as_str(), Some((bucket.as_str(), data.as_str()))))
            .collect();
        f.commit(&rows);
        if next(3) == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Every session holds the global bucket: each must reach this checkpoint.
    let last = f.commit(&[("lists", "l0", Some(("global[]", r#"{"id":"l0","v":"last"}"#)))]);
    for (user, (stream, lines)) in drain(&mut streams, Some(last)).await.into_iter().enumerate() {
        record(user, &lines);
        streams.push(stream);
    }
    for user in 0..USERS {
        let names: Vec<BucketName> = announced[user].keys().cloned().collect();
        let stored = f.storage.bucket_checksums(f.version, last, &names).unwrap();
        for summary in stored {
            assert_eq!(
                announced[user][&summary.bucket], summary.checksum,
                "u{user} {}",
                summary.bucket
            );
            assert_eq!(
                received[user]
                    .get(&summary.bucket)
                    .copied()
                    .unwrap_or(Checksum::ZERO),
                summary.checksum,
                "u{user} received {}",
                summary.bucket
            );
        }
    }
    for stream in &mut streams {
        assert!(stream.rx.try_recv().is_err(), "nothing after the last complete");
    }
}

/// Authorization as a property (DESIGN invariant 6): for random memberships, rows and changes, every
/// user receives exactly the rows the rules grant their token, and never an op of a bucket the current
/// checkpoint does not list for them.
mod authorization {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use syncgate_rules::{RowEvaluation, SourceTable, SqliteValue, SyncRules};

    use super::*;
    use crate::inspect::Replay;
    use crate::storage::RowChange;
    use crate::versioned_rules::compile_version;

    const RULES: &str = "
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT id, owner, list_id, title FROM todos WHERE owner = bucket.user_id
  by_list:
    parameters: SELECT list_id FROM members WHERE user_id = request.user_id()
    data:
      - SELECT id, owner, list_id, title FROM todos WHERE list_id = bucket.list_id
  public:
    data:
      - SELECT id, owner, list_id, title FROM todos WHERE is_public = 1
";
    const USERS: [&str; 3] = ["u0", "u1", "u2"];

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Todo {
        owner: usize,
        list: usize,
        public: bool,
        title: u8,
    }

    /// The source database: todos by id and (user, list) memberships.
    #[derive(Debug, Clone, Default)]
    struct Source {
        todos: BTreeMap<usize, Todo>,
        members: BTreeSet<(usize, usize)>,
    }

    #[derive(Debug, Clone)]
    enum Change {
        SetTodo(usize, Todo),
        DeleteTodo(usize),
        Join(usize, usize),
        Leave(usize, usize),
    }

    fn todo() -> impl Strategy<Value = Todo> {
        // Owner 3 is nobody's: such rows are visible only through lists or `is_public`.
        (0..4usize, 0..3usize, proptest::bool::weighted(0.2), any::<u8>()).prop_map(
            |(owner, list, public, title)| Todo {
                owner,
                list,
                public,
                title,
            },
        )
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..8usize, todo()).prop_map(|(id, t)| Change::SetTodo(id, t)),
            (0..8usize).prop_map(Change::DeleteTodo),
            (0..3usize, 0..3usize).prop_map(|(u, l)| Change::Join(u, l)),
            (0..3usize, 0..3usize).prop_map(|(u, l)| Change::Leave(u, l)),
        ]
    }

    /// What the user may see: (todo id, title), computed from the data, not from storage or rules.
    fn granted(source: &Source, user: usize) -> BTreeSet<(String, u8)> {
        source
            .todos
            .iter()
            .filter(|(_, t)| t.owner == user || t.public || source.members.contains(&(user, t.list)))
            .map(|(id, t)| (format!("t{id}"), t.title))
            .collect()
    }

    struct Evaluator {
        rules: SyncRules,
        todos: SourceTable,
        members: SourceTable,
    }

    impl Evaluator {
        fn todo_change(&self, id: usize, todo: Option<&Todo>) -> RowChange {
            let key = SourceRowKey {
                table: "public.todos".into(),
                key: format!("t{id}"),
            };
            let Some(t) = todo else {
                return RowChange::delete(key);
            };
            let values = vec![
                SqliteValue::text(format!("t{id}")),
                SqliteValue::text(format!("u{}", t.owner)),
                SqliteValue::text(format!("l{}", t.list)),
                SqliteValue::text(t.title.to_string()),
                SqliteValue::Integer(i64::from(t.public)),
            ];
            self.evaluate(&self.todos, key, &values)
        }

        fn member_change(&self, user: usize, list: usize, present: bool) -> RowChange {
            let key = SourceRowKey {
                table: "public.members".into(),
                key: format!("u{user}|l{list}"),
            };
            if !present {
                return RowChange::delete(key);
            }
            let values = vec![
                SqliteValue::text(format!("u{user}")),
                SqliteValue::text(format!("l{list}")),
            ];
            self.evaluate(&self.members, key, &values)
        }

        fn evaluate(&self, table: &SourceTable, key: SourceRowKey, values: &[SqliteValue]) -> RowChange {
            let plan = self.rules.plan_table(table);
            let mut evaluation = RowEvaluation::default();
            self.rules.evaluate_row(&plan, values, &mut evaluation);
            let (mut entries, mut errors) = (Vec::new(), Vec::new());
            self.rules
                .evaluate_parameter_row(&plan, values, &mut entries, &mut errors);
            assert!(errors.is_empty() && evaluation.errors.is_empty());
            RowChange::from_evaluation(key, &plan, &evaluation, &entries, None)
        }
    }

    /// A client's view: the bucket set of the current checkpoint and the ops received per bucket.
    #[derive(Default)]
    struct Client {
        buckets: BTreeSet<String>,
        replays: BTreeMap<String, Replay>,
        write_checkpoint: Option<u64>,
    }

    impl Client {
        fn receive(&mut self, line: &SyncLine) {
            match line {
                SyncLine::Checkpoint(c) => {
                    self.buckets = c.buckets.iter().map(|b| b.bucket.to_string()).collect();
                    self.replays.retain(|name, _| self.buckets.contains(name));
                    self.write_checkpoint = c.write_checkpoint.map(|w| w.get());
                }
                SyncLine::CheckpointDiff(d) => {
                    for removed in &d.removed_buckets {
                        self.buckets.remove(removed.as_str());
                        self.replays.remove(removed.as_str());
                    }
                    self.buckets
                        .extend(d.updated_buckets.iter().map(|b| b.bucket.to_string()));
                    self.write_checkpoint = d.write_checkpoint.map(|w| w.get());
                }
                SyncLine::Data(data) => {
                    assert!(
                        self.buckets.contains(data.bucket.as_str()),
                        "op of a bucket the checkpoint does not grant: {}",
                        data.bucket
                    );
                    let replay = self
                        .replays
                        .entry(data.bucket.to_string())
                        .or_insert_with(|| Replay::new(data.bucket.clone()));
                    for op in &data.data {
                        replay.apply(op).unwrap();
                    }
                }
                _ => {}
            }
        }

        fn rows(&self) -> BTreeSet<(String, u8)> {
            self.replays
                .values()
                .flat_map(Replay::rows)
                .map(|row| (row.id, row.data["title"].as_str().unwrap().parse().unwrap()))
                .collect()
        }
    }

    fn apply(f: &mut Fixture, evaluator: &Evaluator, source: &mut Source, changes: &[Change]) {
        let rows: Vec<RowChange> = changes
            .iter()
            .map(|c| match c {
                Change::SetTodo(id, t) => {
                    source.todos.insert(*id, t.clone());
                    evaluator.todo_change(*id, Some(t))
                }
                Change::DeleteTodo(id) => {
                    source.todos.remove(id);
                    evaluator.todo_change(*id, None)
                }
                Change::Join(u, l) => {
                    source.members.insert((*u, *l));
                    evaluator.member_change(*u, *l, true)
                }
                Change::Leave(u, l) => {
                    source.members.remove(&(*u, *l));
                    evaluator.member_change(*u, *l, false)
                }
            })
            .collect();
        f.lsn += 10;
        f.storage
            .apply_batch(
                f.version,
                &[SourceTransaction {
                    commit_lsn: Lsn(f.lsn),
                    changes: rows,
                }],
            )
            .unwrap();
    }

    fn run_case(initial: &[Change], changes: &[Change]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut f = Fixture::new(SessionLimits::default());
            f.version = f.storage.create_version(RULES).unwrap();
            let evaluator = Evaluator {
                rules: compile_version(f.version, RULES).unwrap(),
                todos: SourceTable::new(
                    "public",
                    "todos",
                    &["id", "owner", "list_id", "title", "is_public"],
                ),
                members: SourceTable::new("public", "members", &["user_id", "list_id"]),
            };
            let mut source = Source::default();
            apply(&mut f, &evaluator, &mut source, initial);
            f.storage.activate(f.version).unwrap();

            let client_id = ClientId("c".into());
            let mut streams: Vec<(Stream, Client)> = USERS
                .iter()
                .map(|user| {
                    let request = SyncRequest {
                        client_id: Some(client_id.clone()),
                        ..SyncRequest::default()
                    };
                    (f.start(user, request), Client::default())
                })
                .collect();
            let mut steps = vec![Vec::new()];
            steps.extend(changes.chunks(2).map(<[Change]>::to_vec));
            for step in steps {
                apply(&mut f, &evaluator, &mut source, &step);
                // A write checkpoint per user past this step: each stream shows when it has caught up.
                let mut marks = Vec::new();
                for user in USERS {
                    let id = f
                        .storage
                        .create_write_checkpoint(&UserId(user.into()), Some(&client_id), Lsn(f.lsn + 1))
                        .unwrap();
                    marks.push(id.get());
                }
                apply(&mut f, &evaluator, &mut source, &[]);
                for (i, (stream, client)) in streams.iter_mut().enumerate() {
                    loop {
                        let line = stream.next().await;
                        client.receive(&line);
                        if matches!(line, SyncLine::CheckpointComplete(_))
                            && client.write_checkpoint == Some(marks[i])
                        {
                            break;
                        }
                    }
                    assert_eq!(client.rows(), granted(&source, i), "user u{i} with {source:?}");
                }
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn users_receive_exactly_the_rows_their_token_grants(
            initial in proptest::collection::vec(change(), 0..12),
            changes in proptest::collection::vec(change(), 0..10),
        ) {
            run_case(&initial, &changes);
        }
    }
}

/// Two gateways on one Postgres storage: a session served from handle B (which only reads) receives
/// a change committed through handle A, carried by B's change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_another_gateway_of_a_postgres_storage_receives_a_commit() {
    use crate::storage::{ChangeFeed, PostgresStorage, postgres_tests::Place};

    let place = Place::new();
    let open = || Arc::new(Notifying::new(PostgresStorage::open(&place.config).unwrap()));
    let (leader, follower) = (open(), open());
    let _feed = ChangeFeed::spawn(&follower).unwrap();
    let writer = Arc::clone(&leader);
    let version = tokio::task::spawn_blocking(move || {
        let version = writer.create_version(RULES).unwrap();
        writer.activate(version).unwrap();
        version
    })
    .await
    .unwrap();
    let bucket = BucketName::new(format!("{version}#global[]"));
    let lists = |id: &str, lsn: u64| SourceTransaction {
        commit_lsn: Lsn(lsn),
        changes: vec![RowChange {
            row: SourceRowKey {
                table: "public.lists".into(),
                key: id.into(),
            },
            placements: Some(vec![Placement {
                bucket: bucket.clone(),
                table: "lists".into(),
                id: id.into(),
                data: format!(r#"{{"id":"{id}"}}"#),
            }]),
            parameters: None,
            source_row: None,
        }],
    };
    let (writer, first) = (Arc::clone(&leader), lists("l1", 10));
    tokio::task::spawn_blocking(move || writer.apply(version, &first).unwrap())
        .await
        .unwrap();

    let served: Arc<dyn BucketStorage> = follower.clone();
    let env = Arc::new(SessionEnv {
        storage: served,
        events: Arc::clone(follower.events()),
        rules: Arc::new(RulesCache::default()),
        limits: SessionLimits::default(),
        metrics: Arc::new(ApiMetrics::default()),
        reads: SharedReads::default(),
    });
    let expires_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = SessionClaims {
        user_id: "u1".into(),
        payload: json!({"sub": "u1", "exp": expires_at}),
        expires_at,
    };
    let (tx, rx) = mpsc::channel(16);
    let shutdown = watch::Sender::new(false);
    let session = Session::new(env, claims, &SyncRequest::default(), tx);
    let task = tokio::spawn(session.run(shutdown.subscribe()));
    let mut stream = Stream { rx, task };
    assert!(matches!(stream.next().await, SyncLine::Checkpoint(_)));
    assert_eq!(ops_of(&stream.next().await).len(), 1);
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(_)));

    // Committed through the other handle: without the feed this session would never hear of it.
    let (writer, second) = (Arc::clone(&leader), lists("l2", 20));
    let checkpoint = tokio::task::spawn_blocking(move || writer.apply(version, &second).unwrap().unwrap())
        .await
        .unwrap();
    let SyncLine::CheckpointDiff(diff) = stream.next().await else {
        panic!("a diff expected on the other gateway")
    };
    assert_eq!(diff.last_op_id, checkpoint);
    assert_eq!(ops_of(&stream.next().await), [(checkpoint.get(), OpType::Put)]);
    assert!(matches!(stream.next().await, SyncLine::CheckpointComplete(c) if c.last_op_id == checkpoint));
    shutdown.send_replace(true);
    drop(stream.task);
}
