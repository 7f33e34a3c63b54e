//! Arrays, composites, ranges and multiranges → JSON text.
//!
//! Text formats parsed here (Postgres docs, "Array Value Input", "Composite Type Input and
//! Output Syntax", "Range Input/Output"):
//! - array `{a,"b c",NULL,{…}}`: elements quoted when needed, with `\` escaping the next
//!   character; unquoted `NULL` is SQL NULL; optional `[lo:hi]=` dimension prefix; the element
//!   delimiter is `,` except for `box` (`;`).
//! - composite `(a,"b c",,"")`: empty field = NULL, `""` = empty string; inside quotes `""` and
//!   `\x` both escape.
//! - range `[lo,hi)`/`(,hi]`/`empty`: a missing bound is infinite (`null`); bounds quoted like
//!   composite fields.
//! - multirange `{[1,3),[5,7)}`.

use std::fmt::Write as _;

use super::{PgType, datetime, json_check};
use crate::compat::Compatibility;
use crate::value::{SqliteValue, write_json_string};

/// A value at a depth above this is refused (the reference's `DEPTH_LIMIT`). The elements of the
/// outermost structure are at depth 0.
const MAX_DEPTH: usize = 10;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum StructureError {
    Syntax,
    TooDeep,
}

type Result<T> = std::result::Result<T, StructureError>;

/// JSON text for an array, composite, range or multirange value (domains already allowed by the
/// caller's compatibility check).
pub(super) fn to_json(ty: &PgType, text: &str, compat: &Compatibility) -> Result<String> {
    let mut out = String::with_capacity(text.len() + 16);
    write_structure(ty.resolve_domains(), text, compat, 0, &mut out)?;
    Ok(out)
}

/// Writes a structured value whose own elements are at `depth`.
fn write_structure(
    ty: &PgType,
    text: &str,
    compat: &Compatibility,
    depth: usize,
    out: &mut String,
) -> Result<()> {
    match ty {
        PgType::Array(element) => {
            let (element, delimiter) = array_element(element);
            let mut c = Cursor::new(skip_dimensions(text)?);
            write_array(&mut c, element, delimiter, compat, depth, out)?;
            c.expect_end()
        }
        PgType::Composite { fields, .. } => {
            let mut c = Cursor::new(text);
            write_composite(&mut c, fields, compat, depth, out)?;
            c.expect_end()
        }
        PgType::Range { element, .. } => {
            let mut c = Cursor::new(text);
            write_range(&mut c, element, compat, depth, out)?;
            c.expect_end()
        }
        PgType::Multirange { element, .. } => {
            let mut c = Cursor::new(text);
            write_multirange(&mut c, element, compat, depth, out)?;
            c.expect_end()
        }
        _ => Err(StructureError::Syntax),
    }
}

/// The scalar element type of an array and its delimiter. Arrays of arrays (through domains)
/// are one multi-dimensional array in Postgres, so nested array layers are peeled off.
fn array_element(element: &PgType) -> (&PgType, u8) {
    let mut element = element.resolve_domains();
    while let PgType::Array(inner) = element {
        element = inner.resolve_domains();
    }
    let delimiter = match element {
        PgType::Other(name) if name == "box" => b';',
        _ => b',',
    };
    (element, delimiter)
}

/// Skips a `[1:2][0:3]=` dimension decoration (arrays whose lower bound is not 1).
fn skip_dimensions(text: &str) -> Result<&str> {
    let mut rest = text;
    if !rest.starts_with('[') {
        return Ok(rest);
    }
    while let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']').ok_or(StructureError::Syntax)?;
        let bounds = &after[..close];
        let valid = bounds
            .split_once(':')
            .is_some_and(|(lo, hi)| is_int(lo) && is_int(hi));
        if !valid {
            return Err(StructureError::Syntax);
        }
        rest = &after[close + 1..];
    }
    rest.strip_prefix('=').ok_or(StructureError::Syntax)
}

fn is_int(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn check_depth(depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        Err(StructureError::TooDeep)
    } else {
        Ok(())
    }
}

