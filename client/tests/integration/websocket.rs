//! The WebSocket transport's flow control against a scripted RSocket service on loopback, which checks
//! the client's side of the protocol frame by frame: what a real gateway enforces silently (it simply
//! stops sending) is asserted here. The service sends a line only while the client has request-N credit
//! and records every grant; it asks for a KEEPALIVE answer mid-stream. The client must open with a window
//! of 10, never hold more than 10 lines of credit, top it up as it consumes, echo the keepalive and apply
//! the 40-line checkpoint.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use serde_json::{Value, json};
use syncgate_client::{ConnectionMethod, SyncDriver, SyncOptions};
use syncgate_protocol::SyncLine;
use syncgate_protocol::bson::NumberPolicy;
use syncgate_protocol::rsocket::Frame;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{DESCRIPTION_TODOS, FixedConnector, in_memory_db, multi_thread_runtime};

const OPS: u32 = 40;
const WINDOW: u64 = 10;

/// What the scripted service saw.
#[derive(Debug, Default)]
struct Seen {
    setup_metadata: Value,
    request: Value,
    initial_n: u32,
    request_n: Vec<u32>,
    /// The most credit the client held at once.
    max_credit: u64,
    keepalive_echo: Option<Bytes>,
    /// Credit granted and not used once the client closed the socket.
    credit_left: u64,
}

/// A checkpoint with one bucket of `OPS` single-op data lines, then its completion: `OPS + 2` lines.
fn lines() -> Vec<SyncLine> {
    let checksum: u32 = (1..=OPS).sum();
    let mut lines = vec![json!({"checkpoint": {"last_op_id": OPS.to_string(), "buckets": [
        {"bucket": "b", "checksum": checksum, "count": OPS, "priority": 3}
    ]}})];
    for op in 1..=OPS {
        lines.push(json!({"data": {"bucket": "b", "after": (op - 1).to_string(), "next_after": op.to_string(), "has_more": false, "data": [{
            "op_id": op.to_string(), "op": "PUT", "object_type": "todos", "object_id": format!("t{op:02}"),
            "checksum": op, "data": json!({"description": format!("todo {op}")}).to_string()
        }]}}));
    }
    lines.push(json!({"checkpoint_complete": {"last_op_id": OPS.to_string()}}));
    lines
        .into_iter()
        .map(|v| SyncLine::from_value(v).expect("valid line").expect("known line"))
        .collect()
}

async fn next_frame(socket: &mut WebSocketStream<TcpStream>) -> Frame {
    loop {
        match socket.next().await.expect("socket open").expect("read") {
            Message::Binary(bytes) => return Frame::decode(&bytes).expect("a valid frame"),
            Message::Close(_) => panic!("the client closed the socket mid-stream"),
            _ => {}
        }
    }
}

