//! Checks every SQL function applies to its arguments before the rules engine sees them: NULL,
//! size, encoding, JSON shape. Problems become ERRORs with the function's name and what to do;
//! `validate_rules` reports size and encoding problems as diagnostics instead.

use pgrx::pg_sys;
use pgrx::prelude::*;
use syncgate_rules::{CompileOptions, Diagnostic, SyncRules, compile};

use crate::raw_text::RawText;

/// Largest rules text the functions accept. The gateway reads its rules file whole and sets no
/// limit of its own; real rules files are a few kilobytes, while compiling grows with the text (1 MB
/// of rules: 0.5 s in `validate_rules`), so anything bigger is refused before parsing.
pub const MAX_RULES_BYTES: usize = 1024 * 1024;

/// Why a rules text was not compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesTextProblem {
    TooLarge {
        bytes: usize,
    },
    NotUtf8 {
        byte_offset: usize,
        line: usize,
        column: usize,
    },
}

impl RulesTextProblem {
    pub fn message(&self) -> String {
        match self {
            RulesTextProblem::TooLarge { bytes } => format!(
                "the rules text is {bytes} bytes; syncgate accepts at most {MAX_RULES_BYTES} bytes (1 MiB)"
            ),
            RulesTextProblem::NotUtf8 { byte_offset, .. } => format!(
                "the rules text is not valid UTF-8 (first bad byte at offset {byte_offset}); sync rules are \
                 UTF-8 and this database's encoding is {}: use a UTF8 database",
                database_encoding()
            ),
        }
    }

    /// Where the problem is, for a diagnostic (the start for a size problem).
    pub fn position(&self) -> (usize, usize) {
        match self {
            RulesTextProblem::TooLarge { .. } => (1, 1),
            RulesTextProblem::NotUtf8 { line, column, .. } => (*line, *column),
        }
    }
}

/// The rules text as UTF-8 within the size limit. The size is checked first, without reading the text.
pub fn rules_text<'a>(rules: RawText<'a>) -> Result<&'a str, RulesTextProblem> {
    if rules.0.len() > MAX_RULES_BYTES {
        return Err(RulesTextProblem::TooLarge { bytes: rules.0.len() });
    }
    rules.to_utf8().map_err(|e| RulesTextProblem::NotUtf8 {
        byte_offset: e.byte_offset,
        line: e.line,
        column: e.column,
    })
}

fn database_encoding() -> String {
    // SAFETY: returns a pointer to a static name of the database encoding.
    let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) };
    name.to_string_lossy().into_owned()
}

/// Raises `message` as an ERROR with `code` (and an optional DETAIL).
pub fn raise(code: PgSqlErrorCode, message: String, detail: Option<String>) -> ! {
    match detail {
        Some(detail) => {
            ereport!(ERROR, code, message, detail);
        }
        None => {
            ereport!(ERROR, code, message);
        }
    }
}

/// The argument, or an ERROR naming it: NULL never means "nothing to do" here, because an empty
/// answer from `validate_rules` or `user_buckets` would read as "valid" or "no buckets".
pub fn required<T>(value: Option<T>, function: &str, argument: &str) -> T {
    value.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("syncgate.{function}: {argument} must not be NULL"),
            None,
        )
    })
}

/// A text argument as UTF-8, or an ERROR naming it.
pub fn utf8_argument<'a>(value: RawText<'a>, function: &str, argument: &str) -> &'a str {
    value.to_utf8().unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            format!(
                "syncgate.{function}: {argument} is not valid UTF-8 (first bad byte at offset {}); this \
                 database's encoding is {}: use a UTF8 database",
                e.byte_offset,
                database_encoding()
            ),
            None,
        )
    })
}

/// Compiles the rules exactly as `syncgate rules validate` does, or raises an ERROR listing every
/// diagnostic: evaluating rules that do not compile would answer for rules that cannot run.
pub fn compile_or_raise(rules: RawText<'_>, function: &str) -> SyncRules {
    let text = rules_text(rules).unwrap_or_else(|problem| {
        let code = match problem {
            RulesTextProblem::TooLarge { .. } => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            RulesTextProblem::NotUtf8 { .. } => PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        };
        raise(code, format!("syncgate.{function}: {}", problem.message()), None)
    });
    let result = compile(text, &CompileOptions::default());
    match result.rules {
        Some(rules) => rules,
        None => {
            let errors = result.diagnostics.iter().filter(|d| d.is_error()).count();
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "syncgate.{function}: the sync rules do not compile ({errors} error(s)); \
                     see syncgate.validate_rules(rules)"
                ),
                Some(diagnostics_text(&result.diagnostics)),
            )
        }
    }
}

/// One diagnostic a line, as `syncgate rules validate` prints them (without the file name).
pub fn diagnostics_text(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON argument that must be an object.
pub fn json_object<'v>(
    value: &'v serde_json::Value,
    function: &str,
    argument: &str,
) -> &'v serde_json::Map<String, serde_json::Value> {
    value.as_object().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "syncgate.{function}: {argument} must be a JSON object, not {}",
                json_kind(value)
            ),
            None,
        )
    })
}

pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
