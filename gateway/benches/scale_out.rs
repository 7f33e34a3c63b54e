//! Scale-out figures (docs/benchmarks.md, "Scale-out"), in one run, with `syncgate serve` processes against a
//! throwaway Postgres 15 cluster; the Postgres bucket storage is a separate database on the same cluster:
//!
//! (a) **Ingest**: with the gateways stopped, `BENCH_TXNS` transactions × `BENCH_TXN_ROWS` row updates are
//!     written; then each gateway is started again alone, one after the other, and timed from its start until
//!     its client receives a marker committed after the workload (so every change before it is in a published
//!     checkpoint): changes/s for SQLite storage and for Postgres storage, and their ratio (target ≥ 0.5).
//!     Baseline: the same restart with a single change pending (process start, readiness, opening the
//!     stream), deducted from the rates the ratio uses.
//! (b) **Commit → client latency**: one row update per sample, one client each on the SQLite-storage gateway,
//!     on the Postgres-storage leader and on a second Postgres-storage gateway (not replicating: it learns of
//!     checkpoints through the storage's change feed); p50/p99 each, and non-leader p50 / leader p50 (target
//!     ≤ 2).
//! (c) **Takeover**: the leader gets SIGKILL, a change is committed at once, and the time until it reaches the
//!     client on the survivor (target ≤ 10 s).
//!
//! Prints figures only; the gateways log to `serve.log` files in a temporary directory.
//!
//! `cargo bench -p syncgate --bench scale_out`. Knobs: `BENCH_ROWS` (rows of the synced table, default
//! 100,000), `BENCH_TXNS` (default 300) and `BENCH_TXN_ROWS` (default 1,000) for (a), `BENCH_SAMPLES` (default
//! 100) for (b). `BENCH_PG_STAT_STATEMENTS=1` loads `pg_stat_statements` into the cluster and prints the
//! Postgres storage's top statements by total execution time during its (a) ingest, and how many
//! `source_state` updates were HOT (a profiling aid: the extension's bookkeeping slows every statement a
//! little, so figures of such a run are not comparable). `BENCH_SERVE_LOG=<filter>` runs the gateways with that
//! `RUST_LOG` and keeps their logs after the run (the directory is printed).

use std::path::Path;
use std::time::{Duration, Instant};

use syncgate_test_support::serve::{ServeProcess, ServeStorage, sign_token};
use syncgate_test_support::stats::{env_or, ms, percentile};
use syncgate_test_support::{ClusterOptions, PgCluster, TestDatabase};
use tokio::sync::mpsc;

const RULES: &str = "
bucket_definitions:
  by_owner:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT * FROM items WHERE owner_id = bucket.owner
";

/// `items` rows belong to 1,000 owners; row 0 belongs to `probe`, whose client every figure waits on.
const SCHEMA: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner_id text NOT NULL, n bigint NOT NULL, payload text NOT NULL);
CREATE PUBLICATION powersync FOR ALL TABLES;
";

/// The probe row's payload for mark `k`: fixed width, so one mark's text never contains another's.
fn mark_text(k: u64) -> String {
    format!("mark-{k:010}")
}

const WAIT: Duration = Duration::from_secs(900);

/// A gateway process and the storage it was started with (for the printout).
struct Gateway {
    name: &'static str,
    process: ServeProcess,
}

impl Gateway {
    fn start(
        name: &'static str,
        dir: &Path,
        db: &TestDatabase,
        rules: &Path,
        storage: ServeStorage,
    ) -> Gateway {
        let slot_prefix = match storage {
            ServeStorage::Sqlite(_) => "bench_sqlite_",
            ServeStorage::Postgres { .. } => "bench_pg_",
        };
        std::fs::create_dir_all(dir).expect("gateway dir");
        let process = ServeProcess::setup(
            env!("CARGO_BIN_EXE_syncgate"),
            dir,
            &db.url_without_session_options(),
            rules,
        )
        .slot_prefix(slot_prefix)
        .rust_log(&std::env::var("BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .storage(storage)
        .start();
        Gateway { name, process }
    }

    fn wait_ready(&mut self) {
        self.process.wait_ready(WAIT);
    }
}

/// Follows `/sync/stream` as `probe` on `gateway` and reports each mark it receives with the time it arrived.
async fn follow_probe(http: &reqwest::Client, gateway: &Gateway) -> mpsc::UnboundedReceiver<(u64, Instant)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut response = http
        .post(format!("{}/sync/stream", gateway.process.endpoint()))
        .header(
            "authorization",
            format!("Token {}", sign_token("probe", now, now + 7200)),
        )
        .header("accept", "application/x-ndjson")
        .body("{}")
        .send()
        .await
        .expect("sync stream");
    assert_eq!(response.status(), 200, "{}: sync stream", gateway.name);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let arrived = Instant::now();
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                for (at, _) in line.match_indices("mark-") {
                    if let Some(k) = line.get(at + 5..at + 15).and_then(|d| d.parse().ok()) {
                        let _ = tx.send((k, arrived));
                    }
                }
            }
        }
    });
    rx
}

