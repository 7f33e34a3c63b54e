//! Client benchmark (`cargo bench -p syncgate-client --bench apply`; harness = false, prints figures).
//! Same rows both ways, same file settings as the client (WAL, synchronous NORMAL):
//!
//! (a) raw SQLite: the rows inserted into a plain typed table in one transaction with a prepared
//!     statement — the ceiling for getting them into SQLite at all;
//! (b) the client: a 1,000,000-op bucket fed as NDJSON lines (`checkpoint`, `data` lines of 1,000 ops as
//!     the gateway sends them, `checkpoint_complete`) through line parsing, the sync state machine and the
//!     local database (op log, checksum check, publish to the app's table) — everything but the network;
//! (c) end to end: a throwaway Postgres 15, the release `syncgate serve` binary, a 1,000,000-row table
//!     (~200-byte rows) in one bucket; once the gateway is ready, a fresh client (the library's
//!     `SyncDriver`) from start until the first checkpoint is in its local tables. Baselines in the same
//!     run: a plain HTTP reader of the same stream (NDJSON, no parsing, without and with gzip) until
//!     `checkpoint_complete`, and its recorded lines replayed into a fresh database as (b) does;
//! (d) live-query latency on the database of (b): a watch over one row, then 100 published checkpoints
//!     (`store_ops` + `apply_checkpoint`, as the driver does) and 100 `write_transaction`s each changing
//!     that row; from before the commit call until the watch stream yields the new result, p50/p99.
//!
//! `SYNCGATE_BENCH_ROWS` overrides the row count of (a)–(c); `SYNCGATE_BENCH_SKIP_E2E=1` skips (c) (it
//! needs the Postgres 15 binaries). Generating the lines is not timed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use syncgate_client::sync::{ApplyPlan, Instruction, SyncEvent, SyncStateMachine};
use syncgate_client::{
    ApplyOutcome, BackendConnector, ClientError, Credentials, CrudTransaction, LocalDatabase, Schema,
    SyncDriver, SyncOptions,
};
use syncgate_protocol::line::{BucketChecksum, Checkpoint, CheckpointComplete, DataLine};
use syncgate_protocol::{BucketName, BucketPriority, Checksum, ClientId, OpId, OplogEntry, Subkey, SyncLine};
use syncgate_test_support::PgCluster;
use syncgate_test_support::serve::ServeProcess;
use syncgate_test_support::stats::{ms, percentile};

/// Ops per `data` line, as the gateway sends them.
const OPS_PER_LINE: usize = 1_000;

const SCHEMA: &str = r#"{"tables": [{"name": "todos", "columns": [
  {"name": "list_id", "type": "text"}, {"name": "description", "type": "text"},
  {"name": "completed", "type": "integer"}, {"name": "owner_id", "type": "text"}]}]}"#;

struct Row {
    id: String,
    list_id: String,
    description: String,
    completed: i64,
    owner_id: &'static str,
}

fn row(i: usize) -> Row {
    Row {
        id: format!("aaaaaaaa-0000-4000-8000-{i:012}"),
        list_id: format!("11111111-1111-4111-8111-{:012}", i % 100),
        description: format!("todo number {i}: buy milk, eggs and bread"),
        completed: i64::try_from(i % 2).expect("0 or 1"),
        owner_id: "user1",
    }
}

fn row_json(row: &Row) -> String {
    serde_json::json!({
        "id": row.id, "list_id": row.list_id, "description": row.description,
        "completed": row.completed, "owner_id": row.owner_id,
    })
    .to_string()
}

fn op(i: usize) -> OplogEntry {
    let row = row(i);
    OplogEntry::put(
        OpId::new(u64::try_from(i).expect("fits") + 1).expect("op id"),
        "todos".to_owned(),
        row.id.clone(),
        Subkey(format!("5f0c/{}", row.id)),
        row_json(&row),
    )
}

