#!/bin/sh
# A tenant's stage, run by flowgate in the tenant's folder (Project/<DIR>/):
#   1a  scrape:    writes $FLOWGATE_OUT_P/rows.csv (id,name,price,status)
#   2a  enrich:    reads $FLOWGATE_IN_P/rows.csv, adds price_eur
#   3a  finalise:  reads $FLOWGATE_IN_P/rows.csv, adds the tenant
# The tenant's own settings are in ./tenant.conf (ROWS, FAIL_AT).
set -eu
. ./tenant.conf
stage="$1"
if [ "${FAIL_AT:-}" = "$stage" ]; then
  echo "stage $stage of $TENANT_NAME failed: the source page changed its layout" >&2
  exit 1
fi
case "$stage" in
  1a)
    awk -v n="$ROWS" 'BEGIN { print "id,name,price,status"; for (i = 1; i <= n; i++) printf "%d,item-%d,%d.50,%s\n", i, i, (i * 37) % 97, (i % 10 ? "active" : "paused") }' \
      > "$FLOWGATE_OUT_P/rows.csv" ;;
  2a)
    awk -F, 'NR == 1 { print $0 ",price_eur"; next } { printf "%s,%.2f\n", $0, $3 * 0.92 }' \
      "$FLOWGATE_IN_P/rows.csv" > "$FLOWGATE_OUT_P/rows.csv" ;;
  3a)
    awk -F, -v t="$TENANT_NAME" 'NR == 1 { print "tenant," $0; next } { print t "," $0 }' \
      "$FLOWGATE_IN_P/rows.csv" > "$FLOWGATE_OUT_P/rows.csv" ;;
  *) echo "no stage $stage" >&2; exit 2 ;;
esac
echo "stage $stage of $TENANT_NAME: $(($(wc -l < "$FLOWGATE_OUT_P/rows.csv") - 1)) rows"
