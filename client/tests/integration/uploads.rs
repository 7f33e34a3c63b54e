//! Uploads end to end: the CLI's `exec` writes locally, `upload` / `sync --backend` POST the queue to a
//! tiny backend in this test (a loopback HTTP server that applies the operations to Postgres, idempotent
//! by row id as real backends are), the gateway replicates them and acknowledges the write checkpoint,
//! and the client's tables end equal to Postgres. Then: writes made while the gateway and the backend
//! are offline are kept, readable and uploaded once they return; and a client SIGKILLed while the
//! backend holds its answer (the write already applied) loses nothing when restarted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use syncgate_test_support::TestDatabase;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    Deployment, GatewayProcess, Rules, USER_TODOS_RULES, client_binary, local_rows, multi_thread_runtime,
    pg_json, read_request, run_cli, token, wait_until_every, watch,
};

/// Backstop for a CLI run or a change to travel client → backend → Postgres → gateway → client.
const TIMEOUT: Duration = Duration::from_secs(120);

const PG_SCHEMA: &str = "
CREATE TABLE todos (
    id text PRIMARY KEY,
    description text NOT NULL,
    completed int4 NOT NULL DEFAULT 0,
    owner_id text NOT NULL
);
CREATE PUBLICATION powersync FOR TABLE todos;
INSERT INTO todos (id, description, owner_id) VALUES ('t0', 'from postgres', 'user1'), ('u0', 'other user', 'user2');
";

const SCHEMA: &str = r#"{"tables": [{"name": "todos", "columns": [
  {"name": "description", "type": "text"}, {"name": "completed", "type": "integer"},
  {"name": "owner_id", "type": "text"}]}]}"#;

const CLIENT_TODOS: &str = "SELECT id, description, completed, owner_id FROM todos ORDER BY id";
const PG_TODOS: &str = "SELECT id, description, completed, owner_id FROM todos WHERE owner_id = 'user1' ORDER BY id COLLATE \"C\"";
const QUEUE: &str = "SELECT (SELECT count(*) FROM sg_crud) AS queued,
    (SELECT count(*) FROM sg_kv WHERE key = 'write_checkpoint_target') AS awaiting";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Apply and answer 200.
    Online,
    /// Answer 503 without applying (the app's backend is unreachable too).
    Offline,
    /// Apply, then never answer (the client is killed while waiting).
    HoldAfterApply,
}

/// The app's backend: `POST /` with `{"transaction_id", "operations": [{"op", "type", "id", "data"}]}`.
pub(crate) struct Backend {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    /// Transaction ids applied, in order (a retried one appears again).
    applied: Arc<Mutex<Vec<i64>>>,
    /// Requests refused while offline.
    refused: Arc<Mutex<u32>>,
}

impl Backend {
    pub(crate) fn start(runtime: &tokio::runtime::Runtime, postgres_url: String) -> Backend {
        let listener = runtime
            .block_on(TcpListener::bind(("127.0.0.1", 0)))
            .expect("bind backend");
        let port = listener.local_addr().expect("addr").port();
        let backend = Backend {
            port,
            mode: Arc::new(Mutex::new(Mode::Online)),
            applied: Arc::default(),
            refused: Arc::default(),
        };
        let (mode, applied, refused) = (
            Arc::clone(&backend.mode),
            Arc::clone(&backend.applied),
            Arc::clone(&backend.refused),
        );
        runtime.spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.expect("accept");
                let (url, mode, applied, refused) = (
                    postgres_url.clone(),
                    Arc::clone(&mode),
                    Arc::clone(&applied),
                    Arc::clone(&refused),
                );
                tokio::spawn(async move { handle(socket, &url, &mode, &applied, &refused).await });
            }
        });
        backend
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn applied(&self) -> Vec<i64> {
        self.applied.lock().expect("lock").clone()
    }
}

