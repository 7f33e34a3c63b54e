//! The sync-rules SQL dialect: a hand-written lexer and parser producing [`ast`] nodes with spans.
//!
//! Hand-written rather than built on the PostgreSQL grammar because the dialect accepts forms
//! Postgres rejects or reads differently (`x IN ids` without parentheses, `IN (one_expr)` as a
//! JSON array) and messages must quote the user's spelling (SYNC_RULES.md §5.5).
pub mod ast;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

pub use parser::{parse_expression, parse_statements};

/// A syntax error, with the byte span of the offending token (an empty span at the end of the input
/// when the input ended too early).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    pub span: ast::Span,
}
