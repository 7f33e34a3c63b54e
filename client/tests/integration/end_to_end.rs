//! The client against a real Postgres 15 and the real `syncgate serve` binary: the golden dataset and
//! sync rules of testdata/golden/ (lists for everyone, todos per owner). Two users sync with the CLI's
//! `--once` and each ends with exactly its rules' rows; then a client run through the library resumes
//! from its stored op ids and follows an UPDATE, a DELETE and INSERTs made in Postgres. Each scenario runs
//! over both transports (HTTP and WebSocket); a token that the service refuses or that expires mid-stream
//! is refreshed over WebSocket as over HTTP.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;
use syncgate_client::{
    BackendConnector, ClientError, ConnectionMethod, Credentials, CrudTransaction, LocalDatabase, Schema,
    SyncDriver, SyncOptions,
};
use syncgate_test_support::TestDatabase;

use crate::support::{
    Deployment, FixedConnector, GatewayProcess, READY_TIMEOUT, Rules, assert_driver_running, client_binary,
    local_rows, multi_thread_runtime, pg_json, read_sql, run_cli, token, token_expiring_at, transport_arg,
    unix_now, wait_until, wait_until_every,
};

/// Backstop for one CLI run; it normally takes well under a second.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// Backstop for a change in Postgres to reach the client.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(90);

const SCHEMA: &str = r#"{"tables": [
  {"name": "lists", "columns": [{"name": "name", "type": "text"}, {"name": "owner_id", "type": "text"},
                                {"name": "created_at", "type": "text"}]},
  {"name": "todos", "columns": [{"name": "list_id", "type": "text"}, {"name": "description", "type": "text"},
                                {"name": "completed", "type": "integer"}, {"name": "owner_id", "type": "text"},
                                {"name": "created_at", "type": "text"}],
   "indexes": [{"name": "by_list", "columns": ["list_id"]}]}
]}"#;

/// `SCHEMA` as YAML: user2's client reads this one.
const SCHEMA_YAML: &str = "
tables:
  - name: lists
    columns: [{name: name, type: text}, {name: owner_id, type: text}, {name: created_at, type: text}]
  - name: todos
    columns:
      - {name: list_id, type: text}
      - {name: description, type: text}
      - {name: completed, type: integer}
      - {name: owner_id, type: text}
      - {name: created_at, type: text}
    indexes: [{name: by_list, columns: [list_id]}]
";

const CLIENT_LISTS: &str = "SELECT id, name, owner_id FROM lists ORDER BY id";
const CLIENT_TODOS: &str = "SELECT id, list_id, description, completed, owner_id FROM todos ORDER BY id";

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/golden")
        .join(name)
}

/// The golden schema and dataset in a fresh database, behind a ready gateway with the golden rules.
fn golden_deployment(slot_prefix: &str) -> Deployment {
    Deployment::start(
        &[
            &read_sql(&golden("schema.sql")),
            &read_sql(&golden("dataset.sql")),
        ],
        Rules::File(&golden("sync-rules.yaml")),
        slot_prefix,
    )
}

/// Whether user1's client `file` holds `lists` and `todos` (in the shape of `CLIENT_LISTS` and
/// `CLIENT_TODOS`); panics if the driver running in `sync` has stopped.
fn user1_matches(
    file: &Path,
    lists: &Value,
    todos: &Value,
    runtime: &tokio::runtime::Runtime,
    sync: &mut tokio::task::JoinHandle<Result<(), ClientError>>,
) -> Result<(), String> {
    let local = (local_rows(file, CLIENT_LISTS), local_rows(file, CLIENT_TODOS));
    if local == (lists.clone(), todos.clone()) {
        return Ok(());
    }
    assert_driver_running(runtime, sync);
    Err(format!("local {local:?}, expected {:?}", (lists, todos)))
}

/// What the rules give `user`, straight from Postgres, in the shape of the client queries above.
fn expected(db: &TestDatabase, user: &str) -> (Value, Value) {
    let lists = pg_json(db, "SELECT id::text AS id, name, owner_id FROM lists ORDER BY id");
    let todos = pg_json(
        db,
        &format!(
            "SELECT id::text AS id, list_id::text AS list_id, description, completed::int AS completed, owner_id
             FROM todos WHERE owner_id = '{user}' ORDER BY id"
        ),
    );
    (lists, todos)
}

