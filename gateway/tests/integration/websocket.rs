//! The WebSocket (RSocket) transport against a real gateway and Postgres: SETUP with token metadata,
//! request-N credit, BSON PAYLOADs, live changes, KEEPALIVE echo, CANCEL, errors and shutdown, as the
//! PowerSync SDKs use it with `connectionMethod: 'web-socket'`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use syncgate::api::rsocket::{Frame, Payload, Setup, error_code};
use syncgate_protocol::SyncLine;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sync_api::{Api, golden, golden_api, signed, unix_now};

/// A minimal RSocket client: one frame per binary WebSocket message.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn connect(api: &Api, path: &str) -> Client {
        Client::connect_to(&api.base, path).await
    }

    /// Upgrades `{base}{path}` (`base` as `http://host:port`) to a WebSocket.
    pub(crate) async fn connect_to(base: &str, path: &str) -> Client {
        let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
        let (ws, response) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
        assert_eq!(response.status(), 101);
        Client { ws }
    }

    async fn send(&mut self, frame: &Frame) {
        self.ws
            .send(Message::binary(frame.encode()))
            .await
            .expect("send frame");
    }

    /// The next frame, or `None` once the server closed the socket.
    async fn recv(&mut self) -> Option<Frame> {
        self.recv_within(Duration::from_secs(30))
            .await
            .expect("a frame within 30 s")
    }

    /// `Err` if nothing arrived in time.
    async fn recv_within(&mut self, timeout: Duration) -> Result<Option<Frame>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ())?;
            match message {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Binary(bytes))) => {
                    return Ok(Some(Frame::decode(&bytes).expect("a valid frame")));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// SETUP as the SDK sends it: JSON MIME types, token and user agent in the metadata.
    pub(crate) async fn setup(&mut self, authorization: Option<&str>, lifetime_ms: u32) {
        let metadata = match authorization {
            Some(token) => json!({"token": token, "user_agent": "syncgate-test/1"}),
            None => json!({"user_agent": "syncgate-test/1"}),
        };
        self.send(&setup_frame(
            "application/json",
            metadata.to_string().into_bytes(),
            lifetime_ms,
        ))
        .await;
    }

    pub(crate) async fn request_stream(&mut self, stream_id: u32, initial_n: u32, body: &str) {
        self.send(&Frame::RequestStream {
            stream_id,
            initial_n,
            follows: false,
            payload: Payload::with_metadata(
                json!({"path": "/sync/stream"}).to_string().into_bytes(),
                body.as_bytes().to_vec(),
            ),
        })
        .await;
    }

    /// The next sync line of `stream_id`, `token_expires_in` keepalives skipped.
    pub(crate) async fn next_line(&mut self, stream_id: u32) -> SyncLine {
        loop {
            let frame = self.recv().await.expect("socket open");
            let Frame::Payload {
                stream_id: id,
                next: true,
                complete: false,
                payload,
                ..
            } = frame
            else {
                panic!("expected PAYLOAD(NEXT), got {frame:?}");
            };
            assert_eq!(id, stream_id);
            assert!(payload.metadata.is_none());
            let line = SyncLine::from_bson(&payload.data)
                .expect("one BSON sync line")
                .expect("known line type");
            if !matches!(line, SyncLine::TokenExpiresIn(_)) {
                return line;
            }
        }
    }
}

fn setup_frame(mime: &str, metadata: Vec<u8>, lifetime_ms: u32) -> Frame {
    Frame::Setup(Setup {
        major_version: 1,
        minor_version: 0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: lifetime_ms,
        resume_token: None,
        lease: false,
        metadata_mime: mime.into(),
        data_mime: mime.into(),
        payload: Payload::with_metadata(metadata, Bytes::new()),
    })
}

/// A BSON document of string fields (what older SDKs send with `application/bson`).
fn bson_strings(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut doc = vec![0; 4];
    for (key, value) in fields {
        doc.push(0x02);
        doc.extend_from_slice(key.as_bytes());
        doc.push(0);
        let len = i32::try_from(value.len() + 1).expect("short");
        doc.extend_from_slice(&len.to_le_bytes());
        doc.extend_from_slice(value.as_bytes());
        doc.push(0);
    }
    doc.push(0);
    let len = i32::try_from(doc.len()).expect("short").to_le_bytes();
    doc[..4].copy_from_slice(&len);
    doc
}

async fn connections_gauge(api: &Api) -> u64 {
    let metrics = api.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("syncgate_connections "))
        .expect("connections gauge")
        .parse()
        .expect("number")
}

