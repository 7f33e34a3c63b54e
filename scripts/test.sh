#!/usr/bin/env bash
# The test command: unit and integration tests (real PostgreSQL clusters started by the tests),
# then the shared sync-rules cases through the CLI. The interop test (official @powersync/node client against
# the gateway) needs the npm packages that scripts/setup-interop.sh installs; see docs/interop.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-interop.sh
cargo test --workspace --all-targets
cargo run --quiet -- rules test-cases testdata/sync-rules-cases.jsonl