fn sync_once(
    gateway: &GatewayProcess,
    method: ConnectionMethod,
    token: &str,
    db_file: &Path,
    schema: &Path,
) -> (Option<ExitStatus>, String) {
    let mut command = client_binary();
    command
        .arg("sync")
        .args(["--endpoint", &gateway.endpoint(), "--token", token, "--db"])
        .arg(db_file)
        .arg("--schema")
        .arg(schema)
        .args(["--once", "--retry-delay-ms", "200", "--max-failures", "3"])
        .args(["--transport", transport_arg(method)]);
    let (status, _stdout, stderr) = run_cli(command, CLI_TIMEOUT);
    (status, stderr)
}

/// `syncgate-client query`: stdout must be exactly one JSON array.
fn cli_query(db_file: &Path, sql: &str) -> Value {
    let mut command = client_binary();
    command.arg("query").arg("--db").arg(db_file).arg(sql);
    let (status, stdout, stderr) = run_cli(command, CLI_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "query failed: {stderr}");
    let value: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout {stdout:?} is not one JSON value: {e}"));
    assert!(value.is_array(), "{stdout}");
    value
}

#[test]
fn clients_sync_their_rules_rows_and_follow_postgres_changes_over_http() {
    clients_sync_their_rules_rows_and_follow_postgres_changes(ConnectionMethod::Http);
}

#[test]
fn clients_sync_their_rules_rows_and_follow_postgres_changes_over_websocket() {
    clients_sync_their_rules_rows_and_follow_postgres_changes(ConnectionMethod::WebSocket);
}

fn clients_sync_their_rules_rows_and_follow_postgres_changes(method: ConnectionMethod) {
    let deployment = golden_deployment(
        // Slot names are cluster-wide: one prefix per transport, so both variants can run at once.
        &format!("client_e2e_{}_{}_", transport_arg(method), std::process::id()),
    );
    let Deployment { gateway, work, db } = &deployment;
    let schema = work.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).expect("schema file");
    let schema_yaml = work.path().join("schema.yaml");
    std::fs::write(&schema_yaml, SCHEMA_YAML).expect("schema file");

    // Each user's client ends with exactly its rules' rows.
    for user in ["user1", "user2"] {
        let file = work.path().join(format!("{user}.db"));
        let schema = if user == "user1" { &schema } else { &schema_yaml };
        let (status, stderr) = sync_once(gateway, method, &token(user), &file, schema);
        assert!(
            status.is_some_and(|s| s.success()),
            "sync --once for {user} failed ({status:?}):\n{stderr}\ngateway log:\n{}",
            gateway.log_tail(40)
        );
        let (lists, todos) = expected(db, user);
        assert_eq!(
            todos.as_array().map(Vec::len),
            Some(if user == "user1" { 2 } else { 1 })
        );
        assert_eq!(cli_query(&file, CLIENT_LISTS), lists, "{user}'s lists");
        assert_eq!(cli_query(&file, CLIENT_TODOS), todos, "{user}'s todos");
    }

    // A rejected token fails --once with a non-zero exit.
    let (status, stderr) = sync_once(gateway, method, "not-a-jwt", &work.path().join("bad.db"), &schema);
    assert!(
        status.is_some_and(|s| !s.success()),
        "a bad token must fail: {status:?}\n{stderr}"
    );
    // HTTP answers 401; over WebSocket the SETUP is refused with an ERROR frame carrying the auth code.
    let refusal = match method {
        ConnectionMethod::Http => "HTTP 401",
        ConnectionMethod::WebSocket => "PSYNC_S21",
    };
    assert!(stderr.contains(refusal), "{stderr}");

    // The library resumes user1's database and follows changes made in Postgres.
    let user1_file = work.path().join("user1.db");
    let runtime = multi_thread_runtime(2);
    let mut driver = SyncDriver::new(
        LocalDatabase::open(&user1_file).expect("open user1.db"),
        FixedConnector::new(gateway.endpoint(), token("user1")),
        SyncOptions {
            connection_method: method,
            retry_delay: Duration::from_millis(200),
            ..SyncOptions::default()
        },
    );
    let first_synced_at = LocalDatabase::open(&user1_file)
        .expect("open user1.db")
        .last_synced_at()
        .expect("last_synced_at")
        .expect("the CLI synced user1.db");
    let status = driver.subscribe_status();
    let mut sync = runtime.spawn(async move { driver.run().await });
    db.psql(
        "UPDATE todos SET description = 'milk (2l)', completed = true WHERE id = 'aaaaaaaa-0000-4000-8000-000000000001';
         DELETE FROM todos WHERE id = 'aaaaaaaa-0000-4000-8000-000000000002';
         INSERT INTO lists (id, name, owner_id) VALUES ('33333333-3333-4333-8333-333333333333', 'Shared', 'user2');
         INSERT INTO todos (id, list_id, description, owner_id) VALUES
           ('aaaaaaaa-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'eggs', 'user1'),
           ('bbbbbbbb-0000-4000-8000-000000000002', '22222222-2222-4222-8222-222222222222', 'slides', 'user2');",
    )
    .expect("changes");
    let (lists, todos) = expected(db, "user1");
    assert_eq!(
        todos.as_array().map(Vec::len),
        Some(2),
        "user1 holds the updated and the inserted todo"
    );
    wait_until("changes to reach the client", CHANGE_TIMEOUT, gateway, || {
        user1_matches(&user1_file, &lists, &todos, &runtime, &mut sync)
    });
    // The status follows: connected, nothing to upload, synced later than the CLI's run.
    wait_until_every(
        "the status to show the sync",
        CHANGE_TIMEOUT,
        Duration::from_millis(50),
        gateway,
        || {
            let current = status.borrow().clone();
            if current.connected
                && !current.downloading
                && current.last_synced_at.is_some_and(|at| at > first_synced_at)
            {
                assert_eq!(current.upload_pending, 0, "{current:?}");
                assert!(!current.uploading, "{current:?}");
                assert_eq!(current.last_upload_error, None, "{current:?}");
                assert!(current.applied_checkpoint.is_some(), "{current:?}");
                return Ok(());
            }
            Err(format!("{current:?}"))
        },
    );
    sync.abort();
}

