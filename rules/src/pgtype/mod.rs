//! Postgres → synced value mapping (SYNC_RULES.md §8).
//!
//! Logical replication (pgoutput, text mode) and text-format queries deliver every column as
//! Postgres text output. [`map_text_value`] turns that text into the SQLite value the sync rules
//! see, given the column's [`PgType`]. The text is assumed to come from a session with
//! `DateStyle=ISO, IntervalStyle=postgres, TimeZone=UTC, extra_float_digits=3`.
//!
//! Nothing here panics on malformed input: text that does not parse as its type is kept as TEXT,
//! exactly as received. Where the reference implementation gives NULL for values it cannot parse
//! (BC timestamps, timestamptz beyond year 9999), syncgate keeps the raw text (or, for year > 9999,
//! converts it like any other timestamp) rather than losing the value.
//!
//! Choices where the spec is silent, following the reference implementation unless noted:
//! - Arrays of built-in types are always JSON arrays (no compatibility option needed). Elements:
//!   numeric, interval, inet, enum etc. become JSON strings; bytea elements become `null`
//!   (blobs are never synced); json/jsonb elements are embedded as raw JSON.
//! - `box[]` uses `;` between elements. The reference splits it on `,` without
//!   `custom_postgres_types` (garbage such as `["(3","4)",…]`); syncgate always splits on `;`.
//! - Ranges (with `custom_postgres_types`) become `{"lower":…,"upper":…,"lower_exclusive":0|1,
//!   "upper_exclusive":0|1}` with bounds decoded by the subtype (infinite bound = `null`). The
//!   `empty` range stays the TEXT `empty` (and the JSON string `"empty"` inside a structure).
//!   Multiranges are JSON arrays of such objects.
//! - Composite fields of type bytea are left out of the JSON object, like `undefined` in the
//!   reference. Keys that look like array indexes come first, as JavaScript orders object keys.
//! - Depth limit: like the reference, a value nested so deep that its depth exceeds 10 (the
//!   elements of the outermost array or object are at depth 0) cannot be converted. The spec
//!   calls that an error; syncgate degrades to the raw Postgres text instead of failing the row.
//! - `timestamp_max_precision: nanoseconds` gives 6 digits: Postgres only has microseconds and
//!   the reference caps the precision at the source's.

mod datetime;
mod json_check;
mod structure;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::compat::Compatibility;
use crate::value::SqliteValue;

/// A Postgres column type as far as the mapping cares.
#[derive(Debug, Clone, PartialEq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar/char(n), "char", name, uuid, citext: TEXT as is.
    Text,
    Json,
    Jsonb,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    Timestamptz,
    Interval,
    PgLsn,
    Array(Box<PgType>),
    Domain {
        name: String,
        base: Box<PgType>,
    },
    Composite {
        name: String,
        fields: Vec<(String, PgType)>,
    },
    Range {
        name: String,
        element: Box<PgType>,
    },
    Multirange {
        name: String,
        element: Box<PgType>,
    },
    Enum(String),
    /// Any other type, by name: synced as its text. Built-in names (inet, money, point, box…)
    /// count as built-in for arrays; any other name is treated as a custom type.
    Other(String),
}

