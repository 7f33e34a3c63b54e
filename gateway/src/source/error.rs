//! Errors from the source side, classified so the replicator can choose a retry policy.

/// What the caller should do about a [`SourceError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection dropped, server restarting, slot briefly busy: reconnect with backoff.
    Retryable,
    /// The database is not set up for syncgate (settings, privileges, publication, keys). Retrying
    /// does not help until an operator acts; the message says what to do.
    Configuration,
    /// A bug or protocol violation (ours or the server's): stop and report.
    Fatal,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Misconfiguration found by the up-front checks or reported by the server.
    #[error("{0}")]
    Configuration(String),

    #[error("replication connection: {message}")]
    Replication { message: String, retryable: bool },

    /// The server's message is part of the text (tokio-postgres shows only "db error" and keeps the
    /// detail in its source), so logs and `{error}` alone say what went wrong.
    #[error("source query failed ({context}): {}", with_causes(error))]
    Query {
        context: String,
        error: tokio_postgres::Error,
    },

    /// A pgoutput or plugin message we cannot interpret (for example a change for a relation never
    /// described).
    #[error("replication stream protocol: {0}")]
    Protocol(String),

    /// The API was used out of order (for example `next` before `start`).
    #[error("replication client misuse: {0}")]
    Usage(String),
}

impl SourceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Configuration(_) => ErrorKind::Configuration,
            SourceError::Replication { retryable: true, .. } => ErrorKind::Retryable,
            SourceError::Replication { retryable: false, .. } => ErrorKind::Fatal,
            SourceError::Query { error, .. } => classify_pg_error(error),
            SourceError::Protocol(_) | SourceError::Usage(_) => ErrorKind::Fatal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }

    pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
        let context = context.into();
        move |error| SourceError::Query { context, error }
    }
}

/// An error and its causes, `: `-separated, each cause only when it adds text.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let more = next.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = next.source();
    }
    text
}

/// Connection-level failures and server shutdowns are worth retrying; privilege and missing-object
/// errors need an operator; anything else is treated as a bug.
fn classify_pg_error(error: &tokio_postgres::Error) -> ErrorKind {
    let Some(db) = error.as_db_error() else {
        // No SQLSTATE: the connection itself failed or closed.
        return ErrorKind::Retryable;
    };
    let code = db.code().code();
    match &code[..2] {
        // connection exception, insufficient resources, operator intervention
        "08" | "53" | "57" => ErrorKind::Retryable,
        // serialization failure / deadlock
        "40" => ErrorKind::Retryable,
        // insufficient privilege, undefined object/table, invalid authorization
        "42" | "28" | "55" => ErrorKind::Configuration,
        _ => ErrorKind::Fatal,
    }
}

impl From<pg_walstream::ReplicationError> for SourceError {
    fn from(error: pg_walstream::ReplicationError) -> SourceError {
        let message = error.to_string();
        // After a crash the old walsender may hold the slot until it notices its client is gone.
        if message.contains("is active for PID") {
            return SourceError::Replication {
                retryable: true,
                message,
            };
        }
        // Server-reported configuration problems are worth a specific category: retrying does not help.
        let configuration = [
            "wal_level",
            "must be superuser or replication role",
            "permission denied",
            "does not exist",
            "already exists",
        ];
        if configuration.iter().any(|needle| message.contains(needle)) {
            return SourceError::Configuration(message);
        }
        SourceError::Replication {
            retryable: error.is_transient(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_errors_are_classified() {
        let transient: SourceError =
            pg_walstream::ReplicationError::transient_connection("reset by peer").into();
        assert_eq!(transient.kind(), ErrorKind::Retryable);
        let missing: SourceError =
            pg_walstream::ReplicationError::protocol("replication slot \"s\" does not exist").into();
        assert_eq!(missing.kind(), ErrorKind::Configuration);
        assert_eq!(SourceError::Protocol("x".into()).kind(), ErrorKind::Fatal);
        let busy: SourceError =
            pg_walstream::ReplicationError::protocol("replication slot \"s\" is active for PID 42").into();
        assert_eq!(busy.kind(), ErrorKind::Retryable);
    }
}
