//! Runs sync-rules test cases in the shared JSON-lines format (testdata/README.md): compile the
//! rules, replicate the case's rows through the Postgres value mapping, resolve the connection's
//! buckets, and compare everything with the expected results.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::pgtype::{PgType, map_text_value};
use crate::request::{ConnectionRequest, StreamSubscription};
use crate::table::{SchemaTable, SourceSchema, SourceTable};
use crate::value::SqliteValue;
use crate::{CompileOptions, Severity, compile};

#[derive(Debug, Deserialize)]
pub struct Case {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub rules: String,
    #[serde(default)]
    pub tables: Vec<CaseTable>,
    #[serde(default)]
    pub auth: CaseAuth,
    #[serde(default)]
    pub validate_with_schema: bool,
    pub expected: Expected,
}

#[derive(Debug, Deserialize)]
pub struct CaseTable {
    pub name: String,
    pub schema: Option<String>,
    /// Column name → Postgres type name, in table order.
    pub columns: Map<String, Value>,
    #[serde(default)]
    pub rows: Vec<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CaseAuth {
    #[serde(default)]
    pub jwt: Value,
    #[serde(default)]
    pub parameters: Value,
    #[serde(default)]
    pub subscriptions: Vec<CaseSubscription>,
    pub include_defaults: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct CaseSubscription {
    pub stream: String,
    pub parameters: Option<Value>,
    /// The wire's `override_priority`; a JSON number, possibly written `1.0`.
    pub priority: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Expected {
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub buckets: Option<Vec<ExpectedBucket>>,
    pub other_buckets: Option<Vec<ExpectedBucket>>,
    pub row_errors: Option<Vec<ExpectedRowError>>,
}

#[derive(Debug, Deserialize)]
pub struct ExpectedBucket {
    pub bucket: String,
    pub definition: Option<String>,
    pub priority: Option<u8>,
    #[serde(default)]
    pub rows: Vec<ExpectedRow>,
}

#[derive(Debug, Deserialize)]
pub struct ExpectedRow {
    pub table: String,
    pub id: String,
    pub data: Map<String, Value>,
    #[serde(default)]
    pub types: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct ExpectedRowError {
    pub table: String,
    pub row_id: String,
    pub error: String,
    pub kind: Option<String>,
}

/// Texts that come from the reference's YAML, SQL or JSON-schema libraries: any error matches them.
const LIBRARY_MESSAGES: &[&str] = &[
    "must NOT have additional properties",
    "must be equal to one of the allowed values",
    "is invalid",
];

/// A row as produced: `(table, id, data JSON)`.
#[derive(Debug, Clone, PartialEq)]
struct ActualRow {
    table: String,
    id: String,
    data: Map<String, Value>,
}

/// Runs one case. `Ok(())` when it passes, otherwise a readable description of every difference.
pub fn run_case(case: &Case) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    let schema = case.validate_with_schema.then(|| SourceSchema {
        tables: case
            .tables
            .iter()
            .map(|t| SchemaTable {
                connection_tag: crate::table::DEFAULT_CONNECTION_TAG.into(),
                schema: t.schema.clone().unwrap_or_else(|| "public".into()),
                name: t.name.clone(),
                columns: t
                    .columns
                    .iter()
                    .map(|(c, ty)| (c.clone(), ty.as_str().unwrap_or("text").to_string()))
                    .collect(),
            })
            .collect(),
    });
    let options = CompileOptions {
        schema,
        ..CompileOptions::default()
    };
    let result = compile(&case.rules, &options);
    let errors: Vec<&str> = result
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.message.as_str())
        .collect();
    let warnings: Vec<&str> = result
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.message.as_str())
        .collect();

    for expected in &case.expected.errors {
        let library = LIBRARY_MESSAGES.iter().any(|m| expected.contains(m));
        let matched = if library {
            !errors.is_empty()
        } else {
            errors.iter().any(|e| e.contains(expected.as_str()))
        };
        if !matched {
            problems.push(format!("missing error: {expected:?}"));
        }
    }
    if case.expected.errors.is_empty() && !errors.is_empty() {
        for e in &errors {
            problems.push(format!("unexpected error: {e:?}"));
        }
    }
    if warnings.len() != case.expected.warnings.len() {
        problems.push(format!(
            "warnings: expected {} {:?}, got {} {:?}",
            case.expected.warnings.len(),
            case.expected.warnings,
            warnings.len(),
            warnings
        ));
    }
    let Some(rules) = result.rules else {
        return finish(problems, &result.diagnostics);
    };
    if !case.expected.errors.is_empty() {
        return finish(problems, &result.diagnostics);
    }

    // Replicate every table.
    let mut placed: HashMap<String, Vec<ActualRow>> = HashMap::new();
    let mut index: HashMap<String, Vec<Vec<SqliteValue>>> = HashMap::new();
    let mut row_errors: Vec<(String, String, String, bool)> = Vec::new();
    for table in &case.tables {
        let column_names: Vec<&str> = table.columns.keys().map(String::as_str).collect();
        let types: Vec<PgType> = table
            .columns
            .values()
            .map(|t| PgType::from_name(t.as_str().unwrap_or("text")))
            .collect();
        let source = SourceTable::new(
            table.schema.as_deref().unwrap_or("public"),
            &table.name,
            &column_names,
        );
        let plan = rules.plan_table(&source);
        for row in &table.rows {
            let values: Vec<SqliteValue> = column_names
                .iter()
                .zip(&types)
                .map(|(c, ty)| match row.get(*c) {
                    Some(Value::String(text)) => map_text_value(ty, text, rules.compatibility()),
                    _ => SqliteValue::Null,
                })
                .collect();
            let row_id = row
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut evaluation = crate::RowEvaluation::default();
            rules.evaluate_row(&plan, &values, &mut evaluation);
            for r in evaluation.rows() {
                let data: Map<String, Value> = match serde_json::from_str(r.data) {
                    Ok(Value::Object(m)) => m,
                    _ => {
                        problems.push(format!("row data is not a JSON object: {}", r.data));
                        Map::new()
                    }
                };
                placed.entry(r.bucket.to_string()).or_default().push(ActualRow {
                    table: r.table.to_string(),
                    id: r.id.to_string(),
                    data,
                });
            }
            for e in evaluation.errors {
                row_errors.push((table.name.clone(), row_id.clone(), e.message, false));
            }
            let mut entries = Vec::new();
            let mut errors = Vec::new();
            rules.evaluate_parameter_row(&plan, &values, &mut entries, &mut errors);
            for entry in entries {
                index.entry(entry.lookup.key()).or_default().push(entry.values);
            }
            for e in errors {
                row_errors.push((table.name.clone(), row_id.clone(), e.message, true));
            }
        }
    }

    let mut request = ConnectionRequest::new(&case.auth.jwt, &case.auth.parameters);
    request.include_defaults = case.auth.include_defaults.unwrap_or(true);
    request.subscriptions = case
        .auth
        .subscriptions
        .iter()
        .map(|s| StreamSubscription {
            stream: s.stream.clone(),
            parameters: s.parameters.clone(),
            override_priority: s.priority.and_then(priority_from_number),
        })
        .collect();
    let resolved = rules
        .resolve_buckets(&request, |lookups| -> Result<_, std::convert::Infallible> {
            Ok(lookups
                .iter()
                .map(|l| index.get(&l.key()).cloned().unwrap_or_default())
                .collect())
        })
        .unwrap_or_else(|never| match never {});

    if let Some(expected) = &case.expected.buckets {
        for e in expected {
            match resolved.iter().find(|b| b.bucket.as_str() == e.bucket) {
                None => problems.push(format!("missing bucket {}", e.bucket)),
                Some(b) => {
                    if let Some(def) = &e.definition
                        && b.definition.as_ref() != def
                    {
                        problems.push(format!(
                            "bucket {}: definition {} != expected {}",
                            e.bucket, b.definition, def
                        ));
                    }
                    if let Some(p) = e.priority
                        && b.priority.get() != p
                    {
                        problems.push(format!(
                            "bucket {}: priority {} != expected {}",
                            e.bucket,
                            b.priority.get(),
                            p
                        ));
                    }
                }
            }
            compare_rows(
                &e.bucket,
                &e.rows,
                placed.get(&e.bucket).map(Vec::as_slice).unwrap_or_default(),
                &mut problems,
            );
        }
        for b in &resolved {
            if !expected.iter().any(|e| e.bucket == b.bucket.as_str()) {
                problems.push(format!(
                    "unexpected bucket {} (definition {})",
                    b.bucket, b.definition
                ));
            }
        }
    }
    if let Some(expected) = &case.expected.other_buckets {
        let mut others: Vec<&String> = placed
            .keys()
            .filter(|k| !resolved.iter().any(|b| b.bucket.as_str() == k.as_str()))
            .collect();
        others.sort();
        for e in expected {
            if !others.iter().any(|o| **o == e.bucket) {
                problems.push(format!("missing other bucket {}", e.bucket));
            }
            compare_rows(
                &e.bucket,
                &e.rows,
                placed.get(&e.bucket).map(Vec::as_slice).unwrap_or_default(),
                &mut problems,
            );
        }
        for o in others {
            if !expected.iter().any(|e| &e.bucket == o) {
                problems.push(format!("unexpected other bucket {o}"));
            }
        }
    }
    let expected_errors = case.expected.row_errors.as_deref().unwrap_or_default();
    let mut unmatched: Vec<&(String, String, String, bool)> = row_errors.iter().collect();
    for e in expected_errors {
        let is_parameter = e.kind.as_deref() == Some("parameter");
        match unmatched.iter().position(|(t, id, message, param)| {
            *t == e.table && *id == e.row_id && message.contains(&e.error) && *param == is_parameter
        }) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => problems.push(format!(
                "missing row error {}/{}: {:?}",
                e.table, e.row_id, e.error
            )),
        }
    }
    for (t, id, message, _) in unmatched {
        problems.push(format!("unexpected row error {t}/{id}: {message:?}"));
    }
    finish(problems, &result.diagnostics)
}

