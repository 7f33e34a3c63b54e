#!/usr/bin/env bash
# Installs headless Chromium and chromedriver for the dashboard's browser test
# (gateway/tests/integration/browser.rs), as root on Debian. Not part of setup.sh: about 100 MB that
# only that one test needs; without them it is skipped (unless SYNCGATE_REQUIRE_BROWSER=1, as in CI).
# Idempotent: a second run only checks.
set -euo pipefail

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-browser: missing packages: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "setup-browser: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
echo "setup-browser: ok ($(chromium --version 2>/dev/null || echo 'chromium version unknown'))"
