//! `syncgate-client`: sync a local SQLite file with a PowerSync-compatible service, and query it.
//! See docs/client.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use syncgate_client::{
    BackendConnector, ClientError, ConnectionMethod, Credentials, CrudTransaction, LocalDatabase, Schema,
    SyncDriver, SyncOptions, sync::SyncStatus,
};

#[derive(Parser)]
#[command(
    name = "syncgate-client",
    about = "A local SQLite database kept in sync with Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sync the database file with the service (progress on stderr).
    Sync {
        /// Base URL of the service, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        endpoint: String,
        /// The JWT to authenticate with.
        #[arg(long)]
        token: String,
        /// The local database file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// The schema (JSON or YAML); stored in the database. Optional once stored.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Exit 0 once the first complete checkpoint is applied; non-zero on failure.
        #[arg(long)]
        once: bool,
        /// Delay before reconnecting, doubled per consecutive failure.
        #[arg(long, default_value_t = 5000)]
        retry_delay_ms: u64,
        /// Give up after this many consecutive failures (default: 5 with --once, never without).
        #[arg(long)]
        max_failures: Option<u32>,
        /// Upload local writes by POSTing each queued transaction as JSON to this URL. Without it they stay
        /// queued (and hold back downloads).
        #[arg(long)]
        backend: Option<String>,
        /// How to reach the sync stream: http (NDJSON) or websocket (RSocket, as the PowerSync SDKs'
        /// `web-socket` connection method).
        #[arg(long, default_value = "http")]
        transport: ConnectionMethod,
    },
    /// Upload queued local writes to --backend, then sync until their write checkpoint is applied.
    Upload {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        db: PathBuf,
        /// Each queued transaction is POSTed here as JSON (see docs/client.md).
        #[arg(long)]
        backend: String,
        /// Delay before retrying a failed upload or reconnecting, doubled per consecutive failure.
        #[arg(long, default_value_t = 5000)]
        retry_delay_ms: u64,
        /// Give up after this many consecutive failed sync attempts (uploads retry regardless).
        #[arg(long, default_value_t = 5)]
        max_failures: u32,
        /// How to reach the sync stream: http (NDJSON) or websocket (RSocket, as the PowerSync SDKs'
        /// `web-socket` connection method).
        #[arg(long, default_value = "http")]
        transport: ConnectionMethod,
    },
    /// Print the result of SQL as one JSON array line, then a new line each time the result changes.
    Watch {
        #[arg(long)]
        db: PathBuf,
        sql: String,
        /// How often to check the database for commits.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// Run SQL as one local write transaction: changes go to the tables and the upload queue.
    Exec {
        #[arg(long)]
        db: PathBuf,
        sql: String,
    },
    /// Run SQL and print the rows as one JSON array of objects on stdout.
    Query {
        #[arg(long)]
        db: PathBuf,
        sql: String,
    },
}

/// Fixed credentials from the command line (a 401 cannot be cured by refetching them), and uploads as
/// JSON POSTs to a backend URL.
struct CliConnector {
    credentials: Credentials,
    backend: Option<String>,
    http: reqwest::Client,
}

impl BackendConnector for CliConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.credentials.clone())
    }

    async fn upload_data(&self, transaction: &CrudTransaction) -> Result<(), ClientError> {
        let Some(backend) = &self.backend else {
            return Err(ClientError::Connector(
                "no --backend given: local writes stay queued".to_owned(),
            ));
        };
        let body = serde_json::json!({
            "transaction_id": transaction.transaction_id,
            "operations": transaction.entries.iter().map(|e| &e.data).collect::<Vec<_>>(),
        });
        let response = self
            .http
            .post(backend)
            .header("authorization", format!("Bearer {}", self.credentials.token))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| ClientError::Connector(format!("POST {backend}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(ClientError::Connector(format!(
                "POST {backend}: HTTP {status}: {text}"
            )));
        }
        Ok(())
    }
}

/// Runs the driver until the first complete checkpoint is applied (`once`) or forever, logging its status
/// on stderr as it changes.
fn run_driver(database: LocalDatabase, connector: CliConnector, options: SyncOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut driver = SyncDriver::new(database, connector, options);
    let mut status = driver.subscribe_status();
    runtime.spawn(async move {
        let mut shown: Option<SyncStatus> = None;
        let mut shown_at = std::time::Instant::now();
        while status.changed().await.is_ok() {
            let current = status.borrow_and_update().clone();
            // Download progress alone moves once per data line: show it at most once a second.
            let progress_only = shown.as_ref().is_some_and(|shown| {
                SyncStatus {
                    downloaded_ops: current.downloaded_ops,
                    ..shown.clone()
                } == current
            });
            if progress_only && shown_at.elapsed() < PROGRESS_INTERVAL {
                continue;
            }
            log_status(&current);
            shown = Some(current);
            shown_at = std::time::Instant::now();
        }
    });
    let result = runtime.block_on(driver.run());
    log_status(&driver.subscribe_status().borrow());
    result?;
    Ok(())
}

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// One `sync status` line on stderr (docs/client.md lists the fields).
fn log_status(status: &SyncStatus) {
    let last_synced_at_ms = status.last_synced_at.and_then(|at| {
        at.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|since| u64::try_from(since.as_millis()).ok())
    });
    tracing::info!(
        connected = status.connected,
        downloading = status.downloading,
        downloaded_ops = status.downloaded_ops,
        total_ops = status.total_ops,
        applied_checkpoint = status.applied_checkpoint.map(|op| op.as_i64()),
        waiting_for_uploads = status.waiting_for_uploads,
        upload_pending = status.upload_pending,
        uploading = status.uploading,
        last_upload_error = status.last_upload_error.as_deref(),
        last_synced_at_ms,
        last_error = status.last_error.as_deref(),
        "sync status"
    );
}

