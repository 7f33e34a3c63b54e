//! Shared support of the client's integration tests: the real `syncgate serve` binary (through
//! `syncgate_test_support::serve`, shared with the gateway's own tests) and tokens signed with its key,
//! a database with a gateway in front of it, the `syncgate-client` CLI, queries on both sides, a fixed
//! connector for the library's driver, and polling waits.

use std::fmt::{Debug, Display};
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use syncgate_client::{BackendConnector, ClientError, Credentials, CrudTransaction, LocalDatabase, Schema};
pub use syncgate_test_support::serve::ServeProcess as GatewayProcess;
use syncgate_test_support::serve::{Finished, wait_with_timeout};
use syncgate_test_support::{TestDatabase, shared_cluster};
use tokio::io::AsyncReadExt as _;

/// Backstop for the gateway to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often [`wait_until`] checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Lines of the gateway's log in a failed wait's message.
const GATEWAY_LOG_LINES: usize = 40;

/// The `syncgate` binary of this workspace, next to the test binary's directory (`target/<profile>/`).
/// Built (a no-op when up to date) before use: a lone `cargo test -p syncgate-client` does not build
/// it, and an old one would test old gateway code.
fn syncgate_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps");
            let mut args = vec!["build", "-p", "syncgate", "--bin", "syncgate"];
            if profile_dir.ends_with("release") {
                args.push("--release");
            }
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let status = Command::new(cargo)
                .args(&args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the syncgate binary failed");
            profile_dir.join("syncgate")
        })
        .clone()
}

/// `syncgate serve` of this workspace on a free port (see [`GatewayProcess::start`]), logging at `info`.
pub fn start_gateway(dir: &Path, uri: &str, rules: &Path, slot_prefix: &str) -> GatewayProcess {
    GatewayProcess::start(syncgate_binary(), dir, uri, rules, slot_prefix, "info")
}

/// A token for `sub` valid for an hour, signed with the test key.
pub fn token(sub: &str) -> String {
    let now = unix_now();
    token_expiring_at(sub, now, now + 3600)
}

