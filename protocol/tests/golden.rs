//! Conformance against bytes captured from the reference PowerSync service (testdata/golden, unchanged
//! copies of the shared golden files; see its README for how they were recorded). The crate's one
//! integration-test binary: shapes the transcripts do not show are in the `roundtrip` module.

mod roundtrip;

use std::collections::HashMap;
use std::path::PathBuf;

use syncgate_protocol::{
    BucketName, Checksum, ErrorResponse, OpType, SyncLine, SyncRequest, WriteCheckpointResponse,
};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/golden")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(golden(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// Every captured NDJSON stream, as (file, lines). The keepalive capture prefixes each line with its
/// arrival time, which is stripped.
fn ndjson_streams() -> Vec<(&'static str, Vec<String>)> {
    let plain = [
        "stream-user1.ndjson",
        "stream-user2.ndjson",
        "stream-resume-user1.ndjson",
        "stream-user1-bson.decoded.ndjson",
        "sdk-recorded/002-POST_sync_stream.decoded.ndjson",
        "sdk-recorded-ndjson/001-POST_sync_stream.body",
    ];
    let mut streams: Vec<(&'static str, Vec<String>)> = plain
        .into_iter()
        .map(|f| {
            (
                f,
                read(f)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .collect();
    let timed = "keepalive-user2.timed.txt";
    let lines = read(timed)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_once(' ')
                .expect("timed line: '<time> <json>'")
                .1
                .to_owned()
        })
        .collect();
    streams.push((timed, lines));
    streams
}

/// Streams whose request started from an empty client (`buckets: []`), so the data lines carry every op
/// of every bucket and the bucket checksums can be recomputed from them.
const FROM_EMPTY: [&str; 5] = [
    "stream-user1.ndjson",
    "stream-user2.ndjson",
    "stream-user1-bson.decoded.ndjson",
    "sdk-recorded/002-POST_sync_stream.decoded.ndjson",
    "sdk-recorded-ndjson/001-POST_sync_stream.body",
];

fn parse_line(file: &str, text: &str) -> SyncLine {
    SyncLine::from_json(text)
        .unwrap_or_else(|e| panic!("{file}: {e}\n{text}"))
        .unwrap_or_else(|| panic!("{file}: line type not recognised: {text}"))
}

#[test]
fn every_captured_line_round_trips_byte_for_byte() {
    let mut count = 0;
    for (file, lines) in ndjson_streams() {
        for text in lines {
            let line = parse_line(file, &text);
            let again = line.to_json();
            let captured: serde_json::Value = serde_json::from_str(&text).unwrap();
            let ours: serde_json::Value = serde_json::from_str(&again).unwrap();
            assert_eq!(ours, captured, "{file}: re-serialized line differs");
            // Field order too: our lines can be diffed against the transcripts as text.
            assert_eq!(again, text, "{file}: re-serialized bytes differ");
            let mut ndjson = Vec::new();
            line.write_ndjson(&mut ndjson);
            assert_eq!(ndjson, format!("{text}\n").into_bytes());
            count += 1;
        }
    }
    assert!(count >= 52, "expected all golden lines, saw {count}");
}

#[test]
fn every_op_checksum_recomputes() {
    let mut checked = (0, 0);
    for (file, lines) in ndjson_streams() {
        for text in lines {
            let SyncLine::Data(data) = parse_line(file, &text) else {
                continue;
            };
            for op in &data.data {
                let expected = op
                    .expected_checksum()
                    .unwrap_or_else(|| panic!("{file}: op {op:?}"));
                assert_eq!(expected, op.checksum, "{file}: op {} ({:?})", op.op_id, op.op);
                match op.op {
                    OpType::Put => checked.0 += 1,
                    _ => checked.1 += 1,
                }
            }
        }
    }
    assert!(
        checked.0 > 20 && checked.1 > 4,
        "PUT/REMOVE ops checked: {checked:?}"
    );
}

/// Replays each stream like the client: bucket checksums from checkpoint/diff lines must equal the
/// wrapping sum of the ops received for the bucket, and counts their number, at every complete.
#[test]
fn bucket_checksums_are_wrapping_sums_of_op_checksums() {
    for (file, lines) in ndjson_streams()
        .into_iter()
        .filter(|(f, _)| FROM_EMPTY.contains(f))
    {
        let mut expected: HashMap<BucketName, (Checksum, u32)> = HashMap::new();
        let mut held: HashMap<BucketName, (Checksum, u32)> = HashMap::new();
        let mut completes = 0;
        for text in lines {
            match parse_line(file, &text) {
                SyncLine::Checkpoint(cp) => {
                    expected = cp
                        .buckets
                        .into_iter()
                        .map(|b| (b.bucket, (b.checksum, b.count)))
                        .collect();
                }
                SyncLine::CheckpointDiff(diff) => {
                    for name in diff.removed_buckets {
                        expected.remove(&name);
                    }
                    for b in diff.updated_buckets {
                        expected.insert(b.bucket, (b.checksum, b.count));
                    }
                }
                SyncLine::Data(data) => {
                    let entry = held.entry(data.bucket).or_insert((Checksum::ZERO, 0));
                    for op in data.data {
                        entry.0 += op.checksum;
                        entry.1 += 1;
                    }
                }
                SyncLine::CheckpointComplete(_) => {
                    completes += 1;
                    for (bucket, want) in &expected {
                        let got = held.get(bucket).copied().unwrap_or((Checksum::ZERO, 0));
                        assert_eq!(got, *want, "{file}: bucket {bucket} at complete #{completes}");
                    }
                }
                SyncLine::PartialCheckpointComplete(_) | SyncLine::TokenExpiresIn(_) => {}
            }
        }
        assert!(completes > 0, "{file}: no checkpoint_complete");
    }
}

#[test]
fn request_bodies_parse() {
    let mut bodies: Vec<(String, String)> = [
        "request-stream-user1.json",
        "request-stream-user2.json",
        "request-resume-user1.json",
        "request-stream-user1-bson.json",
    ]
    .into_iter()
    .map(|f| (f.to_owned(), read(f)))
    .collect();
    for recorded in [
        "sdk-recorded/002-POST_sync_stream.json",
        "sdk-recorded-ndjson/001-POST_sync_stream.json",
    ] {
        let exchange: serde_json::Value = serde_json::from_str(&read(recorded)).unwrap();
        let body = exchange["request"]["body"]
            .as_str()
            .expect("recorded request body")
            .to_owned();
        bodies.push((recorded.to_owned(), body));
    }
    for (file, body) in bodies {
        let req = SyncRequest::from_json(body.as_bytes()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            req.client_id.is_some() && req.raw_data && req.streams.include_defaults,
            "{file}"
        );
        assert_eq!(req.parameters, Some(serde_json::Map::new()), "{file}");
    }
    let resume = SyncRequest::from_json(read("request-resume-user1.json").as_bytes()).unwrap();
    assert_eq!(resume.buckets.len(), 3);
    assert!(resume.buckets.iter().all(|b| b.after.get() == 5));
    assert_eq!(resume.buckets[1].name.as_str(), "1#user_todos[\"user1\"]");
}

#[test]
fn write_checkpoint_responses_round_trip() {
    for file in [
        "write-checkpoint2.response.json",
        "sdk-recorded/003-GET_write-checkpoint2.json.body",
        "sdk-recorded-ndjson/002-GET_write-checkpoint2.json.body",
    ] {
        let text = read(file);
        let body: WriteCheckpointResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(body.data.write_checkpoint.get(), 1);
        assert_eq!(serde_json::to_string(&body).unwrap(), text.trim_end(), "{file}");
    }
}

#[test]
fn auth_error_bodies_round_trip() {
    for (file, code) in [
        ("error-no-token.http.txt", "PSYNC_S2106"),
        ("error-expired-token.http.txt", "PSYNC_S2103"),
        ("error-bad-signature.http.txt", "PSYNC_S2101"),
        ("error-write-checkpoint-no-token.http.txt", "PSYNC_S2106"),
    ] {
        let text = read(file);
        let text = text.replace("\r\n", "\n");
        let body = text
            .split_once("\n\n")
            .expect("HTTP head, blank line, body")
            .1
            .trim_end();
        let parsed: ErrorResponse = serde_json::from_str(body).unwrap();
        assert_eq!(
            (parsed.error.code.0.as_str(), parsed.error.status),
            (code, 401),
            "{file}"
        );
        let rebuilt = ErrorResponse::unauthorized(code, parsed.error.description.clone());
        assert_eq!(serde_json::to_string(&rebuilt).unwrap(), body, "{file}");
    }
}

/// Inflates a gzip capture that was cut off before its trailer, keeping everything that came out (the
/// recorder stopped mid-stream; every BSON document in it is complete, see the golden README).
fn gunzip_truncated(name: &str) -> Vec<u8> {
    use std::io::Read;
    let raw = std::fs::read(golden(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let mut out = Vec::new();
    // Only the missing trailer may fail; what was inflated before stays in `out`.
    let _ = flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out);
    assert!(!out.is_empty(), "{name}: nothing inflated");
    out
}

#[test]
fn bson_streams_decode_and_reencode_to_the_same_bytes() {
    use syncgate_protocol::bson::{NumberPolicy, decode_document, split_documents};
    for (raw, decoded) in [
        ("stream-user1-bson.raw.gz", "stream-user1-bson.decoded.ndjson"),
        (
            "sdk-recorded/002-POST_sync_stream.body",
            "sdk-recorded/002-POST_sync_stream.decoded.ndjson",
        ),
    ] {
        let bytes = gunzip_truncated(raw);
        let docs = split_documents(&bytes).unwrap_or_else(|e| panic!("{raw}: {e}"));
        let expected: Vec<String> = read(decoded)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(docs.len(), expected.len(), "{raw}: document count");
        for (doc, text) in docs.into_iter().zip(expected) {
            let value = decode_document(doc).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(
                value,
                serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                "{raw}"
            );
            let line = SyncLine::from_bson(doc).unwrap().expect("known line type");
            assert_eq!(
                line,
                parse_line(decoded, &text),
                "{raw}: BSON and JSON forms differ"
            );
            let mut reference = Vec::new();
            line.write_bson(NumberPolicy::Reference, &mut reference);
            assert_eq!(reference, doc, "{raw}: reference-policy bytes differ for {text}");
            let mut ours = Vec::new();
            line.write_bson(NumberPolicy::Syncgate, &mut ours);
            assert_eq!(
                SyncLine::from_bson(&ours).unwrap(),
                Some(line),
                "{raw}: syncgate-policy round trip"
            );
        }
    }
}
