//! The official PowerSync client's side of the tests that run it next to syncgate: the node scripts in
//! tests/interop/ (`@powersync/node` pinned in its package.json, installed by scripts/setup-interop.sh).
//!
//! Without the npm packages such a test is skipped with a message, unless `SYNCGATE_REQUIRE_INTEROP` is
//! set (CI sets it): then it fails, so a broken setup cannot pass as a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// tests/interop/ of the workspace.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop")
}

/// Whether tests of the official client must run rather than skip when its packages are missing.
pub fn required() -> bool {
    std::env::var_os("SYNCGATE_REQUIRE_INTEROP").is_some_and(|v| !v.is_empty())
}

/// Whether `@powersync/node` is installed. When it is not: panics if [`required`], else prints why `test`
/// is skipped and returns false.
pub fn official_client_available(test: &str) -> bool {
    let dir = interop_dir();
    if dir.join("node_modules/@powersync/node").is_dir() {
        return true;
    }
    assert!(
        !required(),
        "SYNCGATE_REQUIRE_INTEROP is set but {}/node_modules is missing: run `bash scripts/setup-interop.sh`",
        dir.display()
    );
    eprintln!(
        "SKIPPED {test}: {}/node_modules is missing (run `bash scripts/setup-interop.sh`; \
         set SYNCGATE_REQUIRE_INTEROP=1 to make this a failure)",
        dir.display()
    );
    false
}

/// `node <script>` run in tests/interop/ (the caller adds arguments and stdio).
pub fn node(script: &str) -> Command {
    let mut command = Command::new("node");
    command.arg(script).current_dir(interop_dir());
    command
}
