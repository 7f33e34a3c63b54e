//! Diagnostics of broken rules files: severity, message and the exact line and column they
//! point at, per the position convention of SYNC_RULES.md §10 ("Diagnostic positions"):
//!
//! * YAML errors point at the start of the offending node: the key for an unknown or duplicate
//!   key, the value for a wrong value; a missing required key points at the parent key.
//! * SQL errors point at the offending token, mapped from its offset in the SQL string into the
//!   file (plain, quoted and literal-block scalars), or at the start of the scalar where the text
//!   cannot be mapped back (escapes, folding).
//! * Warnings follow the same rules.
//!
//! Every YAML document below starts on line 1 (the string literal begins with `"\` + newline).
//! Expected columns were counted by hand; the comments show the counting where it is not obvious.

use syncgate_rules::Severity::{self, Error, Warning};
use syncgate_rules::{CompileOptions, SchemaTable, SourceSchema, compile};

type Diag = (Severity, String, usize, usize);

fn diag_with(yaml: &str, options: &CompileOptions) -> Vec<Diag> {
    compile(yaml, options)
        .diagnostics
        .into_iter()
        .map(|d| (d.severity, d.message, d.line, d.column))
        .collect()
}

fn diag(yaml: &str) -> Vec<Diag> {
    diag_with(yaml, &CompileOptions::default())
}

/// Asserts that `actual` holds exactly the `expected` diagnostics, in order. An expected message
/// matches when it equals the actual message or is a substring of it.
#[track_caller]
fn assert_diags(actual: &[Diag], expected: &[(Severity, &str, usize, usize)]) {
    let matches = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|((s, m, l, c), (es, em, el, ec))| s == es && m.contains(em) && l == el && c == ec);
    assert!(
        matches,
        "diagnostics differ\n  expected: {expected:#?}\n  actual:   {actual:#?}"
    );
}

#[track_caller]
fn expect(yaml: &str, expected: &[(Severity, &str, usize, usize)]) {
    assert_diags(&diag(yaml), expected);
}

#[track_caller]
fn expect_with_schema(yaml: &str, expected: &[(Severity, &str, usize, usize)]) {
    let options = CompileOptions {
        schema: Some(schema()),
        ..CompileOptions::default()
    };
    assert_diags(&diag_with(yaml, &options), expected);
}

fn table(name: &str, columns: &[&str]) -> SchemaTable {
    SchemaTable {
        connection_tag: "default".into(),
        schema: "public".into(),
        name: name.into(),
        columns: columns
            .iter()
            .map(|c| (c.to_string(), "text".to_string()))
            .collect(),
    }
}

/// `todos(id, title, owner)` and `notes(body)`, which has no `id`.
fn schema() -> SourceSchema {
    SourceSchema {
        tables: vec![
            table("todos", &["id", "title", "owner"]),
            table("notes", &["body"]),
        ],
    }
}

const ALPHA: &str = "This is using an alpha version of Sync Streams.";
const CASCADE: &str = "Bucket parameters must be defined";

// ---------------------------------------------------------------------------------------------
// Sanity: valid files give no diagnostics.

#[test]
fn valid_files_have_no_diagnostics() {
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: SELECT request.user_id() AS uid
    data:
      - SELECT id, title FROM todos WHERE owner = bucket.uid
  by_org:
    accept_potentially_dangerous_queries: true
    parameters: SELECT request.parameters() ->> 'org' AS org
    data:
      - SELECT * FROM todos WHERE org_id = bucket.org
event_definitions:
  write_checkpoints:
    payloads:
      - SELECT user_id, client_id, checkpoint FROM checkpoints
",
        &[],
    );
    expect(
        "\
config:
  edition: 3
with:
  my_orgs: SELECT org_id FROM users WHERE id = auth.user_id()
streams:
  org_docs:
    auto_subscribe: true
    query: SELECT * FROM docs WHERE org_id IN my_orgs
",
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// YAML structure.

#[test]
fn yaml_syntax_error_points_at_the_offending_colon() {
    // "  global: data: x": the second `:` is column 15 (g=3..8, ':'=9, d=11..14, ':'=15).
    expect(
        "\
bucket_definitions:
  global: data: x
",
        &[(Error, "YAML syntax is invalid", 2, 15)],
    );
}

#[test]
fn yaml_syntax_error_in_a_flow_sequence() {
    // The flow sequence is never closed: `]` was expected before the `}` on line 3, column 28
    // ("    data: [SELECT id FROM t}": `[` = 11, `S` = 12, `}` = 12 + 16 = 28).
    expect(
        "\
bucket_definitions:
  global:
    data: [SELECT id FROM t}
",
        &[(Error, "YAML syntax is invalid", 3, 28)],
    );
}

#[test]
fn yaml_syntax_error_missing_colon_points_at_the_key() {
    // `streams` lacks its `:`; the parser only notices on the next line, but the offending
    // node is `streams` (4:1), not `config` (5:1).
    expect(
        "\
bucket_definitions:
  global:
    data: [SELECT id FROM t]
streams
config:
  edition: 2
",
        &[(Error, "YAML syntax is invalid", 4, 1)],
    );
}

#[test]
fn root_that_is_not_a_map() {
    expect(
        "\
# a list of queries is not a rules file
- SELECT id FROM t
",
        &[(Error, "Sync rules must be a YAML map.", 2, 1)],
    );
}

#[test]
fn unknown_top_level_key() {
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t
bucket_definition:
  other:
    data: []
",
        &[(
            Error,
            "must NOT have additional properties: 'bucket_definition'",
            5,
            1,
        )],
    );
}

