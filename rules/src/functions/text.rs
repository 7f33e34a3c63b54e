//! Text, blob and generic scalar functions (SYNC_RULES.md §5.3).

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;

use super::cast::{CastType, cast};
use super::{arg, blob_bytes, int_from_usize};
use crate::compat::Compatibility;
use crate::error::EvalError;
use crate::value::SqliteValue;

type FnResult = Result<SqliteValue, EvalError>;

/// `upper(x)`: Unicode upper case of the text form (`ß` → `SS`, like JavaScript).
pub(super) fn upper(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    Ok(map_case(
        arg(args, 0),
        str::make_ascii_uppercase,
        str::to_uppercase,
    ))
}

/// `lower(x)`: Unicode lower case of the text form.
pub(super) fn lower(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    Ok(map_case(
        arg(args, 0),
        str::make_ascii_lowercase,
        str::to_lowercase,
    ))
}

/// Case mapping of the text form. ASCII text (the common case) is mapped in place in a fresh
/// `Arc<str>`: one allocation instead of a `String` plus its copy.
fn map_case(v: &SqliteValue, ascii: fn(&mut str), unicode: fn(&str) -> String) -> SqliteValue {
    let Some(text) = v.to_text() else {
        return SqliteValue::Null;
    };
    if !text.is_ascii() {
        return SqliteValue::from(unicode(&text));
    }
    let mut mapped: Arc<str> = Arc::from(&*text);
    if let Some(m) = Arc::get_mut(&mut mapped) {
        ascii(m);
    }
    SqliteValue::Text(mapped)
}

/// `substring(x, start[, len])` with SQLite `substr` semantics: characters of the text form, bytes of a
/// blob (giving a blob). Any NULL argument gives NULL; `start`/`len` are converted like CAST AS integer.
pub(super) fn substring(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    let value = arg(args, 0);
    let start = arg(args, 1);
    let length = args.get(2);
    if value.is_null() || start.is_null() || length.is_some_and(SqliteValue::is_null) {
        return Ok(SqliteValue::Null);
    }
    let start = int_arg(start);
    let length = length.map(int_arg);
    Ok(match value {
        SqliteValue::Blob(b) => {
            let (from, count) = substr_range(b.len(), start, length);
            SqliteValue::Blob(Arc::from(&b[from..from + count]))
        }
        other => {
            let text = other.to_text().unwrap_or_default();
            let (from, count) = substr_range(text.chars().count(), start, length);
            SqliteValue::from(text.chars().skip(from).take(count).collect::<String>())
        }
    })
}

fn int_arg(v: &SqliteValue) -> i64 {
    match cast(v, CastType::Integer) {
        SqliteValue::Integer(i) => i,
        _ => 0,
    }
}

/// SQLite's `substrFunc` arithmetic over a value of `len` units: returns `(first unit, unit count)`,
/// always within `0..=len`. Computed in i128 so that no i64 argument can overflow.
pub(super) fn substr_range(len: usize, start: i64, length: Option<i64>) -> (usize, usize) {
    let n = i128::try_from(len).unwrap_or(i128::MAX);
    let mut p1 = i128::from(start);
    let (mut p2, negative) = match length {
        Some(l) if l < 0 => (-i128::from(l), true),
        Some(l) => (i128::from(l), false),
        // SQLite uses its maximum string length here (large enough to survive a negative start).
        None => (i128::from(i64::MAX), false),
    };
    if p1 < 0 {
        p1 += n;
        if p1 < 0 {
            p2 = (p2 + p1).max(0);
            p1 = 0;
        }
    } else if p1 > 0 {
        p1 -= 1;
    } else if p2 > 0 {
        // `start = 0` addresses the position before the first character.
        p2 -= 1;
    }
    if negative {
        p1 -= p2;
        if p1 < 0 {
            p2 += p1;
            p1 = 0;
        }
    }
    let p1 = p1.min(n);
    let p2 = p2.clamp(0, n - p1);
    (
        usize::try_from(p1).unwrap_or(len),
        usize::try_from(p2).unwrap_or(0),
    )
}

/// `length(x)`: characters of the text form, bytes of a blob; NULL gives NULL.
pub(super) fn length(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    Ok(match arg(args, 0) {
        SqliteValue::Null => SqliteValue::Null,
        SqliteValue::Blob(b) => int_from_usize(b.len()),
        other => int_from_usize(other.to_text().map_or(0, |t| t.chars().count())),
    })
}

