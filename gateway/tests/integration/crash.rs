//! Crash safety (DESIGN invariants 1, 3, 4, 5): the real `syncgate serve` binary is SIGKILLed at random
//! moments during the initial snapshot and while streaming a workload, and restarted each time.
//! Afterwards the crashed storage must equal what the rules make of the final database, its checksums
//! must equal the sums of its ops, no source transaction may have produced ops twice, and its streaming
//! ops must equal, op for op, those of an uninterrupted run that replays the identical WAL from copies of
//! the slot and the storage taken at one quiescent moment before the workload.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use syncgate::source::OutputPlugin;
use syncgate::storage::{BucketStorage, Lsn, RulesVersion, SqliteStorage};
use syncgate_protocol::{BucketName, OpId};
use syncgate_test_support::{TestDatabase, shared_cluster};

use crate::replication::harness::{Oracle, canonical, test_decoder, unversioned, write_config};

const SCHEMA: &str = "
CREATE TABLE lists (id text PRIMARY KEY, owner_id text NOT NULL, name text);
CREATE TABLE todos (id bigint PRIMARY KEY, list_id text, description text, done boolean, n int);
CREATE TABLE members (org_id text, user_id text, PRIMARY KEY (org_id, user_id));
CREATE TABLE docs (id int PRIMARY KEY, org_id text, title text, big text);
-- Out of line, so an UPDATE that leaves it alone sends 'unchanged TOAST' (completed from storage).
ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE PUBLICATION powersync FOR ALL TABLES;
";

const RULES: &str = "bucket_definitions:
  global:
    data:
      - SELECT id, owner_id FROM lists
  by_list:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  by_org:
    parameters: SELECT org_id FROM members WHERE user_id = request.user_id()
    data:
      - SELECT id, org_id, title, big FROM docs WHERE org_id = bucket.org_id
      - SELECT org_id || ':' || user_id AS id, org_id FROM members WHERE org_id = bucket.org_id
";

const LISTS: u64 = 50;
const USERS: u64 = 10;
const ORGS: u64 = 5;
const INITIAL_TODOS: u64 = 80_000;
const INITIAL_DOCS: u64 = 200;
/// Small chunks: many chunk boundaries (resume points) inside a snapshot of a few seconds.
const CHUNK_ROWS: u64 = 500;
const WORKLOAD_TRANSACTIONS: usize = 400;
const MIN_SNAPSHOT_KILLS: usize = 5;
const MIN_STREAMING_KILLS: usize = 15;
const TIMEOUT: Duration = Duration::from_secs(120);
/// Distinct prefixes, neither a prefix of the other: each gateway drops slots with its own prefix
/// that its storage does not know.
const CRASH_PREFIX: &str = "sgcrashkill";
const CLEAN_PREFIX: &str = "sgcrashclean";

/// xorshift64*: deterministic from the printed seed, no extra crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(u64::try_from(len).expect("len"))).expect("index")
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// One gateway setup: config, storage and the stderr log of every run.
struct Setup {
    config: PathBuf,
    storage: PathBuf,
    log: PathBuf,
    runs: usize,
}

impl Setup {
    fn new(dir: &Path, db: &TestDatabase, prefix: &str) -> Setup {
        let config = write_config(dir, db, RULES, prefix);
        Setup {
            storage: dir.join("storage.sqlite"),
            log: dir.join("serve.log"),
            config,
            runs: 0,
        }
    }