fn write_array(
    c: &mut Cursor<'_>,
    element: &PgType,
    delimiter: u8,
    compat: &Compatibility,
    depth: usize,
    out: &mut String,
) -> Result<()> {
    c.expect(b'{')?;
    out.push('[');
    c.skip_whitespace();
    if c.eat(b'}') {
        out.push(']');
        return Ok(());
    }
    loop {
        check_depth(depth)?;
        c.skip_whitespace();
        match c.peek() {
            Some(b'{') => write_array(c, element, delimiter, compat, depth + 1, out)?,
            Some(b'"') => {
                let value = c.quoted(false)?;
                if !write_element(element, &value, compat, depth, out)? {
                    out.push_str("null");
                }
            }
            _ => {
                let value = c.unquoted(&[delimiter, b'}']).trim_end();
                // Unquoted NULL is SQL NULL; an omitted (bytea) element is null too.
                if value.eq_ignore_ascii_case("NULL") || !write_element(element, value, compat, depth, out)? {
                    out.push_str("null");
                }
            }
        }
        c.skip_whitespace();
        if c.eat(delimiter) {
            out.push(',');
        } else {
            c.expect(b'}')?;
            out.push(']');
            return Ok(());
        }
    }
}

fn write_composite(
    c: &mut Cursor<'_>,
    fields: &[(String, PgType)],
    compat: &Compatibility,
    depth: usize,
    out: &mut String,
) -> Result<()> {
    c.expect(b'(')?;
    let mut entries: Vec<(&str, String)> = Vec::with_capacity(fields.len());
    let mut index = 0;
    loop {
        let value = match c.peek() {
            Some(b',' | b')') => None,
            Some(b'"') => Some(c.quoted(true)?),
            _ => Some(c.unquoted(b",)").into()),
        };
        // Extra fields (the type changed under us) are ignored, as the reference does.
        if let Some((name, ty)) = fields.get(index) {
            check_depth(depth)?;
            let mut json = String::new();
            let present = match value {
                None => {
                    json.push_str("null");
                    true
                }
                Some(value) => write_element(ty, &value, compat, depth, &mut json)?,
            };
            if present {
                entries.push((name, json));
            }
        }
        index += 1;
        if !c.eat(b',') {
            c.expect(b')')?;
            break;
        }
    }
    // A JavaScript object lists integer-like keys first, in ascending order.
    entries.sort_by_key(|(name, _)| array_index(name).unwrap_or(u32::MAX));
    out.push('{');
    for (i, (name, json)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(name, out);
        out.push(':');
        out.push_str(json);
    }
    out.push('}');
    Ok(())
}

/// A key that JavaScript treats as an array index: canonical decimal below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || (key.len() > 1 && key.starts_with('0')) || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u32>().ok().filter(|&i| i != u32::MAX)
}

/// A range object whose fields are at `depth`. `empty` is written as the string `"empty"`.
fn write_range(
    c: &mut Cursor<'_>,
    element: &PgType,
    compat: &Compatibility,
    depth: usize,
    out: &mut String,
) -> Result<()> {
    if c.eat_word("empty") {
        out.push_str("\"empty\"");
        return Ok(());
    }
    let lower_exclusive = match c.next() {
        Some(b'(') => true,
        Some(b'[') => false,
        _ => return Err(StructureError::Syntax),
    };
    let lower = match c.peek() {
        Some(b'"') => Some(c.quoted(true)?),
        Some(b',') => None,
        _ => Some(c.unquoted(b",").into()),
    };
    c.expect(b',')?;
    let upper = match c.peek() {
        Some(b'"') => Some(c.quoted(true)?),
        Some(b')' | b']') => None,
        _ => Some(c.unquoted(b")]").into()),
    };
    let upper_exclusive = match c.next() {
        Some(b')') => true,
        Some(b']') => false,
        _ => return Err(StructureError::Syntax),
    };
    check_depth(depth)?;
    out.push('{');
    let mut first = true;
    for (key, bound) in [("lower", lower), ("upper", upper)] {
        let mut json = String::new();
        let present = match bound {
            None => {
                json.push_str("null");
                true
            }
            Some(bound) => write_element(element, &bound, compat, depth, &mut json)?,
        };
        if present {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "\"{key}\":{json}");
        }
    }
    if !first {
        out.push(',');
    }
    let _ = write!(
        out,
        "\"lower_exclusive\":{},\"upper_exclusive\":{}}}",
        u8::from(lower_exclusive),
        u8::from(upper_exclusive)
    );
    Ok(())
}