/// Client and Postgres queries that must give the same rows for one user.
struct Expectation {
    client_sql: &'static str,
    postgres_sql: String,
}

fn interop_expectations(user: &str) -> Vec<Expectation> {
    let visible_lists = format!(
        "SELECT id FROM lists WHERE owner_id = '{user}' UNION SELECT list_id FROM list_members WHERE user_id = '{user}'"
    );
    vec![
        Expectation {
            client_sql: "SELECT id, owner_id, name FROM lists ORDER BY id",
            postgres_sql: format!(
                "SELECT id, owner_id, name FROM lists WHERE id IN ({visible_lists}) ORDER BY id COLLATE \"C\""
            ),
        },
        Expectation {
            client_sql: "SELECT id, list_id, description, completed, priority FROM todos ORDER BY id",
            postgres_sql: format!(
                "SELECT id, list_id, description, completed::int AS completed, priority FROM todos
                 WHERE list_id IN ({visible_lists}) ORDER BY id COLLATE \"C\""
            ),
        },
        Expectation {
            client_sql: "SELECT id, body FROM announcements ORDER BY id",
            postgres_sql: "SELECT id, body FROM announcements ORDER BY id COLLATE \"C\"".to_owned(),
        },
    ]
}

/// Waits until every expectation holds for the client's file; `what` names the step in the failure message.
fn wait_until_client_matches(
    db: &TestDatabase,
    file: &Path,
    expectations: &[Expectation],
    what: &str,
    gateway: &GatewayProcess,
) {
    wait_until(what, CHANGE_TIMEOUT, gateway, || {
        expectations.iter().try_for_each(|e| {
            let local = local_rows(file, e.client_sql);
            let expected = pg_json(db, &e.postgres_sql);
            (local == expected)
                .then_some(())
                .ok_or_else(|| format!("{}: local {local}, expected {expected}", e.client_sql))
        })
    });
}

#[test]
fn granted_buckets_appear_and_revoked_ones_disappear_over_http() {
    granted_buckets_appear_and_revoked_ones_disappear(ConnectionMethod::Http);
}

#[test]
fn granted_buckets_appear_and_revoked_ones_disappear_over_websocket() {
    granted_buckets_appear_and_revoked_ones_disappear(ConnectionMethod::WebSocket);
}

