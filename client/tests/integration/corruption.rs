//! A corrupted sync stream: an HTTP proxy in this test, between the client and the real gateway,
//! garbles one PUT of a `data` line (its row value and its op checksum, as a damaged transfer would), so
//! the bucket's checksum at `checkpoint_complete` no longer matches. The client must notice, drop the
//! bucket, download it again on a fresh stream (which the proxy leaves alone) and converge to Postgres's
//! rows, and the garbled value must never reach the app's tables — neither on the first download nor on
//! a live update, when the rows already synced must stay visible while the bucket downloads again.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use syncgate_client::{LocalDatabase, Schema};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    Deployment, GatewayProcess, Rules, USER_TODOS_RULES, client_binary, local_rows, multi_thread_runtime,
    pg_json, read_request, run_cli, token, wait_until_every, watch,
};
use crate::uploads::{status_field, status_lines};

const TIMEOUT: Duration = Duration::from_secs(120);

const SCHEMA: &str = r#"{"tables": [{"name": "todos", "columns": [
  {"name": "description", "type": "text"}, {"name": "owner_id", "type": "text"}]}]}"#;

const CLIENT_TODOS: &str = "SELECT id, description, owner_id FROM todos ORDER BY id";
const PG_TODOS: &str =
    "SELECT id, description, owner_id FROM todos WHERE owner_id = 'user1' ORDER BY id COLLATE \"C\"";

/// What the proxy writes into the row it garbles.
const GARBLED: &str = "GARBLED IN TRANSIT";

/// The proxy's switches and counters.
#[derive(Default)]
struct Corruption {
    /// Garble the next PUT that passes in a `data` line (then disarm).
    armed: AtomicBool,
    garbled: AtomicUsize,
    streams: AtomicUsize,
    /// The body of each sync stream request, in order.
    requests: Mutex<Vec<Value>>,
}

/// Forwards every connection to the gateway at `upstream`; sync streams go through line by line.
async fn proxy(listener: TcpListener, upstream: u16, corruption: Arc<Corruption>) {
    loop {
        let (client, _) = listener.accept().await.expect("accept");
        let corruption = Arc::clone(&corruption);
        tokio::spawn(async move { forward(client, upstream, &corruption).await });
    }
}

async fn forward(mut client: TcpStream, upstream: u16, corruption: &Corruption) {
    let Some((head, body)) = read_request(&mut client).await else {
        return;
    };
    // One request per connection, and no gzip, so the NDJSON can be read and edited in flight.
    let mut request: Vec<String> = head
        .lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            !lower.starts_with("accept-encoding:") && !lower.starts_with("connection:")
        })
        .map(str::to_owned)
        .collect();
    request.push("Connection: close".to_owned());
    let is_stream = head.starts_with("POST /sync/stream");
    let stream = if is_stream {
        let request: Value = serde_json::from_slice(&body).expect("sync request is JSON");
        corruption.requests.lock().expect("lock").push(request);
        corruption.streams.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        0
    };
    let mut gateway = TcpStream::connect(("127.0.0.1", upstream))
        .await
        .expect("connect to the gateway");
    let mut bytes = (request.join("\r\n") + "\r\n\r\n").into_bytes();
    bytes.extend_from_slice(&body);
    gateway.write_all(&bytes).await.expect("forward request");
    let mut gateway = BufReader::new(gateway);
    let mut response_head = String::new();
    loop {
        let mut line = String::new();
        if gateway.read_line(&mut line).await.expect("response head") == 0 {
            return;
        }
        let end = line == "\r\n";
        response_head.push_str(&line);
        if end {
            break;
        }
    }
    if client.write_all(response_head.as_bytes()).await.is_err() {
        return;
    }
    let chunked = response_head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !(is_stream && chunked) {
        let _ = tokio::io::copy(&mut gateway, &mut client).await;
        return;
    }
    // Chunked NDJSON: decode, edit complete lines, send each as a chunk of its own.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let mut size_line = String::new();
        if gateway.read_line(&mut size_line).await.unwrap_or(0) == 0 {
            return;
        }
        let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
        let mut chunk = vec![0u8; size + 2];
        if gateway.read_exact(&mut chunk).await.is_err() {
            return;
        }
        chunk.truncate(size);
        if size == 0 {
            let _ = client.write_all(b"0\r\n\r\n").await;
            return;
        }
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = garble(line, corruption, stream);
            let mut out = format!("{:x}\r\n", line.len()).into_bytes();
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
            if client.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// If armed and `line` is a `data` line with a PUT on the newest stream (`stream`, counted from 1): that
