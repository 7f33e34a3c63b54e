//! Several `syncgate serve` processes on one Postgres bucket storage (scale-out): real processes of the
//! built binary, real clients (the `syncgate-client` driver over HTTP), one source database and one
//! storage database on the shared test cluster. One process holds the replication lease; clients of
//! every process converge to the source; SIGKILLing the replicating process mid-stream loses and
//! duplicates nothing while the survivor takes over; a client moved to another process resumes from its
//! op ids. Times are logged, never asserted (the takeover target is measured by the benchmark).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use syncgate::config::{Config, StorageConfig};
use syncgate::storage::{BucketStorage, PostgresStorage};
use syncgate_client::{
    BackendConnector, ClientError, Credentials, CrudTransaction, LocalDatabase, Schema, SyncDriver,
    SyncOptions,
};
use syncgate_protocol::{OpId, OpType};
use syncgate_test_support::serve::{ServeProcess, ServeStorage, sign_token, storage_database};
use syncgate_test_support::{TestDatabase, shared_cluster};

const SOURCE_SCHEMA: &str = "
CREATE TABLE items (id text PRIMARY KEY, label text NOT NULL);
CREATE PUBLICATION powersync FOR ALL TABLES;
";

const RULES: &str = "bucket_definitions:
  global:
    data:
      - SELECT id, label FROM items
";

const CLIENT_SCHEMA: &str =
    r#"{"tables": [{"name": "items", "columns": [{"name": "label", "type": "text"}]}]}"#;

/// Backstop for a gateway's start-up, a takeover, and clients converging.
const TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// Gateways sharing one storage (a schema in a database of its own), each with its directory, config and
/// log. Fields drop in order: the processes before the databases they use.
struct Cluster {
    nodes: Vec<ServeProcess>,
    work: tempfile::TempDir,
    /// Held for the nodes: dropping it drops the storage.
    _storage_db: TestDatabase,
    source: TestDatabase,
}

