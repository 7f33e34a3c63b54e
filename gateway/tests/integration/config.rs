//! `syncgate config check --config FILE`: loads the config, compiles its sync rules, prints
//! warnings and diagnostics as `FILE:LINE:COL: ...` and a one-line summary; exits 1 on any error.

use std::path::Path;
use std::process::{Command, Output};

const RULES: &str = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM todos\n";

const CONFIG: &str = "\
replication:
  connections:
    - type: postgresql
      uri: !env PS_DATA_SOURCE_URI
      sslmode: disable
sync_rules:
  path: rules.yaml
telemetry:
  disable_telemetry_sharing: true
port: 8123
";

/// Runs `syncgate config check` on `dir/powersync.yaml` with a clean `SYNCGATE_*` environment.
fn check(dir: &Path, vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncgate"));
    command
        .args(["config", "check", "--config"])
        .arg(dir.join("powersync.yaml"));
    for var in [
        "SYNCGATE_DATABASE_URL",
        "SYNCGATE_DATABASE_PASSWORD",
        "SYNCGATE_PORT",
        "SYNCGATE_STORAGE_PATH",
        "SYNCGATE_JWT_SECRET",
        "PS_DATA_SOURCE_URI",
    ] {
        command.env_remove(var);
    }
    command.envs(vars.iter().copied());
    command.output().expect("run syncgate")
}

fn setup(config: &str, rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("powersync.yaml"), config).expect("write config");
    std::fs::write(dir.path().join("rules.yaml"), rules).expect("write rules");
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn valid_config_prints_warnings_and_a_summary_without_the_password() {
    let dir = setup(CONFIG, RULES);
    let out = check(
        dir.path(),
        &[("PS_DATA_SOURCE_URI", "postgresql://app:hunter2@db:5432/app")],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let config = dir.path().join("powersync.yaml");
    let expected_warning = format!(
        "{}:8:1: warning: `telemetry` is a PowerSync setting that syncgate accepts but does not implement",
        config.display()
    );
    assert!(stdout.contains(&expected_warning), "{stdout}");
    let summary = format!(
        "config ok: source postgresql://app@db:5432/app?sslmode=disable (publication powersync), \
         storage sqlite {}, port 8123, sync rules {}\n",
        dir.path().join("syncgate.sqlite").display(),
        dir.path().join("rules.yaml").display()
    );
    assert!(stdout.ends_with(&summary), "{stdout}");
    assert!(!stdout.contains("hunter2"));
}

#[test]
fn config_errors_exit_1_with_position() {
    let dir = setup(CONFIG, RULES);
    let out = check(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expected = format!(
        "{}:4:17: environment variable `PS_DATA_SOURCE_URI` is not set",
        dir.path().join("powersync.yaml").display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn rules_errors_exit_1_with_rules_file_position() {
    let dir = setup(
        CONFIG,
        "bucket_definitions:\n  global:\n    data:\n      - SELECT id FROM t LIMIT 1\n",
    );
    let out = check(dir.path(), &[("PS_DATA_SOURCE_URI", "postgresql://u@h/d")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let expected = format!("{}:4:26: error: ", dir.path().join("rules.yaml").display());
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(!stdout.contains("config ok"), "{stdout}");
}

#[test]
fn env_overrides_show_in_the_summary() {
    let dir = setup(CONFIG, RULES);
    let out = check(
        dir.path(),
        &[
            ("PS_DATA_SOURCE_URI", "postgresql://app@db/app"),
            ("SYNCGATE_DATABASE_URL", "postgresql://other@envhost:6000/envdb"),
            ("SYNCGATE_PORT", "9999"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("source postgresql://other@envhost:6000/envdb?sslmode=disable"),
        "{stdout}"
    );
    assert!(stdout.contains("port 9999"), "{stdout}");
}

#[test]
fn inline_rules_errors_point_into_the_config_file() {
    let config = CONFIG.replace(
        "sync_rules:\n  path: rules.yaml\n",
        "sync_rules:\n  content: |\n    bucket_definitions:\n      global:\n        data:\n          - SELECT id FROM t LIMIT 1\n",
    );
    let dir = setup(&config, RULES);
    let out = check(dir.path(), &[("PS_DATA_SOURCE_URI", "postgresql://u@h/d")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    // Line 4, column 26 of the rules is line 11, column 30 of the config file.
    let expected = format!("{}:11:30: error: ", dir.path().join("powersync.yaml").display());
    assert!(stdout.contains(&expected), "{stdout}");
}