    fn spawn(&mut self) -> Child {
        self.runs += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        use std::io::Write as _;
        writeln!(log, "===== run {} =====", self.runs).expect("write log");
        Command::new(env!("CARGO_BIN_EXE_syncgate"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("SYNCGATE_SNAPSHOT_CHUNK_ROWS", CHUNK_ROWS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn syncgate serve")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// SIGKILL; fails the test if the process had already ended by itself.
    fn kill(&self, child: &mut Child) {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("serve ended by itself ({status}); log tail:\n{}", self.log_tail());
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// The active version and its latest checkpoint (lsn, op id), read without writing the file.
    fn active(&self) -> Option<(u64, Option<(u64, u64)>)> {
        if !self.storage.exists() {
            return None;
        }
        let conn = Connection::open_with_flags(&self.storage, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        conn.busy_timeout(Duration::from_secs(5)).ok()?;
        conn.query_row(
            "SELECT version, last_lsn, last_op_id FROM sync_rules WHERE state = 'active'",
            [],
            |r| {
                let version: i64 = r.get(0)?;
                let lsn: Option<i64> = r.get(1)?;
                let op: i64 = r.get(2)?;
                Ok((
                    version.cast_unsigned(),
                    lsn.map(|l| (l.cast_unsigned(), op.cast_unsigned())),
                ))
            },
        )
        .ok()
    }

    /// Ops stored so far (0 before the storage exists).
    fn op_count(&self) -> u64 {
        if !self.storage.exists() {
            return 0;
        }
        open_ro(&self.storage)
            .query_row("SELECT coalesce(sum(count), 0) FROM op_segments", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(i64::cast_unsigned)
            .unwrap_or(0)
    }

    /// Waits until the active version has a checkpoint at or past `lsn`.
    async fn wait_for(&self, child: &mut Child, lsn: Lsn) {
        let started = Instant::now();
        loop {
            if let Some((_, Some((at, _)))) = self.active()
                && at >= lsn.0
            {
                return;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("serve ended by itself ({status}); log tail:\n{}", self.log_tail());
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "no checkpoint at {lsn} within {TIMEOUT:?}; log tail:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn setup_database(db: &TestDatabase, todos: u64) {
    db.psql(SCHEMA).expect("schema");
    db.psql(&format!(
        "INSERT INTO lists SELECT 'l' || i, 'u' || (i % {USERS}), 'list ' || i FROM generate_series(0, {}) i;
         INSERT INTO todos SELECT i, 'l' || (i % {LISTS}), 'todo ' || i, i % 3 = 0, i
             FROM generate_series(1, {todos}) i;
         INSERT INTO members SELECT 'o' || o, 'u' || u FROM generate_series(0, {}) o,
             generate_series(0, {}) u WHERE (o + u) % 3 = 0;
         INSERT INTO docs SELECT i, 'o' || (i % {ORGS}), 'doc ' || i, repeat(md5(i::text), 100)
             FROM generate_series(1, {INITIAL_DOCS}) i;",
        LISTS - 1,
        ORGS - 1,
        USERS - 1
    ))
    .expect("initial data");
}

fn emit_marker(db: &TestDatabase) -> Lsn {
    db.psql("SELECT pg_logical_emit_message(false, 'powersync', 'ping')")
        .expect("emit marker")
        .trim()
        .parse()
        .expect("marker lsn")
}

/// Several hundred transactions of every kind of change, paced so that kills land among them.
async fn workload(db_url: String, seed: u64) -> usize {
    let (client, connection) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .expect("workload connection");
    tokio::spawn(connection);
    let mut rng = Rng::new(seed);
    let mut todos: Vec<u64> = (1..=INITIAL_TODOS).collect();
    let mut next_todo = INITIAL_TODOS + 1;
    let mut docs: Vec<u64> = (1..=INITIAL_DOCS).collect();
    let mut next_doc = INITIAL_DOCS + 1;
    for i in 0..WORKLOAD_TRANSACTIONS {
        let list = rng.below(LISTS);
        let user = rng.below(USERS + 2); // Two users who own nothing at first.
        let org = rng.below(ORGS);
        let sql = if i == WORKLOAD_TRANSACTIONS / 2 {
            docs.clear();
            "TRUNCATE docs".to_owned()
        } else {
            match rng.below(12) {
                0 | 1 => {
                    let id = next_todo;
                    next_todo += 1;
                    todos.push(id);
                    format!("INSERT INTO todos VALUES ({id}, 'l{list}', 'new {id}', false, {i})")
                }
                2 => {
                    // A bigger transaction.
                    let first = next_todo;
                    next_todo += 200;
                    todos.extend(first..next_todo);
                    format!(
                        "INSERT INTO todos SELECT i, 'l' || (i % {LISTS}), 'bulk ' || i, true, {i}
                         FROM generate_series({first}, {}) i",
                        next_todo - 1
                    )
                }
                3 | 4 => {
                    let id = todos[rng.index(todos.len())];
                    format!("UPDATE todos SET description = 'edit {i}', done = NOT done WHERE id = {id}")
                }
                5 => {
                    let at = rng.index(todos.len());
                    let id = todos.swap_remove(at);
                    format!("DELETE FROM todos WHERE id = {id}")
                }
                6 => {
                    // Primary-key change.
                    let at = rng.index(todos.len());
                    let old = todos[at];
                    todos[at] = next_todo;
                    next_todo += 1;
                    format!("UPDATE todos SET id = {} WHERE id = {old}", todos[at])
                }
                7 => {
                    // Rows move between buckets while parameter rows change, in one transaction.
                    let to = rng.below(LISTS);
                    format!(
                        "BEGIN;
                         UPDATE todos SET list_id = 'l{to}' WHERE list_id = 'l{list}' AND id % 7 = {};
                         UPDATE lists SET owner_id = 'u{user}' WHERE id = 'l{list}';
                         INSERT INTO members VALUES ('o{org}', 'u{user}') ON CONFLICT DO NOTHING;
                         DELETE FROM members WHERE org_id = 'o{}' AND user_id = 'u{}';
                         COMMIT",
                        i % 7,
                        rng.below(ORGS),
                        rng.below(USERS)
                    )
                }
                8 if !docs.is_empty() => {
                    // Leaves the TOASTed column unchanged.
                    let id = docs[rng.index(docs.len())];
                    format!("UPDATE docs SET title = 'title {i}', org_id = 'o{org}' WHERE id = {id}")
                }
                9 if !docs.is_empty() => {
                    let id = docs[rng.index(docs.len())];
                    format!("UPDATE docs SET big = repeat(md5('{i}'), 120) WHERE id = {id}")
                }
                10 if !docs.is_empty() => {
                    let at = rng.index(docs.len());
                    let id = docs.swap_remove(at);
                    format!("DELETE FROM docs WHERE id = {id}")
                }
                _ => {
                    let id = next_doc;
                    next_doc += 1;
                    docs.push(id);
                    format!("INSERT INTO docs VALUES ({id}, 'o{org}', 'doc {id}', repeat(md5('{id}'), 100))")
                }
            }
        };
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    WORKLOAD_TRANSACTIONS
}

fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open storage read-only")
}

type OpRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// (op id, bucket, type, object type, object id, subkey, data, checksum) of every op after `after`.
fn ops_after(conn: &Connection, version: u64, after: u64) -> Vec<OpRow> {
    let after = OpId::new(after).expect("op id");
    syncgate::storage::version_ops(conn, RulesVersion(version), after)
        .expect("read ops")
        .into_iter()
        .map(|(bucket, op)| {
            let entry = op.entry;
            (
                entry.op_id.as_i64(),
                bucket.as_str().to_owned(),
                format!("{:?}", entry.op),
                entry.object_type,
                entry.object_id,
                entry.subkey.map(|s| s.0),
                entry.data,
                i64::from(entry.checksum.as_u32()),
            )
        })
        .collect()
}

/// (lsn, op id) of every checkpoint of the version, in LSN order.
fn checkpoints(conn: &Connection, version: u64) -> Vec<(u64, u64)> {
    let mut statement = conn
        .prepare("SELECT lsn, op_id FROM checkpoints WHERE version = ?1 ORDER BY lsn")
        .expect("prepare checkpoints");
    statement
        .query_map([version.cast_signed()], |r| {
            Ok((
                r.get::<_, i64>(0)?.cast_unsigned(),
                r.get::<_, i64>(1)?.cast_unsigned(),
            ))
        })
        .expect("query checkpoints")
        .collect::<Result<_, _>>()
        .expect("read checkpoints")
}

fn buckets(conn: &Connection, version: u64) -> Vec<String> {
    let mut statement = conn
        .prepare(
            "SELECT DISTINCT b.name FROM op_segments s JOIN buckets b ON b.id = s.bucket_id
             WHERE b.version = ?1 ORDER BY b.name",
        )
        .expect("prepare buckets");
    statement
        .query_map([version.cast_signed()], |r| r.get(0))
        .expect("query buckets")
        .collect::<Result<_, _>>()
        .expect("read buckets")
}

/// Net rows of every non-empty bucket at the latest checkpoint, as the oracle spells them.
fn net_state(path: &Path, version: u64) -> State {
    let storage = SqliteStorage::open(path).expect("open storage");
    let version = RulesVersion(version);
    let checkpoint = storage
        .latest_checkpoint(version)
        .expect("checkpoint")
        .expect("a checkpoint");
    let conn = open_ro(path);
    let mut state = BTreeMap::new();
    for bucket in buckets(&conn, version.0) {
        let rows = syncgate::inspect::net_rows(
            &storage,
            version,
            &BucketName::new(bucket.as_str()),
            checkpoint.op_id,
        )
        .expect("net rows");
        if rows.is_empty() {
            continue;
        }
        let rows = rows
            .into_iter()
            .map(|r| (r.table, r.id, r.data.to_string()))
            .collect();
        state.insert(unversioned(&bucket), rows);
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_snapshot_and_streaming_loses_and_duplicates_nothing() {
    let test_started = Instant::now();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
        d.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(d.subsec_nanos())
    });
    eprintln!("crash test seed {seed}");
    let mut rng = Rng::new(seed);

    let db = shared_cluster().create_database().expect("database");
    setup_database(&db, INITIAL_TODOS);
    let crash_dir = tempfile::tempdir().expect("tempdir");
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let mut crashed = Setup::new(crash_dir.path(), &db, CRASH_PREFIX);
    let mut clean = Setup::new(clean_dir.path(), &db, CLEAN_PREFIX);
    eprintln!("setup took {:?}", test_started.elapsed());

    // 1. Snapshot: kill at random moments until the version is active, while a writer changes rows (the
    // WAL replayed over the copied chunks).
    let phase = Instant::now();
    let (stop_writer, writer_stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(snapshot_writer(db.url(), rng.next(), writer_stopped));
    let mut snapshot_kills = 0;
    loop {
        let mut child = crashed.spawn();
        let run_started = Instant::now();
        let deadline = run_started + rng.millis(150, 1200);
        // Until enough kills have landed, also kill within the next eighth of the rows, so a fast
        // machine cannot finish the snapshot between a few random delays.
        let ops_limit = (snapshot_kills < MIN_SNAPSHOT_KILLS)
            .then(|| crashed.op_count() + CHUNK_ROWS + rng.below(INITIAL_TODOS / 8));
        let mut active = false;
        while Instant::now() < deadline && ops_limit.is_none_or(|limit| crashed.op_count() < limit) {
            if crashed.active().is_some() {
                active = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ran = run_started.elapsed();
        crashed.kill(&mut child);
        if active {
            break;
        }
        snapshot_kills += 1;
        eprintln!(
            "snapshot kill {snapshot_kills} after {:?}: {} ops stored",
            ran,
            crashed.op_count()
        );
        assert!(
            phase.elapsed() < TIMEOUT,
            "snapshot never completed; log tail:\n{}",
            crashed.log_tail()
        );
    }
    eprintln!("snapshot: {snapshot_kills} kills, {:?}", phase.elapsed());

    stop_writer.send_replace(true);
    let snapshot_writes = writer.await.expect("snapshot writer");
    eprintln!("snapshot writer: {snapshot_writes} transactions");

    // The snapshot with its replayed WAL equals the rules applied to the database.
    let marker = emit_marker(&db);
    let mut child = crashed.spawn();
    crashed.wait_for(&mut child, marker).await;
    crashed.kill(&mut child);
    let (version, _) = crashed.active().expect("active version");
    assert_states_equal(
        "after the snapshot",
        &net_state(&crashed.storage, version),
        &expected_state(&Oracle::from_database(&db, RULES).await),
    );

    // 2. Quiescent moment (the gateway is dead): copy storage and slot for the clean run.
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", crashed.storage.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", clean.storage.display())).expect("copy storage");
        }
    }
    db.psql(&format!(
        "SELECT pg_copy_logical_replication_slot('{CRASH_PREFIX}{version}', '{CLEAN_PREFIX}{version}')"
    ))
    .expect("copy slot");
    let base_op = {
        let conn = open_ro(&clean.storage);
        conn.query_row(
            "SELECT coalesce(max(s.last_op), 0) FROM op_segments s JOIN buckets b ON b.id = s.bucket_id
             WHERE b.version = ?1",
            [version.cast_signed()],
            |r| r.get::<_, i64>(0),
        )
        .expect("last op")
        .cast_unsigned()
    };

    // 3. Streaming: the workload runs while the gateway is killed and restarted.
    let phase = Instant::now();
    let workload = tokio::spawn(workload(db.url(), rng.next()));
    let mut streaming_kills = 0;
    while !workload.is_finished() || streaming_kills < MIN_STREAMING_KILLS {
        let mut child = crashed.spawn();
        tokio::time::sleep(rng.millis(100, 800)).await;
        crashed.kill(&mut child);
        streaming_kills += 1;
        assert!(phase.elapsed() < TIMEOUT, "workload did not finish");
    }
    let transactions = workload.await.expect("workload");
    let marker = emit_marker(&db);
    let mut child = crashed.spawn();
    crashed.wait_for(&mut child, marker).await;
    crashed.kill(&mut child);
    eprintln!(
        "streaming: {transactions} transactions, {streaming_kills} kills, {:?}",
        phase.elapsed()
    );

    // 4. The clean run replays the same WAL from the copies, uninterrupted.
    let phase = Instant::now();
    let mut child = clean.spawn();
    clean.wait_for(&mut child, marker).await;
    clean.kill(&mut child);
    eprintln!("clean run: {:?}", phase.elapsed());

    // 5. Checks.
    let kills = snapshot_kills + streaming_kills;
    eprintln!("kills: {snapshot_kills} during the snapshot + {streaming_kills} while streaming = {kills}");
    assert!(
        snapshot_kills >= MIN_SNAPSHOT_KILLS,
        "only {snapshot_kills} kills landed in the snapshot"
    );
    assert!(kills >= 20);

    let crashed_conn = open_ro(&crashed.storage);
    let clean_conn = open_ro(&clean.storage);

    // (a) Net rows of every bucket: crashed = clean = the rules applied to the final database.
    let crashed_state = net_state(&crashed.storage, version);
    let clean_state = net_state(&clean.storage, version);
    let oracle = Oracle::from_database(&db, RULES).await;
    let expected = expected_state(&oracle);
    assert_states_equal("crashed vs clean run", &crashed_state, &clean_state);
    assert_states_equal("crashed run vs the final database", &crashed_state, &expected);
    assert!(expected.len() > 20, "the data fills many buckets");
    // Parameter lookups too: what users resolve to at the latest checkpoint.
    let storage = SqliteStorage::open(&crashed.storage).expect("open storage");
    for user in ["u0", "u3", "u7", "u10", "u11"] {
        let report = syncgate::inspect::inspect(
            &storage,
            &serde_json::json!({ "sub": user }),
            &serde_json::json!({}),
        )
        .expect("inspect");
        let got: Vec<String> = report.buckets.iter().map(|b| unversioned(&b.bucket)).collect();
        let want: Vec<String> = oracle.user_buckets(user).into_keys().collect();
        assert_eq!(got, want, "buckets of {user}");
    }

    // (b) Every bucket's checksum and count at the latest checkpoint equal the sum and number of its ops.
    let checkpoint = storage
        .latest_checkpoint(RulesVersion(version))
        .expect("checkpoint")
        .expect("a checkpoint");
    let names: Vec<BucketName> = buckets(&crashed_conn, version)
        .into_iter()
        .map(BucketName::new)
        .collect();
    let summaries = storage
        .bucket_checksums(RulesVersion(version), checkpoint.op_id, &names)
        .expect("checksums");
    let all_ops = ops_after(&crashed_conn, version, 0);
    let mut sums: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    for op in &all_ops {
        let entry = sums.entry(op.1.as_str()).or_default();
        // Stored as the u32 in an integer.
        entry.0 = entry
            .0
            .wrapping_add(u32::try_from(op.7).expect("checksum is a u32"));
        entry.1 += 1;
    }
    for summary in &summaries {
        let (sum, count) = sums.get(summary.bucket.as_str()).copied().unwrap_or_default();
        assert_eq!(
            (summary.checksum.as_u32(), summary.count),
            (sum, count),
            "checksum and count of {}",
            summary.bucket.as_str()
        );
    }

    // (c) No commit LSN produced ops twice: checkpoint op ranges are increasing with the LSN, every op
    // lies in one, and the transactions that produced ops are those of the clean run.
    let history = checkpoints(&crashed_conn, version);
    for pair in history.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "op ids go back between checkpoints {pair:?}"
        );
    }
    let last_op = all_ops.last().map_or(0, |op| op.0.cast_unsigned());
    assert_eq!(
        last_op,
        checkpoint.op_id.get(),
        "no op beyond the latest checkpoint"
    );
    let producing = |history: Vec<(u64, u64)>| -> Vec<(u64, u64)> {
        let mut previous = 0;
        history
            .into_iter()
            .filter(|&(_, op)| {
                let produced = op > previous && op > base_op;
                previous = previous.max(op);
                produced
            })
            .collect()
    };
    // Nor did a replayed change or re-copied chunk: a row's op never repeats its previous op in the
    // bucket, and a REMOVE always follows a PUT.
    // (bucket, object_type, object_id, subkey) -> (op, data)
    type RowInBucket<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut previous_op: BTreeMap<RowInBucket<'_>, (&str, Option<&str>)> = BTreeMap::new();
    for op in &all_ops {
        let key = (op.1.as_str(), op.3.as_deref(), op.4.as_deref(), op.5.as_deref());
        let this = (op.2.as_str(), op.6.as_deref());
        let before = previous_op.insert(key, this);
        assert!(
            before != Some(this),
            "op {} repeats the row's previous op: {op:?}",
            op.0
        );
        if this.0 == "REMOVE" {
            assert!(
                before.is_some_and(|b| b.0 == "PUT"),
                "op {} removes a row not put before: {op:?}",
                op.0
            );
        }
    }
    let crashed_producing = producing(history);
    let clean_producing = producing(checkpoints(&clean_conn, version));
    assert_eq!(
        crashed_producing.len(),
        clean_producing.len(),
        "transactions that produced ops"
    );
    assert_eq!(
        crashed_producing, clean_producing,
        "(commit LSN, last op id) of transactions with ops"
    );

    // (d) The crashed run's streaming ops equal the clean run's, op for op.
    let crashed_ops = ops_after(&crashed_conn, version, base_op);
    let clean_ops = ops_after(&clean_conn, version, base_op);
    if let Some(at) = (0..crashed_ops.len().min(clean_ops.len())).find(|&i| crashed_ops[i] != clean_ops[i]) {
        panic!(
            "op {at} after {base_op} differs:\n crashed {:?}\n clean   {:?}",
            crashed_ops[at], clean_ops[at]
        );
    }
    assert_eq!(crashed_ops.len(), clean_ops.len(), "streaming op count");
    assert!(crashed_ops.len() > 1000, "the workload produced ops");
    eprintln!(
        "checked {} buckets, {} ops ({} streamed), {} checkpoints with ops",
        summaries.len(),
        all_ops.len(),
        crashed_ops.len(),
        crashed_producing.len()
    );
    eprintln!("total {:?}", test_started.elapsed());
}

fn assert_states_equal(
    what: &str,
    got: &BTreeMap<String, BTreeSet<(String, String, String)>>,
    want: &BTreeMap<String, BTreeSet<(String, String, String)>>,
) {
    let got_names: Vec<&String> = got.keys().collect();
    let want_names: Vec<&String> = want.keys().collect();
    assert_eq!(got_names, want_names, "{what}: non-empty buckets");
    for (bucket, rows) in want {
        let got_rows = &got[bucket];
        let missing: Vec<_> = rows.difference(got_rows).take(5).collect();
        let extra: Vec<_> = got_rows.difference(rows).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: bucket {bucket}: missing {missing:#?}\nextra {extra:#?}"
        );
    }
}

/// A kill right after `CREATE_REPLICATION_SLOT` returned, before storage recorded the slot: the version
/// exists, the slot exists, the storage knows nothing of it. A random kill rarely lands in that window,
/// so it is set up directly. The restarted gateway must recover, not fail forever on the existing slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_creating_the_slot_and_recording_it_recovers() {
    let db = shared_cluster().create_database().expect("database");
    setup_database(&db, 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gateway = Setup::new(dir.path(), &db, "sgslotwindow");
    let rules = syncgate::config::Config::load(&gateway.config)
        .expect("config")
        .config
        .sync_rules
        .text;
    let version = SqliteStorage::open(&gateway.storage)
        .expect("storage")
        .create_version(&rules)
        .expect("create version");
    db.psql(&format!(
        "SELECT pg_create_logical_replication_slot('sgslotwindow{version}', 'pgoutput')"
    ))
    .expect("create slot");
    let marker = emit_marker(&db);
    let mut child = gateway.spawn();
    gateway.wait_for(&mut child, marker).await;
    gateway.kill(&mut child);
    let oracle = Oracle::from_database(&db, RULES).await;
    let expected = expected_state(&oracle);
    assert_states_equal(
        "after the restart",
        &net_state(&gateway.storage, version.0),
        &expected,
    );
}

type State = BTreeMap<String, BTreeSet<(String, String, String)>>;

/// The oracle's buckets as `net_state` spells them (non-empty buckets, canonical JSON).
fn expected_state(oracle: &Oracle) -> State {
    oracle
        .buckets
        .iter()
        .map(|(bucket, rows)| {
            let rows = rows
                .iter()
                .map(|(t, i, d)| (t.clone(), i.clone(), canonical(d)))
                .collect();
            (bucket.clone(), rows)
        })
        .collect()
}

/// Small transactions while the snapshot runs, until `stop`: updates of copied rows, parameter changes,
/// and inserts and deletes in an id range of its own (the streaming workload keeps its ids).
async fn snapshot_writer(db_url: String, seed: u64, mut stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let (client, connection) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .expect("writer connection");
    tokio::spawn(connection);
    let mut rng = Rng::new(seed);
    let first = 10_000_000;
    let mut inserted = Vec::new();
    let mut count = 0;
    while !*stop.borrow() {
        let sql = match rng.below(5) {
            0 => format!(
                "UPDATE todos SET description = 'snap {count}', done = NOT done WHERE id = {}",
                1 + rng.below(INITIAL_TODOS)
            ),
            1 => format!(
                "UPDATE lists SET owner_id = 'u{}' WHERE id = 'l{}'",
                rng.below(USERS + 2),
                rng.below(LISTS)
            ),
            2 if !inserted.is_empty() => {
                let at = rng.index(inserted.len());
                format!("DELETE FROM todos WHERE id = {}", inserted.swap_remove(at))
            }
            _ => {
                let id = first + u64::try_from(count).expect("count");
                inserted.push(id);
                format!(
                    "INSERT INTO todos VALUES ({id}, 'l{}', 'during snapshot', false, 0)",
                    rng.below(LISTS)
                )
            }
        };
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        count += 1;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => {}
        }
    }
    count
}

/// A restart while the killed run's walsender still holds the slot (it lets go once it notices the closed
/// connection, which may take a while on a busy server): held here by `pg_recvlogical` for a moment.
/// The gateway must wait for the slot, not give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_the_slot_is_still_held_waits_for_it() {
    let db = shared_cluster().create_database().expect("database");
    setup_database(&db, 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gateway = Setup::new(dir.path(), &db, "sgslotheld");
    let marker = emit_marker(&db);
    let mut child = gateway.spawn();
    gateway.wait_for(&mut child, marker).await;
    gateway.kill(&mut child);
    let (version, _) = gateway.active().expect("active version");
    let slot = format!("sgslotheld{version}");

    let recvlogical = std::env::var_os("SYNCGATE_PG_BIN")
        .map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from)
        .join("pg_recvlogical");
    let spawn_holder = || {
        Command::new(&recvlogical)
            .args([
                "-d",
                &db.url_without_session_options(),
                "-S",
                &slot,
                "--start",
                "--no-loop",
            ])
            .args(["-f", "/dev/null"])
            // The slot's own plugin's options: the syncgate plugin refuses pgoutput's, and a holder whose
            // START fails holds the slot only for an instant.
            .args(match test_decoder() {
                OutputPlugin::Pgoutput => &["-o", "proto_version=1", "-o", "publication_names=powersync"][..],
                OutputPlugin::Syncgate => &[][..],
            })
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pg_recvlogical")
    };
    // The killed gateway's walsender may still hold the slot for a moment: pg_recvlogical (--no-loop) then
    // exits at once, so it is started again until it holds the slot.
    let mut holder = spawn_holder();
    let held = Instant::now();
    while db
        .psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .expect("slot status")
        .trim()
        != "t"
    {
        assert!(held.elapsed() < TIMEOUT, "pg_recvlogical never took the slot");
        if holder.try_wait().expect("pg_recvlogical status").is_some() {
            holder = spawn_holder();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    db.psql("INSERT INTO todos VALUES (99999, 'l1', 'while held', false, 0)")
        .expect("insert");
    let marker = emit_marker(&db);
    let mut child = gateway.spawn();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.kill().expect("kill pg_recvlogical");
    holder.wait().expect("wait pg_recvlogical");
    gateway.wait_for(&mut child, marker).await;
    gateway.kill(&mut child);
    let oracle = Oracle::from_database(&db, RULES).await;
    assert_states_equal(
        "after the wait",
        &net_state(&gateway.storage, version),
        &expected_state(&oracle),
    );
}

/// The crash test's guarantees on Postgres storage (a database of its own): `serve` SIGKILLed at random
/// moments during the snapshot and while streaming, restarted each time. Afterwards every bucket's net
/// rows equal the rules applied to the final database, checksums and counts equal its ops', and every
/// checkpoint's op id follows the one before (one LSN, one checkpoint). The op-for-op comparison with
/// an uninterrupted run stays with the SQLite test, which can copy its storage file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_storage_sigkills_lose_nothing() {
    use crate::replication::harness::{postgres_storage, write_config_with_storage};
    use syncgate::config::{Config, StorageConfig};
    use syncgate::storage::PostgresStorage;

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()));
    eprintln!("postgres storage crash test seed {seed}");
    let mut rng = Rng::new(seed);
    let db = shared_cluster().create_database().expect("database");
    setup_database(&db, INITIAL_TODOS);
    let storage_db = shared_cluster().create_database().expect("storage database");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config_with_storage(
        dir.path(),
        &db.url_without_session_options(),
        RULES,
        "sgpgkill",
        &postgres_storage(&storage_db),
    );
    let StorageConfig::Postgres(storage_config) = Config::load(&config).expect("config").config.storage
    else {
        panic!("Postgres storage expected");
    };
    let mut gateway = Setup {
        config,
        storage: dir.path().join("not-used"),
        log: dir.path().join("serve.log"),
        runs: 0,
    };
    // The test's own connection to the storage: opened first, it also shows the gateway's migration
    // finds the schema ready.
    let storage = PostgresStorage::open(&storage_config).expect("open storage");
    let checkpoint_at = |storage: &PostgresStorage| {
        let active = storage.active_version().expect("active version")?;
        let checkpoint = storage.latest_checkpoint(active.version).expect("checkpoint")?;
        Some((active.version, checkpoint))
    };

    // Snapshot: kill at random moments until the version is active.
    let mut kills = 0;
    let started = Instant::now();
    loop {
        let mut child = gateway.spawn();
        // Short runs first, so several kills land inside even a fast snapshot.
        let deadline = Instant::now()
            + if kills < 3 {
                rng.millis(50, 300)
            } else {
                rng.millis(150, 1200)
            };
        let mut active = false;
        while Instant::now() < deadline {
            if storage.active_version().expect("active version").is_some() {
                active = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gateway.kill(&mut child);
        if active {
            break;
        }
        kills += 1;
        assert!(
            started.elapsed() < TIMEOUT,
            "snapshot never completed; log tail:\n{}",
            gateway.log_tail()
        );
    }
    eprintln!("snapshot: {kills} kills, {:?}", started.elapsed());
    assert!(kills >= 3, "only {kills} kills landed in the snapshot");

    // Streaming: the workload runs while the gateway is killed and restarted.
    let workload = tokio::spawn(workload(db.url(), rng.next()));
    let mut streaming_kills = 0;
    while !workload.is_finished() || streaming_kills < 8 {
        let mut child = gateway.spawn();
        tokio::time::sleep(rng.millis(100, 800)).await;
        gateway.kill(&mut child);
        streaming_kills += 1;
        assert!(started.elapsed() < 2 * TIMEOUT, "workload did not finish");
    }
    let transactions = workload.await.expect("workload");
    let marker = emit_marker(&db);
    let mut child = gateway.spawn();
    let (version, checkpoint) = loop {
        if let Some((version, checkpoint)) = checkpoint_at(&storage)
            && checkpoint.lsn >= marker
        {
            break (version, checkpoint);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "serve ended by itself ({status}); log tail:\n{}",
                gateway.log_tail()
            );
        }
        assert!(started.elapsed() < 3 * TIMEOUT, "no checkpoint at {marker}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    gateway.kill(&mut child);
    eprintln!("streaming: {transactions} transactions, {streaming_kills} kills");
    assert!(kills + streaming_kills >= 10);

    // Net rows of every bucket equal the rules applied to the final database.
    let buckets = storage.changed_buckets(version, OpId::ZERO).expect("buckets");
    let mut state = State::new();
    for bucket in &buckets {
        let rows =
            syncgate::inspect::net_rows(&storage, version, bucket, checkpoint.op_id).expect("net rows");
        if !rows.is_empty() {
            let rows = rows
                .into_iter()
                .map(|r| (r.table, r.id, r.data.to_string()))
                .collect();
            state.insert(unversioned(bucket.as_str()), rows);
        }
    }
    let expected = expected_state(&Oracle::from_database(&db, RULES).await);
    assert_states_equal(
        "crashed run on Postgres storage vs the final database",
        &state,
        &expected,
    );
    assert!(expected.len() > 20, "the data fills many buckets");

    // Checksums and counts at the latest checkpoint are the sums and numbers of the ops.
    let summaries = storage
        .bucket_checksums(version, checkpoint.op_id, &buckets)
        .expect("checksums");
    for summary in summaries {
        let ops = storage
            .ops(version, &summary.bucket, OpId::ZERO, checkpoint.op_id, usize::MAX)
            .expect("ops");
        assert!(ops.windows(2).all(|w| w[0].entry.op_id < w[1].entry.op_id));
        let sum = ops.iter().fold(syncgate_protocol::Checksum::ZERO, |sum, op| {
            sum + op.entry.checksum
        });
        assert_eq!(
            (summary.checksum, summary.count),
            (sum, u64::try_from(ops.len()).expect("count")),
            "bucket {}",
            summary.bucket
        );
    }
    // Checkpoints: one per source transaction, op ids never going back.
    let checkpoints: Vec<(i64, i64)> = storage_db
        .psql(&format!(
            "SELECT lsn, op_id FROM syncgate_storage.checkpoints WHERE version = {version} ORDER BY lsn"
        ))
        .expect("checkpoints")
        .lines()
        .map(|line| {
            let (lsn, op) = line.split_once('|').expect("lsn|op_id");
            (lsn.parse().expect("lsn"), op.parse().expect("op id"))
        })
        .collect();
    assert!(checkpoints.len() > transactions / 2, "checkpoints recorded");
    assert!(
        checkpoints.windows(2).all(|w| w[0].1 <= w[1].1),
        "op ids never go back"
    );
}