async fn serve(listener: TcpListener) -> Seen {
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut socket = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
    let mut seen = Seen::default();
    let Frame::Setup(setup) = next_frame(&mut socket).await else {
        panic!("the first frame must be SETUP")
    };
    assert_eq!((setup.major_version, setup.keepalive_interval_ms), (1, 20_000));
    assert_eq!(
        (setup.metadata_mime.as_str(), setup.data_mime.as_str()),
        ("application/json", "application/json")
    );
    seen.setup_metadata = serde_json::from_slice(&setup.payload.metadata.expect("metadata")).expect("JSON");
    let Frame::RequestStream {
        stream_id,
        initial_n,
        payload,
        ..
    } = next_frame(&mut socket).await
    else {
        panic!("REQUEST_STREAM expected")
    };
    seen.initial_n = initial_n;
    seen.request = serde_json::from_slice(&payload.data).expect("JSON request");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload.metadata.expect("metadata")).expect("JSON"),
        json!({"path": "/sync/stream"})
    );

    let mut credit = u64::from(initial_n);
    seen.max_credit = credit;
    let lines = lines();
    let keepalive_at = lines.len() / 2;
    for (index, line) in lines.iter().enumerate() {
        if index == keepalive_at {
            let ping = Frame::Keepalive {
                respond: true,
                last_received_position: 0,
                data: Bytes::from_static(b"ping"),
            };
            socket.send(Message::binary(ping.encode())).await.expect("send");
        }
        // Take in the frames already there (grants count as soon as they arrive), and without credit wait
        // for the client to grant more (it must, as it consumes).
        loop {
            let frame = if credit == 0 {
                Some(next_frame(&mut socket).await)
            } else {
                match socket.next().now_or_never() {
                    Some(Some(Ok(Message::Binary(bytes)))) => {
                        Some(Frame::decode(&bytes).expect("a valid frame"))
                    }
                    Some(Some(Ok(_))) => continue,
                    Some(None | Some(Err(_))) => panic!("the client closed the socket mid-stream"),
                    None => None,
                }
            };
            let Some(frame) = frame else { break };
            on_frame(frame, stream_id, &mut seen, &mut credit);
        }
        let mut bson = Vec::new();
        line.write_bson(NumberPolicy::Syncgate, &mut bson);
        socket
            .send(Message::binary(Frame::next(stream_id, bson).encode()))
            .await
            .expect("send");
        credit -= 1;
    }
    // Everything the client sends until it closes the socket (after applying the checkpoint).
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Binary(bytes) = message {
            on_frame(
                Frame::decode(&bytes).expect("a valid frame"),
                stream_id,
                &mut seen,
                &mut credit,
            );
        }
    }
    seen.credit_left = credit;
    seen
}

fn on_frame(frame: Frame, stream_id: u32, seen: &mut Seen, credit: &mut u64) {
    match frame {
        Frame::RequestN { stream_id: id, n } if id == stream_id => {
            seen.request_n.push(n);
            *credit += u64::from(n);
            seen.max_credit = seen.max_credit.max(*credit);
        }
        Frame::Keepalive {
            respond: false, data, ..
        } => seen.keepalive_echo = Some(data),
        other => panic!("unexpected frame {other:?}"),
    }
}

#[test]
fn websocket_stream_grants_credit_as_lines_are_consumed_and_answers_keepalives() {
    // Two threads, so the service sees the client's frames as they come rather than when it yields.
    let runtime = multi_thread_runtime(2);
    let (seen, result, db) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(serve(listener));
        let db = in_memory_db(DESCRIPTION_TODOS);
        let mut driver = SyncDriver::new(
            db,
            FixedConnector::new(endpoint, "token-1".to_owned()),
            SyncOptions {
                connection_method: ConnectionMethod::WebSocket,
                stop_after_first_sync: true,
                max_consecutive_failures: Some(1),
                ..SyncOptions::default()
            },
        );
        let result = tokio::time::timeout(Duration::from_secs(60), driver.run())
            .await
            .expect("the driver finishes within 60 s");
        let db = driver.into_database();
        // The driver is gone: its socket closed, so the service's last read ends.
        let seen = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the service finishes")
            .expect("the service did not panic");
        (seen, result, db)
    });
    assert!(result.is_ok(), "{result:?}; service saw {seen:?}");

    assert_eq!(seen.setup_metadata["token"], "Token token-1");
    assert!(
        seen.setup_metadata["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("syncgate-client/"))
    );
    assert_eq!(seen.request["buckets"], json!([]));
    assert_eq!(u64::from(seen.initial_n), WINDOW);
    assert!(
        seen.max_credit <= WINDOW,
        "the client granted more than its window: {seen:?}"
    );
    let granted: u64 = u64::from(seen.initial_n) + seen.request_n.iter().map(|n| u64::from(*n)).sum::<u64>();
    assert!(
        granted >= u64::from(OPS) + 2,
        "all {} lines were granted: {seen:?}",
        OPS + 2
    );
    assert_eq!(seen.keepalive_echo.as_deref(), Some(&b"ping"[..]), "{seen:?}");

    let rows = db
        .query_json("SELECT id, description FROM todos ORDER BY id")
        .expect("query");
    assert_eq!(rows.len(), usize::try_from(OPS).expect("small"));
    assert_eq!(
        Value::Object(rows[39].clone()),
        json!({"id": "t40", "description": "todo 40"})
    );
}