fn raw_sqlite(rows: usize) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL").expect("sync");
    conn.execute_batch(
        "CREATE TABLE todos (id TEXT PRIMARY KEY, list_id TEXT, description TEXT, completed INTEGER, owner_id TEXT)",
    )
    .expect("table");
    let generated: Vec<Row> = (0..rows).map(row).collect();
    let started = Instant::now();
    let tx = conn.unchecked_transaction().expect("tx");
    {
        let mut insert = tx
            .prepare("INSERT INTO todos (id, list_id, description, completed, owner_id) VALUES (?1, ?2, ?3, ?4, ?5)")
            .expect("prepare");
        for r in &generated {
            insert
                .execute(rusqlite::params![
                    r.id,
                    r.list_id,
                    r.description,
                    r.completed,
                    r.owner_id
                ])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    started.elapsed()
}

/// Runs the state machine's instructions against the database; returns whether a full checkpoint was
/// published.
fn run(
    machine: &mut SyncStateMachine,
    db: &mut LocalDatabase,
    event: SyncEvent,
    store: &mut Duration,
    publish: &mut Duration,
) -> bool {
    let mut published = false;
    let mut pending: std::collections::VecDeque<Instruction> = machine.handle(event).into();
    while let Some(instruction) = pending.pop_front() {
        match instruction {
            Instruction::StoreOps {
                bucket,
                ops,
                last_op,
                checksum,
            } => {
                let started = Instant::now();
                db.store_ops(&bucket, &ops, last_op, checksum).expect("store ops");
                *store += started.elapsed();
            }
            Instruction::ApplyCheckpoint(plan) => {
                let started = Instant::now();
                let applied = db.apply_checkpoint(&plan).expect("apply") == ApplyOutcome::Applied;
                *publish += started.elapsed();
                published |= applied && plan.priority.is_none();
                pending.extend(machine.handle(SyncEvent::ApplyFinished { applied }));
            }
            Instruction::DeleteBuckets { buckets } => db.delete_buckets(&buckets).expect("delete"),
            Instruction::CloseStream { reason } => panic!("stream closed: {reason:?}"),
            Instruction::OpenStream { .. }
            | Instruction::RefreshCredentials
            | Instruction::UpdateStatus(_) => {}
        }
    }
    published
}

fn client_apply(rows: usize, dir: &Path) -> (Duration, Duration, Duration, LocalDatabase) {
    let mut db = LocalDatabase::open(&dir.join("client.db")).expect("open");
    db.set_schema(&Schema::from_json(SCHEMA).expect("schema"))
        .expect("set schema");
    let bucket = BucketName::new("user_todos[\"user1\"]");
    let last = OpId::new(u64::try_from(rows).expect("fits")).expect("op id");
    let checksum: Checksum = (0..rows).map(|i| op(i).checksum).sum();
    let checkpoint = SyncLine::Checkpoint(Checkpoint {
        last_op_id: last,
        write_checkpoint: None,
        buckets: vec![BucketChecksum {
            bucket: bucket.clone(),
            checksum,
            count: u32::try_from(rows).expect("fits"),
            priority: BucketPriority::default(),
            subscriptions: Vec::new(),
        }],
        streams: Vec::new(),
    })
    .to_json();
    let complete = SyncLine::CheckpointComplete(CheckpointComplete { last_op_id: last }).to_json();

    let mut machine = SyncStateMachine::new();
    let (mut store, mut publish, mut total) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    machine.handle(SyncEvent::Start {
        client_id: ClientId("bench".to_owned()),
        buckets: Vec::new(),
    });
    machine.handle(SyncEvent::StreamOpened);
    let mut feed = |text: &str, store: &mut Duration, publish: &mut Duration| {
        let started = Instant::now();
        let line = SyncLine::from_json(text).expect("line").expect("known line");
        let published = run(
            &mut machine,
            &mut db,
            SyncEvent::LineReceived(line),
            store,
            publish,
        );
        total += started.elapsed();
        published
    };
    feed(&checkpoint, &mut store, &mut publish);
    for start in (0..rows).step_by(OPS_PER_LINE) {
        let end = (start + OPS_PER_LINE).min(rows);
        let data: Vec<OplogEntry> = (start..end).map(op).collect();
        let line = SyncLine::Data(DataLine {
            bucket: bucket.clone(),
            after: OpId::new(u64::try_from(start).expect("fits")).expect("op id"),
            has_more: end < rows,
            next_after: data.last().expect("ops").op_id,
            data,
        })
        .to_json();
        feed(&line, &mut store, &mut publish);
    }
    assert!(
        feed(&complete, &mut store, &mut publish),
        "the checkpoint was published"
    );
    let count: i64 = db
        .connection()
        .query_row("SELECT count(*) FROM todos", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        usize::try_from(count).expect("count"),
        rows,
        "every row is in the app's table"
    );
    (total, store, publish, db)
}

fn rate(rows: usize, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary too, without it, and must
    // not spend minutes on a debug build here.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "client apply benchmark: skipped (run it with `cargo bench -p syncgate-client --bench apply`)"
        );
        return;
    }
    let rows: usize = std::env::var("SYNCGATE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("client apply benchmark: {rows} rows");
    let raw = raw_sqlite(rows);
    let raw_rate = rate(rows, raw);
    println!(
        "(a) raw SQLite insert, one transaction, prepared: {:.2} s, {raw_rate:.0} rows/s",
        raw.as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (total, store, publish, db) = client_apply(rows, dir.path());
    let client_rate = rate(rows, total);
    println!(
        "(b) client apply (parse + state machine + op log + publish): {:.2} s, {client_rate:.0} ops/s \
         (storing ops {:.2} s, publishing {:.2} s, parsing and state machine {:.2} s)",
        total.as_secs_f64(),
        store.as_secs_f64(),
        publish.as_secs_f64(),
        (total.saturating_sub(store + publish)).as_secs_f64()
    );
    println!(
        "(b)/(a) = {:.2}; targets: (b) >= 100000 ops/s {}, (b) >= 0.2 x (a) {}",
        client_rate / raw_rate,
        if client_rate >= 100_000.0 { "met" } else { "MISSED" },
        if client_rate >= 0.2 * raw_rate {
            "met"
        } else {
            "MISSED"
        }
    );
    live_query_latency(db);
    if std::env::var("SYNCGATE_BENCH_SKIP_E2E").is_ok_and(|v| v == "1") {
        println!("(c) skipped (SYNCGATE_BENCH_SKIP_E2E=1)");
    } else {
        end_to_end(rows);
    }
}

/// (d): commit → watch result, for published checkpoints and for local write transactions.
fn live_query_latency(mut db: LocalDatabase) {
    const COMMITS: usize = 100;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let watch = db
        .watch(
            "SELECT description FROM todos WHERE id = 'probe'",
            Vec::new(),
            Duration::from_secs(3600),
        )
        .expect("watch");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<(String, Instant)>();
    runtime.spawn(async move {
        let mut watch = std::pin::pin!(watch);
        while let Some(rows) = watch.next().await {
            let rows = rows.expect("watch query");
            let description = rows
                .first()
                .and_then(|row| row["description"].as_str())
                .unwrap_or("")
                .to_owned();
            if seen_tx.send((description, Instant::now())).is_err() {
                return;
            }
        }
    });
    let wait_for = |expected: &str, started: Instant| -> Duration {
        loop {
            let (description, at) = seen_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the watch yields the new result");
            if description == expected {
                return at - started;
            }
        }
    };
    wait_for("", Instant::now());
    let probe = BucketName::new("probe");
    let (mut published, mut written) = (Vec::new(), Vec::new());
    let mut checksum = Checksum::ZERO;
    for i in 0..COMMITS {
        let op_id = OpId::new(10_000_000 + u64::try_from(i).expect("fits")).expect("op id");
        let description = format!("published {i}");
        let op = OplogEntry::put(
            op_id,
            "todos".to_owned(),
            "probe".to_owned(),
            Subkey("probe".to_owned()),
            serde_json::json!({ "description": description }).to_string(),
        );
        checksum += op.checksum;
        let started = Instant::now();
        db.store_ops(&probe, &[op], op_id, checksum).expect("store");
        let plan = ApplyPlan {
            last_op_id: op_id,
            write_checkpoint: None,
            priority: None,
            buckets: vec![probe.clone()],
            wait_for_local_writes: true,
        };
        assert_eq!(db.apply_checkpoint(&plan).expect("apply"), ApplyOutcome::Applied);
        published.push(wait_for(&description, started));
    }
    for i in 0..COMMITS {
        let description = format!("written {i}");
        let started = Instant::now();
        db.write_transaction(|tx| {
            tx.execute(
                "UPDATE todos SET description = ?1 WHERE id = 'probe'",
                [&description],
            )?;
            Ok(())
        })
        .expect("write");
        written.push(wait_for(&description, started));
    }
    for (name, latencies) in [
        (
            "published checkpoint (store_ops + apply_checkpoint of one op)",
            &mut published,
        ),
        ("local write_transaction (one UPDATE)", &mut written),
    ] {
        latencies.sort();
        println!(
            "(d) live query, {name} → new result, {COMMITS} commits: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             target p50 <= 5 ms",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99)),
            ms(*latencies.last().expect("samples"))
        );
    }
    drop(seen_rx);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

