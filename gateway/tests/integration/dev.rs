//! `syncgate dev` as a user runs it: the built binary in a fresh folder. With `--exit-after-ready` it
//! syncs alice once, prints the summary and leaves no Postgres behind; a second run reopens the same
//! cluster. Without it, the printed token, URLs and client command work: a client syncs, its local
//! writes go through the demo backend into Postgres and come back, and SIGINT to its process group (Ctrl-C)
//! stops everything in order — also when it comes while the gateway is still starting.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use syncgate_client::{
    BackendConnector, ClientError, Credentials, CrudTransaction, LocalDatabase, Schema, SyncDriver,
    SyncOptions,
};

fn dev_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncgate"));
    command
        .args(["dev", "--port", "0", "--backend-port", "0"])
        .current_dir(dir)
        .env_remove("RUST_LOG");
    command
}

/// Processes whose command line names `needle` (the cluster's data directory), other than ours.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Where the cluster's data directory is, from dev's "created/reopened … cluster in DIR" line.
fn cluster_data_dir(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|line| line.contains(" cluster in "))
        .unwrap_or_else(|| panic!("no cluster line in:\n{stderr}"));
    let after = line.split(" cluster in ").nth(1).expect("path");
    let root = after.split([',', ' ']).next().expect("path");
    format!("{root}/data")
}

#[test]
fn dev_exit_after_ready_syncs_alice_and_stops_its_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dev_command(dir.path())
        .arg("--exit-after-ready")
        .output()
        .expect("run syncgate dev");
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        first.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        first.status
    );
    for expected in [
        "synced alice",
        "users: 3 row(s)",
        "lists: 2 row(s)",
        "todos: 3 row(s)",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing:\n{stdout}\n{stderr}"
        );
    }
    assert!(stderr.contains("created a new cluster"), "{stderr}");
    assert!(stderr.contains("loaded the demo schema and data"), "{stderr}");
    // Not a terminal: plain lines, and the snapshot in tables and rows.
    assert!(!stderr.contains('\x1b'), "escape codes in:\n{stderr}");
    assert!(
        stderr.contains("gateway: initial snapshot done (4/4 tables, 11 rows copied)"),
        "{stderr}"
    );
    let data_dir = cluster_data_dir(&stderr);
    assert_eq!(
        processes_mentioning(&data_dir),
        Vec::<String>::new(),
        "postgres still running"
    );

    // The second run finds the same cluster and its data.
    let second = dev_command(dir.path())
        .arg("--exit-after-ready")
        .output()
        .expect("run syncgate dev again");
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        second.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        second.status
    );
    assert!(stderr.contains("reopened the cluster"), "{stderr}");
    assert!(stderr.contains("demo tables present"), "{stderr}");
    assert!(stderr.contains("gateway: no snapshot needed"), "{stderr}");
    assert!(stdout.contains("todos: 3 row(s)"), "{stdout}");
    assert_eq!(cluster_data_dir(&stderr), data_dir);
    assert_eq!(
        processes_mentioning(&data_dir),
        Vec::<String>::new(),
        "postgres still running"
    );
}

#[test]
fn dev_with_an_existing_postgres_keeps_bucket_storage_in_another_database() {
    // docker-compose.yml's setup: the demo in one database, the gateway's storage in another.
    let cluster = syncgate_test_support::shared_cluster();
    let source = cluster.create_database().expect("source database");
    let storage = cluster.create_database().expect("storage database");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dev_command(dir.path())
        .args([
            "--exit-after-ready",
            "--database-url",
            &source.url_without_session_options(),
            "--storage-url",
            &storage.url_without_session_options(),
        ])
        .output()
        .expect("run syncgate dev");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("todos: 3 row(s)"), "{stdout}\n{stderr}");
    assert!(
        !dir.path().join(".syncgate-dev/storage.sqlite").exists(),
        "no SQLite storage with --storage-url"
    );
    let checkpoints = storage
        .psql("SELECT count(*) FROM syncgate_storage.checkpoints")
        .expect("storage schema in the storage database");
    assert!(
        checkpoints.trim().parse::<u64>().expect("count") > 0,
        "no checkpoint stored: {checkpoints}"
    );
}

#[test]
fn dev_config_only_refuses_a_storage_url_that_is_not_postgres() {
    let source = syncgate_test_support::shared_cluster()
        .create_database()
        .expect("source database");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dev_command(dir.path())
        .args([
            "--config-only",
            "--database-url",
            &source.url_without_session_options(),
            "--storage-url",
            "mysql://root@db/buckets",
        ])
        .output()
        .expect("run syncgate dev");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("`storage.uri`") && stderr.contains("postgresql://"),
        "{stderr}"
    );
}

