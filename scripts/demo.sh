#!/usr/bin/env bash
# The main job, for now: validate the demo sync rules and try them on the demo data.
# (`syncgate dev` — a local Postgres, the gateway and a demo backend — replaces this when it lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
./target/release/syncgate rules validate sql/demo/sync-rules.yaml
./target/release/syncgate rules test-cases --verbose sql/demo/sync-rules-cases.jsonl
