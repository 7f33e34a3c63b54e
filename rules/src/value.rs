//! SQLite-style values: what a replicated column becomes and what expressions compute.
//!
//! Sync rules evaluate over SQLite's five storage classes. Text and blobs are reference
//! counted so that copying a column into several buckets' output costs no allocation.
//!
//! Numbers turn into text in three different ways (SYNC_RULES.md §5.2):
//! - the *text rule* ([`SqliteValue::to_text`]): JavaScript `Number#toString`, no `.0`;
//! - *synced JSON* ([`SqliteValue::write_json`]): the same digits plus `.0` for whole numbers;
//! - *bucket ids* ([`SqliteValue::write_bucket_param`]): the text rule, NaN/±Infinity as `null`.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

/// One SQLite value.
#[derive(Debug, Clone, Default)]
pub enum SqliteValue {
    #[default]
    Null,
    Integer(i64),
    Real(f64),
    Text(Arc<str>),
    Blob(Arc<[u8]>),
}

/// SQLite's `typeof()` classes, also used for the `types` map of synced rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqliteType {
    Null,
    Integer,
    Real,
    Text,
    Blob,
}

impl SqliteType {
    pub fn name(self) -> &'static str {
        match self {
            SqliteType::Null => "null",
            SqliteType::Integer => "integer",
            SqliteType::Real => "real",
            SqliteType::Text => "text",
            SqliteType::Blob => "blob",
        }
    }
}

impl From<i64> for SqliteValue {
    fn from(v: i64) -> Self {
        SqliteValue::Integer(v)
    }
}

impl From<f64> for SqliteValue {
    fn from(v: f64) -> Self {
        SqliteValue::Real(v)
    }
}

impl From<&str> for SqliteValue {
    fn from(v: &str) -> Self {
        SqliteValue::Text(Arc::from(v))
    }
}

impl From<String> for SqliteValue {
    fn from(v: String) -> Self {
        SqliteValue::Text(Arc::from(v))
    }
}

impl From<bool> for SqliteValue {
    fn from(v: bool) -> Self {
        SqliteValue::Integer(i64::from(v))
    }
}

impl From<Vec<u8>> for SqliteValue {
    fn from(v: Vec<u8>) -> Self {
        SqliteValue::Blob(Arc::from(v))
    }
}

impl SqliteValue {
    pub fn text(s: impl Into<Arc<str>>) -> Self {
        SqliteValue::Text(s.into())
    }