impl Cluster {
    /// A gateway per entry of `roles` (`serve --role`; None: the default), with one config (slot prefix
    /// `slot_prefix`, unique cluster-wide), on a new source holding `initial_rows` items, all ready.
    fn start(slot_prefix: &str, roles: &[Option<&str>], initial_rows: u64) -> Cluster {
        let started = Instant::now();
        let source = shared_cluster().create_database().expect("source database");
        source.psql(SOURCE_SCHEMA).expect("source schema");
        if initial_rows > 0 {
            source
                .psql(&format!(
                    "INSERT INTO items SELECT 'init' || g, 'initial ' || g FROM generate_series(1, {initial_rows}) g"
                ))
                .expect("initial rows");
        }
        let storage_db = storage_database();
        let storage = ServeStorage::postgres(&storage_db, "syncgate_storage");
        let work = tempfile::tempdir().expect("work dir");
        let rules = work.path().join("sync-rules.yaml");
        std::fs::write(&rules, RULES).expect("rules");
        let nodes: Vec<ServeProcess> = roles
            .iter()
            .enumerate()
            .map(|(n, role)| {
                let dir = work.path().join(format!("node{n}"));
                std::fs::create_dir(&dir).expect("node dir");
                let setup = ServeProcess::setup(
                    env!("CARGO_BIN_EXE_syncgate"),
                    &dir,
                    &source.url_without_session_options(),
                    &rules,
                )
                .slot_prefix(slot_prefix)
                .storage(storage.clone());
                match role {
                    Some(role) => setup.role(role),
                    None => setup,
                }
                .start()
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            work,
            _storage_db: storage_db,
            source,
        };
        for node in &mut cluster.nodes {
            node.wait_ready(TIMEOUT);
        }
        eprintln!(
            "{} gateways ready after {:?}",
            cluster.nodes.len(),
            started.elapsed()
        );
        cluster
    }

    /// Waits until exactly one running node says it replicates and the others that they do not; returns
    /// its index.
    fn wait_for_one_leader(&self, running: &[usize]) -> usize {
        let mut leader = None;
        self.wait_until("exactly one replicating gateway", || {
            let flags: Vec<Option<bool>> = running.iter().map(|&n| self.nodes[n].replicating()).collect();
            let leaders: Vec<usize> = running
                .iter()
                .zip(&flags)
                .filter(|(_, flag)| **flag == Some(true))
                .map(|(&n, _)| n)
                .collect();
            if leaders.len() == 1 && flags.iter().all(Option::is_some) {
                leader = Some(leaders[0]);
                Ok(())
            } else {
                Err(format!(
                    "readiness \"replicating\" of nodes {running:?}: {flags:?}"
                ))
            }
        });
        leader.expect("a leader")
    }

    /// Polls `check` until it returns `Ok`; panics after [`TIMEOUT`] with what is missing and the logs
    /// of every node. Returns how long it took.
    fn wait_until(&self, what: &str, mut check: impl FnMut() -> Result<(), String>) -> Duration {
        let started = Instant::now();
        loop {
            let missing = match check() {
                Ok(()) => return started.elapsed(),
                Err(missing) => missing,
            };
            if started.elapsed() > TIMEOUT {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(n, node)| format!("--- node {n} log:\n{}", node.log_tail(40)))
                    .collect();
                panic!("{what}: not within {TIMEOUT:?}: {missing}\n{}", logs.join("\n"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The source's items, id → label.
    fn source_rows(&self) -> BTreeMap<String, String> {
        let text = self
            .source
            .psql("SELECT coalesce(json_object_agg(id, label), '{}') FROM items")
            .expect("source rows");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("psql output {text:?}: {e}"))
    }

    /// Waits until every client holds exactly the source's items; returns how long it took.
    fn wait_converged(&self, clients: &mut [Client], runtime: &tokio::runtime::Runtime) -> Duration {
        let expected = self.source_rows();
        self.wait_until("every client holds the source's rows", || {
            for client in clients.iter_mut() {
                client.assert_running(runtime);
                let rows = client.rows();
                if rows != expected {
                    return Err(format!(
                        "{} has {} rows, the source {}",
                        client.name,
                        rows.len(),
                        expected.len()
                    ));
                }
            }
            Ok(())
        })
    }

    /// The storage as the gateways see it (opened from node 0's config).
    fn open_storage(&self) -> PostgresStorage {
        let config = Config::load(self.nodes[0].config_path())
            .expect("node config")
            .config;
        let StorageConfig::Postgres(storage) = config.storage else {
            panic!("Postgres storage expected");
        };
        PostgresStorage::open(&storage).expect("open the shared storage")
    }
}

/// The test's app: the same token every time, no uploads (the tests write only to the source).
struct FixedConnector(Credentials);

impl BackendConnector for FixedConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.0.clone())
    }

    async fn upload_data(&self, _transaction: &CrudTransaction) -> Result<(), ClientError> {
        Err(ClientError::Connector(
            "these clients make no local writes".to_owned(),
        ))
    }
}

fn credentials(user: &str, endpoint: String) -> Credentials {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    Credentials {
        endpoint,
        token: sign_token(user, now, now + 3600),
    }
}

/// Reconnects soon after the gateway it talks to goes away (the default waits 5 s and more).
fn quick_retry_options() -> SyncOptions {
    SyncOptions {
        retry_delay: Duration::from_millis(200),
        max_retry_delay: Duration::from_secs(1),
        ..SyncOptions::default()
    }
}

/// A client database file with the items schema.
fn new_client_db(path: &Path) -> LocalDatabase {
    let mut db = LocalDatabase::open(path).expect("client db");
    db.set_schema(&Schema::from_json(CLIENT_SCHEMA).expect("schema"))
        .expect("set schema");
    db
}

/// The items in a client database, id → label.
fn client_rows(db: &LocalDatabase) -> BTreeMap<String, String> {
    db.query_json("SELECT id, label FROM items")
        .expect("client rows")
        .into_iter()
        .map(|row| {
            let text = |key: &str| row[key].as_str().expect("text column").to_owned();
            (text("id"), text("label"))
        })
        .collect()
}

/// A client syncing continuously from one gateway, in a task of the test's runtime.
struct Client {
    name: String,
    file: PathBuf,
    sync: tokio::task::JoinHandle<Result<(), ClientError>>,
}

impl Client {
    fn spawn(runtime: &tokio::runtime::Runtime, dir: &Path, name: &str, gateway: &ServeProcess) -> Client {
        let file = dir.join(format!("{name}.db"));
        let db = new_client_db(&file);
        let connector = FixedConnector(credentials(name, gateway.endpoint()));
        let sync =
            runtime.spawn(async move { SyncDriver::new(db, connector, quick_retry_options()).run().await });
        Client {
            name: name.to_owned(),
            file,
            sync,
        }
    }

