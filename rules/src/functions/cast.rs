//! `CAST(x AS t)` and the text → number rules shared with arithmetic (SYNC_RULES.md §5.2).

use std::sync::Arc;

use super::trim_js_start;
use crate::value::SqliteValue;

/// A CAST target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastType {
    Text,
    Integer,
    Real,
    Numeric,
    Blob,
}

impl CastType {
    /// Exactly `text`, `integer`, `real`, `numeric` or `blob` (ASCII case-insensitive). The reference rejects
    /// Postgres spellings such as `int4`, `int` or `varchar` ("CAST not supported for 'varchar'").
    pub fn from_name(name: &str) -> Option<CastType> {
        [
            CastType::Text,
            CastType::Integer,
            CastType::Real,
            CastType::Numeric,
            CastType::Blob,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            CastType::Text => "text",
            CastType::Integer => "integer",
            CastType::Real => "real",
            CastType::Numeric => "numeric",
            CastType::Blob => "blob",
        }
    }
}

/// `CAST(v AS to)`. NULL stays NULL; never fails.
pub fn cast(v: &SqliteValue, to: CastType) -> SqliteValue {
    if v.is_null() {
        return SqliteValue::Null;
    }
    match to {
        CastType::Text => v.to_text().map_or(SqliteValue::Null, SqliteValue::Text),
        CastType::Blob => match v {
            SqliteValue::Blob(b) => SqliteValue::Blob(Arc::clone(b)),
            other => other
                .to_text()
                .map_or(SqliteValue::Null, |t| SqliteValue::Blob(Arc::from(t.as_bytes()))),
        },
        CastType::Numeric => to_numeric(v),
        CastType::Integer => match v {
            SqliteValue::Integer(i) => SqliteValue::Integer(*i),
            SqliteValue::Real(f) => SqliteValue::Integer(floor_to_i64(*f)),
            other => SqliteValue::Integer(with_text(other, parse_int_prefix)),
        },
        CastType::Real => match v {
            // Rounds to nearest like JavaScript `Number(bigint)`.
            SqliteValue::Integer(i) => SqliteValue::Real(*i as f64),
            SqliteValue::Real(f) => SqliteValue::Real(*f),
            other => SqliteValue::Real(with_text(other, |s| {
                let f = js_parse_float(s);
                if f.is_nan() { 0.0 } else { f }
            })),
        },
    }
}

/// Applies `f` to the text form of a TEXT or BLOB (blobs decoded as UTF-8, like the reference).
fn with_text<T>(v: &SqliteValue, f: impl FnOnce(&str) -> T) -> T {
    match v {
        SqliteValue::Text(s) => f(s),
        other => f(&other.to_text().unwrap_or_default()),
    }
}

/// NUMERIC conversion used by CAST and arithmetic: numbers stay as they are; text takes its numeric
/// prefix (`'12abc'` → 12, `'1.5e2'` → 150.0, `'abc'` → 0). Returns NULL only for NULL.
pub(super) fn to_numeric(v: &SqliteValue) -> SqliteValue {
    match v {
        SqliteValue::Null => SqliteValue::Null,
        SqliteValue::Integer(_) | SqliteValue::Real(_) => v.clone(),
        other => with_text(other, parse_numeric),
    }
}

/// Scans `[+-]?(digits[.digits*]|.digits)([eE][+-]?digits)?` at the start of `s`.
/// Returns the matched length and whether it had a fraction or exponent, or `None` without digits.
fn scan_decimal(s: &str) -> Option<(usize, bool)> {
    let b = s.as_bytes();
    let digits_from = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_end = digits_from(i);
    let mut is_real = false;
    if int_end > i {
        i = int_end;
        if b.get(i) == Some(&b'.') {
            i = digits_from(i + 1);
            is_real = true;
        }
    } else if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = digits_from(i + 1);
        is_real = true;
    } else {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_end = digits_from(j);
        if exp_end > j {
            i = exp_end;
            is_real = true;
        }
    }
    Some((i, is_real))
}

/// The numeric prefix of a text: INTEGER when it is a plain (signed) integer that fits, otherwise REAL.
/// No number at all gives INTEGER 0 (the reference's `parseNumeric`).
pub(super) fn parse_numeric(s: &str) -> SqliteValue {
    let t = trim_js_start(s);
    let Some((len, is_real)) = scan_decimal(t) else {
        return SqliteValue::Integer(0);
    };
    let prefix = &t[..len];
    if !is_real && let Ok(i) = prefix.parse::<i64>() {
        return SqliteValue::Integer(i);
    }
    // Integers beyond 64 bits become REAL, as SQLite stores them.
    SqliteValue::Real(prefix.parse::<f64>().unwrap_or(0.0))
}

