//! End-to-end replication throughput against a throwaway Postgres 15 cluster, in one run, through both
//! decoders (pgoutput, and the syncgate output plugin when it is installed: docs/pg-ext.md):
//!
//! 1. **Snapshot**: a 1,000,000-row table (~200-byte rows) copied into a fresh SQLite storage, from the
//!    replicator's start until the snapshot is committed and the version active; once per decoder (two
//!    storages, each with its version's slot).
//! 2. **Ingest**: with the gateways stopped, 1,000 transactions × 1,000 row changes are written (updates,
//!    some moving rows between buckets, inserts and deletes). Then (a) Postgres decoding that WAL
//!    (`pg_logical_slot_get_binary_changes` on slots created at the same position), with pgoutput and
//!    with the plugin, and (b) each restarted gateway until its checkpoint passes a marker emitted after
//!    the workload, with the time its storage writer was busy meanwhile (near all of it: storage bounds (b)).
//! 3. **Unrelated changes**: both gateways running and caught up, a table no rule reads is updated; the
//!    change data each received meanwhile (`stream_bytes`), until its slot confirmed the WAL end. The
//!    plugin filters inside Postgres (expected: 0 bytes); pgoutput sends every table of a `FOR ALL
//!    TABLES` publication.
//!
//! Prints figures only (the VM's speed varies; the ratios (b)/(a) are the comparable figures).
//!
//! `cargo bench -p syncgate --bench replication`
//! (`BENCH_ROWS` and `BENCH_TXNS` scale it down for a quick look; `BENCH_PLUGIN_FIRST=1` runs the plugin's
//! ingest before pgoutput's; `BENCH_PHASES=snapshot` stops after the snapshots.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use syncgate::replicator::{
    Catalog, ReplicationMetrics, ReplicatorOptions, SourceConnection, Stopped, VersionReplicator,
};
use syncgate::source::OutputPlugin;
use syncgate::storage::{BucketStorage, Lsn, RulesVersion, SqliteStorage};
use syncgate_rules::{CompileOptions, SyncRules, compile};
use syncgate_test_support::stats::env_or;
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
-- No rule reads it: its changes reach a pgoutput gateway (FOR ALL TABLES), never a plugin one.
CREATE TABLE unrelated (id int PRIMARY KEY, payload text NOT NULL);
CREATE PUBLICATION powersync FOR ALL TABLES;
";

/// Rows of `unrelated`; each of its transactions updates them all.
const UNRELATED_ROWS: u64 = 1_000;

/// Row `g`'s columns as SQL expressions (~200 bytes of text per row).
const ROW_EXPRS: &str = "g, 'user-' || lpad((g % 5000)::text, 5, '0'), CASE WHEN g % 2 = 0 THEN (g % 1000)::int END, \
     'Item ' || g || ' – quarterly review', rpad('Notes for item ' || g || ': ', 120, 'lorem ipsum dolor sit amet '), \
     (g % 1000) + (g % 100) / 100.0, g % 3 = 0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'";

/// Per workload transaction: updates of existing rows, inserts, deletes (1,000 row changes together).
const TXN_UPDATES: u64 = 600;
const TXN_INSERTS: u64 = 390;
const TXN_DELETES: u64 = 10;

fn rules() -> SyncRules {
    let result = compile(RULES, &CompileOptions::default());
    result
        .rules
        .unwrap_or_else(|| panic!("benchmark rules compile: {:?}", result.diagnostics))
}

