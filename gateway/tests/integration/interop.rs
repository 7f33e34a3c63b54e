//! Interoperability with the official PowerSync client: `@powersync/node` (pinned in
//! tests/interop/package.json) syncs against the `syncgate serve` binary.
//!
//! The test starts a throwaway Postgres database with tests/interop/schema.sql and data.sql, writes a
//! gateway config (free port, an HS256 key, tests/interop/sync-rules.yaml), starts the binary, waits for
//! `/probes/readiness`, then runs the scenarios of tests/interop/interop.mjs one after the other, each a
//! node process driving real `PowerSyncDatabase`s (and playing the app's upload backend with `pg`). Every
//! scenario prints one JSON line; this test asserts on those and on Postgres. See docs/interop.md.
//!
//! It needs `npm ci` in tests/interop (scripts/setup-interop.sh). Without node_modules it is skipped with a
//! message, unless `SYNCGATE_REQUIRE_INTEROP` is set (CI sets it): then it fails.
//! `SYNCGATE_INTEROP_SCENARIOS=upload,changes` runs a subset; `SYNCGATE_INTEROP_LOG_DIR=DIR` keeps the node and
//! gateway logs.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncgate_test_support::interop::{interop_dir, node, official_client_available};
use syncgate_test_support::{TestDatabase, shared_cluster};

use syncgate_test_support::serve::{
    Finished, JWT_AUD, JWT_KID, JWT_SECRET_BASE64URL, ServeProcess, tail, wait_with_timeout,
};

/// The oct key's secret, base64url of `syncgate-interop-test-secret-0123456789abcdef`.
/// Gateway readiness (replication snapshot of a few rows).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A whole scenario, a backstop: the script's own waits time out after 60 s each.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);

/// Every scenario in order; `resume` reopens the database file `reconnect` left (same dir and prefix).
const SCENARIOS: &[&str] = &[
    "initial",
    "changes",
    "upload",
    "reconnect",
    "resume",
    "expired-token",
    "token-refresh",
];

#[test]
fn official_client_over_http() {
    run_interop("http");
}

/// The same scenarios over RSocket-over-WebSocket (`connectionMethod: 'web-socket'`). The script cannot see
/// WebSocket frames, so there it counts ops with the gateway's `/metrics` instead.
#[test]
fn official_client_over_web_socket() {
    run_interop("web-socket");
}

