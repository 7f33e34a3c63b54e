use super::*;
use crate::compat::TimestampPrecision;

fn legacy() -> Compatibility {
    Compatibility::for_edition(1)
}

fn modern() -> Compatibility {
    Compatibility::for_edition(2)
}

fn with_precision(precision: TimestampPrecision) -> Compatibility {
    Compatibility {
        timestamp_max_precision: precision,
        ..modern()
    }
}

fn map(ty: &PgType, text: &str, compat: &Compatibility) -> SqliteValue {
    map_text_value(ty, text, compat)
}

fn text(s: &str) -> SqliteValue {
    SqliteValue::from(s)
}

#[track_caller]
fn assert_text(ty: &PgType, input: &str, compat: &Compatibility, expected: &str) {
    assert_eq!(map(ty, input, compat), text(expected), "{ty:?} {input:?}");
}

/// Asserts the same result under legacy and edition-2 options.
#[track_caller]
fn assert_both(ty: &PgType, input: &str, expected: SqliteValue) {
    assert_eq!(map(ty, input, &legacy()), expected, "legacy {ty:?} {input:?}");
    assert_eq!(map(ty, input, &modern()), expected, "modern {ty:?} {input:?}");
}

fn name(n: &str) -> PgType {
    PgType::from_name(n)
}

fn composite(fields: &[(&str, PgType)]) -> PgType {
    PgType::Composite {
        name: "c".into(),
        fields: fields.iter().map(|(n, t)| ((*n).to_owned(), t.clone())).collect(),
    }
}

fn range(element: PgType) -> PgType {
    PgType::Range {
        name: "r".into(),
        element: Box::new(element),
    }
}

fn array(element: PgType) -> PgType {
    PgType::Array(Box::new(element))
}

#[test]
fn names_resolve_to_types() {
    for (n, expected) in [
        ("bool", PgType::Bool),
        ("boolean", PgType::Bool),
        ("int2", PgType::Int2),
        ("smallint", PgType::Int2),
        ("int4", PgType::Int4),
        ("integer", PgType::Int4),
        ("INT", PgType::Int4),
        ("int8", PgType::Int8),
        ("bigint", PgType::Int8),
        ("oid", PgType::Oid),
        ("float4", PgType::Float4),
        ("real", PgType::Float4),
        ("float8", PgType::Float8),
        ("double precision", PgType::Float8),
        ("numeric", PgType::Numeric),
        ("numeric(10, 2)", PgType::Numeric),
        ("decimal", PgType::Numeric),
        ("text", PgType::Text),
        ("varchar(255)", PgType::Text),
        ("character varying", PgType::Text),
        ("char(5)", PgType::Text),
        ("bpchar", PgType::Text),
        ("name", PgType::Text),
        ("uuid", PgType::Text),
        ("citext", PgType::Text),
        ("json", PgType::Json),
        ("jsonb", PgType::Jsonb),
        ("pg_catalog.jsonb", PgType::Jsonb),
        ("bytea", PgType::Bytea),
        ("date", PgType::Date),
        ("time", PgType::Time),
        ("time without time zone", PgType::Time),
        ("timetz", PgType::TimeTz),
        ("time(3) with time zone", PgType::TimeTz),
        ("timestamp", PgType::Timestamp),
        ("timestamp without time zone", PgType::Timestamp),
        ("timestamptz", PgType::Timestamptz),
        ("timestamp(3) with time zone", PgType::Timestamptz),
        ("interval", PgType::Interval),
        ("pg_lsn", PgType::PgLsn),
        ("inet", PgType::Other("inet".into())),
        ("mood", PgType::Other("mood".into())),
        ("text[]", array(PgType::Text)),
        ("_text", array(PgType::Text)),
        ("bool[]", array(PgType::Bool)),
        ("int4[][]", array(PgType::Int4)),
        ("integer[3]", array(PgType::Int4)),
        ("integer array", array(PgType::Int4)),
        ("timestamptz[]", array(PgType::Timestamptz)),
        ("timestamp with time zone[]", array(PgType::Timestamptz)),
        ("int4range", range(PgType::Int4)),
    ] {
        let got = name(n);
        match (&got, &expected) {
            (PgType::Range { element: a, .. }, PgType::Range { element: b, .. }) => assert_eq!(a, b, "{n}"),
            _ => assert_eq!(got, expected, "{n}"),
        }
    }
}

#[test]
fn builtin_oids_resolve() {
    assert_eq!(PgType::from_builtin_oid(16), Some(PgType::Bool));
    assert_eq!(PgType::from_builtin_oid(20), Some(PgType::Int8));
    assert_eq!(PgType::from_builtin_oid(21), Some(PgType::Int2));
    assert_eq!(PgType::from_builtin_oid(23), Some(PgType::Int4));
    assert_eq!(PgType::from_builtin_oid(25), Some(PgType::Text));
    assert_eq!(PgType::from_builtin_oid(26), Some(PgType::Oid));
    assert_eq!(PgType::from_builtin_oid(114), Some(PgType::Json));
    assert_eq!(PgType::from_builtin_oid(700), Some(PgType::Float4));
    assert_eq!(PgType::from_builtin_oid(701), Some(PgType::Float8));
    assert_eq!(PgType::from_builtin_oid(1700), Some(PgType::Numeric));
    assert_eq!(PgType::from_builtin_oid(1007), Some(array(PgType::Int4)));
    assert_eq!(PgType::from_builtin_oid(1009), Some(array(PgType::Text)));
    assert_eq!(PgType::from_builtin_oid(1185), Some(array(PgType::Timestamptz)));
    assert_eq!(
        PgType::from_builtin_oid(1020),
        Some(array(PgType::Other("box".into())))
    );
    assert_eq!(PgType::from_builtin_oid(869), Some(PgType::Other("inet".into())));
    assert_eq!(
        PgType::from_builtin_oid(3910),
        Some(PgType::Range {
            name: "tstzrange".into(),
            element: Box::new(PgType::Timestamptz)
        })
    );
    assert!(
        matches!(PgType::from_builtin_oid(3905), Some(PgType::Array(r)) if matches!(*r, PgType::Range { .. }))
    );
    assert_eq!(PgType::from_builtin_oid(0), None);
    assert_eq!(PgType::from_builtin_oid(16_384), None);
    // Arrays of catalog row types are composites: left to the pg_type lookup.
    assert_eq!(PgType::from_builtin_oid(210), None);
}

