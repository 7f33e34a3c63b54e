//! A `syncgate-client sync` process SIGKILLed again and again while it downloads and applies large
//! checkpoints (every row of a 100,000-row table changes in one Postgres transaction), against the real
//! gateway and Postgres. After every kill the app's table must show exactly the rows Postgres had at one
//! of its checkpoints (never a mix of two, never an older one than before the kill) and the upload
//! queue must be exactly what the local writes queued (or, once a backend takes uploads, what is left of
//! it); restarted without kills, the client converges to Postgres's rows.

use std::hash::{Hash as _, Hasher as _};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncgate_client::LocalDatabase;
use syncgate_test_support::TestDatabase;

use crate::support::{
    CollectedChild, Deployment, GatewayProcess, Rules, client_binary, local_rows, multi_thread_runtime,
    pg_json, run_cli, token, wait_until, wait_until_every,
};
use crate::uploads::{Backend, status_field};

/// Backstop for any one thing the test waits for (a log line, a change to reach the client).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Rows of user1's table: enough that a debug build takes a good fraction of a second to publish them.
const ROWS: u32 = 100_000;

const RULES: &str = "
bucket_definitions:
  user_items:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM items WHERE owner_id = bucket.user_id
  user_todos:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM todos WHERE owner_id = bucket.user_id
";

const SCHEMA: &str = r#"{"tables": [
  {"name": "items", "columns": [{"name": "owner_id", "type": "text"}, {"name": "v", "type": "integer"},
                                {"name": "payload", "type": "text"}]},
  {"name": "todos", "columns": [{"name": "description", "type": "text"}, {"name": "completed", "type": "integer"},
                                {"name": "owner_id", "type": "text"}]}
]}"#;

const CLIENT_TODOS: &str = "SELECT id, description, completed, owner_id FROM todos ORDER BY id";
const PG_TODOS: &str = "SELECT id, description, completed, owner_id FROM todos WHERE owner_id = 'user1' ORDER BY id COLLATE \"C\"";
const QUEUE: &str = "SELECT id, tx_id, data FROM sg_crud ORDER BY id";

/// A fingerprint of user1's items as the client shows them: every row, in id order.
fn client_items(file: &Path) -> u64 {
    let db = LocalDatabase::open(file).expect("open local db");
    let mut statement = db
        .connection()
        .prepare("SELECT id || '|' || owner_id || '|' || v || '|' || payload FROM items ORDER BY id")
        .expect("prepare");
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .expect("query");
    let mut hasher = std::hash::DefaultHasher::new();
    for row in rows {
        row.expect("row").hash(&mut hasher);
    }
    hasher.finish()
}

/// The same fingerprint of Postgres's rows for user1 (ids are ASCII: "C" order is SQLite's order).
fn postgres_items(db: &TestDatabase) -> u64 {
    let text = db
        .psql(
            "SELECT id || '|' || owner_id || '|' || v || '|' || payload FROM items
             WHERE owner_id = 'user1' ORDER BY id COLLATE \"C\"",
        )
        .expect("psql");
    let mut hasher = std::hash::DefaultHasher::new();
    for row in text.lines() {
        row.hash(&mut hasher);
    }
    hasher.finish()
}

/// The checkpoint last published in full, per the client's database.
fn applied_checkpoint(file: &Path) -> i64 {
    local_rows(
        file,
        "SELECT CAST(value AS INTEGER) AS op FROM sg_kv WHERE key = 'applied_checkpoint'",
    )[0]["op"]
        .as_i64()
        .unwrap_or(0)
}

/// A `sync` process whose stderr a thread collects line by line.
struct SyncProcess(CollectedChild);

impl SyncProcess {
    fn start(file: &Path, schema: &Path, gateway: &GatewayProcess, backend: Option<&Backend>) -> SyncProcess {
        let mut command = client_binary();
        command
            .arg("sync")
            .arg("--db")
            .arg(file)
            .arg("--schema")
            .arg(schema)
            .args(["--endpoint", &gateway.endpoint(), "--token", &token("user1")])
            .args(["--retry-delay-ms", "200"]);
        if let Some(backend) = backend {
            command.args(["--backend", &backend.url()]);
        }
        SyncProcess(CollectedChild::stderr(
            command.stdin(Stdio::null()).stdout(Stdio::null()),
        ))
    }