fn run_interop(connection_method: &str) {
    let dir = interop_dir();
    if !official_client_available("interop test") {
        return;
    }
    let started = Instant::now();
    let db = shared_cluster().create_database().expect("test database");
    db.psql(&read(&dir.join("schema.sql"))).expect("schema");
    db.psql(&read(&dir.join("data.sql"))).expect("data");

    let work = tempfile::tempdir().expect("temp dir");
    // Slot names are cluster-wide: one prefix per transport, so both tests can run at once.
    let slot_prefix = format!("interop_{}_", connection_method.replace('-', "_"));
    let uri = db.url_without_session_options();
    let mut gateway = ServeProcess::start(
        env!("CARGO_BIN_EXE_syncgate"),
        work.path(),
        &uri,
        &dir.join("sync-rules.yaml"),
        &slot_prefix,
        "info",
    );
    gateway.wait_ready(READY_TIMEOUT);
    eprintln!(
        "gateway ready on port {} after {:?}",
        gateway.port,
        started.elapsed()
    );

    let selected: Option<Vec<String>> = std::env::var("SYNCGATE_INTEROP_SCENARIOS")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_owned).collect());
    let prefix = format!("interop{}", std::process::id());
    let mut failures = Vec::new();
    for &scenario in SCENARIOS {
        if selected
            .as_ref()
            .is_some_and(|s| !s.iter().any(|n| n == scenario))
        {
            continue;
        }
        // `reconnect` and `resume` share a prefix (the users and the database file); the others get their own.
        let scenario_prefix = match scenario {
            "reconnect" | "resume" => format!("{prefix}-reconnect"),
            _ => format!("{prefix}-{scenario}"),
        };
        let outcome = run_scenario(
            scenario,
            &gateway,
            &db,
            work.path(),
            &scenario_prefix,
            connection_method,
        );
        match outcome.and_then(|result| check_result(scenario, &result, &db).map(|()| result)) {
            Ok(mut result) => {
                if let Some(object) = result.as_object_mut() {
                    object.remove("clients");
                }
                eprintln!("interop {scenario}: ok in {} ms: {result}", result["duration_ms"]);
            }
            Err(message) => {
                eprintln!("interop {scenario}: FAILED\n{message}");
                failures.push(format!("{scenario}: {}", first_line(&message)));
            }
        }
        gateway.assert_running();
    }
    eprintln!("interop scenarios took {:?}", started.elapsed());
    if let Some(keep) = std::env::var_os("SYNCGATE_INTEROP_LOG_DIR") {
        // The node logs (SDK log, requests, sync line types) and the gateway's log, kept for reading.
        std::fs::create_dir_all(&keep).expect("log dir");
        for entry in std::fs::read_dir(work.path()).expect("work dir").flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(entry.path(), Path::new(&keep).join(entry.file_name()));
            }
        }
    }
    if !failures.is_empty() {
        eprintln!("--- gateway log (last lines) ---\n{}", gateway.log_tail(80));
    }
    assert!(
        failures.is_empty(),
        "interop scenarios failed:\n{}",
        failures.join("\n")
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Scenario-specific checks of a successful result, and Postgres state after uploads.
fn check_result(scenario: &str, result: &Value, db: &TestDatabase) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what}: {result}"));
    if result["ok"] != Value::Bool(true) {
        return fail("not ok");
    }
    match scenario {
        "upload" => {
            let ids = &result["ids"];
            let text = |key: &str| ids[key].as_str().unwrap_or_default().replace('\'', "''");
            let state = db
                .psql(&format!(
                    "SELECT (SELECT description || '/' || completed || '/' || priority FROM todos WHERE id = '{}'),
                            (SELECT description || '/' || completed FROM todos WHERE id = '{}'),
                            (SELECT count(*) FROM todos WHERE id = '{}'),
                            (SELECT name FROM lists WHERE id = '{}'),
                            (SELECT description FROM todos WHERE id = '{}')",
                    text("new_todo"),
                    text("updated_todo"),
                    text("deleted_todo"),
                    text("new_list"),
                    text("new_list_todo"),
                ))
                .map_err(|e| format!("postgres state: {e}"))?;
            if state.trim() != "Cheese/false/5|Whole milk/true|0|Party|Balloons" {
                return fail(&format!("postgres after the upload holds {state:?}"));
            }
            let requests = result["write_checkpoint_requests"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !requests.iter().any(|r| r["status"] == 200) {
                return fail("no successful /write-checkpoint2.json");
            }
        }
        // Ops counted by the script on the client (HTTP) or as the gateway's `syncgate_ops_sent_total` delta.
        "reconnect" => {
            if result["ops_reconnect"].as_u64().is_none_or(|n| n >= 20) {
                return fail("reconnect re-downloaded");
            }
            if result["ops_first"].as_u64().is_none_or(|n| n < 300) {
                return fail("the first connection did not download the bulk rows");
            }
        }
        "resume" if result["ops_restart"].as_u64().is_none_or(|n| n >= 20) => {
            return fail("restart re-downloaded");
        }
        "expired-token" | "token-refresh"
            if result["clients"]["alice"]["credential_fetches"]
                .as_u64()
                .is_none_or(|n| n < 2) =>
        {
            return fail("fetchCredentials was not called again");
        }
        _ => {}
    }
    Ok(())
}

/// Runs one scenario as a node process; its JSON result line, or the reason it failed (with its log).
fn run_scenario(
    scenario: &str,
    gateway: &ServeProcess,
    db: &TestDatabase,
    work: &Path,
    prefix: &str,
    connection_method: &str,
) -> Result<Value, String> {
    let log_path = work.join(format!("{scenario}.log"));
    let log = File::create(&log_path).expect("scenario log");
    let child = node("interop.mjs")
        .args(["--scenario", scenario])
        .args(["--endpoint", &format!("http://127.0.0.1:{}", gateway.port)])
        .args(["--pg-url", &db.url_without_session_options()])
        .args([
            "--jwt-secret",
            JWT_SECRET_BASE64URL,
            "--jwt-kid",
            JWT_KID,
            "--jwt-aud",
            JWT_AUD,
        ])
        .args(["--prefix", prefix, "--connection-method", connection_method])
        .arg("--dir")
        .arg(work.join("clients"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run node (needed for the interop test): {e}"))?;
    let Finished {
        status, stdout: out, ..
    } = wait_with_timeout(child, SCENARIO_TIMEOUT);
    let log_tail = || tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 150);
    let Some(status) = status else {
        return Err(format!(
            "no result within {SCENARIO_TIMEOUT:?}, killed\n--- node log ---\n{}",
            log_tail()
        ));
    };
    let result: Option<Value> = out.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    match result {
        Some(result) if status.success() => Ok(result),
        Some(result) => Err(format!(
            "{} ({status})\n--- result ---\n{result}\n--- node log ---\n{}",
            result["error"].as_str().unwrap_or("failed"),
            log_tail()
        )),
        None => Err(format!(
            "no JSON result ({status}); stdout: {out}\n--- node log ---\n{}",
            log_tail()
        )),
    }
}
