#!/usr/bin/env bash
# The test command: unit and integration tests (real PostgreSQL clusters started by the tests),
# then the shared sync-rules cases and the rule suites (testdata/**/*.slt) through the CLI. The interop test (official @powersync/node client against
# the gateway) needs the npm packages that scripts/setup-interop.sh installs; see docs/interop.md.
# Last, the Postgres extension's tests (pg-ext/, docs/pg-ext.md): they need root, because they install the
# extension into the system PostgreSQL; SYNCGATE_PGEXT_TESTS=0 skips them (.ci/run runs them as a step of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-interop.sh
cargo test --workspace --all-targets
cargo run --quiet -- rules test-cases testdata/sync-rules-cases.jsonl
# The sync-rules suites end to end: Postgres, the gateway and a client per user (docs/rule-suites.md).
cargo run --quiet -- rules test $(find testdata -name '*.slt' | sort)
if [ "${SYNCGATE_PGEXT_TESTS:-1}" = 0 ]; then
  :
elif [ "$(id -u)" -eq 0 ]; then
  bash scripts/pg-ext-test.sh
else
  echo "test: pg-ext tests skipped (they need root): sudo bash scripts/pg-ext-test.sh" >&2
fi