/// Each decoder's gateway has its own storage and slot prefix (version numbers may coincide).
fn options(decoder: OutputPlugin) -> ReplicatorOptions {
    ReplicatorOptions {
        slot_prefix: format!("bench_{}_", decoder.name()),
        decoder,
        ..ReplicatorOptions::default()
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Stopped>,
    metrics: Arc<ReplicationMetrics>,
    active: watch::Receiver<Option<RulesVersion>>,
}

fn start(gateway: &Storage, db: &TestDatabase, rules: &Arc<SyncRules>) -> Running {
    let (storage, version) = (&gateway.storage, gateway.version);
    let (stop, stop_rx) = watch::channel(false);
    let (active_tx, active) = watch::channel(None);
    let metrics = Arc::new(ReplicationMetrics::default());
    let mut replicator = VersionReplicator::new(
        Arc::clone(storage),
        version,
        Arc::clone(rules),
        SourceConnection::from_url(&db.url()).expect("source"),
        options(gateway.decoder),
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

/// One decoder's gateway: a fresh storage with one version.
struct Storage {
    decoder: OutputPlugin,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    storage: Arc<SqliteStorage>,
    version: RulesVersion,
}

impl Storage {
    fn new(decoder: OutputPlugin) -> Storage {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("storage.sqlite");
        let storage = Arc::new(SqliteStorage::open(&path).expect("open storage"));
        let version = storage.create_version(RULES).expect("create version");
        Storage {
            decoder,
            _dir: dir,
            path,
            storage,
            version,
        }
    }
}

/// Phase 1 for one decoder: from start until the snapshot is committed and the version active.
async fn snapshot(gateway: &Storage, db: &TestDatabase, rules: &Arc<SyncRules>, rows: u64) {
    let version = gateway.version;
    let started = Instant::now();
    let running = start(gateway, db, rules);
    {
        let storage = Arc::clone(&gateway.storage);
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
        "snapshot ({} slot): {rows} rows committed in {snapshot_secs:.2} s = {:.0} rows/s (active after \
         {active_secs:.2} s); storage {:.0} MiB",
        gateway.decoder,
        rows as f64 / snapshot_secs,
        mib(file_size(&gateway.path))
    );
}

/// (a) for one decoder: Postgres decoding the workload's WAL from a slot created before it; returns row
/// changes per second.
async fn decode(
    client: &tokio_postgres::Client,
    slot: &str,
    options: &str,
    changes: u64,
    label: &str,
) -> f64 {
    let started = Instant::now();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(length(data)), 0)::bigint \
                 FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL, {options})"
            ),
            &[],
        )
        .await
        .expect("decode");
    let secs = started.elapsed().as_secs_f64();
    let (messages, bytes): (i64, i64) = (row.get(0), row.get(1));
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("drop baseline slot");
    let rate = changes as f64 / secs;
    println!(
        "(a) Postgres {label} decode: {changes} row changes ({messages} messages, {:.0} MiB) in {secs:.2} s = \
         {rate:.0} row changes/s",
        mib(u64::try_from(bytes).unwrap_or(0))
    );
    rate
}

/// (b) for one decoder: the restarted gateway until the checkpoint at `end` is committed; returns row
/// changes per second.
async fn ingest(gateway: &Storage, db: &TestDatabase, rules: &Arc<SyncRules>, end: Lsn, changes: u64) -> f64 {
    let version = gateway.version;
    let started = Instant::now();
    let running = start(gateway, db, rules);
    {
        let storage = Arc::clone(&gateway.storage);
        poll_until(Duration::from_secs(600), move || {
            storage
                .latest_checkpoint(version)
                .expect("checkpoint")
                .is_some_and(|c| c.lsn >= end)
        })
        .await;
    }
    let secs = started.elapsed().as_secs_f64();
    let metrics = Arc::clone(&running.metrics);
    running.stop().await;
    // Read after the stop: a batch's counters are updated just after its commit becomes visible.
    let figures = metrics.snapshot();
    let rate = changes as f64 / secs;
    // Batches are written one at a time: a busy share near 100 % means storage, not decoding, bounds (b).
    println!(
        "(b) gateway ingest via {}: {} row changes in {secs:.2} s = {rate:.0} row changes/s ({} transactions in \
         {} batches, {:.0} MiB of change data received); storage writer busy {:.2} s ({:.0} % of the ingest); \
         storage {:.0} MiB",
        gateway.decoder,
        figures.row_changes,
        figures.transactions,
        figures.batches,
        mib(figures.stream_bytes),
        figures.apply_seconds,
        100.0 * figures.apply_seconds / secs,
        mib(file_size(&gateway.path))
    );
    rate
}

