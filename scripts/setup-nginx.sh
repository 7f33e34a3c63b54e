#!/usr/bin/env bash
# Installs nginx for the load-balancer test (gateway/tests/integration/load_balancer.rs), as root on Debian:
# `nginx-light` (~1 MB; the install took 5 s on the development machine). Not part of setup.sh: only that
# one test needs it; without it the test is skipped (unless SYNCGATE_REQUIRE_NGINX=1, as in CI).
# The test runs its own nginx on a free port with the repository's config; the package's own service
# (port 80, default site) is not needed. Idempotent: a second run only checks.
set -euo pipefail

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-nginx: nginx is missing (run as root, or: sudo apt-get install -y nginx-light)" >&2
    exit 1
  fi
  echo "setup-nginx: installing nginx-light"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light
  # Where the install started the package's service (no policy-rc.d forbidding it), stop it again.
  /usr/sbin/nginx -s quit 2>/dev/null || true
fi
echo "setup-nginx: ok ($(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1))"
