//! `syncgate-client`: sync a local SQLite file with a PowerSync-compatible service, and query it.
//! See docs/client.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use syncgate_client::{
    BackendConnector, ClientError, Credentials, CrudEntry, LocalDatabase, Schema, SyncDriver, SyncOptions,
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
    },
    /// Run SQL and print the rows as one JSON array of objects on stdout.
    Query {
        #[arg(long)]
        db: PathBuf,
        sql: String,
    },
}

/// Fixed credentials from the command line; a 401 cannot be cured by refetching them.
struct StaticConnector {
    credentials: Credentials,
}

impl BackendConnector for StaticConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.credentials.clone())
    }

    async fn upload_data(&self, _entries: Vec<CrudEntry>) -> Result<(), ClientError> {
        Err(ClientError::Connector(
            "uploads are not supported by `syncgate-client sync` yet".to_owned(),
        ))
    }
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
                retry_delay: Duration::from_millis(retry_delay_ms),
                stop_after_first_sync: once,
                max_consecutive_failures: max_failures.or(once.then_some(5)),
                ..SyncOptions::default()
            };
            let connector = StaticConnector {
                credentials: Credentials { endpoint, token },
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut driver = SyncDriver::new(database, connector, options);
            runtime.block_on(driver.run())?;
            tracing::info!("first checkpoint applied");
            Ok(())
        }
        Command::Query { db, sql } => {
            if !db.exists() {
                anyhow::bail!("{} does not exist", db.display());
            }
            let database = LocalDatabase::open(&db).with_context(|| format!("opening {}", db.display()))?;
            let rows = database.query_json(&sql)?;
            println!(
                "{}",
                serde_json::Value::Array(rows.into_iter().map(serde_json::Value::Object).collect())
            );
            Ok(())
        }
    }
}