#[test]
fn unknown_key_in_a_bucket_definition() {
    expect(
        "\
bucket_definitions:
  by_user:
    parameter: SELECT request.user_id() AS uid
    data:
      - SELECT id FROM t
",
        &[(Error, "must NOT have additional properties: 'parameter'", 3, 5)],
    );
}

#[test]
fn unknown_key_in_a_stream() {
    expect(
        "\
config:
  edition: 3
streams:
  lists:
    query: SELECT * FROM lists
    auto_subscribed: true
",
        &[(
            Error,
            "must NOT have additional properties: 'auto_subscribed'",
            6,
            5,
        )],
    );
}

#[test]
fn unknown_key_in_config() {
    expect(
        "\
config:
  edition: 2
  timestamps_iso: true
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "must NOT have additional properties: 'timestamps_iso'",
            3,
            3,
        )],
    );
}

#[test]
fn duplicate_key_in_a_bucket_definition() {
    // The second `data` would silently be ignored: it is reported at its key.
    expect(
        "\
bucket_definitions:
  global:
    data: [SELECT id FROM a]
    data: [SELECT id FROM b]
",
        &[(Error, "Map keys must be unique: 'data'", 4, 5)],
    );
}

#[test]
fn duplicate_top_level_key() {
    expect(
        "\
bucket_definitions:
  a:
    data: [SELECT id FROM t]
bucket_definitions:
  b:
    data: [SELECT id FROM u]
",
        &[(Error, "Map keys must be unique: 'bucket_definitions'", 4, 1)],
    );
}

#[test]
fn bucket_definitions_not_a_map() {
    // A wrong value is reported at the value: "bucket_definitions: 5" → column 21.
    expect(
        "\
bucket_definitions: 5
",
        &[(Error, "'bucket_definitions' must be an object", 1, 21)],
    );
}

#[test]
fn bucket_definition_not_a_map() {
    // "  global: SELECT id FROM t": the value starts at column 11.
    expect(
        "\
bucket_definitions:
  global: SELECT id FROM t
",
        &[(Error, "'global' bucket definition must be an object", 2, 11)],
    );
}

#[test]
fn data_is_not_a_list() {
    // "    data: SELECT id FROM t": the value starts at column 11.
    expect(
        "\
bucket_definitions:
  global:
    data: SELECT id FROM t
",
        &[(Error, "'data' must be an array", 3, 11)],
    );
}

#[test]
fn empty_data_points_at_its_key() {
    // All queries are commented out: the empty value has no text of its own, so the error is
    // at `data` (3:5), not at the next key `other` (5:3).
    expect(
        "\
bucket_definitions:
  global:
    data:
      # - SELECT id FROM t
  other:
    data: [SELECT id FROM t]
",
        &[(Error, "'data' must be an array", 3, 5)],
    );
}

#[test]
fn data_as_a_literal_block_points_at_the_indicator() {
    // "    data: |": the value starts at its `|`, column 11 of the key's line.
    expect(
        "\
bucket_definitions:
  global:
    data: |
      SELECT id FROM t
",
        &[(Error, "'data' must be an array", 3, 11)],
    );
}

#[test]
fn empty_data_item_points_at_its_dash() {
    expect(
        "\
bucket_definitions:
  global:
    data:
      -
      - SELECT id FROM t
",
        &[(Error, "Must be a string.", 4, 7)],
    );
}