    pub fn sqlite_type(&self) -> SqliteType {
        match self {
            SqliteValue::Null => SqliteType::Null,
            SqliteValue::Integer(_) => SqliteType::Integer,
            SqliteValue::Real(_) => SqliteType::Real,
            SqliteValue::Text(_) => SqliteType::Text,
            SqliteValue::Blob(_) => SqliteType::Blob,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, SqliteValue::Null)
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            SqliteValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Truthiness as the reference evaluates WHERE clauses and boolean operators (SYNC_RULES.md §5.1):
    /// numbers are true when nonzero, text follows JavaScript `parseInt`, NULL and blobs are false.
    pub fn is_truthy(&self) -> bool {
        match self {
            SqliteValue::Null | SqliteValue::Blob(_) => false,
            SqliteValue::Integer(i) => *i != 0,
            SqliteValue::Real(f) => *f != 0.0 && !f.is_nan(),
            SqliteValue::Text(s) => js_parse_int_is_nonzero(s),
        }
    }

    /// The text rule: how `||`, `CAST(x AS text)`, text functions and row ids see a value.
    /// NULL has no text form.
    pub fn to_text(&self) -> Option<Arc<str>> {
        match self {
            SqliteValue::Null => None,
            SqliteValue::Integer(i) => Some(Arc::from(itoa::Buffer::new().format(*i))),
            SqliteValue::Real(f) => Some(Arc::from(js_number_to_string(*f))),
            SqliteValue::Text(s) => Some(Arc::clone(s)),
            SqliteValue::Blob(b) => Some(Arc::from(String::from_utf8_lossy(b).as_ref())),
        }
    }

    /// Appends the text rule form (see [`SqliteValue::to_text`]); NULL appends nothing.
    pub fn write_text(&self, out: &mut String) {
        match self {
            SqliteValue::Null => {}
            SqliteValue::Integer(i) => out.push_str(itoa::Buffer::new().format(*i)),
            SqliteValue::Real(f) => write_js_number(*f, out),
            SqliteValue::Text(s) => out.push_str(s),
            SqliteValue::Blob(b) => out.push_str(&String::from_utf8_lossy(b)),
        }
    }

    /// Appends this value as synced JSON (SYNC_RULES.md §8.1). Blobs are never synced; callers
    /// skip them before calling this, and a stray one is written as `null`.
    /// NaN and ±Infinity have no JSON form: they are written as `null` and reported by returning `false`.
    pub fn write_json(&self, out: &mut String) -> bool {
        match self {
            SqliteValue::Null | SqliteValue::Blob(_) => {
                out.push_str("null");
                true
            }
            SqliteValue::Integer(i) => {
                out.push_str(itoa::Buffer::new().format(*i));
                true
            }
            SqliteValue::Real(f) => write_json_real(*f, out),
            SqliteValue::Text(s) => {
                write_json_string(s, out);
                true
            }
        }
    }

    /// Appends this value as one element of a bucket id's parameter array (SYNC_RULES.md §6).
    pub fn write_bucket_param(&self, out: &mut String) {
        match self {
            SqliteValue::Null | SqliteValue::Blob(_) => out.push_str("null"),
            SqliteValue::Integer(i) => out.push_str(itoa::Buffer::new().format(*i)),
            SqliteValue::Real(f) if f.is_finite() => write_js_number(*f, out),
            SqliteValue::Real(_) => out.push_str("null"),
            SqliteValue::Text(s) => write_json_string(s, out),
        }
    }

    /// A value that came in as JSON (JWT claims, client parameters, `->>` results):
    /// booleans become 1/0, integral numbers INTEGER, other numbers REAL, objects and arrays JSON text.
    pub fn from_json(value: &serde_json::Value) -> SqliteValue {
        match value {
            serde_json::Value::Null => SqliteValue::Null,
            serde_json::Value::Bool(b) => SqliteValue::from(*b),
            serde_json::Value::Number(n) => json_number_to_value(n),
            serde_json::Value::String(s) => SqliteValue::text(s.as_str()),
            other => SqliteValue::Text(Arc::from(other.to_string())),
        }
    }

    /// The value as a JSON value (for debugging output and test comparison). Blobs become null.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            SqliteValue::Null | SqliteValue::Blob(_) => serde_json::Value::Null,
            SqliteValue::Integer(i) => serde_json::Value::from(*i),
            SqliteValue::Real(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            SqliteValue::Text(s) => serde_json::Value::String(s.to_string()),
        }
    }

