//! Tests of the sync-rules SQL functions over a client connection (autocommit): bad input must be
//! a clean ERROR that leaves the session usable, a panic must not take the backend down, and what
//! needs statements outside a transaction (CREATE DATABASE for other encodings and for upgrades).

use std::time::{Duration, Instant};

use crate::decoding_tests::connect;
use crate::rules_input::MAX_RULES_BYTES;

type Client = postgres::Client;

const RULES: &str = "bucket_definitions:
  own:
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM notes WHERE owner = bucket.user_id
";

/// The ERROR's message and detail.
fn error_of(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> (String, String) {
    let error = client.query(sql, params).expect_err(&format!("{sql} must fail"));
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a server error: {error}"));
    (
        db.message().to_owned(),
        db.detail().unwrap_or_default().to_owned(),
    )
}

fn pid(client: &mut Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

#[test]
fn bad_input_is_a_clear_error_and_the_session_goes_on() {
    let mut client = connect();
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS notes (id text PRIMARY KEY, owner text, n int)")
        .unwrap();
    let backend = pid(&mut client);
    let cases: &[(&str, &str)] = &[
        // NULL arguments: errors, never an empty answer that would read as "valid" or "no buckets".
        (
            "SELECT * FROM syncgate.validate_rules(NULL)",
            "syncgate.validate_rules: rules must not be NULL",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row(NULL, 'notes', '{}')",
            "syncgate.evaluate_row: rules must not be NULL",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row($1, NULL, '{}')",
            "syncgate.evaluate_row: table_name must not be NULL",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row($1, 'notes', NULL)",
            "syncgate.evaluate_row: row must not be NULL",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, NULL)",
            "syncgate.user_buckets: claims must not be NULL",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, '{\"sub\": \"u\"}', NULL)",
            "syncgate.user_buckets: parameters must not be NULL",
        ),
        // JSON of the wrong shape.
        (
            "SELECT * FROM syncgate.evaluate_row($1, 'notes', '[1, 2]')",
            "syncgate.evaluate_row: row must be a JSON object, not an array",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row($1, 'notes', '{\"id\": \"n\", \"colour\": 1}')",
            "syncgate.evaluate_row: row has the key \"colour\", which is not a column of public.notes \
             (columns: id, owner, n)",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row($1, 'notes', '{\"id\": \"a\", \"n\": \"many\"}')",
            "invalid input syntax for type integer: \"many\"",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row($1, 'nowhere.notes', '{}')",
            "syncgate.evaluate_row: table \"nowhere\".\"notes\" does not exist in this database",
        ),
        (
            "SELECT * FROM syncgate.evaluate_row($1, 'a.b.c', '{}')",
            "syncgate.evaluate_row: table_name \"a.b.c\" is not `schema.table` or `table`",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, '\"u1\"')",
            "syncgate.user_buckets: claims must be a JSON object, not a string",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, '{}')",
            "syncgate.user_buckets: claims has no \"sub\" (the user id)",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, '{\"sub\": {\"id\": 1}}')",
            "syncgate.user_buckets: claims \"sub\" must be a string or a number, not an object",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, '{\"sub\": \"u\", \"parameters\": [1]}')",
            "syncgate.user_buckets: claims \"parameters\" must be a JSON object, not an array",
        ),
        (
            "SELECT * FROM syncgate.user_buckets($1, '{\"sub\": \"u\"}', '3')",
            "syncgate.user_buckets: parameters must be a JSON object, not a number",
        ),
    ];
    for (sql, expected) in cases {
        let params: &[&(dyn postgres::types::ToSql + Sync)] =
            if sql.contains("$1") { &[&RULES] } else { &[] };
        let (message, _) = error_of(&mut client, sql, params);
        assert!(
            message.contains(expected),
            "{sql}:\n  {message}\n  expected {expected}"
        );
    }

    // Rules that do not compile: an ERROR with every diagnostic in its DETAIL.
    let broken = "bucket_definitions:\n  b:\n    data:\n      - SELECT id FROM a ORDER BY id\n      - SELECT x FROM a\n";
    for sql in [
        "SELECT * FROM syncgate.evaluate_row($1, 'notes', '{}')",
        "SELECT * FROM syncgate.user_buckets($1, '{\"sub\": \"u\"}')",
    ] {
        let (message, detail) = error_of(&mut client, sql, &[&broken]);
        assert!(
            message
                .ends_with("the sync rules do not compile (2 error(s)); see syncgate.validate_rules(rules)"),
            "{message}"
        );
        assert_eq!(
            detail,
            "4:26: error: ORDER BY is not supported\n5:16: error: Query must return an \"id\" column"
        );
    }
    assert_eq!(pid(&mut client), backend, "the same backend served every error");
}

#[test]
fn rules_over_the_size_limit_are_refused_without_parsing() {
    let mut client = connect();
    let huge = format!("# {}\n", "x".repeat(10 * 1024 * 1024));
    let started = Instant::now();
    let rows = client
        .query(
            "SELECT severity, line, col, message FROM syncgate.validate_rules($1)",
            &[&huge],
        )
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(rows.len(), 1);
    let (severity, line, col, message): (String, i32, i32, String) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2), rows[0].get(3));
    assert_eq!((severity.as_str(), line, col), ("error", 1, 1));
    assert_eq!(
        message,
        format!(
            "the rules text is {} bytes; syncgate accepts at most {MAX_RULES_BYTES} bytes (1 MiB)",
            huge.len()
        )
    );
    // Sending 10 MB to the server is most of it; compiling that much would take seconds.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    eprintln!("validate_rules of a 10 MB text: {elapsed:?}");
    let (message, _) = error_of(
        &mut client,
        "SELECT * FROM syncgate.user_buckets($1, '{\"sub\": \"u\"}')",
        &[&huge],
    );
    assert!(
        message.contains("syncgate accepts at most 1048576 bytes"),
        "{message}"
    );
    // Just under the limit is compiled as usual.
    let padded = format!("{RULES}# {}\n", "x".repeat(MAX_RULES_BYTES - RULES.len() - 3));
    assert_eq!(padded.len(), MAX_RULES_BYTES);
    let rows = client
        .query("SELECT * FROM syncgate.validate_rules($1, NULL)", &[&padded])
        .unwrap();
    assert!(
        rows.iter().all(|r| r.get::<_, String>(0) == "warning"),
        "{rows:?}"
    );
}

