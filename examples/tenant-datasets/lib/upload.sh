#!/bin/sh
# Upload a tenant's final rows ($FLOWGATE_IN_P/rows.csv) into PostgreSQL
# ($DATABASE_URL), in one transaction: with DELETE_FIRST=true the tenant's rows
# are replaced, else appended. A failure leaves the table as it was.
set -eu
: "${DATABASE_URL:?}" "${TENANT_NAME:?}"
delete=""
[ "${DELETE_FIRST:-false}" = true ] && delete="DELETE FROM items WHERE tenant = :'tenant';"
psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v tenant="$TENANT_NAME" -q <<SQL
BEGIN;
CREATE TABLE IF NOT EXISTS items (tenant text NOT NULL, id int NOT NULL, name text, price numeric, status text, price_eur numeric);
$delete
\copy items (tenant, id, name, price, status, price_eur) FROM '$FLOWGATE_IN_P/rows.csv' WITH (FORMAT csv, HEADER true)
COMMIT;
SQL
echo "uploaded $(($(wc -l < "$FLOWGATE_IN_P/rows.csv") - 1)) rows of $TENANT_NAME (delete first: ${DELETE_FIRST:-false})"
