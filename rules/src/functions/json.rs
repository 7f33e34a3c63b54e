//! JSON operators and functions: `->`, `->>`, `json_extract`, `json_array_length`, `json_valid`,
//! `json_keys`, `IN`/`&&` over JSON arrays and `json_each` (SYNC_RULES.md §5.2 "JSON path rules").
//!
//! JSON is parsed by a small strict RFC 8259 parser into [`Json`], which keeps each number's lexical
//! form. That gives what the reference gets from its big-number JSON library: integer literals become
//! exact INTEGERs (beyond 2^53 too), literals with a fraction or exponent become REAL (so `2.0` is REAL),
//! and compact output writes numbers exactly as they appeared. Objects keep document order; a
//! duplicate key keeps its first position and its last value (as `JSON.parse` does).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use super::{arg, bool_value, int_from_usize};
use smallvec::SmallVec;

use crate::compat::Compatibility;
use crate::error::EvalError;
use crate::value::{SqliteValue, write_json_string};

/// A parsed JSON document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// A valid JSON number token, as written.
    Number(Box<str>),
    String(Box<str>),
    Array(Vec<Json>),
    Object(Vec<(Box<str>, Json)>),
}

/// Deeper documents are rejected rather than risking the stack.
const MAX_DEPTH: usize = 512;

/// Objects with more members than this get a hash index for duplicate-key detection while parsing.
const INDEX_OBJECTS_FROM: usize = 16;

pub(crate) fn parse_json(text: &str) -> Result<Json, EvalError> {
    let mut p = Parser {
        src: text,
        b: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    let value = p.value()?;
    p.skip_ws();
    if p.pos < p.b.len() {
        return Err(p.unexpected());
    }
    Ok(value)
}

struct Parser<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn unexpected(&self) -> EvalError {
        match self.src.get(self.pos..).and_then(|s| s.chars().next()) {
            Some(c) => EvalError::new(format!(
                "Invalid JSON: unexpected character '{c}' at position {}",
                self.pos
            )),
            None => EvalError::new(format!(
                "Invalid JSON: unexpected end of input at position {}",
                self.pos
            )),
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), EvalError> {
        if self.b.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, EvalError> {
        if self.b[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.unexpected())
        }
    }

    fn value(&mut self) -> Result<Json, EvalError> {
        match self.b.get(self.pos) {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Json::String(self.string()?.into_boxed_str())),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.unexpected()),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Json, EvalError>) -> Result<Json, EvalError> {
        if self.depth >= MAX_DEPTH {
            return Err(EvalError::new(format!(
                "Invalid JSON: nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn array(&mut self) -> Result<Json, EvalError> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn object(&mut self) -> Result<Json, EvalError> {
        self.pos += 1; // '{'
        let mut members: Vec<(Box<str>, Json)> = Vec::new();
        let mut index: Option<HashMap<Box<str>, usize>> = None;
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.b.get(self.pos) != Some(&b'"') {
                return Err(self.unexpected());
            }
            let key = self.string()?.into_boxed_str();
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value()?;
            let existing = match &index {
                Some(map) => map.get(&key).copied(),
                None => members.iter().position(|(k, _)| *k == key),
            };
            match existing {
                Some(i) => members[i].1 = value,
                None => {
                    if let Some(map) = &mut index {
                        map.insert(key.clone(), members.len());
                    }
                    members.push((key, value));
                    if index.is_none() && members.len() >= INDEX_OBJECTS_FROM {
                        index = Some(
                            members
                                .iter()
                                .enumerate()
                                .map(|(i, (k, _))| (k.clone(), i))
                                .collect(),
                        );
                    }
                }
            }
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Json, EvalError> {
        let start = self.pos;
        if self.b[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.unexpected()),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.unexpected());
            }
        }
        if matches!(self.b.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.unexpected());
            }
        }
        Ok(Json::Number(Box::from(&self.src[start..self.pos])))
    }

    fn hex4(&mut self) -> Result<u32, EvalError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .b
                .get(self.pos)
                .and_then(|&c| super::text::hex_value(c))
                .ok_or_else(|| self.unexpected())?;
            v = (v << 4) | u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    /// A string token starting at the opening quote. Lone surrogate escapes become U+FFFD.
    fn string(&mut self) -> Result<String, EvalError> {
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(&c) = self.b.get(self.pos) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The run ends at an ASCII byte (or the end), so it is a char boundary.
            out.push_str(&self.src[run_start..self.pos]);
            match self.b.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(&esc) = self.b.get(self.pos) else {
                        return Err(self.unexpected());
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            out.push(self.surrogate_aware(unit)?);
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected());
                        }
                    }
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn surrogate_aware(&mut self, unit: u32) -> Result<char, EvalError> {
        if (0xD800..0xDC00).contains(&unit) && self.b[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            let low = self.hex4()?;
            if (0xDC00..0xE000).contains(&low) {
                let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or('\u{fffd}'));
            }
            self.pos = save;
        }
        Ok(char::from_u32(unit).unwrap_or('\u{fffd}'))
    }
}

impl Json {
    /// Compact JSON text: no white space, strings escaped like `JSON.stringify`, numbers as written.
    pub(crate) fn to_compact(&self) -> String {
        let mut out = String::new();
        self.write_compact(&mut out);
        out
    }

    fn write_compact(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_json_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_compact(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_string(k, out);
                    out.push(':');
                    v.write_compact(out);
                }
                out.push('}');
            }
        }
    }

    /// The JSON → SQLite conversion: booleans 1/0, integer literals INTEGER (REAL beyond 64 bits),
    /// other numbers REAL, strings TEXT, null NULL, arrays and objects compact JSON TEXT.
    pub(crate) fn to_sqlite(&self) -> SqliteValue {
        match self {
            Json::Null => SqliteValue::Null,
            Json::Bool(b) => bool_value(*b),
            Json::Number(n) => number_value(n),
            Json::String(s) => SqliteValue::Text(Arc::from(&**s)),
            Json::Array(_) | Json::Object(_) => SqliteValue::from(self.to_compact()),
        }
    }

    /// SQLite's `json_each.type` names.
    fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(true) => "true",
            Json::Bool(false) => "false",
            Json::Number(n) if is_integer_literal(n) => "integer",
            Json::Number(_) => "real",
            Json::String(_) => "text",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }

    /// Nodes in SQLite's (pre-3.45) parse tree: one per value, plus one per object label.
    fn node_count(&self) -> usize {
        match self {
            Json::Array(items) => 1 + items.iter().map(Json::node_count).sum::<usize>(),
            Json::Object(members) => 1 + members.iter().map(|(_, v)| 1 + v.node_count()).sum::<usize>(),
            _ => 1,
        }
    }

    /// JavaScript `value[key]` on a parsed document: object members by exact key, array elements by
    /// canonical index (`"1"`, not `"01"`). Anything else is `undefined` (None).
    fn member(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| &**k == key).map(|(_, v)| v),
            Json::Array(items) => array_index(key).and_then(|i| items.get(i)),
            _ => None,
        }
    }
}

