#!/usr/bin/env bash
# Installs the syncgate Postgres extension (pg-ext/) into the PostgreSQL whose pg_config is given
# (default: the system PostgreSQL 15): `cargo pgrx install --release`, which builds syncgate.so and
# writes the control file, the generated install script of this version and the upgrade scripts
# pg-ext/sql/syncgate--OLD--NEW.sql; then the install scripts of earlier releases
# (pg-ext/sql/syncgate--OLD.sql), which pgrx does not copy, so `CREATE EXTENSION syncgate VERSION 'OLD'`
# works too. Needs write access to the server's lib and share directories (root on Debian).
set -euo pipefail
PG_CONFIG=${1:-/usr/lib/postgresql/15/bin/pg_config}
cd "$(dirname "$0")/../pg-ext"

cargo pgrx install --release --pg-config "$PG_CONFIG"
bash ../scripts/pg-ext-copy-release-scripts.sh "$PG_CONFIG"
