//! Command-line entry points.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{config_cmd, rules_cmd};

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
    }
}