/// The values `syncgate dev` prints on stdout for the first user.
#[derive(Debug)]
struct Printed {
    endpoint: String,
    backend: String,
    postgres: String,
    alice_token: String,
    schema: String,
}

fn value_after<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    let line = lines
        .iter()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {lines:#?}"));
    line[prefix.len()..].split_whitespace().next().expect("a value")
}

fn parse_printed(lines: &[String]) -> Printed {
    let command = lines
        .iter()
        .find(|line| line.contains("syncgate-client -- sync "))
        .unwrap_or_else(|| panic!("no client command in {lines:#?}"));
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| {
        let at = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("{name} in {command}"));
        words[at + 1].to_owned()
    };
    let printed = Printed {
        endpoint: value_after(lines, "sync API:").to_owned(),
        backend: value_after(lines, "demo backend:").to_owned(),
        postgres: value_after(lines, "postgres:").to_owned(),
        alice_token: value_after(lines, "  alice:").to_owned(),
        schema: flag("--schema"),
    };
    // The command carries the same values as the lines above it.
    assert_eq!(flag("--endpoint"), printed.endpoint);
    assert_eq!(flag("--token"), printed.alice_token);
    assert_eq!(flag("--backend"), printed.backend);
    printed
}

/// Uploads as the `syncgate-client` CLI does: each transaction POSTed as JSON to the demo backend.
struct Connector {
    credentials: Credentials,
    backend: String,
}

impl BackendConnector for Connector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.credentials.clone())
    }

    async fn upload_data(&self, transaction: &CrudTransaction) -> Result<(), ClientError> {
        let body = serde_json::json!({
            "transaction_id": transaction.transaction_id,
            "operations": transaction.entries.iter().map(|e| &e.data).collect::<Vec<_>>(),
        });
        let response = reqwest::Client::new()
            .post(&self.backend)
            .header("authorization", format!("Bearer {}", self.credentials.token))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| ClientError::Connector(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(ClientError::Connector(format!("HTTP {status}: {text}")));
        }
        Ok(())
    }
}

/// Syncs until the first complete checkpoint (after any queued upload's write checkpoint).
async fn sync_once(db: LocalDatabase, printed: &Printed) -> LocalDatabase {
    let connector = Connector {
        credentials: Credentials {
            endpoint: printed.endpoint.clone(),
            token: printed.alice_token.clone(),
        },
        backend: printed.backend.clone(),
    };
    let options = SyncOptions {
        stop_after_first_sync: true,
        max_consecutive_failures: Some(3),
        ..SyncOptions::default()
    };
    let mut driver = SyncDriver::new(db, connector, options);
    driver.run().await.expect("sync");
    driver.into_database()
}

