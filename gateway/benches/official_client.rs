//! Sync API figure (d): commit → row visible in one connected official client, `@powersync/node` (pinned in
//! tests/interop/package.json) with its defaults (HTTP; the SDK negotiates BSON and gzip), against the
//! `syncgate serve` binary and a throwaway Postgres on this machine.
//!
//! The `latency` scenario of tests/interop/interop.mjs does the measuring: after the first sync it inserts one row
//! (autocommit) `BENCH_WARMUP` + `BENCH_SAMPLES` times and takes the time from just before the INSERT is sent until
//! the SDK's change notification on `todos` is followed by a read that finds the row. Baseline, from the same
//! INSERTs in the same run: a plain `fetch` of `POST /sync/stream` (NDJSON) until the row's `data` line arrives.
//! This prints median, p90 and max of both; nothing is asserted.
//!
//! `cargo bench -p syncgate --bench official_client` (needs the Postgres 15 binaries, node 20 and
//! `bash scripts/setup-interop.sh`; without tests/interop/node_modules it only says so).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use syncgate_test_support::PgCluster;
use syncgate_test_support::stats::env_or;

use syncgate_test_support::serve::{
    Finished, JWT_AUD, JWT_KID, JWT_SECRET_BASE64URL, ServeProcess, tail, wait_with_timeout,
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The whole node run, a backstop: the script's own waits time out after 60 s each.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// The target of benchmark (d).
const TARGET_MEDIAN_MS: f64 = 7.0;
const TARGET_MAX_MS: f64 = 1000.0;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop")
}

/// Median (mean of the middle two for an even count), p90 (nearest rank) and max of `values` in ms.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n.is_multiple_of(2) {
        f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
    } else {
        sorted[n / 2]
    };
    let p90 = sorted[(n * 9).div_ceil(10) - 1];
    (median, p90, sorted[n - 1])
}

fn ms_list(result: &Value, key: &str) -> Vec<f64> {
    result[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in the result: {result}"))
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

/// The 1-minute load average (the VM is shared with other builds).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches without --bench: nothing to do.
    }
    let dir = interop_dir();
    if !dir.join("node_modules/@powersync/node").is_dir() {
        println!(
            "official_client: {}/node_modules is missing; install the official client with \
             `bash scripts/setup-interop.sh` (npm ci, ~2 min), then run this bench again. No figures.",
            dir.display()
        );
        return;
    }
    let samples: usize = env_or("BENCH_SAMPLES", 30);
    let warmup: usize = env_or("BENCH_WARMUP", 5);
    // The SDK's change notifications are throttled by 30 ms by default; 0 here (an app can choose it too).
    let throttle_ms: usize = env_or("BENCH_THROTTLE_MS", 0);

    let cluster = PgCluster::start().expect("start Postgres");
    let db = cluster.create_database().expect("database");
    for file in ["schema.sql", "data.sql"] {
        let sql = std::fs::read_to_string(dir.join(file)).expect("interop SQL");
        db.psql(&sql).expect(file);
    }
    let work = tempfile::tempdir().expect("temp dir");
    let uri = db.url_without_session_options();
    // `sync stream opened` (debug) names each stream's framing and compression.
    let mut gateway = ServeProcess::start(
        env!("CARGO_BIN_EXE_syncgate"),
        work.path(),
        &uri,
        &dir.join("sync-rules.yaml"),
        "bench_sdk_",
        "warn,syncgate::api::http=debug",
    );
    gateway.wait_ready(READY_TIMEOUT);

    let node_log = work.path().join("latency.log");
    let load_before = load_average();
    let child = Command::new("node")
        .arg("interop.mjs")
        .args(["--scenario", "latency"])
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
        .args(["--prefix", &format!("bench{}", std::process::id())])
        .args(["--connection-method", "http", "--sdk-log-level", "info"])
        .args(["--samples", &samples.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--throttle-ms", &throttle_ms.to_string()])
        .arg("--dir")
        .arg(work.path().join("clients"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&node_log).expect("node log"))
        .spawn()
        .expect("cannot run node (needed for this bench)");
    let Finished {
        status, stdout: out, ..
    } = wait_with_timeout(child, RUN_TIMEOUT);
    let result: Option<Value> = out.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    let Some(result) = result.filter(|r| status.is_some_and(|s| s.success()) && r["ok"] == true) else {
        panic!(
            "the latency scenario failed ({status:?}): {out}\n--- node log ---\n{}\n--- gateway log ---\n{}",
            tail(&std::fs::read_to_string(&node_log).unwrap_or_default(), 100),
            tail(&gateway.log_text(), 50)
        );
    };

    let load_after = load_average();
    let client = ms_list(&result, "client_ms");
    let notified = ms_list(&result, "notified_ms");
    let baseline = ms_list(&result, "baseline_ms");
    let baseline_complete = ms_list(&result, "baseline_complete_ms");
    let commit = ms_list(&result, "commit_ms");
    // The gateway's own record of each stream: framing and gzip, as negotiated.
    let log = gateway.log_text();
    let streams: Vec<String> = log
        .lines()
        .filter(|l| l.contains("sync stream opened"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("framing=") || w.starts_with("gzip="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let (c50, c90, cmax) = summary(&client);
    let (b50, b90, bmax) = summary(&baseline);
    let (k50, _, kmax) = summary(&commit);
    let (bc50, bc90, bcmax) = summary(&baseline_complete);
    let (n50, n90, nmax) = summary(&notified);
    let added: Vec<f64> = client.iter().zip(&baseline).map(|(c, b)| c - b).collect();
    let (a50, a90, amax) = summary(&added);
    println!(
        "(d) commit → row visible in one @powersync/node client (HTTP, {samples} single-row inserts after {warmup} \
         warm-up rounds): median {c50:.1} ms, p90 {c90:.1} ms, max {cmax:.1} ms"
    );
    println!(
        "    baseline, same inserts, plain NDJSON reader of POST /sync/stream ({}, content-encoding {}): \
         median {b50:.1} ms, p90 {b90:.1} ms, max {bmax:.1} ms; the INSERT itself: median {k50:.1} ms, max {kmax:.1} ms",
        result["baseline_reader"]["content_type"].as_str().unwrap_or("?"),
        result["baseline_reader"]["content_encoding"]
            .as_str()
            .unwrap_or("none"),
    );
    println!(
        "    the checkpoint_complete after that data line, in the same reader: median {bc50:.1} ms, p90 {bc90:.1} ms, \
         max {bcmax:.1} ms"
    );
    println!(
        "    the SDK's change notification alone (before the read that finds the row): median {n50:.1} ms, \
         p90 {n90:.1} ms, max {nmax:.1} ms"
    );
    println!(
        "    the SDK on top of the reader, per insert (client − baseline): median {a50:.1} ms, p90 {a90:.1} ms, \
         max {amax:.1} ms"
    );
    println!(
        "    streams as the gateway saw them: {}; visibility: {}",
        streams.join(", "),
        result["detection"]
    );
    println!(
        "    target: median ≤ {TARGET_MEDIAN_MS} ms, none over {TARGET_MAX_MS} ms: {}",
        if c50 <= TARGET_MEDIAN_MS && cmax <= TARGET_MAX_MS {
            "met"
        } else {
            "not met"
        }
    );
    println!("    load average (1 min) before / after: {load_before} / {load_after}");
    println!("    client latencies (ms): {client:?}");
    println!("    baseline latencies (ms): {baseline:?}");
    let _ = std::io::stdout().flush();
}
