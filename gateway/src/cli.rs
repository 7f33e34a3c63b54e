//! Command-line entry points.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{config_cmd, rules_cmd, serve};

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
    /// Work with sync rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Work with the gateway's config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Replicate the source database into bucket storage with the configured sync rules, until
    /// SIGINT/SIGTERM. SIGHUP re-reads the config's sync rules (a change builds a new version in the
    /// background and switches to it once caught up). Logs go to stderr; RUST_LOG sets the level.
    Serve {
        /// The config file (PowerSync `powersync.yaml` layout; see docs/config.md).
        #[arg(long)]
        config: PathBuf,
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
        Command::Config(ConfigCommand::Check { config }) => config_cmd::check(&config),
        Command::Serve { config } => serve_command(config),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests calling run twice) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn serve_command(config: PathBuf) -> anyhow::Result<ExitCode> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            shutdown_tx.send_replace(true);
        });
        match serve::serve(config, serve::ServeOptions::default(), shutdown_rx).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                tracing::error!("{error:#}");
                eprintln!("syncgate: {error:#}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}
