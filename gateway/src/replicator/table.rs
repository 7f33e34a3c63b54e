//! One source table as the replicator sees it: the rules' plan for it, its column types for the value
//! mapping, which columns identify a row, and which values are kept for unchanged-TOAST merges.

use std::collections::HashSet;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use syncgate_rules::pgtype::{PgType, map_text_value};
use syncgate_rules::{
    ParameterEntry, RowError, RowEvaluation, SourceTable, SqliteValue, SyncRules, TablePlan,
};
use tracing::warn;

use crate::source::TableName;
use crate::storage::{RowChange, SourceRowKey};

/// Identity texts longer than this are stored as a hash: a wide REPLICA IDENTITY FULL row would
/// otherwise be copied into every op's subkey.
const MAX_PLAIN_KEY: usize = 200;

/// Type OIDs of fixed-length built-in types: Postgres never TOASTs them, so their values need not be
/// kept for unchanged-TOAST merges.
const FIXED_LENGTH_TYPES: &[u32] = &[
    16, 18, 20, 21, 23, 26, 700, 701, 790, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 3220,
];

/// Varlena types whose stored size is at most their text's length plus a few header bytes (text-like,
/// `numeric`, `bytea` whose hex text is twice its size, `json` stored as its text).
const TEXT_BOUNDED_TYPES: &[u32] = &[17, 25, 114, 1042, 1043, 1700];

/// Postgres moves values out of line only when a row version is longer than `TOAST_TUPLE_THRESHOLD`
/// (2,032 bytes with 8 kB pages; `toast_tuple_target` changes the size it shrinks to, not this trigger).
/// A row estimated below this bound therefore has no TOASTed value, and an UPDATE of it never reports
/// one unchanged: its source row need not be stored. The margin covers page-size rounding.
const SMALL_ROW_BOUND: usize = 1_900;

/// Upper bound of one fixed-length column's stored size, alignment padding included.
const FIXED_COLUMN_BOUND: usize = 24;

/// Tuple header and null bitmap, generously.
const ROW_HEADER_BOUND: usize = 64;

/// Custom types already reported as synced by their text, so each is logged once per process.
static REPORTED_TYPES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The replicator's view of one source table (one relation version: rebuilt on every Relation message).
#[derive(Debug)]
pub struct TableMapper {
    pub name: TableName,
    /// `schema.name`: the storage's source-table id and the first half of every op's subkey.
    pub storage_name: String,
    pub plan: TablePlan,
    pub columns: Vec<String>,
    pub types: Vec<PgType>,
    /// Column indexes that identify a row (primary key, replica identity index, or every column).
    pub identity: Vec<usize>,
    /// Columns whose values are stored with the row for unchanged-TOAST merges.
    pub kept: Vec<bool>,
    /// Per column: whether its stored size is bounded by its text (fixed-length or text-like), so a
    /// row's stored size can be bounded; `None` when some column is not (then rows are always kept).
    size_bounded: Option<Vec<bool>>,
}

impl TableMapper {
    pub fn new(
        rules: &SyncRules,
        name: TableName,
        columns: Vec<String>,
        type_oids: &[u32],
        types: Vec<PgType>,
        identity: Vec<usize>,
    ) -> TableMapper {
        let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
        let source = SourceTable::new(&name.schema, &name.name, &column_refs);
        let plan = rules.plan_table(&source);
        for ty in &types {
            report_text_type(&name, ty);
        }
        let kept = type_oids
            .iter()
            .map(|oid| !FIXED_LENGTH_TYPES.contains(oid))
            .collect();
        let size_bounded = type_oids
            .iter()
            .map(|oid| {
                if FIXED_LENGTH_TYPES.contains(oid) {
                    Some(false)
                } else if TEXT_BOUNDED_TYPES.contains(oid) {
                    Some(true)
                } else {
                    None
                }
            })
            .collect();
        TableMapper {
            storage_name: format!("{}.{}", name.schema, name.name),
            name,
            plan,
            columns,
            types,
            identity,
            kept,
            size_bounded,
        }
    }

