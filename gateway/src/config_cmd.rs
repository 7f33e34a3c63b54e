//! `syncgate config check`: load the config, compile its sync rules, report, exit 1 on any error.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use syncgate_rules::{CompileOptions, compile};

use crate::config::{Config, StorageConfig};

/// Prints warnings and rules diagnostics (`FILE:LINE:COL: severity: message`) and a one-line
/// summary on stdout; a config error goes to stderr. Exit code 1 on any error.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let loaded = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = &loaded.config;
    let mut stdout = std::io::stdout().lock();
    for warning in &loaded.warnings {
        writeln!(stdout, "{warning}")?;
    }
    let rules_name = config.sync_rules.display_name(&config.file);
    let result = compile(&config.sync_rules.text, &CompileOptions::default());
    for d in &result.diagnostics {
        let at = config.sync_rules.locate(&config.file, d.line, d.column);
        writeln!(stdout, "{at}: {}: {}", d.severity.as_str(), d.message)?;
    }
    let errors = result.diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        eprintln!("{rules_name}: {errors} error(s) in the sync rules");
        return Ok(ExitCode::FAILURE);
    }
    let storage = match &config.storage {
        StorageConfig::Sqlite { path } => format!("sqlite {}", path.display()),
        StorageConfig::Postgres(s) => {
            format!("postgresql {} schema {}", s.connection.display_safe(), s.schema)
        }
    };
    let connection = config.replication.connection();
    writeln!(
        stdout,
        "config ok: source {} (publication {}), storage {storage}, port {}, sync rules {rules_name}",
        connection.display_safe(),
        connection.publication,
        config.port,
    )?;
    Ok(ExitCode::SUCCESS)
}