#[test]
fn booleans_and_integers() {
    assert_both(&PgType::Bool, "t", SqliteValue::Integer(1));
    assert_both(&PgType::Bool, "f", SqliteValue::Integer(0));
    assert_both(&PgType::Bool, "maybe", text("maybe"));
    assert_both(
        &PgType::Int8,
        "9223372036854775807",
        SqliteValue::Integer(i64::MAX),
    );
    assert_both(
        &PgType::Int8,
        "-9223372036854775808",
        SqliteValue::Integer(i64::MIN),
    );
    assert_both(&PgType::Int2, "-32768", SqliteValue::Integer(-32768));
    assert_both(&PgType::Int4, "2147483647", SqliteValue::Integer(2_147_483_647));
    assert_both(&PgType::Oid, "4294967295", SqliteValue::Integer(4_294_967_295));
    assert_both(&PgType::Int4, "12x", text("12x"));
    assert_both(
        &PgType::Int8,
        "99999999999999999999",
        text("99999999999999999999"),
    );
}

#[test]
fn floats() {
    assert_both(&PgType::Float4, "0.1", SqliteValue::Real(0.1));
    assert_both(&PgType::Float4, "1.1", SqliteValue::Real(1.1));
    assert_both(&PgType::Float8, "3", SqliteValue::Real(3.0));
    assert_both(&PgType::Float8, "1e+300", SqliteValue::Real(1e300));
    assert_both(&PgType::Float8, "1e-07", SqliteValue::Real(1e-7));
    assert_both(&PgType::Float8, "-0.5", SqliteValue::Real(-0.5));
    assert_both(&PgType::Float8, "Infinity", SqliteValue::Real(f64::INFINITY));
    assert_both(&PgType::Float8, "-Infinity", SqliteValue::Real(f64::NEG_INFINITY));
    let nan = map(&PgType::Float8, "NaN", &legacy());
    assert!(matches!(nan, SqliteValue::Real(f) if f.is_nan()));
    let negative_zero = map(&PgType::Float8, "-0", &legacy());
    assert!(matches!(negative_zero, SqliteValue::Real(f) if f == 0.0 && f.is_sign_negative()));
    // Spellings Rust accepts but Postgres never writes stay text.
    assert_both(&PgType::Float8, "inf", text("inf"));
    assert_both(&PgType::Float8, "", text(""));
}

#[test]
fn text_like_types_stay_as_is() {
    for (ty, input) in [
        (PgType::Numeric, "12345678901234567890.123456789"),
        (PgType::Numeric, "1.0"),
        (PgType::Numeric, "NaN"),
        (PgType::Text, "héllo \"w\" \\ {a,b}"),
        (PgType::Json, "{\"a\":1,  \"b\" : [1,2]}"),
        (PgType::Jsonb, "{\"a\": 1, \"b\": [true, null]}"),
        (PgType::Interval, "1 day 02:03:04"),
        (PgType::TimeTz, "13:47:00+02"),
        (PgType::Enum("mood".into()), "happy"),
        (PgType::Other("inet".into()), "192.168.0.1/24"),
        (PgType::Other("money".into()), "$12.34"),
        (PgType::Other("point".into()), "(1,2)"),
        (PgType::Other("mood".into()), "happy"),
    ] {
        assert_both(&ty, input, text(input));
    }
}

#[test]
fn pg_lsn_is_zero_padded() {
    assert_both(&PgType::PgLsn, "16/B374D848", text("00000016/B374D848"));
    assert_both(&PgType::PgLsn, "0/0", text("00000000/00000000"));
    assert_both(&PgType::PgLsn, "garbage", text("garbage"));
}

#[test]
fn bytea_becomes_a_blob() {
    let blob = |b: &[u8]| SqliteValue::Blob(Arc::from(b));
    assert_both(&PgType::Bytea, "\\xdeadbeef", blob(&[0xde, 0xad, 0xbe, 0xef]));
    assert_both(&PgType::Bytea, "\\x", blob(&[]));
    assert_both(&PgType::Bytea, "\\xDEAD", blob(&[0xde, 0xad]));
    // Escape format (bytea_output = escape).
    assert_both(
        &PgType::Bytea,
        "ab\\000\\\\\\377",
        blob(&[b'a', b'b', 0, b'\\', 0xff]),
    );
    // Malformed: kept as text rather than guessed.
    assert_both(&PgType::Bytea, "\\x0", text("\\x0"));
    assert_both(&PgType::Bytea, "\\xzz", text("\\xzz"));
    assert_both(&PgType::Bytea, "a\\9", text("a\\9"));
    assert_both(&PgType::Bytea, "a\\", text("a\\"));
}

#[test]
fn dates() {
    assert_both(&PgType::Date, "2023-03-06", text("2023-03-06"));
    assert_both(&PgType::Date, "infinity", text("9999-12-31"));
    assert_both(&PgType::Date, "-infinity", text("0000-01-01"));
    assert_both(&PgType::Date, "0044-03-15 BC", text("0044-03-15 BC"));
}