    /// Waits for a stderr line matching `wanted`; panics with the log if none comes in time.
    fn wait_for_line(&mut self, what: &str, gateway: &GatewayProcess, wanted: impl Fn(&str) -> bool) {
        self.wait_for_lines(what, gateway, |lines| lines.iter().any(|l| wanted(l)));
    }

    /// Waits until the stderr lines so far satisfy `wanted`; panics with the log if they do not in time.
    fn wait_for_lines(&mut self, what: &str, gateway: &GatewayProcess, wanted: impl Fn(&[String]) -> bool) {
        // Checked often: a kill planned right after a log line must land close to it.
        let log = self.0.log("client log");
        let CollectedChild { child, lines, .. } = &mut self.0;
        wait_until_every(what, TIMEOUT, Duration::from_millis(2), gateway, || {
            if wanted(&lines.lock().expect("lock")) {
                return Ok(());
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "sync exited ({status}) before {what}:\n{}",
                    lines.lock().expect("lock").join("\n")
                );
            }
            Err(&log)
        });
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.0.child.try_wait().expect("try_wait") {
            panic!("sync exited ({status}):\n{}", self.log());
        }
    }

    /// Everything it logged so far.
    fn log(&self) -> String {
        self.0.lines().join("\n")
    }

    /// SIGKILL (no chance to clean up, as in a crash); returns everything it logged.
    fn kill(self) -> Vec<String> {
        self.0.stop()
    }
}

/// When to kill the process.
#[derive(Debug, Clone, Copy)]
enum KillAfter {
    /// This long after the stream opened: while the checkpoint downloads (or applies, if it is quick).
    StreamOpen(Duration),
    /// This long after it logged that it started applying a checkpoint newer than the applied one.
    ApplyStart(Duration),
    /// With the backend taking uploads: this long after it started applying a newer checkpoint once the
    /// queue was drained and the write checkpoint obtained (the publish that reaches it, with the
    /// uploads' effect replicated back). Without a queue left, as [`KillAfter::ApplyStart`].
    UploadsThenApplyStart(Duration),
}

const UPLOADS_DONE: &str = "uploads done; waiting for their write checkpoint";

/// The lines from the first `UPLOADS_DONE` on (all of them if there is none and `queue_was_empty`).
fn after_uploads(lines: &[String], queue_was_empty: bool) -> &[String] {
    match lines.iter().position(|l| l.contains(UPLOADS_DONE)) {
        Some(at) => &lines[at..],
        None if queue_was_empty => lines,
        None => &[],
    }
}

/// What the kills hit, for the final check and the failure messages.
#[derive(Debug, Default)]
struct KillTally {
    before_apply: u32,
    mid_apply: u32,
    after_apply: u32,
    /// Kills while local writes held the checkpoint back (its apply was a no-op).
    held_back: u32,
}

/// The test's state: the client's file and what it must show.
struct Crashes<'a> {
    db: &'a TestDatabase,
    gateway: &'a GatewayProcess,
    file: &'a Path,
    schema: &'a Path,
    /// Fingerprints of user1's items at each Postgres checkpoint so far (the first: no rows yet).
    states: Vec<u64>,
    /// Index in `states` of what the client showed at the last check: it may only move forward.
    shown: usize,
    queue: Value,
    /// Whether the backend takes uploads: the queue may then lose entries from its head.
    backend: Option<&'a Backend>,
    /// What the todos must show; None: what Postgres has (nothing before the first checkpoint).
    todos: Option<Value>,
    tally: KillTally,
}