async fn handle(
    mut socket: TcpStream,
    postgres_url: &str,
    mode: &Mutex<Mode>,
    applied: &Mutex<Vec<i64>>,
    refused: &Mutex<u32>,
) {
    let Some((_head, body)) = read_request(&mut socket).await else {
        return;
    };
    let mode = *mode.lock().expect("lock");
    if mode == Mode::Offline {
        *refused.lock().expect("lock") += 1;
        respond(&mut socket, "503 Service Unavailable", "offline").await;
        return;
    }
    let request: Value = serde_json::from_slice(&body).expect("upload body is JSON");
    match apply(postgres_url, &request).await {
        Ok(()) => {
            let id = request["transaction_id"].as_i64().expect("transaction_id");
            applied.lock().expect("lock").push(id);
        }
        Err(error) => {
            respond(&mut socket, "500 Internal Server Error", &error.to_string()).await;
            return;
        }
    }
    if mode == Mode::HoldAfterApply {
        // Committed, never acknowledged: the client dies waiting.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    respond(&mut socket, "200 OK", "{}").await;
}

/// Applies one transaction; every operation is idempotent by row id, so a retried upload (the client
/// crashed before seeing the answer) changes nothing the second time.
async fn apply(postgres_url: &str, request: &Value) -> Result<(), tokio_postgres::Error> {
    let (mut client, connection) = tokio_postgres::connect(postgres_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let tx = client.transaction().await?;
    for op in request["operations"].as_array().expect("operations") {
        assert_eq!(op["type"], "todos", "{op}");
        let id = op["id"].as_str().expect("id");
        let data = op["data"].to_string();
        match op["op"].as_str().expect("op") {
            "PUT" => {
                tx.execute(
                    "INSERT INTO todos (id, description, completed, owner_id)
                     SELECT $1, r.description, coalesce(r.completed, 0), r.owner_id
                     FROM json_populate_record(NULL::todos, $2::text::json) r
                     ON CONFLICT (id) DO UPDATE SET description = excluded.description,
                        completed = excluded.completed, owner_id = excluded.owner_id",
                    &[&id, &data],
                )
                .await?;
            }
            "PATCH" => {
                tx.execute(
                    "UPDATE todos t SET
                        description = CASE WHEN $2::text::jsonb ? 'description' THEN r.description ELSE t.description END,
                        completed = CASE WHEN $2::text::jsonb ? 'completed' THEN r.completed ELSE t.completed END,
                        owner_id = CASE WHEN $2::text::jsonb ? 'owner_id' THEN r.owner_id ELSE t.owner_id END
                     FROM json_populate_record(NULL::todos, $2::text::json) r WHERE t.id = $1",
                    &[&id, &data],
                )
                .await?;
            }
            "DELETE" => {
                tx.execute("DELETE FROM todos WHERE id = $1", &[&id]).await?;
            }
            other => panic!("unknown op {other}"),
        }
    }
    tx.commit().await
}

async fn respond(socket: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

fn cli(args: &[&str], db_file: &Path) -> (bool, String) {
    let mut command = client_binary();
    command.arg(args[0]).arg("--db").arg(db_file).args(&args[1..]);
    let (status, _stdout, stderr) = run_cli(command, TIMEOUT);
    (status.is_some_and(|s| s.success()), stderr)
}

fn exec(db_file: &Path, sql: &str) {
    let (ok, stderr) = cli(&["exec", sql], db_file);
    assert!(ok, "exec {sql:?} failed:\n{stderr}");
}

fn upload_command(db_file: &Path, gateway: &GatewayProcess, backend: &Backend) -> Command {
    let mut command = client_binary();
    command
        .arg("upload")
        .arg("--db")
        .arg(db_file)
        .args(["--endpoint", &gateway.endpoint(), "--token", &token("user1")])
        .args(["--backend", &backend.url(), "--retry-delay-ms", "200"]);
    command
}

/// [`wait_until_every`] 100 ms, up to `TIMEOUT`.
fn wait_for(what: &str, gateway: &GatewayProcess, done: impl FnMut() -> Result<(), String>) {
    wait_until_every(what, TIMEOUT, Duration::from_millis(100), gateway, done);
}

/// The client's todos equal Postgres's for user1, and nothing is queued or awaiting acknowledgement.
fn converged(db: &TestDatabase, file: &Path) -> Result<(), String> {
    let (local, expected) = (local_rows(file, CLIENT_TODOS), pg_json(db, PG_TODOS));
    if local != expected {
        return Err(format!("local {local}, postgres {expected}"));
    }
    let queue = local_rows(file, QUEUE);
    if queue != serde_json::json!([{"queued": 0, "awaiting": 0}]) {
        return Err(format!("queue {queue}"));
    }
    Ok(())
}

/// The CLI's `sync status` lines (stderr) in `log`, in order.
pub(crate) fn status_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("sync status"))
        .map(str::to_owned)
        .collect()
}

/// The value of `name=` in a `sync status` line (a quoted value without its quotes); None if absent.
pub(crate) fn status_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    Some(match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"').unwrap_or(quoted.len())],
        None => rest.split(' ').next().unwrap_or(""),
    })
}

