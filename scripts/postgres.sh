#!/bin/sh
# Starts Debian's PostgreSQL cluster (no init system starts it) and makes the test role.
# Prints the SQLAlchemy URL the tests use, and nothing else, on stdout. Fails loudly when PostgreSQL cannot start.
set -eu
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$ver main"; then
    pg_createcluster "$ver" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
    pg_ctlcluster "$ver" main start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
run() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }
run "psql -q -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname='cloudbroker'\"" | grep -q 1 \
    || run "psql -q -p $port -c \"CREATE ROLE cloudbroker LOGIN CREATEDB PASSWORD 'cloudbroker'\""
# DROP DATABASE ... WITH (FORCE) in the tests may have to stop an autovacuum worker
run "psql -q -p $port -c \"GRANT pg_signal_backend TO cloudbroker\"" >/dev/null
echo "postgresql+psycopg://cloudbroker:cloudbroker@127.0.0.1:$port/postgres"