fn is_integer_literal(n: &str) -> bool {
    !n.bytes().any(|c| matches!(c, b'.' | b'e' | b'E'))
}

fn number_value(n: &str) -> SqliteValue {
    if is_integer_literal(n)
        && let Ok(i) = n.parse::<i64>()
    {
        return SqliteValue::Integer(i);
    }
    SqliteValue::Real(n.parse::<f64>().unwrap_or(f64::NAN))
}

/// A canonical array index: `0` or digits without a leading zero.
fn array_index(key: &str) -> Option<usize> {
    let canonical = key == "0" || (!key.is_empty() && !key.starts_with('0'));
    if canonical && key.bytes().all(|c| c.is_ascii_digit()) {
        key.parse().ok()
    } else {
        None
    }
}

/// Parses the text form of a value (blobs decoded as UTF-8). `None` for NULL.
fn parse_value(v: &SqliteValue) -> Result<Option<Json>, EvalError> {
    match v {
        SqliteValue::Null => Ok(None),
        SqliteValue::Text(s) => parse_json(s).map(Some),
        other => parse_json(&other.to_text().unwrap_or_default()).map(Some),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Extract {
    /// `->`: JSON text.
    Arrow,
    /// `->>`: SQL value.
    LongArrow,
    /// `json_extract`: SQL value, path must start with `$`.
    Function,
}

/// The result of walking a path: JavaScript distinguishes a missing member (`undefined`) from `null`.
enum Found<'a> {
    Missing,
    Value(&'a Json),
}

/// Walks `path` from `root` the way the reference does: stop at the first null or missing step.
///
/// - `$`-paths are split on `.`; the first component is the root. Components may carry array indexes
///   in brackets (`$[1]`, `$.a[0][2]`); a member literally named like that wins, for compatibility with
///   the reference, which treats `a[0]` as a plain key.
/// - Other paths: legacy splits on `.` (`'a.b'` is `a` then `b`); `fixed_json_extract` treats the whole
///   path as one key.
fn resolve<'a>(root: &'a Json, path: &str, fixed: bool) -> Found<'a> {
    let mut current = root;
    if let Some(rest) = path.strip_prefix('$') {
        let mut components = rest.split('.');
        // What follows `$` before the first dot: array indexes, or ignored (as the reference ignores it).
        let root_suffix = components.next().unwrap_or_default();
        for index in bracket_indexes(root_suffix).unwrap_or_default() {
            if let Some(found) = step(&mut current, |v| v.member(index)) {
                return found;
            }
        }
        for component in components {
            if let Some(found) = step(&mut current, |v| bracketed_member(v, component)) {
                return found;
            }
        }
    } else if fixed {
        if let Some(found) = step(&mut current, |v| v.member(path)) {
            return found;
        }
    } else {
        for component in path.split('.') {
            if let Some(found) = step(&mut current, |v| v.member(component)) {
                return found;
            }
        }
    }
    Found::Value(current)
}

/// One path step (JavaScript `value = value[c]` after `if (value == null) break`): `Some` ends the walk.
fn step<'a>(current: &mut &'a Json, next: impl FnOnce(&'a Json) -> Option<&'a Json>) -> Option<Found<'a>> {
    if **current == Json::Null {
        return Some(Found::Value(current));
    }
    match next(current) {
        Some(v) => {
            *current = v;
            None
        }
        None => Some(Found::Missing),
    }
}

/// `name[1][2]` inside a `$`-path: the exact member if there is one, else `name` then each index
/// (a JSON null part-way gives null, like the outer walk).
fn bracketed_member<'a>(v: &'a Json, component: &str) -> Option<&'a Json> {
    if let Some(exact) = v.member(component) {
        return Some(exact);
    }
    let open = component.find('[')?;
    let indexes = bracket_indexes(&component[open..])?;
    let name = &component[..open];
    let mut current = if name.is_empty() { v } else { v.member(name)? };
    for index in indexes {
        if *current == Json::Null {
            return Some(current);
        }
        current = current.member(index)?;
    }
    Some(current)
}

/// Splits `[1][23]` into `["1", "23"]`; `None` unless the whole text is such groups.
fn bracket_indexes(s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let index = &inner[..close];
        array_index(index)?;
        out.push(index);
        rest = &inner[close + 1..];
    }
    Some(out)
}

fn extract(
    json: &SqliteValue,
    path: &SqliteValue,
    fixed: bool,
    op: Extract,
) -> Result<SqliteValue, EvalError> {
    if path.is_null() {
        return Ok(SqliteValue::Null);
    }
    let Some(doc) = parse_value(json)? else {
        return Ok(SqliteValue::Null);
    };
    extract_parsed(&doc, path, fixed, op)
}

/// `->` / `->>` on a document parsed once and reused (request values read many times).
pub(crate) fn json_arrow_parsed(
    doc: &Json,
    path: &SqliteValue,
    long: bool,
    compat: &Compatibility,
) -> Result<SqliteValue, EvalError> {
    if path.is_null() {
        return Ok(SqliteValue::Null);
    }
    let op = if long { Extract::LongArrow } else { Extract::Arrow };
    extract_parsed(doc, path, compat.fixed_json_extract, op)
}

