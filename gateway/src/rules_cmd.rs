//! `syncgate rules …`: validate a rules file, run rule test cases.

use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;

use syncgate_rules::cases::{read_cases, run_case};
use syncgate_rules::{CompileOptions, compile};

/// Prints diagnostics as `FILE:LINE:COL: severity: message`; exit code 1 when there are errors.
pub fn validate(file_name: &str, text: &str) -> ExitCode {
    let result = compile(text, &CompileOptions::default());
    let mut stdout = std::io::stdout().lock();
    for d in &result.diagnostics {
        let _ = writeln!(
            stdout,
            "{file_name}:{}:{}: {}: {}",
            d.line,
            d.column,
            d.severity.as_str(),
            d.message
        );
    }
    let errors = result.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = result.diagnostics.len() - errors;
    if errors > 0 {
        eprintln!("{file_name}: {errors} error(s), {warnings} warning(s)");
        ExitCode::FAILURE
    } else {
        eprintln!("{file_name}: valid ({warnings} warning(s))");
        ExitCode::SUCCESS
    }
}

/// Runs every case of every file; a case that cannot be read or that panics counts as failed.
pub fn test_cases(files: &[PathBuf], verbose: bool) -> anyhow::Result<ExitCode> {
    let mut passed = 0usize;
    let mut failed = 0usize;
    let mut stdout = std::io::stdout().lock();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                writeln!(stdout, "FAIL {}: cannot read: {e}", file.display())?;
                failed += 1;
                continue;
            }
        };
        for case in read_cases(&text) {
            let case = match case {
                Ok(c) => c,
                Err(e) => {
                    writeln!(stdout, "FAIL {}: {e}", file.display())?;
                    failed += 1;
                    continue;
                }
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| run_case(&case)))
                .unwrap_or_else(|panic| Err(format!("  - evaluation panicked: {}", panic_message(&panic))));
            match outcome {
                Ok(()) => {
                    passed += 1;
                    if verbose {
                        writeln!(stdout, "ok   {}", case.id)?;
                    }
                }
                Err(diff) => {
                    failed += 1;
                    writeln!(stdout, "FAIL {} ({})\n{diff}", case.id, case.description)?;
                }
            }
        }
    }
    writeln!(stdout, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
