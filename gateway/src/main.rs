//! The `syncgate` command line.
fn main() -> anyhow::Result<std::process::ExitCode> {
    syncgate::cli::run()
}