    /// What its app sees now (read through a connection of its own, as an app's second connection would).
    fn rows(&self) -> BTreeMap<String, String> {
        client_rows(&LocalDatabase::open(&self.file).expect("open client db"))
    }

    fn assert_running(&mut self, runtime: &tokio::runtime::Runtime) {
        assert!(
            !self.sync.is_finished(),
            "{}'s sync driver stopped: {:?}",
            self.name,
            runtime.block_on(&mut self.sync)
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn gateways_on_one_storage_bring_clients_of_each_to_the_source() {
    let runtime = runtime();
    // Two that may replicate and one that only serves clients (`--role api`).
    let cluster = Cluster::start("sgclusterconv", &[None, None, Some("api")], 20);
    let leader = cluster.wait_for_one_leader(&[0, 1, 2]);
    assert_ne!(leader, 2, "the api-only gateway replicates");
    eprintln!("node {leader} replicates");
    let client_dir = cluster.work.path().join("clients");
    std::fs::create_dir(&client_dir).expect("client dir");
    let spawned = Instant::now();
    let mut clients: Vec<Client> = (0..6)
        .map(|c| Client::spawn(&runtime, &client_dir, &format!("user{c}"), &cluster.nodes[c % 3]))
        .collect();
    cluster.wait_converged(&mut clients, &runtime);
    eprintln!(
        "initial rows on every client {:?} after they started",
        spawned.elapsed()
    );

    // Inserts, updates and deletes, in several transactions.
    for batch in 0..5 {
        cluster
            .source
            .psql(&format!(
                "BEGIN;
                 INSERT INTO items SELECT 'b{batch}_' || g, 'batch {batch} row ' || g FROM generate_series(1, 4) g;
                 UPDATE items SET label = label || ' (updated in {batch})' WHERE id = 'init{}';
                 DELETE FROM items WHERE id = 'init{}';
                 COMMIT;",
                batch + 1,
                batch + 11
            ))
            .expect("source writes");
    }
    let took = cluster.wait_converged(&mut clients, &runtime);
    eprintln!("5 source transactions on every client after {took:?}");
    assert_eq!(cluster.source_rows().len(), 20 + 5 * 4 - 5);
    assert_eq!(
        cluster.wait_for_one_leader(&[0, 1, 2]),
        leader,
        "the lease moved without a failure"
    );
}

#[test]
fn sigkilling_the_replicating_gateway_mid_stream_loses_and_duplicates_nothing() {
    const INITIAL_ROWS: u64 = 20;
    let runtime = runtime();
    let mut cluster = Cluster::start("sgclusterkill", &[None, None], INITIAL_ROWS);
    let leader = cluster.wait_for_one_leader(&[0, 1]);
    let survivor = 1 - leader;
    eprintln!("node {leader} replicates; node {survivor} stands by");
    let client_dir = cluster.work.path().join("clients");
    std::fs::create_dir(&client_dir).expect("client dir");
    let mut clients: Vec<Client> = (0..4)
        .map(|c| Client::spawn(&runtime, &client_dir, &format!("user{c}"), &cluster.nodes[c % 2]))
        .collect();
    cluster.wait_converged(&mut clients, &runtime);

    // A writer committing one row per transaction until told to stop; `committed` counts its commits.
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (committed, stop, url) = (committed.clone(), stop.clone(), cluster.source.url());
        runtime.spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("writer connection");
            tokio::spawn(connection);
            while !stop.load(Ordering::SeqCst) {
                let n = committed.load(Ordering::SeqCst) + 1;
                client
                    .execute(
                        "INSERT INTO items VALUES ($1, $2)",
                        &[&written_id(n), &format!("written {n}")],
                    )
                    .await
                    .expect("insert");
                committed.store(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Mid-stream: some of the writer's rows have reached a client of the survivor (client `c` syncs from
    // node `c % 2`).
    let survivor_client = survivor;
    cluster.wait_until("the writer's rows reach clients", || {
        let seen = clients[survivor_client]
            .rows()
            .keys()
            .filter(|id| id.starts_with('w'))
            .count();
        if seen >= 20 {
            Ok(())
        } else {
            Err(format!(
                "{seen} written rows on {}",
                clients[survivor_client].name
            ))
        }
    });

    cluster.nodes[leader].kill();
    let killed_at = Instant::now();
    let committed_at_kill = committed.load(Ordering::SeqCst);
    eprintln!("SIGKILLed node {leader} after {committed_at_kill} writer commits");
    // Rows committed after the kill can only have been replicated by the survivor. The writer counts a
    // row after its commit returns: the next one may have committed just before the kill, the one after
    // it did not.
    let first_id_after_kill = written_id(committed_at_kill + 2);
    let took = cluster.wait_until(
        "a change committed after the kill reaches a client of the survivor",
        || {
            clients[survivor_client].assert_running(&runtime);
            if clients[survivor_client].rows().contains_key(&first_id_after_kill) {
                Ok(())
            } else {
                Err(format!(
                    "{first_id_after_kill} not on {}",
                    clients[survivor_client].name
                ))
            }
        },
    );
    eprintln!(
        "takeover: the first change after the kill reached a client of the survivor {took:?} after the kill"
    );
    assert_eq!(cluster.wait_for_one_leader(&[survivor]), survivor);
    eprintln!(
        "node {survivor} replicates ({:?} after the kill)",
        killed_at.elapsed()
    );

    // Some more streaming through the new leader, then the writes stop.
    let resumed_at = committed.load(Ordering::SeqCst);
    cluster.wait_until("the writer goes on after the takeover", || {
        let now = committed.load(Ordering::SeqCst);
        if now >= resumed_at + 20 {
            Ok(())
        } else {
            Err(format!("{now} commits"))
        }
    });
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(writer).expect("writer");
    let written = committed.load(Ordering::SeqCst);

    // The killed gateway comes back on its port as a standby; its clients reconnect to it.
    let log_before_restart = cluster.nodes[leader].log_text().len();
    cluster.nodes[leader].restart();
    cluster.nodes[leader].wait_ready(TIMEOUT);
    assert_eq!(
        cluster.wait_for_one_leader(&[0, 1]),
        survivor,
        "the restarted gateway took the lease back"
    );
    let took = cluster.wait_converged(&mut clients, &runtime);
    eprintln!("every client converged {took:?} after the restart ({written} rows written)");
    let source_rows = cluster.source_rows();
    assert_eq!(source_rows.len() as u64, INITIAL_ROWS + written);
    assert!(
        cluster.nodes[leader].log_text()[log_before_restart..].contains("standing by"),
        "the restarted gateway does not say it stands by:\n{}",
        cluster.nodes[leader].log_tail(40)
    );

    // Exactly one op per source change: the storage's op log of the bucket up to its latest checkpoint
    // holds one PUT per source row, nothing else (every change was an insert; the first rows came with the
    // snapshot).
    let storage = cluster.open_storage();
    let version = storage
        .active_version()
        .expect("active version")
        .expect("a version")
        .version;
    let checkpoint = storage
        .latest_checkpoint(version)
        .expect("checkpoint")
        .expect("a checkpoint");
    let buckets = storage.changed_buckets(version, OpId::ZERO).expect("buckets");
    assert_eq!(buckets.len(), 1, "one global bucket: {buckets:?}");
    let ops = storage
        .ops(version, &buckets[0], OpId::ZERO, checkpoint.op_id, usize::MAX)
        .expect("ops");
    let mut puts_per_row: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        assert_eq!(op.entry.op, OpType::Put, "only inserts happened: {op:?}");
        *puts_per_row
            .entry(op.entry.object_id.clone().expect("object id"))
            .or_default() += 1;
    }
    let duplicated: Vec<_> = puts_per_row.iter().filter(|(_, puts)| **puts > 1).collect();
    assert!(
        duplicated.is_empty(),
        "rows with more than one op: {duplicated:?}"
    );
    let op_rows: Vec<&String> = puts_per_row.keys().collect();
    let source_ids: Vec<&String> = source_rows.keys().collect();
    assert_eq!(op_rows, source_ids, "the op log's rows are not the source's");
    assert_eq!(ops.len(), source_rows.len());
}

/// The writer's row ids, in commit order when sorted.
fn written_id(n: u64) -> String {
    format!("w{n:06}")
}

#[test]
fn a_client_moved_to_another_gateway_downloads_only_what_it_lacks() {
    const INITIAL_ROWS: u64 = 30;
    const LATER_ROWS: u64 = 5;
    let runtime = runtime();
    let cluster = Cluster::start("sgclustermove", &[None, None], INITIAL_ROWS);
    let client_dir = cluster.work.path().join("clients");
    std::fs::create_dir(&client_dir).expect("client dir");
    // Shows when node 1 serves the later rows.
    let mut watcher = vec![Client::spawn(&runtime, &client_dir, "watcher", &cluster.nodes[1])];

    // One sync from node 0; `downloaded_ops` of its last status counts the ops of the checkpoint it
    // downloaded last.
    let file = client_dir.join("mover.db");
    let sync_once = |db: LocalDatabase, gateway: &ServeProcess| {
        let options = SyncOptions {
            stop_after_first_sync: true,
            max_consecutive_failures: Some(3),
            ..quick_retry_options()
        };
        let mut driver = SyncDriver::new(
            db,
            FixedConnector(credentials("mover", gateway.endpoint())),
            options,
        );
        let status = driver.subscribe_status();
        runtime.block_on(driver.run()).expect("sync once");
        let downloaded = status.borrow().downloaded_ops;
        (driver.into_database(), downloaded)
    };
    let (db, downloaded) = sync_once(new_client_db(&file), &cluster.nodes[0]);
    assert_eq!(downloaded, INITIAL_ROWS, "the first sync downloads every row");
    assert_eq!(client_rows(&db).len() as u64, INITIAL_ROWS);
    let positions = db.stored_buckets().expect("positions");
    eprintln!("synced from node 0 up to {positions:?}");

    cluster
        .source
        .psql(&format!(
            "INSERT INTO items SELECT 'later' || g, 'later ' || g FROM generate_series(1, {LATER_ROWS}) g"
        ))
        .expect("later rows");
    cluster.wait_converged(&mut watcher, &runtime);

    // The same database, now syncing from node 1: it sends its positions and gets only the later ops.
    let (db, downloaded) = sync_once(db, &cluster.nodes[1]);
    assert_eq!(
        downloaded, LATER_ROWS,
        "the client downloaded more than it lacked"
    );
    assert_eq!(client_rows(&db), cluster.source_rows());
    let moved_positions = db.stored_buckets().expect("positions");
    assert_eq!(moved_positions.len(), positions.len());
    assert!(
        moved_positions
            .iter()
            .zip(&positions)
            .all(|(moved, before)| moved.name == before.name && moved.last_op > before.last_op),
        "positions did not advance: {positions:?} → {moved_positions:?}"
    );
}
