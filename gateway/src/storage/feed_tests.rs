//! The change feed between "processes": two storage handles on one Postgres storage, each with its
//! own events and feed, as two gateways have.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncgate_test_support::shared_cluster;

use super::postgres_tests::Place;
use super::*;

/// One gateway process's view of the storage.
struct Process {
    storage: Arc<Notifying<PostgresStorage>>,
    feed: ChangeFeed,
}

impl Process {
    fn open(place: &Place) -> Process {
        Self::open_with(place, Reconnect::default())
    }

    fn open_with(place: &Place, reconnect: Reconnect) -> Process {
        let storage = Arc::new(Notifying::new(PostgresStorage::open(&place.config).unwrap()));
        let feed = ChangeFeed::spawn_with(&storage, reconnect).unwrap();
        Process { storage, feed }
    }

    fn events(&self) -> &StorageEvents {
        self.storage.events()
    }

    async fn until_listening(&self, listening: bool) {
        let mut state = self.feed.listening();
        tokio::time::timeout(PATIENCE, state.wait_for(|l| *l == listening))
            .await
            .unwrap_or_else(|_| panic!("the feed did not reach listening = {listening}"))
            .unwrap();
    }
}

/// Generous: the machine may be busy.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `condition` holds; logs how long it took.
async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("{what}: after {:?}", started.elapsed());
}

fn put(key: &str, bucket: &str, lsn: u64) -> SourceTransaction {
    SourceTransaction {
        commit_lsn: Lsn(lsn),
        changes: vec![RowChange {
            row: SourceRowKey {
                table: "public.todos".into(),
                key: key.into(),
            },
            placements: Some(vec![Placement {
                bucket: BucketName::new(bucket),
                table: "todos".into(),
                id: key.into(),
                data: format!("{{\"lsn\":{lsn}}}"),
            }]),
            parameters: None,
            source_row: None,
        }],
    }
}

/// Runs `sql` from the place's database, off the runtime's threads.
async fn admin(place: &Arc<Place>, sql: String) {
    let place = Arc::clone(place);
    blocking(move || place.execute(&sql)).await;
}