#[test]
fn data_item_is_not_a_string() {
    // "      - query: ..." : the mapping (its first key) starts at column 9.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - query: SELECT id FROM t
",
        &[(Error, "Must be a string.", 4, 9)],
    );
}

#[test]
fn parameters_is_a_map() {
    // The mapping value starts at its first key (4:7); the data query then has no bucket
    // parameters to match (the cascade error of §4).
    expect(
        "\
bucket_definitions:
  by_user:
    parameters:
      uid: SELECT request.user_id() AS uid
    data:
      - SELECT id FROM t WHERE owner = bucket.uid
",
        &[
            (Error, "Parameters must be a string or array of strings", 4, 7),
            (Error, CASCADE, 6, 9),
        ],
    );
}

#[test]
fn missing_data_points_at_the_definition_name() {
    expect(
        "\
bucket_definitions:
  global:
    parameters: SELECT
  other:
    data: [SELECT id FROM t]
",
        &[(Error, "'data' must be an array", 2, 3)],
    );
}

#[test]
fn priority_out_of_range() {
    // "    priority: 5": the value is column 15.
    expect(
        "\
bucket_definitions:
  global:
    priority: 5
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "Invalid priority, expected a number between 0 and 3 (inclusive).",
            3,
            15,
        )],
    );
}

#[test]
fn priority_not_a_number() {
    // `"x"`: the value (its opening quote) is column 15.
    expect(
        "\
config:
  edition: 3
streams:
  lists:
    priority: \"x\"
    query: SELECT * FROM lists
",
        &[(
            Error,
            "Invalid priority, expected a number between 0 and 3 (inclusive).",
            5,
            15,
        )],
    );
}

#[test]
fn unsupported_edition() {
    // "  edition: 7": the value is column 12.
    expect(
        "\
config:
  edition: 7
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "edition must be equal to one of the allowed values: 1, 2, 3",
            2,
            12,
        )],
    );
}

#[test]
fn unknown_timestamp_precision() {
    // "  timestamp_max_precision: minutes": the key is 23 characters (3..=25), the value is
    // column 28.
    expect(
        "\
config:
  edition: 2
  timestamp_max_precision: minutes
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "timestamp_max_precision must be equal to one of the allowed values",
            3,
            28,
        )],
    );
}

#[test]
fn timestamp_precision_without_iso8601() {
    // The option that needs `timestamps_iso8601` is the offending node, not `edition`.
    expect(
        "\
config:
  edition: 2
  timestamps_iso8601: false
  timestamp_max_precision: milliseconds
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "'timestamp_max_precision' requires 'timestamps_iso8601' to be enabled.",
            4,
            3,
        )],
    );
}

#[test]
fn option_that_is_not_a_boolean() {
    // "  timestamps_iso8601: 1": the value is column 23.
    expect(
        "\
config:
  timestamps_iso8601: 1
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(Error, "'timestamps_iso8601' must be boolean", 2, 23)],
    );
}

#[test]
fn auto_subscribe_not_a_boolean() {
    // "    auto_subscribe: maybe": the key is 14 characters (5..=18), the value is column 21.
    expect(
        "\
config:
  edition: 3
streams:
  lists:
    query: SELECT * FROM lists
    auto_subscribe: maybe
",
        &[(Error, "'auto_subscribe' must be boolean", 6, 21)],
    );
}

#[test]
fn unsupported_storage_version() {
    // "  storage_version: 99": the key is 15 characters (3..=17), the value is column 20.
    expect(
        "\
config:
  storage_version: 99
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(Error, "Storage version 99 is not supported", 2, 20)],
    );
}

#[test]
fn duplicate_name_across_buckets_and_streams() {
    expect(
        "\
config:
  edition: 2
bucket_definitions:
  todos:
    data: [SELECT id FROM todos]
streams:
  todos:
    query: SELECT * FROM todos
",
        &[
            (Warning, ALPHA, 6, 1),
            (Error, "Duplicate stream or bucket definition.", 7, 3),
        ],
    );
}

#[test]
fn no_definitions_at_all() {
    // Points at the parent of the missing keys: the root map, which starts on line 2.
    expect(
        "\
# nothing to sync
config:
  edition: 2
",
        &[(Error, "'bucket_definitions' or 'streams' is required", 2, 1)],
    );
}

