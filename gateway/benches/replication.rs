//! End-to-end replication throughput against a throwaway Postgres 15 cluster, in one run:
//!
//! 1. **Snapshot**: a 1,000,000-row table (~200-byte rows) copied into a fresh SQLite storage, from the
//!    replicator's start until the snapshot is committed and the version active.
//! 2. **Ingest**: with the gateway stopped, 1,000 transactions × 1,000 row changes are written (updates,
//!    some moving rows between buckets, inserts and deletes). Then (a) Postgres's own pgoutput decode of
//!    that WAL (`pg_logical_slot_get_binary_changes` on a slot created at the same position) and (b) the
//!    restarted gateway until its checkpoint passes a marker emitted after the workload.
//!
//! Prints figures only (the VM's speed varies; the ratio (b)/(a) is the comparable figure).
//!
//! `cargo bench -p syncgate --bench replication`
//! (`BENCH_ROWS` and `BENCH_TXNS` scale it down for a quick look.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use syncgate::replicator::{
    ReplicationMetrics, ReplicatorOptions, SourceConnection, Stopped, VersionReplicator,
};
use syncgate::storage::{BucketStorage, Lsn, RulesVersion, SqliteStorage};
use syncgate_rules::{CompileOptions, SyncRules, compile};
use syncgate_test_support::{PgCluster, TestDatabase};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every row is in its owner's bucket; half the rows (`project_id` not NULL) also in a project bucket;
/// about a tenth (`amount >= 900`) also in the global `flagged` bucket: 1–3 buckets, 1.6 on average.
const RULES: &str = r#"
bucket_definitions:
  by_owner:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT * FROM items WHERE owner_id = bucket.owner
  by_project:
    parameters: SELECT request.jwt() ->> 'project' AS project
    data:
      - SELECT id, title, done, project_id, updated_at FROM items WHERE project_id = bucket.project
  flagged:
    data:
      - SELECT id, title, amount FROM items WHERE amount >= 900
"#;

const SCHEMA: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    owner_id text NOT NULL,
    project_id int,
    title text NOT NULL,
    body text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    done bool NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE PUBLICATION powersync FOR ALL TABLES;
";

/// Row `g`'s columns as SQL expressions (~200 bytes of text per row).
const ROW_EXPRS: &str = "g, 'user-' || lpad((g % 5000)::text, 5, '0'), CASE WHEN g % 2 = 0 THEN (g % 1000)::int END, \
     'Item ' || g || ' – quarterly review', rpad('Notes for item ' || g || ': ', 120, 'lorem ipsum dolor sit amet '), \
     (g % 1000) + (g % 100) / 100.0, g % 3 = 0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'";

/// Per workload transaction: updates of existing rows, inserts, deletes (1,000 row changes together).
const TXN_UPDATES: u64 = 600;
const TXN_INSERTS: u64 = 390;
const TXN_DELETES: u64 = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rules() -> SyncRules {
    let result = compile(RULES, &CompileOptions::default());
    result
        .rules
        .unwrap_or_else(|| panic!("benchmark rules compile: {:?}", result.diagnostics))
}

fn options() -> ReplicatorOptions {
    ReplicatorOptions {
        slot_prefix: "bench_".to_owned(),
        ..ReplicatorOptions::default()
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Stopped>,
    metrics: Arc<ReplicationMetrics>,
    active: watch::Receiver<Option<RulesVersion>>,
}

fn start(
    storage: &Arc<SqliteStorage>,
    version: RulesVersion,
    db: &TestDatabase,
    rules: &Arc<SyncRules>,
) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    let (active_tx, active) = watch::channel(None);
    let metrics = Arc::new(ReplicationMetrics::default());
    let mut replicator = VersionReplicator::new(
        Arc::clone(storage),
        version,
        Arc::clone(rules),
        SourceConnection::from_url(&db.url()).expect("source"),
        options(),
        Arc::clone(&metrics),
        active_tx,
        stop_rx,
    );
    let task = tokio::spawn(async move { replicator.run().await.expect("replicator runs") });
    Running {
        stop,
        task,
        metrics,
        active,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send_replace(true);
        let stopped = self.task.await.expect("replicator task");
        assert_eq!(stopped, Stopped::Shutdown);
    }
}

fn file_size(path: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        total += std::fs::metadata(&name).map(|m| m.len()).unwrap_or(0);
    }
    total
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn marker(db: &TestDatabase) -> Lsn {
    db.psql("SELECT pg_logical_emit_message(false, 'powersync', 'ping')")
        .expect("emit marker")
        .trim()
        .parse()
        .expect("marker lsn")
}

async fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "benchmark phase timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and must not spend minutes
    // here. A filter argument that names nothing here skips the run too.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench")
        || args
            .iter()
            .any(|a| !a.starts_with('-') && !"replication".contains(a.as_str()))
    {
        println!("replication bench: skipped (run it with `cargo bench -p syncgate --bench replication`)");
        return;
    }
    // The replicator's own logs (e.g. `RUST_LOG=syncgate=info` for the per-table snapshot stages).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let rows = env_u64("BENCH_ROWS", 1_000_000);
    let txns = env_u64("BENCH_TXNS", 1_000);
    let txn_rows = TXN_UPDATES + TXN_INSERTS + TXN_DELETES;
    assert!(
        txns * TXN_UPDATES <= rows && rows >= TXN_DELETES,
        "workload needs more rows"
    );

    let cluster = PgCluster::start().expect("start Postgres");
    let db = cluster.create_database().expect("create database");
    db.psql(SCHEMA).expect("schema");
    let setup = Instant::now();
    db.psql(&format!(
        "INSERT INTO items SELECT {ROW_EXPRS} FROM generate_series(1, {rows}) g"
    ))
    .expect("insert rows");
    db.psql("VACUUM ANALYZE items").expect("vacuum");
    let table_bytes: u64 = db
        .psql("SELECT pg_table_size('items')")
        .expect("size")
        .trim()
        .parse()
        .expect("size");
    println!(
        "setup: {rows} rows inserted in {:.1} s, table {:.0} MiB ({} bytes/row on disk)",
        setup.elapsed().as_secs_f64(),
        mib(table_bytes),
        table_bytes / rows.max(1)
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("storage.sqlite");
    let storage = Arc::new(SqliteStorage::open(&path).expect("open storage"));
    let version = storage.create_version(RULES).expect("create version");
    let rules = Arc::new(rules());

    // Phase 1: snapshot.
    let started = Instant::now();
    let running = start(&storage, version, &db, &rules);
    {
        let storage = Arc::clone(&storage);
        poll_until(Duration::from_secs(600), move || {
            storage
                .replication_state(version)
                .expect("replication state")
                .snapshot_done_lsn
                .is_some()
        })
        .await;
    }
    let snapshot_secs = started.elapsed().as_secs_f64();
    let mut active = running.active.clone();
    tokio::time::timeout(Duration::from_secs(60), active.wait_for(|a| *a == Some(version)))
        .await
        .expect("version activates")
        .expect("active channel");
    let active_secs = started.elapsed().as_secs_f64();
    let copied = running.metrics.snapshot_rows.load(Ordering::Relaxed);
    assert_eq!(copied, rows, "snapshot copied every row");
    running.stop().await;
    println!(
        "snapshot: {rows} rows committed in {snapshot_secs:.2} s = {:.0} rows/s (active after {active_secs:.2} s); \
         storage {:.0} MiB",
        rows as f64 / snapshot_secs,
        mib(file_size(&path))
    );

    // Phase 2: the workload's WAL, written while the gateway is stopped.
    db.psql("SELECT pg_create_logical_replication_slot('bench_baseline', 'pgoutput')")
        .expect("baseline slot");
    let client = db.connect().await.expect("connect");
    let written = Instant::now();
    for t in 0..txns {
        let first_update = 1 + t * TXN_UPDATES;
        let last_update = first_update + TXN_UPDATES - 1;
        let first_insert = rows + 1 + t * TXN_INSERTS;
        let last_insert = first_insert + TXN_INSERTS - 1;
        // Delete rows the previous transaction inserted (the first one: the table's last rows, which
        // no update touches), so every transaction changes exactly `txn_rows` rows.
        let first_delete = if t == 0 {
            rows - TXN_DELETES + 1
        } else {
            first_insert - TXN_INSERTS
        };
        client
            .batch_execute(&format!(
                "BEGIN;
                 UPDATE items SET
                   owner_id = CASE WHEN id % 10 = 0 THEN 'user-' || lpad(((id + {t}) % 5000)::text, 5, '0') ELSE owner_id END,
                   title = 'Item ' || id || ' – revision {t}',
                   amount = (amount + 137) % 1000,
                   done = NOT done,
                   updated_at = now()
                 WHERE id BETWEEN {first_update} AND {last_update};
                 INSERT INTO items SELECT {ROW_EXPRS} FROM generate_series({first_insert}, {last_insert}) g;
                 DELETE FROM items WHERE id BETWEEN {first_delete} AND {};
                 COMMIT;",
                first_delete + TXN_DELETES - 1
            ))
            .await
            .expect("workload transaction");
    }
    let end = marker(&db);
    let changes = txns * txn_rows;
    println!(
        "workload: {txns} transactions × {txn_rows} row changes ({TXN_UPDATES} updates, one in ten moving \
         buckets; {TXN_INSERTS} inserts; {TXN_DELETES} deletes) written in {:.1} s",
        written.elapsed().as_secs_f64()
    );

    // (a) Postgres decoding the same WAL with pgoutput, counting the messages.
    let decode = Instant::now();
    let messages: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_get_binary_changes('bench_baseline', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'powersync')",
            &[],
        )
        .await
        .expect("decode")
        .get(0);
    let decode_secs = decode.elapsed().as_secs_f64();
    db.psql("SELECT pg_drop_replication_slot('bench_baseline')")
        .expect("drop baseline slot");
    let decode_rate = changes as f64 / decode_secs;
    println!(
        "(a) Postgres pgoutput decode: {changes} row changes ({messages} messages) in {decode_secs:.2} s = {decode_rate:.0} row changes/s"
    );

    // (b) The gateway, from restart until the marker's checkpoint is committed.
    let ingest = Instant::now();
    let running = start(&storage, version, &db, &rules);
    {
        let storage = Arc::clone(&storage);
        poll_until(Duration::from_secs(600), move || {
            storage
                .latest_checkpoint(version)
                .expect("checkpoint")
                .is_some_and(|c| c.lsn >= end)
        })
        .await;
    }
    let ingest_secs = ingest.elapsed().as_secs_f64();
    let metrics = Arc::clone(&running.metrics);
    running.stop().await;
    // Read after the stop: a batch's counters are updated just after its commit becomes visible.
    let figures = metrics.snapshot();
    let ingest_rate = changes as f64 / ingest_secs;
    println!(
        "(b) gateway ingest into committed storage: {} row changes in {ingest_secs:.2} s = {ingest_rate:.0} row changes/s \
         ({} transactions in {} batches); storage {:.0} MiB",
        figures.row_changes,
        figures.transactions,
        figures.batches,
        mib(file_size(&path))
    );
    println!("(b)/(a) = {:.2}", ingest_rate / decode_rate);
}