/// Runs blocking storage calls off the runtime's threads, which the feeds need.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_and_a_write_checkpoint_reach_the_other_process() {
    let place = Place::new();
    let (a, b) = (Process::open(&place), Process::open(&place));
    a.until_listening(true).await;
    b.until_listening(true).await;
    let activated = b.events().commit_count();
    let storage = Arc::clone(&a.storage);
    let version = blocking(move || {
        let version = storage.create_version("rules").unwrap();
        storage.activate(version).unwrap();
        version
    })
    .await;
    wait_for("the activation on A wakes B", || {
        b.events().commit_count() != activated
    })
    .await;

    let commits = b.events().commit_count();
    let storage = Arc::clone(&a.storage);
    blocking(move || storage.apply(version, &put("1", "a", 10)).unwrap()).await;
    wait_for("a commit on A wakes B", || b.events().commit_count() != commits).await;

    // A write checkpoint stored through B (the node a client's request hit) reaches A, which may
    // hold that client's stream.
    let (on_a, on_b) = (
        a.events().write_checkpoint_generation(),
        b.events().write_checkpoint_generation(),
    );
    let storage = Arc::clone(&b.storage);
    blocking(move || {
        storage
            .create_write_checkpoint(&UserId("u".into()), None, Lsn(5))
            .unwrap()
    })
    .await;
    assert_ne!(b.events().write_checkpoint_generation(), on_b);
    wait_for("a write checkpoint on B reaches A", || {
        a.events().write_checkpoint_generation() != on_a
    })
    .await;
    let on_a = a.events().write_checkpoint_generation();
    let storage = Arc::clone(&b.storage);
    blocking(move || {
        storage
            .request_write_checkpoint(
                &UserId("u".into()),
                None,
                WriteCheckpointId::new(1 << 60).unwrap(),
                Lsn(6),
            )
            .unwrap()
    })
    .await;
    wait_for("a requested write checkpoint on B reaches A", || {
        a.events().write_checkpoint_generation() != on_a
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_process_knows_of_a_compaction_before_any_compacted_op_is_visible() {
    let place = Place::new();
    let (a, b) = (Process::open(&place), Process::open(&place));
    a.until_listening(true).await;
    b.until_listening(true).await;
    let storage = Arc::clone(&a.storage);
    let version = blocking(move || {
        let version = storage.create_version("rules").unwrap();
        storage.activate(version).unwrap();
        // The second PUT supersedes the first: compaction turns the first into a MOVE.
        storage.apply(version, &put("1", "a", 10)).unwrap();
        storage.apply(version, &put("1", "a", 20)).unwrap();
        version
    })
    .await;
    let before = b.events().compaction_generation();
    assert_eq!(before % 2, 0);

    let storage = Arc::clone(&a.storage);
    let compaction = tokio::task::spawn_blocking(move || storage.compact(version, OpId::MAX).unwrap());
    // B reads as a session would: whenever it sees a compacted op, the generation it sampled before
    // that read must already show the compaction (PROTOCOL §6.1 rule 4 then makes it retry).
    let reader = Arc::clone(&b.storage);
    let saw_compacted = blocking(move || {
        let started = Instant::now();
        loop {
            let generation = reader.events().compaction_generation();
            let ops = reader
                .ops(version, &BucketName::new("a"), OpId::ZERO, OpId::MAX, 10)
                .unwrap();
            if ops.iter().any(|op| op.target_op.is_some()) {
                return generation;
            }
            assert!(started.elapsed() < PATIENCE, "no compacted op became visible");
        }
    })
    .await;
    assert_ne!(
        saw_compacted, before,
        "B read a compacted op while its generation still said no compaction had started"
    );
    let stats = compaction.await.unwrap();
    assert_eq!(stats.moved, 1);
    wait_for("B sees the compaction end", || {
        let now = b.events().compaction_generation();
        now % 2 == 0 && now != before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_connection_the_feed_polls_and_then_listens_again() {
    // A database of its own: the test ends its feed connections and refuses new ones for a while.
    let database = shared_cluster().create_database().unwrap();
    let place = Place::in_database(&database, "syncgate_storage");
    // Another database of the cluster, to administer this one from.
    let elsewhere = Arc::new(Place::new());
    // The writing "process" has no feed: while new connections are refused, its polls would compete for
    // the one pooled reader its write checkpoint needs below.
    let a = Arc::new(Notifying::new(PostgresStorage::open(&place.config).unwrap()));
    let b = Process::open_with(
        &place,
        Reconnect {
            first: Duration::from_millis(200),
            max: Duration::from_millis(500),
        },
    );
    b.until_listening(true).await;
    let storage = Arc::clone(&a);
    let version = blocking(move || {
        let version = storage.create_version("rules").unwrap();
        storage.activate(version).unwrap();
        // Opens a pooled reader on A, used below while new connections are refused.
        storage.latest_checkpoint(version).unwrap();
        version
    })
    .await;

    // Connections already open (the writers, pooled readers) keep working; the feed cannot listen.
    let name = database.name().to_owned();
    admin(
        &elsewhere,
        format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{name}' AND application_name = 'syncgate-feed'"
        ),
    )
    .await;
    b.until_listening(false).await;
    // A poll that started after the feed lost its connection: B has seen everything before now.
    let mut polls = b.feed.polls();
    let before = *polls.borrow_and_update();
    tokio::time::timeout(PATIENCE, polls.wait_for(|n| *n >= before + 2))
        .await
        .expect("the feed polls while it cannot listen")
        .unwrap();

    let commits = b.events().commit_count();
    let storage = Arc::clone(&a);
    blocking(move || storage.apply(version, &put("1", "a", 10)).unwrap()).await;
    wait_for("a commit reaches B by polling", || {
        b.events().commit_count() != commits
    })
    .await;
    let write_checkpoints = b.events().write_checkpoint_generation();
    let storage = Arc::clone(&a);
    blocking(move || {
        storage
            .create_write_checkpoint(&UserId("u".into()), None, Lsn(5))
            .unwrap()
    })
    .await;
    wait_for("a write checkpoint reaches B by polling", || {
        b.events().write_checkpoint_generation() != write_checkpoints
    })
    .await;
    assert!(!*b.feed.listening().borrow(), "new connections were refused");
    let feeds = Arc::clone(&elsewhere);
    let feeds = blocking(move || {
        feeds.rows(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = '{name}' AND application_name = 'syncgate-feed'"
        ))
    })
    .await;
    assert_eq!(feeds, [[0]]);

    admin(
        &elsewhere,
        format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", database.name()),
    )
    .await;
    b.until_listening(true).await;
    let commits = b.events().commit_count();
    let storage = Arc::clone(&a);
    blocking(move || storage.apply(version, &put("2", "a", 20)).unwrap()).await;
    wait_for("a commit reaches B after it listens again", || {
        b.events().commit_count() != commits
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notification_never_arrives_is_polled_while_listening() {
    let place = Arc::new(Place::new());
    let b = Process::open(&place);
    b.until_listening(true).await;
    // What a pooler in transaction mode does to a notification: the write commits, B's LISTEN hears
    // nothing. Moving the write-checkpoint sequence by hand sends no NOTIFY.
    let write_checkpoints = b.events().write_checkpoint_generation();
    let schema = place.config.schema.clone();
    admin(
        &place,
        format!(
            "INSERT INTO \"{schema}\".meta VALUES ('next_write_checkpoint_id', 1)
             ON CONFLICT (key) DO UPDATE SET value = meta.value + 1"
        ),
    )
    .await;
    wait_for("the silent write checkpoint reaches B by polling", || {
        b.events().write_checkpoint_generation() != write_checkpoints
    })
    .await;
    assert!(*b.feed.listening().borrow(), "B kept listening throughout");
}
