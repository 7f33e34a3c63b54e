//! Client apply benchmark (`cargo bench -p syncgate-client --bench apply`; harness = false, prints
//! figures). Same rows both ways, same file settings as the client (WAL, synchronous NORMAL):
//!
//! (a) raw SQLite: the rows inserted into a plain typed table in one transaction with a prepared
//!     statement — the ceiling for getting them into SQLite at all;
//! (b) the client: a 1,000,000-op bucket fed as NDJSON lines (`checkpoint`, `data` lines of 1,000 ops as
//!     the gateway sends them, `checkpoint_complete`) through line parsing, the sync state machine and the
//!     local database (op log, checksum check, publish to the app's table) — everything but the network.
//!
//! `SYNCGATE_BENCH_ROWS` overrides the row count. Generating the lines is not timed.

use std::time::{Duration, Instant};

use syncgate_client::sync::{Instruction, SyncEvent, SyncStateMachine};
use syncgate_client::{ApplyOutcome, LocalDatabase, Schema};
use syncgate_protocol::line::{BucketChecksum, Checkpoint, CheckpointComplete, DataLine};
use syncgate_protocol::{BucketName, BucketPriority, Checksum, ClientId, OpId, OplogEntry, Subkey, SyncLine};

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

fn client_apply(rows: usize) -> (Duration, Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut db = LocalDatabase::open(&dir.path().join("client.db")).expect("open");
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
    (total, store, publish)
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
    let (total, store, publish) = client_apply(rows);
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
}
