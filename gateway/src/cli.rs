//! Command-line entry points.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, StorageConfig};
use crate::storage::{ConfiguredStorage, PostgresStorage};
use crate::{auth, compact_cmd, config_cmd, dev, inspect, rule_suite, rules_cmd, serve};

#[derive(Parser)]
#[command(
    name = "syncgate",
    version,
    about = "Postgres ⇄ SQLite sync gateway (PowerSync-compatible)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo todo app locally: a persistent Postgres cluster in the project folder (or
    /// --database-url) with sql/demo/, the gateway, and a demo backend for uploads; prints tokens, URLs
    /// and a client command. Ctrl-C stops everything. See docs/dev.md.
    Dev {
        /// The project folder: Postgres data, config, development key, storage. Reused by later runs.
        #[arg(long, default_value = ".syncgate-dev")]
        dir: PathBuf,
        /// Use this Postgres (wal_level=logical) instead of a local cluster; the demo schema and data
        /// are loaded only if its tables are missing.
        #[arg(long)]
        database_url: Option<String>,
        /// The sync API's port (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The demo backend's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8081)]
        backend_port: u16,
        /// Sync --user once with the Rust client, print a summary, stop everything and exit.
        #[arg(long)]
        exit_after_ready: bool,
        /// The user --exit-after-ready syncs.
        #[arg(long, default_value = "alice")]
        user: String,
        /// Only write the project folder's files (config for --port, key, rules) and load the demo if
        /// missing, then exit (docker-compose.yml's init step).
        #[arg(long)]
        config_only: bool,
        /// Keep the bucket storage in this Postgres database (not the demo's own database) instead of
        /// the project folder's SQLite file.
        #[arg(long)]
        storage_url: Option<String>,
    },
    /// The demo backend alone (as `syncgate dev` runs it): POST /upload applies client upload batches
    /// to Postgres, for tokens the config's client_auth accepts. See docs/dev.md.
    DevBackend {
        /// The gateway config whose client_auth checks the tokens.
        #[arg(long)]
        config: PathBuf,
        /// The Postgres to write to.
        #[arg(long)]
        database_url: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
    },
    /// Work with sync rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Work with the gateway's config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Replicate the source database into bucket storage with the configured sync rules, until
    /// SIGINT/SIGTERM. SIGHUP re-reads the config's sync rules (a change builds a new version in the
    /// background and switches to it once caught up). Logs go to stderr; RUST_LOG sets the level.
    ///
    /// Several `serve` processes with the same Postgres bucket storage form a cluster: the one holding
    /// the replication lease replicates, all serve clients (docs/deployment.md, "Several gateways").
    Serve {
        /// The config file (PowerSync `powersync.yaml` layout; see docs/config.md).
        #[arg(long)]
        config: PathBuf,
        /// `all`: serve the sync API and replicate while holding the replication lease; `api`: serve
        /// the sync API only; `replicator`: replicate while holding the lease, answering only probes
        /// and /metrics on the port. Roles other than `all` need Postgres bucket storage.
        #[arg(long, value_enum, default_value_t = serve::Role::All)]
        role: serve::Role,
    },
    /// Print what a user would sync at the latest checkpoint, as JSON.
    ///
    /// Lists the user's buckets with priority, checksum, op count and net rows. Reads the config's
    /// storage (never creates it) and resolves buckets with the rules of the active version, not the
    /// rules file. Exits 1 when replication has not published a checkpoint yet.
    Inspect {
        /// The config file (its `storage.path` is read; see docs/config.md).
        #[arg(long)]
        config: PathBuf,
        /// The user id: the token's `sub` claim.
        #[arg(long)]
        sub: String,
        /// Further token claims as a JSON object, e.g. '{"parameters":{"team":"t1"}}'; `--sub` wins
        /// over a `sub` here.
        #[arg(long)]
        claims: Option<String>,
        /// Client parameters as a JSON object.
        #[arg(long, default_value = "{}")]
        parameters: String,
    },
    /// Compact the active version's buckets up to the latest checkpoint.
    ///
    /// Superseded ops become MOVE and each bucket's leading run of REMOVE/MOVE/CLEAR one CLEAR;
    /// checksums do not change. Prints one line of stats.
    Compact {
        /// The config file (its `storage.path` is compacted).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a development token the gateway accepts, signed with the config's shared secret.
    ///
    /// Uses the first `oct` key of `client_auth.jwks` (its kid and alg) or else
    /// `client_auth.supabase_jwt_secret`; `aud` is the first `client_auth.audience` (`authenticated`
    /// for Supabase). Exits 1 when no shared secret is configured.
    Token {
        /// The config file (its `client_auth` is read).
        #[arg(long)]
        config: PathBuf,
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Further claims as a JSON object, e.g. '{"parameters":{"team":"t1"}}'; `sub`, `iat` and
        /// `exp` are always set by the command.
        #[arg(long)]
        claims: Option<String>,
        /// Validity: a whole number with s, m, h or d (at most the configured maximum lifetime).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load a config file and compile its sync rules; prints warnings, diagnostics and a summary,
    /// exits 1 on any error.
    Check {
        /// The config file (PowerSync `powersync.yaml` layout; see docs/config.md).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check a sync rules file; prints `FILE:LINE:COL: error|warning: message` and exits 1 on errors.
    Validate {
        /// The sync rules YAML file.
        file: PathBuf,
    },
    /// Run sync-rules test cases (JSON lines, testdata/README.md format); exits 1 on any failure.
    TestCases {
        /// Case files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the id of every case, not only the failing ones.
        #[arg(long)]
        verbose: bool,
    },
    /// Run sync-rules suites (sqllogictest files, docs/rule-suites.md) end to end: one throwaway
    /// Postgres 15 for the call, a fresh database and an in-process gateway per suite, and a real
    /// client database per user. Prints one line per suite, failure reports and a summary; exits 1
    /// unless every suite passes.
    Test {
        /// Suite files (`*.slt`).
        #[arg(required = true)]
        suites: Vec<PathBuf>,
        /// Use this sync rules file for every suite instead of the suites' `# rules:` lines.
        #[arg(long)]
        rules: Option<PathBuf>,
    },
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Rules(RulesCommand::Validate { file }) => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            Ok(rules_cmd::validate(&file.display().to_string(), &text))
        }
        Command::Rules(RulesCommand::TestCases { files, verbose }) => rules_cmd::test_cases(&files, verbose),
        Command::Rules(RulesCommand::Test { suites, rules }) => {
            rule_suites_command(&suites, rules.as_deref())
        }
        Command::Config(ConfigCommand::Check { config }) => config_cmd::check(&config),
        Command::Serve { config, role } => serve_command(config, role),
        Command::Dev {
            dir,
            database_url,
            port,
            backend_port,
            exit_after_ready,
            user,
            config_only,
            storage_url,
        } => dev_command(dev::DevOptions {
            dir,
            database_url,
            storage_url,
            port,
            backend_port,
            exit_after_ready,
            config_only,
            user,
        }),
        Command::DevBackend {
            config,
            database_url,
            listen,
        } => dev_backend_command(&config, database_url, listen),
        Command::Inspect {
            config,
            sub,
            claims,
            parameters,
        } => {
            let mut payload = match claims {
                Some(text) => json_object("--claims", &text)?,
                None => serde_json::Map::new(),
            };
            payload.insert("sub".into(), serde_json::Value::String(sub));
            let parameters = json_object("--parameters", &parameters)?;
            let storage = configured_storage(&config)?;
            let inspection = inspect::inspect(
                &storage,
                &serde_json::Value::Object(payload),
                &serde_json::Value::Object(parameters),
            )?;
            println!("{}", serde_json::to_string_pretty(&inspection)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            config,
            sub,
            claims,
            ttl,
        } => {
            let claims = match claims {
                Some(text) => json_object("--claims", &text)?,
                None => serde_json::Map::new(),
            };
            let loaded = Config::load(&config)?;
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            let ttl = auth::parse_ttl(&ttl)?;
            let minted = auth::mint_token(
                &loaded.config.client_auth,
                &sub,
                claims,
                ttl,
                std::time::SystemTime::now(),
            )?;
            println!("{}", minted.token);
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact { config } => {
            let storage = configured_storage(&config)?;
            let (version, stats) = compact_cmd::compact_active(&storage)?;
            println!("{}", compact_cmd::summary(version, &stats));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The storage of a config (an existing SQLite file, or the Postgres storage); config warnings go to
/// stderr so stdout stays machine-readable.
fn configured_storage(config: &std::path::Path) -> anyhow::Result<ConfiguredStorage> {
    let loaded = Config::load(config)?;
    for warning in &loaded.warnings {
        eprintln!("{warning}");
    }
    Ok(match loaded.config.storage {
        StorageConfig::Sqlite { path } => ConfiguredStorage::Sqlite(inspect::open_existing(&path)?),
        StorageConfig::Postgres(settings) => ConfiguredStorage::Postgres(PostgresStorage::open(&settings)?),
    })
}

fn json_object(flag: &str, text: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON"))? {
        serde_json::Value::Object(map) => Ok(map),
        _ => anyhow::bail!("{flag} must be a JSON object"),
    }
}

fn init_tracing() {
    // pg_walstream logs every status update at info: only its warnings are news. warp logs a client
    // closing a long-lived stream mid-body (every sync stream ends that way) as an error: not news.
    init_tracing_with("info,pg_walstream=warn,warp::server=off");
}

/// Logs to stderr at `default_filter` unless RUST_LOG says otherwise.
fn init_tracing_with(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // A second init (tests calling run twice) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: logs redirected to a file or captured by a test stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// `SYNCGATE_SNAPSHOT_CHUNK_ROWS`: rows per initial-snapshot chunk (one storage commit each); unset or
/// empty keeps the default.
fn snapshot_chunk_rows() -> anyhow::Result<Option<usize>> {
    match std::env::var("SYNCGATE_SNAPSHOT_CHUNK_ROWS") {
        Ok(text) if !text.is_empty() => match text.parse::<usize>() {
            Ok(rows) if rows > 0 => Ok(Some(rows)),
            _ => anyhow::bail!("SYNCGATE_SNAPSHOT_CHUNK_ROWS must be a positive integer, not {text:?}"),
        },
        _ => Ok(None),
    }
}

fn rule_suites_command(suites: &[PathBuf], rules: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    // The embedded gateways' routine logs would bury the suites' results: warnings and errors only.
    init_tracing_with("warn,pg_walstream=warn,warp::server=off,syncgate_client=error");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let passed = runtime.block_on(async {
        let mut stdout = std::io::stdout();
        rule_suite::run_suites(suites, rules, &mut stdout).await
    })?;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn serve_command(config: PathBuf, role: serve::Role) -> anyhow::Result<ExitCode> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown_rx = serve::shutdown_on_stop_signal();
        let mut options = serve::ServeOptions {
            role,
            ..serve::ServeOptions::default()
        };
        if let Some(rows) = snapshot_chunk_rows()? {
            options.replicator.snapshot_chunk_rows = rows;
        }
        match serve::serve(config, options, shutdown_rx).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                tracing::error!("{error:#}");
                eprintln!("syncgate: {error:#}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

fn dev_command(options: dev::DevOptions) -> anyhow::Result<ExitCode> {
    // The gateway's routine logs would bury dev's own progress lines: warnings and errors only.
    init_tracing_with("warn,pg_walstream=warn,warp::server=off,syncgate_client=warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match runtime.block_on(dev::run(options)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("syncgate dev: {error:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn dev_backend_command(
    config: &std::path::Path,
    database_url: String,
    listen: std::net::SocketAddr,
) -> anyhow::Result<ExitCode> {
    init_tracing();
    let loaded = Config::load(config)?;
    let authenticator = auth::Authenticator::new(&loaded.config.client_auth)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown_rx = serve::shutdown_on_stop_signal();
        let listener = dev::backend::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(%listen, "demo backend: POST /upload");
        dev::backend::DemoBackend::new(database_url, authenticator)
            .serve(listener, shutdown_rx)
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}
