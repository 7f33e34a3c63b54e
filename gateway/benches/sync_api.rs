//! Sync API figures against a real gateway process, Postgres and the load generator on this machine:
//!
//! (a) time to stream a 100,000-row bucket (~250-byte rows) from `POST /sync/stream` to `checkpoint_complete`,
//!     read by a plain HTTP reader (NDJSON, no compression); baseline: reading the same ops straight from
//!     the storage file in the same run;
//! (b) commit → line received latency, p50/p99, with 1,000 connected streams: one subscribed to the changed
//!     bucket, then all 1,000 subscribed to it;
//! (c) gateway memory (RSS) per idle connection with 10,000 open streams.
//!
//! `cargo bench -p syncgate --bench sync_api` (`BENCH_IDLE`, `BENCH_STREAMS`, `BENCH_ROWS` scale it down;
//! `BENCH_SAMPLES` sets the one-subscribed commits, `BENCH_ALL_COMMITS` the all-subscribed ones, default 20).

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Map;
use syncgate::config::Config;
use syncgate::storage::{BucketStorage, SqliteStorage};
use syncgate_protocol::{BucketName, OpId};
use syncgate_test_support::stats::{cpu_time, env_or, ms, percentile};
use syncgate_test_support::{PgCluster, TestDatabase};
use tokio::sync::mpsc;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

const RULES: &str = "
bucket_definitions:
  by_user:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM bench WHERE owner_id = bucket.user_id
  everyone:
    parameters: SELECT 'all' AS scope WHERE request.jwt() ->> 'all' = 'yes'
    data:
      - SELECT * FROM ticks WHERE scope = bucket.scope
";

const SCHEMA: &str = "
CREATE TABLE bench (id text PRIMARY KEY, owner_id text NOT NULL, seq int NOT NULL, payload text NOT NULL);
CREATE TABLE ticks (id int PRIMARY KEY, scope text NOT NULL, n int NOT NULL);
INSERT INTO ticks VALUES (1, 'all', 0);
CREATE PUBLICATION powersync FOR ALL TABLES;
";

struct GatewayProcess {
    child: Child,
    config: Config,
    base: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    fn start(dir: &Path, db: &TestDatabase) -> GatewayProcess {
        use base64::Engine as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let mut rules = String::new();
        for line in RULES.lines() {
            rules.push_str("    ");
            rules.push_str(line);
            rules.push('\n');
        }
        let text = format!(
            "replication:\n  connections:\n    - type: postgresql\n      uri: {uri}\n      sslmode: disable\n\
             storage:\n  type: sqlite\n  path: storage.sqlite\nport: {port}\nclient_auth:\n  audience:\n    - bench\n  jwks:\n    keys:\n      \
             - kty: oct\n        alg: HS256\n        kid: bench\n        k: {key}\nsync_rules:\n  content: |\n{rules}",
            uri = db.url_without_session_options(),
        );
        let path = dir.join("powersync.yaml");
        std::fs::write(&path, text).expect("config");
        let config = Config::load(&path).expect("config").config;
        let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_syncgate"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start syncgate");
        GatewayProcess {
            child,
            config,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn token(&self, sub: &str, all: bool) -> String {
        let mut claims = Map::new();
        if all {
            claims.insert("all".into(), "yes".into());
        }
        syncgate::auth::mint_token(
            &self.config.client_auth,
            sub,
            claims,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("token")
        .token
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// Opens a stream; returns the response once headers arrived.
async fn open(http: &reqwest::Client, gateway: &GatewayProcess, sub: &str, all: bool) -> reqwest::Response {
    let response = http
        .post(format!("{}/sync/stream", gateway.base))
        .header("authorization", format!("Token {}", gateway.token(sub, all)))
        .header("accept", "application/x-ndjson")
        .body("{}")
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    response
}

/// Reads lines until `checkpoint_complete`; returns the bytes read.
async fn read_until_complete(response: &mut reqwest::Response, pending: &mut Vec<u8>) -> usize {
    let mut total = 0;
    loop {
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.starts_with(b"{\"checkpoint_complete\"") {
                return total;
            }
        }
        let chunk = response.chunk().await.expect("read").expect("open");
        total += chunk.len();
        pending.extend_from_slice(&chunk);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches without --bench: nothing to do.
    }
    let rows: usize = env_or("BENCH_ROWS", 100_000);
    let streams: usize = env_or("BENCH_STREAMS", 1_000);
    let idle: usize = env_or("BENCH_IDLE", 10_000);
    let samples: usize = env_or("BENCH_SAMPLES", 30);

    let cluster = PgCluster::start().expect("start Postgres");
    let db = cluster.create_database().expect("database");
    db.psql(SCHEMA).expect("schema");
    db.psql(&format!(
        "INSERT INTO bench SELECT 'big-' || g, 'big', g, rpad('payload ' || g || ' ', 200, 'abcdefghij') FROM generate_series(1, {rows}) g;
         INSERT INTO bench SELECT 'u-' || g, 'user-' || g, g, rpad('payload ' || g || ' ', 200, 'abcdefghij') FROM generate_series(0, {streams}) g;"
    ))
    .expect("rows");
    let dir = tempfile::tempdir().expect("dir");
    let gateway = GatewayProcess::start(dir.path(), &db);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("{}/probes/readiness", gateway.base))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "gateway not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "gateway ready (snapshot of {} rows) in {:.1} s",
        rows + streams + 1,
        started.elapsed().as_secs_f64()
    );

    // (a) One 100,000-row bucket, from the request to checkpoint_complete.
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        let begin = Instant::now();
        let mut response = open(&http, &gateway, "big", false).await;
        bytes = read_until_complete(&mut response, &mut Vec::new()).await;
        times.push(begin.elapsed());
    }
    times.sort();
    let storage = SqliteStorage::open(dir.path().join("storage.sqlite")).expect("storage");
    let active = storage.active_version().expect("active").expect("a version");
    let checkpoint = storage
        .latest_checkpoint(active.version)
        .expect("cp")
        .expect("cp");
    let bucket = BucketName::new(format!("{}#by_user[\"big\"]", active.version));
    let begin = Instant::now();
    let mut after = OpId::ZERO;
    let mut read = 0;
    loop {
        let ops = storage
            .ops(active.version, &bucket, after, checkpoint.op_id, 1000)
            .expect("ops");
        let Some(last) = ops.last() else { break };
        after = last.entry.op_id;
        read += ops.len();
    }
    let baseline = begin.elapsed();
    println!(
        "(a) {rows}-row bucket to checkpoint_complete: median {:.0} ms of 3 ({:.1} MB of NDJSON, {:.0} k ops/s); \
         baseline: reading its {read} ops from the storage file {:.0} ms; target ≤ 500 ms",
        ms(times[1]),
        bytes as f64 / 1e6,
        rows as f64 / times[1].as_secs_f64() / 1e3,
        ms(baseline)
    );