#[test]
fn edition_3_rejects_bucket_definitions() {
    expect(
        "\
config:
  edition: 3
bucket_definitions:
  b:
    data: [SELECT id FROM t]
streams:
  s:
    query: SELECT * FROM t
",
        &[(
            Error,
            "'bucket_definitions' are not supported by the new compiler.",
            3,
            1,
        )],
    );
}

#[test]
fn edition_3_requires_streams() {
    expect(
        "\
config:
  edition: 3
",
        &[(Error, "'streams' are required.", 1, 1)],
    );
}

#[test]
fn with_before_edition_3() {
    expect(
        "\
with:
  owned: SELECT id FROM t
bucket_definitions:
  global:
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "Common table expressions are not supported without the `sync_config_compiler` option.",
            1,
            1,
        )],
    );
}

#[test]
fn alpha_stream_without_query() {
    expect(
        "\
config:
  edition: 2
streams:
  s:
    auto_subscribe: true
",
        &[(Warning, ALPHA, 3, 1), (Error, "Must be a string.", 4, 3)],
    );
}

#[test]
fn streams_in_edition_1() {
    expect(
        "\
bucket_definitions:
  global:
    data: [SELECT id FROM t]
streams:
  s:
    query: SELECT * FROM t
",
        &[(
            Error,
            "Sync streams require edition 2 or later. Add `config: {edition: 2}` (or 3) to the rules file.",
            4,
            1,
        )],
    );
}

#[test]
fn edition_3_stream_without_query() {
    expect(
        "\
config:
  edition: 3
streams:
  s:
    auto_subscribe: true
",
        &[(Error, "One of `queries` or `query` must be given.", 4, 3)],
    );
}

#[test]
fn alpha_stream_with_queries() {
    expect(
        "\
config:
  edition: 2
streams:
  s:
    query: SELECT * FROM a
    queries: [SELECT * FROM b]
",
        &[
            (Warning, ALPHA, 3, 1),
            (
                Error,
                "Multiple queries not supported without the `sync_config_compiler` option.",
                6,
                5,
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// SQL in the different scalar styles.

#[test]
fn sql_syntax_error_in_a_plain_scalar() {
    // "SELECT id FROM t WHERE a = = 1": the second `=` is at offset 27; the scalar starts at
    // column 9 → column 36.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t WHERE a = = 1
",
        &[(Error, "SQL is invalid", 4, 36)],
    );
}

#[test]
fn sql_syntax_error_in_a_double_quoted_scalar() {
    // Same SQL; the text starts after the quote, at column 10 → column 37.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - \"SELECT id FROM t WHERE a = = 1\"
",
        &[(Error, "SQL is invalid", 4, 37)],
    );
}

#[test]
fn two_statements_in_a_single_quoted_scalar() {
    // "SELECT id FROM a; SELECT id FROM b": the second SELECT is at offset 18; the text starts
    // at column 10 → column 28.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - 'SELECT id FROM a; SELECT id FROM b'
",
        &[(Error, "Only a single SELECT statement is supported", 4, 28)],
    );
}

#[test]
fn order_by_on_the_third_line_of_a_literal_block() {
    expect(
        "\
bucket_definitions:
  global:
    data:
      - |
        SELECT id, name
        FROM todos
        ORDER BY name
",
        &[(Error, "ORDER BY is not supported", 7, 9)],
    );
}

#[test]
fn unknown_function_on_the_second_line_of_a_literal_block() {
    // The block's indentation is 8; the function is indented 2 more → column 11.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - |
        SELECT id,
          coalesce(a, b) AS c
        FROM t
",
        &[(Error, "Function 'coalesce' is not defined", 6, 11)],
    );
}

#[test]
fn unexpected_end_of_a_literal_block() {
    // The SQL ends too early: the error is right after its last character, on file line 6
    // ("        FROM t WHERE": `F` = 9, "FROM t WHERE" is 12 characters → column 21), not at
    // the block's start or on the next item.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - |
        SELECT id
        FROM t WHERE
      - SELECT id FROM u
",
        &[(Error, "SQL is invalid", 6, 21)],
    );
}

#[test]
fn literal_block_with_strip_chomping_and_a_blank_line() {
    // `|-` and an empty line inside the block: LIMIT is on file line 7, column 9.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - |-
        SELECT id FROM t

        LIMIT 10
",
        &[(Error, "LIMIT is not supported", 7, 9)],
    );
}

#[test]
fn single_quoted_scalar_with_escapes_falls_back_to_the_scalar_start() {
    // `''` escapes change the text, so the position is the scalar start (its quote).
    expect(
        "\
bucket_definitions:
  global:
    data:
      - 'SELECT id FROM t WHERE name = ''x'' LIMIT 1'
",
        &[(Error, "LIMIT is not supported", 4, 9)],
    );
}