impl Crashes<'_> {
    /// One `sync` run killed at `at`, then the invariants checked.
    fn kill_once(&mut self, at: KillAfter) {
        let applied_before = applied_checkpoint(self.file);
        let queue_was_empty = self.queue == serde_json::json!([]);
        let mut sync = SyncProcess::start(self.file, self.schema, self.gateway, self.backend);
        let delay = match at {
            KillAfter::StreamOpen(delay) => {
                sync.wait_for_line("the stream to open", self.gateway, |l| {
                    l.contains("sync stream open")
                });
                delay
            }
            KillAfter::ApplyStart(delay) => {
                sync.wait_for_line("a new checkpoint to apply", self.gateway, |l| {
                    newer_checkpoint(l, "applying checkpoint", applied_before)
                });
                delay
            }
            KillAfter::UploadsThenApplyStart(delay) => {
                sync.wait_for_lines("uploads, then a new checkpoint to apply", self.gateway, |lines| {
                    after_uploads(lines, queue_was_empty)
                        .iter()
                        .any(|l| newer_checkpoint(l, "applying checkpoint", applied_before))
                });
                delay
            }
        };
        std::thread::sleep(delay);
        let lines = sync.kill();
        // Before the uploads are acknowledged a publish is a no-op (held back): look only past them.
        let relevant = match at {
            KillAfter::UploadsThenApplyStart(_) => after_uploads(&lines, queue_was_empty),
            _ => &lines,
        };
        let started = relevant
            .iter()
            .any(|l| newer_checkpoint(l, "applying checkpoint", applied_before));
        let finished = relevant
            .iter()
            .any(|l| newer_checkpoint(l, "checkpoint applied", applied_before));
        match (started, finished) {
            _ if self.backend.is_none() && !queue_was_empty => self.tally.held_back += 1,
            (false, _) => self.tally.before_apply += 1,
            (true, false) => self.tally.mid_apply += 1,
            (true, true) => self.tally.after_apply += 1,
        }
        self.check(&format!("after a kill {at:?}"), &lines);
    }

    /// The app's tables show one complete checkpoint, no older than before; the queue is intact.
    fn check(&mut self, when: &str, log: &[String]) {
        let items = client_items(self.file);
        let Some(index) = self.states.iter().rposition(|state| *state == items) else {
            panic!(
                "{when}: the client's items match no Postgres checkpoint (a mix of two?)\nclient log:\n{}",
                log.join("\n")
            );
        };
        assert!(
            index >= self.shown,
            "{when}: the client went back from checkpoint state {} to {index}",
            self.shown
        );
        self.shown = index;
        let queue = local_rows(self.file, QUEUE);
        if self.backend.is_some() {
            // Uploaded transactions leave from the head, the rest stays as queued.
            let (now, before) = (
                queue.as_array().expect("rows"),
                self.queue.as_array().expect("rows"),
            );
            assert!(
                before.ends_with(now),
                "{when}: the upload queue {queue} is not what is left of {}",
                self.queue
            );
            self.queue = queue;
        } else {
            assert_eq!(queue, self.queue, "{when}: the upload queue");
        }
        let todos = match &self.todos {
            Some(todos) => todos.clone(),
            None if index == 0 => serde_json::json!([]),
            None => pg_json(self.db, PG_TODOS),
        };
        assert_eq!(local_rows(self.file, CLIENT_TODOS), todos, "{when}: the todos");
    }

    /// Commits one Postgres transaction changing every row of user1's items (and deleting and inserting
    /// a few) and records the new checkpoint state.
    fn change_everything(&mut self, round: u32) {
        self.db
            .psql(&format!(
                "BEGIN;
                 UPDATE items SET v = {round}, payload = 'round {round} ' || id WHERE owner_id = 'user1';
                 DELETE FROM items WHERE id IN (SELECT id FROM items WHERE owner_id = 'user1' ORDER BY id LIMIT 3);
                 INSERT INTO items SELECT 'r' || {round} || '-' || g, 'user1', {round}, 'new in round {round}'
                     FROM generate_series(1, 3) g;
                 COMMIT;"
            ))
            .expect("change");
        self.states.push(postgres_items(self.db));
    }

    /// Runs without kills until the newest checkpoint is applied and returns how long its publish took
    /// (from the log line that starts it to the one that ends it).
    fn measure_publish(&mut self) -> Duration {
        let applied_before = applied_checkpoint(self.file);
        let mut sync = SyncProcess::start(self.file, self.schema, self.gateway, self.backend);
        sync.wait_for_line("a new checkpoint to apply", self.gateway, |l| {
            newer_checkpoint(l, "applying checkpoint", applied_before)
        });
        let started = Instant::now();
        sync.wait_for_line("the newest checkpoint applied", self.gateway, |l| {
            newer_checkpoint(l, "checkpoint applied", applied_before)
        });
        let publish = started.elapsed();
        let lines = sync.kill();
        self.check("after a measured publish", &lines);
        publish
    }

    /// Kills at each of `plan` while the newest state is not shown yet, then (if still not shown) runs
    /// without kills until it is.
    fn kill_until_applied(&mut self, plan: &[KillAfter]) {
        let newest = self.states.len() - 1;
        for at in plan {
            if self.shown == newest {
                break;
            }
            self.kill_once(*at);
        }
        if self.shown < newest {
            let applied_before = applied_checkpoint(self.file);
            let mut sync = SyncProcess::start(self.file, self.schema, self.gateway, self.backend);
            sync.wait_for_line("the newest checkpoint applied", self.gateway, |l| {
                newer_checkpoint(l, "checkpoint applied", applied_before)
            });
            let lines = sync.kill();
            self.check("after an uninterrupted apply", &lines);
        }
        assert_eq!(self.shown, newest, "the newest checkpoint is shown");
    }
}

