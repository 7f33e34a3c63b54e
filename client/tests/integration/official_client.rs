//! syncgate-client next to the official `@powersync/node` client (tests/interop/mirror.mjs), both syncing
//! the same user against the same real `syncgate serve` and Postgres: after the first sync and after
//! inserts, updates, deletes and a revoked share in Postgres, both must hold exactly the same rows (every
//! column of every table of the schema, with the same value types), and these must be what the sync
//! rules give that user in Postgres. Our client's schema is the one the official client declares (the
//! script prints it), so the column types match by construction. Run over HTTP and over WebSocket (both
//! clients use the same transport).
//!
//! Skipped without tests/interop/node_modules unless `SYNCGATE_REQUIRE_INTEROP` is set (see
//! `syncgate_test_support::interop`).

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncgate_client::{ConnectionMethod, LocalDatabase, Schema, SyncDriver, SyncOptions};
use syncgate_test_support::TestDatabase;
use syncgate_test_support::interop::{interop_dir, node, official_client_available};
use syncgate_test_support::serve::tail;

use crate::support::{
    Deployment, FixedConnector, GatewayProcess, Rules, assert_driver_running, local_rows,
    multi_thread_runtime, pg_json, read_sql, token, transport_arg, wait_until_every,
};

/// Backstop for both clients to reach what Postgres holds.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Backstop for one answer of the node script (it starts the SDK's worker on the first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The user both clients sync: owns `la`, is a member of bob's `lb`, not of carol's `lc`.
const USER: &str = "alice";
const TABLES: [&str; 3] = ["lists", "todos", "announcements"];

#[test]
fn official_client_ends_with_the_same_rows_over_http() {
    official_client_ends_with_the_same_rows(ConnectionMethod::Http);
}

#[test]
fn official_client_ends_with_the_same_rows_over_websocket() {
    official_client_ends_with_the_same_rows(ConnectionMethod::WebSocket);
}

fn official_client_ends_with_the_same_rows(method: ConnectionMethod) {
    if !official_client_available("official-client comparison") {
        return;
    }
    let interop = interop_dir();
    let deployment = Deployment::start(
        &[
            &read_sql(&interop.join("schema.sql")),
            &read_sql(&interop.join("data.sql")),
            "INSERT INTO lists (id, owner_id, name) VALUES
           ('la', 'alice', 'Alice''s'), ('lb', 'bob', 'Bob''s trip'), ('lc', 'carol', 'Carol''s');
         INSERT INTO list_members (id, list_id, user_id) VALUES ('m1', 'lb', 'alice');
         INSERT INTO todos (id, list_id, description, completed, priority) VALUES
           ('ta1', 'la', 'milk', false, 1), ('ta2', 'la', 'bread', true, NULL),
           ('tb1', 'lb', 'book flights', false, 2147483647), ('tb2', 'lb', 'pack', false, -3),
           ('tc1', 'lc', 'vacuum', true, 3);
         -- One bucket per list: 30 more lists make the first sync longer than the WebSocket credit window.
         INSERT INTO lists (id, owner_id, name)
           SELECT 'bulk' || lpad(i::text, 2, '0'), 'alice', 'bulk ' || i FROM generate_series(1, 30) i;
         INSERT INTO todos (id, list_id, description, completed, priority)
           SELECT 'tbulk' || lpad(i::text, 2, '0'), 'bulk' || lpad(i::text, 2, '0'), 'todo ' || i, i % 2 = 0, i
           FROM generate_series(1, 30) i;",
        ],
        Rules::File(&interop.join("sync-rules.yaml")),
        &format!(
            "client_official_{}_{}_",
            transport_arg(method),
            std::process::id()
        ),
    );
    let Deployment { gateway, work, db } = &deployment;

    let node_method = match method {
        ConnectionMethod::Http => "http",
        ConnectionMethod::WebSocket => "web-socket",
    };
    let mut official = OfficialClient::start(&gateway.endpoint(), &token(USER), node_method, work.path());
    let schema = Schema::from_json(&official.schema.to_string()).expect("the official client's schema");

    let file = work.path().join("syncgate-client.db");
    let mut local = LocalDatabase::open(&file).expect("open");
    local.set_schema(&schema).expect("set schema");
    let runtime = multi_thread_runtime(2);
    let mut driver = SyncDriver::new(
        local,
        FixedConnector::new(gateway.endpoint(), token(USER)),
        SyncOptions {
            connection_method: method,
            retry_delay: Duration::from_millis(200),
            ..SyncOptions::default()
        },
    );
    let mut sync = runtime.spawn(async move { driver.run().await });

    let first = wait_until_both_match(db, &file, &mut official, "the first sync", gateway);
    let todo_ids = ids(&first["todos"]);
    assert_eq!(todo_ids.len(), 34, "{todo_ids:?}");
    assert!(
        ["ta1", "ta2", "tb1", "tb2"]
            .iter()
            .all(|id| todo_ids.contains(id))
            && !todo_ids.contains(&"tc1"),
        "alice's todos, carol's excluded: {todo_ids:?}"
    );

    // One transaction of each kind of change, then a revoked share (its bucket leaves both clients) and
    // a new list in a second transaction.
    db.psql(
        "BEGIN;
         INSERT INTO todos (id, list_id, description, completed, priority) VALUES
           ('ta3', 'la', 'crème fraîche, \"double\" & ''single''', false, NULL),
           ('tc2', 'lc', 'not alice''s', false, 1);
         UPDATE todos SET description = 'whole milk', completed = true, priority = NULL WHERE id = 'ta1';
         UPDATE todos SET priority = 7 WHERE id = 'ta2';
         DELETE FROM todos WHERE id = 'tb2';
         UPDATE announcements SET body = 'Maintenance tonight' WHERE id = 'maintenance';
         INSERT INTO announcements (id, body) VALUES ('new', '');
         COMMIT;",
    )
    .expect("changes");
    wait_until_both_match(db, &file, &mut official, "the changes", gateway);
    db.psql(
        "BEGIN;
         DELETE FROM list_members WHERE id = 'm1';
         INSERT INTO lists (id, owner_id, name) VALUES ('ld', 'alice', 'Later');
         INSERT INTO todos (id, list_id, description, completed, priority) VALUES ('td1', 'ld', 'tea', false, 0);
         COMMIT;",
    )
    .expect("revoke and add");
    let last = wait_until_both_match(db, &file, &mut official, "the revoked share", gateway);
    let list_ids = ids(&last["lists"]);
    assert_eq!(list_ids.len(), 32, "{list_ids:?}");
    assert!(
        list_ids.contains(&"ld") && !list_ids.contains(&"lb"),
        "the new list in, the revoked one out: {list_ids:?}"
    );

    assert_driver_running(&runtime, &mut sync);
    sync.abort();
    official.stop();
}

