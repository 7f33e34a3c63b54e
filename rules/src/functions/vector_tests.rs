//! Every `fn-` and `op-` case of `testdata/sync-rules-cases.jsonl`, replayed directly against the
//! functions and operators. Row values are converted by hand from their Postgres text (int4 `"12"` →
//! INTEGER 12, bool `"t"` → INTEGER 1, bytea `"\\x0102"` → BLOB, jsonb → TEXT, timestamptz → the legacy
//! text form `…Z`), and each expression is composed from the same calls the evaluator makes.

use super::*;
use crate::functions::test_values::{N, b, i, legacy, r, t};

fn call_with(name: &str, args: &[SqliteValue], compat: &Compatibility) -> Result<SqliteValue, EvalError> {
    let f = lookup_function(name).unwrap_or_else(|| panic!("{name} not defined"));
    assert!(
        args.len() >= f.min_args && args.len() <= f.max_args,
        "{name} arity"
    );
    (f.call)(args, compat)
}

fn call(name: &str, args: &[SqliteValue]) -> SqliteValue {
    call_with(name, args, &legacy()).unwrap()
}

/// Case ids covered below; `all_function_and_operator_cases_are_covered` checks the list against the file.
const COVERED: &[&str] = &[
    "fn-upper",
    "fn-upper-int",
    "fn-substring-2",
    "fn-substring-3",
    "fn-substring-neglen",
    "fn-length-text",
    "fn-length-bytea",
    "fn-hex-text",
    "fn-base64-bytea",
    "fn-typeof",
    "fn-typeof-json",
    "fn-ifnull",
    "fn-iif",
    "fn-instr",
    "fn-uuid-blob-hex",
    "fn-uuid-blob-invalid",
    "fn-uuid-blob-raw-dropped",
    "fn-json-extract",
    "fn-json-extract-nopath",
    "fn-arrow",
    "fn-arrow2",
    "fn-arrow-dotted-legacy",
    "fn-arrow-dotted-fixed",
    "fn-json-extract-null-legacy",
    "fn-json-array-length",
    "fn-json-valid",
    "fn-json-keys-array-err",
    "fn-json-bigint",
    "fn-unixepoch",
    "fn-unixepoch-ts",
    "fn-datetime-epoch",
    "fn-datetime-text",
    "fn-datetime-bad-modifier",
    "fn-st-astext",
    "fn-st-x-y",
    "op-concat",
    "op-arith-int",
    "op-div-int",
    "op-arith-text",
    "op-compare",
    "op-is-null",
    "op-not",
    "op-in-literal-list",
    "op-cast-text",
    "op-cast-int",
    "op-pgcast",
    "op-case-when",
    "op-literals",
];

#[test]
fn all_function_and_operator_cases_are_covered() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sync-rules-cases.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let mut ids = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = case["id"].as_str().unwrap().to_owned();
        if id.starts_with("fn-") || id.starts_with("op-") {
            ids.push(id);
        }
    }
    for id in &ids {
        assert!(COVERED.contains(&id.as_str()), "case {id} has no unit test");
    }
    assert_eq!(ids.len(), COVERED.len());
}

#[test]
fn fn_upper() {
    assert_eq!(call("upper", &[t("abc")]), t("ABC"));
    assert_eq!(call("upper", &[t("Ünïcode")]), t("ÜNÏCODE"));
    assert_eq!(call("upper", &[N]), N);
}

#[test]
fn fn_upper_int() {
    assert_eq!(call("upper", &[i(12)]), t("12"));
}

#[test]
fn fn_substring_2() {
    assert_eq!(call("substring", &[t("abcdef"), i(2)]), t("bcdef"));
    assert_eq!(call("substring", &[t(""), i(2)]), t(""));
    assert_eq!(call("substring", &[N, i(2)]), N);
}

#[test]
fn fn_substring_3() {
    assert_eq!(call("substring", &[t("abcdef"), i(2), i(3)]), t("bcd"));
    assert_eq!(call("substring", &[t("ab"), i(2), i(3)]), t("b"));
}