    /// Whether the row is certainly too small for Postgres to have stored any of its values out of line.
    fn is_small_row(&self, values: &[Option<&str>]) -> bool {
        let Some(bounded) = &self.size_bounded else {
            return false;
        };
        let mut size = ROW_HEADER_BOUND;
        for (i, &text_bounded) in bounded.iter().enumerate() {
            size += if text_bounded {
                // A varlena header of up to 4 bytes, numeric's own header and alignment.
                values.get(i).copied().flatten().map_or(0, str::len) + FIXED_COLUMN_BOUND
            } else {
                FIXED_COLUMN_BOUND
            };
            if size >= SMALL_ROW_BOUND {
                return false;
            }
        }
        true
    }

    /// Whether any data or parameter query reads this table; rows of other tables are ignored.
    pub fn is_relevant(&self) -> bool {
        self.plan.has_data_queries() || self.plan.has_parameter_queries()
    }

    /// The row's identity from its identity columns.
    pub fn row_key(&self, values: &[Option<&str>]) -> SourceRowKey {
        // Sized for the usual short key, so building it does not reallocate.
        let mut key = String::with_capacity(32);
        key.push('[');
        for (n, &i) in self.identity.iter().enumerate() {
            if n > 0 {
                key.push(',');
            }
            match values.get(i).copied().flatten() {
                Some(text) => push_json_string(&mut key, text),
                None => key.push_str("null"),
            }
        }
        key.push(']');
        if key.len() > MAX_PLAIN_KEY {
            let digest = Sha256::digest(key.as_bytes());
            key = String::from("sha256:");
            for byte in digest {
                key.push_str(&format!("{byte:02x}"));
            }
        }
        SourceRowKey {
            table: self.storage_name.clone(),
            key,
        }
    }

    /// The kept columns of a row, encoded for storage (a JSON object of Postgres texts), or `None` when
    /// the table has no column that can be TOASTed or the row is too small to have TOASTed values.
    pub fn encode_source_row(&self, values: &[Option<&str>]) -> Option<String> {
        if !self.kept.iter().any(|&k| k) || self.is_small_row(values) {
            return None;
        }
        let mut out = String::with_capacity(256);
        out.push('{');
        let mut first = true;
        for (i, column) in self.columns.iter().enumerate() {
            if !self.kept[i] {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            push_json_string(&mut out, column);
            out.push(':');
            match values.get(i).copied().flatten() {
                Some(text) => push_json_string(&mut out, text),
                None => out.push_str("null"),
            }
        }
        out.push('}');
        Some(out)
    }

    /// Evaluates a row (values in this table's column order, `None` = NULL) and returns its new state.
    pub fn evaluate(&self, rules: &SyncRules, values: &[Option<&str>], scratch: &mut Scratch) -> RowChange {
        let compat = rules.compatibility();
        scratch.values.clear();
        scratch
            .values
            .extend(values.iter().zip(&self.types).map(|(value, ty)| match value {
                None => SqliteValue::Null,
                Some(text) => map_text_value(ty, text, compat),
            }));
        scratch.evaluation.clear();
        scratch.entries.clear();
        scratch.errors.clear();
        if self.plan.has_data_queries() {
            rules.evaluate_row(&self.plan, &scratch.values, &mut scratch.evaluation);
        }
        if self.plan.has_parameter_queries() {
            rules.evaluate_parameter_row(
                &self.plan,
                &scratch.values,
                &mut scratch.entries,
                &mut scratch.errors,
            );
        }
        for error in scratch.evaluation.errors.iter().chain(&scratch.errors) {
            // A row error skips that query for this row only; the row still syncs through the others.
            warn!(table = %self.name, definition = %error.definition, message = %error.message, "row evaluation error");
        }
        RowChange::from_evaluation(
            self.row_key(values),
            &self.plan,
            &scratch.evaluation,
            &scratch.entries,
            self.encode_source_row(values),
        )
    }
}

/// Reusable evaluation buffers (one per replicator): no allocation per row beyond the output.
#[derive(Debug, Default)]
pub struct Scratch {
    values: Vec<SqliteValue>,
    evaluation: RowEvaluation,
    entries: Vec<ParameterEntry>,
    errors: Vec<RowError>,
}

/// Decodes a stored source row back into `(column, value)` pairs.
pub fn decode_source_row(encoded: &str) -> Vec<(String, Option<String>)> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(encoded) {
        Ok(map) => map
            .into_iter()
            .map(|(column, value)| (column, value.as_str().map(str::to_owned)))
            .collect(),
        Err(error) => {
            warn!(%error, "stored source row is not valid JSON; ignoring it");
            Vec::new()
        }
    }
}

