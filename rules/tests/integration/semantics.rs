//! Semantics of SYNC_RULES.md that the shared vectors (`testdata/sync-rules-cases.jsonl`) do not
//! cover, end to end: rules are compiled, rows given as Postgres text go through
//! `map_text_value`, data rows are placed into buckets, parameter rows are indexed by
//! `lookup.key()`, and a connection's buckets are resolved against that index.
//!
//! Every expectation is computed by hand from the spec (section numbers in the comments). Streams
//! use edition 2 (the reference rejects streams in edition 1), so their ids carry `1#`.

use std::collections::HashMap;

use serde_json::{Value, json};
use syncgate_rules::pgtype::{PgType, map_text_value};
use syncgate_rules::{
    CompileOptions, ConnectionRequest, ParameterLookup, RowEvaluation, Severity, SourceTable, SqliteValue,
    StreamSubscription, SyncRules, compile,
};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A source table: schema, name and (column, Postgres type) pairs in table order.
struct Table {
    source: SourceTable,
    types: Vec<PgType>,
}

fn table(name: &str, columns: &[(&str, &str)]) -> Table {
    table_in("public", name, columns)
}

fn table_in(schema: &str, name: &str, columns: &[(&str, &str)]) -> Table {
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    Table {
        source: SourceTable::new(schema, name, &names),
        types: columns.iter().map(|(_, t)| PgType::from_name(t)).collect(),
    }
}

fn compile_with(yaml: &str, options: &CompileOptions) -> SyncRules {
    let result = compile(yaml, options);
    let errors: Vec<String> = result
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    assert!(errors.is_empty(), "rules failed to compile: {errors:#?}\n{yaml}");
    result.rules.expect("rules without errors")
}

/// One placement: `(bucket, "table/id", data JSON text)`.
type Placement = (String, String, String);

/// Rules plus everything replicated so far: placed rows, row errors and the parameter index.
struct Db {
    rules: SyncRules,
    placed: Vec<Placement>,
    row_errors: Vec<String>,
    parameter_errors: Vec<String>,
    /// Parameter index entries: (source row key, lookup key, stored values). A source row's
    /// entries are replaced as a whole when the row changes, like the gateway's storage.
    index: Vec<(String, String, Vec<SqliteValue>)>,
}

impl Db {
    fn new(yaml: &str) -> Db {
        Db::with_options(yaml, &CompileOptions::default())
    }

    fn with_options(yaml: &str, options: &CompileOptions) -> Db {
        Db {
            rules: compile_with(yaml, options),
            placed: Vec::new(),
            row_errors: Vec::new(),
            parameter_errors: Vec::new(),
            index: Vec::new(),
        }
    }

    /// A row given as JSON: `null` is SQL NULL, a string is the Postgres text of the column.
    fn values(&self, t: &Table, row: &Value) -> Vec<SqliteValue> {
        let cells = row.as_array().expect("a row is a JSON array");
        assert_eq!(cells.len(), t.types.len(), "row width");
        cells
            .iter()
            .zip(&t.types)
            .map(|(cell, ty)| match cell {
                Value::Null => SqliteValue::Null,
                Value::String(text) => map_text_value(ty, text, self.rules.compatibility()),
                other => panic!("cells are Postgres text or null, got {other}"),
            })
            .collect()
    }

    /// Replicates rows (inserts): data placements and parameter index entries.
    fn insert(&mut self, t: &Table, rows: &[Value]) {
        for row in rows {
            self.upsert(t, row);
        }
    }

    /// Inserts or updates a row: its previous index entries (same table, same first column) go.
    fn upsert(&mut self, t: &Table, row: &Value) {
        let values = self.values(t, row);
        let plan = self.rules.plan_table(&t.source);
        let mut evaluation = RowEvaluation::default();
        self.rules.evaluate_row(&plan, &values, &mut evaluation);
        for r in evaluation.rows() {
            self.placed.push((
                r.bucket.to_string(),
                format!("{}/{}", r.table, r.id),
                r.data.to_string(),
            ));
        }
        self.row_errors
            .extend(evaluation.errors.into_iter().map(|e| e.message));

        let source_key = row_key(t, row);
        self.index.retain(|(k, _, _)| *k != source_key);
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        self.rules
            .evaluate_parameter_row(&plan, &values, &mut entries, &mut errors);
        for e in entries {
            self.index.push((source_key.clone(), e.lookup.key(), e.values));
        }
        self.parameter_errors
            .extend(errors.into_iter().map(|e| e.message));
    }

    /// Deletes a parameter row (by its first column).
    fn delete(&mut self, t: &Table, row: &Value) {
        let source_key = row_key(t, row);
        self.index.retain(|(k, _, _)| *k != source_key);
    }