const E2E_RULES: &str = "
bucket_definitions:
  everything:
    data:
      - SELECT * FROM items
";

const E2E_SCHEMA: &str = r#"{"tables": [{"name": "items", "columns": [
  {"name": "list_id", "type": "text"}, {"name": "description", "type": "text"},
  {"name": "completed", "type": "integer"}, {"name": "owner_id", "type": "text"}]}]}"#;

/// The release `syncgate` binary of this workspace (built if needed; a no-op when up to date).
fn syncgate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench binary lives in target/<profile>/deps")
        .to_path_buf();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "syncgate", "--bin", "syncgate"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the syncgate binary failed");
    profile_dir.join("syncgate")
}

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    syncgate_test_support::serve::sign_token("bench", now, now + 3600)
}

struct BenchConnector {
    credentials: Credentials,
}

impl BackendConnector for BenchConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.credentials.clone())
    }

    async fn upload_data(&self, _: &CrudTransaction) -> Result<(), ClientError> {
        Err(ClientError::Connector(
            "the benchmark makes no local writes".to_owned(),
        ))
    }
}

/// Reads `POST /sync/stream` (NDJSON) until `checkpoint_complete`; returns the bytes read. With `gzip`,
/// asks for gzip as the client does and decompresses (one `GzDecoder`, as the driver).
/// Keeps the lines in `keep` if given.
async fn plain_reader(endpoint: &str, token: &str, gzip: bool, mut keep: Option<&mut Vec<Vec<u8>>>) -> usize {
    use std::io::Write as _;
    let mut request = reqwest::Client::new()
        .post(format!("{endpoint}/sync/stream"))
        .header("authorization", format!("Token {token}"))
        .header("accept", "application/x-ndjson");
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let mut decoder = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
    let mut response = request
        .body(r#"{"include_checksum": true, "raw_data": true}"#)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let (mut pending, mut total) = (Vec::new(), 0);
    loop {
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let complete = line.starts_with(b"{\"checkpoint_complete\"");
            if let Some(keep) = keep.as_deref_mut() {
                keep.push(line);
            }
            if complete {
                return total;
            }
        }
        let chunk = response.chunk().await.expect("read").expect("open");
        total += chunk.len();
        match &mut decoder {
            Some(decoder) => {
                decoder.write_all(&chunk).expect("gunzip");
                decoder.flush().expect("gunzip");
                pending.append(decoder.get_mut());
            }
            None => pending.extend_from_slice(&chunk),
        }
    }
}