/// `hex(x)`: upper-case hex of the blob or of the UTF-8 text form; NULL gives `''`.
pub(super) fn hex(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    let bytes = blob_bytes(arg(args, 0)).unwrap_or_default();
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes.iter() {
        let _ = write!(out, "{byte:02X}");
    }
    Ok(SqliteValue::from(out))
}

/// `base64(x)`: standard padded base64 of the blob or UTF-8 text form; NULL gives `''`.
pub(super) fn base64(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    let bytes = blob_bytes(arg(args, 0)).unwrap_or_default();
    Ok(SqliteValue::from(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// `uuid_blob(x)`: the 16 bytes of a UUID text. Accepts what the `uuid` npm package's `validate` accepts
/// (versions 1–8 with the RFC variant, plus the nil and max UUIDs, any case); anything else is a row error.
pub(super) fn uuid_blob(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    let Some(text) = arg(args, 0).to_text() else {
        return Ok(SqliteValue::Null);
    };
    parse_uuid(&text)
        .map(|bytes| SqliteValue::from(bytes.to_vec()))
        .ok_or_else(|| EvalError::new("Cannot call uuid_blob on a non UUID value"))
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = b.iter().filter(|&&c| c != b'-');
    for byte in &mut out {
        let hi = hex_value(*nibbles.next()?)?;
        let lo = hex_value(*nibbles.next()?)?;
        *byte = (hi << 4) | lo;
    }
    let version = out[6] >> 4;
    let variant = out[8] >> 6;
    let nil_or_max = out.iter().all(|&x| x == 0) || out.iter().all(|&x| x == 0xff);
    (nil_or_max || ((1..=8).contains(&version) && variant == 0b10)).then_some(out)
}

pub(super) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `typeof(x)`: `'null'`, `'integer'`, `'real'`, `'text'` or `'blob'`.
pub(super) fn type_of(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    Ok(SqliteValue::from(arg(args, 0).sqlite_type().name()))
}

/// `ifnull(x, y)`: `x` unless it is NULL.
pub(super) fn ifnull(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    let x = arg(args, 0);
    Ok(if x.is_null() { arg(args, 1) } else { x }.clone())
}

/// `iif(c, a, b)`: `a` when `c` is truthy (SYNC_RULES.md §5.1), else `b`.
pub(super) fn iif(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    Ok(if arg(args, 0).is_truthy() {
        arg(args, 1)
    } else {
        arg(args, 2)
    }
    .clone())
}

/// `instr(x, y)`: 1-based position of `y` in `x`, 0 when absent, NULL if either is NULL. Bytes when
/// both are blobs, characters of the text forms otherwise.
pub(super) fn instr(args: &[SqliteValue], _: &Compatibility) -> FnResult {
    let (x, y) = (arg(args, 0), arg(args, 1));
    if x.is_null() || y.is_null() {
        return Ok(SqliteValue::Null);
    }
    if let (SqliteValue::Blob(hay), SqliteValue::Blob(needle)) = (x, y) {
        let pos = if needle.is_empty() {
            Some(0)
        } else {
            hay.windows(needle.len()).position(|w| w == needle.as_ref())
        };
        return Ok(int_from_usize(pos.map_or(0, |p| p + 1)));
    }
    let hay = x.to_text().unwrap_or_default();
    let needle = y.to_text().unwrap_or_default();
    Ok(int_from_usize(
        hay.find(needle.as_ref())
            .map_or(0, |byte_pos| hay[..byte_pos].chars().count() + 1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::test_values::{N, b, i, r, t};
    use proptest::prelude::*;

    fn call(f: fn(&[SqliteValue], &Compatibility) -> FnResult, args: &[SqliteValue]) -> SqliteValue {
        f(args, &Compatibility::default()).unwrap()
    }

    #[test]
    fn upper_and_lower() {
        assert_eq!(call(upper, &[t("abc")]), t("ABC"));
        assert_eq!(call(upper, &[t("Ünïcode")]), t("ÜNÏCODE"));
        assert_eq!(call(upper, &[t("straße")]), t("STRASSE"));
        assert_eq!(call(upper, &[i(12)]), t("12"));
        assert_eq!(call(upper, &[r(1.5)]), t("1.5"));
        assert_eq!(call(upper, &[b(b"ab")]), t("AB"));
        assert_eq!(call(upper, &[N]), N);
        assert_eq!(call(lower, &[t("ÀBC")]), t("àbc"));
        assert_eq!(call(lower, &[r(1e21)]), t("1e+21"));
        assert_eq!(call(lower, &[N]), N);
    }

    #[test]
    fn substring_like_sqlite() {
        let s = |args: &[SqliteValue]| call(substring, args);
        assert_eq!(s(&[t("abcdef"), i(2)]), t("bcdef"));
        assert_eq!(s(&[t(""), i(2)]), t(""));
        assert_eq!(s(&[t("abcdef"), i(2), i(3)]), t("bcd"));
        assert_eq!(s(&[t("ab"), i(2), i(3)]), t("b"));
        assert_eq!(s(&[t("abcdef"), i(4), i(-2)]), t("bc"));
        assert_eq!(s(&[t("abcdef"), i(0)]), t("abcdef"));
        assert_eq!(s(&[t("abcdef"), i(0), i(2)]), t("a"));
        assert_eq!(s(&[t("abcdef"), i(0), i(-2)]), t(""));
        assert_eq!(s(&[t("abcdef"), i(-2)]), t("ef"));
        assert_eq!(s(&[t("abcdef"), i(-2), i(-2)]), t("cd"));
        assert_eq!(s(&[t("abc"), i(-5), i(3)]), t("a"));
        assert_eq!(s(&[t("abc"), i(2), i(-5)]), t("a"));
        assert_eq!(s(&[t("abc"), i(10)]), t(""));
        assert_eq!(s(&[t("abc"), i(i64::MIN), i(i64::MIN)]), t(""));
        assert_eq!(s(&[t("abc"), i(i64::MAX), i(i64::MAX)]), t(""));
        assert_eq!(s(&[t("héllo"), i(2), i(2)]), t("él"));
        assert_eq!(s(&[i(12345), i(2), i(2)]), t("23"));
        assert_eq!(s(&[t("abcdef"), t("2"), r(2.9)]), t("bc"));
        assert_eq!(s(&[b(b"\x01\x02\x03"), i(2)]), b(b"\x02\x03"));
        assert_eq!(s(&[N, i(1)]), N);
        assert_eq!(s(&[t("abc"), N]), N);
        assert_eq!(s(&[t("abc"), i(1), N]), N);
    }

    #[test]
    fn length_counts_characters_or_bytes() {
        assert_eq!(call(length, &[t("héllo")]), i(5));
        assert_eq!(call(length, &[t("")]), i(0));
        assert_eq!(call(length, &[N]), N);
        assert_eq!(call(length, &[b(b"\x01\x02\x03\xff")]), i(4));
        assert_eq!(call(length, &[i(-123)]), i(4));
        assert_eq!(call(length, &[r(1.5)]), i(3));
    }

    #[test]
    fn hex_and_base64() {
        assert_eq!(call(hex, &[t("abc")]), t("616263"));
        assert_eq!(call(hex, &[N]), t(""));
        assert_eq!(call(hex, &[b(b"\x01\xab")]), t("01AB"));
        assert_eq!(call(hex, &[i(12)]), t("3132"));
        assert_eq!(call(hex, &[t("é")]), t("C3A9"));
        assert_eq!(call(base64, &[b(b"hello")]), t("aGVsbG8="));
        assert_eq!(call(base64, &[N]), t(""));
        assert_eq!(call(base64, &[t("hi")]), t("aGk="));
        assert_eq!(call(base64, &[r(2.5)]), t("Mi41"));
    }

    #[test]
    fn uuid_blob_parses_valid_uuids() {
        let v = call(uuid_blob, &[t("550e8400-e29b-41d4-a716-446655440000")]);
        assert_eq!(call(hex, &[v]), t("550E8400E29B41D4A716446655440000"));
        let upper = call(uuid_blob, &[t("550E8400-E29B-41D4-A716-446655440000")]);
        assert_eq!(upper.sqlite_type().name(), "blob");
        assert_eq!(
            call(uuid_blob, &[t("00000000-0000-0000-0000-000000000000")]),
            b(&[0; 16])
        );
        assert_eq!(
            call(uuid_blob, &[t("FFFFFFFF-ffff-ffff-ffff-ffffffffffff")]),
            b(&[0xff; 16])
        );
        assert_eq!(call(uuid_blob, &[N]), N);
    }

    #[test]
    fn uuid_blob_rejects_other_text() {
        for bad in [
            "not-a-uuid",
            "",
            "550e8400e29b41d4a716446655440000",
            "550e8400-e29b-01d4-a716-446655440000", // version 0
            "550e8400-e29b-91d4-a716-446655440000", // version 9
            "550e8400-e29b-41d4-c716-446655440000", // variant
            "550e8400-e29b-41d4-a716-44665544000g",
            " 550e8400-e29b-41d4-a716-446655440000",
            "550e8400-e29b-41d4-a716+446655440000",
            "550e8400-e29b-41d4-a716-4466554400é",
        ] {
            let err = uuid_blob(&[t(bad)], &Compatibility::default()).unwrap_err();
            assert_eq!(err.message, "Cannot call uuid_blob on a non UUID value", "{bad}");
        }
        assert!(uuid_blob(&[i(1)], &Compatibility::default()).is_err());
    }

    #[test]
    fn typeof_names_classes() {
        assert_eq!(call(type_of, &[i(1)]), t("integer"));
        assert_eq!(call(type_of, &[N]), t("null"));
        assert_eq!(call(type_of, &[r(1.0)]), t("real"));
        assert_eq!(call(type_of, &[t("{\"a\": 1}")]), t("text"));
        assert_eq!(call(type_of, &[b(b"")]), t("blob"));
    }

    #[test]
    fn ifnull_and_iif() {
        assert_eq!(call(ifnull, &[t("v"), t("default")]), t("v"));
        assert_eq!(call(ifnull, &[N, t("default")]), t("default"));
        assert_eq!(call(ifnull, &[N, N]), N);
        assert_eq!(call(ifnull, &[i(0), t("d")]), i(0));
        assert_eq!(call(iif, &[i(1), t("big"), t("small")]), t("big"));
        assert_eq!(call(iif, &[i(0), t("big"), t("small")]), t("small"));
        assert_eq!(call(iif, &[N, t("big"), t("small")]), t("small"));
        assert_eq!(call(iif, &[t("0.5"), i(1), i(2)]), i(2));
        assert_eq!(call(iif, &[r(0.5), i(1), i(2)]), i(1));
        assert_eq!(call(iif, &[b(b"1"), i(1), N]), N);
    }

    #[test]
    fn instr_positions() {
        assert_eq!(call(instr, &[t("hello"), t("lo")]), i(4));
        assert_eq!(call(instr, &[t("nothing"), t("lo")]), i(0));
        assert_eq!(call(instr, &[N, t("lo")]), N);
        assert_eq!(call(instr, &[t("x"), N]), N);
        assert_eq!(call(instr, &[t("héllo"), t("l")]), i(3));
        assert_eq!(call(instr, &[t("abc"), t("")]), i(1));
        assert_eq!(call(instr, &[i(12345), i(34)]), i(3));
        assert_eq!(call(instr, &[b(b"\xc3\xa9x"), b(b"x")]), i(3));
        assert_eq!(call(instr, &[b(b"abc"), b(b"")]), i(1));
        assert_eq!(call(instr, &[b(b"abc"), b(b"z")]), i(0));
        assert_eq!(call(instr, &[b(b"abc"), t("c")]), i(3));
    }

    /// SQLite's algorithm over an explicit list, written independently of `substr_range`.
    fn model(s: &[char], start: i64, len: Option<i64>) -> Vec<char> {
        let n = i64::try_from(s.len()).unwrap();
        // Indices (0-based, possibly out of range) of the selected characters.
        let (from, to) = match len {
            None if start > 0 => (start - 1, n),
            None if start == 0 => (0, n),
            None => ((n + start).max(0), n),
            Some(l) => {
                let first = if start > 0 {
                    start - 1
                } else if start == 0 {
                    -1
                } else {
                    n + start
                };
                if l >= 0 {
                    (first, first + l)
                } else {
                    (first + l, first)
                }
            }
        };
        (from.max(0)..to.min(n))
            .map(|k| s[usize::try_from(k).unwrap()])
            .collect()
    }

    proptest! {
        #[test]
        fn substring_matches_model(s in "[a-cé]{0,8}", start in -12i64..12, len in proptest::option::of(-12i64..12)) {
            let chars: Vec<char> = s.chars().collect();
            let mut args = vec![t(&s), i(start)];
            if let Some(l) = len {
                args.push(i(l));
            }
            let expected: String = model(&chars, start, len).into_iter().collect();
            prop_assert_eq!(call(substring, &args), t(&expected));
        }

        #[test]
        fn substr_range_stays_in_bounds(len in 0usize..64, start in any::<i64>(), l in proptest::option::of(any::<i64>())) {
            let (from, count) = substr_range(len, start, l);
            prop_assert!(from + count <= len);
        }

        #[test]
        fn text_functions_never_panic(s in ".{0,16}", bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let c = Compatibility::default();
            for v in [t(&s), b(&bytes), i(7), r(-0.5), N] {
                for f in [upper, lower, length, hex, base64, uuid_blob, type_of] {
                    let _ = f(std::slice::from_ref(&v), &c);
                }
                let _ = instr(&[v.clone(), t(&s)], &c);
                let _ = substring(&[v.clone(), i(2), i(-3)], &c);
            }
        }
    }
}
