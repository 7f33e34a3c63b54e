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

mod inspect_and_compact {
    //! `syncgate inspect` and `syncgate compact` on a storage file built from real rule evaluation.

    use std::path::Path;
    use std::process::{Command, Output};

    use serde_json::{Value, json};
    use syncgate::storage::{
        BucketStorage, Lsn, RowChange, RulesVersion, SourceRowKey, SourceTransaction, SqliteStorage,
    };
    use syncgate_protocol::BucketName;
    use syncgate_rules::{RowEvaluation, SourceTable, SqliteValue, SyncRules, compile};

    const RULES: &str = "\
bucket_definitions:
  global:
    priority: 1
    data:
      - SELECT * FROM announcements
  by_list:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
";

    // The rules file on disk differs from the stored version: inspect must use the stored one.
    const FILE_RULES: &str = "bucket_definitions:\n  other:\n    data:\n      - SELECT * FROM other\n";

    const CONFIG: &str = "\
replication:
  connections:
    - type: postgresql
      uri: postgresql://app@localhost:5432/app
storage:
  type: sqlite
  path: buckets.sqlite
sync_rules:
  path: rules.yaml
";

    struct Tables {
        rules: SyncRules,
        lists: SourceTable,
        todos: SourceTable,
        announcements: SourceTable,
    }

    impl Tables {
        /// Rules as the gateway compiles a stored version (bucket ids prefixed `<version>#`).
        fn new(version: RulesVersion) -> Self {
            Tables {
                rules: compile(RULES, &syncgate::versioned_rules::compile_options(version))
                    .rules
                    .expect("rules compile"),
                lists: SourceTable::new("public", "lists", &["id", "owner_id"]),
                todos: SourceTable::new("public", "todos", &["id", "list_id", "title"]),
                announcements: SourceTable::new("public", "announcements", &["id", "text"]),
            }
        }

        /// The row's new state as the rules evaluate it; the first column is the replica identity.
        fn row(&self, table: &SourceTable, values: &[&str]) -> RowChange {
            let values: Vec<_> = values.iter().map(|v| SqliteValue::text(*v)).collect();
            let plan = self.rules.plan_table(table);
            let mut evaluation = RowEvaluation::default();
            self.rules.evaluate_row(&plan, &values, &mut evaluation);
            let (mut entries, mut errors) = (Vec::new(), Vec::new());
            self.rules
                .evaluate_parameter_row(&plan, &values, &mut entries, &mut errors);
            assert!(errors.is_empty() && evaluation.errors.is_empty());
            RowChange::from_evaluation(
                key(table, values[0].as_text().expect("text id")),
                &plan,
                &evaluation,
                &entries,
                None,
            )
        }
    }

    fn key(table: &SourceTable, id: &str) -> SourceRowKey {
        SourceRowKey {
            table: format!("{}.{}", table.schema, table.name),
            key: id.into(),
        }
    }

    fn txn(lsn: u64, changes: Vec<RowChange>) -> SourceTransaction {
        SourceTransaction {
            commit_lsn: Lsn(lsn),
            changes,
        }
    }