    // (b) 1,000 connected streams; each reader reports when a data line arrives.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut response = open(&http, &gateway, &format!("user-{i}"), true).await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            read_until_complete(&mut response, &mut pending).await;
            let _ = tx.send((i, Instant::now()));
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if line.starts_with(b"{\"data\"") {
                        let _ = tx.send((i, Instant::now()));
                    }
                }
            }
        }));
    }
    for _ in 0..streams {
        rx.recv().await.expect("initial sync");
    }
    let client = db.connect().await.expect("connect");
    let mut one = Vec::new();
    for n in 0..samples {
        let begin = Instant::now();
        client
            .execute(
                &format!("UPDATE bench SET seq = seq + 1 WHERE id = 'u-{}'", n % streams),
                &[],
            )
            .await
            .expect("update");
        let (_, at) = rx.recv().await.expect("line");
        one.push(at - begin);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.sort();
    let mut all = Vec::new();
    let all_commits: usize = env_or("BENCH_ALL_COMMITS", samples.min(20));
    let gateway_pid = gateway.child.id().to_string();
    let cpu_before = (cpu_time(&gateway_pid), cpu_time("self"));
    for _ in 0..all_commits {
        let begin = Instant::now();
        client
            .execute("UPDATE ticks SET n = n + 1", &[])
            .await
            .expect("tick");
        for _ in 0..streams {
            let (_, at) = rx.recv().await.expect("line");
            all.push(at - begin);
        }
    }
    all.sort();
    // Where the fan-out's CPU goes: the gateway's sends against this process's 1,000 readers.
    let cpu_per_commit = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(before), Some(after)) => format!("{:.1} ms", ms(after - before) / all_commits as f64),
        _ => "n/a".into(),
    };
    let cpu_gateway = cpu_per_commit(cpu_before.0, cpu_time(&gateway_pid));
    let cpu_readers = cpu_per_commit(cpu_before.1, cpu_time("self"));
    println!(
        "(b) commit → line, {streams} streams, one subscribed: p50 {:.1} ms, p99 {:.1} ms ({} samples); \
         all subscribed: p50 {:.1} ms, p99 {:.1} ms ({} lines; CPU per commit: gateway {cpu_gateway}, \
         readers {cpu_readers}); targets p50 ≤ 5 ms, p99 ≤ 50 ms",
        ms(percentile(&one, 0.5)),
        ms(percentile(&one, 0.99)),
        one.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        all.len()
    );
    for task in tasks {
        task.abort();
    }
    drop(rx);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // (c) 10,000 idle streams: RSS growth per connection.
    let before = gateway.rss_kib();
    let mut open_streams = Vec::with_capacity(idle);
    let begin = Instant::now();
    for chunk in 0..idle.div_ceil(100) {
        let mut batch = Vec::new();
        for i in chunk * 100..((chunk + 1) * 100).min(idle) {
            let http = http.clone();
            let token = gateway.token(&format!("idle-{i}"), false);
            let url = format!("{}/sync/stream", gateway.base);
            batch.push(tokio::spawn(async move {
                let mut response = http
                    .post(url)
                    .header("authorization", format!("Token {token}"))
                    .body("{}")
                    .send()
                    .await
                    .expect("idle stream");
                read_until_complete(&mut response, &mut Vec::new()).await;
                response
            }));
        }
        for task in batch {
            open_streams.push(task.await.expect("open"));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = gateway.rss_kib();
    println!(
        "(c) {idle} idle streams opened in {:.1} s: RSS {} → {} KiB, {:.1} KiB per connection; target ≤ 32 KiB",
        begin.elapsed().as_secs_f64(),
        before,
        after_kib,
        (after_kib.saturating_sub(before)) as f64 / idle as f64
    );
    drop(open_streams);
    let _ = std::io::stdout().flush();
}