/// Feeds recorded NDJSON lines to a fresh database as (b) does; returns (total, storing, publishing).
fn replay_lines(lines: &[Vec<u8>]) -> (Duration, Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut db = LocalDatabase::open(&dir.path().join("replay.db")).expect("open");
    db.set_schema(&Schema::from_json(E2E_SCHEMA).expect("schema"))
        .expect("set schema");
    let mut machine = SyncStateMachine::new();
    machine.handle(SyncEvent::Start {
        client_id: ClientId("replay".to_owned()),
        buckets: Vec::new(),
    });
    machine.handle(SyncEvent::StreamOpened);
    let (mut store, mut publish) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    let mut published = false;
    for line in lines {
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            continue;
        }
        if let Some(line) = SyncLine::from_json(&text).expect("line") {
            published |= run(
                &mut machine,
                &mut db,
                SyncEvent::LineReceived(line),
                &mut store,
                &mut publish,
            );
        }
    }
    let total = started.elapsed();
    assert!(published, "the replayed checkpoint was published");
    (total, store, publish)
}

/// (c): Postgres → gateway → a fresh client's local tables.
fn end_to_end(rows: usize) {
    let binary = syncgate_binary();
    let cluster = PgCluster::start().expect("start Postgres (needs the Postgres 15 binaries)");
    let db = cluster.create_database().expect("database");
    let started = Instant::now();
    db.psql(&format!(
        "CREATE TABLE items (id text PRIMARY KEY, list_id text, description text, completed int, owner_id text);
         INSERT INTO items SELECT 'aaaaaaaa-0000-4000-8000-' || lpad(g::text, 12, '0'),
                '11111111-1111-4111-8111-' || lpad((g % 100)::text, 12, '0'),
                rpad('todo number ' || g || ': buy milk, eggs and bread ', 100, 'abcdefghij'), g % 2, 'user1'
         FROM generate_series(1, {rows}) g;
         CREATE PUBLICATION powersync FOR TABLE items;"
    ))
    .expect("load rows");
    let loaded = started.elapsed();
    let work = tempfile::tempdir().expect("temp dir");
    let rules = work.path().join("sync-rules.yaml");
    std::fs::write(&rules, E2E_RULES).expect("rules");
    let started = Instant::now();
    let mut gateway = ServeProcess::start(
        &binary,
        work.path(),
        &db.url_without_session_options(),
        &rules,
        "bench_client_",
        "warn",
    );
    gateway.wait_ready(Duration::from_secs(1200));
    println!(
        "(c) setup: {rows} rows loaded into Postgres in {:.1} s; gateway ready (initial snapshot) in {:.1} s",
        loaded.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let endpoint = gateway.endpoint();
    let token = token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let started = Instant::now();
    let mut lines = Vec::new();
    let bytes = runtime.block_on(plain_reader(&endpoint, &token, false, Some(&mut lines)));
    let reader = started.elapsed();
    let started = Instant::now();
    let gzip_bytes = runtime.block_on(plain_reader(&endpoint, &token, true, None));
    let gzip_reader = started.elapsed();

    let client_dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let mut local = LocalDatabase::open(&client_dir.path().join("client.db")).expect("open");
    local
        .set_schema(&Schema::from_json(E2E_SCHEMA).expect("schema"))
        .expect("set schema");
    let options = SyncOptions {
        stop_after_first_sync: true,
        max_consecutive_failures: Some(3),
        retry_delay: Duration::from_millis(200),
        ..SyncOptions::default()
    };
    let connector = BenchConnector {
        credentials: Credentials {
            endpoint: endpoint.clone(),
            token,
        },
    };
    let mut driver = SyncDriver::new(local, connector, options);
    runtime.block_on(driver.run()).expect("first sync");
    let client = started.elapsed();
    let local = driver.into_database();
    let count: i64 = local
        .connection()
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count");
    assert_eq!(usize::try_from(count).expect("count"), rows, "every row synced");
    println!(
        "(c) fresh client, start → first checkpoint in its local tables ({rows} rows): {:.2} s, {:.0} rows/s; \
         target <= 10 s: {}",
        client.as_secs_f64(),
        rate(rows, client),
        if client <= Duration::from_secs(10) {
            "met"
        } else {
            "MISSED"
        }
    );
    let (replay, store, publish) = replay_lines(&lines);
    println!(
        "    the same lines replayed without the network (parse + state machine + store + publish on one thread, \
         as (b)): {:.2} s (storing ops {:.2} s, publishing {:.2} s, parsing and state machine {:.2} s)",
        replay.as_secs_f64(),
        store.as_secs_f64(),
        publish.as_secs_f64(),
        replay.saturating_sub(store + publish).as_secs_f64()
    );
    println!(
        "    baselines, same run: a plain reader of the same stream (NDJSON, no parsing) to \
         checkpoint_complete: {:.2} s ({:.1} MB); with gzip as the client asks, decompressed: {:.2} s ({:.1} MB \
         on the wire)",
        reader.as_secs_f64(),
        bytes as f64 / 1e6,
        gzip_reader.as_secs_f64(),
        gzip_bytes as f64 / 1e6
    );
    drop(gateway);
}