#[test]
fn a_rust_panic_is_an_error_and_the_backend_survives() {
    let mut client = connect();
    let backend = pid(&mut client);
    let (message, _) = error_of(&mut client, "SELECT tests.panic_in_rust()", &[]);
    assert!(message.contains("index out of bounds"), "{message}");
    assert_eq!(pid(&mut client), backend);
    let rows = client
        .query("SELECT count(*) FROM syncgate.validate_rules($1)", &[&RULES])
        .unwrap();
    assert_eq!(rows.len(), 1);
}

/// A connection to another database of the test cluster.
fn connect_to(client: &mut Client, database: &str) -> Client {
    let row = client
        .query_one("SELECT current_setting('port')::int, current_user::text", &[])
        .unwrap();
    let (port, user): (i32, String) = (row.get(0), row.get(1));
    postgres::Config::new()
        .host("localhost")
        .port(u16::try_from(port).unwrap())
        .user(&user)
        .dbname(database)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {database}: {e}"))
}

fn recreate_database(client: &mut Client, name: &str, options: &str) -> Client {
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name} {options}"))
        .unwrap();
    connect_to(client, name)
}

#[test]
fn text_that_is_not_utf8_is_reported_not_crashed_on() {
    let mut client = connect();
    let mut ascii = recreate_database(
        &mut client,
        "syncgate_sql_ascii",
        "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    ascii.batch_execute("CREATE EXTENSION syncgate").unwrap();
    // In SQL_ASCII, Postgres stores any bytes: line 2 holds Latin-1 "é" (0xE9), invalid UTF-8.
    let latin1 = "convert_from('\\x6275636b65745f646566696e6974696f6e733a0a2320e90a'::bytea, 'SQL_ASCII')";
    let rows = ascii
        .query(
            &format!("SELECT severity, line, col, message FROM syncgate.validate_rules({latin1})"),
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (severity, line, col, message): (String, i32, i32, String) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2), rows[0].get(3));
    assert_eq!((severity.as_str(), line, col), ("error", 2, 3));
    assert_eq!(
        message,
        "the rules text is not valid UTF-8 (first bad byte at offset 22); sync rules are UTF-8 and this \
         database's encoding is SQL_ASCII: use a UTF8 database"
    );
    let (message, _) = error_of(
        &mut ascii,
        &format!("SELECT * FROM syncgate.user_buckets({latin1}, '{{\"sub\": \"u\"}}')"),
        &[],
    );
    assert!(
        message.starts_with("syncgate.user_buckets: the rules text is not valid UTF-8"),
        "{message}"
    );
    // ASCII rules work in that database.
    let rows = ascii
        .query(
            "SELECT bucket FROM syncgate.user_buckets($1, '{\"sub\": \"u\"}')",
            &[&RULES],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "own[\"u\"]");
    drop(ascii);
    client.batch_execute("DROP DATABASE syncgate_sql_ascii").unwrap();
}

/// Every function of schema `syncgate` with what makes its SQL interface: arguments with defaults,
/// result, volatility, strictness, the library symbol.
fn extension_functions(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> ' || pg_get_function_result(p.oid)
                    || ' ' || p.provolatile::text || ' strict=' || p.proisstrict::text || ' ' || p.prosrc || ' ' || p.probin
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'syncgate' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn upgrading_from_0_1_0_gives_the_functions_of_a_fresh_install() {
    let mut client = connect();
    let mut fresh = recreate_database(&mut client, "syncgate_fresh", "");
    fresh.batch_execute("CREATE EXTENSION syncgate").unwrap();
    let mut upgraded = recreate_database(&mut client, "syncgate_upgraded", "");
    upgraded
        .batch_execute("CREATE EXTENSION syncgate VERSION '0.1.0'")
        .unwrap_or_else(|e| {
            panic!(
                "{e:?}: pg-ext/sql/syncgate--0.1.0.sql must be in $(pg_config --sharedir)/extension \
                 (scripts/pg-ext-install.sh and scripts/pg-ext-test.sh put it there)"
            )
        });
    let before = extension_functions(&mut upgraded);
    assert_eq!(before.len(), 1, "0.1.0 has only version(): {before:?}");
    upgraded.batch_execute("ALTER EXTENSION syncgate UPDATE").unwrap();
    let version = |c: &mut Client| -> String {
        c.query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'syncgate'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(version(&mut upgraded), env!("CARGO_PKG_VERSION"));
    assert_eq!(version(&mut fresh), env!("CARGO_PKG_VERSION"));
    let fresh_functions = extension_functions(&mut fresh);
    assert_eq!(extension_functions(&mut upgraded), fresh_functions);
    assert_eq!(fresh_functions.len(), 4, "{fresh_functions:?}");
    let works: i64 = upgraded
        .query_one("SELECT count(*) FROM syncgate.validate_rules($1)", &[&RULES])
        .unwrap()
        .get(0);
    assert!(works >= 1);
    drop((fresh, upgraded));
    client.batch_execute("DROP DATABASE syncgate_fresh").unwrap();
    client.batch_execute("DROP DATABASE syncgate_upgraded").unwrap();
}
