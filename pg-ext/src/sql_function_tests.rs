//! Tests of the sync-rules SQL functions that run inside the backend (`#[pg_test]`: each one in a
//! transaction that is rolled back, so tables and publications made here vanish).

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use syncgate_rules::cases::read_cases;
    use syncgate_rules::pgtype::{PgType, map_text_value};
    use syncgate_rules::{Compatibility, CompileOptions, compile};

    const SHARED_CASES: &str = include_str!("../../testdata/sync-rules-cases.jsonl");

    /// `(severity, line, col, message)` rows of `syncgate.validate_rules`.
    fn validate(rules: &str, publication: Option<&str>) -> Vec<(String, Option<i32>, Option<i32>, String)> {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT severity, line, col, message FROM syncgate.validate_rules($1, $2)",
                    None,
                    &[rules.into(), publication.into()],
                )
                .expect("validate_rules runs");
            rows.map(|row| {
                (
                    row.get::<String>(1).unwrap().unwrap(),
                    row.get::<i32>(2).unwrap(),
                    row.get::<i32>(3).unwrap(),
                    row.get::<String>(4).unwrap().unwrap(),
                )
            })
            .collect()
        })
    }

    #[pg_test]
    fn validate_rules_matches_the_cli_on_invalid_shared_cases() {
        let mut checked = 0;
        for case in read_cases(SHARED_CASES) {
            let case = case.expect("the shared cases parse");
            if case.expected.errors.is_empty() {
                continue;
            }
            // What `syncgate rules validate` prints (gateway/src/rules_cmd.rs), computed here.
            let cli = compile(&case.rules, &CompileOptions::default()).diagnostics;
            let rows = validate(&case.rules, None);
            assert!(rows.len() >= cli.len(), "{}: {rows:?}", case.id);
            for (d, row) in cli.iter().zip(&rows) {
                let expected = (
                    d.severity.as_str().to_owned(),
                    Some(i32::try_from(d.line).unwrap()),
                    Some(i32::try_from(d.column).unwrap()),
                    d.message.clone(),
                );
                assert_eq!(row, &expected, "{}", case.id);
            }
            // Anything after the CLI's diagnostics comes from this database's catalog: warnings only.
            for row in &rows[cli.len()..] {
                assert_eq!(row.0, "warning", "{}: {row:?}", case.id);
            }
            let errors: Vec<&str> = rows
                .iter()
                .filter(|r| r.0 == "error")
                .map(|r| r.3.as_str())
                .collect();
            for expected in &case.expected.errors {
                // Texts of the reference's YAML and JSON-schema libraries differ; any error matches them.
                let library = expected.contains("must NOT have additional properties")
                    || expected.contains("must be equal to one of the allowed values");
                assert!(
                    library || errors.iter().any(|e| e.contains(expected.as_str())),
                    "{}: {expected:?} not in {errors:?}",
                    case.id
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 26, "invalid cases in testdata/sync-rules-cases.jsonl");
    }

    #[pg_test]
    fn validate_rules_gives_exact_positions() {
        let case = |id: &str| {
            read_cases(SHARED_CASES)
                .into_iter()
                .map(|c| c.expect("parses"))
                .find(|c| c.id == id)
                .unwrap_or_else(|| panic!("case {id}"))
                .rules
        };
        // `      - SELECT id FROM assets ORDER BY id`: the clause's first token, line 4.
        let rows = validate(&case("err-order-by"), None);
        assert_eq!(
            rows[0],
            (
                "error".into(),
                Some(4),
                Some(31),
                "ORDER BY is not supported".into()
            )
        );
        // `config:\n  edition: 1\n`: nothing defines a bucket; reported at the document's start.
        let rows = validate(&case("err-no-definitions"), None);
        assert_eq!(rows[0].0, "error");
        assert!(
            rows[0]
                .3
                .contains("'bucket_definitions' or 'streams' is required")
        );
        // `    priority: 5`: at the value.
        let rows = validate(&case("err-priority-invalid"), None);
        assert_eq!(
            rows[0],
            (
                "error".into(),
                Some(3),
                Some(15),
                "Invalid priority, expected a number between 0 and 3 (inclusive).".into()
            )
        );
    }

    #[pg_test]
    fn validate_rules_checks_the_catalog() {
        Spi::run(
            "CREATE TABLE lists (id text PRIMARY KEY, owner_id text);
             CREATE TABLE nokey (id text, v int);
             CREATE TYPE mood AS ENUM ('ok', 'sad');
             CREATE TYPE pair AS (a int, b text);
             CREATE TABLE typed (id text PRIMARY KEY, p pair, moods mood[], m mood)",
        )
        .unwrap();
        let rules = "bucket_definitions:
  global:
    data:
      - SELECT id, owner_id FROM lists
      - SELECT id, nope FROM lists
      - SELECT * FROM missing_table
      - SELECT * FROM nokey
      - SELECT * FROM typed
";
        let rows = validate(rules, Some("powersync"));
        let expected: Vec<(String, Option<i32>, Option<i32>, String)> =
            vec![
            // The rules compiler's own schema checks, with positions.
            ("warning".into(), Some(5), Some(20), "Column not found: nope".into()),
            ("warning".into(), Some(6), Some(23), "Table public.missing_table not found".into()),
            (
                "warning".into(),
                None,
                None,
                "table public.nokey has no primary key or replica identity, so its updates and deletes \
                 cannot be replicated; add a primary key, or run: ALTER TABLE \"public\".\"nokey\" REPLICA \
                 IDENTITY FULL"
                    .into(),
            ),
            (
                "warning".into(),
                None,
                None,
                "column public.typed.p has type pair (a composite type): without `custom_postgres_types` \
                 (config: edition: 2, or custom_postgres_types: true) it is synced as its raw Postgres text"
                    .into(),
            ),
            (
                "warning".into(),
                None,
                None,
                "column public.typed.moods has type mood[] (an array of a custom type): without \
                 `custom_postgres_types` (config: edition: 2, or custom_postgres_types: true) it is synced \
                 as its raw Postgres text"
                    .into(),
            ),
            (
                "warning".into(),
                None,
                None,
                "publication powersync does not exist; the gateway's default pgoutput decoder needs it (the \
                 syncgate output plugin does not), run: CREATE PUBLICATION \"powersync\" FOR TABLE \
                 \"public\".\"lists\", \"public\".\"nokey\", \"public\".\"typed\""
                    .into(),
            ),
        ];
        assert_eq!(rows, expected);

        // The CLI's view of the same rules: valid, nothing to say (it knows no database).
        assert!(compile(rules, &CompileOptions::default()).diagnostics.is_empty());

        Spi::run("CREATE PUBLICATION powersync FOR TABLE lists, typed").unwrap();
        let publication: Vec<String> = validate(rules, Some("powersync"))
            .into_iter()
            .filter(|r| r.3.contains("publication"))
            .map(|r| r.3)
            .collect();
        assert_eq!(
            publication,
            [
                "table public.nokey is not in publication powersync, so pgoutput does not send its changes \
              (the syncgate output plugin does); run: ALTER PUBLICATION \"powersync\" ADD TABLE \
              \"public\".\"nokey\""
            ]
        );
        // Without a publication to check (a gateway on the syncgate plugin), none of that.
        assert!(!validate(rules, None).iter().any(|r| r.3.contains("publication")));
        // Edition 2 decodes structured types: no type warnings.
        let edition2 = format!("config:\n  edition: 2\n{rules}");
        assert!(
            !validate(&edition2, None)
                .iter()
                .any(|r| r.3.contains("custom_postgres_types"))
        );
    }

    const TODO_RULES: &str = "bucket_definitions:
  all_lists:
    data:
      - SELECT id, name FROM lists
  own_lists:
    priority: 1
    parameters: SELECT request.user_id() AS user_id
    data:
      - SELECT * FROM lists WHERE owner_id = bucket.user_id
  list_todos:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM todos WHERE list_id = bucket.list_id
";

    fn create_todo_schema() {
        Spi::run(
            "CREATE TABLE lists (id text PRIMARY KEY, owner_id text NOT NULL, name text);
             CREATE TABLE todos (id text PRIMARY KEY, list_id text NOT NULL, description text,
                                 done boolean, due timestamptz, tags text[]);
             INSERT INTO lists VALUES ('l1', 'u1', 'Groceries'), ('l2', 'u1', 'Work'), ('l3', 'u2', 'Other');",
        )
        .unwrap();
    }

    /// `(bucket, object_type, object_id, data)` rows of `syncgate.evaluate_row`.
    fn evaluate(table: &str, row: &str) -> Vec<(String, String, String, serde_json::Value)> {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT bucket, object_type, object_id, data::text FROM syncgate.evaluate_row($1, $2, $3::jsonb)",
                    None,
                    &[TODO_RULES.into(), table.into(), row.into()],
                )
                .expect("evaluate_row runs")
                .map(|r| {
                    let data: String = r.get(4).unwrap().unwrap();
                    (
                        r.get::<String>(1).unwrap().unwrap(),
                        r.get::<String>(2).unwrap().unwrap(),
                        r.get::<String>(3).unwrap().unwrap(),
                        serde_json::from_str(&data).unwrap(),
                    )
                })
                .collect()
        })
    }

    #[pg_test]
    fn evaluate_row_places_rows_as_the_replicator_does() {
        create_todo_schema();
        // The session's time zone is not UTC: values must still be read as replication reads them.
        Spi::run("SET LOCAL TimeZone = 'Europe/Berlin'").unwrap();
        let placements = evaluate(
            "public.todos",
            r#"{"id": "t1", "list_id": "l1", "description": "Milk", "done": true,
                "due": "2024-05-06 07:08:09+02", "tags": ["a", "b"]}"#,
        );
        let due = map_text_value(
            &PgType::Timestamptz,
            "2024-05-06 05:08:09+00",
            &Compatibility::default(),
        );
        let tags = map_text_value(&PgType::from_name("text[]"), "{a,b}", &Compatibility::default());
        let expected_data = serde_json::json!({
            "id": "t1", "list_id": "l1", "description": "Milk", "done": 1,
            "due": due.as_text().unwrap(), "tags": tags.as_text().unwrap(),
        });
        assert_eq!(
            placements,
            [(
                "list_todos[\"l1\"]".to_owned(),
                "todos".to_owned(),
                "t1".to_owned(),
                expected_data
            )]
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT current_setting('TimeZone')").unwrap(),
            Some("Europe/Berlin".into()),
            "the caller's settings are put back"
        );

        // A bare name is in `public`; a missing key is NULL; one row in two buckets.
        let placements = evaluate("lists", r#"{"id": "l9", "owner_id": "u7"}"#);
        let buckets: Vec<(&str, &serde_json::Value)> =
            placements.iter().map(|p| (p.0.as_str(), &p.3)).collect();
        assert_eq!(
            buckets,
            [
                ("all_lists[]", &serde_json::json!({"id": "l9", "name": null})),
                (
                    "own_lists[\"u7\"]",
                    &serde_json::json!({"id": "l9", "owner_id": "u7", "name": null})
                ),
            ]
        );
        // A row no data query selects: no placements.
        Spi::run("CREATE TABLE unrelated (id text PRIMARY KEY)").unwrap();
        assert!(evaluate("unrelated", r#"{"id": "x"}"#).is_empty());
    }

    fn buckets(claims: &str, parameters: &str) -> Vec<(String, String, i32)> {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT bucket, definition, priority FROM syncgate.user_buckets($1, $2::jsonb, $3::jsonb)",
                    None,
                    &[TODO_RULES.into(), claims.into(), parameters.into()],
                )
                .expect("user_buckets runs")
                .map(|r| {
                    (
                        r.get::<String>(1).unwrap().unwrap(),
                        r.get::<String>(2).unwrap().unwrap(),
                        r.get::<i32>(3).unwrap().unwrap(),
                    )
                })
                .collect()
        })
    }

    #[pg_test]
    fn user_buckets_answers_parameter_queries_from_the_tables() {
        create_todo_schema();
        let row = |b: &str, d: &str, p: i32| (b.to_owned(), d.to_owned(), p);
        assert_eq!(
            buckets(r#"{"sub": "u1"}"#, "{}"),
            [
                row("all_lists[]", "all_lists", 3),
                row("list_todos[\"l1\"]", "list_todos", 3),
                row("list_todos[\"l2\"]", "list_todos", 3),
                row("own_lists[\"u1\"]", "own_lists", 1),
            ]
        );
        // The lookups read the tables as they are now.
        Spi::run("UPDATE lists SET owner_id = 'u2' WHERE id = 'l2'").unwrap();
        assert_eq!(
            buckets(r#"{"sub": "u2"}"#, "{}"),
            [
                row("all_lists[]", "all_lists", 3),
                row("list_todos[\"l2\"]", "list_todos", 3),
                row("list_todos[\"l3\"]", "list_todos", 3),
                row("own_lists[\"u2\"]", "own_lists", 1),
            ]
        );
        // A numeric `sub` is a user id too (the gateway accepts it).
        assert_eq!(
            buckets(r#"{"sub": 42}"#, "{}"),
            [
                row("all_lists[]", "all_lists", 3),
                row("own_lists[42]", "own_lists", 1)
            ]
        );
        // The default for `parameters` is no client parameters.
        let with_default = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM syncgate.user_buckets($1, '{\"sub\": \"u1\"}')",
            &[TODO_RULES.into()],
        )
        .unwrap();
        assert_eq!(with_default, Some(3), "u1 owns l1 only now");
    }

    #[pg_test]
    fn client_parameters_reach_the_rules() {
        let rules = "bucket_definitions:
  by_region:
    parameters: SELECT request.parameters() ->> 'region' AS region
    data:
      - SELECT id FROM shops WHERE region = bucket.region
";
        let buckets: Vec<String> = Spi::connect(|client| {
            client
                .select(
                    "SELECT bucket FROM syncgate.user_buckets($1, '{\"sub\": \"u\"}', '{\"region\": \"eu\"}')",
                    None,
                    &[rules.into()],
                )
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert_eq!(buckets, ["by_region[\"eu\"]"]);
    }

    /// Symbol isolation, behaviour half (notes/pgrx.md §11): the rules engine, SPI and the server's
    /// error machinery take turns in one backend; an allocator or error path bound to the wrong
    /// copy of a server symbol would crash or corrupt here.
    #[pg_test]
    fn rules_compile_spi_and_a_caught_error_share_the_backend() {
        let first = compile(TODO_RULES, &CompileOptions::default());
        assert!(first.rules.is_some() && first.diagnostics.is_empty());
        let tables = Spi::get_one::<i64>("SELECT count(*) FROM pg_class").unwrap();
        assert!(tables.unwrap_or_default() > 0);
        // An ERROR raised and caught inside the server (PL/pgSQL's subtransaction).
        Spi::run("DO $$ BEGIN PERFORM 1 / 0; EXCEPTION WHEN division_by_zero THEN NULL; END $$").unwrap();
        // An ERROR raised by the server (int4div) and caught in Rust, outside SPI so that no SPI
        // state is left half-done without a subtransaction.
        let caught = PgTryBuilder::new(|| {
            // SAFETY: int4div takes two int4 arguments, given here.
            unsafe {
                pgrx::direct_function_call::<i32>(pg_sys::int4div, &[1i32.into_datum(), 0i32.into_datum()])
            };
            None
        })
        .catch_others(|e| match e {
            pg_sys::panic::CaughtError::PostgresError(report) => Some(report.message().to_owned()),
            _ => None,
        })
        .execute();
        assert_eq!(caught.as_deref(), Some("division by zero"));
        let second = compile(TODO_RULES, &CompileOptions::default());
        assert_eq!(first.diagnostics, second.diagnostics);
        assert_eq!(
            first.rules.unwrap().definition_names().collect::<Vec<_>>(),
            second.rules.unwrap().definition_names().collect::<Vec<_>>()
        );
    }

    /// Only for the panic test (sql_function_client_tests.rs): a Rust panic inside a SQL function.
    #[pg_extern]
    fn panic_in_rust() -> i32 {
        let empty: Vec<i32> = Vec::new();
        // Indexing past the end: an ordinary bug's panic, not a deliberate `panic!` with a message.
        empty[usize::from(empty.is_empty())]
    }
}