#[test]
fn times() {
    let time = PgType::Time;
    assert_text(&time, "13:47:00", &legacy(), "13:47:00");
    assert_text(&time, "13:47:00.25", &legacy(), "13:47:00.25");
    assert_text(&time, "13:47:00", &modern(), "13:47:00.000000");
    assert_text(&time, "13:47:00.25", &modern(), "13:47:00.250000");
    assert_text(&time, "24:00:00", &modern(), "24:00:00.000000");
    assert_text(
        &time,
        "13:47:00.123456",
        &with_precision(TimestampPrecision::Milliseconds),
        "13:47:00.123",
    );
    assert_text(
        &time,
        "13:47:00.123456",
        &with_precision(TimestampPrecision::Seconds),
        "13:47:00",
    );
    assert_text(
        &time,
        "13:47:00.5",
        &with_precision(TimestampPrecision::Nanoseconds),
        "13:47:00.500000",
    );
    assert_text(&time, "garbage", &modern(), "garbage");
}

#[test]
fn timestamps() {
    let ts = PgType::Timestamp;
    assert_text(
        &ts,
        "2023-03-06 15:47:00.123456",
        &legacy(),
        "2023-03-06 15:47:00.123456",
    );
    assert_text(
        &ts,
        "2023-03-06 15:47:00",
        &modern(),
        "2023-03-06T15:47:00.000000",
    );
    assert_text(
        &ts,
        "2023-03-06 15:47:00.12",
        &modern(),
        "2023-03-06T15:47:00.120000",
    );
    assert_text(&ts, "infinity", &legacy(), "9999-12-31 23:59:59");
    assert_text(&ts, "-infinity", &legacy(), "0000-01-01 00:00:00");
    assert_text(&ts, "infinity", &modern(), "9999-12-31T23:59:59.000000");
    assert_text(&ts, "-infinity", &modern(), "0000-01-01T00:00:00.000000");
    let seconds = with_precision(TimestampPrecision::Seconds);
    assert_text(&ts, "2023-03-06 15:47:00.987654", &seconds, "2023-03-06T15:47:00");
    assert_text(&ts, "infinity", &seconds, "9999-12-31T23:59:59");
    let millis = with_precision(TimestampPrecision::Milliseconds);
    assert_text(
        &ts,
        "2023-03-06 15:47:00.987654",
        &millis,
        "2023-03-06T15:47:00.987",
    );
    assert_text(&ts, "2023-03-06 15:47:00.9", &millis, "2023-03-06T15:47:00.900");
    let nanos = with_precision(TimestampPrecision::Nanoseconds);
    assert_text(
        &ts,
        "2023-03-06 15:47:00.987654",
        &nanos,
        "2023-03-06T15:47:00.987654",
    );
    // Precision only applies to the iso8601 form.
    let legacy_millis = Compatibility {
        timestamp_max_precision: TimestampPrecision::Milliseconds,
        ..legacy()
    };
    assert_text(
        &ts,
        "2023-03-06 15:47:00.987654",
        &legacy_millis,
        "2023-03-06 15:47:00.987654",
    );
    // Years beyond 9999 and BC: BC is kept as is.
    assert_text(
        &ts,
        "10000-01-01 00:00:00",
        &modern(),
        "10000-01-01T00:00:00.000000",
    );
    assert_text(&ts, "0044-03-15 12:00:00 BC", &modern(), "0044-03-15 12:00:00 BC");
    assert_text(&ts, "0044-03-15 12:00:00 BC", &legacy(), "0044-03-15 12:00:00 BC");
    assert_text(&ts, "2023-13-06 15:47:00", &modern(), "2023-13-06 15:47:00");
    assert_text(&ts, "2023-03-06T15:47:00", &modern(), "2023-03-06T15:47:00");
}

#[test]
fn timestamptz_converts_to_utc() {
    let tz = PgType::Timestamptz;
    assert_text(&tz, "2023-03-06 15:47:00+02", &legacy(), "2023-03-06 13:47:00Z");
    assert_text(
        &tz,
        "2023-03-06 15:47:00+02",
        &modern(),
        "2023-03-06T13:47:00.000000Z",
    );
    assert_text(
        &tz,
        "2023-03-06 17:17:00.5+00",
        &legacy(),
        "2023-03-06 17:17:00.5Z",
    );
    assert_text(
        &tz,
        "2023-03-06 17:17:00.5+05:30",
        &legacy(),
        "2023-03-06 11:47:00.5Z",
    );
    assert_text(
        &tz,
        "2023-03-06 17:17:00.5+05:30",
        &modern(),
        "2023-03-06T11:47:00.500000Z",
    );
    assert_text(
        &tz,
        "2023-03-06 22:00:00-03:30:15",
        &legacy(),
        "2023-03-07 01:30:15Z",
    );
    assert_text(&tz, "2023-03-06 00:30:00+01", &legacy(), "2023-03-05 23:30:00Z");
    assert_text(&tz, "2024-03-01 00:30:00+01", &legacy(), "2024-02-29 23:30:00Z");
    assert_text(&tz, "2023-12-31 23:30:00-01", &legacy(), "2024-01-01 00:30:00Z");
    assert_text(&tz, "0022-02-03 12:13:14+03", &legacy(), "0022-02-03 09:13:14Z");
    assert_text(
        &tz,
        "1970-01-01 00:00:00+00",
        &modern(),
        "1970-01-01T00:00:00.000000Z",
    );
    assert_text(
        &tz,
        "1969-12-31 23:59:59.999999+00",
        &modern(),
        "1969-12-31T23:59:59.999999Z",
    );
    assert_text(
        &tz,
        "2023-03-06 15:47:00.123456789+00",
        &modern(),
        "2023-03-06T15:47:00.123456Z",
    );
    let millis = with_precision(TimestampPrecision::Milliseconds);
    assert_text(
        &tz,
        "2023-03-06 15:47:00.123456+00",
        &millis,
        "2023-03-06T15:47:00.123Z",
    );
    let seconds = with_precision(TimestampPrecision::Seconds);
    assert_text(
        &tz,
        "2023-03-06 15:47:00.123456+00",
        &seconds,
        "2023-03-06T15:47:00Z",
    );
    assert_text(&tz, "infinity", &legacy(), "9999-12-31 23:59:59Z");
    assert_text(&tz, "-infinity", &legacy(), "0000-01-01 00:00:00Z");
    assert_text(&tz, "infinity", &modern(), "9999-12-31T23:59:59.000000Z");
    assert_text(
        &tz,
        "10022-02-03 12:13:14+03",
        &modern(),
        "10022-02-03T09:13:14.000000Z",
    );
    // Before year 0 after conversion, BC, or malformed: raw text.
    assert_text(&tz, "0000-01-01 00:30:00+01", &legacy(), "0000-01-01 00:30:00+01");
    assert_text(
        &tz,
        "0044-03-15 12:00:00+00 BC",
        &modern(),
        "0044-03-15 12:00:00+00 BC",
    );
    assert_text(&tz, "2023-03-06 15:47:00+2", &modern(), "2023-03-06 15:47:00+2");
    assert_text(
        &tz,
        "2023-03-06 15:47:00+02:00:00:00",
        &modern(),
        "2023-03-06 15:47:00+02:00:00:00",
    );
    assert_text(&tz, "2023-03-06", &modern(), "2023-03-06");
}

