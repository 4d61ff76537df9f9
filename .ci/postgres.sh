#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on localhost for the multi-worker storage
# test (Debian's package; installed first when missing) and print its URL.
# Usage: url=$(bash .ci/postgres.sh start); ...; bash .ci/postgres.sh stop
set -euo pipefail
action=${1:-start}
if [ "$action" = stop ]; then
    pg_ctlcluster "$(ls /etc/postgresql | sort -V | tail -1)" main stop >/dev/null 2>&1 || true
    exit 0
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi
version=$(ls /etc/postgresql | sort -V | tail -1)
pg_ctlcluster "$version" main start >&2 || pg_ctlcluster "$version" main status >&2
for _ in $(seq 1 30); do
    su postgres -c "pg_isready -q -h localhost" && break
    sleep 1
done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='opsef'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"create role opsef login password 'opsef'\"" >&2
su postgres -c "psql -qtAc \"select 1 from pg_database where datname='opsef_ci'\"" | grep -q 1 ||
    su postgres -c "createdb -O opsef opsef_ci" >&2
echo "postgresql://opsef:opsef@localhost:5432/opsef_ci"
