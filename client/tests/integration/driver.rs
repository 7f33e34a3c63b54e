//! The driver against a scripted service: a plain HTTP/1.1 server answering each `POST /sync/stream` with
//! the next canned response built from the reference's captured stream (testdata/golden/stream-user1.ndjson),
//! and recording every request. Covers what a real gateway does not produce on demand: a 401 that new
//! credentials cure, a checksum mismatch, a gzipped body, and the resumed request after the mismatch. And
//! the upload fields of the sync status while an in-process backend refuses, then accepts, the queue.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use syncgate_client::{BackendConnector, ClientError, Credentials, CrudTransaction, SyncDriver, SyncOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::support::{DESCRIPTION_TODOS, in_memory_db, rows_json};

/// A request as the service saw it.
#[derive(Debug, Clone)]
struct SeenRequest {
    authorization: String,
    body: Value,
}

/// A canned answer.
enum Answer {
    Status(u16, &'static str),
    Lines { lines: Vec<String>, gzip: bool },
}

/// Answers requests in order with `answers`, then hangs up on any further one.
async fn serve(listener: TcpListener, answers: Vec<Answer>, seen: Arc<Mutex<Vec<SeenRequest>>>) {
    for answer in answers {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut socket).await;
        seen.lock().expect("lock").push(request);
        let response = match answer {
            Answer::Status(status, body) => format!(
                "HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            Answer::Lines { lines, gzip } => {
                let mut body: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
                let mut head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n".to_owned();
                if gzip {
                    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
                    std::io::Write::write_all(&mut encoder, &body).expect("gzip");
                    body = encoder.finish().expect("gzip");
                    head.push_str("Content-Encoding: gzip\r\n");
                }
                let mut response = format!("{head}\r\n").into_bytes();
                response.extend_from_slice(&body);
                response
            }
        };
        socket.write_all(&response).await.expect("write response");
        socket.shutdown().await.expect("shutdown");
    }
}

/// Reads one request: headers, then a `Content-Length` body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> SeenRequest {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = socket.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client closed before sending a request");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().expect("content-length");
    while buffer.len() < header_end + length {
        let n = socket.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "client closed mid-body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    SeenRequest {
        authorization: header("authorization"),
        body: serde_json::from_slice(&buffer[header_end..header_end + length]).expect("JSON body"),
    }
}

/// Hands out `token-1` first and `token-2` on every later call.
struct CountingConnector {
    endpoint: String,
    calls: AtomicUsize,
}

impl BackendConnector for CountingConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Credentials {
            endpoint: self.endpoint.clone(),
            token: format!("token-{}", call.min(2)),
        })
    }

    async fn upload_data(&self, _transaction: &CrudTransaction) -> Result<(), ClientError> {
        Err(ClientError::Connector("no uploads in this test".to_owned()))
    }
}

fn golden_lines(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/golden")
        .join(name);
    std::fs::read_to_string(&path)
        .expect("golden file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("golden JSON"))
        .collect()
}

#[test]
fn driver_refreshes_credentials_on_401_and_recovers_from_a_checksum_mismatch() {
    // The initial sync of the captured stream: checkpoint 5, global data, user_todos data, complete.
    let initial: Vec<Value> = golden_lines("stream-user1.ndjson").into_iter().take(4).collect();
    assert!(initial[3].get("checkpoint_complete").is_some());
    let mut corrupted = initial.clone();
    // One op checksum off by one: user_todos no longer adds up to its checkpoint checksum.
    let op = &mut corrupted[2]["data"]["data"][0]["checksum"];
    *op = json!(op.as_u64().expect("checksum") + 1);
    // After the mismatch, the service sends what the resumed request lacks: user_todos from 0.
    let resumed = vec![initial[0].clone(), initial[2].clone(), initial[3].clone()];
    let to_lines = |values: &[Value]| values.iter().map(Value::to_string).collect::<Vec<_>>();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (result, db) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(serve(
            listener,
            vec![
                Answer::Status(
                    401,
                    r#"{"error":{"code":"PSYNC_S2103","status":401,"description":"JWT has expired"}}"#,
                ),
                Answer::Lines {
                    lines: to_lines(&corrupted),
                    gzip: false,
                },
                Answer::Lines {
                    lines: to_lines(&resumed),
                    gzip: true,
                },
            ],
            seen.clone(),
        ));
        let db = in_memory_db(
            r#"{"tables": [{"name": "lists", "columns": [{"name": "name", "type": "text"}]},
               {"name": "todos", "columns": [{"name": "description", "type": "text"},
                                             {"name": "completed", "type": "integer"}]}]}"#,
        );
        let mut driver = SyncDriver::new(
            db,
            CountingConnector {
                endpoint,
                calls: AtomicUsize::new(0),
            },
            SyncOptions {
                retry_delay: Duration::from_millis(10),
                stop_after_first_sync: true,
                max_consecutive_failures: Some(5),
                ..SyncOptions::default()
            },
        );
        let result = tokio::time::timeout(Duration::from_secs(60), driver.run())
            .await
            .expect("the driver finishes within 60 s");
        server.abort();
        (result, driver.into_database())
    });
    let seen = seen.lock().expect("lock").clone();
    assert!(result.is_ok(), "{result:?}; requests {seen:?}");

    let authorizations: Vec<&str> = seen.iter().map(|r| r.authorization.as_str()).collect();
    assert_eq!(
        authorizations,
        ["Token token-1", "Token token-2", "Token token-2"]
    );
    assert_eq!(seen[1].body["buckets"], json!([]));
    // Resumed from the stored position of the good bucket; the mismatching one starts again from 0.
    assert_eq!(
        seen[2].body["buckets"],
        json!([{"name": "1#global[]", "after": "2"}])
    );
    assert_eq!(seen[2].body["client_id"], seen[1].body["client_id"]);

    let rows = |sql: &str| rows_json(&db, sql);
    assert_eq!(
        rows("SELECT name FROM lists ORDER BY id"),
        json!([{"name": "Groceries"}, {"name": "Work"}])
    );
    assert_eq!(
        rows("SELECT description, completed FROM todos ORDER BY id"),
        json!([{"description": "milk", "completed": 0}, {"description": "bread", "completed": 0}])
    );
    let positions: Vec<(String, u64)> = db
        .stored_buckets()
        .expect("buckets")
        .into_iter()
        .map(|b| (b.name.to_string(), b.last_op.get()))
        .collect();
    assert_eq!(
        positions,
        [
            ("1#global[]".to_owned(), 5),
            ("1#user_todos[\"user1\"]".to_owned(), 5)
        ]
    );
}

