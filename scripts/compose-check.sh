#!/usr/bin/env bash
# Validates docker-compose.yml (`docker-compose config`: syntax, service references, depends_on conditions).
# Images are not built here: this machine has no Docker daemon (docs/deployment.md). Installs Debian's
# docker-compose (v1.29, ~20 s) when missing and run as root; otherwise skips and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "compose-check: skipped: docker-compose is not installed (as root: apt-get install -y docker-compose)" >&2
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
docker-compose config --quiet
echo "compose-check: docker-compose.yml is valid ($(docker-compose version --short))"