/// A log line `message` about a checkpoint newer than `applied`.
fn newer_checkpoint(line: &str, message: &str, applied: i64) -> bool {
    line.contains(message)
        && status_field(line, "checkpoint")
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| c > applied)
}

#[test]
fn a_client_killed_while_downloading_or_applying_checkpoints_shows_only_complete_ones() {
    let deployment = Deployment::start(
        &[&format!(
        "CREATE TABLE items (id text PRIMARY KEY, owner_id text NOT NULL, v int4 NOT NULL, payload text NOT NULL);
         CREATE TABLE todos (id text PRIMARY KEY, description text NOT NULL, completed int4 NOT NULL DEFAULT 0,
                             owner_id text NOT NULL);
         CREATE PUBLICATION powersync FOR TABLE items, todos;
         INSERT INTO items SELECT 'i' || lpad(g::text, 6, '0'), 'user1', 0, 'round 0 ' || g
             FROM generate_series(1, {ROWS}) g;
         INSERT INTO items VALUES ('other', 'user2', 0, 'not user1''s');
         INSERT INTO todos VALUES ('t0', 'from postgres', 0, 'user1');"
        )],
        Rules::Inline(RULES),
        &format!("client_crashes_{}_", std::process::id()),
    );
    let Deployment { gateway, work, db } = &deployment;
    let schema = work.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).expect("schema file");
    let file = work.path().join("user1.db");
    let started = Instant::now();
    let runtime = multi_thread_runtime(1);
    let backend = Backend::start(&runtime, db.url());

    let mut crashes = Crashes {
        db,
        gateway,
        file: &file,
        schema: &schema,
        // Before the first sync the client has no rows: the fingerprint of an empty table.
        states: vec![std::hash::DefaultHasher::new().finish(), postgres_items(db)],
        shown: 0,
        queue: serde_json::json!([]),
        backend: None,
        todos: None,
        tally: KillTally::default(),
    };
    // The first download (every row), then two rounds of changing every row: killed while the stream
    // downloads, right as the publish starts and further into it.
    crashes.kill_until_applied(&[
        KillAfter::StreamOpen(Duration::from_millis(700)),
        KillAfter::ApplyStart(Duration::ZERO),
        KillAfter::ApplyStart(Duration::from_millis(100)),
        KillAfter::ApplyStart(Duration::from_millis(300)),
    ]);
    // How long publishing every row takes on this machine: the later kills land at fractions of it, so
    // they fall inside publishes however fast the machine is (fixed delays fell after them on a fast one).
    crashes.change_everything(1);
    let publish = crashes.measure_publish();
    eprintln!("a publish of every row took {publish:?}");
    let plan = [
        KillAfter::StreamOpen(Duration::from_millis(700)),
        KillAfter::ApplyStart(Duration::ZERO),
        KillAfter::ApplyStart(publish / 4),
        KillAfter::ApplyStart(publish / 2),
    ];
    for round in 2..=3 {
        crashes.change_everything(round);
        crashes.kill_until_applied(&plan);
    }

    // Local writes, queued (no backend): they hold back every full checkpoint, so kills now land while
    // downloads are stored; the shown state must stay put and the queue intact.
    for sql in [
        "INSERT INTO todos (id, description, completed, owner_id) VALUES ('t1', 'local', 0, 'user1')",
        "UPDATE todos SET completed = 1 WHERE id = 't0'",
    ] {
        let mut command = client_binary();
        command.arg("exec").arg("--db").arg(&file).arg(sql);
        let (status, _, stderr) = run_cli(command, TIMEOUT);
        assert!(status.is_some_and(|s| s.success()), "exec {sql:?}: {stderr}");
    }
    crashes.queue = local_rows(&file, QUEUE);
    crashes.todos = Some(local_rows(&file, CLIENT_TODOS));
    assert_eq!(
        crashes.queue.as_array().map(Vec::len),
        Some(2),
        "{}",
        crashes.queue
    );
    let held = crashes.shown;
    crashes.change_everything(4);
    for delay in [300, 1500] {
        crashes.kill_once(KillAfter::StreamOpen(Duration::from_millis(delay)));
        assert_eq!(crashes.shown, held, "local writes hold the download back");
    }

    // A backend takes the uploads; killed during the publish that follows their acknowledgement. The
    // todos show the same rows throughout: first the local writes, then the same values from Postgres.
    crashes.backend = Some(&backend);
    crashes.kill_until_applied(&[
        KillAfter::UploadsThenApplyStart(Duration::ZERO),
        KillAfter::UploadsThenApplyStart(Duration::from_millis(200)),
    ]);

    // Without kills: everything converges to Postgres.
    let mut sync = SyncProcess::start(&file, &schema, gateway, Some(&backend));
    let last = crashes.states.len() - 1;
    wait_until("convergence", TIMEOUT, gateway, || {
        let todos_done = local_rows(&file, CLIENT_TODOS) == pg_json(db, PG_TODOS)
            && local_rows(&file, QUEUE) == serde_json::json!([])
            && pg_json(db, "SELECT count(*) AS n FROM todos WHERE owner_id = 'user1'")
                == serde_json::json!([{"n": 2}]);
        if todos_done && client_items(&file) == crashes.states[last] {
            return Ok(());
        }
        sync.assert_running();
        Err(sync.0.log("client log"))
    });
    sync.kill();
    assert_eq!(
        local_rows(&file, "SELECT id, owner_id, v, payload FROM items ORDER BY id"),
        pg_json(
            db,
            "SELECT id, owner_id, v, payload FROM items WHERE owner_id = 'user1' ORDER BY id COLLATE \"C\""
        ),
        "the client's items equal Postgres's for user1"
    );
    assert_eq!(
        local_rows(&file, CLIENT_TODOS),
        serde_json::json!([
            {"id": "t0", "description": "from postgres", "completed": 1, "owner_id": "user1"},
            {"id": "t1", "description": "local", "completed": 0, "owner_id": "user1"},
        ])
    );
    let tally = &crashes.tally;
    eprintln!(
        "{} kills: {tally:?}, {} checkpoint states, {:.1} s",
        tally.before_apply + tally.mid_apply + tally.after_apply + tally.held_back,
        crashes.states.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.mid_apply >= 6,
        "the kills must land inside publishes, not only around them: {tally:?}"
    );
}
