//! Scalar functions and operators of the sync-rules expression language (SYNC_RULES.md §5.2–5.3).
//!
//! The semantics follow the reference implementation (`@powersync/service-sync-rules`), which is a
//! JavaScript approximation of SQLite: where the two differ the reference wins unless the spec says
//! otherwise. Nothing here panics on any input; row-level failures are [`EvalError`]s.
//!
//! - `operators`: comparison, arithmetic, `||`, `AND`/`OR`/`NOT`, `IS NULL`.
//! - `cast`: `CAST(x AS t)` / `x::t` and the numeric text-prefix rules arithmetic shares.
//! - `json`: `->`, `->>`, `json_*`, `IN`/`&&` on JSON arrays, `json_each`.
//! - `text`, `datetime`, `geo`: the remaining scalar functions.

mod cast;
mod datetime;
mod geo;
mod json;
mod operators;
#[cfg(test)]
mod test_values;
mod text;

#[cfg(test)]
mod vector_tests;

use crate::compat::Compatibility;
use crate::error::EvalError;
use crate::value::SqliteValue;

pub use cast::{CastType, cast};
pub(crate) use json::{Json, json_arrow_parsed, parse_json};
pub use json::{
    JsonEachRow, JsonScalar, flat_array_scalars, json_array_contains, json_array_elements,
    json_arrays_overlap, json_arrow, json_each, json_long_arrow,
};
pub use operators::{ArithOp, CompareOp, and, arithmetic, compare, concat, is_not_null, is_null, not, or};

/// A scalar function callable from rules SQL.
#[derive(Debug, Clone, Copy)]
pub struct FunctionDef {
    /// Lower-case name.
    pub name: &'static str,
    pub min_args: usize,
    /// `usize::MAX` means variadic.
    pub max_args: usize,
    pub call: fn(&[SqliteValue], &Compatibility) -> Result<SqliteValue, EvalError>,
}

const fn def(
    name: &'static str,
    min_args: usize,
    max_args: usize,
    call: fn(&[SqliteValue], &Compatibility) -> Result<SqliteValue, EvalError>,
) -> FunctionDef {
    FunctionDef {
        name,
        min_args,
        max_args,
        call,
    }
}

/// Every scalar function of SYNC_RULES.md §5.3, and nothing else (`coalesce`, `round`, … are not defined).
static FUNCTIONS: &[FunctionDef] = &[
    def("upper", 1, 1, text::upper),
    def("lower", 1, 1, text::lower),
    def("substring", 2, 3, text::substring),
    def("length", 1, 1, text::length),
    def("hex", 1, 1, text::hex),
    def("base64", 1, 1, text::base64),
    def("uuid_blob", 1, 1, text::uuid_blob),
    def("typeof", 1, 1, text::type_of),
    def("ifnull", 2, 2, text::ifnull),
    def("iif", 3, 3, text::iif),
    def("instr", 2, 2, text::instr),
    def("json_extract", 2, 2, json::json_extract_fn),
    def("json_array_length", 1, 2, json::json_array_length_fn),
    def("json_valid", 1, 1, json::json_valid_fn),
    def("json_keys", 1, 1, json::json_keys_fn),
    def("unixepoch", 1, 3, datetime::unixepoch),
    def("datetime", 1, 3, datetime::datetime),
    def("st_asgeojson", 1, 1, geo::st_asgeojson),
    def("st_astext", 1, 1, geo::st_astext),
    def("st_x", 1, 1, geo::st_x),
    def("st_y", 1, 1, geo::st_y),
];

/// Case-insensitive lookup of a scalar function by name. `None` → the compiler reports
/// "Function 'x' is not defined".
pub fn lookup_function(name: &str) -> Option<&'static FunctionDef> {
    FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// All scalar functions, in documentation order (for diagnostics and tooling).
pub fn all_functions() -> &'static [FunctionDef] {
    FUNCTIONS
}

static NULL: SqliteValue = SqliteValue::Null;

/// Argument `i`, or NULL when the caller passed fewer arguments (the reference reads `undefined`).
fn arg(args: &[SqliteValue], i: usize) -> &SqliteValue {
    args.get(i).unwrap_or(&NULL)
}

/// JavaScript's `\s` / `StrWhiteSpaceChar`: Unicode white space and line terminators plus the BOM,
/// but not U+0085 (which Rust counts as white space).
fn is_js_whitespace(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

fn trim_js_start(s: &str) -> &str {
    s.trim_start_matches(is_js_whitespace)
}

/// The UTF-8 bytes of a value's text form, or the blob itself (the reference's `castAsBlob`).
fn blob_bytes(v: &SqliteValue) -> Option<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    match v {
        SqliteValue::Null => None,
        SqliteValue::Blob(b) => Some(Cow::Borrowed(b.as_ref())),
        SqliteValue::Text(s) => Some(Cow::Borrowed(s.as_bytes())),
        other => other.to_text().map(|t| Cow::Owned(t.as_bytes().to_vec())),
    }
}

fn bool_value(b: bool) -> SqliteValue {
    SqliteValue::Integer(i64::from(b))
}

/// A length or index as an SQLite INTEGER (lengths never exceed `i64::MAX` in practice).
fn int_from_usize(n: usize) -> SqliteValue {
    SqliteValue::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_complete() {
        for name in [
            "upper",
            "lower",
            "substring",
            "length",
            "hex",
            "base64",
            "uuid_blob",
            "typeof",
            "ifnull",
            "iif",
            "instr",
            "json_extract",
            "json_array_length",
            "json_valid",
            "json_keys",
            "unixepoch",
            "datetime",
            "st_asgeojson",
            "st_astext",
            "st_x",
            "st_y",
        ] {
            let f = lookup_function(name).unwrap();
            assert_eq!(f.name, name);
            assert!(lookup_function(&name.to_uppercase()).is_some());
            assert!(f.min_args <= f.max_args);
        }
        assert_eq!(all_functions().len(), 21);
        assert_eq!(lookup_function("IIF").unwrap().min_args, 3);
        assert_eq!(lookup_function("iif").unwrap().max_args, 3);
        assert_eq!(lookup_function("substring").unwrap().max_args, 3);
        assert_eq!(lookup_function("datetime").unwrap().max_args, 3);
    }

    #[test]
    fn unsupported_functions_are_not_defined() {
        for name in [
            "coalesce", "round", "abs", "trim", "replace", "substr", "nullif", "max", "min", "count", "json",
            "date", "time", "strftime", "like", "",
        ] {
            assert!(lookup_function(name).is_none(), "{name}");
        }
    }

    #[test]
    fn functions_tolerate_missing_arguments() {
        let compat = Compatibility::default();
        for f in all_functions() {
            // The compiler enforces arity; a short argument list must still not panic.
            let _ = (f.call)(&[], &compat);
        }
    }

    #[test]
    fn js_whitespace_matches_ecmascript() {
        assert!(is_js_whitespace('\u{feff}'));
        assert!(is_js_whitespace('\u{a0}'));
        assert!(is_js_whitespace('\u{2028}'));
        assert!(!is_js_whitespace('\u{85}'));
        assert_eq!(trim_js_start("\t\n 1"), "1");
    }
}
