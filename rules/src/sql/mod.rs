//! The sync-rules SQL dialect: a hand-written lexer and parser producing [`ast`] nodes with spans.
pub mod ast;
