#!/usr/bin/env bash
# A producer: writes a dataset under a prefix, then pipeline_success.flag last.
#
#   examples/data-egress/produce.sh [ROOT] [PREFIX] [FILES]
#   e.g. examples/data-egress/produce.sh examples/data-egress/data/source exports/sales/2026-11-23 3
set -euo pipefail
root=${1:-data/source}
prefix=${2:-exports/sales/$(date -u +%Y-%m-%d)}
files=${3:-3}
dir="$root/$prefix"
mkdir -p "$dir"
for i in $(seq 1 "$files"); do
  {
    echo "order_id,units,amount"
    for r in $(seq 1 1000); do echo "$((i * 100000 + r)),$((r % 7 + 1)),$((r * 13 % 1000)).$((r % 100))"; done
  } >"$dir/part-$i.csv"
done
: >"$dir/pipeline_success.flag"
echo "wrote $files file(s) and the flag under $dir"
