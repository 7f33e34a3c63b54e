#!/usr/bin/env bash
# Copies the install scripts of earlier syncgate releases (pg-ext/sql/syncgate--VERSION.sql) into the
# server's extension directory. `cargo pgrx install` copies only upgrade scripts (syncgate--A--B.sql)
# and generates the current version's install script; Postgres needs an older version's install
# script for `CREATE EXTENSION syncgate VERSION 'OLD'`.
set -euo pipefail
PG_CONFIG=${1:-/usr/lib/postgresql/15/bin/pg_config}
cd "$(dirname "$0")/../pg-ext"
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
current="syncgate--$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1).sql"
for script in sql/syncgate--*.sql; do
  name=$(basename "$script")
  # Upgrade scripts are pgrx's to copy; the current version's install script is generated.
  if [[ "$name" == syncgate--*--*.sql || "$name" == "$current" ]]; then
    continue
  fi
  install -m 644 "$script" "$extension_dir/$name"
done
