//! Errors raised while evaluating one row or one request (not validation diagnostics).

/// An error evaluating an expression for one row: the row is skipped by that query and the error
/// is reported (SYNC_RULES.md §3, "Errors while evaluating one row").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
}

impl EvalError {
    pub fn new(message: impl Into<String>) -> Self {
        EvalError {
            message: message.into(),
        }
    }
}