#[test]
fn double_quoted_scalar_with_escapes_falls_back_to_the_scalar_start() {
    expect(
        "\
bucket_definitions:
  global:
    data:
      - \"SELECT id FROM t WHERE \\\"Name\\\" = 1 LIMIT 1\"
",
        &[(Error, "LIMIT is not supported", 4, 9)],
    );
}

#[test]
fn multi_line_plain_scalar_falls_back_to_the_scalar_start() {
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t
        LIMIT 1
",
        &[(Error, "LIMIT is not supported", 4, 9)],
    );
}

#[test]
fn folded_block_falls_back_to_the_scalar_start() {
    // The scalar starts at its `>` indicator (4:9).
    expect(
        "\
bucket_definitions:
  global:
    data:
      - >
        SELECT id FROM t
        LIMIT 1
",
        &[(Error, "LIMIT is not supported", 4, 9)],
    );
}

#[test]
fn crlf_line_endings_give_the_same_positions() {
    // The ORDER BY test with Windows line endings: still 7:9.
    let yaml = "\
bucket_definitions:
  global:
    data:
      - |
        SELECT id, name
        FROM todos
        ORDER BY name
"
    .replace('\n', "\r\n");
    expect(&yaml, &[(Error, "ORDER BY is not supported", 7, 9)]);
}

#[test]
fn columns_count_characters_not_bytes() {
    // "SELECT id, 'ü' AS u, coalesce(a) AS c FROM t": `ü` is one column (two bytes), so
    // coalesce is at character offset 21 → column 9 + 21 = 30.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, 'ü' AS u, coalesce(a) AS c FROM t
",
        &[(Error, "Function 'coalesce' is not defined", 4, 30)],
    );
}

// ---------------------------------------------------------------------------------------------
// Data queries (§3).

#[test]
fn non_select_statement() {
    // "    parameters: UPDATE ...": the scalar starts at column 17.
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: UPDATE users SET x = 1
    data: []
",
        &[(Error, "Only SELECT statements are supported", 3, 17)],
    );
}

#[test]
fn join_points_at_the_join() {
    // "SELECT todos.id FROM todos JOIN ...": JOIN is at offset 27 → column 9 + 27 = 36.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT todos.id FROM todos JOIN lists ON todos.list_id = lists.id
",
        &[(Error, "Must SELECT from a single table", 4, 36)],
    );
}

#[test]
fn comma_join_points_at_the_second_table() {
    // "SELECT id FROM a, b": `b` is at offset 18 → column 27.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM a, b
",
        &[(Error, "Must SELECT from a single table", 4, 27)],
    );
}

#[test]
fn group_by() {
    // "SELECT id FROM t GROUP BY id": GROUP is at offset 17 → column 26.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t GROUP BY id
",
        &[(Error, "GROUP BY is not supported", 4, 26)],
    );
}

#[test]
fn limit_in_a_double_quoted_scalar() {
    // "SELECT id FROM t LIMIT 10": LIMIT is at offset 17; the text starts at column 10 → 27.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - \"SELECT id FROM t LIMIT 10\"
",
        &[(Error, "LIMIT is not supported", 4, 27)],
    );
}

#[test]
fn distinct() {
    // "SELECT DISTINCT id FROM t": DISTINCT is at offset 7 → column 16.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT DISTINCT id FROM t
",
        &[(Error, "DISTINCT is not supported", 4, 16)],
    );
}

#[test]
fn expression_without_alias() {
    // "SELECT id, upper(name) FROM t": upper is at offset 11 → column 20.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, upper(name) FROM t
",
        &[(Error, "alias is required", 4, 20)],
    );
}

#[test]
fn missing_id_column() {
    // Points at the first output column: offset 7 → column 16.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT name, title FROM t
",
        &[(Error, "Query must return an \"id\" column", 4, 16)],
    );
}

#[test]
fn bucket_parameter_not_covered() {
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: SELECT request.user_id() AS uid
    data:
      - SELECT id FROM todos
",
        &[(
            Error,
            "Query must cover all bucket parameters. Expected: [\"bucket.uid\"] Got: []",
            5,
            9,
        )],
    );
}

