//! The sync API over real HTTP against a real Postgres: conformance with the reference's golden
//! transcripts, authentication failures, write checkpoints, probes and framing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use syncgate::config::Config;
use syncgate_protocol::Checksum;
use syncgate_test_support::{TestDatabase, shared_cluster};

use crate::replication::harness::{
    Gateway, SQLITE_STORAGE, fast_options, postgres_storage, unversioned, write_config_with_storage,
};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden");

pub(crate) fn golden(name: &str) -> String {
    std::fs::read_to_string(Path::new(GOLDEN).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A gateway serving HTTP on its config's port.
pub(crate) struct Api {
    pub(crate) gateway: Gateway,
    pub(crate) config: Config,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    async fn start(dir: &Path, db: &TestDatabase, rules: &str, prefix: &str) -> Api {
        Api::start_with_storage(dir, db, rules, prefix, SQLITE_STORAGE).await
    }

    /// Like [`Api::start`], with `storage` as the config's `storage` section.
    async fn start_with_storage(
        dir: &Path,
        db: &TestDatabase,
        rules: &str,
        prefix: &str,
        storage: &str,
    ) -> Api {
        let uri = db.url_without_session_options();
        let config_path: PathBuf = write_config_with_storage(dir, &uri, rules, prefix, storage);
        Api::start_with_config(&config_path).await
    }

    /// Starts a gateway on a config written by the caller and waits until it is ready.
    pub(crate) async fn start_with_config(config_path: &Path) -> Api {
        let config_path = config_path.to_path_buf();
        let config = Config::load(&config_path).expect("config").config;
        let base = format!("http://127.0.0.1:{}", config.port);
        let gateway = Gateway::start(&config_path, fast_options());
        let api = Api {
            gateway,
            config,
            base,
            http: reqwest::Client::new(),
        };
        api.wait_ready().await;
        api
    }

    async fn wait_ready(&self) {
        let started = std::time::Instant::now();
        loop {
            self.gateway.assert_running();
            if let Ok(response) = self
                .http
                .get(format!("{}/probes/readiness", self.base))
                .send()
                .await
                && response.status() == 200
            {
                eprintln!("ready after {:?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub(crate) fn token(&self, sub: &str, ttl: Duration) -> String {
        syncgate::auth::mint_token(&self.config.client_auth, sub, Map::new(), ttl, SystemTime::now())
            .expect("mint")
            .token
    }

    pub(crate) async fn stream(&self, sub: &str, body: &str, accept: &str) -> SyncStream {
        let token = self.token(sub, Duration::from_secs(3600));
        SyncStream::open(&self.http, &self.base, &token, body, accept).await
    }
}

pub(crate) struct SyncStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SyncStream {
    /// `POST {base}/sync/stream` with `token`; panics unless it answers 200.
    pub(crate) async fn open(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        body: &str,
        accept: &str,
    ) -> SyncStream {
        let response = http
            .post(format!("{base}/sync/stream"))
            .header("authorization", format!("Token {token}"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        SyncStream {
            response,
            buffer: Vec::new(),
        }
    }

    pub(crate) async fn next_line(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line).expect("line is JSON");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("a line within 30 s")
                .expect("read")
                .expect("stream still open");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Lines up to and including the next `checkpoint_complete`, keepalives skipped.
    pub(crate) async fn until_complete(&mut self) -> Vec<Value> {
        let mut lines = Vec::new();
        loop {
            let line = self.next_line().await;
            if line.get("token_expires_in").is_some() {
                continue;
            }
            let done = line.get("checkpoint_complete").is_some();
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

/// A line with what legitimately differs between deployments removed: op ids and positions (ours are
/// seeded from the clock), write-checkpoint ids, subkeys and REMOVE checksums (they hash the source
/// row's identity, which embeds a random table id in the reference), bucket checksums (sums of those),
/// and the `<version>#` prefix of bucket names. Everything else must be equal.
fn normalize(line: &Value) -> Value {
    let mut line = line.clone();
    strip(&mut line);
    line
}

fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["op_id", "last_op_id", "after", "next_after", "subkey"] {
                map.remove(key);
            }
            if map.contains_key("write_checkpoint") {
                map.insert("write_checkpoint".into(), json!("<id>"));
            }
            if map.get("op") == Some(&json!("REMOVE"))
                || map.contains_key("bucket") && map.contains_key("count")
            {
                map.remove("checksum");
            }
            if let Some(Value::String(bucket)) = map.get_mut("bucket") {
                *bucket = unversioned(bucket);
            }
            if let Some(Value::Array(names)) = map.get_mut("removed_buckets") {
                for name in names.iter_mut() {
                    if let Value::String(s) = name {
                        *s = unversioned(s);
                    }
                }
            }
            for v in map.values_mut() {
                strip(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// What a client tracks per bucket: the sum and count of the ops it received.
#[derive(Default)]
struct ClientSums(std::collections::HashMap<String, (Checksum, u64)>);

impl ClientSums {
    /// Applies received lines; at every complete, checks the announced checksums equal the sums of the
    /// ops received, and that no op exceeds the checkpoint.
    fn check(&mut self, lines: &[Value], announced: &mut std::collections::HashMap<String, (i64, u64)>) {
        let mut last_op_id = 0u64;
        for line in lines {
            if let Some(c) = line.get("checkpoint").or_else(|| line.get("checkpoint_diff")) {
                last_op_id = c["last_op_id"]
                    .as_str()
                    .expect("string op id")
                    .parse()
                    .expect("op id");
                for b in c
                    .get("buckets")
                    .or_else(|| c.get("updated_buckets"))
                    .and_then(Value::as_array)
                    .expect("bucket list")
                {
                    announced.insert(
                        b["bucket"].as_str().expect("name").to_owned(),
                        (
                            b["checksum"].as_i64().expect("checksum"),
                            b["count"].as_u64().expect("count"),
                        ),
                    );
                }
            }
            if let Some(d) = line.get("data") {
                let bucket = d["bucket"].as_str().expect("bucket").to_owned();
                for op in d["data"].as_array().expect("ops") {
                    let id: u64 = op["op_id"]
                        .as_str()
                        .expect("op id string")
                        .parse()
                        .expect("op id");
                    assert!(id <= last_op_id, "op {id} beyond checkpoint {last_op_id}");
                    let checksum = Checksum::from_u32(
                        u32::try_from(op["checksum"].as_u64().expect("u32")).expect("u32"),
                    );
                    if op["op"] == "REMOVE" {
                        assert_eq!(
                            checksum,
                            Checksum::of_remove(op["subkey"].as_str().expect("subkey"))
                        );
                    }
                    let entry = self.0.entry(bucket.clone()).or_default();
                    entry.0 += checksum;
                    entry.1 += 1;
                }
            }
            if line.get("checkpoint_complete").is_some() {
                for (bucket, (checksum, count)) in announced.iter() {
                    let (sum, received) = self.0.get(bucket).copied().unwrap_or_default();
                    assert_eq!(
                        (i64::from(sum.as_i32()), received),
                        (*checksum, *count),
                        "bucket {bucket}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_matches_the_reference_transcript_line_for_line() {
    reference_session(SQLITE_STORAGE.to_owned(), "sg_golden_").await;
}

/// The same session with the gateway's buckets in Postgres storage (a database of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_storage_a_session_matches_the_reference_transcript() {
    let storage = shared_cluster().create_database().expect("storage database");
    reference_session(postgres_storage(&storage), "sg_golden_pg_").await;
}

/// Replicates the golden dataset, syncs user1 and follows an update, a delete and a write checkpoint,
/// each compared line for line with the reference's transcript.
async fn reference_session(storage: String, prefix: &str) {
    let db = shared_cluster().create_database().expect("database");
    db.psql(&golden("schema.sql")).expect("schema");
    db.psql(&golden("dataset.sql")).expect("dataset");
    let dir = tempfile::tempdir().expect("dir");
    let api = Api::start_with_storage(dir.path(), &db, &golden("sync-rules.yaml"), prefix, &storage).await;

    let expected: Vec<Value> = golden("stream-user1.ndjson")
        .lines()
        .map(|l| serde_json::from_str(l).expect("golden line"))
        .collect();
    let mut stream = api
        .stream(
            "user1",
            &golden("request-stream-user1.json"),
            "application/x-ndjson",
        )
        .await;
    let mut sums = ClientSums::default();
    let mut announced = std::collections::HashMap::new();
    let mut position = 0;
    let mut expect_next = |got: Vec<Value>, sums: &mut ClientSums, what: &str| {
        sums.check(&got, &mut announced);
        let want = &expected[position..position + got.len()];
        position += got.len();
        let got: Vec<Value> = got.iter().map(normalize).collect();
        let want: Vec<Value> = want.iter().map(normalize).collect();
        assert_eq!(got, want, "{what}");
    };

    expect_next(stream.until_complete().await, &mut sums, "initial sync");

    let todo1 = "aaaaaaaa-0000-4000-8000-000000000001";
    db.psql(&format!(
        "UPDATE todos SET description = 'milk (2l)', completed = true WHERE id = '{todo1}'"
    ))
    .expect("update");
    expect_next(stream.until_complete().await, &mut sums, "update");

    db.psql("DELETE FROM todos WHERE id = 'aaaaaaaa-0000-4000-8000-000000000002'")
        .expect("delete");
    expect_next(stream.until_complete().await, &mut sums, "delete");

    let response = api
        .http
        .get(format!(
            "{}/write-checkpoint2.json?client_id=golden-client-1",
            api.base
        ))
        .header(
            "authorization",
            format!("Token {}", api.token("user1", Duration::from_secs(600))),
        )
        .send()
        .await
        .expect("write checkpoint");
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    let id = body["data"]["write_checkpoint"]
        .as_str()
        .expect("string id")
        .to_owned();
    assert!(id.parse::<u64>().expect("number") >= 1);
    let lines = stream.until_complete().await;
    assert_eq!(lines[0]["checkpoint_diff"]["write_checkpoint"], json!(id));
    expect_next(lines, &mut sums, "write checkpoint");

    db.psql(
        "INSERT INTO lists (id, name, owner_id, created_at) VALUES \
         ('33333333-3333-4333-8333-333333333333', 'Shared', 'user2', '2024-01-02T00:00:00Z')",
    )
    .expect("insert list");
    let lines = stream.until_complete().await;
    assert_eq!(
        lines[0]["checkpoint_diff"]["write_checkpoint"],
        json!(id),
        "repeated in every diff"
    );
    expect_next(lines, &mut sums, "insert list");

    db.psql(
        "BEGIN; \
         INSERT INTO todos (id, list_id, description, completed, owner_id, created_at) VALUES \
         ('aaaaaaaa-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'tmp', false, 'user1', '2024-01-03T00:00:00Z'); \
         UPDATE todos SET description = 'tmp2' WHERE id = 'aaaaaaaa-0000-4000-8000-000000000003'; \
         DELETE FROM todos WHERE id = 'aaaaaaaa-0000-4000-8000-000000000003'; \
         COMMIT;",
    )
    .expect("transaction");
    expect_next(stream.until_complete().await, &mut sums, "one transaction");
    assert_eq!(position, expected.len(), "every golden line was matched");

    // A reconnect from the positions the client holds gets only what it lacks (stream-resume-user1).
    drop(stream);
    api.gateway.stop().await;
}

/// A gateway on the golden schema and rules, with the golden dataset loaded.
pub(crate) async fn golden_api(dir: &Path, prefix: &str) -> (TestDatabase, Api) {
    let db = shared_cluster().create_database().expect("database");
    db.psql(&golden("schema.sql")).expect("schema");
    db.psql(&golden("dataset.sql")).expect("dataset");
    let api = Api::start(dir, &db, &golden("sync-rules.yaml"), prefix).await;
    (db, api)
}

pub(crate) fn signed(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).expect("sign")
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_with_the_reference_code_and_bad_requests_400() {
    let dir = tempfile::tempdir().expect("dir");
    let (_db, api) = golden_api(dir.path(), "sg_authfail_").await;
    let now = unix_now();
    let secret = crate::replication::harness::TEST_SECRET.as_bytes();
    let good_claims = json!({"sub": "user1", "aud": "syncgate-test", "iat": now, "exp": now + 600});
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "PSYNC_S2106"),
        ("garbled header", Some("Token".to_owned()), "PSYNC_S2106"),
        ("not a JWT", Some("Token abc.def".to_owned()), "PSYNC_S2101"),
        (
            "expired",
            Some(format!(
                "Token {}",
                signed(
                    &json!({"sub": "user1", "aud": "syncgate-test", "iat": now - 7200, "exp": now - 3600}),
                    secret,
                    Some("test-hs256")
                )
            )),
            "PSYNC_S2103",
        ),
        (
            "wrong key",
            Some(format!(
                "Token {}",
                signed(
                    &good_claims,
                    b"some-other-secret-0123456789abcdef",
                    Some("test-hs256")
                )
            )),
            "PSYNC_S2101",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                signed(
                    &json!({"sub": "user1", "aud": "other", "iat": now, "exp": now + 600}),
                    secret,
                    Some("test-hs256")
                )
            )),
            "PSYNC_S2105",
        ),
    ];
    for (what, header, code) in cases {
        for (method, path) in [
            ("POST", "/sync/stream"),
            ("GET", "/write-checkpoint2.json?client_id=c"),
        ] {
            let mut request = api
                .http
                .request(method.parse().expect("method"), format!("{}{path}", api.base))
                // A malformed body must not matter: the token is checked first.
                .body("{not json");
            if let Some(header) = &header {
                request = request.header("authorization", header);
            }
            let response = request.send().await.expect("response");
            assert_eq!(response.status(), 401, "{what} {path}");
            assert_eq!(
                response.headers()["access-control-allow-origin"],
                "*",
                "CORS headers on errors too"
            );
            let body: Value =
                serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body");
            assert_eq!(body["error"]["code"], json!(code), "{what} {path}: {body}");
            assert_eq!(body["error"]["status"], json!(401));
            assert!(
                !body["error"]["description"]
                    .as_str()
                    .expect("description")
                    .is_empty()
            );
        }
    }

    // A good token with a malformed or oversize body: 400 / 413, and the server goes on serving.
    let token = format!("Token {}", signed(&good_claims, secret, Some("test-hs256")));
    for (body, status) in [
        ("{not json".to_owned(), 400),
        ("[1,2]".to_owned(), 400),
        (r#"{"buckets":[{"name":"x","after":"-5"}]}"#.to_owned(), 400),
        (
            r#"{"buckets":[{"name":"x","after":"99999999999999999999999"}]}"#.to_owned(),
            400,
        ),
        (
            format!(r#"{{"parameters":{{"x":"{}"}}}}"#, "y".repeat(2 * 1024 * 1024)),
            413,
        ),
    ] {
        let response = api
            .http
            .post(format!("{}/sync/stream", api.base))
            .header("authorization", &token)
            .body(body.clone())
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), status, "{}", &body[..body.len().min(80)]);
        if status == 413 {
            // The unread rest of the body makes the connection unusable; the client must not reuse it.
            assert_eq!(
                response.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..])
            );
        }
        let error: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
        assert_eq!(error["error"]["status"], json!(status));
    }
    let response = api
        .http
        .get(format!("{}/no/such/route", api.base))
        .send()
        .await
        .expect("404");
    assert_eq!(response.status(), 404);

    // Still serving: a real stream works after all that.
    let mut stream = api.stream("user1", "{}", "application/x-ndjson").await;
    assert!(stream.next_line().await.get("checkpoint").is_some());
    drop(stream);
    api.gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_gets_a_gzipped_bson_stream_and_probes_and_metrics_answer() {
    use std::io::Read as _;

    let dir = tempfile::tempdir().expect("dir");
    let (_db, api) = golden_api(dir.path(), "sg_bson_").await;
    let liveness = api
        .http
        .get(format!("{}/probes/liveness", api.base))
        .send()
        .await
        .expect("liveness");
    assert_eq!(liveness.status(), 200);

    // What the official SDK sends (golden sdk-recorded request).
    let recorded: Value =
        serde_json::from_str(&golden("sdk-recorded/002-POST_sync_stream.json")).expect("json");
    let body = recorded["request"]["body"].as_str().expect("body").to_owned();
    let mut response = api
        .http
        .post(format!("{}/sync/stream", api.base))
        .header(
            "authorization",
            format!("Token {}", api.token("user1", Duration::from_secs(600))),
        )
        .header("content-type", "application/json")
        .header(
            "accept",
            "application/vnd.powersync.bson-stream;q=0.9,application/x-ndjson;q=0.8",
        )
        .header("accept-encoding", "gzip, deflate")
        .body(body)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.powersync.bson-stream"
    );
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["x-accel-buffering"], "no");

    // Read until the complete is decodable: every chunk must inflate without waiting for more.
    let mut compressed = Vec::new();
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &syncgate_protocol::SyncLine| {
        matches!(l, syncgate_protocol::SyncLine::CheckpointComplete(_))
    }) {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("chunk in time")
            .expect("read")
            .expect("open");
        compressed.extend_from_slice(&chunk);
        let mut inflated = Vec::new();
        let _ = flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut inflated);
        lines = syncgate_protocol::bson::split_documents(&inflated)
            .expect("whole BSON documents")
            .into_iter()
            .map(|doc| {
                syncgate_protocol::SyncLine::from_bson(doc)
                    .expect("a sync line")
                    .expect("known line type")
            })
            .collect();
    }
    assert!(matches!(lines[0], syncgate_protocol::SyncLine::Checkpoint(_)));
    assert_eq!(lines.len(), 4, "checkpoint, two data lines, complete: {lines:?}");

    let metrics = api.metrics().await;
    assert!(metrics.contains("\nsyncgate_connections 1\n"), "{metrics}");
    assert!(metrics.contains("syncgate_ops_sent_total 4\n"), "{metrics}");
    drop(response);
    api.gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_positions_and_a_thousand_reconnects_leave_the_server_unharmed() {
    let dir = tempfile::tempdir().expect("dir");
    let (_db, api) = golden_api(dir.path(), "sg_churn_").await;

    // A position beyond every op: the checkpoint is sent, nothing of that bucket, then the complete.
    let mut stream = api
        .stream(
            "user1",
            r#"{"buckets":[{"name":"1#global[]","after":"9223372036854775806"},{"name":"nope[]","after":"3"}]}"#,
            "application/x-ndjson",
        )
        .await;
    let lines = stream.until_complete().await;
    assert!(lines[0].get("checkpoint").is_some());
    drop(stream);

    let started = std::time::Instant::now();
    for i in 0..1000 {
        let mut stream = api
            .stream(
                if i % 2 == 0 { "user1" } else { "user2" },
                "{}",
                "application/x-ndjson",
            )
            .await;
        assert!(
            stream.next_line().await.get("checkpoint").is_some(),
            "connect {i}"
        );
    }
    eprintln!("1,000 connects and disconnects in {:?}", started.elapsed());
    // Every session notices its client left and ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = api.metrics().await;
        if metrics.contains("\nsyncgate_connections 0\n") {
            assert!(metrics.contains("syncgate_connections_total 1001\n"), "{metrics}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions did not end: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = api.stream("user1", "{}", "application/x-ndjson").await;
    assert_eq!(stream.until_complete().await.len(), 4, "a full sync still works");
    drop(stream);
    api.gateway.stop().await;
}