    /// Index entries as `lookup key → stored values`.
    fn index_entries(&self) -> Vec<(String, Vec<SqliteValue>)> {
        self.index
            .iter()
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Resolves a request; returns `(bucket, definition, priority)` in the resolver's order, and
    /// the lookups the resolver asked for.
    fn resolve_request(
        &self,
        request: &ConnectionRequest,
    ) -> (Vec<(String, String, u8)>, Vec<ParameterLookup>) {
        let mut by_key: HashMap<&str, Vec<Vec<SqliteValue>>> = HashMap::new();
        for (_, key, values) in &self.index {
            by_key.entry(key.as_str()).or_default().push(values.clone());
        }
        let mut asked = Vec::new();
        let buckets = self
            .rules
            .resolve_buckets(request, |lookups| -> Result<_, std::convert::Infallible> {
                asked.extend(lookups.iter().cloned());
                Ok(lookups
                    .iter()
                    .map(|l| by_key.get(l.key().as_str()).cloned().unwrap_or_default())
                    .collect())
            })
            .unwrap_or_else(|never| match never {});
        let buckets = buckets
            .into_iter()
            .map(|b| (b.bucket.to_string(), b.definition.to_string(), b.priority.get()))
            .collect();
        (buckets, asked)
    }

    /// Bucket ids for a token and client parameters (default streams included).
    fn buckets(&self, jwt: Value, parameters: Value) -> Vec<String> {
        let request = ConnectionRequest::new(&jwt, &parameters);
        let mut ids: Vec<String> = self
            .resolve_request(&request)
            .0
            .into_iter()
            .map(|b| b.0)
            .collect();
        ids.sort();
        ids
    }

    /// `(bucket, priority)` for a request.
    fn priorities(&self, request: &ConnectionRequest) -> Vec<(String, u8)> {
        let mut out: Vec<(String, u8)> = self
            .resolve_request(request)
            .0
            .into_iter()
            .map(|(b, _, p)| (b, p))
            .collect();
        out.sort();
        out
    }

    /// The rows placed in one bucket, as sorted `"table/id data"` strings (duplicates kept).
    fn rows_in(&self, bucket: &str) -> Vec<String> {
        let mut rows: Vec<String> = self
            .placed
            .iter()
            .filter(|(b, _, _)| b == bucket)
            .map(|(_, row, data)| format!("{row} {data}"))
            .collect();
        rows.sort();
        rows
    }

    /// Every bucket that got at least one row, sorted and deduplicated.
    fn placed_buckets(&self) -> Vec<String> {
        let mut b: Vec<String> = self.placed.iter().map(|(b, _, _)| b.clone()).collect();
        b.sort();
        b.dedup();
        b
    }
}

fn row_key(t: &Table, row: &Value) -> String {
    format!("{}.{}:{}", t.source.schema, t.source.name, row[0])
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

fn subscription(stream: &str, parameters: Option<Value>, priority: Option<u8>) -> StreamSubscription {
    StreamSubscription {
        stream: stream.to_string(),
        parameters,
        override_priority: priority,
    }
}

fn request(
    jwt: Value,
    parameters: Value,
    include_defaults: bool,
    subs: Vec<StreamSubscription>,
) -> ConnectionRequest {
    let mut r = ConnectionRequest::new(&jwt, &parameters);
    r.include_defaults = include_defaults;
    r.subscriptions = subs;
    r
}

// ---------------------------------------------------------------------------------------------
// §3 / §8.1 Data queries: columns, key order, ids
// ---------------------------------------------------------------------------------------------

/// `*` copies source columns in table order, skipping `_`-prefixed names.
#[test]
fn star_keeps_source_order_and_skips_underscore_columns() {
    let mut db = Db::new("bucket_definitions:\n  all:\n    data:\n      - SELECT * FROM t\n");
    let t = table(
        "t",
        &[
            ("zeta", "text"),
            ("id", "text"),
            ("_hidden", "text"),
            ("alpha", "int4"),
            ("__x", "bool"),
        ],
    );
    db.insert(&t, &[json!(["z", "r1", "secret", "7", "t"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[r#"t/r1 {"zeta":"z","id":"r1","alpha":7}"#])
    );
}

/// An explicit column before `*` keeps its first position and wins, unless its value is NULL:
/// then `*` fills in the source value (still in the first position).
#[test]
fn explicit_column_before_star_wins_unless_null() {
    let mut db = Db::new(
        "bucket_definitions:\n  all:\n    data:\n      - SELECT iif(flag, 'X', NULL) AS name, * FROM t\n",
    );
    let t = table("t", &[("id", "text"), ("name", "text"), ("flag", "bool")]);
    db.insert(&t, &[json!(["r1", "n1", "t"]), json!(["r2", "n2", "f"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[
            r#"t/r1 {"name":"X","id":"r1","flag":1}"#,
            r#"t/r2 {"name":"n2","id":"r2","flag":0}"#,
        ])
    );
}

/// An explicit column after `*` replaces the star's value in the star's position, even with NULL.
#[test]
fn explicit_column_after_star_overwrites_in_place() {
    let mut db = Db::new(
        "bucket_definitions:\n  all:\n    data:\n      - SELECT *, upper(name) AS name, NULL AS n FROM t\n",
    );
    let t = table(
        "t",
        &[("id", "text"), ("name", "text"), ("n", "int4"), ("z", "text")],
    );
    db.insert(&t, &[json!(["r1", "abc", "5", "zz"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[r#"t/r1 {"id":"r1","name":"ABC","n":null,"z":"zz"}"#])
    );
}

/// Keys that look like array indexes come first in ascending numeric order (a JavaScript object);
/// `"01"` is not canonical and keeps its place.
#[test]
fn array_index_like_keys_are_ordered_first() {
    let mut db = Db::new("bucket_definitions:\n  all:\n    data:\n      - SELECT 'q' AS \"7\", * FROM t\n");
    let t = table(
        "t",
        &[
            ("id", "text"),
            ("42", "text"),
            ("name", "text"),
            ("0", "int4"),
            ("01", "text"),
        ],
    );
    db.insert(&t, &[json!(["r1", "a", "n", "5", "b"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[r#"t/r1 {"0":5,"7":"q","42":"a","id":"r1","name":"n","01":"b"}"#])
    );
}

/// Blob values are never synced: the column is dropped, and a blob `id` leaves the row id empty.
#[test]
fn blob_columns_are_dropped_and_a_blob_id_gives_an_empty_row_id() {
    let mut db = Db::new(
        "bucket_definitions:\n  all:\n    data:\n      - SELECT *, uuid_blob(u) AS raw, hex(payload) AS h FROM t\n",
    );
    let t = table(
        "t",
        &[
            ("id", "bytea"),
            ("payload", "bytea"),
            ("u", "uuid"),
            ("name", "text"),
        ],
    );
    db.insert(
        &t,
        &[json!([
            "\\x0102",
            "\\xff00",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "n"
        ])],
    );
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[r#"t/ {"u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","name":"n","h":"FF00"}"#])
    );
}

/// A NULL id gives row id "" while the data keeps `"id":null` (here through an alias).
#[test]
fn null_id_from_an_alias_gives_empty_row_id_and_null_in_data() {
    let mut db = Db::new("bucket_definitions:\n  all:\n    data:\n      - SELECT ext AS id, name FROM t\n");
    let t = table("t", &[("pk", "text"), ("ext", "text"), ("name", "text")]);
    db.insert(&t, &[json!(["p1", null, "n"]), json!(["p2", "e2", "m"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[r#"t/ {"id":null,"name":"n"}"#, r#"t/e2 {"id":"e2","name":"m"}"#])
    );
}

/// Numeric ids become text by the text rule: integers as digits, reals without `.0`, JS exponent
/// forms; the data keeps the numeric value (synced-JSON rule).
#[test]
fn numeric_ids_use_the_text_rule() {
    let mut db = Db::new(
        "bucket_definitions:\n  all:\n    data:\n      - SELECT * FROM ints\n      - SELECT * FROM reals\n",
    );
    let ints = table("ints", &[("id", "int8")]);
    let reals = table("reals", &[("id", "float8")]);
    db.insert(&ints, &[json!(["9223372036854775807"]), json!(["-4"])]);
    db.insert(
        &reals,
        &[json!(["1"]), json!(["2.5"]), json!(["1e+21"]), json!(["-0"])],
    );
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[
            r#"ints/-4 {"id":-4}"#,
            r#"ints/9223372036854775807 {"id":9223372036854775807}"#,
            r#"reals/0 {"id":0.0}"#,
            r#"reals/1 {"id":1.0}"#,
            r#"reals/1e+21 {"id":1e+21}"#,
            r#"reals/2.5 {"id":2.5}"#,
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// §3 Data queries: tables
// ---------------------------------------------------------------------------------------------

/// An unaliased wildcard outputs under each source table's own name; `_table_suffix` is usable
/// in WHERE and SELECT, and `*` does not copy it.
#[test]
fn unaliased_wildcard_table_uses_source_names_and_table_suffix() {
    let mut db = Db::new(
        "bucket_definitions:\n  all:\n    data:\n      - SELECT *, _table_suffix AS part FROM \"todos_%\" WHERE _table_suffix != 'archive'\n",
    );
    let cols = [("id", "text"), ("title", "text")];
    db.insert(&table("todos_2024", &cols), &[json!(["a", "A"])]);
    db.insert(&table("todos_archive", &cols), &[json!(["b", "B"])]);
    db.insert(&table("todos", &cols), &[json!(["c", "C"])]);
    db.insert(&table_in("other", "todos_x", &cols), &[json!(["d", "D"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[r#"todos_2024/a {"id":"a","title":"A","part":"2024"}"#])
    );
}

/// An aliased wildcard outputs every matching table under the alias.
#[test]
fn aliased_wildcard_table_outputs_under_the_alias() {
    let mut db = Db::new(
        "bucket_definitions:\n  all:\n    data:\n      - SELECT id, todos._table_suffix AS part FROM \"todos_%\" AS todos\n",
    );
    let cols = [("id", "text")];
    db.insert(&table("todos_a", &cols), &[json!(["1"])]);
    db.insert(&table("todos_b", &cols), &[json!(["2"])]);
    assert_eq!(
        db.rows_in("all[]"),
        strings(&[
            r#"todos/1 {"id":"1","part":"a"}"#,
            r#"todos/2 {"id":"2","part":"b"}"#
        ])
    );
}

/// `FROM other.t` matches only `other.t`; an unqualified `t` is `public.t`.
#[test]
fn schema_qualified_table_matches_only_that_schema() {
    let mut db = Db::new(
        "bucket_definitions:\n  qualified:\n    data:\n      - SELECT id FROM other.t\n  plain:\n    data:\n      - SELECT id FROM t\n",
    );
    db.insert(&table_in("other", "t", &[("id", "text")]), &[json!(["o1"])]);
    db.insert(&table("t", &[("id", "text")]), &[json!(["p1"])]);
    db.insert(&table_in("third", "t", &[("id", "text")]), &[json!(["x1"])]);
    assert_eq!(db.rows_in("qualified[]"), strings(&[r#"t/o1 {"id":"o1"}"#]));
    assert_eq!(db.rows_in("plain[]"), strings(&[r#"t/p1 {"id":"p1"}"#]));
}

/// Several data queries of one definition over the same table each emit their own rows.
#[test]
fn several_data_queries_over_one_table_each_place_rows() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  mine:\n    parameters: SELECT request.user_id() AS uid\n    data:\n",
        "      - SELECT id, title FROM tasks WHERE owner = bucket.uid AND NOT done\n",
        "      - SELECT id, 'done' AS state FROM tasks AS finished WHERE owner = bucket.uid AND done\n",
        "      - SELECT id FROM tasks AS everything WHERE owner = bucket.uid\n",
    ));
    let t = table(
        "tasks",
        &[
            ("id", "text"),
            ("owner", "text"),
            ("title", "text"),
            ("done", "bool"),
        ],
    );
    db.insert(
        &t,
        &[
            json!(["t1", "u1", "open", "f"]),
            json!(["t2", "u1", "closed", "t"]),
        ],
    );
    assert_eq!(
        db.rows_in("mine[\"u1\"]"),
        strings(&[
            r#"everything/t1 {"id":"t1"}"#,
            r#"everything/t2 {"id":"t2"}"#,
            r#"finished/t2 {"id":"t2","state":"done"}"#,
            r#"tasks/t1 {"id":"t1","title":"open"}"#,
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// §3 Data queries: bucket parameters and filters
// ---------------------------------------------------------------------------------------------

/// `AND` of two matches is a cartesian product; an `OR` inside gives one set per branch.
#[test]
fn and_of_bucket_parameter_matches_is_a_cartesian_product() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    accept_potentially_dangerous_queries: true\n",
        "    parameters: SELECT request.user_id() AS uid, value AS tag FROM json_each(request.parameters() -> 'tags')\n",
        "    data:\n      - SELECT id FROM posts WHERE (author = bucket.uid OR editor = bucket.uid) AND bucket.tag IN tags\n",
    ));
    let t = table(
        "posts",
        &[
            ("id", "text"),
            ("author", "text"),
            ("editor", "text"),
            ("tags", "jsonb"),
        ],
    );
    db.insert(&t, &[json!(["p1", "u1", "u2", "[\"x\", \"y\"]"])]);
    assert_eq!(
        db.placed_buckets(),
        strings(&[
            r#"b["u1","x"]"#,
            r#"b["u1","y"]"#,
            r#"b["u2","x"]"#,
            r#"b["u2","y"]"#
        ])
    );
    assert_eq!(db.placed.len(), 4);
    assert_eq!(
        db.buckets(json!({"sub": "u2"}), json!({"tags": ["y"]})),
        strings(&[r#"b["u2","y"]"#])
    );
}

/// `bucket.x IN row_array`: one bucket per element, duplicates removed (§3). NULL places the row
/// nowhere; a value that is not a JSON array is a row error for that query. (The reference
/// 0.38.1 keeps duplicate elements; the spec's rule is what is tested.)
#[test]
fn in_row_array_dedupes_elements_and_rejects_non_arrays() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_tag:\n    parameters: SELECT request.jwt() ->> 'tag' AS tag\n",
        "    data:\n      - SELECT id FROM posts WHERE bucket.tag IN posts.tags\n",
        "  all:\n    data:\n      - SELECT id FROM posts\n",
    ));
    let t = table("posts", &[("id", "text"), ("tags", "jsonb")]);
    db.insert(
        &t,
        &[
            json!(["p1", "[\"a\", \"a\", \"b\", 1, 1]"]),
            json!(["p2", null]),
            json!(["p3", "\"a\""]),
        ],
    );
    assert_eq!(db.rows_in("by_tag[\"a\"]"), strings(&[r#"posts/p1 {"id":"p1"}"#]));
    assert_eq!(db.rows_in("by_tag[\"b\"]"), strings(&[r#"posts/p1 {"id":"p1"}"#]));
    assert_eq!(db.rows_in("by_tag[1]"), strings(&[r#"posts/p1 {"id":"p1"}"#]));
    assert_eq!(
        db.placed_buckets(),
        strings(&["all[]", "by_tag[\"a\"]", "by_tag[\"b\"]", "by_tag[1]"])
    );
    // p3's tags is a JSON string, not an array: one row error; the other query still places p3.
    assert_eq!(db.row_errors.len(), 1, "{:?}", db.row_errors);
    assert_eq!(db.rows_in("all[]").len(), 3);
}

/// `OR` keeps duplicates: a row matching both branches for one bucket is placed there twice.
#[test]
fn or_of_equality_and_in_keeps_duplicate_placements() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    parameters: SELECT request.user_id() AS uid\n",
        "    data:\n      - SELECT id FROM docs WHERE owner = bucket.uid OR bucket.uid IN watchers\n",
    ));
    let t = table(
        "docs",
        &[("id", "text"), ("owner", "text"), ("watchers", "text[]")],
    );
    db.insert(&t, &[json!(["d1", "u1", "{u1,u2}"])]);
    assert_eq!(
        db.rows_in("b[\"u1\"]"),
        strings(&[r#"docs/d1 {"id":"d1"}"#, r#"docs/d1 {"id":"d1"}"#])
    );
    assert_eq!(db.rows_in("b[\"u2\"]"), strings(&[r#"docs/d1 {"id":"d1"}"#]));
}

/// A bucket-parameter value that is NULL or a blob puts the row in no bucket (and is no error).
#[test]
fn null_or_blob_bucket_parameter_values_place_nothing() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_owner:\n    parameters: SELECT request.user_id() AS uid\n",
        "    data:\n      - SELECT id FROM docs WHERE owner = bucket.uid\n",
        "  by_blob:\n    parameters: SELECT request.user_id() AS uid\n",
        "    data:\n      - SELECT id FROM docs WHERE uuid_blob(ref) = bucket.uid\n",
    ));
    let t = table("docs", &[("id", "text"), ("owner", "text"), ("ref", "uuid")]);
    db.insert(
        &t,
        &[
            json!(["d1", null, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
            json!(["d2", "u1", null]),
        ],
    );
    assert_eq!(db.placed_buckets(), strings(&["by_owner[\"u1\"]"]));
    assert!(db.row_errors.is_empty(), "{:?}", db.row_errors);
}

/// Static filters use SQLite truthiness with JavaScript `parseInt` for text (§5.1).
#[test]
fn static_filters_follow_the_truthiness_classes() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_text:\n    data:\n      - SELECT id FROM t WHERE txt\n",
        "  by_real:\n    data:\n      - SELECT id FROM t WHERE num\n",
    ));
    let t = table("t", &[("id", "text"), ("txt", "text"), ("num", "float8")]);
    db.insert(
        &t,
        &[
            json!(["a", "0.5", "0.5"]),
            json!(["b", " -3", "0"]),
            json!(["c", "0x10", "-0.25"]),
            json!(["d", "0x", null]),
            json!(["e", "12abc", "1e-300"]),
            json!(["f", "abc", "-1.5"]),
            json!(["g", "-0", "-0"]),
            json!(["h", "1e5", "0.0"]),
            json!(["i", "", "3"]),
        ],
    );
    let ids = |bucket: &str| -> Vec<String> {
        db.rows_in(bucket)
            .iter()
            .map(|r| r.split(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    // text: '0.5' false (parseInt stops at the dot), ' -3' true, '0x10' true, '0x' false,
    // '12abc' true, 'abc' false, '-0' false, '1e5' true (1), '' false.
    assert_eq!(ids("by_text[]"), strings(&["t/b", "t/c", "t/e", "t/h"]));
    // real: nonzero is true (0.5, -0.25, 1e-300, -1.5, 3); 0, -0, 0.0 and NULL are false.
    assert_eq!(ids("by_real[]"), strings(&["t/a", "t/c", "t/e", "t/f", "t/i"]));
}

/// An evaluation error skips the row for that query only; other queries still place it.
#[test]
fn a_row_error_skips_only_the_failing_query() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  hexed:\n    data:\n      - SELECT id, hex(uuid_blob(ref)) AS h FROM t\n",
        "      - SELECT id FROM t AS plain\n",
        "  other:\n    data:\n      - SELECT id, ref FROM t\n",
    ));
    let t = table("t", &[("id", "text"), ("ref", "text")]);
    db.insert(
        &t,
        &[
            json!(["r1", "not-a-uuid"]),
            json!(["r2", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        ],
    );
    assert_eq!(db.row_errors.len(), 1, "{:?}", db.row_errors);
    assert_eq!(
        db.rows_in("hexed[]"),
        strings(&[
            r#"plain/r1 {"id":"r1"}"#,
            r#"plain/r2 {"id":"r2"}"#,
            r#"t/r2 {"id":"r2","h":"A0EEBC999C0B4EF8BB6D6BB9BD380A11"}"#,
        ])
    );
    assert_eq!(
        db.rows_in("other[]"),
        strings(&[
            r#"t/r1 {"id":"r1","ref":"not-a-uuid"}"#,
            r#"t/r2 {"id":"r2","ref":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}"#,
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// §6 Bucket ids
// ---------------------------------------------------------------------------------------------

/// Strings in bucket ids are JSON-escaped (`"`, `\`, control characters), non-ASCII and `/`
/// kept; placement and resolution produce the same id.
#[test]
fn bucket_id_strings_are_json_escaped() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_user:\n    parameters: SELECT request.user_id() AS uid\n",
        "    data:\n      - SELECT id FROM docs WHERE owner = bucket.uid\n",
    ));
    let weird = "we\"ird\\ü/\n";
    db.insert(
        &table("docs", &[("id", "text"), ("owner", "text")]),
        &[json!(["d1", weird])],
    );
    let expected = r#"by_user["we\"ird\\ü/\n"]"#;
    assert_eq!(db.placed_buckets(), strings(&[expected]));
    assert_eq!(db.buckets(json!({"sub": weird}), json!({})), strings(&[expected]));
}

/// Integers are exact for 64 bits; whole reals are written like integers, so a float8 3.0 row
/// and an integer 3 claim share a bucket; other reals use JS number formatting.
#[test]
fn bucket_id_numbers_integers_exact_and_whole_reals_as_integers() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_n:\n    parameters: SELECT request.jwt() ->> 'n' AS n\n",
        "    data:\n      - SELECT id FROM big WHERE n = bucket.n\n      - SELECT id FROM reals WHERE r = bucket.n\n",
    ));
    db.insert(
        &table("big", &[("id", "text"), ("n", "int8")]),
        &[
            json!(["b1", "9223372036854775807"]),
            json!(["b2", "-9223372036854775808"]),
        ],
    );
    db.insert(
        &table("reals", &[("id", "text"), ("r", "float8")]),
        &[
            json!(["r1", "3"]),
            json!(["r2", "2.5"]),
            json!(["r3", "1e+21"]),
            json!(["r4", "1e-07"]),
        ],
    );
    assert_eq!(
        db.placed_buckets(),
        strings(&[
            "by_n[-9223372036854775808]",
            "by_n[1e+21]",
            "by_n[1e-7]",
            "by_n[2.5]",
            "by_n[3]",
            "by_n[9223372036854775807]",
        ])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u", "n": 9_223_372_036_854_775_807_i64}), json!({})),
        strings(&["by_n[9223372036854775807]"])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u", "n": 3.0}), json!({})),
        strings(&["by_n[3]"])
    );
}

/// NaN and ±Infinity are written as `null` in bucket ids (and in synced data, §8.1).
#[test]
fn bucket_id_nan_and_infinity_are_null() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_score:\n    parameters: SELECT request.jwt() ->> 's' AS s\n",
        "    data:\n      - SELECT id, score FROM t WHERE score = bucket.s\n",
    ));
    let t = table("t", &[("id", "text"), ("score", "float8")]);
    db.insert(
        &t,
        &[
            json!(["a", "NaN"]),
            json!(["b", "Infinity"]),
            json!(["c", "-Infinity"]),
        ],
    );
    assert_eq!(
        db.rows_in("by_score[null]"),
        strings(&[
            r#"t/a {"id":"a","score":null}"#,
            r#"t/b {"id":"b","score":null}"#,
            r#"t/c {"id":"c","score":null}"#,
        ])
    );
}

/// Versioned ids: `<version>#` from the deployment version, on by default in edition 2, off
/// with `versioned_bucket_ids: false`, and opt-in in edition 1.
#[test]
fn versioned_bucket_ids_follow_the_edition_and_the_option() {
    let options = CompileOptions {
        version: 7,
        ..CompileOptions::default()
    };
    let body = concat!(
        "bucket_definitions:\n  by_user:\n    parameters: SELECT request.user_id() AS uid\n",
        "    data:\n      - SELECT id FROM docs WHERE owner = bucket.uid\n",
        "  everything:\n    data:\n      - SELECT id FROM docs\n",
    );
    let docs = table("docs", &[("id", "text"), ("owner", "text")]);
    let cases = [
        ("config:\n  edition: 2\n", "7#"),
        ("config:\n  edition: 2\n  versioned_bucket_ids: false\n", ""),
        ("config:\n  edition: 1\n  versioned_bucket_ids: true\n", "7#"),
        ("", ""),
    ];
    for (config, prefix) in cases {
        let mut db = Db::with_options(&format!("{config}{body}"), &options);
        db.insert(&docs, &[json!(["d1", "u1"])]);
        let expected = vec![
            format!("{prefix}by_user[\"u1\"]"),
            format!("{prefix}everything[]"),
        ];
        assert_eq!(db.placed_buckets(), expected, "config {config:?}");
        assert_eq!(
            db.buckets(json!({"sub": "u1"}), json!({})),
            expected,
            "config {config:?}"
        );
    }
}

/// A definition without `parameters`, or with a bare `SELECT`, is one global bucket `name[]`.
#[test]
fn global_buckets_have_an_empty_parameter_list() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  implicit:\n    data:\n      - SELECT id FROM t\n",
        "  explicit:\n    parameters: SELECT\n    data:\n      - SELECT id FROM t\n",
    ));
    db.insert(&table("t", &[("id", "text")]), &[json!(["r"])]);
    assert_eq!(db.placed_buckets(), strings(&["explicit[]", "implicit[]"]));
    assert_eq!(
        db.buckets(json!({}), json!({})),
        strings(&["explicit[]", "implicit[]"])
    );
}

// ---------------------------------------------------------------------------------------------
// §4 Parameter queries: static and table-valued
// ---------------------------------------------------------------------------------------------

/// A static query's WHERE must be truthy, else it yields no bucket.
#[test]
fn static_parameter_query_with_false_where_yields_nothing() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  admin:\n    parameters: SELECT token_parameters.org AS org WHERE token_parameters.is_admin\n",
        "    data:\n      - SELECT id FROM t WHERE org = bucket.org\n",
    ));
    let jwt = |admin: Value| json!({"sub": "u1", "parameters": {"org": "o1", "is_admin": admin}});
    assert_eq!(
        db.buckets(jwt(json!(true)), json!({})),
        strings(&["admin[\"o1\"]"])
    );
    assert_eq!(db.buckets(jwt(json!(false)), json!({})), Vec::<String>::new());
    assert_eq!(db.buckets(jwt(json!("yes")), json!({})), Vec::<String>::new());
    assert_eq!(
        db.buckets(jwt(json!("2")), json!({})),
        strings(&["admin[\"o1\"]"])
    );
    assert_eq!(
        db.buckets(jwt(json!(0.5)), json!({})),
        strings(&["admin[\"o1\"]"])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1", "parameters": {"org": "o1"}}), json!({})),
        Vec::<String>::new()
    );
}

/// `token_parameters.x` reads `jwt.parameters.x`, but `token_parameters.user_id` is always `sub`.
#[test]
fn token_parameters_user_id_is_sub_even_when_parameters_set_it() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    parameters: SELECT token_parameters.user_id AS uid, token_parameters.team AS team\n",
        "    data:\n      - SELECT id FROM t WHERE owner = bucket.uid AND team = bucket.team\n",
    ));
    let jwt = json!({"sub": "u1", "user_id": "top", "parameters": {"user_id": "evil", "team": "t1"}});
    assert_eq!(db.buckets(jwt, json!({})), strings(&[r#"b["u1","t1"]"#]));
}

/// `user_parameters.x` and `request.parameters() ->> 'x'` both read client parameters: the same
/// bucket from two queries is listed once.
#[test]
fn user_parameters_and_request_parameters_read_client_parameters() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  by_project:\n    accept_potentially_dangerous_queries: true\n",
        "    parameters:\n      - SELECT user_parameters.project AS p\n",
        "      - SELECT request.parameters() ->> 'project' AS p\n",
        "    data:\n      - SELECT id FROM t WHERE project = bucket.p\n",
    ));
    let request = ConnectionRequest::new(&json!({"sub": "u1"}), &json!({"project": "p1"}));
    let (buckets, _) = db.resolve_request(&request);
    assert_eq!(
        buckets,
        vec![(r#"by_project["p1"]"#.to_string(), "by_project".to_string(), 3)]
    );
}

/// `request.jwt() ->> '$.a.b'` and `'$.list[1]'` follow JSON paths into nested claims.
#[test]
fn jwt_claims_with_nested_and_indexed_paths() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    parameters: SELECT request.jwt() ->> '$.app.org.id' AS org, request.jwt() ->> '$.teams[1]' AS team\n",
        "    data:\n      - SELECT id FROM t WHERE org = bucket.org AND team = bucket.team\n",
    ));
    let jwt = json!({"sub": "u1", "app": {"org": {"id": 17}}, "teams": ["t0", "t1"]});
    assert_eq!(db.buckets(jwt, json!({})), strings(&[r#"b[17,"t1"]"#]));
}

/// json_each: one row per array element; objects/arrays become JSON text, booleans 1/0, and
/// identical values give one bucket. An object yields one row per member and a scalar one row;
/// NULL or a missing array yields none.
#[test]
fn json_each_over_arrays_objects_scalars_and_null() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    accept_potentially_dangerous_queries: true\n",
        "    parameters: SELECT value AS v FROM json_each(request.parameters() -> 'items')\n",
        "    data:\n      - SELECT id FROM t WHERE v = bucket.v\n",
    ));
    let items = |v: Value| db.buckets(json!({"sub": "u"}), json!({ "items": v }));
    assert_eq!(
        items(json!([1, "a", true, {"k": 1, "b": [2]}, [2, "x"], 2.0, 2.5])),
        strings(&[
            r#"b["[2,\"x\"]"]"#,
            r#"b["a"]"#,
            r#"b["{\"k\":1,\"b\":[2]}"]"#,
            "b[1]",
            "b[2.5]",
            "b[2]"
        ])
    );
    assert_eq!(
        items(json!({"x": "X", "y": false})),
        strings(&[r#"b["X"]"#, "b[0]"])
    );
    assert_eq!(items(json!("solo")), strings(&[r#"b["solo"]"#]));
    assert_eq!(items(json!(null)), Vec::<String>::new());
    assert_eq!(db.buckets(json!({"sub": "u"}), json!({})), Vec::<String>::new());
    assert_eq!(items(json!([])), Vec::<String>::new());
}

/// json_each's `key` and `type` columns in SELECT and WHERE.
#[test]
fn json_each_key_and_type_columns() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    accept_potentially_dangerous_queries: true\n",
        "    parameters: SELECT e.key AS k, value AS v FROM json_each(request.parameters() -> 'm') AS e WHERE e.type = 'text'\n",
        "    data:\n      - SELECT id FROM t WHERE k = bucket.k AND v = bucket.v\n",
    ));
    let params = json!({"m": {"a": "x", "b": 2, "c": "y", "d": null, "e": [1]}});
    assert_eq!(
        db.buckets(json!({"sub": "u"}), params),
        strings(&[r#"b["a","x"]"#, r#"b["c","y"]"#])
    );
    let arrays = json!({"m": ["p", 1, "q"]});
    assert_eq!(
        db.buckets(json!({"sub": "u"}), arrays),
        strings(&[r#"b[0,"p"]"#, r#"b[2,"q"]"#])
    );
}

/// A JSON `null` element: legacy json_each gives the text 'null' (like `->>`), fixed_json_extract
/// gives SQL NULL (§5.2 JSON-null handling) — a `[null]` bucket.
#[test]
fn json_each_null_element_depends_on_fixed_json_extract() {
    let body = concat!(
        "bucket_definitions:\n  b:\n    accept_potentially_dangerous_queries: true\n",
        "    parameters: SELECT value AS v FROM json_each(request.parameters() -> 'items')\n",
        "    data:\n      - SELECT id FROM t WHERE v = bucket.v\n",
    );
    let legacy = Db::new(body);
    let fixed = Db::new(&format!("config:\n  fixed_json_extract: true\n{body}"));
    let params = json!({"items": [null]});
    assert_eq!(
        legacy.buckets(json!({"sub": "u"}), params.clone()),
        strings(&[r#"b["null"]"#])
    );
    assert_eq!(fixed.buckets(json!({"sub": "u"}), params), strings(&["b[null]"]));
}

// ---------------------------------------------------------------------------------------------
// §4 Parameter queries: table lookups
// ---------------------------------------------------------------------------------------------

/// A lookup keyed on the user with a static row filter: only admin memberships are indexed.
#[test]
fn table_lookup_with_a_static_row_filter() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  admin_orgs:\n",
        "    parameters: SELECT org_id FROM memberships WHERE user_id = request.user_id() AND role = 'admin'\n",
        "    data:\n      - SELECT id FROM docs WHERE org = bucket.org_id\n",
    ));
    let m = table(
        "memberships",
        &[
            ("id", "text"),
            ("user_id", "text"),
            ("org_id", "text"),
            ("role", "text"),
        ],
    );
    db.insert(
        &m,
        &[
            json!(["m1", "u1", "o1", "admin"]),
            json!(["m2", "u1", "o2", "member"]),
            json!(["m3", "u2", "o3", "admin"]),
            json!(["m4", "u1", "o4", "admin"]),
        ],
    );
    assert_eq!(db.index.len(), 3, "non-admin rows are not indexed");
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&[r#"admin_orgs["o1"]"#, r#"admin_orgs["o4"]"#])
    );
    assert_eq!(db.buckets(json!({"sub": "u3"}), json!({})), Vec::<String>::new());
}

/// Two equality matches make a two-value lookup key: both must match.
#[test]
fn table_lookup_with_two_request_matches() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  b:\n",
        "    parameters: SELECT project_id FROM access WHERE user_id = request.user_id() AND org_id = request.jwt() ->> 'org'\n",
        "    data:\n      - SELECT id FROM docs WHERE project = bucket.project_id\n",
    ));
    let a = table(
        "access",
        &[
            ("id", "text"),
            ("user_id", "text"),
            ("org_id", "text"),
            ("project_id", "int4"),
        ],
    );
    db.insert(
        &a,
        &[
            json!(["a1", "u1", "o1", "10"]),
            json!(["a2", "u1", "o2", "20"]),
            json!(["a3", "u2", "o1", "30"]),
        ],
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1", "org": "o1"}), json!({})),
        strings(&["b[10]"])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1", "org": "o2"}), json!({})),
        strings(&["b[20]"])
    );
    assert_eq!(db.buckets(json!({"sub": "u1"}), json!({})), Vec::<String>::new());
}

/// `row_col IN token_parameters.array`: one lookup per element (elements absent from the index
/// find nothing).
#[test]
fn in_token_array_makes_one_lookup_per_element() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  projects:\n",
        "    parameters: SELECT id AS project FROM projects WHERE org_id IN token_parameters.orgs\n",
        "    data:\n      - SELECT id FROM tasks WHERE project_id = bucket.project\n",
    ));
    let p = table("projects", &[("id", "text"), ("org_id", "text")]);
    db.insert(
        &p,
        &[json!(["p1", "o1"]), json!(["p2", "o2"]), json!(["p3", "o1"])],
    );
    let request = ConnectionRequest::new(
        &json!({"sub": "u", "parameters": {"orgs": ["o1", "o9", "o2"]}}),
        &json!({}),
    );
    let (buckets, asked) = db.resolve_request(&request);
    assert_eq!(asked.len(), 3);
    let mut ids: Vec<String> = buckets.into_iter().map(|b| b.0).collect();
    ids.sort();
    assert_eq!(
        ids,
        strings(&[r#"projects["p1"]"#, r#"projects["p2"]"#, r#"projects["p3"]"#])
    );
    // Not an array: no lookups at all.
    let scalar = ConnectionRequest::new(&json!({"sub": "u", "parameters": {"orgs": "o1"}}), &json!({}));
    assert_eq!(db.resolve_request(&scalar).0, Vec::new());
}

/// `request value IN row_json_array`: the row is indexed once per element.
#[test]
fn request_value_in_row_array_indexes_the_row_per_element() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  groups:\n",
        "    parameters: SELECT id AS group_id FROM groups WHERE request.user_id() IN groups.members\n",
        "    data:\n      - SELECT id FROM posts WHERE group_id = bucket.group_id\n",
    ));
    let g = table("groups", &[("id", "text"), ("members", "jsonb")]);
    db.insert(
        &g,
        &[
            json!(["g1", "[\"u1\", \"u2\"]"]),
            json!(["g2", "[\"u2\"]"]),
            json!(["g3", null]),
        ],
    );
    assert_eq!(db.index.len(), 3);
    assert!(db.parameter_errors.is_empty(), "{:?}", db.parameter_errors);
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&[r#"groups["g1"]"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u2"}), json!({})),
        strings(&[r#"groups["g1"]"#, r#"groups["g2"]"#])
    );
}

/// Lookup keys compare numbers by value: a float8 2.0 row and an integer 2 claim meet, and a
/// text '2' does not.
#[test]
fn lookup_keys_compare_two_and_two_point_zero_equal() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_level:\n",
        "    parameters: SELECT name FROM levels WHERE level = request.jwt() ->> 'level'\n",
        "    data:\n      - SELECT id FROM docs WHERE level_name = bucket.name\n",
    ));
    db.insert(
        &table("levels", &[("name", "text"), ("level", "float8")]),
        &[json!(["two", "2"])],
    );
    assert_eq!(
        db.buckets(json!({"sub": "u", "level": 2}), json!({})),
        strings(&[r#"by_level["two"]"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u", "level": 2.0}), json!({})),
        strings(&[r#"by_level["two"]"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u", "level": "2"}), json!({})),
        Vec::<String>::new()
    );
    let lookup = |v: SqliteValue| ParameterLookup {
        definition: "d".into(),
        query: "q".into(),
        values: vec![v],
    };
    assert_eq!(
        lookup(SqliteValue::Integer(2)).key(),
        lookup(SqliteValue::Real(2.0)).key()
    );
    assert_ne!(
        lookup(SqliteValue::Integer(2)).key(),
        lookup(SqliteValue::from("2")).key()
    );
}

/// Static, table-valued and lookup queries of one definition merge into one bucket list.
#[test]
fn several_parameter_query_kinds_merge_into_one_list() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_org:\n",
        "    parameters:\n",
        "      - SELECT request.jwt() ->> 'home_org' AS org\n",
        "      - SELECT value AS org FROM json_each(request.jwt() -> 'orgs')\n",
        "      - SELECT org_id AS org FROM memberships WHERE user_id = request.user_id()\n",
        "    data:\n      - SELECT id FROM docs WHERE org_id = bucket.org\n",
    ));
    let m = table(
        "memberships",
        &[("id", "text"), ("user_id", "text"), ("org_id", "text")],
    );
    db.insert(&m, &[json!(["m1", "u1", "o3"]), json!(["m2", "u1", "o1"])]);
    let request = ConnectionRequest::new(
        &json!({"sub": "u1", "home_org": "o1", "orgs": ["o2", "o1"]}),
        &json!({}),
    );
    let (buckets, _) = db.resolve_request(&request);
    let mut ids: Vec<String> = buckets.into_iter().map(|b| b.0).collect();
    ids.sort();
    assert_eq!(
        ids,
        strings(&[r#"by_org["o1"]"#, r#"by_org["o2"]"#, r#"by_org["o3"]"#])
    );
}

/// `_priority` sets the priority and is not a bucket parameter; the same bucket reached with two
/// priorities is listed once with the lowest.
#[test]
fn priority_column_and_the_lowest_priority_wins() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    parameters:\n",
        "      - SELECT request.user_id() AS uid, 2 AS _priority\n",
        "      - SELECT id AS uid, 1 AS _priority FROM vips WHERE id = request.user_id()\n",
        "    data:\n      - SELECT id FROM docs WHERE owner = bucket.uid\n",
        "  y:\n    priority: 0\n    data:\n      - SELECT id FROM docs\n",
    ));
    db.insert(&table("vips", &[("id", "text")]), &[json!(["u1"])]);
    db.insert(
        &table("docs", &[("id", "text"), ("owner", "text")]),
        &[json!(["d1", "u1"])],
    );
    assert_eq!(db.placed_buckets(), strings(&[r#"b["u1"]"#, "y[]"]));
    let p = |sub: &str| db.priorities(&ConnectionRequest::new(&json!({ "sub": sub }), &json!({})));
    assert_eq!(
        p("u1"),
        vec![(r#"b["u1"]"#.to_string(), 1), ("y[]".to_string(), 0)]
    );
    assert_eq!(
        p("u2"),
        vec![(r#"b["u2"]"#.to_string(), 2), ("y[]".to_string(), 0)]
    );
}

/// Parameter rows that change or disappear: re-evaluation replaces the row's index entries,
/// possibly under a different lookup key.
#[test]
fn parameter_row_updates_and_deletes_move_index_entries() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_org:\n",
        "    parameters: SELECT org_id FROM memberships WHERE user_id = request.user_id()\n",
        "    data:\n      - SELECT id FROM docs WHERE org = bucket.org_id\n",
    ));
    let m = table(
        "memberships",
        &[("id", "text"), ("user_id", "text"), ("org_id", "text")],
    );
    let jwt = |sub: &str| json!({ "sub": sub });
    db.insert(&m, &[json!(["m1", "u1", "o1"])]);
    assert_eq!(db.buckets(jwt("u1"), json!({})), strings(&[r#"by_org["o1"]"#]));
    let key_before = db.index_entries()[0].0.clone();

    db.upsert(&m, &json!(["m1", "u1", "o2"]));
    assert_eq!(db.index_entries().len(), 1);
    assert_eq!(db.index_entries()[0].0, key_before, "same user: same lookup key");
    assert_eq!(db.buckets(jwt("u1"), json!({})), strings(&[r#"by_org["o2"]"#]));

    db.upsert(&m, &json!(["m1", "u2", "o2"]));
    assert_ne!(
        db.index_entries()[0].0,
        key_before,
        "another user: another lookup key"
    );
    assert_eq!(db.buckets(jwt("u1"), json!({})), Vec::<String>::new());
    assert_eq!(db.buckets(jwt("u2"), json!({})), strings(&[r#"by_org["o2"]"#]));

    db.delete(&m, &json!(["m1"]));
    assert_eq!(db.buckets(jwt("u2"), json!({})), Vec::<String>::new());
}

/// A missing claim still gives a bucket, with `null` in its id; no row ever lands there.
#[test]
fn missing_claim_gives_a_null_bucket_that_no_row_reaches() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n  by_org:\n    parameters: SELECT request.jwt() ->> 'org' AS org\n",
        "    data:\n      - SELECT id FROM docs WHERE org = bucket.org\n",
    ));
    db.insert(
        &table("docs", &[("id", "text"), ("org", "text")]),
        &[json!(["d1", null]), json!(["d2", "o1"])],
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&["by_org[null]"])
    );
    assert_eq!(db.rows_in("by_org[null]"), Vec::<String>::new());
    assert_eq!(db.placed_buckets(), strings(&[r#"by_org["o1"]"#]));
}

// ---------------------------------------------------------------------------------------------
// §5.4 Request values
// ---------------------------------------------------------------------------------------------

/// Token and client values: booleans 1/0, a JSON `2.0` is INTEGER 2, objects and arrays are
/// JSON text (key order kept).
#[test]
fn request_values_are_converted_like_json_into_sqlite() {
    let db = Db::new(concat!(
        "bucket_definitions:\n  b:\n    parameters: SELECT token_parameters.flag AS f, typeof(token_parameters.n) AS nt,",
        " token_parameters.n AS n, token_parameters.obj AS o, token_parameters.arr AS a\n",
        "    data:\n      - SELECT id FROM t WHERE f = bucket.f AND nt = bucket.nt AND n = bucket.n AND o = bucket.o AND a = bucket.a\n",
    ));
    let jwt = json!({"sub": "u", "parameters": {
        "flag": true, "n": 2.0, "obj": {"b": 1, "a": [1, 2]}, "arr": [1, "x", false]
    }});
    assert_eq!(
        db.buckets(jwt, json!({})),
        strings(&[r#"b[1,"integer",2,"{\"b\":1,\"a\":[1,2]}","[1,\"x\",false]"]"#])
    );
    let jwt = json!({"sub": "u", "parameters": {"flag": false, "n": 2.5, "obj": "s", "arr": null}});
    assert_eq!(
        db.buckets(jwt, json!({})),
        strings(&[r#"b[0,"real",2.5,"s",null]"#])
    );
}

/// `auth.parameter('$.a.b')` follows a path; `auth.parameter('a.b')` reads the key "a.b".
/// `connection.parameter('x.y')` and `subscription.parameter('$.x.y')` follow the same rule.
#[test]
fn parameter_functions_split_only_dollar_paths() {
    let db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n",
        "  by_path:\n    auto_subscribe: true\n    query: SELECT * FROM docs WHERE org = auth.parameter('$.org.id')\n",
        "  by_key:\n    auto_subscribe: true\n    query: SELECT * FROM docs WHERE org = auth.parameter('org.id')\n",
        "  by_conn:\n    auto_subscribe: true\n    accept_potentially_dangerous_queries: true\n",
        "    query: SELECT * FROM docs WHERE org = connection.parameter('x.y')\n",
        "  by_sub:\n    accept_potentially_dangerous_queries: true\n",
        "    query: SELECT * FROM docs WHERE org = subscription.parameter('$.x.y')\n",
    ));
    let r = request(
        json!({"sub": "u", "org": {"id": "o1"}, "org.id": "flat"}),
        json!({"x": {"y": "deep"}, "x.y": "dotted"}),
        true,
        vec![subscription(
            "by_sub",
            Some(json!({"x": {"y": "nested"}, "x.y": "flat"})),
            None,
        )],
    );
    assert_eq!(
        db.priorities(&r).into_iter().map(|b| b.0).collect::<Vec<_>>(),
        strings(&[
            r#"1#by_conn|0["dotted"]"#,
            r#"1#by_key|0["flat"]"#,
            r#"1#by_path|0["o1"]"#,
            r#"1#by_sub|0["nested"]"#
        ])
    );
}

/// Subscription parameters and connection parameters both feed stream filters.
#[test]
fn subscription_and_connection_parameters_in_streams() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  items:\n    accept_potentially_dangerous_queries: true\n",
        "    query: SELECT * FROM items WHERE list_id = subscription.parameter('list') AND region = connection.parameter('region')\n",
    ));
    let t = table(
        "items",
        &[("id", "text"), ("list_id", "text"), ("region", "text")],
    );
    db.insert(&t, &[json!(["i1", "l1", "eu"]), json!(["i2", "l1", "us"])]);
    let r = request(
        json!({"sub": "u"}),
        json!({"region": "eu"}),
        true,
        vec![subscription("items", Some(json!({"list": "l1"})), None)],
    );
    assert_eq!(
        db.priorities(&r),
        vec![(r#"1#items|0["l1","eu"]"#.to_string(), 3)]
    );
    assert_eq!(
        db.rows_in(r#"1#items|0["l1","eu"]"#),
        strings(&[r#"items/i1 {"id":"i1","list_id":"l1","region":"eu"}"#])
    );
    // Without a subscription the stream is not included (no auto_subscribe).
    assert_eq!(
        db.buckets(json!({"sub": "u"}), json!({"region": "eu"})),
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------------
// §7 Sync Streams
// ---------------------------------------------------------------------------------------------

/// `auto_subscribe` streams come with default streams only; others need a subscription.
#[test]
fn auto_subscribe_and_include_defaults() {
    let db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n",
        "  mine:\n    auto_subscribe: true\n    query: SELECT * FROM notes WHERE owner = auth.user_id()\n",
        "  pinned:\n    query: SELECT * FROM notes WHERE pinned\n",
        "bucket_definitions:\n  global:\n    data:\n      - SELECT id FROM notes\n",
    ));
    let resolve = |defaults: bool, subs: Vec<StreamSubscription>| -> Vec<String> {
        db.priorities(&request(json!({"sub": "u1"}), json!({}), defaults, subs))
            .into_iter()
            .map(|b| b.0)
            .collect()
    };
    assert_eq!(
        resolve(true, vec![]),
        strings(&["1#global[]", r#"1#mine|0["u1"]"#])
    );
    // Bucket definitions are always included.
    assert_eq!(resolve(false, vec![]), strings(&["1#global[]"]));
    assert_eq!(
        resolve(false, vec![subscription("pinned", None, None)]),
        strings(&["1#global[]", "1#pinned|0[]"])
    );
    assert_eq!(
        resolve(
            true,
            vec![
                subscription("pinned", None, None),
                subscription("mine", None, None)
            ]
        ),
        strings(&["1#global[]", r#"1#mine|0["u1"]"#, "1#pinned|0[]"])
    );
}

/// Each explicit subscription is evaluated on its own; the same bucket twice is listed once
/// with the lowest priority; `override_priority` replaces the stream's priority. A subscription
/// without parameters reads NULL. (Alpha streams in the reference 0.38.1 ignore the YAML
/// `priority`; §2 and §6 say it applies.)
#[test]
fn explicit_subscriptions_with_parameters_and_priority_overrides() {
    let db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  lists:\n    priority: 2\n    accept_potentially_dangerous_queries: true\n",
        "    query: SELECT * FROM items WHERE list_id = subscription.parameter('list')\n",
    ));
    let r = request(
        json!({"sub": "u1"}),
        json!({}),
        true,
        vec![
            subscription("lists", Some(json!({"list": "l1"})), Some(3)),
            subscription("lists", Some(json!({"list": "l2"})), None),
            subscription("lists", Some(json!({"list": "l1"})), Some(1)),
            subscription("lists", Some(json!({"list": "l3"})), Some(0)),
            subscription("lists", None, None),
        ],
    );
    assert_eq!(
        db.priorities(&r),
        vec![
            ("1#lists|0[\"l1\"]".to_string(), 1),
            ("1#lists|0[\"l2\"]".to_string(), 2),
            ("1#lists|0[\"l3\"]".to_string(), 0),
            ("1#lists|0[null]".to_string(), 2),
        ]
    );
}

/// `OR` makes variants `|0`, `|1` in branch order; a request-only branch is a global variant
/// that only qualifying connections get.
#[test]
fn or_in_a_stream_makes_numbered_variants() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  issues:\n    auto_subscribe: true\n",
        "    query: SELECT id FROM issues WHERE owner_id = auth.user_id() OR auth.parameter('is_admin')\n",
    ));
    let t = table("issues", &[("id", "text"), ("owner_id", "text")]);
    db.insert(&t, &[json!(["i1", "u1"]), json!(["i2", "u2"])]);
    assert_eq!(
        db.rows_in(r#"1#issues|0["u1"]"#),
        strings(&[r#"issues/i1 {"id":"i1"}"#])
    );
    assert_eq!(
        db.rows_in(r#"1#issues|0["u2"]"#),
        strings(&[r#"issues/i2 {"id":"i2"}"#])
    );
    assert_eq!(
        db.rows_in("1#issues|1[]"),
        strings(&[r#"issues/i1 {"id":"i1"}"#, r#"issues/i2 {"id":"i2"}"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u2"}), json!({})),
        strings(&[r#"1#issues|0["u2"]"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1", "is_admin": true}), json!({})),
        strings(&[r#"1#issues|0["u1"]"#, "1#issues|1[]"])
    );
}

/// A condition on request values alone decides whether a connection gets the stream at all.
#[test]
fn request_only_conditions_filter_connections() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  secrets:\n    auto_subscribe: true\n",
        "    query: SELECT * FROM secrets WHERE auth.parameter('is_admin')\n",
    ));
    db.insert(&table("secrets", &[("id", "text")]), &[json!(["s1"])]);
    assert_eq!(
        db.rows_in("1#secrets|0[]"),
        strings(&[r#"secrets/s1 {"id":"s1"}"#])
    );
    let b = |jwt: Value| db.buckets(jwt, json!({}));
    assert_eq!(
        b(json!({"sub": "u", "is_admin": true})),
        strings(&["1#secrets|0[]"])
    );
    assert_eq!(b(json!({"sub": "u", "is_admin": 1})), strings(&["1#secrets|0[]"]));
    assert_eq!(b(json!({"sub": "u", "is_admin": false})), Vec::<String>::new());
    assert_eq!(b(json!({"sub": "u", "is_admin": "0.5"})), Vec::<String>::new());
    assert_eq!(b(json!({"sub": "u"})), Vec::<String>::new());
}

/// `col IN (subscription.parameters() -> 'ids')` expands the array: one bucket per distinct
/// element (2 and "2" differ); a non-array gives none.
#[test]
fn in_subscription_array_expands_per_element() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  by_list:\n    accept_potentially_dangerous_queries: true\n",
        "    query: SELECT * FROM items WHERE list_id IN (subscription.parameters() -> 'ids')\n",
    ));
    db.insert(
        &table("items", &[("id", "text"), ("list_id", "int4")]),
        &[json!(["i1", "2"])],
    );
    assert_eq!(db.placed_buckets(), strings(&["1#by_list|0[2]"]));
    let sub = |p: Value| {
        request(
            json!({"sub": "u"}),
            json!({}),
            true,
            vec![subscription("by_list", Some(p), None)],
        )
    };
    let ids = |p: Value| -> Vec<String> { db.priorities(&sub(p)).into_iter().map(|b| b.0).collect() };
    assert_eq!(
        ids(json!({"ids": [1, 2, 2, "2"]})),
        strings(&[r#"1#by_list|0["2"]"#, "1#by_list|0[1]", "1#by_list|0[2]"])
    );
    assert_eq!(ids(json!({"ids": 5})), Vec::<String>::new());
    assert_eq!(ids(json!({})), Vec::<String>::new());
}

/// `IN (SELECT ...)` becomes a parameter lookup, with the subquery's own row filter applied at
/// indexing time.
#[test]
fn stream_subquery_applies_its_own_filter() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  docs:\n    auto_subscribe: true\n",
        "    query: SELECT * FROM docs WHERE project_id IN (SELECT project_id FROM members WHERE user_id = auth.user_id() AND active)\n",
    ));
    let m = table(
        "members",
        &[
            ("id", "text"),
            ("user_id", "text"),
            ("project_id", "text"),
            ("active", "bool"),
        ],
    );
    db.insert(
        &m,
        &[
            json!(["m1", "u1", "p1", "t"]),
            json!(["m2", "u1", "p2", "f"]),
            json!(["m3", "u2", "p3", "t"]),
        ],
    );
    db.insert(
        &table("docs", &[("id", "text"), ("project_id", "text")]),
        &[json!(["d1", "p1"]), json!(["d2", "p2"])],
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&[r#"1#docs|0["p1"]"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u2"}), json!({})),
        strings(&[r#"1#docs|0["p3"]"#])
    );
    assert_eq!(
        db.rows_in(r#"1#docs|0["p1"]"#),
        strings(&[r#"docs/d1 {"id":"d1","project_id":"p1"}"#])
    );
    assert_eq!(
        db.rows_in(r#"1#docs|0["p2"]"#),
        strings(&[r#"docs/d2 {"id":"d2","project_id":"p2"}"#])
    );
}

/// `json_array_col && (SELECT ...)`: the row goes to one bucket per array element, the
/// connection to one bucket per subquery result.
#[test]
fn stream_overlap_with_a_subquery() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  posts:\n    auto_subscribe: true\n",
        "    query: SELECT id FROM posts WHERE tags && (SELECT tag FROM follows WHERE user_id = auth.user_id())\n",
    ));
    db.insert(
        &table("follows", &[("id", "text"), ("user_id", "text"), ("tag", "text")]),
        &[
            json!(["f1", "u1", "a"]),
            json!(["f2", "u1", "c"]),
            json!(["f3", "u2", "b"]),
        ],
    );
    db.insert(
        &table("posts", &[("id", "text"), ("tags", "text[]")]),
        &[json!(["p1", "{a,b}"])],
    );
    assert_eq!(
        db.placed_buckets(),
        strings(&[r#"1#posts|0["a"]"#, r#"1#posts|0["b"]"#])
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&[r#"1#posts|0["a"]"#, r#"1#posts|0["c"]"#])
    );
}

/// Edition 3: a stream-local CTE shadows the global one of the same name.
#[test]
fn edition3_global_and_stream_local_ctes() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 3\n",
        "with:\n  my_orgs: SELECT org_id FROM users WHERE id = auth.user_id()\n",
        "streams:\n",
        "  org_docs:\n    auto_subscribe: true\n    query: SELECT * FROM docs WHERE org_id IN my_orgs\n",
        "  admin_docs:\n    auto_subscribe: true\n",
        "    with:\n      MY_ORGS: SELECT org_id FROM admins WHERE user_id = auth.user_id()\n",
        "    query: SELECT id FROM docs WHERE org_id IN my_orgs\n",
    ));
    db.insert(
        &table("users", &[("id", "text"), ("org_id", "text")]),
        &[json!(["u1", "o1"])],
    );
    db.insert(
        &table(
            "admins",
            &[("id", "text"), ("user_id", "text"), ("org_id", "text")],
        ),
        &[json!(["a1", "u1", "o2"])],
    );
    db.insert(
        &table("docs", &[("id", "text"), ("org_id", "text")]),
        &[json!(["d1", "o1"]), json!(["d2", "o2"])],
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&[r#"1#admin_docs|0["o2"]"#, r#"1#org_docs|0["o1"]"#])
    );
    assert_eq!(
        db.rows_in(r#"1#admin_docs|0["o2"]"#),
        strings(&[r#"docs/d2 {"id":"d2"}"#])
    );
    assert_eq!(
        db.rows_in(r#"1#org_docs|0["o1"]"#),
        strings(&[r#"docs/d1 {"id":"d1","org_id":"o1"}"#])
    );
}

/// Edition 3: queries of one stream with the same bucket parameters share one bucket source.
#[test]
fn edition3_several_queries_share_one_bucket() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 3\n",
        "streams:\n  my_stuff:\n    auto_subscribe: true\n    queries:\n",
        "      - SELECT * FROM notes WHERE author = auth.user_id()\n",
        "      - SELECT * FROM tasks WHERE assignee = auth.user_id()\n",
    ));
    db.insert(
        &table("notes", &[("id", "text"), ("author", "text")]),
        &[json!(["n1", "u1"]), json!(["n2", "u2"])],
    );
    db.insert(
        &table("tasks", &[("id", "text"), ("assignee", "text")]),
        &[json!(["t1", "u1"])],
    );
    assert_eq!(
        db.buckets(json!({"sub": "u1"}), json!({})),
        strings(&[r#"1#my_stuff|0["u1"]"#])
    );
    assert_eq!(
        db.rows_in(r#"1#my_stuff|0["u1"]"#),
        strings(&[
            r#"notes/n1 {"id":"n1","author":"u1"}"#,
            r#"tasks/t1 {"id":"t1","assignee":"u1"}"#
        ])
    );
    assert_eq!(
        db.rows_in(r#"1#my_stuff|0["u2"]"#),
        strings(&[r#"notes/n2 {"id":"n2","author":"u2"}"#])
    );
}

/// A stream with only row conditions is one global bucket holding the rows that pass.
#[test]
fn stream_with_row_only_static_condition() {
    let mut db = Db::new(concat!(
        "config:\n  edition: 2\nstreams:\n  long:\n    auto_subscribe: true\n",
        "    query: SELECT id FROM comments WHERE length(content) > 5 AND NOT hidden\n",
    ));
    db.insert(
        &table(
            "comments",
            &[("id", "text"), ("content", "text"), ("hidden", "bool")],
        ),
        &[
            json!(["c1", "short", "f"]),
            json!(["c2", "longer", "f"]),
            json!(["c3", "longest", "t"]),
        ],
    );
    assert_eq!(db.rows_in("1#long|0[]"), strings(&[r#"comments/c2 {"id":"c2"}"#]));
    assert_eq!(
        db.buckets(json!({"sub": "anyone"}), json!({})),
        strings(&["1#long|0[]"])
    );
}

// ---------------------------------------------------------------------------------------------
// §8 / §9 Compatibility
// ---------------------------------------------------------------------------------------------

/// Timestamps through a full evaluation: legacy text in edition 1, ISO 8601 with fixed digits in
/// edition 2 (also inside arrays), and `timestamp_max_precision`.
#[test]
fn timestamp_formats_follow_the_edition() {
    let events = table(
        "events",
        &[
            ("id", "text"),
            ("at", "timestamptz"),
            ("local", "timestamp"),
            ("t", "time"),
            ("days", "timestamp[]"),
        ],
    );
    let row = json!([
        "e1",
        "2023-03-06 15:47:00.5+02",
        "2023-03-06 15:47:00.123",
        "13:47:00.25",
        "{\"2023-03-06 15:47:00\"}"
    ]);
    let body = "bucket_definitions:\n  all:\n    data:\n      - SELECT * FROM events\n";
    let data = |config: &str| -> Vec<String> {
        let mut db = Db::new(&format!("{config}{body}"));
        db.insert(&events, std::slice::from_ref(&row));
        db.placed.iter().map(|p| p.2.clone()).collect()
    };
    assert_eq!(
        data(""),
        strings(&[
            r#"{"id":"e1","at":"2023-03-06 13:47:00.5Z","local":"2023-03-06 15:47:00.123","t":"13:47:00.25","days":"[\"2023-03-06 15:47:00\"]"}"#
        ])
    );
    assert_eq!(
        data("config:\n  edition: 2\n"),
        strings(&[
            r#"{"id":"e1","at":"2023-03-06T13:47:00.500000Z","local":"2023-03-06T15:47:00.123000","t":"13:47:00.250000","days":"[\"2023-03-06T15:47:00.000000\"]"}"#
        ])
    );
    assert_eq!(
        data("config:\n  edition: 2\n  timestamp_max_precision: milliseconds\n"),
        strings(&[
            r#"{"id":"e1","at":"2023-03-06T13:47:00.500Z","local":"2023-03-06T15:47:00.123","t":"13:47:00.250","days":"[\"2023-03-06T15:47:00.000\"]"}"#
        ])
    );
}

/// `->>` with a dotted key: legacy splits on dots, `fixed_json_extract` reads one key; JSON null
/// handling flips too (legacy `->>` of null is the text 'null', `->` of null is SQL NULL).
#[test]
fn fixed_json_extract_changes_dotted_keys_and_json_null() {
    let body = concat!(
        "bucket_definitions:\n  by_role:\n    parameters: SELECT request.jwt() ->> 'app.role' AS role\n",
        "    data:\n      - SELECT id, doc ->> 'a.b' AS v, doc ->> 'n' AS text_null, doc -> 'n' AS json_null FROM t WHERE role = bucket.role\n",
    );
    let t = table("t", &[("id", "text"), ("doc", "jsonb"), ("role", "text")]);
    let row = json!(["r1", "{\"a\": {\"b\": 1}, \"n\": null, \"a.b\": 2}", "x"]);
    let jwt = json!({"sub": "u", "app": {"role": "nested"}, "app.role": "flat"});

    let mut legacy = Db::new(body);
    legacy.insert(&t, std::slice::from_ref(&row));
    assert_eq!(
        legacy.buckets(jwt.clone(), json!({})),
        strings(&[r#"by_role["nested"]"#])
    );
    assert_eq!(
        legacy.rows_in(r#"by_role["x"]"#),
        strings(&[r#"t/r1 {"id":"r1","v":1,"text_null":"null","json_null":null}"#])
    );

    let mut fixed = Db::new(&format!("config:\n  fixed_json_extract: true\n{body}"));
    fixed.insert(&t, std::slice::from_ref(&row));
    assert_eq!(fixed.buckets(jwt, json!({})), strings(&[r#"by_role["flat"]"#]));
    assert_eq!(
        fixed.rows_in(r#"by_role["x"]"#),
        strings(&[r#"t/r1 {"id":"r1","v":2,"text_null":null,"json_null":"null"}"#])
    );
}

/// NaN (float8 can hold it) compares equal to nothing, itself included (§5.2 compares numbers by
/// value); `!=` is true.
#[test]
fn nan_equals_nothing_in_filters() {
    let mut db = Db::new(concat!(
        "bucket_definitions:\n",
        "  eq:\n    data:\n      - SELECT id FROM t WHERE score = 1.5\n",
        "  eq_int:\n    data:\n      - SELECT id FROM t WHERE score = 2\n",
        "  self_eq:\n    data:\n      - SELECT id FROM t WHERE score = score\n",
        "  ne:\n    data:\n      - SELECT id FROM t WHERE score != 1.5\n",
    ));
    let t = table("t", &[("id", "text"), ("score", "float8")]);
    db.insert(
        &t,
        &[json!(["nan", "NaN"]), json!(["x", "1.5"]), json!(["two", "2"])],
    );
    assert_eq!(db.rows_in("eq[]"), strings(&[r#"t/x {"id":"x"}"#]));
    assert_eq!(db.rows_in("eq_int[]"), strings(&[r#"t/two {"id":"two"}"#]));
    assert_eq!(
        db.rows_in("self_eq[]"),
        strings(&[r#"t/two {"id":"two"}"#, r#"t/x {"id":"x"}"#])
    );
    assert_eq!(
        db.rows_in("ne[]"),
        strings(&[r#"t/nan {"id":"nan"}"#, r#"t/two {"id":"two"}"#])
    );
}

/// A stream reached both as a default (auto_subscribe) and through an explicit subscription with
/// an override is listed once, with the lowest priority of the two.
#[test]
fn default_and_explicit_subscription_merge_to_the_lowest_priority() {
    let db = Db::new(concat!(
        "config:\n  edition: 2\n",
        "streams:\n  mine:\n    auto_subscribe: true\n    priority: 2\n",
        "    query: SELECT * FROM notes WHERE owner = auth.user_id()\n",
    ));
    let with = |defaults: bool, priority: Option<u8>| {
        db.priorities(&request(
            json!({"sub": "u1"}),
            json!({}),
            defaults,
            vec![subscription("mine", None, priority)],
        ))
    };
    let bucket = r#"1#mine|0["u1"]"#.to_string();
    assert_eq!(with(true, Some(0)), vec![(bucket.clone(), 0)]);
    assert_eq!(with(true, Some(3)), vec![(bucket.clone(), 2)]);
    assert_eq!(with(false, Some(3)), vec![(bucket.clone(), 3)]);
    assert_eq!(with(true, None), vec![(bucket, 2)]);
}