/// Built-in types: (oid, pg_type.typname, array type oid or 0).
const BUILTIN_TYPES: &[(u32, &str, u32)] = &[
    (16, "bool", 1000),
    (17, "bytea", 1001),
    (18, "char", 1002),
    (19, "name", 1003),
    (20, "int8", 1016),
    (21, "int2", 1005),
    (22, "int2vector", 1006),
    (23, "int4", 1007),
    (24, "regproc", 1008),
    (25, "text", 1009),
    (26, "oid", 1028),
    (27, "tid", 1010),
    (28, "xid", 1011),
    (29, "cid", 1012),
    (30, "oidvector", 1013),
    (114, "json", 199),
    (142, "xml", 143),
    (194, "pg_node_tree", 0),
    (600, "point", 1017),
    (601, "lseg", 1018),
    (602, "path", 1019),
    (603, "box", 1020),
    (604, "polygon", 1027),
    (628, "line", 629),
    (650, "cidr", 651),
    (700, "float4", 1021),
    (701, "float8", 1022),
    (718, "circle", 719),
    (774, "macaddr8", 775),
    (790, "money", 791),
    (829, "macaddr", 1040),
    (869, "inet", 1041),
    (1033, "aclitem", 1034),
    (1042, "bpchar", 1014),
    (1043, "varchar", 1015),
    (1082, "date", 1182),
    (1083, "time", 1183),
    (1114, "timestamp", 1115),
    (1184, "timestamptz", 1185),
    (1186, "interval", 1187),
    (1266, "timetz", 1270),
    (1560, "bit", 1561),
    (1562, "varbit", 1563),
    (1700, "numeric", 1231),
    (1790, "refcursor", 2201),
    (2202, "regprocedure", 2207),
    (2203, "regoper", 2208),
    (2204, "regoperator", 2209),
    (2205, "regclass", 2210),
    (2206, "regtype", 2211),
    (2950, "uuid", 2951),
    (2970, "txid_snapshot", 2949),
    (3220, "pg_lsn", 3221),
    (3361, "pg_ndistinct", 0),
    (3402, "pg_dependencies", 0),
    (3614, "tsvector", 3643),
    (3615, "tsquery", 3645),
    (3642, "gtsvector", 3644),
    (3734, "regconfig", 3735),
    (3769, "regdictionary", 3770),
    (3802, "jsonb", 3807),
    (3904, "int4range", 3905),
    (3906, "numrange", 3907),
    (3908, "tsrange", 3909),
    (3910, "tstzrange", 3911),
    (3912, "daterange", 3913),
    (3926, "int8range", 3927),
    (4072, "jsonpath", 4073),
    (4089, "regnamespace", 4090),
    (4096, "regrole", 4097),
    (4191, "regcollation", 4192),
    (4451, "int4multirange", 6150),
    (4532, "nummultirange", 6151),
    (4533, "tsmultirange", 6152),
    (4534, "tstzmultirange", 6153),
    (4535, "datemultirange", 6155),
    (4536, "int8multirange", 6157),
    (4600, "pg_brin_bloom_summary", 0),
    (4601, "pg_brin_minmax_multi_summary", 0),
    (5017, "pg_mcv_list", 0),
    (5038, "pg_snapshot", 5039),
    (5069, "xid8", 271),
];

/// SQL spellings and aliases → pg_type names (after typmods are removed and lowercased).
const NAME_ALIASES: &[(&str, &str)] = &[
    ("boolean", "bool"),
    ("smallint", "int2"),
    ("smallserial", "int2"),
    ("integer", "int4"),
    ("int", "int4"),
    ("serial", "int4"),
    ("bigint", "int8"),
    ("bigserial", "int8"),
    ("real", "float4"),
    ("double precision", "float8"),
    ("float", "float8"),
    ("decimal", "numeric"),
    ("character varying", "varchar"),
    ("character", "bpchar"),
    ("\"char\"", "char"),
    ("time without time zone", "time"),
    ("time with time zone", "timetz"),
    ("timestamp without time zone", "timestamp"),
    ("timestamp with time zone", "timestamptz"),
    ("bit varying", "varbit"),
];

/// The mapping-relevant type of a built-in scalar (non-array) type.
fn builtin_scalar(oid: u32, name: &str) -> PgType {
    let range = |element: PgType| PgType::Range {
        name: name.to_owned(),
        element: Box::new(element),
    };
    let multirange = |element: PgType| PgType::Multirange {
        name: name.to_owned(),
        element: Box::new(element),
    };
    match oid {
        16 => PgType::Bool,
        17 => PgType::Bytea,
        18 | 19 | 25 | 1042 | 1043 | 2950 => PgType::Text,
        20 => PgType::Int8,
        21 => PgType::Int2,
        23 => PgType::Int4,
        26 => PgType::Oid,
        114 => PgType::Json,
        3802 => PgType::Jsonb,
        700 => PgType::Float4,
        701 => PgType::Float8,
        1700 => PgType::Numeric,
        1082 => PgType::Date,
        1083 => PgType::Time,
        1266 => PgType::TimeTz,
        1114 => PgType::Timestamp,
        1184 => PgType::Timestamptz,
        1186 => PgType::Interval,
        3220 => PgType::PgLsn,
        3904 => range(PgType::Int4),
        3906 => range(PgType::Numeric),
        3908 => range(PgType::Timestamp),
        3910 => range(PgType::Timestamptz),
        3912 => range(PgType::Date),
        3926 => range(PgType::Int8),
        4451 => multirange(PgType::Int4),
        4532 => multirange(PgType::Numeric),
        4533 => multirange(PgType::Timestamp),
        4534 => multirange(PgType::Timestamptz),
        4535 => multirange(PgType::Date),
        4536 => multirange(PgType::Int8),
        _ => PgType::Other(name.to_owned()),
    }
}

