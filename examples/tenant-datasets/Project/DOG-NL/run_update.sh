#!/bin/sh
# The tenant's daily update: the shared one, with this folder's tenant.conf.
exec ../../lib/update.sh "$@"
