#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the distributed-search test (Debian's
# package; installed if missing). On success it prints the SQLAlchemy URL; on failure the reason
# goes to stderr and it exits non-zero, and the test skips saying why.
set -euo pipefail
PORT=${TUNEKV_PG_PORT:-54329}
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    else
        echo "PostgreSQL is not installed and cannot be installed here (needs root and apt-get)" >&2
        exit 1
    fi
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DATA=$(mktemp -d /tmp/tunekv-pg.XXXXXX)
if [ "$(id -u)" = 0 ]; then
    chown postgres "$DATA"
    AS=(su postgres -s /bin/bash -c)   # the server refuses to run as root
else
    AS=(bash -c)
fi
"${AS[@]}" "$PGBIN/initdb -D $DATA -U postgres --auth-local=trust --auth-host=scram-sha-256" >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl -D $DATA -l $DATA/server.log -w -o '-p $PORT -k $DATA -c listen_addresses=127.0.0.1' start" >/dev/null
"${AS[@]}" "$PGBIN/psql -h $DATA -p $PORT -U postgres -qc \"CREATE ROLE tunekv LOGIN CREATEDB PASSWORD 'ci-secret'\"" >/dev/null
"${AS[@]}" "$PGBIN/psql -h $DATA -p $PORT -U postgres -qc 'CREATE DATABASE tunekv OWNER tunekv'" >/dev/null
echo "$DATA" > /tmp/tunekv-pg.datadir
echo "postgresql+psycopg2://tunekv:ci-secret@127.0.0.1:$PORT/tunekv"
