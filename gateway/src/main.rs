//! The `syncgate` command line.
fn main() -> anyhow::Result<()> {
    syncgate::cli::run()
}