async fn wait_for_gauge(api: &Api, want: u64) {
    let started = std::time::Instant::now();
    while connections_gauge(api).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "connections gauge never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn request_body() -> String {
    let recorded: serde_json::Value =
        serde_json::from_str(&golden("sdk-recorded/002-POST_sync_stream.json")).expect("json");
    recorded["request"]["body"].as_str().expect("body").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stream_syncs_under_request_n_credit_and_follows_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let (db, api) = golden_api(dir.path(), "sg_ws_").await;
    let token = format!("Token {}", api.token("user1", Duration::from_secs(600)));

    let mut client = Client::connect(&api, "/sync/stream").await;
    client.setup(Some(&token), 60_000).await;
    client.request_stream(1, 1, &request_body()).await;

    // One credit: the checkpoint, then nothing until more is requested.
    assert!(matches!(client.next_line(1).await, SyncLine::Checkpoint(_)));
    assert_eq!(
        client.recv_within(Duration::from_millis(700)).await,
        Err(()),
        "nothing is sent without credit"
    );
    assert_eq!(connections_gauge(&api).await, 1);

    // KEEPALIVE with the respond flag is answered at once, echoing its data, even without credit.
    client
        .send(&Frame::Keepalive {
            respond: true,
            last_received_position: 0,
            data: Bytes::from_static(b"are you there"),
        })
        .await;
    assert_eq!(
        client.recv().await,
        Some(Frame::Keepalive {
            respond: false,
            last_received_position: 0,
            data: Bytes::from_static(b"are you there"),
        })
    );

    // More credit: the rest of the initial sync (two data lines and the complete, as over HTTP).
    client.send(&Frame::RequestN { stream_id: 1, n: 3 }).await;
    assert!(matches!(client.next_line(1).await, SyncLine::Data(_)));
    assert!(matches!(client.next_line(1).await, SyncLine::Data(_)));
    assert!(matches!(
        client.next_line(1).await,
        SyncLine::CheckpointComplete(_)
    ));

    // A second stream while one is active is refused on its own stream id; the first goes on.
    client.request_stream(3, 1, "{}").await;
    let refused = client.recv().await.expect("open");
    let Frame::Error {
        stream_id: 3,
        code: error_code::REJECTED,
        message,
    } = &refused
    else {
        panic!("expected ERROR on stream 3, got {refused:?}");
    };
    assert!(message.contains("one sync stream per connection"), "{message}");

    // A live change arrives as a diff with its data and complete.
    client.send(&Frame::RequestN { stream_id: 1, n: 10 }).await;
    db.psql(
        "UPDATE todos SET description = 'milk (2l)', completed = true \
         WHERE id = 'aaaaaaaa-0000-4000-8000-000000000001'",
    )
    .expect("update");
    let SyncLine::CheckpointDiff(diff) = client.next_line(1).await else {
        panic!("expected a checkpoint_diff");
    };
    assert_eq!(diff.updated_buckets.len(), 1, "{diff:?}");
    let SyncLine::Data(data) = client.next_line(1).await else {
        panic!("expected data");
    };
    assert!(
        data.data
            .iter()
            .any(|op| op.data.as_deref().is_some_and(|d| d.contains("milk (2l)"))),
        "{data:?}"
    );
    assert!(matches!(
        client.next_line(1).await,
        SyncLine::CheckpointComplete(_)
    ));

    // CANCEL ends the session: no further frames on the stream, and the gauge goes back to 0.
    client.send(&Frame::Cancel { stream_id: 1 }).await;
    wait_for_gauge(&api, 0).await;
    db.psql("DELETE FROM todos WHERE id = 'aaaaaaaa-0000-4000-8000-000000000002'")
        .expect("delete");
    assert_eq!(
        client.recv_within(Duration::from_millis(700)).await,
        Err(()),
        "nothing after CANCEL"
    );

    // The connection stays usable: a new stream from scratch, then shutdown completes it.
    client.request_stream(5, 10, "{}").await;
    assert!(matches!(client.next_line(5).await, SyncLine::Checkpoint(_)));
    wait_for_gauge(&api, 1).await;
    let gateway = api.gateway;
    let stopping = tokio::spawn(gateway.stop());
    let mut completed = false;
    while let Some(frame) = client.recv().await {
        match frame {
            Frame::Payload {
                stream_id: 5,
                complete: true,
                ..
            } => completed = true,
            Frame::Payload {
                stream_id: 5,
                next: true,
                complete: false,
                ..
            } => assert!(!completed, "no line after COMPLETE"),
            other => panic!("unexpected frame at shutdown: {other:?}"),
        }
    }
    assert!(completed, "the stream ends with COMPLETE on shutdown");
    stopping.await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_setup_and_stream_errors_carry_the_reference_codes() {
    let dir = tempfile::tempdir().expect("dir");
    let (_db, api) = golden_api(dir.path(), "sg_wserr_").await;
    let now = unix_now();
    let secret = crate::replication::harness::TEST_SECRET.as_bytes();
    let expired = format!(
        "Token {}",
        signed(
            &json!({"sub": "user1", "aud": "syncgate-test", "iat": now - 7200, "exp": now - 3600}),
            secret,
            Some("test-hs256")
        )
    );

    // Bad or missing tokens: ERROR on stream 0 (REJECTED_SETUP) whose message holds the code, then close.
    for (token, code) in [
        (Some(expired.as_str()), "PSYNC_S2103"),
        (Some("Token abc.def"), "PSYNC_S2101"),
        (None, "PSYNC_S2106"),
    ] {
        let mut client = Client::connect(&api, "/sync/stream").await;
        client.setup(token, 60_000).await;
        client.request_stream(1, 10, "{}").await;
        let frame = client.recv().await.expect("an ERROR frame");
        let Frame::Error {
            stream_id: 0,
            code: error_code::REJECTED_SETUP,
            message,
        } = &frame
        else {
            panic!("expected a setup ERROR, got {frame:?}");
        };
        assert!(message.starts_with(&format!("[{code}] ")), "{message}");
        assert!(
            message.contains("PSYNC_S21"),
            "the SDK invalidates credentials on this"
        );
        assert_eq!(client.recv().await, None, "closed after the ERROR");
    }

    // The first frame must be SETUP.
    let mut client = Client::connect(&api, "/").await;
    client.send(&Frame::RequestN { stream_id: 1, n: 1 }).await;
    assert!(matches!(
        client.recv().await,
        Some(Frame::Error {
            stream_id: 0,
            code: error_code::INVALID_SETUP,
            ..
        })
    ));
    assert_eq!(client.recv().await, None);

    // A malformed frame after SETUP is a connection error.
    let token = format!("Token {}", api.token("user1", Duration::from_secs(600)));
    let mut client = Client::connect(&api, "/sync/stream").await;
    client.setup(Some(&token), 60_000).await;
    client
        .ws
        .send(Message::binary(vec![0u8, 0, 0, 1, 0x19]))
        .await
        .expect("send");
    assert!(matches!(
        client.recv().await,
        Some(Frame::Error {
            stream_id: 0,
            code: error_code::CONNECTION_ERROR,
            ..
        })
    ));

    // A bad request body: ERROR on that stream with PSYNC_S2001; the connection stays usable.
    let mut client = Client::connect(&api, "/sync/stream").await;
    client.setup(Some(&token), 60_000).await;
    client.request_stream(1, 10, "{not json").await;
    let frame = client.recv().await.expect("open");
    let Frame::Error {
        stream_id: 1,
        message,
        ..
    } = &frame
    else {
        panic!("expected a stream ERROR, got {frame:?}");
    };
    assert!(message.starts_with("[PSYNC_S2001] "), "{message}");
    client.request_stream(3, 10, "{}").await;
    assert!(matches!(client.next_line(3).await, SyncLine::Checkpoint(_)));
    drop(client);

    // Older SDKs: BSON metadata and request body (MIME application/bson), on the root path.
    let mut client = Client::connect(&api, "").await;
    client
        .send(&setup_frame(
            "application/bson",
            bson_strings(&[("token", &token), ("user_agent", "powersync-js/1.0")]),
            60_000,
        ))
        .await;
    client
        .send(&Frame::RequestStream {
            stream_id: 1,
            initial_n: 10,
            follows: false,
            payload: Payload::with_metadata(
                bson_strings(&[("path", "/sync/stream")]),
                bson_strings(&[("client_id", "bson-client")]),
            ),
        })
        .await;
    assert!(matches!(client.next_line(1).await, SyncLine::Checkpoint(_)));
    drop(client);

    // A token that expires: `token_expires_in: 0` is delivered, then COMPLETE.
    let short = format!("Token {}", api.token("user1", Duration::from_secs(3)));
    let mut client = Client::connect(&api, "/sync/stream").await;
    client.setup(Some(&short), 60_000).await;
    client.request_stream(1, 100, "{}").await;
    let mut expired_line = false;
    loop {
        let frame = client.recv().await.expect("open");
        match frame {
            Frame::Payload {
                stream_id: 1,
                complete: true,
                ..
            } => break,
            Frame::Payload {
                stream_id: 1,
                payload,
                ..
            } => {
                let line = SyncLine::from_bson(&payload.data).expect("bson").expect("line");
                expired_line |= line == SyncLine::TokenExpiresIn(0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(expired_line, "token_expires_in: 0 before COMPLETE");

    // A client that goes silent for longer than its SETUP's lifetime is disconnected.
    let mut client = Client::connect(&api, "/sync/stream").await;
    client.setup(Some(&token), 1_000).await;
    let started = std::time::Instant::now();
    assert!(matches!(
        client.recv().await,
        Some(Frame::Error {
            stream_id: 0,
            code: error_code::CONNECTION_ERROR,
            ..
        })
    ));
    assert_eq!(client.recv().await, None);
    assert!(started.elapsed() < Duration::from_secs(5));

    wait_for_gauge(&api, 0).await;
    api.gateway.stop().await;
}
