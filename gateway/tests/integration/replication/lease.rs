//! Several gateways on one Postgres bucket storage: the replication lease (one holder, handed over when
//! its session ends, the writer epoch bumped per acquisition), fencing of a deposed leader whose process
//! lives on, and `--role`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncgate::config::{Config, StorageConfig};
use syncgate::replicator::ReplicationMetrics;
use syncgate::serve::lease::Lease;
use syncgate::serve::{Embedding, Role, ServeOptions, ServedStorage, serve_embedded};
use syncgate::storage::{
    BucketStorage, ConfiguredStorage, Lsn, PostgresStorage, PostgresStorageConfig, SourceTransaction,
    StorageError,
};
use syncgate_test_support::{TestDatabase, shared_cluster};
use tokio::sync::watch;

use super::harness::{Gateway, TIMEOUT, fast_options, postgres_storage, write_config_with_storage};

const RULES: &str = "bucket_definitions:
  global:
    data:
      - SELECT * FROM items
";

/// Ends the session holding the storage's replication lease (the advisory lock), as a server or network
/// failure would, leaving its process running.
fn terminate_lease_holder(storage_db: &TestDatabase) {
    let ended = storage_db
        .psql(
            "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a
             JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
             WHERE a.application_name = 'syncgate-lease' AND a.datname = current_database()",
        )
        .expect("terminate the lease session");
    assert_eq!(ended.trim(), "1", "exactly one session holds the lease");
}

fn lease_holders(storage_db: &TestDatabase) -> String {
    storage_db
        .psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'syncgate-lease'
               AND a.datname = current_database()",
        )
        .expect("lease holders")
        .trim()
        .to_owned()
}

fn storage_place(db: &TestDatabase) -> PostgresStorageConfig {
    PostgresStorageConfig::local_trusted(db.host(), db.port(), db.name(), db.user(), "syncgate_storage")
}

/// Retries `lease` until it is acquired; panics after [`TIMEOUT`].
async fn acquire(lease: &mut Lease) -> syncgate::serve::lease::HeldLease {
    let started = Instant::now();
    loop {
        if let Some(held) = lease.try_acquire().await.expect("campaign") {
            eprintln!("lease acquired after {:?}", started.elapsed());
            return held;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "lease not acquired within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_at_a_time_and_each_acquisition_bumps_the_epoch() {
    let storage_db = shared_cluster().create_database().expect("database");
    let storage = PostgresStorage::open(&storage_place(&storage_db)).expect("open storage");
    let start_epoch = storage.stored_epoch().expect("epoch");
    let mut first = Lease::new(storage.lease_connection(), storage.schema());
    let mut second = Lease::new(storage.lease_connection(), storage.schema());

    let held = first
        .try_acquire()
        .await
        .expect("campaign")
        .expect("a free lease is taken");
    assert_eq!(held.epoch(), start_epoch + 1);
    assert_eq!(storage.stored_epoch().expect("epoch"), start_epoch + 1);
    assert!(
        second.try_acquire().await.expect("campaign").is_none(),
        "held by the first"
    );
    assert!(
        second.try_acquire().await.expect("campaign").is_none(),
        "still held"
    );
    held.check().await.expect("the holder's session lives");

    // The holder's session ends while its process lives: the holder notices, the other takes over.
    terminate_lease_holder(&storage_db);
    assert!(
        held.lost(Duration::from_millis(50))
            .await
            .to_string()
            .contains("lease session")
    );
    let taken_over = acquire(&mut second).await;
    assert_eq!(taken_over.epoch(), start_epoch + 2);
    assert!(
        first.try_acquire().await.expect("campaign").is_none(),
        "held by the second"
    );

    // Dropping the lease releases it.
    drop(taken_over);
    let again = acquire(&mut first).await;
    assert_eq!(again.epoch(), start_epoch + 3);
    assert_eq!(storage.stored_epoch().expect("epoch"), start_epoch + 3);
    assert_eq!(lease_holders(&storage_db), "1");
}

/// A source database with a table and publication, and a config with Postgres storage in `storage_db`.
fn cluster_config(dir: &std::path::Path, prefix: &str) -> (TestDatabase, TestDatabase, std::path::PathBuf) {
    let db = shared_cluster().create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 20) i",
    )
    .expect("schema");
    let storage_db = shared_cluster().create_database().expect("storage database");
    let config = write_config_with_storage(
        dir,
        &db.url_without_session_options(),
        RULES,
        prefix,
        &postgres_storage(&storage_db),
    );
    (db, storage_db, config)
}