#[test]
fn parameter_queries_with_different_parameters() {
    // Reported at the query that disagrees with the first one.
    expect(
        "\
bucket_definitions:
  by_user:
    parameters:
      - SELECT request.user_id() AS uid
      - SELECT token_parameters.org AS org
    data:
      - SELECT id FROM todos WHERE owner = bucket.uid
",
        &[(
            Error,
            "Bucket parameters must match for each parameter query within a bucket",
            5,
            9,
        )],
    );
}

#[test]
fn token_parameters_in_a_data_query() {
    // "SELECT id FROM todos WHERE owner = token_parameters.user_id": the reference is at
    // offset 35 → column 44.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM todos WHERE owner = token_parameters.user_id
",
        &[(Error, "Undefined reference: token_parameters.user_id", 4, 44)],
    );
}

#[test]
fn request_function_in_a_data_query() {
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM todos WHERE owner = request.user_id()
",
        &[(Error, "request schema is not available in data queries", 4, 44)],
    );
}

#[test]
fn schema_qualified_column() {
    // "SELECT id, public.todos.title FROM todos": the reference is at offset 11 → column 20.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, public.todos.title FROM todos
",
        &[(Error, "Schema is not supported in column references", 4, 20)],
    );
}

#[test]
fn like_operator() {
    // "SELECT id FROM t WHERE name LIKE 'a%'": the LIKE expression starts at offset 23 → 32.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t WHERE name LIKE 'a%'
",
        &[(Error, "Operator not supported: LIKE", 4, 32)],
    );
}

#[test]
fn case_expression() {
    // CASE is at offset 11 → column 20.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, CASE WHEN done THEN 1 ELSE 0 END AS d FROM t
",
        &[(Error, "case not supported here", 4, 20)],
    );
}

#[test]
fn literal_in_list() {
    // The IN expression starts at offset 23 → column 32.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM t WHERE status IN ('a', 'b')
",
        &[(Error, "list not supported here", 4, 32)],
    );
}

#[test]
fn cast_to_varchar() {
    // CAST is at offset 11 → column 20.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, CAST(n AS varchar) AS s FROM t
",
        &[(Error, "CAST not supported for 'varchar'", 4, 20)],
    );
}

#[test]
fn unary_minus_on_a_column() {
    // `-` is at offset 11 → column 20.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, -n AS m FROM t
",
        &[(Error, "Operator - is not supported", 4, 20)],
    );
}