fn extract_parsed(
    doc: &Json,
    path: &SqliteValue,
    fixed: bool,
    op: Extract,
) -> Result<SqliteValue, EvalError> {
    // A JSON null document gives NULL for every operator, before the path is looked at.
    if *doc == Json::Null {
        return Ok(SqliteValue::Null);
    }
    let path = path.to_text().unwrap_or_default();
    if op == Extract::Function && !path.starts_with('$') {
        return Err(EvalError::new("JSON path must start with $."));
    }
    Ok(match (resolve(doc, &path, fixed), op) {
        (Found::Missing, _) => SqliteValue::Null,
        // Legacy `->` turns JSON null into SQL NULL; fixed keeps it as the JSON text `null`.
        (Found::Value(Json::Null), Extract::Arrow) if fixed => SqliteValue::from("null"),
        (Found::Value(Json::Null), Extract::Arrow) => SqliteValue::Null,
        (Found::Value(v), Extract::Arrow) => SqliteValue::from(v.to_compact()),
        // Legacy `->>`/json_extract give the text 'null' (JS `typeof null == 'object'`); fixed gives NULL.
        (Found::Value(Json::Null), _) if fixed => SqliteValue::Null,
        (Found::Value(Json::Null), _) => SqliteValue::from("null"),
        (Found::Value(v), _) => v.to_sqlite(),
    })
}

/// `json -> path`: the selected value as compact JSON text; a missing member gives NULL, JSON null gives
/// the text `'null'` under `fixed_json_extract` and NULL in legacy mode. `path` may be text or an integer
/// (an array index or numeric key).
pub fn json_arrow(
    json: &SqliteValue,
    path: &SqliteValue,
    compat: &Compatibility,
) -> Result<SqliteValue, EvalError> {
    extract(json, path, compat.fixed_json_extract, Extract::Arrow)
}

/// `json ->> path`: the selected value as an SQL value: strings TEXT, integer literals INTEGER (exact
/// beyond 2^53), other numbers REAL, booleans 1/0, objects and arrays compact JSON text. A missing member
/// is NULL; JSON null is NULL under `fixed_json_extract` and the text `'null'` in legacy mode.
pub fn json_long_arrow(
    json: &SqliteValue,
    path: &SqliteValue,
    compat: &Compatibility,
) -> Result<SqliteValue, EvalError> {
    extract(json, path, compat.fixed_json_extract, Extract::LongArrow)
}

/// `json_extract(j, path)`: like `->>`, but the path must start with `$`.
pub(super) fn json_extract_fn(
    args: &[SqliteValue],
    compat: &Compatibility,
) -> Result<SqliteValue, EvalError> {
    extract(
        arg(args, 0),
        arg(args, 1),
        compat.fixed_json_extract,
        Extract::Function,
    )
}

/// `json_array_length(j[, path])`: element count, 0 for a non-array, NULL for NULL. With a path, the
/// extracted SQL value is parsed again (as the reference does); a NULL path counts as no path.
pub(super) fn json_array_length_fn(
    args: &[SqliteValue],
    compat: &Compatibility,
) -> Result<SqliteValue, EvalError> {
    let json = arg(args, 0);
    let path = arg(args, 1);
    let target = if path.is_null() {
        json.clone()
    } else {
        extract(json, path, compat.fixed_json_extract, Extract::Function)?
    };
    Ok(match parse_value(&target)? {
        None => SqliteValue::Null,
        Some(Json::Array(items)) => int_from_usize(items.len()),
        Some(_) => SqliteValue::Integer(0),
    })
}

/// `json_valid(x)`: 1 if the text form parses as JSON, else 0 (NULL gives 0).
pub(super) fn json_valid_fn(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(bool_value(matches!(parse_value(arg(args, 0)), Ok(Some(_)))))
}

/// `json_keys(j)`: a JSON array of the object's keys in document order. Arrays and scalars are row errors.
pub(super) fn json_keys_fn(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    match parse_value(arg(args, 0))? {
        None => Ok(SqliteValue::Null),
        Some(Json::Object(members)) => {
            let mut out = String::from("[");
            for (i, (k, _)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, &mut out);
            }
            out.push(']');
            Ok(SqliteValue::from(out))
        }
        Some(Json::Array(_)) => Err(EvalError::new("Cannot call json_keys on an array")),
        Some(_) => Err(EvalError::new("Cannot call json_keys on a scalar")),
    }
}

/// Parses a TEXT operand of `IN`/`&&` as a JSON array.
fn operand_array(v: &SqliteValue, message: &str) -> Result<Vec<SqliteValue>, EvalError> {
    let SqliteValue::Text(s) = v else {
        return Err(EvalError::new(message));
    };
    match parse_json(s)? {
        Json::Array(items) => Ok(items.iter().map(Json::to_sqlite).collect()),
        _ => Err(EvalError::new(message)),
    }
}

fn sql_equal(a: &SqliteValue, b: &SqliteValue) -> bool {
    a.sql_cmp(b) == Some(std::cmp::Ordering::Equal)
}

/// `needle IN array`: `array` must be TEXT holding a JSON array (else a row error). 1 if an element
/// equals `needle` (numbers by value, no type affinity; JSON null never matches), NULL if either is NULL.
pub fn json_array_contains(needle: &SqliteValue, array: &SqliteValue) -> Result<SqliteValue, EvalError> {
    if needle.is_null() || array.is_null() {
        return Ok(SqliteValue::Null);
    }
    let items = operand_array(array, "IN is only supported on JSON arrays")?;
    Ok(bool_value(items.iter().any(|item| sql_equal(item, needle))))
}

/// `a && b`: both TEXT JSON arrays (else a row error); 1 if they share an element, NULL if either is NULL.
pub fn json_arrays_overlap(a: &SqliteValue, b: &SqliteValue) -> Result<SqliteValue, EvalError> {
    if a.is_null() || b.is_null() {
        return Ok(SqliteValue::Null);
    }
    let message = "&& is only supported on JSON arrays";
    let left = operand_array(a, message)?;
    let right = operand_array(b, message)?;
    Ok(bool_value(
        left.iter().any(|x| right.iter().any(|y| sql_equal(x, y))),
    ))
}

/// The elements of a JSON array value, converted like `->>` (booleans 1/0, integer literals INTEGER
/// exactly, other numbers REAL, null NULL, objects/arrays compact JSON text).
///
/// NULL gives no elements. Invalid JSON, or JSON that is not an array (including a number or blob
/// operand), is an error ("Not an array", as the reference reports for `bucket.x IN row.col`).
pub fn json_array_elements(array: &SqliteValue) -> Result<Vec<SqliteValue>, EvalError> {
    if matches!(array, SqliteValue::Blob(_)) {
        return Err(EvalError::new("Not an array"));
    }
    if let SqliteValue::Text(text) = array
        && let Some(elements) = flat_array_elements(text)
    {
        return Ok(elements);
    }
    match parse_value(array)? {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => Ok(items.iter().map(Json::to_sqlite).collect()),
        Some(_) => Err(EvalError::new("Not an array")),
    }
}

