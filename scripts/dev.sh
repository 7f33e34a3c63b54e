#!/usr/bin/env bash
# The first command of the README: installs what the build and a local Postgres need (scripts/setup.sh,
# as root on a fresh Debian machine; a second run only checks), then runs `syncgate dev` with the given
# flags (docs/dev.md). With the packages present, `cargo run --release -- dev` is the same thing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release --quiet -- dev "$@"