fn slot_confirmed(db: &TestDatabase, prefix: &str) -> Lsn {
    db.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name LIKE '{prefix}%'"
    ))
    .expect("slot position")
    .trim()
    .parse()
    .expect("lsn")
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
    let rows: u64 = env_or("BENCH_ROWS", 1_000_000);
    let txns: u64 = env_or("BENCH_TXNS", 1_000);
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

    db.psql(&format!(
        "INSERT INTO unrelated SELECT g, 'unrelated ' || g FROM generate_series(1, {UNRELATED_ROWS}) g"
    ))
    .expect("unrelated rows");
    let plugin_usable = Catalog::new(db.connect().await.expect("connect"))
        .probe_output_plugin(OutputPlugin::Syncgate)
        .await;
    let mut decoders = vec![OutputPlugin::Pgoutput];
    match plugin_usable {
        Ok(()) => decoders.push(OutputPlugin::Syncgate),
        Err(reason) => println!("the syncgate output plugin is not usable ({reason}): pgoutput figures only"),
    }
    let rules = Arc::new(rules());
    let gateways: Vec<Storage> = decoders.iter().map(|&d| Storage::new(d)).collect();

    // Phase 1: snapshot, per decoder.
    for gateway in &gateways {
        snapshot(gateway, &db, &rules, rows).await;
    }
    if std::env::var("BENCH_PHASES").as_deref() == Ok("snapshot") {
        return;
    }

    // Phase 2: the workload's WAL, written while the gateways are stopped.
    for decoder in &decoders {
        db.psql(&format!(
            "SELECT pg_create_logical_replication_slot('bench_baseline_{0}', '{0}')",
            decoder.name()
        ))
        .expect("baseline slot");
    }
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

    // (a) Postgres decoding the same WAL, per decoder; (b) each gateway ingesting it.
    let mut decode_rates = Vec::new();
    for decoder in &decoders {
        let (options, label) = match decoder {
            OutputPlugin::Pgoutput => (
                "'proto_version', '1', 'publication_names', 'powersync'",
                "pgoutput",
            ),
            OutputPlugin::Syncgate => ("'tables', 'public.items', 'messages', 'true'", "syncgate plugin"),
        };
        let slot = format!("bench_baseline_{}", decoder.name());
        decode_rates.push(decode(&client, &slot, options, changes, label).await);
    }
    // The second ingest runs while the kernel still writes back the first one's ~2 GiB of storage, so
    // `BENCH_PLUGIN_FIRST=1` swaps the order to tell that apart from the decoders' own cost.
    let mut order: Vec<(&Storage, &f64)> = gateways.iter().zip(&decode_rates).collect();
    if std::env::var("BENCH_PLUGIN_FIRST").as_deref() == Ok("1") {
        order.reverse();
    }
    for (gateway, decode_rate) in order {
        let ingest_rate = ingest(gateway, &db, &rules, end, changes).await;
        println!(
            "(b)/(a) via {} = {:.2}",
            gateway.decoder,
            ingest_rate / decode_rate
        );
    }

    // Phase 3: only a table no rule reads changes, with every gateway running and caught up.
    let running: Vec<Running> = gateways.iter().map(|g| start(g, &db, &rules)).collect();
    let caught_up = marker(&db);
    for gateway in &gateways {
        let storage = Arc::clone(&gateway.storage);
        let version = gateway.version;
        poll_until(Duration::from_secs(120), move || {
            storage
                .latest_checkpoint(version)
                .expect("checkpoint")
                .is_some_and(|c| c.lsn >= caught_up)
        })
        .await;
    }
    let before: Vec<u64> = running
        .iter()
        .map(|r| r.metrics.stream_bytes.load(Ordering::Relaxed))
        .collect();
    let unrelated_txns = (txns / 10).max(1);
    for _ in 0..unrelated_txns {
        client
            .batch_execute("UPDATE unrelated SET payload = payload || '.'")
            .await
            .expect("unrelated update");
    }
    let wal_end: Lsn = db
        .psql("SELECT pg_current_wal_lsn()")
        .expect("wal position")
        .trim()
        .parse()
        .expect("lsn");
    // Keepalives are confirmed once nothing is pending: then the gateway has seen all of it.
    for gateway in &gateways {
        let prefix = options(gateway.decoder).slot_prefix;
        let started = Instant::now();
        while slot_confirmed(&db, &prefix) < wal_end {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "slot {prefix} did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for ((gateway, running), before) in gateways.iter().zip(&running).zip(&before) {
        let received = running.metrics.stream_bytes.load(Ordering::Relaxed) - before;
        println!(
            "unrelated table only ({unrelated_txns} transactions × {UNRELATED_ROWS} row changes): the {} gateway \
             received {received} bytes of change data",
            gateway.decoder
        );
    }
    for running in running {
        running.stop().await;
    }
}