/// Refuses the first `refusals` uploads, then accepts; each upload takes a moment, as over a network.
struct FlakyBackend {
    refusals: usize,
    calls: AtomicUsize,
}

impl BackendConnector for FlakyBackend {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        // Nothing listens there: streams and write-checkpoint requests fail, uploads go on regardless.
        Ok(Credentials {
            endpoint: "http://127.0.0.1:1".to_owned(),
            token: "token".to_owned(),
        })
    }

    async fn upload_data(&self, _transaction: &CrudTransaction) -> Result<(), ClientError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.refusals {
            return Err(ClientError::Connector("backend down".to_owned()));
        }
        Ok(())
    }
}

#[test]
fn the_status_follows_uploads_through_refusals_to_an_empty_queue() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let statuses = runtime.block_on(async {
        let mut db = in_memory_db(DESCRIPTION_TODOS);
        db.write_transaction(|tx| {
            tx.execute("INSERT INTO todos(id, description) VALUES ('t1', 'a')", [])?;
            tx.execute("INSERT INTO todos(id, description) VALUES ('t2', 'b')", [])?;
            Ok(())
        })
        .expect("local write");
        let mut driver = SyncDriver::new(
            db,
            FlakyBackend {
                refusals: 2,
                calls: AtomicUsize::new(0),
            },
            SyncOptions {
                retry_delay: Duration::from_millis(20),
                max_retry_delay: Duration::from_millis(100),
                upload_poll_interval: Duration::from_millis(20),
                ..SyncOptions::default()
            },
        );
        let mut receiver = driver.subscribe_status();
        let sync = tokio::spawn(async move { driver.run().await });
        let mut statuses = Vec::new();
        let done = tokio::time::timeout(Duration::from_secs(60), async {
            while receiver.changed().await.is_ok() {
                let status = receiver.borrow_and_update().clone();
                let drained = status.upload_pending == 0 && statuses.len() > 1;
                statuses.push(status);
                if drained {
                    return;
                }
            }
        })
        .await;
        sync.abort();
        assert!(done.is_ok(), "the queue did not drain: {statuses:#?}");
        statuses
    });
    let refused = statuses
        .iter()
        .position(|s| {
            s.upload_pending == 2
                && !s.uploading
                && s.last_upload_error
                    .as_deref()
                    .is_some_and(|e| e.contains("backend down"))
        })
        .unwrap_or_else(|| panic!("no status shows the refused upload: {statuses:#?}"));
    assert!(
        statuses[..refused]
            .iter()
            .any(|s| s.uploading && s.upload_pending == 2),
        "the upload in flight shows first: {statuses:#?}"
    );
    let last = statuses.last().expect("statuses");
    assert!(
        last.upload_pending == 0 && !last.uploading && last.last_upload_error.is_none(),
        "accepted at last, the error is cleared: {statuses:#?}"
    );
}
