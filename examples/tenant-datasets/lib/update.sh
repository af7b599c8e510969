#!/bin/sh
# The daily sync of a tenant (its run_update.sh): refreshes its listing and
# writes it to $FLOWGATE_OUT_LISTING. Needs TENANT_NAME and S3_BUCKET_NAME.
set -eu
. ./tenant.conf
: "${TENANT_NAME:?}" "${S3_BUCKET_NAME:?}"
if [ "${FAIL_AT:-}" = sync ]; then
  echo "sync of $TENANT_NAME failed: the tunnel answered but the source refused" >&2
  exit 1
fi
sleep "${SYNC_SECONDS:-0}"
printf 'tenant,bucket,items\n%s,%s,%s\n' "$TENANT_NAME" "$S3_BUCKET_NAME" "$ROWS" > "$FLOWGATE_OUT_LISTING/listing.csv"
echo "synced $TENANT_NAME into $S3_BUCKET_NAME"