/// Waits until `rx` reports mark `k` (or a later one); returns when it arrived.
async fn wait_mark(rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>, k: u64, what: &str) -> Instant {
    tokio::time::timeout(WAIT, async {
        loop {
            let (got, at) = rx.recv().await.unwrap_or_else(|| panic!("{what}: stream ended"));
            if got >= k {
                return at;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: mark {k} not received within {WAIT:?}"))
}

async fn set_mark(client: &tokio_postgres::Client, k: u64) {
    client
        .execute(
            "UPDATE items SET payload = $1, n = n + 1 WHERE id = 0",
            &[&mark_text(k)],
        )
        .await
        .expect("mark");
}

/// Restarts the stopped `gateway` and times it from its start until mark `k` reaches its client.
async fn restart_until_mark(http: &reqwest::Client, gateway: &mut Gateway, k: u64) -> Duration {
    let started = Instant::now();
    gateway.process.restart();
    gateway.wait_ready();
    let mut rx = follow_probe(http, gateway).await;
    let at = wait_mark(&mut rx, k, gateway.name).await;
    gateway.process.stop();
    at - started
}

/// (a) for one gateway: started alone on the stopped workload, timed until the marker after it reaches its
/// client; then, as the baseline, the same with one change pending (process start, readiness, the stream).
async fn ingest(
    http: &reqwest::Client,
    client: &tokio_postgres::Client,
    gateway: &mut Gateway,
    mark: &mut u64,
    changes: u64,
) -> f64 {
    let total = restart_until_mark(http, gateway, *mark).await.as_secs_f64();
    *mark += 1;
    set_mark(client, *mark).await;
    let fixed = restart_until_mark(http, gateway, *mark).await.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let (rate, net_rate) = (changes as f64 / total, changes as f64 / (total - fixed).max(1e-3));
    println!(
        "(a) ingest, {}: {changes} changes published in {total:.2} s = {rate:.0} changes/s; baseline (start with \
         one change pending) {fixed:.2} s; without it {net_rate:.0} changes/s",
        gateway.name
    );
    net_rate
}

/// The storage database's statements by total execution time since the reset before the Postgres ingest.
async fn print_top_statements(client: &tokio_postgres::Client) {
    let rows = client
        .query(
            "SELECT calls, total_exec_time, rows, shared_blks_hit + shared_blks_read,
               left(regexp_replace(query, '\\s+', ' ', 'g'), 110), sum(total_exec_time) OVER ()
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = current_database() ORDER BY total_exec_time DESC LIMIT 20",
            &[],
        )
        .await
        .expect("pg_stat_statements");
    let total: f64 = rows.first().map_or(0.0, |r| r.get(5));
    println!("(a) Postgres storage statements by total execution time (all statements: {total:.0} ms):");
    for row in rows {
        let (calls, time, count, blocks, text): (i64, f64, i64, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        println!("  {time:8.0} ms {calls:6} calls {count:8} rows {blocks:9} blocks  {text}");
    }
    let updates = client
        .query_one(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'source_state'",
            &[],
        )
        .await
        .expect("pg_stat_user_tables");
    let (updated, hot): (i64, i64) = (updates.get(0), updates.get(1));
    println!("  source_state since the storage was created: {updated} rows updated, {hot} of them HOT");
}

fn print_latency(name: &str, sorted: &[Duration]) {
    println!(
        "(b) commit → client, {name}: p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        sorted.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches without --bench: nothing to do.
    }
    let rows: u64 = env_or("BENCH_ROWS", 100_000).max(1);
    let txns: u64 = env_or("BENCH_TXNS", 300);
    let txn_rows: u64 = env_or("BENCH_TXN_ROWS", 1_000).clamp(1, rows);
    let samples: u64 = env_or("BENCH_SAMPLES", 100).max(1);

    let statement_stats = env_or("BENCH_PG_STAT_STATEMENTS", 0) == 1;
    let cluster = if statement_stats {
        PgCluster::start_with(&ClusterOptions {
            extra_settings: "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all"
                .into(),
            ..ClusterOptions::default()
        })
    } else {
        PgCluster::start()
    }
    .expect("start Postgres");
    let db = cluster.create_database().expect("source database");
    let storage_db = cluster.create_database().expect("storage database");
    db.psql(SCHEMA).expect("schema");
    db.psql(&format!(
        "INSERT INTO items VALUES (0, 'probe', 0, '{}');
         INSERT INTO items SELECT g, 'owner-' || (g % 1000), 0, rpad('row ' || g || ' ', 100, 'abcdefghij')
           FROM generate_series(1, {rows}) g;",
        mark_text(0)
    ))
    .expect("rows");
    // With BENCH_SERVE_LOG the gateways' logs are worth reading afterwards: the directory stays.
    let keep_logs = std::env::var_os("BENCH_SERVE_LOG").is_some();
    let work = tempfile::Builder::new()
        .disable_cleanup(keep_logs)
        .tempdir()
        .expect("work dir");
    if keep_logs {
        eprintln!("gateway logs kept under {}", work.path().display());
    }
    let rules = work.path().join("sync-rules.yaml");
    std::fs::write(&rules, RULES).expect("rules");
    let postgres_storage = ServeStorage::postgres(&storage_db, "syncgate_storage");

    // Initial snapshots, both storages at once (not measured here: see the replication benchmark).
    let started = Instant::now();
    let mut sqlite = Gateway::start(
        "SQLite storage",
        &work.path().join("sqlite"),
        &db,
        &rules,
        ServeStorage::Sqlite("storage.sqlite".into()),
    );
    let mut leader = Gateway::start(
        "Postgres storage",
        &work.path().join("pg-1"),
        &db,
        &rules,
        postgres_storage.clone(),
    );
    sqlite.wait_ready();
    leader.wait_ready();
    println!(
        "both gateways ready ({} rows snapshotted into each storage) in {:.1} s",
        rows + 1,
        started.elapsed().as_secs_f64()
    );

    // (a) The workload while both are stopped, then each alone until the mark after it is published.
    sqlite.process.stop();
    leader.process.stop();
    let client = db.connect().await.expect("connect");
    let written = Instant::now();
    for t in 0..txns {
        let first = (t * txn_rows) % rows + 1;
        client
            .execute(
                "UPDATE items SET n = n + 1 WHERE id BETWEEN $1 AND $2",
                &[
                    &i64::try_from(first).expect("id"),
                    &i64::try_from(first + txn_rows - 1).expect("id"),
                ],
            )
            .await
            .expect("workload");
    }
    let mut mark = 1;
    set_mark(&client, mark).await;
    let changes = (0..txns)
        .map(|t| txn_rows.min(rows + 1 - ((t * txn_rows) % rows + 1)))
        .sum::<u64>()
        + 1;
    println!(
        "(a) workload: {txns} transactions, {changes} row changes written in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let sqlite_rate = ingest(&http, &client, &mut sqlite, &mut mark, changes).await;
    let storage_client = if statement_stats {
        let storage_client = storage_db
            .connect()
            .await
            .expect("connect to the storage database");
        storage_client
            .batch_execute(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
            )
            .await
            .expect("pg_stat_statements");
        Some(storage_client)
    } else {
        None
    };
    // The Postgres gateway has the baseline's change pending too: it is part of its workload.
    let postgres_rate = ingest(&http, &client, &mut leader, &mut mark, changes + 1).await;
    println!(
        "(a) Postgres storage / SQLite storage ingest (baselines deducted) = {:.2} (target ≥ 0.5)",
        postgres_rate / sqlite_rate
    );
    if let Some(storage_client) = &storage_client {
        print_top_statements(storage_client).await;
    }

    // (b) Three clients, one commit per sample.
    sqlite.process.restart();
    leader.process.restart();
    sqlite.wait_ready();
    leader.wait_ready();
    let mut follower = Gateway::start(
        "Postgres storage, non-leader",
        &work.path().join("pg-2"),
        &db,
        &rules,
        postgres_storage,
    );
    follower.wait_ready();
    assert_eq!(
        leader.process.replicating(),
        Some(true),
        "the first Postgres-storage gateway replicates"
    );
    assert_eq!(
        follower.process.replicating(),
        Some(false),
        "the second one serves only"
    );
    leader.name = "Postgres storage, leader";
    let mut clients = Vec::new();
    for gateway in [&sqlite, &leader, &follower] {
        clients.push(follow_probe(&http, gateway).await);
    }
    for rx in &mut clients {
        wait_mark(rx, mark, "initial sync").await;
    }
    let mut latencies = vec![Vec::new(); clients.len()];
    for _ in 0..samples {
        mark += 1;
        let committed = Instant::now();
        set_mark(&client, mark).await;
        for (rx, latency) in clients.iter_mut().zip(&mut latencies) {
            latency.push(wait_mark(rx, mark, "sample").await - committed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (gateway, latency) in [&sqlite, &leader, &follower].iter().zip(&mut latencies) {
        latency.sort();
        print_latency(gateway.name, latency);
    }
    println!(
        "(b) non-leader p50 / leader p50 = {:.2} (target ≤ 2)",
        ms(percentile(&latencies[2], 0.5)) / ms(percentile(&latencies[1], 0.5))
    );

    // (c) SIGKILL of the leader; the next change reaches the survivor's client once it has taken over.
    let mut survivor = clients.pop().expect("the non-leader's client");
    drop(clients);
    let killed = Instant::now();
    leader.process.kill();
    mark += 1;
    set_mark(&client, mark).await;
    let at = wait_mark(&mut survivor, mark, "takeover").await;
    println!(
        "(c) takeover: SIGKILL of the leader → change at the survivor's client in {:.2} s (target ≤ 10 s); \
         survivor replicating: {:?}",
        (at - killed).as_secs_f64(),
        follower.process.replicating()
    );
}