fn lease_options(role: Role) -> ServeOptions {
    ServeOptions {
        role,
        lease_retry: Duration::from_millis(200),
        ..fast_options()
    }
}

/// `GET /probes/readiness`: status and JSON body.
async fn readiness(port: u16) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/probes/readiness"))
        .await
        .expect("readiness");
    let status = response.status().as_u16();
    let body = response.text().await.expect("readiness body");
    (status, serde_json::from_str(&body).expect("readiness json"))
}

/// Waits until readiness answers with `replicating` equal to `want`.
async fn wait_replicating(port: u16, want: bool) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/probes/readiness")).await
            && let Ok(text) = response.text().await
            && let Ok(body) = serde_json::from_str::<serde_json::Value>(&text)
            && body["replicating"] == want
        {
            eprintln!("replicating = {want} after {:?}", started.elapsed());
            return body;
        }
        assert!(started.elapsed() < TIMEOUT, "replicating never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway whose storage handle the test holds (to drive its writes directly).
struct Embedded {
    storage: Arc<ServedStorage>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    port: u16,
}

async fn start_embedded(config: &std::path::Path, options: ServeOptions) -> Embedded {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (storage_tx, storage_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = watch::channel(false);
    let embedding = Embedding {
        listener,
        storage: storage_tx,
        metrics: Arc::new(ReplicationMetrics::default()),
    };
    let task = tokio::spawn(serve_embedded(
        config.to_path_buf(),
        options,
        stop_rx,
        Some(embedding),
    ));
    let storage = tokio::time::timeout(TIMEOUT, storage_rx)
        .await
        .expect("storage opened in time")
        .expect("serve opens its storage");
    Embedded {
        storage,
        stop,
        task,
        port,
    }
}

impl Embedded {
    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("serve stops in time")
            .expect("serve task")
            .expect("serve ends without an error");
    }
}

fn postgres(storage: &ServedStorage) -> &PostgresStorage {
    match storage.inner() {
        ConfiguredStorage::Postgres(postgres) => postgres,
        ConfiguredStorage::Sqlite(_) => panic!("Postgres storage expected"),
    }
}

/// A leader whose lease session is cut while its process lives is deposed: a second gateway takes over
/// (epoch + 1), the old one's storage commits fail with `Fenced`, it stops replicating and stands by, and
/// changes go on replicating through the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_session_is_cut_is_fenced_and_rejoins_as_a_standby() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, storage_db, config) = cluster_config(dir.path(), "sg_fence_");
    let old = start_embedded(&config, lease_options(Role::All)).await;
    wait_replicating(old.port, true).await;
    let watcher = Gateway::watching(&config);
    let (version, _) = watcher.sync_point(&db).await;
    let old_epoch = postgres(&old.storage).held_epoch();
    assert_eq!(postgres(&old.storage).stored_epoch().expect("epoch"), old_epoch);

    let new = start_embedded(&config, lease_options(Role::All)).await;
    let standby = wait_replicating(new.port, false).await;
    assert_eq!(
        standby["ready"], true,
        "a standby is ready once storage has a checkpoint: {standby}"
    );
    assert_eq!(standby["role"], "all");

    terminate_lease_holder(&storage_db);
    let cut = Instant::now();
    if tokio::time::timeout(TIMEOUT / 2, wait_replicating(new.port, true))
        .await
        .is_err()
    {
        let sessions = storage_db
            .psql(
                "SELECT pid, application_name, state, wait_event, left(query, 80) FROM pg_stat_activity
                 WHERE datname = current_database()",
            )
            .unwrap_or_default();
        panic!("the standby did not take over; storage sessions:\n{sessions}");
    }
    eprintln!("takeover {:?} after the lease session was cut", cut.elapsed());
    let new_epoch = postgres(&new.storage).held_epoch();
    assert_eq!(new_epoch, old_epoch + 1);
    wait_replicating(old.port, false).await;

    // The deposed leader cannot commit, whatever its storage handle is asked to write: neither a
    // replicated transaction nor a version change.
    let write = SourceTransaction {
        commit_lsn: Lsn(u64::MAX / 2),
        changes: Vec::new(),
    };
    match old.storage.apply(version, &write) {
        Err(StorageError::Fenced { held, found }) => assert_eq!((held, found), (old_epoch, new_epoch)),
        other => panic!("a deposed leader's commit must be fenced, got {other:?}"),
    }
    let created = old.storage.create_version("bucket_definitions: {}");
    assert!(matches!(created, Err(StorageError::Fenced { .. })), "{created:?}");
    // The new leader's handle commits at the new epoch (here: the same transaction is accepted).
    assert_eq!(postgres(&new.storage).stored_epoch().expect("epoch"), new_epoch);

    // Replication goes on through the new leader; the old one stands by (and stays up).
    db.psql("UPDATE items SET v = 'after takeover' WHERE id = 1")
        .expect("update");
    watcher.sync_point(&db).await;
    let rows = watcher.user_buckets("anyone");
    let row = rows
        .values()
        .flatten()
        .find(|(_, id, _)| id == "1")
        .expect("row 1 synced");
    assert!(row.2.contains("after takeover"), "{row:?}");
    let (status, body) = readiness(old.port).await;
    assert_eq!(
        (status, &body["replicating"]),
        (200, &serde_json::json!(false)),
        "{body}"
    );
    assert_eq!(lease_holders(&storage_db), "1");
    assert!(!old.task.is_finished(), "the deposed gateway keeps serving");

    old.stop().await;
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_api_never_replicates_and_role_replicator_serves_no_sync_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, storage_db, config) = cluster_config(dir.path(), "sg_roles_");
    let api = start_embedded(&config, lease_options(Role::Api)).await;
    // Many campaign intervals pass: an api node takes no lease and creates no slot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = readiness(api.port).await;
    assert_eq!(status, 503, "nothing replicated yet: {body}");
    assert_eq!(
        (&body["role"], &body["replicating"]),
        (&serde_json::json!("api"), &serde_json::json!(false))
    );
    assert_eq!(lease_holders(&storage_db), "0");
    let slots = db
        .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'sg_roles_%'")
        .expect("slots");
    assert_eq!(slots.trim(), "0");

    let replicator = start_embedded(&config, lease_options(Role::Replicator)).await;
    let body = wait_replicating(replicator.port, true).await;
    assert_eq!(body["role"], "replicator");
    let watcher = Gateway::watching(&config);
    watcher.sync_point(&db).await;
    // The api node is ready from the shared storage, still without replicating.
    let (status, body) = readiness(api.port).await;
    assert_eq!(
        (status, &body["replicating"]),
        (200, &serde_json::json!(false)),
        "{body}"
    );
    let (status, body) = readiness(replicator.port).await;
    assert_eq!(
        (status, &body["ready"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );

    // The replicator answers probes but no sync routes; the api node serves them.
    let client = reqwest::Client::new();
    for (port, expected) in [(replicator.port, 404), (api.port, 401)] {
        let stream = client
            .post(format!("http://127.0.0.1:{port}/sync/stream"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("sync stream request");
        assert_eq!(
            stream.status().as_u16(),
            expected,
            "POST /sync/stream on port {port}"
        );
        let write_checkpoint = client
            .get(format!("http://127.0.0.1:{port}/write-checkpoint2.json"))
            .send()
            .await
            .expect("write checkpoint request");
        assert_eq!(
            write_checkpoint.status().as_u16(),
            expected,
            "write checkpoint on port {port}"
        );
    }
    let liveness = client
        .get(format!("http://127.0.0.1:{}/probes/liveness", replicator.port))
        .send()
        .await
        .expect("liveness");
    assert_eq!(liveness.status().as_u16(), 200);

    api.stop().await;
    replicator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_other_than_all_with_sqlite_storage_is_refused() {
    let db = shared_cluster().create_database().expect("database");
    db.psql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES")
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = super::harness::write_config(dir.path(), &db, RULES, "sg_sqlite_role_");
    assert!(matches!(
        Config::load(&config).expect("config").config.storage,
        StorageConfig::Sqlite { .. }
    ));
    for role in [Role::Api, Role::Replicator] {
        let error = Gateway::start(&config, lease_options(role)).expect_error().await;
        assert!(error.contains("needs Postgres bucket storage"), "{error}");
        assert!(error.contains(role.name()), "{error}");
    }
}