fn rows(db: &LocalDatabase, sql: &str) -> Vec<(String, String, i64)> {
    let mut statement = db.connection().prepare(sql).expect("prepare");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn dev_prints_what_works_and_stops_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = dev_command(dir.path());
    // A process group of its own, signalled as a whole below: what Ctrl-C in a terminal does.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncgate dev");
    let stderr = child.stderr.take().expect("stderr");
    let stderr_lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    // Reading blocks until dev prints its ready block; it ends with the Ctrl-C line.
    for line in stdout.by_ref() {
        let line = line.expect("stdout line");
        let done = line.starts_with("Ctrl-C stops");
        lines.push(line);
        if done {
            break;
        }
    }
    assert!(
        lines.last().is_some_and(|l| l.starts_with("Ctrl-C stops")),
        "dev ended early: {lines:#?}"
    );
    let printed = parse_printed(&lines);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client_file = dir.path().join("alice.db");
    let db = {
        let mut db = LocalDatabase::open(&client_file).expect("open client db");
        let schema = std::fs::read_to_string(&printed.schema).expect("printed schema file");
        db.set_schema(&Schema::from_json(&schema).expect("schema"))
            .expect("set schema");
        db
    };
    let mut db = runtime.block_on(sync_once(db, &printed));
    let todos = "SELECT id, description, completed FROM todos ORDER BY id";
    assert_eq!(
        rows(&db, todos),
        vec![
            ("t1".into(), "Milk".into(), 0),
            ("t2".into(), "Bread".into(), 1),
            ("t3".into(), "Book flights".into(), 0)
        ]
    );

    // Local writes: an insert (PUT) and an update (PATCH), uploaded through the demo backend.
    db.write_transaction(|tx| {
        tx.execute_batch(
            "INSERT INTO todos (id, list_id, description, completed, created_at)
               VALUES ('t-dev', 'groceries', 'Oat milk', 0, '2026-04-01 10:00:00+00');
             UPDATE todos SET completed = 1 WHERE id = 't1';",
        )
        .map_err(ClientError::from)
    })
    .expect("local write");
    let db = runtime.block_on(sync_once(db, &printed));
    let queued: i64 = db
        .connection()
        .query_row("SELECT count(*) FROM sg_crud", [], |row| row.get(0))
        .expect("queue");
    assert_eq!(queued, 0, "the upload queue drained");
    let in_postgres = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&printed.postgres, tokio_postgres::NoTls)
            .await
            .expect("connect to the printed postgres URL");
        tokio::spawn(connection);
        client
            .query(
                "SELECT id, description, completed FROM todos WHERE id IN ('t1', 't-dev') ORDER BY id",
                &[],
            )
            .await
            .expect("query")
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, bool>(2),
                )
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(
        in_postgres,
        vec![
            ("t-dev".into(), "Oat milk".into(), false),
            ("t1".into(), "Milk".into(), true)
        ]
    );
    // Back through replication: the synced rows (the client's local write was replaced by them).
    assert_eq!(
        rows(
            &db,
            "SELECT id, description, completed FROM todos WHERE id IN ('t1', 't-dev') ORDER BY id"
        ),
        vec![
            ("t-dev".into(), "Oat milk".into(), 0),
            ("t1".into(), "Milk".into(), 1)
        ]
    );
    drop(db);

    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", child.id())])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let exit = child.wait().expect("wait for syncgate dev");
    let stderr = stderr_lines.join().expect("stderr reader").join("\n");
    assert!(exit.success(), "exit {exit:?}\n{stderr}");
    for expected in ["gateway stopped", "demo backend stopped", "postgres stopped"] {
        assert!(stderr.contains(expected), "{expected:?} missing:\n{stderr}");
    }
    let data_dir = cluster_data_dir(&stderr);
    assert_eq!(
        processes_mentioning(&data_dir),
        Vec::<String>::new(),
        "postgres still running"
    );
}

/// Runs `syncgate dev` in a fresh folder, sends SIGINT to its process group (Ctrl-C) as soon as a
/// stderr line contains `trigger`, and returns whether it exited 0 and its stderr.
fn interrupt_dev_at(trigger: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = dev_command(dir.path());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncgate dev");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut lines = Vec::new();
    for line in stderr.by_ref() {
        let line = line.expect("stderr line");
        let triggered = line.contains(trigger);
        lines.push(line);
        if triggered {
            break;
        }
    }
    assert!(
        lines.last().is_some_and(|l| l.contains(trigger)),
        "dev ended before {trigger:?}: {lines:#?}"
    );
    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", child.id())])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    lines.extend(stderr.map_while(Result::ok));
    let exit = child.wait().expect("wait for syncgate dev");
    (exit.success(), lines.join("\n"))
}

#[test]
fn dev_stops_cleanly_on_sigint_while_the_gateway_starts() {
    let (success, stderr) = interrupt_dev_at("gateway: starting");
    assert!(success, "{stderr}");
    for expected in [
        "stopping",
        "gateway stopped",
        "demo backend stopped",
        "postgres stopped",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing:\n{stderr}");
    }
    assert!(
        !stderr.contains("first checkpoint"),
        "stopped too late:\n{stderr}"
    );
    let data_dir = cluster_data_dir(&stderr);
    assert_eq!(
        processes_mentioning(&data_dir),
        Vec::<String>::new(),
        "postgres still running"
    );
}

#[test]
fn dev_stops_cleanly_on_sigint_while_postgres_starts() {
    // Usually during `initdb`, which the same Ctrl-C stops; else just after the cluster started.
    let (success, stderr) = interrupt_dev_at("postgres: starting");
    assert!(success, "{stderr}");
    assert!(!stderr.contains("gateway: starting"), "{stderr}");
    if stderr.contains(" cluster in ") {
        assert!(stderr.contains("postgres stopped"), "{stderr}");
        assert_eq!(
            processes_mentioning(&cluster_data_dir(&stderr)),
            Vec::<String>::new(),
            "postgres still running"
        );
    } else {
        assert!(stderr.contains("postgres: start interrupted"), "{stderr}");
    }
}