#[test]
fn bucket_parameters_on_both_sides_of_equals() {
    // "SELECT id FROM t WHERE bucket.a = bucket.b": the comparison starts at offset 23 → 32.
    expect(
        "\
bucket_definitions:
  pair:
    parameters: SELECT request.user_id() AS a, request.user_id() AS b
    data:
      - SELECT id FROM t WHERE bucket.a = bucket.b
",
        &[(
            Error,
            "Cannot have bucket parameters on both sides of = operator",
            5,
            32,
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Parameter queries (§4).

#[test]
fn star_in_a_parameter_query() {
    // "    parameters: SELECT * ...": the scalar starts at column 17, `*` is offset 7 → 24.
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: SELECT * FROM users WHERE id = request.user_id()
    data:
      - SELECT id FROM todos WHERE owner = bucket.id
",
        &[
            (Error, "* is not supported here - use explicit columns", 3, 24),
            (Error, CASCADE, 5, 9),
        ],
    );
}

#[test]
fn table_alias_in_a_parameter_query() {
    // "SELECT u.org_id FROM users u WHERE ...": the table reference `users u` starts at offset
    // 21 → column 17 + 21 = 38.
    expect(
        "\
bucket_definitions:
  by_org:
    parameters: SELECT u.org_id FROM users u WHERE u.id = request.user_id()
    data:
      - SELECT id FROM todos WHERE org_id = bucket.org_id
",
        &[(Error, "Table aliases not supported in parameter queries", 3, 38)],
    );
}

#[test]
fn unknown_table_valued_function() {
    // "SELECT value AS p FROM json_tree(...)": json_tree is at offset 23 → column 40.
    expect(
        "\
bucket_definitions:
  by_item:
    parameters: SELECT value AS p FROM json_tree(request.parameters())
    data:
      - SELECT id FROM todos WHERE id = bucket.p
",
        &[
            (Error, "Table-valued function json_tree is not defined.", 3, 40),
            (Error, CASCADE, 5, 9),
        ],
    );
}

#[test]
fn priority_that_is_not_a_literal() {
    // "SELECT request.user_id() AS uid, token_parameters.p AS _priority": the `_priority`
    // expression is at offset 33 → column 17 + 33 = 50.
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: SELECT request.user_id() AS uid, token_parameters.p AS _priority
    data:
      - SELECT id FROM todos WHERE owner = bucket.uid
",
        &[(Error, "Priority must be a simple integer literal", 3, 50)],
    );
}

#[test]
fn priority_out_of_range_in_sql() {
    // "SELECT 4 AS _priority": `4` is offset 7 → column 24.
    expect(
        "\
bucket_definitions:
  global:
    parameters: SELECT 4 AS _priority
    data: [SELECT id FROM t]
",
        &[(
            Error,
            "Invalid value for priority, must be between 0 and 3 (inclusive).",
            3,
            24,
        )],
    );
}

#[test]
fn priority_set_twice() {
    // Points at the `_priority` column (its expression `0`, offset 7 → column 24).
    expect(
        "\
bucket_definitions:
  global:
    priority: 1
    parameters: SELECT 0 AS _priority
    data: [SELECT id FROM t]
",
        &[(Error, "Cannot set priority multiple times.", 4, 24)],
    );
}

#[test]
fn multiple_expanding_in_operators() {
    // Points at the second expanding IN: file line 6 is "        AND team_id IN (...)", the
    // block's indentation is 6, so `team_id` is column 13.
    expect(
        "\
bucket_definitions:
  by_project:
    parameters: |
      SELECT id AS project_id FROM projects
      WHERE org_id IN (request.jwt() -> 'orgs')
        AND team_id IN (request.jwt() -> 'teams')
    data:
      - SELECT id FROM todos WHERE project_id = bucket.project_id
",
        &[(Error, "Cannot have multiple array input parameters", 6, 13)],
    );
}

#[test]
fn table_values_and_parameters_in_one_clause() {
    // "SELECT id AS uid FROM users WHERE name || request.user_id() = 'x'": the request value
    // is at offset 42 → column 17 + 42 = 59. The lookup query fails, so the data query cascades.
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: SELECT id AS uid FROM users WHERE name || request.user_id() = 'x'
    data:
      - SELECT id FROM todos WHERE owner = bucket.uid
",
        &[
            (
                Error,
                "Cannot use table values and parameters in the same clauses",
                3,
                59,
            ),
            (Error, CASCADE, 5, 9),
        ],
    );
}

#[test]
fn request_function_with_arguments() {
    // `request.user_id(1)` starts at offset 7 → column 24.
    expect(
        "\
bucket_definitions:
  by_user:
    parameters: SELECT request.user_id(1) AS uid
    data:
      - SELECT id FROM todos WHERE owner = bucket.uid
",
        &[(Error, "Function 'request.user_id' takes 0 arguments.", 3, 24)],
    );
}

#[test]
fn dangerous_client_parameter_query() {
    // A whole-query warning: at the start of the query.
    expect(
        "\
bucket_definitions:
  by_org:
    parameters: SELECT request.parameters() ->> 'org' AS org
    data:
      - SELECT id FROM todos WHERE org_id = bucket.org
",
        &[(
            Warning,
            "Potentially dangerous query based on parameters set by the client. The client can send any value for these parameters so it's not a good place to do authorization.",
            3,
            17,
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Streams and edition 3.

#[test]
fn alpha_streams_warning() {
    expect(
        "\
config:
  edition: 2
streams:
  lists:
    query: SELECT * FROM lists
",
        &[(
            Warning,
            "This is using an alpha version of Sync Streams. We recommend upgrading `config.edition` to version 3 to support the latest features.",
            3,
            1,
        )],
    );
}

#[test]
fn unused_cte() {
    expect(
        "\
config:
  edition: 3
with:
  my_orgs: SELECT org_id FROM users WHERE id = auth.user_id()
streams:
  lists:
    query: SELECT * FROM lists
",
        &[(Warning, "This common table expression isn't referenced.", 4, 3)],
    );
}

#[test]
fn star_in_a_cte() {
    // "  my_orgs: SELECT * FROM ...": the scalar starts at column 12, `*` is offset 7 → 19.
    expect(
        "\
config:
  edition: 3
with:
  my_orgs: SELECT * FROM users WHERE id = auth.user_id()
streams:
  org_docs:
    query: SELECT * FROM docs WHERE org_id IN my_orgs
",
        &[(
            Error,
            "* columns are not allowed in subqueries or common table expressions",
            4,
            19,
        )],
    );
}

#[test]
fn cte_with_two_columns() {
    // The CTE's SELECT starts the scalar, column 12.
    expect(
        "\
config:
  edition: 3
with:
  my_orgs: SELECT org_id, id FROM users WHERE id = auth.user_id()
streams:
  org_docs:
    query: SELECT * FROM docs WHERE org_id IN my_orgs
",
        &[(
            Error,
            "Common-table expression must return a single column",
            4,
            12,
        )],
    );
}

#[test]
fn duplicate_cte_name() {
    expect(
        "\
config:
  edition: 3
with:
  my_orgs: SELECT org_id FROM users WHERE id = auth.user_id()
  my_orgs: SELECT org_id FROM admins WHERE id = auth.user_id()
streams:
  org_docs:
    query: SELECT * FROM docs WHERE org_id IN my_orgs
",
        &[(Error, "Map keys must be unique: 'my_orgs'", 5, 3)],
    );
}

#[test]
fn subquery_with_two_columns() {
    // "    query: SELECT * FROM docs WHERE org_id IN (SELECT org_id, id FROM users ...)": the
    // scalar starts at column 12; the subquery's SELECT is at offset 36 → column 48.
    expect(
        "\
config:
  edition: 3
streams:
  org_docs:
    query: SELECT * FROM docs WHERE org_id IN (SELECT org_id, id FROM users WHERE id = auth.user_id())
",
        &[(Error, "This subquery must return exactly one column", 5, 48)],
    );
}

#[test]
fn syntax_error_in_the_second_query_of_a_stream() {
    // The second `queries` item is a literal block; the stray `)` is on its second line:
    // "        FROM tasks WHERE assignee = auth.user_id())" → `)` at column 9 + 42 = 51.
    expect(
        "\
config:
  edition: 3
streams:
  mine:
    queries:
      - SELECT * FROM notes WHERE author = auth.user_id()
      - |
        SELECT *
        FROM tasks WHERE assignee = auth.user_id())
",
        &[(Error, "SQL is invalid", 9, 51)],
    );
}

// ---------------------------------------------------------------------------------------------
// Event definitions.

#[test]
fn event_payload_with_order_by() {
    // "SELECT user_id, client_id, checkpoint FROM checkpoints ORDER BY checkpoint": ORDER is at
    // offset 55 → column 9 + 55 = 64.
    expect(
        "\
bucket_definitions:
  global:
    data: [SELECT id FROM t]
event_definitions:
  write_checkpoints:
    payloads:
      - SELECT user_id, client_id, checkpoint FROM checkpoints ORDER BY checkpoint
",
        &[(Error, "ORDER BY is not supported", 7, 64)],
    );
}

#[test]
fn event_payloads_not_a_list() {
    // "    payloads: SELECT ...": the value starts at column 15.
    expect(
        "\
bucket_definitions:
  global:
    data: [SELECT id FROM t]
event_definitions:
  write_checkpoints:
    payloads: SELECT user_id FROM checkpoints
",
        &[(Error, "Event definition payloads must be an array.", 6, 15)],
    );
}

// ---------------------------------------------------------------------------------------------
// Warnings.

#[test]
fn unquoted_identifier_with_capitals() {
    // "SELECT id, userName FROM t": userName is at offset 11 → column 20.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, userName FROM t
",
        &[(
            Warning,
            "Unquoted identifiers are converted to lower-case. Use \"userName\" instead.",
            4,
            20,
        )],
    );
}

#[test]
fn unquoted_table_name_with_capitals() {
    // "SELECT id FROM Todos": the table name is at offset 15 → column 24.
    expect(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM Todos
",
        &[(
            Warning,
            "Unquoted identifiers are converted to lower-case. Use \"Todos\" instead.",
            4,
            24,
        )],
    );
}

#[test]
fn table_not_in_schema() {
    // "SELECT id FROM todoz": the table is at offset 15 → column 24.
    expect_with_schema(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id FROM todoz
",
        &[(Warning, "Table public.todoz not found", 4, 24)],
    );
}

#[test]
fn column_not_in_schema() {
    // "SELECT id, titel FROM todos": titel is at offset 11 → column 20.
    expect_with_schema(
        "\
bucket_definitions:
  global:
    data:
      - SELECT id, titel FROM todos
",
        &[(Warning, "Column not found: titel", 4, 20)],
    );
}

#[test]
fn star_from_a_table_without_id() {
    // Only a warning with `*`; it points at `*` (offset 7 → column 16).
    expect_with_schema(
        "\
bucket_definitions:
  global:
    data:
      - SELECT * FROM notes
",
        &[(Warning, "Query must return an \"id\" column", 4, 16)],
    );
}