/// PUT's row says [`GARBLED`] and its checksum is off by one. Older streams may still be forwarding
/// lines: the gateway notices a client has gone only when it next writes to it.
fn garble(line: Vec<u8>, corruption: &Corruption, stream: usize) -> Vec<u8> {
    if !corruption.armed.load(Ordering::SeqCst)
        || stream != corruption.streams.load(Ordering::SeqCst)
        || !line.starts_with(b"{\"data\"")
    {
        return line;
    }
    let mut value: Value = serde_json::from_slice(&line).expect("data line is JSON");
    let Some(op) = value["data"]["data"]
        .as_array_mut()
        .and_then(|ops| ops.iter_mut().find(|op| op["op"] == "PUT"))
    else {
        return line;
    };
    let mut row: Value = serde_json::from_str(op["data"].as_str().expect("raw data")).expect("row JSON");
    row["description"] = Value::String(GARBLED.to_owned());
    op["data"] = Value::String(row.to_string());
    let checksum = op["checksum"].as_i64().expect("checksum");
    op["checksum"] = Value::from((checksum + 1) % (1 << 32));
    corruption.armed.store(false, Ordering::SeqCst);
    corruption.garbled.fetch_add(1, Ordering::SeqCst);
    (value.to_string() + "\n").into_bytes()
}

fn sync_command(file: &Path, endpoint: &str) -> std::process::Command {
    let mut command = client_binary();
    command
        .arg("sync")
        .arg("--db")
        .arg(file)
        .args(["--endpoint", endpoint, "--token", &token("user1")])
        .args(["--retry-delay-ms", "200"]);
    command
}

/// [`wait_until_every`] 100 ms, up to `TIMEOUT`.
fn wait_for(what: &str, gateway: &GatewayProcess, done: impl FnMut() -> Result<(), String>) {
    wait_until_every(what, TIMEOUT, Duration::from_millis(100), gateway, done);
}

