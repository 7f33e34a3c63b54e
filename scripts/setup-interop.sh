#!/usr/bin/env bash
# Installs the npm packages of the interop test (tests/interop: the official @powersync/node client, better-sqlite3
# compiled from source, pg) with `npm ci` from the committed package-lock.json. Needs node 20+ and npm, and g++ and
# make for better-sqlite3. Idempotent: skips when node_modules matches the lock file and the node version.
# Without node/npm it only prints a note (the interop test then skips), unless SYNCGATE_REQUIRE_INTEROP is set.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ -n "${SYNCGATE_REQUIRE_INTEROP:-}" ]; then
    echo "setup-interop: node and npm are required (SYNCGATE_REQUIRE_INTEROP is set)" >&2
    exit 1
  fi
  echo "setup-interop: no node/npm: the interop test will be skipped"
  exit 0
fi

stamp="node_modules/.syncgate-stamp"
want="$(node --version) $(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup-interop: node_modules up to date"
  exit 0
fi
echo "setup-interop: npm ci in tests/interop (node $(node --version), npm $(npm --version))"
t0=$(date +%s)
npm ci --no-audit --no-fund --loglevel=error
# better-sqlite3 must have been built (its install script compiles it when no prebuilt binary is reachable).
node -e "new (require('better-sqlite3'))(':memory:').close()"
echo "$want" > "$stamp"
echo "setup-interop: npm ci took $(( $(date +%s) - t0 ))s"