/// A token for `sub` issued at `iat`, expiring at `exp` (seconds since the epoch), signed with the test key.
pub fn token_expiring_at(sub: &str, iat: u64, exp: u64) -> String {
    syncgate_test_support::serve::sign_token(sub, iat, exp)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Sync rules giving each user the todos they own (`owner_id`), in one bucket.
pub const USER_TODOS_RULES: &str = "
bucket_definitions:
  user_todos:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM todos WHERE owner_id = bucket.user_id
";

/// A client schema of one table, `todos (description text)`.
pub const DESCRIPTION_TODOS: &str =
    r#"{"tables": [{"name": "todos", "columns": [{"name": "description", "type": "text"}]}]}"#;

/// A client database in memory with the schema `schema_json`.
pub fn in_memory_db(schema_json: &str) -> LocalDatabase {
    let mut db = LocalDatabase::open_in_memory().expect("db");
    db.set_schema(&Schema::from_json(schema_json).expect("schema"))
        .expect("set schema");
    db
}

/// Where a test's sync rules come from.
pub enum Rules<'a> {
    /// This YAML, written to `rules.yaml` in the work directory.
    Inline(&'a str),
    /// This file.
    File(&'a Path),
}

/// A test's Postgres database, work directory and ready gateway. The fields drop in this order: the
/// gateway (holding replication connections) before the directory and the database.
pub struct Deployment {
    pub gateway: GatewayProcess,
    pub work: tempfile::TempDir,
    pub db: TestDatabase,
}

impl Deployment {
    /// A fresh database of the shared cluster with each of `sql` run in it, and `syncgate serve` on it
    /// with `rules` (replication slots named from `slot_prefix`, which must be unique cluster-wide),
    /// ready.
    pub fn start(sql: &[&str], rules: Rules<'_>, slot_prefix: &str) -> Deployment {
        let db = shared_cluster().create_database().expect("test database");
        for script in sql {
            db.psql(script).expect("schema");
        }
        let work = tempfile::tempdir().expect("temp dir");
        let rules = match rules {
            Rules::Inline(yaml) => {
                let path = work.path().join("rules.yaml");
                std::fs::write(&path, yaml).expect("rules");
                path
            }
            Rules::File(path) => path.to_owned(),
        };
        let mut gateway = start_gateway(
            work.path(),
            &db.url_without_session_options(),
            &rules,
            slot_prefix,
        );
        gateway.wait_ready(READY_TIMEOUT);
        Deployment { gateway, work, db }
    }
}

/// The file at `path`, for [`Deployment::start`]'s SQL.
pub fn read_sql(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A multi-thread tokio runtime with `worker_threads` workers, for drivers, proxies and backends that
/// run while the test thread waits.
pub fn multi_thread_runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`; panics after `timeout` with `what`,
/// the last `Err` (what is still missing, usually a `String`; only formatted then) and the gateway's
/// log tail. `check` may panic itself, e.g. when what it waits on has stopped.
pub fn wait_until<E: Display>(
    what: &str,
    timeout: Duration,
    gateway: &GatewayProcess,
    check: impl FnMut() -> Result<(), E>,
) {
    wait_until_every(what, timeout, POLL_INTERVAL, gateway, check);
}

/// [`wait_until`], checking every `interval`.
pub fn wait_until_every<E: Display>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    gateway: &GatewayProcess,
    mut check: impl FnMut() -> Result<(), E>,
) {
    let started = Instant::now();
    loop {
        let Err(missing) = check() else { return };
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}: {missing}\ngateway log:\n{}",
            gateway.log_tail(GATEWAY_LOG_LINES)
        );
        std::thread::sleep(interval);
    }
}

/// Panics with the driver's result if the task running it (`SyncDriver::run`) has finished.
pub fn assert_driver_running<T: Debug>(
    runtime: &tokio::runtime::Runtime,
    sync: &mut tokio::task::JoinHandle<T>,
) {
    assert!(
        !sync.is_finished(),
        "the sync driver stopped: {:?}",
        runtime.block_on(sync)
    );
}

/// The `syncgate-client` CLI, logging at `info` without colours.
pub fn client_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncgate-client"));
    command.env("RUST_LOG", "info").env("NO_COLOR", "1");
    command
}

/// Runs the CLI to completion (killed after `timeout`); returns its status (None: timed out), stdout and
/// stderr.
pub fn run_cli(mut command: Command, timeout: Duration) -> (Option<ExitStatus>, String, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("spawn syncgate-client");
    let Finished {
        status,
        stdout,
        stderr,
    } = wait_with_timeout(child, timeout);
    (status, stdout, stderr)
}

/// The CLI's `--transport` value.
pub fn transport_arg(method: syncgate_client::ConnectionMethod) -> &'static str {
    match method {
        syncgate_client::ConnectionMethod::Http => "http",
        syncgate_client::ConnectionMethod::WebSocket => "websocket",
    }
}

/// The rows of `sql` in the client's database `db_file`, as a JSON array of objects.
pub fn local_rows(db_file: &Path, sql: &str) -> Value {
    rows_json(&LocalDatabase::open(db_file).expect("open local db"), sql)
}

/// The rows of `sql` in `db`, as a JSON array of objects.
pub fn rows_json(db: &LocalDatabase, sql: &str) -> Value {
    Value::Array(
        db.query_json(sql)
            .expect("query")
            .into_iter()
            .map(Value::Object)
            .collect(),
    )
}

/// The rows of `query` in Postgres, as a JSON array of objects.
pub fn pg_json(db: &TestDatabase, query: &str) -> Value {
    let text = db
        .psql(&format!(
            "SELECT coalesce(json_agg(t), '[]'::json) FROM ({query}) t"
        ))
        .expect("psql");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("psql output {text:?}: {e}"))
}

/// Hands the driver the same credentials every time; refuses uploads (the tests using it write nothing
/// locally).
pub struct FixedConnector {
    pub credentials: Credentials,
}

impl FixedConnector {
    pub fn new(endpoint: String, token: String) -> FixedConnector {
        FixedConnector {
            credentials: Credentials { endpoint, token },
        }
    }
}

impl BackendConnector for FixedConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.credentials.clone())
    }

    async fn upload_data(&self, _transaction: &CrudTransaction) -> Result<(), ClientError> {
        Err(ClientError::Connector(
            "this test makes no local writes".to_owned(),
        ))
    }
}

/// A child process with a thread collecting one of its outputs line by line.
pub struct CollectedChild {
    pub child: Child,
    /// The lines read so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl CollectedChild {
    /// Spawns `command` with its stdout piped and collected (stdin and stderr as `command` says).
    pub fn stdout(command: &mut Command) -> CollectedChild {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        Self::collect(child, stdout)
    }

    /// Spawns `command` with its stderr piped and collected (stdin and stdout as `command` says).
    pub fn stderr(command: &mut Command) -> CollectedChild {
        let mut child = command.stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        Self::collect(child, stderr)
    }

    fn collect(child: Child, output: impl Read + Send + 'static) -> CollectedChild {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().expect("lock").push(line);
                }
            })
        };
        CollectedChild { child, lines, reader }
    }

    /// The lines so far, formatted (one a line, after a heading) only when displayed: a cheap `Err` for
    /// [`wait_until`].
    pub fn log(&self, heading: &'static str) -> CollectedLog {
        CollectedLog {
            heading,
            lines: Arc::clone(&self.lines),
        }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// SIGKILL (no chance to clean up, as in a crash); returns every line it wrote.
    pub fn stop(mut self) -> Vec<String> {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
        self.reader.join().expect("output reader");
        let lines = self.lines.lock().expect("lock");
        lines.clone()
    }
}

/// See [`CollectedChild::log`].
pub struct CollectedLog {
    heading: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Display for CollectedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines = self.lines.lock().expect("lock");
        write!(f, "{}:\n{}", self.heading, lines.join("\n"))
    }
}

/// `syncgate-client watch` of `sql` on `db_file`: every result it prints (one JSON line each) collected.
pub fn watch(db_file: &Path, sql: &str) -> CollectedChild {
    CollectedChild::stdout(
        client_binary()
            .arg("watch")
            .arg("--db")
            .arg(db_file)
            .arg(sql)
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// One HTTP/1.1 request: its head (without the blank line) and its `Content-Length` body; None if the
/// client hung up first.
pub async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + 4 + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some((head, buffer[head_end + 4..head_end + 4 + length].to_vec()))
}