impl PgType {
    /// From a type name as written in catalogs, DDL or the test vectors: `int4`, `integer`,
    /// `double precision`, `varchar(20)`, `text[]`, `_text`, `timestamp(3) with time zone`,
    /// `pg_catalog.jsonb`… Unknown names give [`PgType::Other`] (an enum cannot be told from its
    /// name; the vectors' `mood` maps as text either way).
    pub fn from_name(name: &str) -> PgType {
        let trimmed = name.trim();
        let lower = trimmed.to_ascii_lowercase();
        // Array spellings: `t[]`, `t[3][]`, `t array`, `t array[3]`, `_t`.
        if let Some(element) = strip_array_suffix(&lower) {
            let len = element.len();
            return PgType::Array(Box::new(PgType::from_name(&trimmed[..len])));
        }
        if let Some(element) = trimmed.strip_prefix('_').filter(|e| !e.is_empty()) {
            return PgType::Array(Box::new(PgType::from_name(element)));
        }
        let unqualified = lower.strip_prefix("pg_catalog.").unwrap_or(&lower);
        let normalized = normalize_type_name(unqualified);
        let canonical = NAME_ALIASES
            .iter()
            .find(|(alias, _)| *alias == normalized)
            .map_or(normalized.as_str(), |(_, canonical)| canonical);
        if canonical == "citext" {
            return PgType::Text;
        }
        match BUILTIN_TYPES.iter().find(|(_, n, _)| *n == canonical) {
            Some(&(oid, n, _)) => builtin_scalar(oid, n),
            None => PgType::Other(trimmed.to_owned()),
        }
    }

    /// Built-in type OIDs (`bool`=16, `int8`=20, `int4`=23, `text`=25, `json`=114,
    /// `numeric`=1700, …, built-in ranges and multiranges) and their array types (`_int4`=1007,
    /// `_text`=1009, …). `None` for other OIDs: the replicator then consults `pg_type`.
    pub fn from_builtin_oid(oid: u32) -> Option<PgType> {
        if let Some(&(oid, name, _)) = BUILTIN_TYPES.iter().find(|(o, _, _)| *o == oid) {
            return Some(builtin_scalar(oid, name));
        }
        BUILTIN_TYPES
            .iter()
            .find(|(_, _, array)| *array == oid && oid != 0)
            .map(|&(element, name, _)| PgType::Array(Box::new(builtin_scalar(element, name))))
    }

    /// The type with any domains peeled off.
    pub fn resolve_domains(&self) -> &PgType {
        let mut ty = self;
        while let PgType::Domain { base, .. } = ty {
            ty = base;
        }
        ty
    }

    /// Whether this is a built-in scalar type (so arrays of it are decoded without
    /// `custom_postgres_types`, as the reference does for built-in array types).
    fn is_builtin_scalar(&self) -> bool {
        match self {
            PgType::Array(_)
            | PgType::Domain { .. }
            | PgType::Composite { .. }
            | PgType::Range { .. }
            | PgType::Multirange { .. }
            | PgType::Enum(_) => false,
            PgType::Other(name) => BUILTIN_TYPES.iter().any(|(_, n, _)| n == name),
            _ => true,
        }
    }

    /// Whether the structural decoding of this type needs `custom_postgres_types`; without it
    /// the value is synced as its raw text.
    fn needs_custom_types(&self) -> bool {
        match self {
            PgType::Domain { .. }
            | PgType::Composite { .. }
            | PgType::Range { .. }
            | PgType::Multirange { .. } => true,
            PgType::Array(element) => {
                let mut element = element.as_ref();
                while let PgType::Array(inner) = element {
                    element = inner;
                }
                !element.is_builtin_scalar()
            }
            _ => false,
        }
    }
}