/// Fast path for the common row-array column: a flat array of unescaped strings, numbers,
/// booleans and nulls, converted without building a document tree. `None` for anything else
/// (nesting, escapes, invalid JSON), which the full parser then handles.
fn flat_array_elements(text: &str) -> Option<Vec<SqliteValue>> {
    Some(
        flat_array_scalars(text)?
            .iter()
            .map(JsonScalar::to_value)
            .collect(),
    )
}

/// An element of a flat JSON array, borrowed from the document text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JsonScalar<'a> {
    /// A string without escape sequences.
    Text(&'a str),
    /// A valid JSON number token, as written.
    Number(&'a str),
    Bool(bool),
    Null,
}

impl JsonScalar<'_> {
    /// The element as a value, with the JSON → SQLite conversion of [`json_array_elements`].
    pub fn to_value(&self) -> SqliteValue {
        match self {
            JsonScalar::Text(s) => SqliteValue::Text(Arc::from(*s)),
            JsonScalar::Number(n) => number_value(n),
            JsonScalar::Bool(b) => bool_value(*b),
            JsonScalar::Null => SqliteValue::Null,
        }
    }
}

/// The elements of a flat array of scalars (no nesting, no escaped strings), borrowed from
/// `text`; `None` for anything else. Lets hot paths read array columns without allocating.
pub fn flat_array_scalars(text: &str) -> Option<SmallVec<[JsonScalar<'_>; 8]>> {
    let b = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(i + 1);
    let mut out = SmallVec::new();
    if b.get(i) == Some(&b']') {
        return (skip_ws(i + 1) == b.len()).then_some(out);
    }
    loop {
        match *b.get(i)? {
            b'"' => {
                let start = i + 1;
                let len = b[start..]
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
                if b[start + len] != b'"' {
                    return None;
                }
                out.push(JsonScalar::Text(&text[start..start + len]));
                i = start + len + 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = &text[start..i];
                if !is_valid_number(token) {
                    return None;
                }
                out.push(JsonScalar::Number(token));
            }
            b't' if text[i..].starts_with("true") => {
                out.push(JsonScalar::Bool(true));
                i += 4;
            }
            b'f' if text[i..].starts_with("false") => {
                out.push(JsonScalar::Bool(false));
                i += 5;
            }
            b'n' if text[i..].starts_with("null") => {
                out.push(JsonScalar::Null);
                i += 4;
            }
            _ => return None,
        }
        i = skip_ws(i);
        match *b.get(i)? {
            b',' => i = skip_ws(i + 1),
            b']' => return (skip_ws(i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

/// JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_valid_number(token: &str) -> bool {
    let b = token.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// One row of `json_each(value)`, with SQLite's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonEachRow {
    /// Array index (INTEGER), object key (TEXT), or NULL for a scalar document.
    pub key: SqliteValue,
    /// The element as an SQL value (JSON null is NULL; objects/arrays compact JSON text).
    pub value: SqliteValue,
    /// `'null'`, `'true'`, `'false'`, `'integer'`, `'real'`, `'text'`, `'array'` or `'object'`.
    pub type_: SqliteValue,
    /// `value` for scalars, NULL for arrays and objects.
    pub atom: SqliteValue,
    /// The node number of the element (SQLite < 3.45 numbering: pre-order, object labels counted).
    pub id: SqliteValue,
    /// Always NULL for json_each.
    pub parent: SqliteValue,
    /// `$[0]`, `$.key` or `$."odd key"`; `$` for a scalar document.
    pub fullkey: SqliteValue,
    /// Always `$` for json_each.
    pub path: SqliteValue,
}

/// The few fixed texts of `json_each` rows (type names, `$`), allocated once and shared.
fn shared_text(text: &'static str) -> SqliteValue {
    static SHARED: std::sync::LazyLock<Vec<(&'static str, SqliteValue)>> = std::sync::LazyLock::new(|| {
        [
            "null", "true", "false", "integer", "real", "text", "array", "object", "$",
        ]
        .into_iter()
        .map(|t| (t, SqliteValue::from(t)))
        .collect()
    });
    SHARED
        .iter()
        .find(|(t, _)| *t == text)
        .map_or_else(|| SqliteValue::from(text), |(_, v)| v.clone())
}

impl JsonEachRow {
    /// A column by (ASCII case-insensitive) name.
    pub fn column(&self, name: &str) -> Option<&SqliteValue> {
        let columns = [
            ("key", &self.key),
            ("value", &self.value),
            ("type", &self.type_),
            ("atom", &self.atom),
            ("id", &self.id),
            ("parent", &self.parent),
            ("fullkey", &self.fullkey),
            ("path", &self.path),
        ];
        columns
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn new(key: SqliteValue, element: &Json, id: usize, fullkey: String) -> JsonEachRow {
        let value = element.to_sqlite();
        let atom = match element {
            Json::Array(_) | Json::Object(_) => SqliteValue::Null,
            _ => value.clone(),
        };
        JsonEachRow {
            key,
            value,
            type_: shared_text(element.type_name()),
            atom,
            id: int_from_usize(id),
            parent: SqliteValue::Null,
            fullkey: SqliteValue::from(fullkey),
            path: shared_text("$"),
        }
    }
}

/// SQLite `json_each(value)`: one row per array element or object member, or one row for a scalar
/// document. NULL gives no rows; numbers are JSON numbers; invalid JSON and blobs are errors.
/// JSON null elements give a NULL `value` (SQLite), whatever `fixed_json_extract` says.
pub fn json_each(value: &SqliteValue) -> Result<Vec<JsonEachRow>, EvalError> {
    if matches!(value, SqliteValue::Blob(_)) {
        return Err(EvalError::new("Expected json_each to be called with a string"));
    }
    let doc = match parse_value(value) {
        Ok(Some(doc)) => doc,
        Ok(None) => return Ok(Vec::new()),
        Err(_) => return Err(EvalError::new("Expected JSON string")),
    };
    Ok(match &doc {
        Json::Array(items) => {
            let mut id = 1;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let row = JsonEachRow::new(int_from_usize(i), item, id, format!("$[{i}]"));
                    id += item.node_count();
                    row
                })
                .collect()
        }
        Json::Object(members) => {
            let mut label_id = 1;
            members
                .iter()
                .map(|(k, v)| {
                    let row = JsonEachRow::new(SqliteValue::from(&**k), v, label_id + 1, object_fullkey(k));
                    label_id += 1 + v.node_count();
                    row
                })
                .collect()
        }
        scalar => vec![JsonEachRow::new(SqliteValue::Null, scalar, 0, String::from("$"))],
    })
}

/// SQLite quotes a key in a path unless it is an ASCII identifier made of letters and digits.
fn object_fullkey(key: &str) -> String {
    let plain = key.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key.bytes().all(|c| c.is_ascii_alphanumeric());
    let mut out = String::with_capacity(key.len() + 4);
    if plain {
        let _ = write!(out, "$.{key}");
    } else {
        let _ = write!(out, "$.\"{key}\"");
    }
    out
}

#[cfg(test)]
mod flat_array_tests {
    use super::*;

    /// The fast path must agree with the full parser on every input it accepts.
    #[test]
    fn flat_arrays_agree_with_the_full_parser() {
        for text in [
            "[]",
            " [ ] ",
            r#"["a","b","a"]"#,
            r#"[1, -2, 3.5, 1e3, 0, -0.0, 9007199254740993, 99999999999999999999]"#,
            r#"[true,false,null,"x"]"#,
            r#"["ü", "x y"]"#,
        ] {
            let fast = flat_array_elements(text).expect("flat");
            let Json::Array(items) = parse_json(text).unwrap() else {
                panic!("array")
            };
            let full: Vec<SqliteValue> = items.iter().map(Json::to_sqlite).collect();
            assert_eq!(fast, full, "{text}");
        }
    }

    #[test]
    fn anything_else_goes_to_the_full_parser() {
        for text in [
            r#"["a\"b"]"#,
            "[[1]]",
            r#"[{"a":1}]"#,
            "[01]",
            "[1.]",
            "[-]",
            "[1,]",
            "[1 2]",
            "[1] x",
            "",
            "{}",
            "[tru]",
            "[\"a]",
            "[1e]",
        ] {
            assert_eq!(flat_array_elements(text), None, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::test_values::{N, fixed, i, legacy, r, t};
    use proptest::prelude::*;

    fn arrow(j: &str, p: SqliteValue, c: &Compatibility) -> SqliteValue {
        json_arrow(&t(j), &p, c).unwrap()
    }
    fn arrow2(j: &str, p: SqliteValue, c: &Compatibility) -> SqliteValue {
        json_long_arrow(&t(j), &p, c).unwrap()
    }
    fn extract_fn(j: SqliteValue, p: &str, c: &Compatibility) -> Result<SqliteValue, EvalError> {
        json_extract_fn(&[j, t(p)], c)
    }

    #[test]
    fn parser_accepts_strict_json() {
        for ok in [
            "0",
            "-0",
            "1.5e-3",
            "1E+2",
            "\"\"",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            " [ 1 , { \"a\" : [ ] } ] ",
            "\"\\u00e9\\n\\/\"",
            "\"\\ud83d\\ude00\"",
            "123456789012345678901234567890",
        ] {
            assert!(parse_json(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "-",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "'a'",
            "tru",
            "nul",
            "[1] 2",
            "\"\\x\"",
            "\"\u{1}\"",
            "\"abc",
            "[",
            "{\"a\"}",
            "NaN",
            "Infinity",
            "\u{feff}1",
            "\"\\u12\"",
        ] {
            assert!(parse_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parser_limits_depth() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse_json(&deep).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse_json(&ok).is_ok());
    }

    #[test]
    fn strings_decode_escapes_and_surrogates() {
        assert_eq!(
            parse_json("\"\\ud83d\\ude00\"").unwrap(),
            Json::String("😀".into())
        );
        assert_eq!(
            parse_json("\"\\ud83dx\"").unwrap(),
            Json::String("\u{fffd}x".into())
        );
        assert_eq!(
            parse_json("\"\\ude00\"").unwrap(),
            Json::String("\u{fffd}".into())
        );
        assert_eq!(
            parse_json("\"a\\tb\\\"\"").unwrap(),
            Json::String("a\tb\"".into())
        );
        assert_eq!(parse_json("\"ü\"").unwrap(), Json::String("ü".into()));
    }

    #[test]
    fn compact_output_keeps_order_and_number_text() {
        let doc = parse_json(r#"{ "b": 1.50, "a": [true, null, -0, 1e5], "c": {"x": "é\n"} }"#).unwrap();
        assert_eq!(
            doc.to_compact(),
            r#"{"b":1.50,"a":[true,null,-0,1e5],"c":{"x":"é\n"}}"#
        );
        // Duplicate keys: first position, last value.
        let dup = parse_json(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(dup.to_compact(), r#"{"a":3,"b":2}"#);
        let many: String = (0..40).map(|k| format!("\"k{}\":{k},", k % 20)).collect();
        let many = parse_json(&format!("{{{}\"z\":0}}", many)).unwrap();
        let Json::Object(members) = &many else { panic!() };
        assert_eq!(members.len(), 21);
        assert_eq!(members[3], ("k3".into(), Json::Number("23".into())));
    }

    #[test]
    fn json_numbers_convert_by_their_form() {
        assert_eq!(number_value("9007199254740993"), i(9_007_199_254_740_993));
        assert_eq!(number_value("-9223372036854775808"), i(i64::MIN));
        assert_eq!(
            number_value("9223372036854775808"),
            r(9_223_372_036_854_775_808.0)
        );
        assert_eq!(number_value("2.0"), r(2.0));
        assert_eq!(number_value("1e2"), r(100.0));
        assert_eq!(number_value("-0"), i(0));
        assert_eq!(number_value("1e400"), r(f64::INFINITY));
    }

    #[test]
    fn arrow_returns_json_text() {
        let c = legacy();
        assert_eq!(arrow(r#"{"a": "s"}"#, t("a"), &c), t("\"s\""));
        assert_eq!(arrow(r#"{"a": {"k": true}}"#, t("a"), &c), t(r#"{"k":true}"#));
        assert_eq!(arrow(r#"{"b": 1}"#, t("a"), &c), N);
        assert_eq!(arrow(r#"{"a": 1.50}"#, t("a"), &c), t("1.50"));
        assert_eq!(arrow(r#"{"a": [1, 2]}"#, t("$.a"), &c), t("[1,2]"));
        assert_eq!(arrow(r#"[10, 20, 30]"#, i(1), &c), t("20"));
        assert_eq!(arrow(r#"[10, 20, 30]"#, i(3), &c), N);
        assert_eq!(arrow(r#"[10, 20, 30]"#, i(-1), &c), N);
        assert_eq!(arrow(r#"{"1": "x"}"#, i(1), &c), t("\"x\""));
        assert_eq!(arrow(r#"{"a": 1}"#, t("$"), &c), t(r#"{"a":1}"#));
    }

    #[test]
    fn long_arrow_returns_sql_values() {
        let c = legacy();
        assert_eq!(arrow2(r#"{"a": "s"}"#, t("a"), &c), t("s"));
        assert_eq!(arrow2(r#"{"a": {"k": true}}"#, t("a"), &c), t(r#"{"k":true}"#));
        assert_eq!(arrow2(r#"{"a": true}"#, t("a"), &c), i(1));
        assert_eq!(arrow2(r#"{"a": false}"#, t("a"), &c), i(0));
        assert_eq!(arrow2(r#"{"a": 1.5}"#, t("a"), &c), r(1.5));
        assert_eq!(arrow2(r#"{"a": 2.0}"#, t("a"), &c), r(2.0));
        assert_eq!(
            arrow2(r#"{"n": 9007199254740993}"#, t("n"), &c),
            i(9_007_199_254_740_993)
        );
        assert_eq!(arrow2(r#"{"a": [1, {"b": 2}]}"#, t("a"), &c), t(r#"[1,{"b":2}]"#));
        assert_eq!(arrow2(r#"{"b": 1}"#, t("a"), &c), N);
    }

    #[test]
    fn dotted_paths_depend_on_fixed_json_extract() {
        let doc = r#"{"a": {"b": 1}, "a.b": 2}"#;
        assert_eq!(arrow2(doc, t("a.b"), &legacy()), i(1));
        assert_eq!(arrow2(doc, t("a.b"), &fixed()), i(2));
        assert_eq!(arrow2(doc, t("$.a.b"), &legacy()), i(1));
        assert_eq!(arrow2(doc, t("$.a.b"), &fixed()), i(1));
        assert_eq!(arrow(doc, t("a.b"), &fixed()), t("2"));
        // A real path is its text form: legacy splits "1.5" into "1" then "5".
        assert_eq!(arrow2(r#"{"1": {"5": 7}}"#, r(1.5), &legacy()), i(7));
        assert_eq!(arrow2(r#"{"1.5": 8}"#, r(1.5), &fixed()), i(8));
    }

    #[test]
    fn json_null_handling_depends_on_fixed_json_extract() {
        let doc = r#"{"a": null}"#;
        assert_eq!(arrow(doc, t("a"), &legacy()), N);
        assert_eq!(arrow(doc, t("a"), &fixed()), t("null"));
        assert_eq!(arrow2(doc, t("a"), &legacy()), t("null"));
        assert_eq!(arrow2(doc, t("a"), &fixed()), N);
        assert_eq!(extract_fn(t(doc), "$.a", &legacy()).unwrap(), t("null"));
        assert_eq!(extract_fn(t(doc), "$.a", &fixed()).unwrap(), N);
        // The walk stops at a null part-way: still null, not missing.
        assert_eq!(arrow(doc, t("$.a.b"), &fixed()), t("null"));
        assert_eq!(arrow2(doc, t("$.a.b"), &legacy()), t("null"));
        // Missing is NULL everywhere.
        assert_eq!(arrow(doc, t("b"), &fixed()), N);
        assert_eq!(arrow2(doc, t("b"), &legacy()), N);
        // A JSON null document gives NULL for every operator.
        assert_eq!(arrow("null", t("$"), &fixed()), N);
        assert_eq!(arrow2("null", t("a"), &legacy()), N);
        assert_eq!(extract_fn(t("null"), "a", &legacy()).unwrap(), N);
    }

    #[test]
    fn dollar_paths_support_brackets() {
        let c = fixed();
        let doc = r#"{"a": [10, [20, 21]], "b[0]": "literal"}"#;
        assert_eq!(arrow2(doc, t("$.a[0]"), &c), i(10));
        assert_eq!(arrow2(doc, t("$.a[1][1]"), &c), i(21));
        assert_eq!(arrow2(doc, t("$.a.1.0"), &c), i(20));
        assert_eq!(arrow2(doc, t("$.a[2]"), &c), N);
        assert_eq!(arrow2(doc, t("$.a[01]"), &c), N);
        assert_eq!(arrow2(doc, t("$.b[0]"), &c), t("literal"));
        assert_eq!(arrow2("[5, 6]", t("$[1]"), &c), i(6));
        assert_eq!(arrow2("[[5, 6]]", t("$[0][1]"), &c), i(6));
        assert_eq!(arrow2("[5, 6]", t("$[x]"), &c), t("[5,6]"));
        // Without `$`, brackets are part of the key (as in the reference).
        assert_eq!(arrow2(doc, t("a[0]"), &c), N);
        assert_eq!(arrow2(doc, t("b[0]"), &legacy()), t("literal"));
        // Scalars have no members.
        assert_eq!(arrow2(r#"{"a": "str"}"#, t("$.a.0"), &c), N);
        assert_eq!(arrow2(r#"{"a": [1]}"#, t("$.a.length"), &c), N);
    }

    #[test]
    fn extract_null_and_type_handling() {
        let c = legacy();
        assert_eq!(json_arrow(&N, &t("a"), &c).unwrap(), N);
        assert_eq!(json_arrow(&t("{}"), &N, &c).unwrap(), N);
        // A NULL path does not even parse the document.
        assert_eq!(json_long_arrow(&t("not json"), &N, &c).unwrap(), N);
        assert!(json_arrow(&t("not json"), &t("a"), &c).is_err());
        assert_eq!(json_long_arrow(&i(5), &t("$"), &c).unwrap(), i(5));
        assert_eq!(json_long_arrow(&r(1.5), &t("$"), &c).unwrap(), r(1.5));
        let blob = SqliteValue::from(br#"{"a":1}"#.to_vec());
        assert_eq!(json_long_arrow(&blob, &t("a"), &c).unwrap(), i(1));
    }

    #[test]
    fn json_extract_requires_a_dollar_path() {
        for c in [legacy(), fixed()] {
            assert_eq!(extract_fn(t(r#"{"a": {"b": 42}}"#), "$.a.b", &c).unwrap(), i(42));
            assert_eq!(extract_fn(t(r#"{"a": 1}"#), "$.a.b", &c).unwrap(), N);
            assert_eq!(extract_fn(N, "$.a", &c).unwrap(), N);
            assert_eq!(extract_fn(N, "a", &c).unwrap(), N);
            let err = extract_fn(t(r#"{"a": 1}"#), "a", &c).unwrap_err();
            assert_eq!(err.message, "JSON path must start with $.");
            assert_eq!(extract_fn(t(r#"{"a": [null]}"#), "$.a", &c).unwrap(), t("[null]"));
        }
    }

    #[test]
    fn json_array_length_counts_elements() {
        let c = legacy();
        let len = |args: &[SqliteValue]| json_array_length_fn(args, &c).unwrap();
        assert_eq!(len(&[t("[1, 2, 3]")]), i(3));
        assert_eq!(len(&[t(r#"{"a": 1}"#)]), i(0));
        assert_eq!(len(&[t("[]")]), i(0));
        assert_eq!(len(&[t("7")]), i(0));
        assert_eq!(len(&[N]), N);
        assert_eq!(len(&[t(r#"{"a": [1, 2]}"#), t("$.a")]), i(2));
        assert_eq!(len(&[t(r#"{"a": [1, 2]}"#), t("$.b")]), N);
        assert_eq!(len(&[t("[1]"), N]), i(1));
        assert!(json_array_length_fn(&[t(r#"{"a": [1]}"#), t("a")], &c).is_err());
        assert!(json_array_length_fn(&[t("[1")], &c).is_err());
        // The extracted value is parsed again: a string holding an array counts.
        assert_eq!(len(&[t(r#"{"a": "[1,2]"}"#), t("$.a")]), i(2));
    }

    #[test]
    fn json_valid_checks_syntax() {
        let c = legacy();
        let valid = |v: SqliteValue| json_valid_fn(&[v], &c).unwrap();
        assert_eq!(valid(t(r#"{"a": 1}"#)), i(1));
        assert_eq!(valid(t("not json")), i(0));
        assert_eq!(valid(N), i(0));
        assert_eq!(valid(i(5)), i(1));
        assert_eq!(valid(r(f64::NAN)), i(0));
        assert_eq!(valid(t("")), i(0));
        assert_eq!(valid(SqliteValue::from(b"[1]".to_vec())), i(1));
    }

    #[test]
    fn json_keys_lists_object_keys() {
        let c = legacy();
        assert_eq!(
            json_keys_fn(&[t(r#"{"b": 1, "a": {"x": 2}, "q\"": 3}"#)], &c).unwrap(),
            t(r#"["b","a","q\""]"#)
        );
        assert_eq!(json_keys_fn(&[t("{}")], &c).unwrap(), t("[]"));
        assert_eq!(json_keys_fn(&[N], &c).unwrap(), N);
        assert_eq!(
            json_keys_fn(&[t("[1, 2]")], &c).unwrap_err().message,
            "Cannot call json_keys on an array"
        );
        for scalar in ["1", "\"s\"", "null", "true"] {
            assert_eq!(
                json_keys_fn(&[t(scalar)], &c).unwrap_err().message,
                "Cannot call json_keys on a scalar"
            );
        }
        assert!(json_keys_fn(&[t("{")], &c).is_err());
    }

    #[test]
    fn in_checks_membership() {
        assert_eq!(json_array_contains(&t("a"), &t(r#"["a", "b"]"#)).unwrap(), i(1));
        assert_eq!(json_array_contains(&t("c"), &t(r#"["a", "b"]"#)).unwrap(), i(0));
        assert_eq!(json_array_contains(&i(2), &t("[1, 2.0]")).unwrap(), i(1));
        assert_eq!(json_array_contains(&r(1.0), &t("[1, 2]")).unwrap(), i(1));
        assert_eq!(json_array_contains(&t("1"), &t("[1, 2]")).unwrap(), i(0));
        assert_eq!(json_array_contains(&i(1), &t("[true]")).unwrap(), i(1));
        assert_eq!(
            json_array_contains(&i(9_007_199_254_740_993), &t("[9007199254740992]")).unwrap(),
            i(0)
        );
        assert_eq!(
            json_array_contains(&i(9_007_199_254_740_993), &t("[9007199254740993]")).unwrap(),
            i(1)
        );
        assert_eq!(
            json_array_contains(&t(r#"{"a":1}"#), &t(r#"[{"a": 1}]"#)).unwrap(),
            i(1)
        );
        assert_eq!(json_array_contains(&t("null"), &t("[null]")).unwrap(), i(0));
        assert_eq!(json_array_contains(&N, &t("[1]")).unwrap(), N);
        assert_eq!(json_array_contains(&i(1), &N).unwrap(), N);
        assert_eq!(json_array_contains(&i(1), &t("[]")).unwrap(), i(0));
        for bad in [t(r#"{"a": 1}"#), i(1), SqliteValue::from(b"[1]".to_vec())] {
            assert_eq!(
                json_array_contains(&i(1), &bad).unwrap_err().message,
                "IN is only supported on JSON arrays"
            );
        }
        assert!(json_array_contains(&i(1), &t("[1")).is_err());
    }

    #[test]
    fn overlap_checks_shared_elements() {
        assert_eq!(
            json_arrays_overlap(&t(r#"["a", "b"]"#), &t(r#"["c", "b"]"#)).unwrap(),
            i(1)
        );
        assert_eq!(json_arrays_overlap(&t(r#"["a"]"#), &t(r#"["c"]"#)).unwrap(), i(0));
        assert_eq!(json_arrays_overlap(&t("[1]"), &t("[1.0]")).unwrap(), i(1));
        assert_eq!(json_arrays_overlap(&t("[]"), &t("[1]")).unwrap(), i(0));
        assert_eq!(json_arrays_overlap(&t("[null]"), &t("[null]")).unwrap(), i(0));
        assert_eq!(json_arrays_overlap(&N, &t("[1]")).unwrap(), N);
        assert_eq!(json_arrays_overlap(&t("[1]"), &N).unwrap(), N);
        assert_eq!(
            json_arrays_overlap(&t("[1]"), &t("1")).unwrap_err().message,
            "&& is only supported on JSON arrays"
        );
        assert!(json_arrays_overlap(&i(1), &t("[1]")).is_err());
    }

    #[test]
    fn array_elements_convert_each_element() {
        assert_eq!(
            json_array_elements(&t(r#"[true, 2, 2.5, "s", {"a":1}, null, 9007199254740993, [1]]"#)).unwrap(),
            vec![
                i(1),
                i(2),
                r(2.5),
                t("s"),
                t(r#"{"a":1}"#),
                N,
                i(9_007_199_254_740_993),
                t("[1]")
            ]
        );
        assert_eq!(json_array_elements(&N).unwrap(), vec![]);
        assert_eq!(json_array_elements(&t("[]")).unwrap(), vec![]);
        assert_eq!(
            json_array_elements(&t(r#"{"a":1}"#)).unwrap_err().message,
            "Not an array"
        );
        assert_eq!(json_array_elements(&i(1)).unwrap_err().message, "Not an array");
        assert_eq!(
            json_array_elements(&SqliteValue::from(b"[1]".to_vec()))
                .unwrap_err()
                .message,
            "Not an array"
        );
        assert!(json_array_elements(&t("[1,")).is_err());
    }

    #[test]
    fn json_each_over_arrays() {
        let rows = json_each(&t(r#"[1, "a", [2, 3], null, 1.5, true]"#)).unwrap();
        assert_eq!(rows.len(), 6);
        let col = |k: usize, name: &str| rows[k].column(name).unwrap().clone();
        assert_eq!(col(0, "key"), i(0));
        assert_eq!(col(0, "value"), i(1));
        assert_eq!(col(0, "type"), t("integer"));
        assert_eq!(col(0, "atom"), i(1));
        assert_eq!(col(0, "id"), i(1));
        assert_eq!(col(0, "parent"), N);
        assert_eq!(col(0, "fullkey"), t("$[0]"));
        assert_eq!(col(0, "path"), t("$"));
        assert_eq!(col(1, "value"), t("a"));
        assert_eq!(col(1, "type"), t("text"));
        assert_eq!(col(2, "value"), t("[2,3]"));
        assert_eq!(col(2, "type"), t("array"));
        assert_eq!(col(2, "atom"), N);
        assert_eq!(col(2, "id"), i(3));
        assert_eq!(col(3, "id"), i(6));
        assert_eq!(col(3, "value"), N);
        assert_eq!(col(3, "type"), t("null"));
        assert_eq!(col(4, "type"), t("real"));
        assert_eq!(col(4, "value"), r(1.5));
        assert_eq!(col(5, "type"), t("true"));
        assert_eq!(col(5, "value"), i(1));
        assert_eq!(col(5, "KEY"), i(5));
        assert!(rows[0].column("nope").is_none());
    }

    #[test]
    fn json_each_over_objects_and_scalars() {
        let rows = json_each(&t(r#"{"a": 1, "b c": {"x": false}, "d": 2}"#)).unwrap();
        let keys: Vec<_> = rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(keys, vec![t("a"), t("b c"), t("d")]);
        assert_eq!(rows[0].fullkey, t("$.a"));
        assert_eq!(rows[1].fullkey, t("$.\"b c\""));
        assert_eq!(rows[1].value, t(r#"{"x":false}"#));
        assert_eq!(rows[1].type_, t("object"));
        let ids: Vec<_> = rows.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, vec![i(2), i(4), i(8)]);

        let scalar = json_each(&t("\"x\"")).unwrap();
        assert_eq!(scalar.len(), 1);
        assert_eq!(scalar[0].key, N);
        assert_eq!(scalar[0].value, t("x"));
        assert_eq!(scalar[0].fullkey, t("$"));
        assert_eq!(scalar[0].id, i(0));
        assert_eq!(json_each(&i(5)).unwrap()[0].type_, t("integer"));
        assert_eq!(json_each(&t("null")).unwrap()[0].type_, t("null"));
        assert_eq!(json_each(&N).unwrap(), vec![]);
        assert_eq!(json_each(&t("[]")).unwrap(), vec![]);
        assert_eq!(json_each(&t("[1")).unwrap_err().message, "Expected JSON string");
        assert!(json_each(&SqliteValue::from(b"[1]".to_vec())).is_err());
    }

    #[test]
    fn object_fullkeys_quote_non_identifiers() {
        assert_eq!(object_fullkey("abc1"), "$.abc1");
        assert_eq!(object_fullkey("a_b"), "$.\"a_b\"");
        assert_eq!(object_fullkey("1a"), "$.\"1a\"");
        assert_eq!(object_fullkey(""), "$.\"\"");
    }

    fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            ".{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::vec((".{0,4}", inner), 0..6)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn compact_output_matches_serde_json(v in json_strategy()) {
            let text = serde_json::to_string_pretty(&v).unwrap();
            let parsed = parse_json(&text).unwrap();
            let compact = parsed.to_compact();
            // Same document (numbers keep their text, so serde_json reads them identically), and our
            // compact form re-parses to the same tree.
            prop_assert_eq!(
                serde_json::from_str::<serde_json::Value>(&compact).unwrap(),
                serde_json::from_str::<serde_json::Value>(&text).unwrap()
            );
            prop_assert_eq!(parse_json(&compact).unwrap(), parsed);
        }

        #[test]
        fn json_functions_never_panic(s in ".{0,24}", p in ".{0,8}") {
            for c in [legacy(), fixed()] {
                for doc in [t(&s), t(&format!("{{\"a\":{s}}}")), t(&format!("[{s}]"))] {
                    let _ = json_arrow(&doc, &t(&p), &c);
                    let _ = json_long_arrow(&doc, &t(&p), &c);
                    let _ = json_extract_fn(&[doc.clone(), t(&p)], &c);
                    let _ = json_array_length_fn(&[doc.clone(), t(&p)], &c);
                    let _ = json_keys_fn(std::slice::from_ref(&doc), &c);
                    let _ = json_array_contains(&t(&p), &doc);
                    let _ = json_arrays_overlap(&doc, &doc);
                    let _ = json_array_elements(&doc);
                    let _ = json_each(&doc);
                }
            }
        }
    }
}
