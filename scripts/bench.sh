#!/usr/bin/env bash
# Benchmarks (not tests): flowgate against the tools a user would pick instead, on
# the same data in one run; every tool's output is counted; a table of ratios is
# printed and appended to bench/RESULTS.md with the date and machine.
#
#   scripts/bench.sh oltp-warehouse [--only extract,upsert,convert,freshness] [--orders N]
#   scripts/bench.sh data-egress [--total-mb N] [--objects N]
#
# Peers come from PyPI into bench/.venv (bench/requirements.txt); PostgreSQL is the
# one scripts/services.sh starts. Takes about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flowgate/target}"
VENV="$ROOT/bench/.venv"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
what=$1; shift

# Peak memory comes from GNU time.
ensure_time() {
  [ -x /usr/bin/time ] && return 0
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq time >/dev/null
  else echo "bench: GNU time is missing (apt-get install -y time)" >&2; exit 1; fi
}

ensure_venv() {
  local stamp="$VENV/.requirements"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || {
      echo "bench: python3 -m venv failed; install python3-venv (apt-get install -y python3-venv)" >&2; exit 1; }
  fi
  if ! cmp -s bench/requirements.txt "$stamp"; then
    echo "bench: installing peers into bench/.venv (once)" >&2
    "$VENV/bin/pip" install -q -r bench/requirements.txt
    cp bench/requirements.txt "$stamp"
  fi
}

# Sling writes Parquet through a DuckDB CLI; it must not download one (offline).
setup_sling() {
  local site; site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  export SLING_BINARY="$site/sling_linux_amd64/bin/sling-linux-amd64"
  chmod +x "$SLING_BINARY" "$VENV/bin/duckdb"
  mkdir -p "$HOME/.duckdb/extensions/v1.4.4/linux_amd64"
  cp -f "$site/duckdb_ext/extensions/v1.4.4/linux_amd64/httpfs.duckdb_extension" \
    "$HOME/.duckdb/extensions/v1.4.4/linux_amd64/"
}

case "$what" in
  oltp-warehouse)
    command -v psql >/dev/null || { echo "bench: psql is missing (apt-get install -y postgresql-client)" >&2; exit 1; }
    ensure_time
    ensure_venv
    setup_sling
    echo "== building flowgate (release)" >&2
    cargo build --release --quiet -p flowgate -p totesys-generator
    scripts/services.sh start >/dev/null
    trap 'scripts/services.sh stop' EXIT
    eval "$(scripts/services.sh env)"
    "$VENV/bin/python" bench/oltp_warehouse.py \
      --flowgate "$CARGO_TARGET_DIR/release/flowgate" \
      --generator "$CARGO_TARGET_DIR/release/totesys-generator" \
      --admin-url "$FLOWGATE_TEST_POSTGRES_URL" \
      --sling-binary "$SLING_BINARY" --duckdb-cli "$VENV/bin/duckdb" "$@"
    ;;
  data-egress)
    if ! command -v rclone >/dev/null; then
      if [ "$(id -u)" = 0 ]; then apt-get install -y -qq rclone >/dev/null
      else echo "bench: rclone is missing (apt-get install -y rclone)" >&2; exit 1; fi
    fi
    ensure_time
    ensure_venv
    echo "== building flowgate (release)" >&2
    cargo build --release --quiet -p flowgate
    scripts/services.sh start >/dev/null
    trap 'scripts/services.sh stop' EXIT
    eval "$(scripts/services.sh env)"
    "$VENV/bin/python" bench/data_egress.py \
      --flowgate "$CARGO_TARGET_DIR/release/flowgate" --aws "$VENV/bin/aws" \
      --endpoint "$FLOWGATE_TEST_S3_ENDPOINT" --s3-root "$FLOWGATE_TEST_S3_ROOT" \
      --access-key "$FLOWGATE_TEST_S3_ACCESS_KEY" --secret-key "$FLOWGATE_TEST_S3_SECRET_KEY" "$@"
    ;;
  *) usage ;;
esac