/// Strips `[]`, `[N]` (repeated) or ` array[N]` from the end of a lowercased type name; returns
/// the element type's name if there was such a suffix.
fn strip_array_suffix(name: &str) -> Option<&str> {
    let mut rest = name.trim_end();
    let mut stripped = false;
    while rest.ends_with(']') {
        let open = rest.rfind('[')?;
        let inside = &rest[open + 1..rest.len() - 1];
        if !inside.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        rest = rest[..open].trim_end();
        stripped = true;
    }
    if let Some(element) = rest.strip_suffix(" array") {
        rest = element.trim_end();
        stripped = true;
    }
    (stripped && !rest.is_empty()).then_some(rest)
}

/// Removes typmods (`(10,2)`) and collapses whitespace: `timestamp(3) with  time zone` →
/// `timestamp with time zone`.
fn normalize_type_name(name: &str) -> String {
    let mut without_typmod = String::with_capacity(name.len());
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => without_typmod.push(c),
            _ => {}
        }
    }
    without_typmod.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn raw(text: &str) -> SqliteValue {
    SqliteValue::Text(Arc::from(text))
}

/// Maps one non-NULL column value in Postgres text output format (DateStyle=ISO,
/// IntervalStyle=postgres, TimeZone=UTC, extra_float_digits=3) to the synced value.
pub fn map_text_value(ty: &PgType, text: &str, compat: &Compatibility) -> SqliteValue {
    match ty {
        PgType::Bool => match text {
            "t" => SqliteValue::Integer(1),
            "f" => SqliteValue::Integer(0),
            _ => raw(text),
        },
        PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Oid => text
            .parse::<i64>()
            .map_or_else(|_| raw(text), SqliteValue::Integer),
        PgType::Float4 | PgType::Float8 => parse_float(text).map_or_else(|| raw(text), SqliteValue::Real),
        PgType::Bytea => decode_bytea(text).map_or_else(|| raw(text), |b| SqliteValue::Blob(Arc::from(b))),
        PgType::Date => SqliteValue::text(datetime::date(text)),
        PgType::Time => datetime::time(text, compat).map_or_else(|| raw(text), SqliteValue::from),
        PgType::Timestamp => datetime::timestamp(text, compat).map_or_else(|| raw(text), SqliteValue::from),
        PgType::Timestamptz => {
            datetime::timestamptz(text, compat).map_or_else(|| raw(text), SqliteValue::from)
        }
        PgType::PgLsn => pg_lsn(text).map_or_else(|| raw(text), SqliteValue::from),
        PgType::Domain { base, .. } => {
            if compat.custom_postgres_types {
                map_text_value(base, text, compat)
            } else {
                raw(text)
            }
        }
        PgType::Array(_) | PgType::Composite { .. } | PgType::Range { .. } | PgType::Multirange { .. } => {
            if ty.needs_custom_types() && !compat.custom_postgres_types {
                return raw(text);
            }
            if matches!(ty, PgType::Range { .. }) && text == "empty" {
                return raw(text);
            }
            structure::to_json(ty, text, compat).map_or_else(|_| raw(text), SqliteValue::from)
        }
        PgType::Numeric
        | PgType::Text
        | PgType::Json
        | PgType::Jsonb
        | PgType::TimeTz
        | PgType::Interval
        | PgType::Enum(_)
        | PgType::Other(_) => raw(text),
    }
}

/// float4/float8 text → double. With extra_float_digits=3 (Postgres 12+ shortest-exact output)
/// a float4 reads back exactly as its shortest decimal, so `0.1` gives the double 0.1 as the
/// reference's `Number(text)` does.
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // Rust would also accept `inf`/`nan` spellings that Postgres never writes.
        _ if !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

/// bytea text: hex format `\x0102…` (the default) or the old escape format (`\\` and `\ooo`).
fn decode_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let digits = hex.as_bytes();
        if digits.len() % 2 != 0 {
            return None;
        }
        return digits
            .chunks_exact(2)
            .map(|pair| Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?))
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes.get(i + 1..i + 4)?;
            if !octal.iter().all(|b| (b'0'..=b'7').contains(b)) || octal[0] > b'3' {
                return None;
            }
            out.push(octal.iter().fold(0u8, |acc, b| acc << 3 | (b - b'0')));
            i += 4;
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// pg_lsn `16/B374D848` → `00000016/B374D848`, so LSNs compare correctly as text.
fn pg_lsn(text: &str) -> Option<String> {
    let (high, low) = text.split_once('/')?;
    let is_hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(high) && is_hex(low)).then(|| format!("{high:0>8}/{low:0>8}"))
}
