//! `syncgate rules test`: a passing run exits 0 with one `ok` line per suite; a failing suite prints the
//! expected and actual rows with the bucket of each actual row and exits 1; `--rules` replaces the
//! suites' rules; missing files and refused records fail without stopping the other suites.
//!
//! Each run starts its own throwaway Postgres, like the command does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate lives in the workspace")
        .to_owned()
}

/// `syncgate rules test ARGS…` from the workspace root (suite paths are given relative to it).
fn rules_test(args: &[&str]) -> (Option<i32>, String) {
    rules_test_with_env(args, &[])
}

fn rules_test_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_syncgate"))
        .args(["rules", "test"])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .output()
        .expect("run syncgate rules test");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code(),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

#[test]
fn passing_suites_exit_0_with_a_line_each() {
    let (code, output) = rules_test(&["testdata/rules/demo.slt", "testdata/rules/moves.slt"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("ok   testdata/rules/demo.slt ("), "{output}");
    assert!(output.contains("ok   testdata/rules/moves.slt ("), "{output}");
    assert!(output.contains("2 passed, 0 failed ("), "{output}");
}

#[test]
fn a_failing_suite_shows_expected_and_actual_rows_with_their_buckets() {
    let (code, output) = rules_test(&["gateway/tests/rule-suites/wrong-expectation.slt"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("FAIL gateway/tests/rule-suites/wrong-expectation.slt"),
        "{output}"
    );
    assert!(output.contains("query result mismatch"), "{output}");
    assert!(output.contains("[SQL] SELECT id, body FROM notes"), "{output}");
    // The diff: the row bob was expected to have but does not.
    assert!(output.contains("-   n2 Drop test"), "{output}");
    assert!(
        output.contains("at gateway/tests/rule-suites/wrong-expectation.slt:10"),
        "{output}"
    );
    // Each actual row with the bucket that synced it, then bob's buckets.
    assert!(
        output.contains("actual rows of bob, with the bucket(s) that synced each:"),
        "{output}"
    );
    assert!(output.contains("n1 Fuel    <- "), "{output}");
    assert!(output.contains("project[\"rocket\"]"), "{output}");
    assert!(output.contains("buckets of bob:"), "{output}");
    assert!(!output.contains("project[\"anvil\"]"), "{output}");
    assert!(output.contains("0 passed, 1 failed"), "{output}");
    assert!(
        output.contains("failed: gateway/tests/rule-suites/wrong-expectation.slt"),
        "{output}"
    );
}

#[test]
fn rules_option_replaces_the_suites_rules() {
    let suite = "gateway/tests/rule-suites/needs-override.slt";
    let (code, output) = rules_test(&[suite]);
    assert_eq!(
        code,
        Some(1),
        "with its own (global) rules the suite must fail:\n{output}"
    );
    assert!(output.contains("everyone[]"), "{output}");

    let (code, output) = rules_test(&["--rules", "testdata/rules/user_id.yaml", suite]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("1 passed, 0 failed"), "{output}");
}

#[test]
fn missing_files_and_sleeps_fail_their_suite_only() {
    let (code, output) = rules_test(&[
        "testdata/rules/no-such-suite.slt",
        "gateway/tests/rule-suites/sleeps.slt",
        "testdata/rules/types.slt",
    ]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output
            .contains("FAIL testdata/rules/no-such-suite.slt\ncannot read testdata/rules/no-such-suite.slt"),
        "{output}"
    );
    assert!(output.contains("`sleep` is not allowed"), "{output}");
    assert!(output.contains("ok   testdata/rules/types.slt"), "{output}");
    assert!(output.contains("1 passed, 2 failed"), "{output}");

    let (code, output) = rules_test(&["--rules", "no-such-rules.yaml", "testdata/rules/types.slt"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("cannot read no-such-rules.yaml"), "{output}");
}

#[test]
fn missing_postgres_binaries_name_the_package() {
    let (code, output) = rules_test_with_env(
        &["testdata/rules/types.slt"],
        &[("SYNCGATE_PG_BIN", "/nonexistent/postgresql/bin")],
    );
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("not found in /nonexistent/postgresql/bin"),
        "{output}"
    );
    assert!(output.contains("postgresql-15"), "{output}");
}
