//! Golden transcripts of the sync state machine: each file in tests/transcripts/ lists events fed in and
//! the instructions expected back, step by step. A transcript naming a `golden` file must feed exactly the
//! lines of that captured reference stream (testdata/golden/), in order.
//!
//! To write a new transcript, give only the events (`"instructions"` absent) and run with
//! `SYNCGATE_BLESS=1` to fill in what the state machine does now; then read the result before committing.

use std::path::{Path, PathBuf};

use serde_json::Value;
use syncgate_client::sync::{Instruction, SyncEvent, SyncStateMachine};
use syncgate_protocol::SyncLine;

fn transcripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts")
}

fn golden_lines(name: &str) -> Vec<SyncLine> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/golden")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            SyncLine::from_json(l)
                .expect("golden line parses")
                .expect("known line type")
        })
        .collect()
}

#[test]
fn state_machine_transcripts() {
    let bless = std::env::var_os("SYNCGATE_BLESS").is_some_and(|v| !v.is_empty());
    let mut files: Vec<PathBuf> = std::fs::read_dir(transcripts_dir())
        .expect("transcripts dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "transcripts missing: {files:?}");
    let mut failures = Vec::new();
    for file in files {
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        let mut transcript: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("transcript JSON");
        if let Some(golden) = transcript["golden"].as_str() {
            let fed: Vec<SyncLine> = transcript["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .filter_map(|s| match serde_json::from_value(s["event"].clone()) {
                    Ok(SyncEvent::LineReceived(line)) => Some(line),
                    _ => None,
                })
                .collect();
            assert_eq!(
                fed,
                golden_lines(golden),
                "{name}: must feed exactly the lines of {golden}"
            );
        }
        let mut machine = SyncStateMachine::new();
        let steps = transcript["steps"].as_array_mut().expect("steps");
        for (index, step) in steps.iter_mut().enumerate() {
            let event: SyncEvent = serde_json::from_value(step["event"].clone())
                .unwrap_or_else(|e| panic!("{name} step {index}: bad event: {e}"));
            let actual = machine.handle(event);
            let actual_json = serde_json::to_value(&actual).expect("instructions serialize");
            if bless {
                step["instructions"] = actual_json;
                continue;
            }
            let expected: Vec<Instruction> = serde_json::from_value(step["instructions"].clone())
                .unwrap_or_else(|e| panic!("{name} step {index}: bad or missing instructions: {e}"));
            if expected != actual {
                failures.push(format!(
                    "{name} step {index} ({}):\n  expected {}\n  actual   {}",
                    step["event"],
                    serde_json::to_string(&expected).expect("json"),
                    actual_json
                ));
                break;
            }
        }
        if bless {
            let text = serde_json::to_string_pretty(&transcript).expect("json") + "\n";
            std::fs::write(&file, text).expect("write blessed transcript");
        }
    }
    assert!(
        failures.is_empty(),
        "transcripts differ:\n{}",
        failures.join("\n")
    );
}

/// Client parameters and stream subscriptions of `RequestOptions` go into every stream request; without
/// them the request carries `{}` and auto-subscribed streams only (what the transcripts above show).
#[test]
fn request_options_reach_the_stream_request() {
    use syncgate_client::RequestOptions;
    use syncgate_protocol::{ClientId, StreamSubscription};

    let mut parameters = serde_json::Map::new();
    parameters.insert("project".into(), Value::from("rocket"));
    let subscription = StreamSubscription {
        stream: "project_notes".into(),
        parameters: Some(parameters.clone()),
        override_priority: None,
    };
    let mut machine = SyncStateMachine::with_request_options(RequestOptions {
        client_parameters: parameters.clone(),
        stream_subscriptions: vec![subscription.clone()],
    });
    let instructions = machine.handle(SyncEvent::Start {
        client_id: ClientId("c1".into()),
        buckets: Vec::new(),
    });
    let request = instructions
        .iter()
        .find_map(|i| match i {
            Instruction::OpenStream { request } => Some(request),
            _ => None,
        })
        .expect("the start opens a stream");
    assert_eq!(request.parameters.as_ref(), Some(&parameters));
    assert!(request.streams.include_defaults);
    assert_eq!(request.streams.subscriptions, vec![subscription]);

    let plain = SyncStateMachine::new().handle(SyncEvent::Start {
        client_id: ClientId("c1".into()),
        buckets: Vec::new(),
    });
    let Some(Instruction::OpenStream { request }) =
        plain.iter().find(|i| matches!(i, Instruction::OpenStream { .. }))
    else {
        panic!("the start opens a stream: {plain:?}");
    };
    assert_eq!(request.parameters, Some(serde_json::Map::new()));
    assert!(request.streams.subscriptions.is_empty());
}