    /// A config dir whose storage holds the todo app after three transactions, active.
    fn setup() -> (tempfile::TempDir, RulesVersion) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("powersync.yaml"), CONFIG).expect("write config");
        std::fs::write(dir.path().join("rules.yaml"), FILE_RULES).expect("write rules");
        let storage = SqliteStorage::open(dir.path().join("buckets.sqlite")).expect("open storage");
        let version = storage.create_version(RULES).expect("create version");
        let t = Tables::new(version);
        let apply = |txn: SourceTransaction| {
            storage.apply(version, &txn).expect("apply").expect("not skipped");
        };
        apply(txn(
            0x100,
            vec![
                // t4 and t2 first, so l1's bucket starts with ops that compaction can merge.
                t.row(&t.todos, &["t4", "l1", "gone soon"]),
                t.row(&t.todos, &["t2", "l1", "moves"]),
                t.row(&t.lists, &["l1", "u1"]),
                t.row(&t.lists, &["l2", "u2"]),
                t.row(&t.todos, &["t1", "l1", "draft"]),
                t.row(&t.todos, &["t3", "l2", "deleted later"]),
                t.row(&t.announcements, &["a1", "hello"]),
            ],
        ));
        apply(txn(
            0x200,
            vec![
                RowChange::delete(key(&t.todos, "t4")),
                t.row(&t.todos, &["t2", "l2", "moves"]),
                t.row(&t.todos, &["t1", "l1", "final"]),
            ],
        ));
        apply(txn(
            0x16B3748,
            vec![
                RowChange::delete(key(&t.todos, "t3")),
                t.row(&t.announcements, &["a2", "again"]),
            ],
        ));
        storage.activate(version).expect("activate");
        (dir, version)
    }

    fn run(dir: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_syncgate"));
        command.args(args).arg("--config").arg(dir.join("powersync.yaml"));
        for var in ["SYNCGATE_DATABASE_URL", "SYNCGATE_STORAGE_PATH", "SYNCGATE_PORT"] {
            command.env_remove(var);
        }
        command.output().expect("run syncgate")
    }

    fn inspect(dir: &Path, sub: &str) -> Value {
        let out = run(dir, &["inspect", "--sub", sub]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    fn stderr(out: &Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Bucket names (without the `<version>#` prefix) with priorities and rows.
    fn rows_of(inspection: &Value) -> Value {
        let version = inspection["version"].as_u64().expect("version");
        Value::Array(
            inspection["buckets"]
                .as_array()
                .expect("buckets")
                .iter()
                .map(|b| {
                    let name = b["bucket"].as_str().expect("name");
                    let name = name
                        .strip_prefix(&format!("{version}#"))
                        .unwrap_or_else(|| panic!("{name} lacks the version prefix"));
                    json!({"bucket": name, "priority": b["priority"], "rows": b["rows"]})
                })
                .collect(),
        )
    }

    fn total_count(inspection: &Value) -> u64 {
        inspection["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["count"].as_u64().expect("count"))
            .sum()
    }

    /// Every bucket's checksum and count equal `bucket_checksums` at the reported checkpoint.
    fn assert_checksums_match_storage(dir: &Path, version: RulesVersion, inspection: &Value) {
        let storage = SqliteStorage::open(dir.join("buckets.sqlite")).expect("open storage");
        let checkpoint = storage
            .latest_checkpoint(version)
            .expect("read")
            .expect("checkpoint");
        assert_eq!(
            inspection["checkpoint"]["op_id"],
            json!(checkpoint.op_id.to_string())
        );
        for bucket in inspection["buckets"].as_array().expect("buckets") {
            let name = BucketName::new(bucket["bucket"].as_str().expect("name"));
            let summary = storage
                .bucket_checksums(version, checkpoint.op_id, &[name])
                .expect("checksums")
                .remove(0);
            assert_eq!(bucket["checksum"], json!(summary.checksum.as_i32()), "{bucket}");
            assert_eq!(bucket["count"], json!(summary.count), "{bucket}");
        }
    }

    #[test]
    fn inspect_shows_each_users_buckets_and_net_rows_before_and_after_compact() {
        let (dir, version) = setup();
        let u1 = inspect(dir.path(), "u1");
        assert_eq!(u1["version"], json!(version.0));
        assert_eq!(u1["checkpoint"]["lsn"], json!("0/16B3748"));
        assert_eq!(
            rows_of(&u1),
            json!([
                {"bucket": "by_list[\"l1\"]", "priority": 3, "rows": [
                    {"table": "lists", "id": "l1", "data": {"id": "l1", "owner_id": "u1"}},
                    {"table": "todos", "id": "t1", "data": {"id": "t1", "list_id": "l1", "title": "final"}},
                ]},
                {"bucket": "global[]", "priority": 1, "rows": [
                    {"table": "announcements", "id": "a1", "data": {"id": "a1", "text": "hello"}},
                    {"table": "announcements", "id": "a2", "data": {"id": "a2", "text": "again"}},
                ]},
            ])
        );
        assert_checksums_match_storage(dir.path(), version, &u1);

        let u2 = inspect(dir.path(), "u2");
        assert_eq!(
            rows_of(&u2)[0],
            json!({"bucket": "by_list[\"l2\"]", "priority": 3, "rows": [
                {"table": "lists", "id": "l2", "data": {"id": "l2", "owner_id": "u2"}},
                {"table": "todos", "id": "t2", "data": {"id": "t2", "list_id": "l2", "title": "moves"}},
            ]})
        );
        assert_checksums_match_storage(dir.path(), version, &u2);

        // A user with no lists only gets the global bucket.
        let nobody = inspect(dir.path(), "u3");
        assert_eq!(nobody["buckets"].as_array().expect("buckets").len(), 1);

        let out = run(dir.path(), &["compact"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(
            line.starts_with(&format!("compacted version {version}: ")),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");

        for (user, before) in [("u1", &u1), ("u2", &u2)] {
            let after = inspect(dir.path(), user);
            assert_eq!(rows_of(&after), rows_of(before), "{user}");
            assert_eq!(after["checkpoint"], before["checkpoint"]);
            for (a, b) in after["buckets"]
                .as_array()
                .expect("buckets")
                .iter()
                .zip(before["buckets"].as_array().expect("buckets"))
            {
                assert_eq!(a["checksum"], b["checksum"], "{user}");
                assert!(a["count"].as_u64() <= b["count"].as_u64(), "{user}");
            }
            assert_checksums_match_storage(dir.path(), version, &after);
        }
        assert!(total_count(&inspect(dir.path(), "u1")) < total_count(&u1));
    }

    #[test]
    fn claims_and_parameters_are_passed_to_bucket_resolution() {
        let (dir, _) = setup();
        // `--sub` wins over a `sub` claim.
        let out = run(
            dir.path(),
            &[
                "inspect",
                "--sub",
                "u2",
                "--claims",
                r#"{"sub":"u1","role":"x"}"#,
                "--parameters",
                "{}",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let inspection: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(rows_of(&inspection)[0]["bucket"], json!("by_list[\"l2\"]"));

        let out = run(dir.path(), &["inspect", "--sub", "u1", "--claims", "[1]"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr(&out).contains("--claims must be a JSON object"),
            "{}",
            stderr(&out)
        );
    }

    #[test]
    fn missing_storage_fails_without_creating_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("powersync.yaml"), CONFIG).expect("write config");
        std::fs::write(dir.path().join("rules.yaml"), FILE_RULES).expect("write rules");
        for args in [&["inspect", "--sub", "u1"][..], &["compact"][..]] {
            let out = run(dir.path(), args);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
        }
        assert!(!dir.path().join("buckets.sqlite").exists());
    }

    #[test]
    fn no_active_version_or_checkpoint_fails_with_a_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("powersync.yaml"), CONFIG).expect("write config");
        std::fs::write(dir.path().join("rules.yaml"), FILE_RULES).expect("write rules");
        let storage = SqliteStorage::open(dir.path().join("buckets.sqlite")).expect("open storage");
        let version = storage.create_version(RULES).expect("create version");

        let out = run(dir.path(), &["inspect", "--sub", "u1"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr(&out).contains("replication has not published a checkpoint yet"),
            "{}",
            stderr(&out)
        );
        let out = run(dir.path(), &["compact"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr(&out).contains("no active sync-rules version"),
            "{}",
            stderr(&out)
        );

        // Active, but nothing applied yet.
        storage.activate(version).expect("activate");
        let out = run(dir.path(), &["inspect", "--sub", "u1"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr(&out).contains("replication has not published a checkpoint yet"),
            "{}",
            stderr(&out)
        );
    }
}

/// `syncgate token`: prints a JWT signed with the config's shared secret that the gateway's own
/// authenticator accepts; exits 1 when there is nothing to sign with.
mod token {
    use std::path::Path;
    use std::process::{Command, Output};
    use std::time::SystemTime;

    use serde_json::json;
    use syncgate::auth::Authenticator;
    use syncgate::config::Config;

    const BASE: &str = "\
replication:
  connections:
    - type: postgresql
      uri: postgresql://app@localhost/app
      sslmode: disable
sync_rules:
  path: rules.yaml
";

    fn setup(client_auth: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("powersync.yaml"), format!("{BASE}{client_auth}")).expect("config");
        std::fs::write(
            dir.path().join("rules.yaml"),
            "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM todos\n",
        )
        .expect("rules");
        dir
    }

    fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_syncgate"));
        command
            .args(["token", "--config"])
            .arg(dir.join("powersync.yaml"))
            .args(args)
            .env_remove("SYNCGATE_JWT_SECRET")
            .envs(env.iter().copied());
        command.output().expect("run syncgate")
    }

    fn verify(dir: &Path, output: &Output, env: &[(&str, &str)]) -> syncgate::auth::TokenClaims {
        assert!(
            output.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout.clone()).expect("UTF-8");
        let token = token.trim_end();
        assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token:?}");
        let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        let loaded = Config::load_with_env(&dir.join("powersync.yaml"), &lookup).expect("config");
        let authenticator = Authenticator::new(&loaded.config.client_auth).expect("keys");
        authenticator
            .verify(token, SystemTime::now())
            .expect("the gateway accepts its own token")
    }

    #[test]
    fn signs_with_the_inline_oct_key_and_the_first_audience() {
        let dir = setup(
            "client_auth:\n  audience: [powersync-dev, other]\n  jwks:\n    keys:\n      - kty: oct\n        kid: dev\n        alg: HS384\n        k: cG93ZXJzeW5jLWRldi1zZWNyZXQtZG8tbm90LXVzZS1pbi1wcm9kLTAxMjM0NTY3ODk\n",
        );
        let output = run(
            dir.path(),
            &[
                "--sub",
                "alice",
                "--claims",
                r#"{"parameters":{"team":"t1"}}"#,
                "--ttl",
                "30m",
            ],
            &[],
        );
        let claims = verify(dir.path(), &output, &[]);
        assert_eq!(claims.user_id().0, "alice");
        assert_eq!(claims.claims()["aud"], json!("powersync-dev"));
        assert_eq!(claims.claims()["parameters"], json!({"team": "t1"}));
        let iat = claims.claims()["iat"].as_u64().expect("iat");
        assert_eq!(claims.expires_at_unix(), iat + 1800);
        let token = String::from_utf8(output.stdout).expect("UTF-8");
        let header = jsonwebtoken::decode_header(token.trim_end()).expect("header");
        assert_eq!(header.kid.as_deref(), Some("dev"));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::HS384);
    }

    #[test]
    fn signs_with_the_supabase_secret_from_the_environment() {
        let dir = setup("client_auth:\n  supabase: true\n");
        let env = [("SYNCGATE_JWT_SECRET", "a-supabase-project-jwt-secret")];
        let output = run(dir.path(), &["--sub", "42", "--ttl", "7d"], &env);
        let claims = verify(dir.path(), &output, &env);
        assert_eq!(claims.user_id().0, "42");
        assert_eq!(claims.claims()["aud"], json!("authenticated"));
    }

    #[test]
    fn refuses_without_a_secret_or_beyond_the_lifetime() {
        let public_only =
            setup("client_auth:\n  audience: a\n  jwks_uri: https://example.invalid/jwks.json\n");
        let output = run(public_only.path(), &["--sub", "u"], &[]);
        assert_eq!(output.status.code(), Some(1));
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no shared secret"), "{stderr}");

        let dir = setup("client_auth:\n  audience: a\n  supabase_jwt_secret: s3cret\n");
        let output = run(dir.path(), &["--sub", "u", "--ttl", "2d"], &[]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("exceeds the maximum token lifetime of 86400s"),
            "{stderr}"
        );

        let output = run(dir.path(), &["--sub", "u", "--ttl", "soon"], &[]);
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("--ttl"));
        let output = run(dir.path(), &["--sub", "u", "--claims", "[1]"], &[]);
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("--claims"));
        // And with a secret, the plain-HS256 token works (audience `a`, 1 h default).
        let claims = verify(dir.path(), &run(dir.path(), &["--sub", "u"], &[]), &[]);
        assert_eq!(claims.claims()["aud"], json!("a"));
    }
}
