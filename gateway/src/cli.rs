//! Command-line entry points.
use clap::{Parser, Subcommand};

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
}

#[derive(Subcommand)]
enum RulesCommand {}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Rules(cmd) => match cmd {},
    }
}