    /// Ordering for comparison operators: NULL < numbers < TEXT < BLOB, numbers by value, no type affinity.
    /// Returns `None` when either side is NULL (SQL comparison yields NULL then).
    pub fn sql_cmp(&self, other: &SqliteValue) -> Option<Ordering> {
        use SqliteValue as V;
        match (self, other) {
            (V::Null, _) | (_, V::Null) => None,
            (V::Integer(a), V::Integer(b)) => Some(a.cmp(b)),
            (V::Integer(a), V::Real(b)) => Some(cmp_int_real(*a, *b)),
            (V::Real(a), V::Integer(_)) if a.is_nan() => Some(Ordering::Less),
            (V::Real(a), V::Integer(b)) => Some(cmp_int_real(*b, *a).reverse()),
            // NaN (a float4/float8 column can hold it) equals nothing, itself included. The
            // reference's `compare()` answers "less" for any NaN comparison, so `=` is false and
            // `!=` true; this used to say "equal", which made `NaN = 1.5` true.
            (V::Real(a), V::Real(b)) => Some(a.partial_cmp(b).unwrap_or(Ordering::Less)),
            (V::Text(a), V::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (V::Blob(a), V::Blob(b)) => Some(a.as_ref().cmp(b.as_ref())),
            (a, b) => Some(a.class_rank().cmp(&b.class_rank())),
        }
    }

    fn class_rank(&self) -> u8 {
        match self {
            SqliteValue::Null => 0,
            SqliteValue::Integer(_) | SqliteValue::Real(_) => 1,
            SqliteValue::Text(_) => 2,
            SqliteValue::Blob(_) => 3,
        }
    }

    /// Equality as lookup keys and bucket parameters compare values: numbers by value
    /// (2 and 2.0 are the same), NULL equal to NULL.
    pub fn key_eq(&self, other: &SqliteValue) -> bool {
        match (self, other) {
            (SqliteValue::Null, SqliteValue::Null) => true,
            _ => self.sql_cmp(other) == Some(Ordering::Equal),
        }
    }
}

/// `a` compared with `b`; a comparison with NaN is `Less`, as in [`SqliteValue::sql_cmp`].
fn cmp_int_real(a: i64, b: f64) -> Ordering {
    if b.is_nan() {
        return Ordering::Less;
    }
    // Exact comparison without losing precision for |a| > 2^53.
    #[allow(clippy::cast_precision_loss)]
    let af = a as f64;
    match af.partial_cmp(&b) {
        Some(Ordering::Equal) => {
            // af == b: b is integral and within i64 range unless af rounded up to 2^63.
            if b >= 9_223_372_036_854_775_808.0 {
                return Ordering::Less;
            }
            #[allow(clippy::cast_possible_truncation)]
            let bi = b as i64;
            a.cmp(&bi)
        }
        Some(o) => o,
        None => Ordering::Equal,
    }
}

impl PartialEq for SqliteValue {
    /// Structural equality (same class and value; reals bitwise-equal by value). For SQL `=` use `sql_cmp`.
    fn eq(&self, other: &Self) -> bool {
        use SqliteValue as V;
        match (self, other) {
            (V::Null, V::Null) => true,
            (V::Integer(a), V::Integer(b)) => a == b,
            (V::Real(a), V::Real(b)) => a == b || (a.is_nan() && b.is_nan()),
            (V::Text(a), V::Text(b)) => a == b,
            (V::Blob(a), V::Blob(b)) => a == b,
            _ => false,
        }
    }
}

fn json_number_to_value(n: &serde_json::Number) -> SqliteValue {
    if let Some(i) = n.as_i64() {
        return SqliteValue::Integer(i);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    // JSON parsing cannot tell 2.0 from 2: an integral value in range is an INTEGER.
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        #[allow(clippy::cast_possible_truncation)]
        return SqliteValue::Integer(f as i64);
    }
    SqliteValue::Real(f)
}

/// JavaScript `Number#toString` for a double: shortest round-trip digits, exponent form from
/// 1e21 up and below 1e-6, `NaN`, `Infinity`, `-Infinity`, and `0` for negative zero.
pub fn js_number_to_string(f: f64) -> String {
    let mut s = String::new();
    write_js_number(f, &mut s);
    s
}

/// Appends JavaScript `Number#toString` of `f`.
pub fn write_js_number(f: f64, out: &mut String) {
    if write_short_decimal(f, out).is_none() {
        out.push_str(ryu_js::Buffer::new().format(f));
    }
}

/// Fast path of `Number#toString` for the common reals: |f| < 2^31 with at most six decimals
/// (prices, scores, coordinates rounded by the app). Returns whether a fraction was written,
/// or `None` (nothing written) for other values, which need the general shortest-digits search.
///
/// Why this is exact: below 2^31 the spacing of doubles is under 2.4e-7, so within one double's
/// rounding interval there is at most one multiple of 10^-k for k ≤ 6. Trying k = 0, 1, … and
/// taking the first `n = round(f·10^k)` whose quotient `n / 10^k` (correctly rounded, as parsing
/// "n·10^-k" is) gives back `f` therefore yields the fewest digits that round-trip, which is
/// what JavaScript prints (no exponent form is used in this range from 1e-6 up).
fn write_short_decimal(f: f64, out: &mut String) -> Option<bool> {
    const POWERS: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    if f == 0.0 {
        out.push('0');
        return Some(false);
    }
    let magnitude = f.abs();
    if !(1e-6..2_147_483_648.0).contains(&magnitude) {
        return None;
    }
    for (k, scale) in POWERS.iter().enumerate() {
        let n = (f * scale).round();
        if n / scale != f {
            continue;
        }
        // |n| < 2^31 · 10^6 < 2^53: exact as an integer.
        #[allow(clippy::cast_possible_truncation)]
        let n = n as i64;
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n.unsigned_abs());
        if n < 0 {
            out.push('-');
        }
        if k == 0 {
            out.push_str(digits);
            return Some(false);
        }
        if digits.len() <= k {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', k - digits.len()));
            out.push_str(digits);
        } else {
            let (int, frac) = digits.split_at(digits.len() - k);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        }
        return Some(true);
    }
    None
}