fn write_multirange(
    c: &mut Cursor<'_>,
    element: &PgType,
    compat: &Compatibility,
    depth: usize,
    out: &mut String,
) -> Result<()> {
    c.expect(b'{')?;
    out.push('[');
    if c.eat(b'}') {
        out.push(']');
        return Ok(());
    }
    loop {
        check_depth(depth)?;
        write_range(c, element, compat, depth + 1, out)?;
        if c.eat(b',') {
            out.push(',');
        } else {
            c.expect(b'}')?;
            out.push(']');
            return Ok(());
        }
    }
}

/// Writes one non-NULL element (scalar or nested structure) at `depth`. Returns `false`, having
/// written nothing, for a value that is left out of synced JSON (bytea).
fn write_element(
    ty: &PgType,
    text: &str,
    compat: &Compatibility,
    depth: usize,
    out: &mut String,
) -> Result<bool> {
    check_depth(depth)?;
    let ty = ty.resolve_domains();
    match ty {
        PgType::Range { .. } if text == "empty" => out.push_str("\"empty\""),
        PgType::Array(_) | PgType::Composite { .. } | PgType::Range { .. } | PgType::Multirange { .. } => {
            write_structure(ty, text, compat, depth + 1, out)?;
        }
        PgType::Bool => match text {
            "t" => out.push('1'),
            "f" => out.push('0'),
            _ => return Err(StructureError::Syntax),
        },
        PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Oid => {
            let value: i64 = text.parse().map_err(|_| StructureError::Syntax)?;
            let _ = write!(out, "{value}");
        }
        PgType::Float4 | PgType::Float8 => {
            let value = super::parse_float(text).ok_or(StructureError::Syntax)?;
            // NaN and ±Infinity have no JSON form: written as null (SYNC_RULES.md §8.1).
            SqliteValue::Real(value).write_json(out);
        }
        PgType::Bytea => return Ok(false),
        PgType::Json | PgType::Jsonb if json_check::is_valid_json(text) => out.push_str(text),
        PgType::Date => write_json_string(&datetime::date(text), out),
        PgType::Time => write_json_string(&datetime::time(text, compat).unwrap_or_else(|| text.into()), out),
        PgType::Timestamp => {
            write_json_string(
                &datetime::timestamp(text, compat).unwrap_or_else(|| text.into()),
                out,
            );
        }
        PgType::Timestamptz => {
            write_json_string(
                &datetime::timestamptz(text, compat).unwrap_or_else(|| text.into()),
                out,
            );
        }
        PgType::PgLsn => write_json_string(&super::pg_lsn(text).unwrap_or_else(|| text.into()), out),
        PgType::Numeric
        | PgType::Text
        | PgType::Json
        | PgType::Jsonb
        | PgType::TimeTz
        | PgType::Interval
        | PgType::Enum(_)
        | PgType::Other(_)
        | PgType::Domain { .. } => write_json_string(text, out),
    }
    Ok(true)
}

/// A byte cursor over structure text. Structural characters are ASCII, so slicing at their
/// positions always lands on UTF-8 boundaries.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(StructureError::Syntax)
        }
    }

    fn expect_end(&self) -> Result<()> {
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(StructureError::Syntax)
        }
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// Text up to (not including) the first of `stops`, or to the end.
    fn unquoted(&mut self, stops: &[u8]) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|b| !stops.contains(&b)) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    /// A double-quoted string with `\` escaping the next character; with `doubled_quotes`
    /// (composites, ranges) `""` inside the quotes is also one `"`.
    fn quoted(&mut self, doubled_quotes: bool) -> Result<String> {
        self.expect(b'"')?;
        let mut value = String::new();
        let mut run_start = self.pos;
        loop {
            match self.peek() {
                None => return Err(StructureError::Syntax),
                Some(b'\\') => {
                    value.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    // The escaped character may be multi-byte: copy it whole.
                    let ch = self.text[self.pos..]
                        .chars()
                        .next()
                        .ok_or(StructureError::Syntax)?;
                    value.push(ch);
                    self.pos += ch.len_utf8();
                    run_start = self.pos;
                }
                Some(b'"') => {
                    value.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    if doubled_quotes && self.peek() == Some(b'"') {
                        value.push('"');
                        self.pos += 1;
                        run_start = self.pos;
                    } else {
                        return Ok(value);
                    }
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}