/// `CAST(text AS integer)`: leading white space, one optional sign, then the leading digits
/// (`'12.9abc'` → 12, `' -3x'` → -3, `'abc'` → 0). Saturates beyond 64 bits like SQLite.
pub(super) fn parse_int_prefix(s: &str) -> i64 {
    let t = trim_js_start(s);
    let (negative, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut acc: i64 = 0;
    for d in rest.bytes().take_while(u8::is_ascii_digit) {
        let d = i64::from(d - b'0');
        acc = acc.saturating_mul(10);
        acc = if negative {
            acc.saturating_sub(d)
        } else {
            acc.saturating_add(d)
        };
    }
    acc
}

/// JavaScript `parseFloat`: the longest decimal prefix after white space, `Infinity` with an optional
/// sign, NaN when there is none.
pub(super) fn js_parse_float(s: &str) -> f64 {
    let t = trim_js_start(s);
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if unsigned.starts_with("Infinity") {
        return if t.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    match scan_decimal(t) {
        Some((len, _)) => t[..len].parse::<f64>().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

/// `Math.floor` to a 64-bit integer: NaN gives 0, out-of-range values saturate.
pub(super) fn floor_to_i64(f: f64) -> i64 {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "saturating float→int conversion is intended"
    )]
    let i = f.floor() as i64;
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> SqliteValue {
        SqliteValue::from(s)
    }

    #[test]
    fn cast_type_names() {
        for (name, ty) in [
            ("text", CastType::Text),
            ("integer", CastType::Integer),
            ("real", CastType::Real),
            ("numeric", CastType::Numeric),
            ("blob", CastType::Blob),
        ] {
            assert_eq!(CastType::from_name(name), Some(ty));
            assert_eq!(ty.name(), name);
        }
        assert_eq!(CastType::from_name("INTEGER"), Some(CastType::Integer));
        for bad in [
            "int4", "int", "varchar", "float4", "float8", "bool", "boolean", "json", "", "text ",
        ] {
            assert_eq!(CastType::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn cast_null_stays_null() {
        for ty in [
            CastType::Text,
            CastType::Integer,
            CastType::Real,
            CastType::Numeric,
            CastType::Blob,
        ] {
            assert_eq!(cast(&SqliteValue::Null, ty), SqliteValue::Null);
        }
    }

    #[test]
    fn cast_to_text_uses_the_text_rule() {
        assert_eq!(cast(&SqliteValue::Integer(12), CastType::Text), t("12"));
        assert_eq!(cast(&SqliteValue::Real(2.5), CastType::Text), t("2.5"));
        assert_eq!(cast(&SqliteValue::Real(3.0), CastType::Text), t("3"));
        assert_eq!(cast(&SqliteValue::Real(1e21), CastType::Text), t("1e+21"));
        assert_eq!(cast(&t("x"), CastType::Text), t("x"));
        assert_eq!(cast(&SqliteValue::from(b"hi".to_vec()), CastType::Text), t("hi"));
    }

    #[test]
    fn cast_to_integer() {
        let i = |v: SqliteValue| cast(&v, CastType::Integer);
        assert_eq!(i(t("12.9abc")), SqliteValue::Integer(12));
        assert_eq!(i(t(" -3x")), SqliteValue::Integer(-3));
        assert_eq!(i(t("+7")), SqliteValue::Integer(7));
        assert_eq!(i(t("abc")), SqliteValue::Integer(0));
        assert_eq!(i(t("")), SqliteValue::Integer(0));
        assert_eq!(i(t("-")), SqliteValue::Integer(0));
        assert_eq!(i(t("1e5")), SqliteValue::Integer(1));
        assert_eq!(i(t("99999999999999999999")), SqliteValue::Integer(i64::MAX));
        assert_eq!(i(t("-99999999999999999999")), SqliteValue::Integer(i64::MIN));
        assert_eq!(i(t("-9223372036854775808")), SqliteValue::Integer(i64::MIN));
        assert_eq!(i(SqliteValue::Real(2.7)), SqliteValue::Integer(2));
        assert_eq!(i(SqliteValue::Real(-2.5)), SqliteValue::Integer(-3));
        assert_eq!(i(SqliteValue::Real(f64::NAN)), SqliteValue::Integer(0));
        assert_eq!(
            i(SqliteValue::Real(f64::INFINITY)),
            SqliteValue::Integer(i64::MAX)
        );
        assert_eq!(i(SqliteValue::Real(-1e300)), SqliteValue::Integer(i64::MIN));
        assert_eq!(i(SqliteValue::Integer(-4)), SqliteValue::Integer(-4));
        assert_eq!(i(SqliteValue::from(b"42".to_vec())), SqliteValue::Integer(42));
    }

    #[test]
    fn cast_to_real() {
        let r = |v: SqliteValue| cast(&v, CastType::Real);
        assert_eq!(r(t("1.5abc")), SqliteValue::Real(1.5));
        assert_eq!(r(t(" .5")), SqliteValue::Real(0.5));
        assert_eq!(r(t("-1e3")), SqliteValue::Real(-1000.0));
        assert_eq!(r(t("abc")), SqliteValue::Real(0.0));
        assert_eq!(r(t("NaN")), SqliteValue::Real(0.0));
        assert_eq!(r(t("Infinity")), SqliteValue::Real(f64::INFINITY));
        assert_eq!(r(t("-Infinityx")), SqliteValue::Real(f64::NEG_INFINITY));
        assert_eq!(r(t("0x10")), SqliteValue::Real(0.0));
        assert_eq!(r(SqliteValue::Integer(3)), SqliteValue::Real(3.0));
        assert_eq!(r(SqliteValue::Real(2.5)), SqliteValue::Real(2.5));
        assert_eq!(r(SqliteValue::from(b"2.5".to_vec())), SqliteValue::Real(2.5));
    }

    #[test]
    fn cast_to_numeric() {
        let n = |v: SqliteValue| cast(&v, CastType::Numeric);
        assert_eq!(n(t("12")), SqliteValue::Integer(12));
        assert_eq!(n(t(" -12abc")), SqliteValue::Integer(-12));
        assert_eq!(n(t("12.0")), SqliteValue::Real(12.0));
        assert_eq!(n(t("1.")), SqliteValue::Real(1.0));
        assert_eq!(n(t(".5")), SqliteValue::Real(0.5));
        assert_eq!(n(t("1.5e2")), SqliteValue::Real(150.0));
        assert_eq!(n(t("1e")), SqliteValue::Integer(1));
        assert_eq!(n(t("1e+")), SqliteValue::Integer(1));
        assert_eq!(n(t("abc")), SqliteValue::Integer(0));
        assert_eq!(n(t("99999999999999999999")), SqliteValue::Real(1e20));
        assert_eq!(n(SqliteValue::Real(2.5)), SqliteValue::Real(2.5));
        assert_eq!(n(SqliteValue::Integer(7)), SqliteValue::Integer(7));
        assert_eq!(n(SqliteValue::from(b"7".to_vec())), SqliteValue::Integer(7));
    }

    #[test]
    fn cast_to_blob() {
        assert_eq!(
            cast(&t("hé"), CastType::Blob),
            SqliteValue::from("hé".as_bytes().to_vec())
        );
        assert_eq!(
            cast(&SqliteValue::Integer(12), CastType::Blob),
            SqliteValue::from(b"12".to_vec())
        );
        assert_eq!(
            cast(&SqliteValue::Real(1.5), CastType::Blob),
            SqliteValue::from(b"1.5".to_vec())
        );
        let b = SqliteValue::from(vec![0u8, 255]);
        assert_eq!(cast(&b, CastType::Blob), b);
    }

    #[test]
    fn js_parse_float_matches_javascript() {
        assert_eq!(js_parse_float("3.25e1x"), 32.5);
        assert_eq!(js_parse_float("  -0.5"), -0.5);
        assert_eq!(js_parse_float("+Infinity"), f64::INFINITY);
        assert!(js_parse_float("").is_nan());
        assert!(js_parse_float("-").is_nan());
        assert!(js_parse_float(".").is_nan());
        assert!(js_parse_float("infinity").is_nan());
        assert_eq!(js_parse_float("1e400"), f64::INFINITY);
    }

    proptest! {
        #[test]
        fn casts_never_panic(s in ".*", i in any::<i64>(), f in any::<f64>()) {
            for v in [SqliteValue::from(s.as_str()), SqliteValue::Integer(i), SqliteValue::Real(f),
                      SqliteValue::from(s.clone().into_bytes())] {
                for ty in [CastType::Text, CastType::Integer, CastType::Real, CastType::Numeric, CastType::Blob] {
                    let _ = cast(&v, ty);
                }
            }
        }

        #[test]
        fn integer_text_round_trips(i in any::<i64>()) {
            prop_assert_eq!(cast(&SqliteValue::from(i.to_string()), CastType::Integer), SqliteValue::Integer(i));
            prop_assert_eq!(cast(&SqliteValue::from(i.to_string()), CastType::Numeric), SqliteValue::Integer(i));
        }
    }
}