fn priority_from_number(p: f64) -> Option<u8> {
    (p.fract() == 0.0 && (0.0..=3.0).contains(&p)).then(|| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let p = p as u8;
        p
    })
}

fn finish(problems: Vec<String>, diagnostics: &[crate::Diagnostic]) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut out = String::new();
    for p in &problems {
        let _ = writeln!(out, "  - {p}");
    }
    if !diagnostics.is_empty() {
        let _ = writeln!(out, "  diagnostics:");
        for d in diagnostics {
            let _ = writeln!(out, "    {d}");
        }
    }
    Err(out)
}

/// Compares a bucket's rows as multisets; `data` as JSON with the expected SQLite types.
fn compare_rows(bucket: &str, expected: &[ExpectedRow], actual: &[ActualRow], problems: &mut Vec<String>) {
    let mut remaining: Vec<&ActualRow> = actual.iter().collect();
    for e in expected {
        match remaining
            .iter()
            .position(|a| a.table == e.table && a.id == e.id && data_matches(e, &a.data))
        {
            Some(i) => {
                remaining.remove(i);
            }
            None => {
                let near = remaining.iter().find(|a| a.table == e.table && a.id == e.id);
                problems.push(match near {
                    Some(a) => format!(
                        "bucket {bucket}: row {}/{}: data {} != expected {} (types {})",
                        e.table,
                        e.id,
                        Value::Object(a.data.clone()),
                        Value::Object(e.data.clone()),
                        Value::Object(e.types.clone())
                    ),
                    None => format!(
                        "bucket {bucket}: missing row {}/{} {}",
                        e.table,
                        e.id,
                        Value::Object(e.data.clone())
                    ),
                });
            }
        }
    }
    for a in remaining {
        problems.push(format!(
            "bucket {bucket}: unexpected row {}/{} {}",
            a.table,
            a.id,
            Value::Object(a.data.clone())
        ));
    }
}

fn data_matches(expected: &ExpectedRow, actual: &Map<String, Value>) -> bool {
    if expected.data.len() != actual.len() {
        return false;
    }
    expected.data.iter().all(|(k, ev)| {
        let Some(av) = actual.get(k) else { return false };
        let ty = expected.types.get(k).and_then(Value::as_str);
        match (ty, ev, av) {
            (Some("integer"), Value::Number(e), Value::Number(a)) => {
                !a.is_f64() && (e.as_i64() == a.as_i64() && e.as_u64() == a.as_u64())
            }
            (Some("real"), Value::Number(e), Value::Number(a)) => a.is_f64() && e.as_f64() == a.as_f64(),
            (Some("null"), Value::Null, Value::Null) => true,
            (Some("text"), Value::String(e), Value::String(a)) => e == a,
            (None, e, a) => e == a,
            _ => false,
        }
    })
}

/// Reads a JSON-lines case file; a line that cannot be read becomes an `Err` entry with its line number.
pub fn read_cases(text: &str) -> Vec<Result<Case, String>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Case>(l).map_err(|e| format!("line {}: cannot read case: {e}", i + 1))
        })
        .collect()
}
