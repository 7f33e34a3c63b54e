//! The `syncgate rules` command line: `validate` prints `FILE:LINE:COL: severity: message` lines
//! and exits 1 on errors; `test-cases` ends with one `N passed, M failed` line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn syncgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncgate"))
        .args(args)
        .output()
        .expect("run syncgate")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

/// A file in a fresh directory of its own under the system temp directory.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("syncgate-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

fn remove_temp(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn validate_prints_positioned_errors_and_exits_1() {
    // Line 4: "      - SELECT id FROM t LIMIT 1" → LIMIT at column 9 + 17 = 26.
    // Line 5: "  other:" has no `data` → reported at the definition name, 5:3.
    let path = temp_file(
        "broken.yaml",
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t LIMIT 1
  other:
    parameters: SELECT
",
    );
    let file = path_str(&path);
    let output = syncgate(&["rules", "validate", file]);
    remove_temp(&path);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        stdout(&output),
        format!(
            "{file}:4:26: error: LIMIT is not supported\n\
             {file}:5:3: error: 'data' must be an array\n"
        )
    );
}

#[test]
fn validate_accepts_a_file_with_only_warnings() {
    let path = temp_file(
        "warnings.yaml",
        "\
config:
  edition: 2
streams:
  lists:
    query: SELECT * FROM lists
",
    );
    let file = path_str(&path);
    let output = syncgate(&["rules", "validate", file]);
    remove_temp(&path);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        stdout(&output),
        format!(
            "{file}:3:1: warning: This is using an alpha version of Sync Streams. We recommend upgrading `config.edition` to version 3 to support the latest features.\n"
        )
    );
}

/// Lines of stdout that look like the `N passed, M failed` summary.
fn summary_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| {
            let mut words = l.split(' ');
            matches!(
                (words.next(), words.next(), words.next(), words.next(), words.next()),
                (Some(n), Some("passed,"), Some(m), Some("failed"), None)
                    if n.parse::<usize>().is_ok() && m.parse::<usize>().is_ok()
            )
        })
        .collect()
}

#[test]
fn test_cases_pass_on_the_shared_suite() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/sync-rules-cases.jsonl");
    let output = syncgate(&["rules", "test-cases", path_str(&cases)]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(summary_lines(&out), ["129 passed, 0 failed"], "{out}");
    assert_eq!(out.lines().last(), Some("129 passed, 0 failed"));
}

#[test]
fn test_cases_report_failures_and_unreadable_lines() {
    // One valid case whose expectation is deliberately wrong, and one line that is not JSON.
    let failing = r#"{"id":"deliberately-failing","description":"expects an error that never comes","rules":"bucket_definitions:\n  global:\n    data:\n      - SELECT id FROM t\n","tables":[],"auth":{"jwt":{"sub":"u1"}},"expected":{"errors":["this error is never reported"],"warnings":[],"buckets":[],"other_buckets":[]}}"#;
    let path = temp_file("cases.jsonl", &format!("{failing}\nthis line is not JSON\n"));
    let output = syncgate(&["rules", "test-cases", path_str(&path)]);
    remove_temp(&path);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert_eq!(summary_lines(&out), ["0 passed, 2 failed"], "{out}");
    assert_eq!(out.lines().last(), Some("0 passed, 2 failed"));
    // The failing case is named and its difference printed.
    assert!(out.contains("FAIL deliberately-failing"), "{out}");
    assert!(
        out.contains("missing error: \"this error is never reported\""),
        "{out}"
    );
}