/// The results a `watch` printed, one JSON value a line; panics on a line that is not JSON.
fn watch_results(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("watch line {line:?} is not JSON: {e}"))
        })
        .collect()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn kill(mut child: Child) {
    // SIGKILL on unix: no chance to clean up, as in a crash.
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn local_writes_upload_converge_survive_offline_and_a_crash_mid_upload() {
    let mut deployment = Deployment::start(
        &[PG_SCHEMA],
        Rules::Inline(USER_TODOS_RULES),
        &format!("client_uploads_{}_", std::process::id()),
    );
    let Deployment { gateway, work, db } = &mut deployment;
    let runtime = multi_thread_runtime(2);
    let backend = Backend::start(&runtime, db.url());
    let schema = work.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).expect("schema file");
    let file = work.path().join("user1.db");

    let (ok, stderr) = cli(
        &[
            "sync",
            "--endpoint",
            &gateway.endpoint(),
            "--token",
            &token("user1"),
            "--schema",
            schema.to_str().expect("utf-8 path"),
            "--once",
        ],
        &file,
    );
    assert!(ok, "first sync failed:\n{stderr}");
    assert_eq!(
        local_rows(&file, "SELECT id FROM todos"),
        serde_json::json!([{"id": "t0"}])
    );

    // A live query in its own process, following the steps below.
    let watch = watch(&file, CLIENT_TODOS);
    let watch_saw = |what: &str, gateway: &GatewayProcess, rows: Value| {
        wait_for(what, gateway, || {
            let seen = watch_results(&watch.lines());
            seen.contains(&rows)
                .then_some(())
                .ok_or(format!("watch printed {seen:?}"))
        });
    };
    watch_saw(
        "the watch's first result",
        gateway,
        local_rows(&file, CLIENT_TODOS),
    );

    // 1. An insert (two rows, one transaction), an update and a delete, uploaded and acknowledged.
    exec(
        &file,
        "INSERT INTO todos (id, description, completed, owner_id) VALUES ('t1', 'milk', 0, 'user1');
         INSERT INTO todos (id, description, completed, owner_id) VALUES ('t2', 'eggs', 0, 'user1');",
    );
    exec(
        &file,
        "UPDATE todos SET description = 'bread', completed = 1 WHERE id = 't0'",
    );
    exec(&file, "DELETE FROM todos WHERE id = 't2'");
    assert_eq!(
        local_rows(&file, QUEUE),
        serde_json::json!([{"queued": 4, "awaiting": 1}])
    );
    let (status, _, stderr) = run_cli(upload_command(&file, gateway, &backend), TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "upload failed ({status:?}):\n{stderr}\ngateway log:\n{}",
        gateway.log_tail(40)
    );
    assert_eq!(backend.applied().len(), 3, "one POST per local transaction");
    let last_status = status_lines(&stderr).pop().expect("status lines on stderr");
    assert_eq!(
        status_field(&last_status, "upload_pending"),
        Some("0"),
        "{last_status}"
    );
    assert_eq!(
        status_field(&last_status, "last_upload_error"),
        None,
        "{last_status}"
    );
    assert!(
        status_field(&last_status, "last_synced_at_ms").is_some(),
        "{last_status}"
    );
    assert_eq!(
        pg_json(db, PG_TODOS),
        serde_json::json!([
            {"id": "t0", "description": "bread", "completed": 1, "owner_id": "user1"},
            {"id": "t1", "description": "milk", "completed": 0, "owner_id": "user1"},
        ])
    );
    converged(db, &file).unwrap_or_else(|why| panic!("after upload: {why}"));

    // 2. Offline: the gateway stopped and the backend refusing. Local writes are kept and readable, and
    // failed uploads leave them queued; once both return they upload and converge.
    gateway.stop();
    backend.set_mode(Mode::Offline);
    let sync_log = work.path().join("sync.log");
    let sync = client_binary()
        .arg("sync")
        .arg("--db")
        .arg(&file)
        .args(["--endpoint", &gateway.endpoint(), "--token", &token("user1")])
        .args(["--backend", &backend.url(), "--retry-delay-ms", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&sync_log).expect("sync log"))
        .spawn()
        .expect("spawn sync");
    exec(
        &file,
        "INSERT INTO todos (id, description, completed, owner_id) VALUES ('t3', 'offline', 0, 'user1')",
    );
    exec(&file, "UPDATE todos SET completed = 1 WHERE id = 't1'");
    wait_for("uploads refused while offline", gateway, || {
        let refused = *backend.refused.lock().expect("lock");
        (refused >= 2).then_some(()).ok_or(format!("{refused} refused"))
    });
    wait_for("the status shows the refused upload", gateway, || {
        let lines = status_lines(&read_log(&sync_log));
        lines
            .iter()
            .any(|line| {
                status_field(line, "upload_pending") == Some("2")
                    && status_field(line, "last_upload_error").is_some_and(|e| e.contains("HTTP 503"))
            })
            .then_some(())
            .ok_or(format!("status lines: {lines:#?}"))
    });
    assert_eq!(
        local_rows(&file, "SELECT id, description, completed FROM todos ORDER BY id"),
        serde_json::json!([
            {"id": "t0", "description": "bread", "completed": 1},
            {"id": "t1", "description": "milk", "completed": 1},
            {"id": "t3", "description": "offline", "completed": 0},
        ]),
        "offline writes are readable"
    );
    assert_eq!(
        local_rows(&file, QUEUE),
        serde_json::json!([{"queued": 2, "awaiting": 1}]),
        "and kept queued"
    );
    watch_saw(
        "the watch sees the offline writes",
        gateway,
        local_rows(&file, CLIENT_TODOS),
    );
    backend.set_mode(Mode::Online);
    gateway.restart();
    wait_for("offline writes converge", gateway, || converged(db, &file));
    wait_for("the status shows the queue drained", gateway, || {
        let lines = status_lines(&read_log(&sync_log));
        let last = lines.last().map_or("", String::as_str);
        (status_field(last, "upload_pending") == Some("0")
            && status_field(last, "last_upload_error").is_none()
            && status_field(last, "uploading") == Some("false"))
        .then_some(())
        .ok_or(format!("last status line: {last}"))
    });
    assert_eq!(
        pg_json(
            db,
            "SELECT id, completed FROM todos WHERE id IN ('t1', 't3') ORDER BY id"
        ),
        serde_json::json!([{"id": "t1", "completed": 1}, {"id": "t3", "completed": 0}])
    );
    // A change made in Postgres reaches the watch through sync.
    db.psql("UPDATE todos SET description = 'changed in postgres' WHERE id = 't1'")
        .expect("update");
    wait_for("the Postgres change syncs", gateway, || converged(db, &file));
    watch_saw(
        "the watch sees the synced change",
        gateway,
        local_rows(&file, CLIENT_TODOS),
    );
    assert!(
        local_rows(&file, CLIENT_TODOS)
            .to_string()
            .contains("changed in postgres"),
        "the synced change is in what the watch printed"
    );
    kill(sync);
    watch_results(&watch.stop());

    // 3. A crash mid-upload: the backend commits the transaction but never answers, and the client is
    // SIGKILLed waiting. Restarted, it uploads the same transaction again (the backend applies it
    // idempotently) and converges; nothing is lost or doubled.
    exec(
        &file,
        "INSERT INTO todos (id, description, completed, owner_id) VALUES ('t4', 'crash', 0, 'user1');
         UPDATE todos SET description = 'offline, then crash' WHERE id = 't3';",
    );
    exec(&file, "DELETE FROM todos WHERE id = 't0'");
    backend.set_mode(Mode::HoldAfterApply);
    let applied_before = backend.applied().len();
    let upload_log = work.path().join("upload.log");
    let upload = upload_command(&file, gateway, &backend)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&upload_log).expect("upload log"))
        .spawn()
        .expect("spawn upload");
    wait_for("the held upload applied", gateway, || {
        let applied = backend.applied().len();
        (applied > applied_before)
            .then_some(())
            .ok_or(format!("{applied} applied"))
    });
    wait_for("the status shows the upload in flight", gateway, || {
        let lines = status_lines(&read_log(&upload_log));
        lines
            .iter()
            .any(|line| {
                status_field(line, "uploading") == Some("true")
                    && status_field(line, "upload_pending") == Some("3")
            })
            .then_some(())
            .ok_or(format!("status lines: {lines:#?}"))
    });
    kill(upload);
    let held = *backend.applied().last().expect("held transaction");
    assert_eq!(
        local_rows(&file, QUEUE),
        serde_json::json!([{"queued": 3, "awaiting": 1}]),
        "the unacknowledged transaction is still queued"
    );
    backend.set_mode(Mode::Online);
    let (status, _, stderr) = run_cli(upload_command(&file, gateway, &backend), TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "upload after the crash failed ({status:?}):\n{stderr}"
    );
    let applied = backend.applied();
    assert!(
        applied.len() == applied_before + 3
            && applied[applied_before + 1] == held
            && applied[applied_before + 2] > held,
        "the held transaction is uploaded again, then the next one: {:?}",
        &applied[applied_before..]
    );
    converged(db, &file).unwrap_or_else(|why| panic!("after the crash: {why}"));
    assert_eq!(
        pg_json(db, PG_TODOS),
        serde_json::json!([
            {"id": "t1", "description": "changed in postgres", "completed": 1, "owner_id": "user1"},
            {"id": "t3", "description": "offline, then crash", "completed": 0, "owner_id": "user1"},
            {"id": "t4", "description": "crash", "completed": 0, "owner_id": "user1"},
        ])
    );
}