#[test]
fn a_checksum_mismatch_from_a_garbled_stream_is_detected_and_the_bucket_downloaded_again() {
    let deployment = Deployment::start(
        &["CREATE TABLE todos (id text PRIMARY KEY, description text NOT NULL, owner_id text NOT NULL);
         CREATE PUBLICATION powersync FOR TABLE todos;
         INSERT INTO todos SELECT 't' || lpad(g::text, 3, '0'), 'todo ' || g, 'user1' FROM generate_series(1, 50) g;
         INSERT INTO todos VALUES ('u1', 'other user', 'user2');"],
        Rules::Inline(USER_TODOS_RULES),
        &format!("client_corruption_{}_", std::process::id()),
    );
    let Deployment { gateway, work, db } = &deployment;
    let runtime = multi_thread_runtime(1);
    let listener = runtime
        .block_on(TcpListener::bind(("127.0.0.1", 0)))
        .expect("bind proxy");
    let proxy_endpoint = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let corruption = Arc::new(Corruption::default());
    runtime.spawn(proxy(listener, gateway.port, Arc::clone(&corruption)));

    let file = work.path().join("user1.db");
    LocalDatabase::open(&file)
        .expect("db")
        .set_schema(&Schema::from_text(SCHEMA).expect("schema"))
        .expect("set schema");
    // Every result the app's table shows, from a live query in its own process.
    let watch = watch(&file, CLIENT_TODOS);
    wait_for("the watch's first result", gateway, || {
        (!watch.lines.lock().expect("lock").is_empty())
            .then_some(())
            .ok_or("nothing yet".to_owned())
    });

    // 1. The first download is garbled: detected, downloaded again on a second stream, applied intact.
    corruption.armed.store(true, Ordering::SeqCst);
    let mut once = sync_command(&file, &proxy_endpoint);
    once.args(["--once", "--max-failures", "3"]);
    let (status, _, stderr) = run_cli(once, TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "sync --once failed:\n{stderr}"
    );
    assert_eq!(corruption.garbled.load(Ordering::SeqCst), 1, "one PUT garbled");
    assert_eq!(
        corruption.streams.load(Ordering::SeqCst),
        2,
        "a second stream downloads the bucket again"
    );
    assert!(stderr.contains("checksums didn't match"), "{stderr}");
    assert!(
        status_lines(&stderr).iter().any(|line| {
            status_field(line, "last_error").is_some_and(|e| e.contains("checksum mismatch for"))
        }),
        "the status reports the mismatch:\n{stderr}"
    );
    assert_eq!(local_rows(&file, CLIENT_TODOS), pg_json(db, PG_TODOS));

    // 2. A live update garbled on the open stream: the synced rows stay visible (unchanged) while the
    // bucket downloads again, then the update shows intact.
    let synced = local_rows(&file, CLIENT_TODOS);
    let log = work.path().join("sync.log");
    let mut sync = sync_command(&file, &proxy_endpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn sync");
    wait_for("the stream to resume", gateway, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("checkpoint applied").then_some(()).ok_or(text)
    });
    corruption.armed.store(true, Ordering::SeqCst);
    db.psql("UPDATE todos SET description = 'updated in postgres' WHERE id IN ('t007', 't042')")
        .expect("update");
    wait_for("the update to sync intact", gateway, || {
        let (local, expected) = (local_rows(&file, CLIENT_TODOS), pg_json(db, PG_TODOS));
        (local == expected && local.to_string().contains("updated in postgres"))
            .then_some(())
            .ok_or(format!("local {local}"))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        corruption.garbled.load(Ordering::SeqCst),
        2,
        "the update was garbled"
    );
    assert!(text.contains("checksums didn't match"), "{text}");
    // The stream after the mismatch asks for no bucket position: the bucket was dropped and downloads from
    // the start, where the one before resumed it.
    let requests = corruption.requests.lock().expect("lock").clone();
    assert!(
        requests.len() >= 4,
        "the live stream was closed and reopened: {requests:#?}"
    );
    let positions = |request: &Value| request["buckets"].as_array().map_or(0, Vec::len);
    assert_eq!(positions(&requests[2]), 1, "{:#}", requests[2]);
    assert_eq!(positions(&requests[3]), 0, "{:#}", requests[3]);
    sync.kill().expect("kill sync");
    sync.wait().expect("wait");

    // Give the watch a moment to print the last state, then read everything it saw.
    let expected_now = local_rows(&file, CLIENT_TODOS).to_string();
    wait_for("the watch's last result", gateway, || {
        let seen = watch.lines.lock().expect("lock");
        seen.iter()
            .any(|line| {
                serde_json::from_str::<Value>(line).ok().map(|v| v.to_string()) == Some(expected_now.clone())
            })
            .then_some(())
            .ok_or(format!("{} results", seen.len()))
    });
    let seen = watch.stop();
    assert!(
        seen.iter().all(|line| !line.contains(GARBLED)),
        "the garbled value reached the app's table: {seen:#?}"
    );
    let synced_at = seen
        .iter()
        .position(|line| serde_json::from_str::<Value>(line).ok().as_ref() == Some(&synced))
        .expect("the watch saw the first sync's rows");
    assert!(
        seen[synced_at..]
            .iter()
            .all(|line| serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                == Some(50)),
        "every row stayed visible while the bucket downloaded again: {seen:#?}"
    );
}