#[test]
fn text_arrays() {
    let ty = name("text[]");
    assert_both(
        &ty,
        r#"{a,"b,c",NULL,"with \"quote\"","NULL","back\\slash","",null}"#,
        text(r#"["a","b,c",null,"with \"quote\"","NULL","back\\slash","",null]"#),
    );
    assert_both(&ty, "{}", text("[]"));
    assert_both(&ty, "{{a,b},{c,NULL}}", text(r#"[["a","b"],["c",null]]"#));
    assert_both(&ty, r#"{"}te][xt{\""}"#, text(r#"["}te][xt{\""]"#));
    assert_both(&ty, "{\"日本\",ü}", text("[\"日本\",\"ü\"]"));
    assert_both(&ty, "{\"\\日\"}", text("[\"日\"]"));
    assert_both(&ty, "{\"a\nb\"}", text("[\"a\\nb\"]"));
    assert_both(&ty, "{ a , b }", text(r#"["a","b"]"#));
    // Dimension decoration.
    assert_both(&ty, "[0:1]={a,b}", text(r#"["a","b"]"#));
    assert_both(&ty, "[1:1][-2:-1]={{a,\"b=c\"}}", text(r#"[["a","b=c"]]"#));
    // Malformed: raw text.
    for bad in ["{a", "{a}}", "{\"a}", "a", "", "[0:1]{a}", "[x]={a}", "{a,{b}"] {
        assert_both(&ty, bad, text(bad));
    }
}

#[test]
fn scalar_arrays() {
    assert_both(&name("bool[]"), "{t,f,NULL}", text("[1,0,null]"));
    assert_both(&name("int4[]"), "{{1,2},{3,4}}", text("[[1,2],[3,4]]"));
    assert_both(
        &name("int8[]"),
        "{9223372036854775807,NULL}",
        text("[9223372036854775807,null]"),
    );
    assert_both(&name("int4[]"), "{1,x}", text("{1,x}"));
    assert_both(
        &name("float8[]"),
        "{1.5,3,NaN,-0,1e+300,Infinity}",
        text("[1.5,3.0,null,0.0,1e+300,null]"),
    );
    assert_both(&name("float4[]"), "{0.1}", text("[0.1]"));
    assert_both(
        &name("numeric[]"),
        "{1.50,NaN,18014398509481982123}",
        text(r#"["1.50","NaN","18014398509481982123"]"#),
    );
    assert_both(
        &name("uuid[]"),
        "{baeb2514-4c57-436d-b3cc-c1256211656d}",
        text(r#"["baeb2514-4c57-436d-b3cc-c1256211656d"]"#),
    );
    assert_both(&name("bytea[]"), r#"{"\\x01",NULL}"#, text("[null,null]"));
    assert_both(
        &name("date[]"),
        "{2023-03-06,infinity}",
        text(r#"["2023-03-06","9999-12-31"]"#),
    );
    assert_both(
        &name("interval[]"),
        r#"{"1 day",01:00:00}"#,
        text(r#"["1 day","01:00:00"]"#),
    );
    assert_both(
        &name("pg_lsn[]"),
        "{16/B374D848}",
        text(r#"["00000016/B374D848"]"#),
    );
    assert_both(&name("oid[]"), "{1007}", text("[1007]"));
    assert_both(&name("inet[]"), "{127.0.0.1}", text(r#"["127.0.0.1"]"#));
    // box uses `;` between elements (and `,` inside them).
    let boxes = PgType::from_builtin_oid(1020).unwrap();
    assert_both(
        &boxes,
        "{(3,4),(1,2);(7,8),(5,6)}",
        text(r#"["(3,4),(1,2)","(7,8),(5,6)"]"#),
    );
}

#[test]
fn json_arrays_embed_elements() {
    assert_both(
        &name("json[]"),
        r#"{"{\"test\": \"thing\"}","{\"test\": \"}te][xt{\"}","[1, 2]",NULL,"1e400"}"#,
        text(r#"[{"test": "thing"},{"test": "}te][xt{"},[1, 2],null,1e400]"#),
    );
    assert_both(
        &name("jsonb[]"),
        r#"{"{\"foo\": 5.0, \"bignum\": 18014398509481982123}"}"#,
        text(r#"[{"foo": 5.0, "bignum": 18014398509481982123}]"#),
    );
    // Invalid JSON can't come from Postgres, but must not break the synced JSON.
    assert_both(&name("json[]"), r#"{"{oops"}"#, text(r#"["{oops"]"#));
}

#[test]
fn time_arrays_follow_the_timestamp_options() {
    let ty = name("timestamptz[]");
    let input = r#"{"2023-03-06 15:47:00+02","2023-03-06 15:47:00.12345+00",NULL,infinity}"#;
    assert_text(
        &ty,
        input,
        &legacy(),
        r#"["2023-03-06 13:47:00Z","2023-03-06 15:47:00.12345Z",null,"9999-12-31 23:59:59Z"]"#,
    );
    assert_text(
        &ty,
        input,
        &modern(),
        r#"["2023-03-06T13:47:00.000000Z","2023-03-06T15:47:00.123450Z",null,"9999-12-31T23:59:59.000000Z"]"#,
    );
    assert_text(
        &name("timestamp[]"),
        r#"{"2023-03-06 15:47:00"}"#,
        &legacy(),
        r#"["2023-03-06 15:47:00"]"#,
    );
    assert_text(
        &name("timestamp[]"),
        r#"{"2023-03-06 15:47:00"}"#,
        &modern(),
        r#"["2023-03-06T15:47:00.000000"]"#,
    );
    assert_text(&name("time[]"), "{15:47:00}", &legacy(), r#"["15:47:00"]"#);
    assert_text(&name("time[]"), "{15:47:00}", &modern(), r#"["15:47:00.000000"]"#);
    // An unparseable element keeps its text.
    assert_text(
        &ty,
        r#"{"0044-03-15 12:00:00+00 BC"}"#,
        &modern(),
        r#"["0044-03-15 12:00:00+00 BC"]"#,
    );
}

#[test]
fn type_vector_rows() {
    // The cases of testdata/sync-rules-cases.jsonl whose id starts with `type-` (inputs and
    // expected values copied from the vectors; `type_vectors_from_file` re-reads the file).
    let cases: &[(&str, Compatibility, &str, SqliteValue)] = &[
        (
            "int8",
            legacy(),
            "9223372036854775807",
            SqliteValue::Integer(i64::MAX),
        ),
        ("int8", legacy(), "-5", SqliteValue::Integer(-5)),
        ("float8", legacy(), "3", SqliteValue::Real(3.0)),
        ("float8", legacy(), "3.25", SqliteValue::Real(3.25)),
        ("float8", legacy(), "1e300", SqliteValue::Real(1e300)),
        ("float8", legacy(), "-0.5", SqliteValue::Real(-0.5)),
        (
            "numeric",
            legacy(),
            "12345678901234567890.123456789",
            text("12345678901234567890.123456789"),
        ),
        ("numeric", legacy(), "1.0", text("1.0")),
        ("bool", legacy(), "t", SqliteValue::Integer(1)),
        ("bool", legacy(), "f", SqliteValue::Integer(0)),
        (
            "json",
            legacy(),
            "{\"a\":1,  \"b\" : [1,2]}",
            text("{\"a\":1,  \"b\" : [1,2]}"),
        ),
        (
            "text[]",
            legacy(),
            "{a,\"b,c\",NULL,\"with \\\"quote\\\"\"}",
            text("[\"a\",\"b,c\",null,\"with \\\"quote\\\"\"]"),
        ),
        ("bool[]", legacy(), "{t,f}", text("[1,0]")),
        (
            "timestamp",
            legacy(),
            "2023-03-06 15:47:00",
            text("2023-03-06 15:47:00"),
        ),
        (
            "timestamp",
            legacy(),
            "2023-03-06 15:47:00.123456",
            text("2023-03-06 15:47:00.123456"),
        ),
        ("timestamp", legacy(), "infinity", text("9999-12-31 23:59:59")),
        (
            "timestamp",
            modern(),
            "2023-03-06 15:47:00",
            text("2023-03-06T15:47:00.000000"),
        ),
        (
            "timestamp",
            modern(),
            "2023-03-06 15:47:00.12",
            text("2023-03-06T15:47:00.120000"),
        ),
        (
            "timestamptz",
            modern(),
            "2023-03-06 15:47:00+02",
            text("2023-03-06T13:47:00.000000Z"),
        ),
        (
            "timestamptz",
            modern(),
            "2023-03-06 15:47:00.123456789+00",
            text("2023-03-06T15:47:00.123456Z"),
        ),
        (
            "timestamp",
            with_precision(TimestampPrecision::Seconds),
            "2023-03-06 15:47:00.987654",
            text("2023-03-06T15:47:00"),
        ),
        ("time", legacy(), "13:47:00", text("13:47:00")),
        ("time", legacy(), "13:47:00.25", text("13:47:00.25")),
        (
            "bytea",
            legacy(),
            "\\xdeadbeef",
            SqliteValue::Blob(Arc::from(&[0xde, 0xad, 0xbe, 0xef][..])),
        ),
        ("mood", legacy(), "happy", text("happy")),
        (
            "timestamptz[]",
            modern(),
            "{\"2023-03-06 15:47:00+00\"}",
            text("[\"2023-03-06T15:47:00.000000Z\"]"),
        ),
    ];
    for (type_name, compat, input, expected) in cases {
        assert_eq!(
            &map(&name(type_name), input, compat),
            expected,
            "{type_name} {input:?}"
        );
    }
    // `timestamps_iso8601: true` alone (type-ts-opt-in).
    let opt_in = Compatibility {
        timestamps_iso8601: true,
        ..legacy()
    };
    assert_text(
        &PgType::Timestamp,
        "2023-03-06 15:47:00",
        &opt_in,
        "2023-03-06T15:47:00.000000",
    );
}

/// Every `type-*` case of the shared vectors, straight from the file: each row value mapped with
/// the case's options must give the expected synced value and type (bytea columns are absent
/// from `data`, so they must map to a blob).
#[test]
fn type_vectors_from_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sync-rules-cases.jsonl");
    let file = std::fs::read_to_string(path).expect("test vectors");
    let mut checked = 0;
    for line in file.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = case["id"].as_str().unwrap();
        if !id.starts_with("type-") {
            continue;
        }
        let compat = vector_compat(case["rules"].as_str().unwrap());
        let table = &case["tables"][0];
        let expected_rows: Vec<&serde_json::Value> = case["expected"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["rows"].as_array().unwrap())
            .collect();
        for row in table["rows"].as_array().unwrap() {
            let row_id = row["id"].as_str().unwrap();
            let expected = expected_rows.iter().find(|r| r["id"] == row_id).unwrap();
            for (column, type_name) in table["columns"].as_object().unwrap() {
                let Some(input) = row[column].as_str() else {
                    continue;
                };
                let got = map(&name(type_name.as_str().unwrap()), input, &compat);
                let want_type = expected["types"][column].as_str();
                let want = &expected["data"][column];
                let ok = match (want_type, &got) {
                    (None, SqliteValue::Blob(_)) => true,
                    (Some("integer"), SqliteValue::Integer(i)) => want.as_i64() == Some(*i),
                    (Some("real"), SqliteValue::Real(f)) => want.as_f64() == Some(*f),
                    (Some("text"), SqliteValue::Text(s)) => want.as_str() == Some(s.as_ref()),
                    _ => false,
                };
                assert!(
                    ok,
                    "{id} row {row_id} column {column}: got {got:?}, want {want} ({want_type:?})"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} values checked");
}

/// The compatibility options of a vector's `config:` section.
fn vector_compat(rules: &str) -> Compatibility {
    let docs = yaml_rust2::YamlLoader::load_from_str(rules).unwrap();
    let config = &docs[0]["config"];
    let edition = config["edition"].as_i64().map_or(1, |e| u8::try_from(e).unwrap());
    let mut compat = Compatibility::for_edition(edition);
    if let Some(iso) = config["timestamps_iso8601"].as_bool() {
        compat.timestamps_iso8601 = iso;
    }
    if let Some(custom) = config["custom_postgres_types"].as_bool() {
        compat.custom_postgres_types = custom;
    }
    if let Some(precision) = config["timestamp_max_precision"].as_str() {
        compat.timestamp_max_precision = TimestampPrecision::parse(precision).unwrap();
    }
    compat
}

#[test]
fn domains_need_custom_types() {
    let domain = |base: PgType| PgType::Domain {
        name: "d".into(),
        base: Box::new(base),
    };
    assert_text(&domain(PgType::Int4), "12", &legacy(), "12");
    assert_eq!(
        map(&domain(PgType::Int4), "12", &modern()),
        SqliteValue::Integer(12)
    );
    assert_eq!(
        map(&domain(PgType::Float8), "1", &modern()),
        SqliteValue::Real(1.0)
    );
    assert_eq!(
        map(&domain(PgType::Bool), "t", &modern()),
        SqliteValue::Integer(1)
    );
    assert_text(
        &domain(PgType::Timestamptz),
        "2023-03-06 15:47:00+02",
        &modern(),
        "2023-03-06T13:47:00.000000Z",
    );
    assert_text(&domain(domain(PgType::Text)), "x", &modern(), "x");
    // Arrays of domains, domains over arrays, arrays of domains over arrays (normalised into one
    // multi-dimensional array, as Postgres stores them).
    assert_text(&array(domain(PgType::Int4)), "{1,2,3}", &legacy(), "{1,2,3}");
    assert_text(&array(domain(PgType::Int4)), "{1,2,3}", &modern(), "[1,2,3]");
    assert_text(
        &domain(array(domain(PgType::Int4))),
        "{1,2,3}",
        &legacy(),
        "{1,2,3}",
    );
    assert_text(
        &domain(array(domain(PgType::Int4))),
        "{1,2,3}",
        &modern(),
        "[1,2,3]",
    );
    assert_text(
        &array(domain(array(domain(PgType::Int4)))),
        "{{1,2,3}}",
        &modern(),
        "[[1,2,3]]",
    );
}

#[test]
fn enum_arrays_need_custom_types() {
    let moods = array(PgType::Enum("mood".into()));
    assert_text(&moods, "{sad,happy}", &legacy(), "{sad,happy}");
    assert_text(&moods, "{sad,happy}", &modern(), r#"["sad","happy"]"#);
    // An unknown type name is treated like a custom type too.
    assert_text(&name("mood[]"), "{sad,happy}", &legacy(), "{sad,happy}");
    assert_text(&name("mood[]"), "{sad,happy}", &modern(), r#"["sad","happy"]"#);
}

#[test]
fn composites() {
    let c1 = composite(&[("a", PgType::Bool), ("b", PgType::Int4), ("c", name("text[]"))]);
    let input = r#"(t,123,"{foo,bar}")"#;
    assert_text(&c1, input, &legacy(), input);
    assert_text(&c1, input, &modern(), r#"{"a":1,"b":123,"c":["foo","bar"]}"#);
    assert_text(&c1, "(f,,{})", &modern(), r#"{"a":0,"b":null,"c":[]}"#);
    assert_text(&c1, "(,,)", &modern(), r#"{"a":null,"b":null,"c":null}"#);

    let c2 = composite(&[("s", PgType::Text), ("t", PgType::Text)]);
    assert_text(
        &c2,
        r#"("a ""b"" \\c",)"#,
        &modern(),
        r#"{"s":"a \"b\" \\c","t":null}"#,
    );
    assert_text(&c2, r#"("",x)"#, &modern(), r#"{"s":"","t":"x"}"#);
    // Fewer fields than the type: the missing ones are left out; extra ones are ignored.
    assert_text(&c2, "(x)", &modern(), r#"{"s":"x"}"#);
    assert_text(&c2, "(x,y,z)", &modern(), r#"{"s":"x","t":"y"}"#);

    // Array of composites.
    let array_of_c1 = array(c1.clone());
    let input = r#"{"(t,123,\"{foo,bar}\")","(f,,{})",NULL}"#;
    assert_text(&array_of_c1, input, &legacy(), input);
    assert_text(
        &array_of_c1,
        input,
        &modern(),
        r#"[{"a":1,"b":123,"c":["foo","bar"]},{"a":0,"b":null,"c":[]},null]"#,
    );

    // Composite in a composite, with an array of composites inside.
    let inner = composite(&[("a", PgType::Bool), ("b", PgType::Int4)]);
    let c3 = composite(&[("c", array(inner.clone()))]);
    assert_text(&c3, r#"("{""(f,2)""}")"#, &modern(), r#"{"c":[{"a":0,"b":2}]}"#);
    let rating = PgType::Domain {
        name: "rating_value".into(),
        base: Box::new(PgType::Float8),
    };
    let composite_type = composite(&[
        ("foo", array(rating)),
        ("bar", PgType::Text),
        ("mood", PgType::Enum("mood".into())),
    ]);
    let nested = composite(&[("a", PgType::Bool), ("b", composite_type.clone())]);
    assert_text(
        &composite_type,
        r#"("{2,3}",bar,sad)"#,
        &modern(),
        r#"{"foo":[2.0,3.0],"bar":"bar","mood":"sad"}"#,
    );
    assert_text(
        &nested,
        r#"(t,"(""{2,3}"",bar,sad)")"#,
        &legacy(),
        r#"(t,"(""{2,3}"",bar,sad)")"#,
    );
    assert_text(
        &nested,
        r#"(t,"(""{2,3}"",bar,sad)")"#,
        &modern(),
        r#"{"a":1,"b":{"foo":[2.0,3.0],"bar":"bar","mood":"sad"}}"#,
    );

    // bytea fields are left out; json fields embedded; time fields formatted.
    let mixed = composite(&[
        ("b", PgType::Bytea),
        ("j", PgType::Jsonb),
        ("t", PgType::Timestamptz),
        ("n", PgType::Numeric),
    ]);
    assert_text(
        &mixed,
        r#"("\\x01","{""a"": 1}","2023-03-06 15:47:00+02",1.50)"#,
        &modern(),
        r#"{"j":{"a": 1},"t":"2023-03-06T13:47:00.000000Z","n":"1.50"}"#,
    );
    assert_text(
        &mixed,
        r#"(,,"2023-03-06 15:47:00+02",)"#,
        &legacy(),
        r#"(,,"2023-03-06 15:47:00+02",)"#,
    );
    let custom_legacy_times = Compatibility {
        custom_postgres_types: true,
        ..legacy()
    };
    assert_text(
        &mixed,
        r#"(,,"2023-03-06 15:47:00+02",)"#,
        &custom_legacy_times,
        r#"{"b":null,"j":null,"t":"2023-03-06 13:47:00Z","n":null}"#,
    );

    // Integer-like keys come first, as in a JavaScript object.
    let odd_keys = composite(&[
        ("b", PgType::Int4),
        ("1", PgType::Int4),
        ("0", PgType::Int4),
        ("01", PgType::Int4),
    ]);
    assert_text(&odd_keys, "(1,2,3,4)", &modern(), r#"{"0":3,"1":2,"b":1,"01":4}"#);

    // Malformed: raw text.
    for bad in ["(t,1", "t,1)", "(t,1)x", "(\"t,1)", "(x,1,{})"] {
        assert_text(&c1, bad, &modern(), bad);
    }
}

#[test]
fn ranges() {
    let int4range = PgType::from_builtin_oid(3904).unwrap();
    assert_text(&int4range, "[1,5)", &legacy(), "[1,5)");
    assert_text(
        &int4range,
        "[1,5)",
        &modern(),
        r#"{"lower":1,"upper":5,"lower_exclusive":0,"upper_exclusive":1}"#,
    );
    assert_text(
        &int4range,
        "(,5)",
        &modern(),
        r#"{"lower":null,"upper":5,"lower_exclusive":1,"upper_exclusive":1}"#,
    );
    assert_text(
        &int4range,
        "[1,)",
        &modern(),
        r#"{"lower":1,"upper":null,"lower_exclusive":0,"upper_exclusive":1}"#,
    );
    assert_text(
        &int4range,
        "(,)",
        &modern(),
        r#"{"lower":null,"upper":null,"lower_exclusive":1,"upper_exclusive":1}"#,
    );
    assert_text(&int4range, "empty", &modern(), "empty");
    assert_text(&int4range, "empty", &legacy(), "empty");
    let tstzrange = PgType::from_builtin_oid(3910).unwrap();
    let input = r#"["2023-03-06 13:47:00+00","2023-03-07 00:00:00+00")"#;
    assert_text(&tstzrange, input, &legacy(), input);
    assert_text(
        &tstzrange,
        input,
        &modern(),
        r#"{"lower":"2023-03-06T13:47:00.000000Z","upper":"2023-03-07T00:00:00.000000Z","lower_exclusive":0,"upper_exclusive":1}"#,
    );
    let custom_legacy_times = Compatibility {
        custom_postgres_types: true,
        ..legacy()
    };
    assert_text(
        &tstzrange,
        input,
        &custom_legacy_times,
        r#"{"lower":"2023-03-06 13:47:00Z","upper":"2023-03-07 00:00:00Z","lower_exclusive":0,"upper_exclusive":1}"#,
    );
    assert_text(
        &range(PgType::Int2),
        "[1,2]",
        &modern(),
        r#"{"lower":1,"upper":2,"lower_exclusive":0,"upper_exclusive":0}"#,
    );
    // Quoted bounds use doubled quotes or backslashes.
    assert_text(
        &range(PgType::Text),
        r#"["a""b","c\\d"]"#,
        &modern(),
        r#"{"lower":"a\"b","upper":"c\\d","lower_exclusive":0,"upper_exclusive":0}"#,
    );
    for bad in ["[1,5", "1,5)", "[1;5)", "[1,5)x", "[x,5)", "emptyx"] {
        assert_text(&int4range, bad, &modern(), bad);
    }

    let multirange = PgType::from_builtin_oid(4451).unwrap();
    assert_text(&multirange, "{[1,2),[3,4)}", &legacy(), "{[1,2),[3,4)}");
    assert_text(
        &multirange,
        "{[1,2),[3,4)}",
        &modern(),
        r#"[{"lower":1,"upper":2,"lower_exclusive":0,"upper_exclusive":1},{"lower":3,"upper":4,"lower_exclusive":0,"upper_exclusive":1}]"#,
    );
    assert_text(&multirange, "{}", &modern(), "[]");
    let multiranges = PgType::from_builtin_oid(6150).unwrap();
    assert_text(
        &multiranges,
        r#"{"{[2,4),[6,8)}"}"#,
        &legacy(),
        r#"{"{[2,4),[6,8)}"}"#,
    );
    assert_text(
        &multiranges,
        r#"{"{[2,4),[6,8)}"}"#,
        &modern(),
        r#"[[{"lower":2,"upper":4,"lower_exclusive":0,"upper_exclusive":1},{"lower":6,"upper":8,"lower_exclusive":0,"upper_exclusive":1}]]"#,
    );
    let ranges = PgType::from_builtin_oid(3905).unwrap();
    assert_text(
        &ranges,
        r#"{empty,"[1,2)"}"#,
        &modern(),
        r#"["empty",{"lower":1,"upper":2,"lower_exclusive":0,"upper_exclusive":1}]"#,
    );
}

/// Nested composites: each level adds one to the depth; past 10 the value degrades to its raw
/// text instead of becoming JSON.
#[test]
fn depth_limit_degrades_to_raw_text() {
    // `levels` nested single-field composites around an int4.
    fn nested(levels: usize) -> (PgType, String) {
        let mut ty = composite(&[("v", PgType::Int4)]);
        let mut text = "(1)".to_owned();
        for _ in 1..levels {
            ty = composite(&[("v", ty)]);
            text = format!("(\"{}\")", text.replace('\\', "\\\\").replace('"', "\"\""));
        }
        (ty, text)
    }
    // 11 objects: the innermost value is at depth 10, still fine.
    let (ty, input) = nested(11);
    let expected = format!("{}1{}", r#"{"v":"#.repeat(11), "}".repeat(11));
    assert_text(&ty, &input, &modern(), &expected);
    // 12 objects: depth 11 is refused.
    let (ty, input) = nested(12);
    assert_text(&ty, &input, &modern(), &input);
    assert_eq!(
        structure::to_json(&ty, &input, &modern()),
        Err(structure::StructureError::TooDeep)
    );
    // Arrays never get there: Postgres allows 6 dimensions.
    let six = format!("{}1{}", "{".repeat(6), "}".repeat(6));
    assert_both(
        &name("int4[]"),
        &six,
        text(&format!("{}1{}", "[".repeat(6), "]".repeat(6))),
    );
}

#[test]
fn json_check() {
    use json_check::is_valid_json;
    for ok in [
        "1",
        "-0.5e+10",
        "1e400",
        "\"a\\u00e9\\n\"",
        "[]",
        "{}",
        " [1, {\"a\": [true, false, null]}, \"x\"] ",
        "{\"a\":{\"b\":{}}}",
    ] {
        assert!(is_valid_json(ok), "{ok}");
    }
    for bad in [
        "",
        "[",
        "]",
        "{\"a\"}",
        "{\"a\":}",
        "[1,]",
        "01",
        "1.",
        "-",
        "tru",
        "\"\u{1}\"",
        "\"\\x\"",
        "[1 2]",
        "{1:2}",
        "\"a",
        "nul",
        "[]]",
        "{\"a\":1,}",
    ] {
        assert!(!is_valid_json(bad), "{bad}");
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(is_valid_json(&deep));
}

/// Arbitrary input never panics, for every type, under either option set.
#[test]
fn never_panics() {
    let types = vec![
        PgType::Bool,
        PgType::Int4,
        PgType::Float4,
        PgType::Bytea,
        PgType::Date,
        PgType::Time,
        PgType::Timestamp,
        PgType::Timestamptz,
        PgType::PgLsn,
        name("text[]"),
        name("json[]"),
        name("timestamptz[]"),
        PgType::from_builtin_oid(1020).unwrap(),
        composite(&[
            ("a", PgType::Int4),
            ("b", name("text[]")),
            ("c", range(PgType::Date)),
        ]),
        array(composite(&[("a", PgType::Bool)])),
        PgType::from_builtin_oid(3910).unwrap(),
        PgType::from_builtin_oid(4451).unwrap(),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 2000,
        ..Default::default()
    });
    let strategy = (0..types.len(), "[{}()\\[\\],;\"\\\\:a-z0-9 .+\\-é]{0,24}");
    runner
        .run(&strategy, |(i, input)| {
            for compat in [legacy(), modern()] {
                let _ = map_text_value(&types[i], &input, &compat);
            }
            Ok(())
        })
        .unwrap();
}
