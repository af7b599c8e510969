#!/usr/bin/env bash
# Benchmarks (not tests): flowgate against the tools a user would pick instead, on
# the same data in one run; every tool's output is counted; a table of ratios is
# printed and appended to bench/RESULTS.md with the date and machine.
#
#   scripts/bench.sh oltp-warehouse [--only extract,upsert,convert,freshness] [--orders N]
#                                   [--repeat N] [--fresh-runs N] [--fresh-seconds S]
#   scripts/bench.sh data-egress [--total-mb N] [--objects N] [--repeat N]
#   scripts/bench.sh tenant-datasets [--repeat N]
#   scripts/bench.sh event-consumer [--events N] [--repeat N]
#
# Each cell is the median of --repeat runs (default 5), tools in rotating order.
#
# Peers come from PyPI into bench/.venv (bench/requirements.txt), rclone from apt,
# the S3 server for data-egress (versitygw) from the Go module proxy into
# $HOME/.cache/flowgate/bench-tools; PostgreSQL is the one scripts/services.sh
# starts (oltp-warehouse, event-consumer: with Apache Kafka). On 2 cores: oltp-warehouse about 45 minutes,
# data-egress about 20, after the first release build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flowgate/target}"
VENV="$ROOT/bench/.venv"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
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

# The S3 server of the data-egress bench: versitygw, one pinned release, built
# with `go install` (Go >= 1.25; the module proxy is the only download).
VERSITYGW_VERSION=v1.8.0
BENCH_TOOLS="${FLOWGATE_BENCH_TOOLS:-$HOME/.cache/flowgate/bench-tools}"
VERSITYGW="$BENCH_TOOLS/versitygw"
ensure_versitygw() {
  if [ -x "$VERSITYGW" ]; then
    command -v go >/dev/null || return 0  # no Go to read its version with: use it as it is
    go version -m "$VERSITYGW" 2>/dev/null \
      | grep -q "^[[:space:]]*mod[[:space:]]*github.com/versity/versitygw[[:space:]]*$VERSITYGW_VERSION[[:space:]]" \
      && return 0
  fi
  local goversion
  goversion=$(go env GOVERSION 2>/dev/null || true)
  case "$goversion" in
    go1.2[5-9]*|go1.[3-9][0-9]*|go[2-9]*) ;;
    *) echo "bench: versitygw $VERSITYGW_VERSION (the S3 server) is built with Go >= 1.25, found '${goversion:-no go}':" \
         "install Go >= 1.25 (https://go.dev/dl/; Debian's golang-go is older) and rerun, or put a versitygw" \
         "$VERSITYGW_VERSION binary at $VERSITYGW" >&2; exit 1 ;;
  esac
  echo "bench: installing versitygw $VERSITYGW_VERSION into $BENCH_TOOLS (go install, about 2 minutes, once)" >&2
  mkdir -p "$BENCH_TOOLS"
  GOBIN="$BENCH_TOOLS" GOFLAGS=-buildvcs=false go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
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
      if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq rclone >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq rclone >/dev/null; }
      else echo "bench: rclone is missing (sudo apt-get install -y rclone)" >&2; exit 1; fi
    fi
    ensure_time
    ensure_venv
    ensure_versitygw
    echo "== building flowgate (release)" >&2
    cargo build --release --quiet -p flowgate
    # The bench starts and stops its own S3 servers (two versitygw processes on
    # loopback, data under bench/data/data-egress); no other service is needed.
    "$VENV/bin/python" bench/data_egress.py \
      --flowgate "$CARGO_TARGET_DIR/release/flowgate" --aws "$VENV/bin/aws" --versitygw "$VERSITYGW" "$@"
    ;;
  tenant-datasets)
    ensure_time
    ensure_venv
    echo "== building flowgate (release)" >&2
    cargo build --release --quiet -p flowgate
    "$VENV/bin/python" bench/tenant_datasets.py --flowgate "$CARGO_TARGET_DIR/release/flowgate" "$@"
    ;;
  event-consumer)
    ensure_time
    ensure_venv
    echo "== building flowgate (release)" >&2
    cargo build --release --quiet -p flowgate
    scripts/services.sh start >/dev/null
    trap 'scripts/services.sh stop' EXIT
    eval "$(scripts/services.sh env)"
    "$VENV/bin/python" bench/event_consumer.py --flowgate "$CARGO_TARGET_DIR/release/flowgate" \
      --bootstrap "$FLOWGATE_TEST_KAFKA_BOOTSTRAP" --admin-url "$FLOWGATE_TEST_POSTGRES_URL" "$@"
    ;;
  *) usage ;;
esac
