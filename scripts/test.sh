#!/usr/bin/env bash
# The test command: unit and integration tests (real PostgreSQL clusters started by the tests),
# then the shared sync-rules cases through the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets
cargo run --quiet -- rules test-cases testdata/sync-rules-cases.jsonl