#[test]
fn fn_substring_neglen() {
    assert_eq!(call("substring", &[t("abcdef"), i(4), i(-2)]), t("bc"));
}

#[test]
fn fn_length_text() {
    assert_eq!(call("length", &[t("héllo")]), i(5));
    assert_eq!(call("length", &[t("")]), i(0));
    assert_eq!(call("length", &[N]), N);
}

#[test]
fn fn_length_bytea() {
    assert_eq!(call("length", &[b(&[0x01, 0x02, 0x03, 0xff])]), i(4));
}

#[test]
fn fn_hex_text() {
    assert_eq!(call("hex", &[t("abc")]), t("616263"));
    assert_eq!(call("hex", &[N]), t(""));
}

#[test]
fn fn_base64_bytea() {
    assert_eq!(call("base64", &[b(b"hello")]), t("aGVsbG8="));
    assert_eq!(call("base64", &[N]), t(""));
}

#[test]
fn fn_typeof() {
    assert_eq!(call("typeof", &[i(1)]), t("integer"));
    assert_eq!(call("typeof", &[N]), t("null"));
}

#[test]
fn fn_typeof_json() {
    assert_eq!(call("typeof", &[t(r#"{"a": 1}"#)]), t("text"));
}

#[test]
fn fn_ifnull() {
    assert_eq!(call("ifnull", &[t("v"), t("default")]), t("v"));
    assert_eq!(call("ifnull", &[N, t("default")]), t("default"));
}

#[test]
fn fn_iif() {
    let iif = |x: SqliteValue| {
        let cond = compare(CompareOp::Gt, &x, &i(10)).unwrap();
        call("iif", &[cond, t("big"), t("small")])
    };
    assert_eq!(iif(i(5)), t("small"));
    assert_eq!(iif(i(50)), t("big"));
    assert_eq!(iif(N), t("small"));
}

#[test]
fn fn_instr() {
    assert_eq!(call("instr", &[t("hello"), t("lo")]), i(4));
    assert_eq!(call("instr", &[t("nothing"), t("lo")]), i(0));
    assert_eq!(call("instr", &[N, t("lo")]), N);
}

#[test]
fn fn_uuid_blob_hex() {
    let blob = call("uuid_blob", &[t("550e8400-e29b-41d4-a716-446655440000")]);
    assert_eq!(call("hex", &[blob]), t("550E8400E29B41D4A716446655440000"));
}

#[test]
fn fn_uuid_blob_invalid() {
    let err = call_with("uuid_blob", &[t("not-a-uuid")], &legacy()).unwrap_err();
    assert_eq!(err.message, "Cannot call uuid_blob on a non UUID value");
}

#[test]
fn fn_uuid_blob_raw_dropped() {
    // The result is a BLOB, which the data query leaves out of the synced row.
    let blob = call("uuid_blob", &[t("550e8400-e29b-41d4-a716-446655440000")]);
    assert_eq!(call("typeof", &[blob]), t("blob"));
}

#[test]
fn fn_json_extract() {
    let path = t("$.a.b");
    assert_eq!(
        call("json_extract", &[t(r#"{"a": {"b": 42}}"#), path.clone()]),
        i(42)
    );
    assert_eq!(call("json_extract", &[t(r#"{"a": 1}"#), path.clone()]), N);
    assert_eq!(call("json_extract", &[N, path]), N);
}

#[test]
fn fn_json_extract_nopath() {
    let err = call_with("json_extract", &[t(r#"{"a": 1}"#), t("a")], &legacy()).unwrap_err();
    assert_eq!(err.message, "JSON path must start with $.");
}

#[test]
fn fn_arrow() {
    let c = legacy();
    let arrow = |x: &str| json_arrow(&t(x), &t("a"), &c).unwrap();
    assert_eq!(arrow(r#"{"a": "s"}"#), t("\"s\""));
    assert_eq!(arrow(r#"{"a": {"k": true}}"#), t(r#"{"k":true}"#));
    assert_eq!(arrow(r#"{"b": 1}"#), N);
}

#[test]
fn fn_arrow2() {
    let c = legacy();
    let arrow = |x: &str| json_long_arrow(&t(x), &t("a"), &c).unwrap();
    assert_eq!(arrow(r#"{"a": "s"}"#), t("s"));
    assert_eq!(arrow(r#"{"a": {"k": true}}"#), t(r#"{"k":true}"#));
    assert_eq!(arrow(r#"{"a": true}"#), i(1));
    assert_eq!(arrow(r#"{"a": 1.5}"#), r(1.5));
}

#[test]
fn fn_arrow_dotted_legacy() {
    let doc = t(r#"{"a": {"b": 1}, "a.b": 2}"#);
    assert_eq!(json_long_arrow(&doc, &t("a.b"), &legacy()).unwrap(), i(1));
}

#[test]
fn fn_arrow_dotted_fixed() {
    let doc = t(r#"{"a": {"b": 1}, "a.b": 2}"#);
    assert_eq!(
        json_long_arrow(&doc, &t("a.b"), &Compatibility::for_edition(2)).unwrap(),
        i(2)
    );
}

#[test]
fn fn_json_extract_null_legacy() {
    for doc in [r#"{"a": null}"#, r#"{"a": [null]}"#] {
        let v = call("json_extract", &[t(doc), t("$.a")]);
        assert_eq!(call("typeof", &[v]), t("text"), "{doc}");
    }
}

#[test]
fn fn_json_array_length() {
    assert_eq!(call("json_array_length", &[t("[1, 2, 3]")]), i(3));
    assert_eq!(call("json_array_length", &[t(r#"{"a": 1}"#)]), i(0));
    assert_eq!(call("json_array_length", &[t("[]")]), i(0));
    assert_eq!(call("json_array_length", &[N]), N);
}

#[test]
fn fn_json_valid() {
    assert_eq!(call("json_valid", &[t(r#"{"a": 1}"#)]), i(1));
    assert_eq!(call("json_valid", &[t("not json")]), i(0));
    assert_eq!(call("json_valid", &[N]), i(0));
}

#[test]
fn fn_json_keys_array_err() {
    let err = call_with("json_keys", &[t("[1, 2]")], &legacy()).unwrap_err();
    assert_eq!(err.message, "Cannot call json_keys on an array");
}

#[test]
fn fn_json_bigint() {
    let v = json_long_arrow(&t(r#"{"n": 9007199254740993}"#), &t("n"), &legacy()).unwrap();
    assert_eq!(v, i(9_007_199_254_740_993));
}

#[test]
fn fn_unixepoch() {
    assert_eq!(call("unixepoch", &[t("2023-03-06 13:47:00")]), i(1_678_110_420));
    assert_eq!(
        call("unixepoch", &[t("2023-03-06T13:47:00.123Z")]),
        i(1_678_110_420)
    );
    assert_eq!(call("unixepoch", &[t("garbage")]), N);
    assert_eq!(call("unixepoch", &[N]), N);
}

#[test]
fn fn_unixepoch_ts() {
    // timestamptz "2023-03-06 15:47:00+02" replicates (legacy) as UTC text with a Z.
    assert_eq!(call("unixepoch", &[t("2023-03-06 13:47:00Z")]), i(1_678_110_420));
    // The raw Postgres text works too.
    assert_eq!(
        call("unixepoch", &[t("2023-03-06 15:47:00+02")]),
        i(1_678_110_420)
    );
}

#[test]
fn fn_datetime_epoch() {
    assert_eq!(
        call("datetime", &[i(1_678_110_420), t("unixepoch")]),
        t("2023-03-06 13:47:00")
    );
    assert_eq!(call("datetime", &[N, t("unixepoch")]), N);
}

#[test]
fn fn_datetime_text() {
    assert_eq!(
        call("datetime", &[t("2023-03-06T13:47:00+02:00")]),
        t("2023-03-06 11:47:00")
    );
    assert_eq!(
        call("datetime", &[t("2023-03-06 13:47")]),
        t("2023-03-06 13:47:00")
    );
}

#[test]
fn fn_datetime_bad_modifier() {
    assert_eq!(call("datetime", &[i(1_678_110_420), t("localtime")]), N);
}

#[test]
fn fn_st_astext() {
    let g = t("0101000020E6100000000000000000F03F0000000000000040");
    assert_eq!(call("st_astext", &[g]), t("POINT(1 2)"));
    assert_eq!(call("st_astext", &[N]), N);
}

#[test]
fn fn_st_x_y() {
    let g = t("0101000020E6100000000000000000F03F0000000000000040");
    let x = call("st_x", std::slice::from_ref(&g));
    let y = call("st_y", &[g]);
    assert_eq!(concat(&concat(&x, &t(",")), &y), t("1,2"));
}

#[test]
fn op_concat() {
    let row = |x: SqliteValue, id: &str| concat(&concat(&x, &t("-")), &t(id));
    assert_eq!(row(t("a"), "r0"), t("a-r0"));
    assert_eq!(row(N, "r1"), N);
}

#[test]
fn op_arith_int() {
    assert_eq!(arithmetic(ArithOp::Add, &i(41), &i(1)), i(42));
    assert_eq!(arithmetic(ArithOp::Add, &N, &i(1)), N);
}

#[test]
fn op_div_int() {
    assert_eq!(arithmetic(ArithOp::Div, &i(7), &i(2)), i(3));
}

#[test]
fn op_arith_text() {
    assert_eq!(arithmetic(ArithOp::Add, &t("12abc"), &i(1)), i(13));
    assert_eq!(arithmetic(ArithOp::Add, &t("abc"), &i(1)), i(1));
    assert_eq!(arithmetic(ArithOp::Add, &t("1.5e2"), &i(1)), r(151.0));
}

#[test]
fn op_compare() {
    let gt = |x: SqliteValue| compare(CompareOp::Gt, &x, &i(10)).unwrap();
    assert_eq!(gt(i(5)), i(0));
    assert_eq!(gt(i(11)), i(1));
    assert_eq!(gt(N), N);
}

#[test]
fn op_is_null() {
    assert_eq!(is_null(&t("a")), i(0));
    assert_eq!(is_null(&N), i(1));
    assert_eq!(compare(CompareOp::Is, &N, &N).unwrap(), i(1));
}

#[test]
fn op_not() {
    // bool "t"/"f" replicate as INTEGER 1/0.
    assert_eq!(not(&i(1)), i(0));
    assert_eq!(not(&i(0)), i(1));
    assert_eq!(not(&N), i(1));
}

#[test]
fn op_in_literal_list() {
    // `x IN ('a', 'b')` is rejected by the compiler ("list not supported here"); the supported
    // single-operand form is membership in a JSON array.
    assert_eq!(json_array_contains(&t("a"), &t(r#"["a", "b"]"#)).unwrap(), i(1));
    assert_eq!(json_array_contains(&t("c"), &t(r#"["a", "b"]"#)).unwrap(), i(0));
}

#[test]
fn op_cast_text() {
    assert_eq!(cast(&i(12), CastType::from_name("text").unwrap()), t("12"));
}

#[test]
fn op_cast_int() {
    let ty = CastType::from_name("integer").unwrap();
    assert_eq!(cast(&t("12.9abc"), ty), i(12));
    assert_eq!(cast(&t("abc"), ty), i(0));
    assert_eq!(cast(&t("-3"), ty), i(-3));
    // The reference only accepts the user's spelling `integer`, not Postgres' `int4`.
    assert_eq!(CastType::from_name("int4"), None);
    assert_eq!(CastType::from_name("varchar"), None);
}

#[test]
fn op_pgcast() {
    assert_eq!(cast(&r(2.5), CastType::Text), t("2.5"));
}

#[test]
fn op_case_when() {
    // CASE is a compile error ("case not supported here"); there is no function behind it.
    assert!(lookup_function("case").is_none());
}

#[test]
fn op_literals() {
    assert_eq!(concat(&t("lit"), &t("x")), t("litx"));
}
