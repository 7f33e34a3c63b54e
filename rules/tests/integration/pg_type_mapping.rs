//! The Postgres → synced value mapping (SYNC_RULES.md §8) against a real PostgreSQL 15: values
//! are inserted, read back through a logical slot with pgoutput (the replicator's path), mapped
//! with `map_text_value`, and compared with the expected synced values, under legacy and
//! edition-2 options. Text-format SELECT must give the same text as pgoutput.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use syncgate_rules::pgtype::{PgType, map_text_value};
use syncgate_rules::{Compatibility, SqliteValue, TimestampPrecision};
use syncgate_test_support::pgoutput::{self, Message, TupleValue};
use syncgate_test_support::shared_cluster;
use tokio_postgres::{Client, SimpleQueryMessage};

/// An expected synced value.
#[derive(Debug, Clone, Copy)]
enum E {
    I(i64),
    R(f64),
    T(&'static str),
    B(&'static [u8]),
    /// TEXT equal to the Postgres text itself (raw text, e.g. custom types without the option).
    Raw,
}

/// (column type, SQL value, legacy expectation, edition-2 expectation)
const CASES: &[(&str, &str, E, E)] = &[
    ("bool", "true", E::I(1), E::I(1)),
    ("bool", "false", E::I(0), E::I(0)),
    ("int2", "-32768", E::I(-32768), E::I(-32768)),
    ("int4", "2147483647", E::I(2_147_483_647), E::I(2_147_483_647)),
    ("int8", "9223372036854775807", E::I(i64::MAX), E::I(i64::MAX)),
    ("int8", "-9223372036854775808", E::I(i64::MIN), E::I(i64::MIN)),
    ("oid", "4294967295", E::I(4_294_967_295), E::I(4_294_967_295)),
    ("float4", "0.1", E::R(0.1), E::R(0.1)),
    ("float4", "1.1", E::R(1.1), E::R(1.1)),
    ("float4", "1e-7", E::R(1e-7), E::R(1e-7)),
    ("float4", "'NaN'", E::R(f64::NAN), E::R(f64::NAN)),
    ("float4", "'Infinity'", E::R(f64::INFINITY), E::R(f64::INFINITY)),
    (
        "float4",
        "'-Infinity'",
        E::R(f64::NEG_INFINITY),
        E::R(f64::NEG_INFINITY),
    ),
    ("float8", "0.1", E::R(0.1), E::R(0.1)),
    ("float8", "3", E::R(3.0), E::R(3.0)),
    ("float8", "'-0'", E::R(-0.0), E::R(-0.0)),
    ("float8", "1e300", E::R(1e300), E::R(1e300)),
    ("float8", "1e-7", E::R(1e-7), E::R(1e-7)),
    (
        "float8",
        "123456789.123456789",
        E::R(123_456_789.123_456_79),
        E::R(123_456_789.123_456_79),
    ),
    ("float8", "'NaN'", E::R(f64::NAN), E::R(f64::NAN)),
    (
        "float8",
        "'-Infinity'",
        E::R(f64::NEG_INFINITY),
        E::R(f64::NEG_INFINITY),
    ),
    (
        "numeric",
        "12345678901234567890.123456789",
        E::T("12345678901234567890.123456789"),
        E::T("12345678901234567890.123456789"),
    ),
    ("numeric", "1.50", E::T("1.50"), E::T("1.50")),
    ("numeric", "'NaN'", E::T("NaN"), E::T("NaN")),
    (
        "numeric",
        "1e20",
        E::T("100000000000000000000"),
        E::T("100000000000000000000"),
    ),
    (
        "text",
        r#"'héllo "w" \ {a,b}'"#,
        E::T(r#"héllo "w" \ {a,b}"#),
        E::T(r#"héllo "w" \ {a,b}"#),
    ),
    ("varchar(10)", "'abc'", E::T("abc"), E::T("abc")),
    ("char(5)", "'ab'", E::T("ab   "), E::T("ab   ")),
    (
        "uuid",
        "'baeb2514-4c57-436d-b3cc-c1256211656d'",
        E::T("baeb2514-4c57-436d-b3cc-c1256211656d"),
        E::T("baeb2514-4c57-436d-b3cc-c1256211656d"),
    ),
    ("name", "'some_name'", E::T("some_name"), E::T("some_name")),
    (
        "json",
        r#"'{"a":1,  "b" : [1,2]}'"#,
        E::T(r#"{"a":1,  "b" : [1,2]}"#),
        E::T(r#"{"a":1,  "b" : [1,2]}"#),
    ),
    (
        "jsonb",
        r#"'{"b" : [1,2], "a":1}'"#,
        E::T(r#"{"a": 1, "b": [1, 2]}"#),
        E::T(r#"{"a": 1, "b": [1, 2]}"#),
    ),
    // Arrays of built-in types: JSON in every edition.
    (
        "text[]",
        r#"ARRAY['a', 'b,c', NULL, 'with "quote"', 'back\slash', 'NULL', '', 'x y']"#,
        E::T(r#"["a","b,c",null,"with \"quote\"","back\\slash","NULL","","x y"]"#),
        E::T(r#"["a","b,c",null,"with \"quote\"","back\\slash","NULL","","x y"]"#),
    ),
    (
        "text[]",
        r#"ARRAY[['a"b', 'c\d'], ['{x}', NULL]]"#,
        E::T(r#"[["a\"b","c\\d"],["{x}",null]]"#),
        E::T(r#"[["a\"b","c\\d"],["{x}",null]]"#),
    ),
    ("text[]", "'{}'", E::T("[]"), E::T("[]")),
    (
        "int4[]",
        "'{{1,2},{3,4}}'",
        E::T("[[1,2],[3,4]]"),
        E::T("[[1,2],[3,4]]"),
    ),
    ("int4[]", "'[0:1]={1,2}'", E::T("[1,2]"), E::T("[1,2]")),
    (
        "int8[]",
        "ARRAY[9223372036854775807, NULL]",
        E::T("[9223372036854775807,null]"),
        E::T("[9223372036854775807,null]"),
    ),
    ("bool[]", "'{t,f,NULL}'", E::T("[1,0,null]"), E::T("[1,0,null]")),
    (
        "float8[]",
        "ARRAY[1.5, 3, 'NaN', '-0', 1e300]::float8[]",
        E::T("[1.5,3.0,null,0.0,1e+300]"),
        E::T("[1.5,3.0,null,0.0,1e+300]"),
    ),
    ("float4[]", "ARRAY[0.1]::float4[]", E::T("[0.1]"), E::T("[0.1]")),
    (
        "numeric[]",
        "ARRAY[1.50, 'NaN']::numeric[]",
        E::T(r#"["1.50","NaN"]"#),
        E::T(r#"["1.50","NaN"]"#),
    ),
    (
        "json[]",
        r#"ARRAY['{"a": 1}', '[1,  2]', NULL]::json[]"#,
        E::T(r#"[{"a": 1},[1,  2],null]"#),
        E::T(r#"[{"a": 1},[1,  2],null]"#),
    ),
    (
        "jsonb[]",
        r#"ARRAY['{"b":2,"a":1}']::jsonb[]"#,
        E::T(r#"[{"a": 1, "b": 2}]"#),
        E::T(r#"[{"a": 1, "b": 2}]"#),
    ),
    (
        "timestamptz[]",
        "ARRAY['2023-03-06 15:47:00+02', '2023-03-06 15:47:00.123456+00', NULL]::timestamptz[]",
        E::T(r#"["2023-03-06 13:47:00Z","2023-03-06 15:47:00.123456Z",null]"#),
        E::T(r#"["2023-03-06T13:47:00.000000Z","2023-03-06T15:47:00.123456Z",null]"#),
    ),
    (
        "bytea[]",
        r"ARRAY['\x01'::bytea, NULL]",
        E::T("[null,null]"),
        E::T("[null,null]"),
    ),
    (
        "box[]",
        "ARRAY[box(point '(1,2)', point '(3,4)'), box(point '(5,6)', point '(7,8)')]",
        E::T(r#"["(3,4),(1,2)","(7,8),(5,6)"]"#),
        E::T(r#"["(3,4),(1,2)","(7,8),(5,6)"]"#),
    ),
    ("date", "'2023-03-06'", E::T("2023-03-06"), E::T("2023-03-06")),
    ("date", "'infinity'", E::T("9999-12-31"), E::T("9999-12-31")),
    ("date", "'-infinity'", E::T("0000-01-01"), E::T("0000-01-01")),
    (
        "date",
        "'0044-03-15 BC'",
        E::T("0044-03-15 BC"),
        E::T("0044-03-15 BC"),
    ),
    (
        "time",
        "'13:47:00.25'",
        E::T("13:47:00.25"),
        E::T("13:47:00.250000"),
    ),
    ("time", "'allballs'", E::T("00:00:00"), E::T("00:00:00.000000")),
    (
        "timetz",
        "'13:47:00+02'",
        E::T("13:47:00+02"),
        E::T("13:47:00+02"),
    ),
    (
        "timestamp",
        "'2023-03-06 15:47:00.123456'",
        E::T("2023-03-06 15:47:00.123456"),
        E::T("2023-03-06T15:47:00.123456"),
    ),
    (
        "timestamp",
        "'2023-03-06 15:47'",
        E::T("2023-03-06 15:47:00"),
        E::T("2023-03-06T15:47:00.000000"),
    ),
    (
        "timestamp",
        "'infinity'",
        E::T("9999-12-31 23:59:59"),
        E::T("9999-12-31T23:59:59.000000"),
    ),
    (
        "timestamp",
        "'-infinity'",
        E::T("0000-01-01 00:00:00"),
        E::T("0000-01-01T00:00:00.000000"),
    ),
    ("timestamp", "'0044-03-15 12:00:00 BC'", E::Raw, E::Raw),
    (
        "timestamptz",
        "'2023-03-06 15:47:00+02'",
        E::T("2023-03-06 13:47:00Z"),
        E::T("2023-03-06T13:47:00.000000Z"),
    ),
    (
        "timestamptz",
        "'2023-03-06 17:17:00.5+05:30'",
        E::T("2023-03-06 11:47:00.5Z"),
        E::T("2023-03-06T11:47:00.500000Z"),
    ),
    (
        "timestamptz",
        "'2023-03-06 15:47:00.123456 America/New_York'",
        E::T("2023-03-06 20:47:00.123456Z"),
        E::T("2023-03-06T20:47:00.123456Z"),
    ),
    (
        "timestamptz",
        "'0022-02-03 12:13:14+03'",
        E::T("0022-02-03 09:13:14Z"),
        E::T("0022-02-03T09:13:14.000000Z"),
    ),
    (
        "timestamptz",
        "'infinity'",
        E::T("9999-12-31 23:59:59Z"),
        E::T("9999-12-31T23:59:59.000000Z"),
    ),
    (
        "interval",
        "'1 day 02:03:04'",
        E::T("1 day 02:03:04"),
        E::T("1 day 02:03:04"),
    ),
    (
        "interval",
        "'-1 year -2 mons'",
        E::T("-1 years -2 mons"),
        E::T("-1 years -2 mons"),
    ),
    (
        "inet",
        "'192.168.0.1/24'",
        E::T("192.168.0.1/24"),
        E::T("192.168.0.1/24"),
    ),
    ("money", "12.34", E::T("$12.34"), E::T("$12.34")),
    ("point", "'(1,2)'", E::T("(1,2)"), E::T("(1,2)")),
    (
        "pg_lsn",
        "'16/B374D848'",
        E::T("00000016/B374D848"),
        E::T("00000016/B374D848"),
    ),
    ("bytea", r"'\x0102ff'", E::B(&[1, 2, 0xff]), E::B(&[1, 2, 0xff])),
    // Custom types: raw text unless custom_postgres_types (edition 2).
    ("mood", "'happy'", E::T("happy"), E::T("happy")),
    ("posint", "42", E::T("42"), E::I(42)),
    (
        "ts_domain",
        "'2023-03-06 15:47:00+02'",
        E::Raw,
        E::T("2023-03-06T13:47:00.000000Z"),
    ),
    (
        "pair",
        "ROW(1, 'x y', ARRAY[true, false])",
        E::Raw,
        E::T(r#"{"a":1,"b":"x y","c":[1,0]}"#),
    ),
    (
        "pair",
        "ROW(NULL, '', NULL)",
        E::Raw,
        E::T(r#"{"a":null,"b":"","c":null}"#),
    ),
    (
        "outer_t",
        r#"ROW(ROW(2, 'q"uote\', NULL)::pair, '2023-03-06 15:47:00+02', '{"k": [1]}', 'sad')"#,
        E::Raw,
        E::T(
            r#"{"p":{"a":2,"b":"q\"uote\\","c":null},"ts":"2023-03-06T13:47:00.000000Z","j":{"k": [1]},"m":"sad"}"#,
        ),
    ),
    (
        "int4range",
        "'[1,5)'",
        E::Raw,
        E::T(r#"{"lower":1,"upper":5,"lower_exclusive":0,"upper_exclusive":1}"#),
    ),
    (
        "int4range",
        "'(,5]'",
        E::Raw,
        E::T(r#"{"lower":null,"upper":6,"lower_exclusive":1,"upper_exclusive":1}"#),
    ),
    ("int4range", "'empty'", E::T("empty"), E::T("empty")),
    (
        "tstzrange",
        "'[2023-03-06 15:47:00+02, 2023-03-07 00:00:00+00)'",
        E::Raw,
        E::T(
            r#"{"lower":"2023-03-06T13:47:00.000000Z","upper":"2023-03-07T00:00:00.000000Z","lower_exclusive":0,"upper_exclusive":1}"#,
        ),
    ),
    (
        "int4multirange",
        "'{[1,3),[5,7)}'",
        E::Raw,
        E::T(
            r#"[{"lower":1,"upper":3,"lower_exclusive":0,"upper_exclusive":1},{"lower":5,"upper":7,"lower_exclusive":0,"upper_exclusive":1}]"#,
        ),
    ),
    (
        "pair[]",
        "ARRAY[ROW(1, 'a', ARRAY[true])::pair, NULL]",
        E::Raw,
        E::T(r#"[{"a":1,"b":"a","c":[1]},null]"#),
    ),
    (
        "mood[]",
        "ARRAY['sad', 'happy']::mood[]",
        E::Raw,
        E::T(r#"["sad","happy"]"#),
    ),
    ("posint[]", "ARRAY[1, 2]::posint[]", E::Raw, E::T("[1,2]")),
    (
        "int4range[]",
        "ARRAY['[1,2)'::int4range, 'empty']",
        E::Raw,
        E::T(r#"[{"lower":1,"upper":2,"lower_exclusive":0,"upper_exclusive":1},"empty"]"#),
    ),
];

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
    CREATE DOMAIN ts_domain AS timestamptz;
    CREATE TYPE pair AS (a int4, b text, c bool[]);
    CREATE TYPE outer_t AS (p pair, ts timestamptz, j jsonb, m mood, raw bytea);
    -- A dropped attribute must not shift the composite's fields.
    ALTER TYPE outer_t DROP ATTRIBUTE raw;
";

#[tokio::test]
async fn values_map_through_pgoutput_like_the_spec_says() {
    let started = std::time::Instant::now();
    let db = shared_cluster().create_database().expect("test database");
    let client = db.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("types");
    let columns: Vec<String> = CASES
        .iter()
        .enumerate()
        .map(|(i, (ty, ..))| format!("c{i} {ty}"))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, {}); CREATE PUBLICATION p FOR TABLE t;",
            columns.join(", ")
        ))
        .await
        .expect("table");
    // The slot must exist before the insert to see it.
    client
        .execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", &[])
        .await
        .expect("slot");
    let values: Vec<&str> = CASES.iter().map(|(_, value, ..)| *value).collect();
    client
        .batch_execute(&format!("INSERT INTO t VALUES (1, {})", values.join(", ")))
        .await
        .expect("insert");

    let (relation, row) = replicated_row(&client).await;
    let queried = queried_row(&client).await;
    let mut types = TypeResolver::default();
    let legacy = Compatibility::for_edition(1);
    let modern = Compatibility::for_edition(2);
    let mut failures = Vec::new();
    for (i, (type_name, value, want_legacy, want_modern)) in CASES.iter().enumerate() {
        let column = i + 1; // after id
        let text = row[column]
            .as_text()
            .unwrap_or_else(|| panic!("c{i} ({type_name}): {:?}", row[column]));
        assert_eq!(
            queried[column].as_deref(),
            Some(text),
            "c{i} ({type_name} {value}): SELECT text differs from pgoutput text"
        );
        let ty = types.resolve(&client, relation.columns[column].type_oid).await;
        for (options, compat, want) in [
            ("legacy", &legacy, want_legacy),
            ("edition 2", &modern, want_modern),
        ] {
            let got = map_text_value(&ty, text, compat);
            let want = expected(*want, text);
            if got != want {
                failures.push(format!(
                    "c{i} {type_name} = {value} ({options}): pg text {text:?} → {got:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} values checked against PostgreSQL in {:?}",
        CASES.len(),
        started.elapsed()
    );
}

/// `timestamp_max_precision` with values that went through Postgres.
#[tokio::test]
async fn timestamp_precision_options_on_real_values() {
    let db = shared_cluster().create_database().expect("test database");
    let client = db.connect().await.expect("connect");
    let rows = client
        .simple_query(
            "SELECT '2023-03-06 15:47:00.987654+02'::timestamptz, '2023-03-06 15:47:00.987654'::timestamp,
                    '13:47:00.987654'::time",
        )
        .await
        .expect("select");
    let SimpleQueryMessage::Row(row) = &rows[1] else {
        panic!("{rows:?}")
    };
    let texts: Vec<&str> = (0..3).map(|i| row.get(i).expect("value")).collect();
    let types = [PgType::Timestamptz, PgType::Timestamp, PgType::Time];
    let cases: [(TimestampPrecision, [&str; 3]); 4] = [
        (
            TimestampPrecision::Seconds,
            ["2023-03-06T13:47:00Z", "2023-03-06T15:47:00", "13:47:00"],
        ),
        (
            TimestampPrecision::Milliseconds,
            [
                "2023-03-06T13:47:00.987Z",
                "2023-03-06T15:47:00.987",
                "13:47:00.987",
            ],
        ),
        (
            TimestampPrecision::Microseconds,
            [
                "2023-03-06T13:47:00.987654Z",
                "2023-03-06T15:47:00.987654",
                "13:47:00.987654",
            ],
        ),
        // Postgres has microseconds only: nanoseconds gives 6 digits.
        (
            TimestampPrecision::Nanoseconds,
            [
                "2023-03-06T13:47:00.987654Z",
                "2023-03-06T15:47:00.987654",
                "13:47:00.987654",
            ],
        ),
    ];
    for (precision, expected) in cases {
        let compat = Compatibility {
            timestamp_max_precision: precision,
            ..Compatibility::for_edition(2)
        };
        for i in 0..3 {
            assert_eq!(
                map_text_value(&types[i], texts[i], &compat),
                SqliteValue::from(expected[i]),
                "{precision:?}"
            );
        }
    }
}

/// Every built-in type OID `from_builtin_oid` knows has that name in pg_type, and every built-in
/// array type of the catalog resolves to an array of its element type.
#[tokio::test]
async fn builtin_oids_match_the_catalog() {
    let db = shared_cluster().create_database().expect("test database");
    let client = db.connect().await.expect("connect");
    let rows = client
        .query(
            "SELECT t.oid, t.typname::text, t.typelem, e.typtype::text
             FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem
             WHERE t.oid < 16384 AND t.typtype IN ('b', 'r', 'm')",
            &[],
        )
        .await
        .expect("pg_type");
    let mut checked = 0;
    for row in rows {
        let (oid, name, element, element_kind): (u32, String, u32, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let Some(ty) = PgType::from_builtin_oid(oid) else {
            // Only arrays of composite, domain or pseudo types may be unknown.
            assert!(
                matches!(element_kind.as_deref(), Some("c" | "d" | "p")) || name.starts_with("pg_"),
                "{oid} {name} unknown"
            );
            continue;
        };
        if name.starts_with('_') {
            let element_type = PgType::from_builtin_oid(element).expect("element type");
            assert_eq!(ty, PgType::Array(Box::new(element_type)), "{oid} {name}");
        } else {
            assert_eq!(PgType::from_name(&name), ty, "{oid} {name}");
        }
        checked += 1;
    }
    assert!(checked > 120, "{checked}");
}

fn expected(e: E, pg_text: &str) -> SqliteValue {
    match e {
        E::I(i) => SqliteValue::Integer(i),
        E::R(f) => SqliteValue::Real(f),
        E::T(s) => SqliteValue::from(s),
        E::B(b) => SqliteValue::Blob(Arc::from(b)),
        E::Raw => SqliteValue::from(pg_text),
    }
}

/// The relation and the inserted row of table `t`, as pgoutput sends them.
async fn replicated_row(client: &Client) -> (pgoutput::Relation, Vec<TupleValue>) {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL,
               'proto_version', '1', 'publication_names', 'p')",
            &[],
        )
        .await
        .expect("slot changes");
    let mut relations = pgoutput::RelationCache::default();
    for row in &rows {
        let message = pgoutput::decode(row.get::<_, &[u8]>(0)).expect("pgoutput message");
        relations.observe(&message);
        if let Message::Insert { relation_id, new } = message {
            let relation = relations
                .get(relation_id)
                .expect("Relation before Insert")
                .clone();
            assert_eq!(relation.name, "t");
            assert_eq!(relation.columns.len(), CASES.len() + 1);
            return (relation, new);
        }
    }
    panic!("no Insert among {} messages", rows.len());
}

/// The same row with a text-format query in a session with the replication settings.
async fn queried_row(client: &Client) -> Vec<Option<String>> {
    let messages = client.simple_query("SELECT * FROM t").await.expect("select");
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            return (0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect();
        }
    }
    panic!("no row");
}

/// Resolves column type OIDs: built-ins directly, others from pg_type (what the replicator does).
#[derive(Default)]
struct TypeResolver {
    cache: HashMap<u32, PgType>,
}

impl TypeResolver {
    fn resolve<'a>(&'a mut self, client: &'a Client, oid: u32) -> Pin<Box<dyn Future<Output = PgType> + 'a>> {
        Box::pin(async move {
            if let Some(ty) = PgType::from_builtin_oid(oid).or_else(|| self.cache.get(&oid).cloned()) {
                return ty;
            }
            let row = client
                .query_one(
                    "SELECT t.typname::text, t.typtype::text, t.typbasetype, t.typelem, t.typrelid, t.typcategory::text,
                            (SELECT rngsubtype FROM pg_range WHERE rngtypid = t.oid),
                            (SELECT rngsubtype FROM pg_range WHERE rngmultitypid = t.oid)
                     FROM pg_type t WHERE t.oid = $1",
                    &[&oid],
                )
                .await
                .expect("pg_type row");
            let name: String = row.get(0);
            let kind: String = row.get(1);
            let ty = match kind.as_str() {
                "d" => PgType::Domain {
                    name,
                    base: Box::new(self.resolve(client, row.get(2)).await),
                },
                "e" => PgType::Enum(name),
                "c" => {
                    let attributes = client
                        .query(
                            "SELECT attname::text, atttypid FROM pg_attribute
                             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                            &[&row.get::<_, u32>(4)],
                        )
                        .await
                        .expect("attributes");
                    let mut fields = Vec::new();
                    for attribute in attributes {
                        let field_type = self.resolve(client, attribute.get(1)).await;
                        fields.push((attribute.get(0), field_type));
                    }
                    PgType::Composite { name, fields }
                }
                "r" => PgType::Range {
                    name,
                    element: Box::new(self.resolve(client, row.get(6)).await),
                },
                "m" => PgType::Multirange {
                    name,
                    element: Box::new(self.resolve(client, row.get(7)).await),
                },
                "b" if row.get::<_, String>(5) == "A" && row.get::<_, u32>(3) != 0 => {
                    PgType::Array(Box::new(self.resolve(client, row.get(3)).await))
                }
                _ => PgType::Other(name),
            };
            self.cache.insert(oid, ty.clone());
            ty
        })
    }
}