/// Waits until syncgate-client and the official client both hold exactly what Postgres gives `USER`;
/// returns those tables.
fn wait_until_both_match(
    db: &TestDatabase,
    file: &Path,
    official: &mut OfficialClient,
    what: &str,
    gateway: &GatewayProcess,
) -> Value {
    let mut matched = None;
    wait_until_every(
        what,
        CONVERGE_TIMEOUT,
        Duration::from_millis(250),
        gateway,
        || {
            let expected = expected_tables(db);
            let ours = our_tables(file);
            let theirs = official.dump();
            if ours == expected && theirs["has_synced"] == json!(true) && theirs["tables"] == expected {
                // The same rows in both, and the same as Postgres (asserted again for the failure message).
                assert_eq!(ours, theirs["tables"]);
                matched = Some(expected);
                return Ok(());
            }
            Err(format!(
                "the clients did not both reach Postgres's rows\n\
             postgres:         {expected}\nsyncgate-client:  {ours}\n@powersync/node:  {theirs}\n\
             --- node log ---\n{}",
                official.log_tail()
            ))
        },
    );
    matched.expect("matched")
}

/// The `id` of each row of `table` (a JSON array of rows).
fn ids(table: &Value) -> Vec<&str> {
    table
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["id"].as_str())
        .collect()
}

/// What the sync rules (tests/interop/sync-rules.yaml) give `USER`, every column the schema declares,
/// ordered as SQLite orders the ids (bytewise).
fn expected_tables(db: &TestDatabase) -> Value {
    let visible_lists = format!(
        "SELECT id FROM lists WHERE owner_id = '{USER}' UNION SELECT list_id FROM list_members WHERE user_id = '{USER}'"
    );
    json!({
        "lists": pg_json(db, &format!(
            "SELECT id, owner_id, name FROM lists WHERE id IN ({visible_lists}) ORDER BY id COLLATE \"C\""
        )),
        "todos": pg_json(db, &format!(
            "SELECT id, list_id, description, completed::int AS completed, priority FROM todos
             WHERE list_id IN ({visible_lists}) ORDER BY id COLLATE \"C\""
        )),
        "announcements": pg_json(db, "SELECT id, body FROM announcements ORDER BY id COLLATE \"C\""),
    })
}

/// Every column of every schema table in syncgate-client's database.
fn our_tables(file: &Path) -> Value {
    Value::Object(
        TABLES
            .iter()
            .map(|table| {
                let rows = local_rows(file, &format!("SELECT * FROM \"{table}\" ORDER BY id"));
                ((*table).to_owned(), rows)
            })
            .collect(),
    )
}

/// `node mirror.mjs`: the official client syncing one user, answering `dump` on its stdin with one JSON
/// line. Killed when dropped.
struct OfficialClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: std::path::PathBuf,
    /// The schema it declared, in syncgate-client's schema JSON.
    schema: Value,
}

impl OfficialClient {
    fn start(endpoint: &str, token: &str, connection_method: &str, work: &Path) -> OfficialClient {
        let dir = work.join("official");
        std::fs::create_dir_all(&dir).expect("official client dir");
        let log = work.join("official.log");
        let mut child = node("mirror.mjs")
            .args(["--endpoint", endpoint, "--token", token])
            .args(["--connection-method", connection_method])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("node log"))
            .spawn()
            .expect("cannot run node (needed for the official-client comparison)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        // A reader thread, so that waiting for an answer can time out.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut client = OfficialClient {
            child,
            stdin,
            lines,
            log,
            schema: Value::Null,
        };
        client.schema = client.next_json("its schema");
        client
    }

    /// The client's status and tables now.
    fn dump(&mut self) -> Value {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "dump")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("node mirror.mjs stdin: {e}\n{}", self.log_tail()));
        self.next_json("a dump")
    }

    fn next_json(&mut self, what: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("node mirror.mjs gave no {what} ({e})\n{}", self.log_tail()));
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "node mirror.mjs printed {line:?} for {what}: {e}\n{}",
                self.log_tail()
            )
        })
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 60)
    }

    /// Closes stdin (the script disconnects and exits) and waits for it, briefly.
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OfficialClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
