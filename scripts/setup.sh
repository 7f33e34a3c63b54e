#!/usr/bin/env bash
# Installs the system packages syncgate's build and tests need, on a fresh Debian machine (as root).
# Idempotent: a second run only checks.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v runuser >/dev/null || need+=(util-linux)
# pg_walstream (the replication transport) links the system libpq: headers and libpq.so at build time.
[ -f /usr/include/postgresql/libpq-fe.h ] || need+=(libpq-dev)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The Debian package starts a cluster of its own; tests start their own and never use it.
  if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main'; then
    pg_ctlcluster 15 main stop 2>/dev/null || true
  fi
fi
echo "setup: ok"