/// Appends `text` as a JSON string (the rules crate's escaping, the same as serde_json's).
fn push_json_string(out: &mut String, text: &str) {
    syncgate_rules::value::write_json_string(text, out);
}

/// Logs once per type that values of an unknown type are synced as their Postgres text.
fn report_text_type(table: &TableName, ty: &PgType) {
    let PgType::Other(name) = ty.resolve_domains() else {
        return;
    };
    let Ok(mut reported) = REPORTED_TYPES.lock() else {
        return;
    };
    if reported.get_or_insert_with(HashSet::new).insert(name.clone()) {
        warn!(%table, r#type = %name, "column type has no specific mapping; its values sync as their Postgres text");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper(identity: Vec<usize>) -> TableMapper {
        let rules = syncgate_rules::compile(
            "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM t\n",
            &syncgate_rules::CompileOptions::default(),
        )
        .rules
        .expect("rules");
        TableMapper::new(
            &rules,
            TableName::new("public", "t"),
            vec!["a".into(), "b".into(), "c".into()],
            &[23, 25, 3802],
            vec![PgType::Int4, PgType::Text, PgType::Jsonb],
            identity,
        )
    }

    #[test]
    fn row_keys_are_json_arrays_of_identity_texts_and_hashed_when_long() {
        let m = mapper(vec![0, 1]);
        assert_eq!(m.row_key(&[Some("1"), Some("x\"y"), None]).key, r#"["1","x\"y"]"#);
        assert_eq!(m.row_key(&[Some("1"), None, None]).key, r#"["1",null]"#);
        assert_eq!(m.row_key(&[Some("1"), None, None]).table, "public.t");
        let long = "z".repeat(500);
        let key = m.row_key(&[Some("1"), Some(&long), None]).key;
        assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");
        assert_ne!(key, m.row_key(&[Some("2"), Some(&long), None]).key);
    }

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        for text in [
            "",
            "plain",
            "q\"b\\n\nr\rt\tb\u{8}f\u{c}z\u{1}\u{1f}",
            "é ✓ 😀",
            "\u{7f}",
        ] {
            let mut out = String::from("x");
            push_json_string(&mut out, text);
            assert_eq!(out[1..], serde_json::Value::String(text.to_owned()).to_string());
        }
    }

    #[test]
    fn small_rows_of_bounded_types_keep_no_source_row() {
        let rules = syncgate_rules::compile(
            "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM t\n",
            &syncgate_rules::CompileOptions::default(),
        )
        .rules
        .expect("rules");
        let m = TableMapper::new(
            &rules,
            TableName::new("public", "t"),
            vec!["a".into(), "b".into(), "c".into()],
            &[23, 25, 1700],
            vec![PgType::Int4, PgType::Text, PgType::Numeric],
            vec![0],
        );
        assert_eq!(
            m.encode_source_row(&[Some("1"), Some("small"), Some("1.5")]),
            None
        );
        let big = "x".repeat(2_000);
        assert!(m.encode_source_row(&[Some("1"), Some(&big), None]).is_some());
    }

    #[test]
    fn only_variable_length_columns_are_kept_for_toast_merges() {
        let m = mapper(vec![0]);
        let encoded = m
            .encode_source_row(&[Some("1"), Some("big"), None])
            .expect("kept");
        assert_eq!(encoded, r#"{"b":"big","c":null}"#);
        assert_eq!(
            decode_source_row(&encoded),
            vec![("b".to_owned(), Some("big".to_owned())), ("c".to_owned(), None)]
        );
    }

    #[test]
    fn evaluation_places_the_row_and_keeps_its_source() {
        let rules = syncgate_rules::compile(
            "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM t\n",
            &syncgate_rules::CompileOptions::default(),
        )
        .rules
        .expect("rules");
        let m = mapper(vec![0]);
        let change = m.evaluate(
            &rules,
            &[Some("7"), Some("x"), Some(r#"{"k":1}"#)],
            &mut Scratch::default(),
        );
        let placements = change.placements.expect("data table");
        assert_eq!(placements.len(), 1);
        assert_eq!(placements[0].bucket.as_str(), "global[]");
        assert!(change.parameters.is_none(), "not a parameter table");
        assert_eq!(change.source_row.as_deref(), Some(r#"{"b":"x","c":"{\"k\":1}"}"#));
    }
}