/// Synced-JSON form of a REAL: JS digits, `.0` appended when they are all digits.
fn write_json_real(f: f64, out: &mut String) -> bool {
    if !f.is_finite() {
        out.push_str("null");
        return false;
    }
    match write_short_decimal(f, out) {
        Some(true) => {}
        Some(false) => out.push_str(".0"),
        None => {
            let mut buf = ryu_js::Buffer::new();
            let s = buf.format_finite(f);
            out.push_str(s);
            if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                out.push_str(".0");
            }
        }
    }
    true
}

/// JSON string escaping as JavaScript's `JSON.stringify` writes it.
pub fn write_json_string(s: &str, out: &mut String) {
    if !needs_escape(s.as_bytes()) {
        // The common case: one bulk copy.
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.reserve(s.len() + 8);
    out.push('"');
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any byte needs escaping, checked a word at a time (SWAR).
fn needs_escape(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        if word_needs_escape(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"))) {
            return true;
        }
    }
    let rest = chunks.remainder();
    if rest.is_empty() {
        return false;
    }
    // Pad the tail with spaces, which never need escaping.
    let mut word = [b' '; 8];
    word[..rest.len()].copy_from_slice(rest);
    word_needs_escape(u64::from_le_bytes(word))
}

/// Whether any byte of the word is a control character, `"` or `\\` (SWAR: no per-byte branches).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    // Bytes below 0x20; bytes >= 0x80 are never flagged because `!word` clears their high bit.
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    (below_space | has_zero(word ^ (ONES * u64::from(b'"'))) | has_zero(word ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// Bytes that JSON strings must escape: control characters, `"` and `\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether JavaScript `parseInt(text)` gives a nonzero number (SYNC_RULES.md §5.1).
fn js_parse_int_is_nonzero(s: &str) -> bool {
    let t = s.trim_start_matches(is_js_whitespace);
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        let digits: &str = &hex[..hex.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(hex.len())];
        return digits.bytes().any(|b| b != b'0');
    }
    let digits = &t[..t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len())];
    digits.bytes().any(|b| b != b'0')
}

fn is_js_whitespace(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &SqliteValue) -> String {
        let mut s = String::new();
        v.write_json(&mut s);
        s
    }

    fn bucket_param(v: &SqliteValue) -> String {
        let mut s = String::new();
        v.write_bucket_param(&mut s);
        s
    }

    #[test]
    fn truthiness_follows_js_parse_int() {
        for (text, expected) in [
            ("1", true),
            (" -3", true),
            ("0x10", true),
            ("0x0", false),
            ("0x", false),
            ("12abc", true),
            ("1e5", true),
            ("abc", false),
            ("", false),
            (".5", false),
            ("Infinity", false),
            ("0", false),
            ("-0", false),
            ("00", false),
            ("0.5", false),
        ] {
            assert_eq!(SqliteValue::from(text).is_truthy(), expected, "{text:?}");
        }
        assert!(SqliteValue::Real(0.5).is_truthy());
        assert!(!SqliteValue::Real(0.0).is_truthy());
        assert!(!SqliteValue::Null.is_truthy());
        assert!(!SqliteValue::from(vec![1u8]).is_truthy());
        assert!(SqliteValue::Integer(-1).is_truthy());
    }

    #[test]
    fn text_rule_uses_js_number_formatting() {
        let t = |v: SqliteValue| v.to_text().map(|s| s.to_string());
        assert_eq!(t(SqliteValue::Real(1.0)).as_deref(), Some("1"));
        assert_eq!(t(SqliteValue::Real(-0.0)).as_deref(), Some("0"));
        assert_eq!(t(SqliteValue::Real(1e21)).as_deref(), Some("1e+21"));
        assert_eq!(t(SqliteValue::Real(1e-7)).as_deref(), Some("1e-7"));
        assert_eq!(t(SqliteValue::Real(1.5)).as_deref(), Some("1.5"));
        assert_eq!(t(SqliteValue::Real(f64::NAN)).as_deref(), Some("NaN"));
        assert_eq!(
            t(SqliteValue::Real(f64::NEG_INFINITY)).as_deref(),
            Some("-Infinity")
        );
        assert_eq!(
            t(SqliteValue::Integer(i64::MAX)).as_deref(),
            Some("9223372036854775807")
        );
        assert_eq!(t(SqliteValue::Null), None);
    }

    #[test]
    fn synced_json_appends_point_zero_to_whole_reals() {
        assert_eq!(json(&SqliteValue::Real(3.0)), "3.0");
        assert_eq!(json(&SqliteValue::Real(-5.0)), "-5.0");
        assert_eq!(json(&SqliteValue::Real(0.1)), "0.1");
        assert_eq!(json(&SqliteValue::Real(1e300)), "1e+300");
        assert_eq!(json(&SqliteValue::Real(1e-7)), "1e-7");
        assert_eq!(json(&SqliteValue::Real(-0.0)), "0.0");
        assert_eq!(json(&SqliteValue::Real(1e21)), "1e+21");
        assert_eq!(json(&SqliteValue::Real(f64::NAN)), "null");
        assert_eq!(
            json(&SqliteValue::Integer(9_223_372_036_854_775_807)),
            "9223372036854775807"
        );
        assert_eq!(json(&SqliteValue::Null), "null");
    }

    proptest::proptest! {
        #[test]
        fn short_decimals_print_like_ryu_js(f in proptest::num::f64::ANY, n in -2_200_000_000_000i64..2_200_000_000_000, k in 0u32..8) {
            #[allow(clippy::cast_precision_loss)]
            let decimal = n as f64 / 10f64.powi(i32::try_from(k).unwrap());
            for value in [f, decimal, decimal * 3.0, -decimal] {
                let expected = ryu_js::Buffer::new().format(value).to_string();
                proptest::prop_assert_eq!(js_number_to_string(value), expected.clone(), "{:?}", value);
                if value.is_finite() {
                    let mut json = String::new();
                    write_json_real(value, &mut json);
                    let whole = expected.bytes().all(|b| b.is_ascii_digit() || b == b'-');
                    let expected_json = if whole { format!("{expected}.0") } else { expected };
                    // Negative zero is written as 0.0.
                    let expected_json = if value == 0.0 { "0.0".to_string() } else { expected_json };
                    proptest::prop_assert_eq!(json, expected_json);
                }
            }
        }

        #[test]
        fn json_string_escaping_matches_serde_json(text in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut ours = String::new();
            write_json_string(&text, &mut ours);
            proptest::prop_assert_eq!(ours, serde_json::to_string(&text).unwrap());
        }
    }

    #[test]
    fn long_strings_escape_in_every_word_position() {
        for pos in 0..20 {
            for special in ['"', '\\', '\n', '\u{1}', 'ü'] {
                let mut text: String = "a".repeat(20);
                text.replace_range(pos..pos + 1, &special.to_string());
                let mut ours = String::new();
                write_json_string(&text, &mut ours);
                assert_eq!(ours, serde_json::to_string(&text).unwrap(), "{text:?}");
            }
        }
    }

    #[test]
    fn json_strings_escape_like_json_stringify() {
        assert_eq!(
            json(&SqliteValue::from("a\"b\\c/ü\n\u{1}\u{7f}")),
            "\"a\\\"b\\\\c/ü\\n\\u0001\u{7f}\""
        );
        assert_eq!(json(&SqliteValue::from("\u{8}\u{c}\r\t")), "\"\\b\\f\\r\\t\"");
        // Same bytes as serde_json's default escaping.
        let s = "x\u{1f}\u{0}y\"";
        assert_eq!(json(&SqliteValue::from(s)), serde_json::to_string(s).unwrap());
    }

    #[test]
    fn bucket_params_write_whole_reals_as_integers() {
        assert_eq!(bucket_param(&SqliteValue::Real(3.0)), "3");
        assert_eq!(bucket_param(&SqliteValue::Real(2.5)), "2.5");
        assert_eq!(bucket_param(&SqliteValue::Real(f64::INFINITY)), "null");
        assert_eq!(bucket_param(&SqliteValue::Null), "null");
        assert_eq!(
            bucket_param(&SqliteValue::from("we\"ird\\ü")),
            "\"we\\\"ird\\\\ü\""
        );
    }

    #[test]
    fn comparison_orders_classes_without_affinity() {
        use std::cmp::Ordering::*;
        let cmp = |a: SqliteValue, b: SqliteValue| a.sql_cmp(&b);
        assert_eq!(
            cmp(SqliteValue::from("1"), SqliteValue::Integer(1)),
            Some(Greater)
        );
        assert_eq!(cmp(SqliteValue::Integer(2), SqliteValue::Real(2.0)), Some(Equal));
        assert_eq!(
            cmp(
                SqliteValue::Integer(i64::MAX),
                SqliteValue::Real(9_223_372_036_854_775_808.0)
            ),
            Some(Less)
        );
        assert_eq!(
            cmp(SqliteValue::Real(1.5), SqliteValue::Integer(1)),
            Some(Greater)
        );
        assert_eq!(cmp(SqliteValue::Null, SqliteValue::Integer(1)), None);
        assert_eq!(cmp(SqliteValue::from("b"), SqliteValue::from("a")), Some(Greater));
        assert_eq!(
            cmp(SqliteValue::from(vec![0u8]), SqliteValue::from("z")),
            Some(Greater)
        );
        assert!(SqliteValue::Integer(2).key_eq(&SqliteValue::Real(2.0)));
        assert!(SqliteValue::Null.key_eq(&SqliteValue::Null));
    }

    #[test]
    fn json_values_convert_like_the_reference() {
        let v: serde_json::Value =
            serde_json::from_str(r#"[true, 2, 2.0, 2.5, "s", {"a":1}, null, 9007199254740993]"#).unwrap();
        let got: Vec<SqliteValue> = v.as_array().unwrap().iter().map(SqliteValue::from_json).collect();
        assert_eq!(
            got,
            vec![
                SqliteValue::Integer(1),
                SqliteValue::Integer(2),
                SqliteValue::Integer(2),
                SqliteValue::Real(2.5),
                SqliteValue::from("s"),
                SqliteValue::from(r#"{"a":1}"#),
                SqliteValue::Null,
                SqliteValue::Integer(9_007_199_254_740_993),
            ]
        );
    }
}
