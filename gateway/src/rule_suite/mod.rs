//! `syncgate rules test`: sync-rules suites in the sqllogictest format, run end to end.
//!
//! A suite (`*.slt`) names its sync rules and Postgres schema in its header ([`directives`]). Its
//! statements run on Postgres; `connection NAME` before a query runs it as the user NAME in that user's
//! synced client database, after the gateway and the client have caught up ([`connection`]). One
//! throwaway Postgres cluster serves every suite of a call; each suite gets a fresh database and its
//! own gateway inside this process ([`deployment`]). Format and examples: docs/rule-suites.md.

pub mod connection;
pub mod deployment;
pub mod directives;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqllogictest::{Connection, DefaultColumnType, Record, Runner};
use syncgate_pgcluster::{ClusterError, PgCluster};
use tokio::sync::Mutex as AsyncMutex;

use self::connection::{SuiteConnection, SuiteState};
use self::deployment::Deployment;
use self::directives::parse_header;

/// Why a suite could not run, or a record's SQL failed.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Directive {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("schema file {}: {message}", path.display())]
    Schema { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A record's SQL failed (the message sqllogictest compares with `statement error` patterns).
    #[error("{0}")]
    Statement(String),
    #[error("gateway: {0}")]
    Gateway(String),
    #[error("{user}'s client: {message}")]
    Sync { user: String, message: String },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Usage(String),
}

impl SuiteError {
    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> SuiteError {
        move |source| SuiteError::Io { context, source }
    }

    fn postgres(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SuiteError {
        move |source| SuiteError::Postgres { context, source }
    }
}

/// How one suite went.
#[derive(Debug)]
pub struct SuiteOutcome {
    pub path: PathBuf,
    /// `None`: passed; else the failure report (expected and actual rows, buckets).
    pub failure: Option<String>,
    pub elapsed: Duration,
}

/// Runs every suite (with `rules_override` instead of each suite's `# rules:` when given), writing one
/// line per suite and failure reports to `out`, then a summary. Returns whether all passed.
pub async fn run_suites(
    suites: &[PathBuf],
    rules_override: Option<&Path>,
    out: &mut (dyn std::io::Write + Send),
) -> std::io::Result<bool> {
    let started = Instant::now();
    let mut cluster: Option<PgCluster> = None;
    let mut outcomes = Vec::new();
    for (index, path) in suites.iter().enumerate() {
        let suite_started = Instant::now();
        let result = run_suite(&mut cluster, path, rules_override, index).await;
        let outcome = SuiteOutcome {
            path: path.clone(),
            failure: result.err(),
            elapsed: suite_started.elapsed(),
        };
        match &outcome.failure {
            None => writeln!(
                out,
                "ok   {} ({:.1} s)",
                path.display(),
                outcome.elapsed.as_secs_f64()
            )?,
            Some(report) => writeln!(out, "FAIL {}\n{report}", path.display())?,
        }
        outcomes.push(outcome);
    }
    let failed: Vec<&SuiteOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    writeln!(
        out,
        "{} passed, {} failed ({:.1} s)",
        outcomes.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    )?;
    for outcome in &failed {
        writeln!(out, "failed: {}", outcome.path.display())?;
    }
    out.flush()?;
    // The cluster stops (and its directory goes) when dropped; its drop waits for the server.
    tokio::task::block_in_place(move || drop(cluster));
    Ok(failed.is_empty())
}

/// Runs one suite; `Err` is its failure report.
async fn run_suite(
    cluster: &mut Option<PgCluster>,
    path: &Path,
    rules_override: Option<&Path>,
    index: usize,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        SuiteError::Read {
            path: path.to_owned(),
            source,
        }
        .to_string()
    })?;
    let header = parse_header(path, &text).map_err(|e| e.to_string())?;
    let rules = match (rules_override, &header.rules) {
        (Some(rules), _) => rules.to_owned(),
        (None, Some(rules)) => rules.clone(),
        (None, None) => {
            return Err(format!(
                "{}: no `# rules: FILE` line in the header, and no --rules given",
                path.display()
            ));
        }
    };
    let records = sqllogictest::parse_file::<DefaultColumnType>(path).map_err(|e| e.to_string())?;
    if let Some(loc) = records.iter().find_map(|r| match r {
        Record::Sleep { loc, .. } => Some(loc),
        _ => None,
    }) {
        return Err(format!(
            "{loc}: `sleep` is not allowed: user queries wait for the gateway and the client to catch up"
        ));
    }
    if cluster.is_none() {
        *cluster = Some(tokio::task::block_in_place(PgCluster::start).map_err(|e| e.to_string())?);
    }
    let cluster = cluster.as_ref().expect("started above");
    let slot_prefix = format!("syncgate_suite{index}_");
    let deployment = Deployment::start(cluster, &header.schema, &rules, &slot_prefix)
        .await
        .map_err(|e| e.to_string())?;
    let state = Arc::new(SuiteState {
        client_dir: deployment.work_dir.path().to_owned(),
        deployment: AsyncMutex::new(deployment),
        users: header.users,
        next_connection: Mutex::new(None),
        last_user_query: Mutex::new(None),
    });
    let result = run_records(&state, records).await;
    let state = Arc::into_inner(state).ok_or("a suite connection outlived its runner")?;
    let stopped = state.deployment.into_inner().stop().await;
    result?;
    stopped.map_err(|e| e.to_string())
}

/// Runs the records in order; stops at the first failure, whose report it returns.
async fn run_records(state: &Arc<SuiteState>, records: Vec<Record<DefaultColumnType>>) -> Result<(), String> {
    let mut runner = Runner::new(|| {
        let state = Arc::clone(state);
        async move { SuiteConnection::open(&state) }
    });
    for record in records {
        let connection = match &record {
            Record::Statement { connection, .. }
            | Record::Query { connection, .. }
            | Record::Let { connection, .. } => Some(connection.clone()),
            _ => None,
        };
        let user = match &connection {
            Some(Connection::Named(name)) => Some(name.clone()),
            _ => None,
        };
        if let Ok(mut next) = state.next_connection.lock() {
            next.clone_from(&user);
        }
        if let Ok(mut last) = state.last_user_query.lock() {
            *last = None;
        }
        if let Err(error) = runner.run_async(record).await {
            let mut report = error.display(false).to_string();
            if let Some(annotated) = state.last_user_query.lock().ok().and_then(|last| last.clone()) {
                report.push_str(&annotated.to_string());
                report.push('\n');
            }
            runner.shutdown_async().await;
            return Err(report);
        }
    }
    runner.shutdown_async().await;
    Ok(())
}
