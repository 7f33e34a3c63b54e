#!/usr/bin/env bash
# Tests of the Postgres extension (pg-ext/, its own cargo workspace): `cargo pgrx test pg15` against a
# throwaway cluster. On a fresh Debian 12 as root it first installs what pgrx needs (docs/pg-ext.md):
# the server headers and libclang (apt), cargo-pgrx 0.18.1, and an unprivileged user for initdb.
# Also checks pg-ext's formatting and clippy lints and the symbols of the release library (notes/pgrx.md §11),
# installs that release library, and runs the gateway's replication tests through it
# (SYNCGATE_TEST_DECODER=syncgate). Run it last in CI: postgresql-server-dev-15 pulls the server up to its own minor version.
set -euo pipefail
cd "$(dirname "$0")/../pg-ext"

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1
TEST_USER=${SYNCGATE_PGEXT_TEST_USER:-syncgate-pgtest}

if [ "$(id -u)" -ne 0 ]; then
  echo "pg-ext-test: run as root (cargo pgrx test installs into the system PostgreSQL and runs initdb as $TEST_USER)" >&2
  exit 1
fi

need=()
[ -x "$PG_CONFIG" ] || need+=(postgresql-server-dev-15)
[ -f /usr/include/postgresql/15/server/postgres.h ] || need+=(postgresql-server-dev-15)
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need+=(libclang-dev)
command -v clang >/dev/null || need+=(clang)
command -v sudo >/dev/null || need+=(sudo)           # cargo pgrx test --runas
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)  # cargo-pgrx builds openssl-sys
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
if [ "${#need[@]}" -gt 0 ]; then
  echo "pg-ext-test: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
  # The Debian package may start a cluster of its own; the tests start theirs.
  if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main .* online'; then
    pg_ctlcluster 15 main stop || true
  fi
fi

if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
  echo "pg-ext-test: installing cargo-pgrx $PGRX_VERSION (about 5 minutes on 2 cores)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
# Only records the system pg_config in ~/.pgrx/config.toml; never let init download PostgreSQL.
cargo pgrx init --pg15 "$PG_CONFIG"

id -u "$TEST_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$TEST_USER"
pgdata=$(mktemp -d /tmp/syncgate-pgext-XXXXXX)
chown "$TEST_USER" "$pgdata"
trap 'rm -rf "$pgdata"' EXIT

cargo fmt --all -- --check
# The upgrade test creates the extension at 0.1.0: its install script must be installed too.
bash ../scripts/pg-ext-copy-release-scripts.sh "$PG_CONFIG"
# Builds and installs the extension (as root), runs initdb and postgres as $TEST_USER.
cargo pgrx test pg15 --runas "$TEST_USER" --pgdata "$pgdata/data"
cargo clippy --all-targets --features "pg15 pg_test" -- -D warnings

# Symbol isolation of the release library (notes/pgrx.md §11): it exports only the entry points
# Postgres looks up, and every server symbol stays undefined, bound to the server at load time.
# `cargo pgrx package` builds the library exactly as the install command does (same profile and flags,
# so both share one release build) and lays out the files it would install, without installing them.
cargo pgrx package --pg-config "$PG_CONFIG"
library="target/release/syncgate-pg15$("$PG_CONFIG" --pkglibdir)/syncgate.so"
unexpected=$(nm -D --defined-only "$library" | awk '{print $3}' \
  | grep -Ev '^(Pg_magic_func|_PG_output_plugin_init|_PG_init|pg_finfo_.+|.+_wrapper)$' || true)
if [ -n "$unexpected" ]; then
  echo "pg-ext-test: $library exports symbols beyond the extension's entry points:" >&2
  echo "$unexpected" >&2
  exit 1
fi
undefined=$(nm -D --undefined-only "$library" | awk '{print $2}')
for symbol in palloc pfree errstart errfinish CurrentMemoryContext; do
  if ! grep -qx "$symbol" <<<"$undefined"; then
    echo "pg-ext-test: $library does not import $symbol from the server (bound to a copy inside it?)" >&2
    exit 1
  fi
done
# No SQL parser of Postgres's own is linked (the rules crate parses its SQL dialect itself).
if nm "$library" | grep -Eq ' [TtDdBb] (pg_query_|raw_parser$)'; then
  echo "pg-ext-test: $library links libpg_query; the isolation recipe of notes/pgrx.md §11 now applies" >&2
  exit 1
fi
echo "pg-ext-test: symbols ok: exports $(nm -D --defined-only "$library" | wc -l), server imports present, no libpg_query"

# The gateway's replication suite again, streaming through the plugin this time (docs/pg-ext.md), with the
# release library installed by the documented install command (it reuses the build `cargo pgrx package`
# just made; `cargo pgrx test` had installed its test build). The root workspace's target dir is warm
# from the main test step, so this only links and runs the tests.
cd ..
bash scripts/pg-ext-install.sh "$PG_CONFIG"
SYNCGATE_TEST_DECODER=syncgate SYNCGATE_REQUIRE_PLUGIN=1 \
  cargo test -p syncgate --test integration -- replication:: crash:: source::