fn granted_buckets_appear_and_revoked_ones_disappear(method: ConnectionMethod) {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop");
    let deployment = Deployment::start(
        &[
            &read_sql(&interop.join("schema.sql")),
            &read_sql(&interop.join("data.sql")),
            "INSERT INTO lists (id, owner_id, name) VALUES ('la', 'alice', 'Alice''s'), ('lb', 'bob', 'Bob''s');
             INSERT INTO todos (id, list_id, description, completed, priority) VALUES
               ('ta1', 'la', 'milk', false, 1), ('tb1', 'lb', 'report', true, NULL), ('tb2', 'lb', 'slides', false, 3);",
        ],
        Rules::File(&interop.join("sync-rules.yaml")),
        &format!("client_grants_{}_{}_", transport_arg(method), std::process::id()),
    );
    let Deployment { gateway, work, db } = &deployment;
    let schema = Schema::from_json(
        r#"{"tables": [
          {"name": "lists", "columns": [{"name": "owner_id", "type": "text"}, {"name": "name", "type": "text"}]},
          {"name": "todos", "columns": [{"name": "list_id", "type": "text"}, {"name": "description", "type": "text"},
                                        {"name": "completed", "type": "integer"}, {"name": "priority", "type": "integer"}]},
          {"name": "announcements", "columns": [{"name": "body", "type": "text"}]}
        ]}"#,
    )
    .expect("schema");

    let runtime = multi_thread_runtime(2);
    let mut syncs = Vec::new();
    for user in ["alice", "bob"] {
        let file = work.path().join(format!("{user}.db"));
        let mut local = LocalDatabase::open(&file).expect("open");
        local.set_schema(&schema).expect("set schema");
        let mut driver = SyncDriver::new(
            local,
            FixedConnector::new(gateway.endpoint(), token(user)),
            SyncOptions {
                connection_method: method,
                retry_delay: Duration::from_millis(200),
                ..SyncOptions::default()
            },
        );
        syncs.push(runtime.spawn(async move { driver.run().await }));
    }
    let alice = work.path().join("alice.db");
    let bob = work.path().join("bob.db");
    wait_until_client_matches(
        db,
        &alice,
        &interop_expectations("alice"),
        "alice's first sync",
        gateway,
    );
    wait_until_client_matches(
        db,
        &bob,
        &interop_expectations("bob"),
        "bob's first sync",
        gateway,
    );
    assert_eq!(
        local_rows(&alice, "SELECT id FROM todos"),
        serde_json::json!([{"id": "ta1"}])
    );

    // Bob shares his list with alice: its bucket appears for her, with its todos.
    db.psql("INSERT INTO list_members (id, list_id, user_id) VALUES ('m1', 'lb', 'alice')")
        .expect("share");
    wait_until_client_matches(
        db,
        &alice,
        &interop_expectations("alice"),
        "the granted list",
        gateway,
    );
    assert_eq!(
        local_rows(&alice, "SELECT id FROM todos ORDER BY id"),
        serde_json::json!([{"id": "ta1"}, {"id": "tb1"}, {"id": "tb2"}])
    );

    // Changes in the shared list reach both; then the share is revoked and the list leaves alice's client.
    db.psql("UPDATE todos SET description = 'slides v2', completed = true WHERE id = 'tb2'; DELETE FROM todos WHERE id = 'tb1'")
        .expect("change shared todos");
    wait_until_client_matches(
        db,
        &alice,
        &interop_expectations("alice"),
        "changes in the shared list",
        gateway,
    );
    wait_until_client_matches(
        db,
        &bob,
        &interop_expectations("bob"),
        "bob sees his changes",
        gateway,
    );
    db.psql("DELETE FROM list_members WHERE id = 'm1'")
        .expect("revoke");
    wait_until_client_matches(
        db,
        &alice,
        &interop_expectations("alice"),
        "the revoked list",
        gateway,
    );
    assert_eq!(
        local_rows(&alice, "SELECT id FROM lists"),
        serde_json::json!([{"id": "la"}])
    );
    wait_until_client_matches(
        db,
        &bob,
        &interop_expectations("bob"),
        "bob keeps his list",
        gateway,
    );

    for mut sync in syncs {
        assert_driver_running(&runtime, &mut sync);
        sync.abort();
    }
}