fn open_existing(db: &std::path::Path) -> anyhow::Result<LocalDatabase> {
    if !db.exists() {
        anyhow::bail!("{} does not exist", db.display());
    }
    LocalDatabase::open(db).with_context(|| format!("opening {}", db.display()))
}

fn main() -> ExitCode {
    // Logs and progress always go to stderr: stdout carries only command output.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sync {
            endpoint,
            token,
            db,
            schema,
            once,
            retry_delay_ms,
            max_failures,
            backend,
            transport,
        } => {
            let mut database =
                LocalDatabase::open(&db).with_context(|| format!("opening {}", db.display()))?;
            if let Some(path) = schema {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the schema {}", path.display()))?;
                let schema =
                    Schema::from_text(&text).with_context(|| format!("schema {}", path.display()))?;
                database.set_schema(&schema)?;
            } else if database.schema()?.is_none() {
                return Err(ClientError::NoSchema.into());
            }
            let options = SyncOptions {
                connection_method: transport,
                retry_delay: Duration::from_millis(retry_delay_ms),
                stop_after_first_sync: once,
                max_consecutive_failures: max_failures.or(once.then_some(5)),
                ..SyncOptions::default()
            };
            let connector = CliConnector {
                credentials: Credentials { endpoint, token },
                backend,
                http: reqwest::Client::new(),
            };
            run_driver(database, connector, options)?;
            tracing::info!("first checkpoint applied");
            Ok(())
        }
        Command::Upload {
            endpoint,
            token,
            db,
            backend,
            retry_delay_ms,
            max_failures,
            transport,
        } => {
            let database = open_existing(&db)?;
            if database.schema()?.is_none() {
                return Err(ClientError::NoSchema.into());
            }
            // The first full checkpoint applied after the queue is non-empty is necessarily one that
            // reached the uploads' write checkpoint (the apply gate holds back all others), so "sync
            // once" is exactly "upload, then wait for the write checkpoint to be applied".
            let options = SyncOptions {
                connection_method: transport,
                retry_delay: Duration::from_millis(retry_delay_ms),
                stop_after_first_sync: true,
                max_consecutive_failures: Some(max_failures),
                ..SyncOptions::default()
            };
            let connector = CliConnector {
                credentials: Credentials { endpoint, token },
                backend: Some(backend),
                http: reqwest::Client::new(),
            };
            run_driver(database, connector, options)?;
            tracing::info!("uploads acknowledged and applied");
            Ok(())
        }
        Command::Exec { db, sql } => {
            let mut database = open_existing(&db)?;
            if database.schema()?.is_none() {
                return Err(ClientError::NoSchema.into());
            }
            let queued = database.write_transaction(|tx| {
                let count = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<i64> {
                    tx.query_row("SELECT count(*) FROM sg_crud", [], |row| row.get(0))
                };
                let before = count(tx)?;
                tx.execute_batch(&sql)?;
                Ok(count(tx)? - before)
            })?;
            tracing::info!(queued, "local write done; row changes queued for upload");
            Ok(())
        }
        Command::Watch { db, sql, interval_ms } => {
            use futures_util::StreamExt as _;
            use std::io::Write as _;
            let database = open_existing(&db)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stream = database.watch(&sql, Vec::new(), Duration::from_millis(interval_ms))?;
            runtime.block_on(async {
                let mut stream = std::pin::pin!(stream);
                let mut stdout = std::io::stdout().lock();
                while let Some(rows) = stream.next().await {
                    let rows = rows?;
                    let line =
                        serde_json::Value::Array(rows.into_iter().map(serde_json::Value::Object).collect());
                    // Flushed per line: a reader acts on each result as it comes.
                    writeln!(stdout, "{line}")?;
                    stdout.flush()?;
                }
                Ok(())
            })
        }
        Command::Query { db, sql } => {
            let database = open_existing(&db)?;
            let rows = database.query_json(&sql)?;
            println!(
                "{}",
                serde_json::Value::Array(rows.into_iter().map(serde_json::Value::Object).collect())
            );
            Ok(())
        }
    }
}