/// Hands out `tokens` in order (the last one on every later call) and counts the calls.
struct TokenSequence {
    endpoint: String,
    tokens: Vec<String>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BackendConnector for TokenSequence {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        let call = self.fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let token = self.tokens[call.min(self.tokens.len() - 1)].clone();
        Ok(Credentials {
            endpoint: self.endpoint.clone(),
            token,
        })
    }

    async fn upload_data(&self, _transaction: &CrudTransaction) -> Result<(), ClientError> {
        Err(ClientError::Connector(
            "this test makes no local writes".to_owned(),
        ))
    }
}

/// Over WebSocket the gateway refuses an expired token in its SETUP answer (an ERROR frame) and ends a
/// stream whose token runs out; both must make the driver fetch new credentials, as a 401 does over HTTP.
/// Then the gateway restarts: the driver reconnects with backoff, as over HTTP, and follows changes.
#[test]
fn websocket_driver_refreshes_tokens_and_reconnects_after_a_gateway_restart() {
    let mut deployment = golden_deployment(&format!("client_ws_tokens_{}_", std::process::id()));
    let Deployment { gateway, work, db } = &mut deployment;
    let file = work.path().join("user1.db");
    let mut local = LocalDatabase::open(&file).expect("open");
    local
        .set_schema(&Schema::from_json(SCHEMA).expect("schema"))
        .expect("set schema");

    let now = unix_now();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connector = TokenSequence {
        endpoint: gateway.endpoint(),
        tokens: vec![
            // Expired well beyond the gateway's clock tolerance: the SETUP is refused.
            token_expiring_at("user1", now - 7200, now - 3600),
            // Accepted, then runs out a few seconds into the stream.
            token_expiring_at("user1", now, now + 8),
            token("user1"),
        ],
        fetches: std::sync::Arc::clone(&fetches),
    };
    let runtime = multi_thread_runtime(2);
    let mut driver = SyncDriver::new(
        local,
        connector,
        SyncOptions {
            connection_method: ConnectionMethod::WebSocket,
            retry_delay: Duration::from_millis(200),
            // Reconnects while the gateway restarts stay frequent.
            max_retry_delay: Duration::from_secs(2),
            ..SyncOptions::default()
        },
    );
    let mut status = driver.subscribe_status();
    let mut sync = runtime.spawn(async move { driver.run().await });

    // Synced data proves the refused token was replaced (no stream can open with it).
    let (lists, todos) = expected(db, "user1");
    wait_until("the first sync", CHANGE_TIMEOUT, gateway, || {
        user1_matches(&file, &lists, &todos, &runtime, &mut sync)
    });
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    // The short token runs out: the stream ends and the driver fetches the next one.
    wait_until(
        "a refresh after the token expired",
        CHANGE_TIMEOUT,
        gateway,
        || {
            let fetched = fetches.load(std::sync::atomic::Ordering::SeqCst);
            if fetched >= 3 {
                return Ok(());
            }
            assert_driver_running(&runtime, &mut sync);
            Err(format!("{fetched} credential fetches"))
        },
    );

    // The stream opened with the new token follows changes.
    db.psql(
        "INSERT INTO todos (id, list_id, description, owner_id) VALUES
           ('aaaaaaaa-0000-4000-8000-000000000009', '11111111-1111-4111-8111-111111111111', 'after refresh', 'user1');",
    )
    .expect("insert");
    let (lists, todos) = expected(db, "user1");
    wait_until("the change after the refresh", CHANGE_TIMEOUT, gateway, || {
        user1_matches(&file, &lists, &todos, &runtime, &mut sync)
    });
    assert!(
        status.borrow_and_update().connected,
        "connected again after the refresh"
    );

    // The gateway goes away and comes back; a change made meanwhile arrives.
    gateway.stop();
    db.psql("DELETE FROM todos WHERE id = 'aaaaaaaa-0000-4000-8000-000000000009'")
        .expect("delete");
    gateway.restart();
    gateway.wait_ready(READY_TIMEOUT);
    let (lists, todos) = expected(db, "user1");
    wait_until(
        "the change made while the gateway was down",
        CHANGE_TIMEOUT,
        gateway,
        || user1_matches(&file, &lists, &todos, &runtime, &mut sync),
    );
    sync.abort();
}
