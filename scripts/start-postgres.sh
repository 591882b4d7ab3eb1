#!/usr/bin/env bash
# Starts a throw-away PostgreSQL for the test suite and prints the URL to reach it, e.g.
#   export DIGITS_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
# It uses the machine's own PostgreSQL server binaries (Debian's `postgresql` package), runs as
# the `postgres` user (the server refuses to run as root) with its data in a temporary
# directory, listens on 127.0.0.1 only, and trusts local connections: a test database, never a
# production one. PGPORT chooses the port (default 55432); a server already up there is reused.
set -euo pipefail
PORT=${PGPORT:-55432}
DATA=${PGDATA_DIR:-/tmp/digits-test-postgres}
URL="postgresql+psycopg://postgres@127.0.0.1:${PORT}/postgres"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
    echo "no PostgreSQL server found (/usr/lib/postgresql/*/bin): apt-get install postgresql" >&2
    exit 1
fi
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if run "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    echo "$URL"
    exit 0
fi
if [ ! -s "$DATA/PG_VERSION" ]; then
    rm -rf "$DATA"
    mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown postgres "$DATA"
    run "$bin/initdb" -D "$DATA" -U postgres --auth=trust --no-sync >/dev/null
fi
# fsync off: the data is thrown away, and tests run several times faster without it.
run "$bin/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PORT -k /tmp -c fsync=off -c synchronous_commit=off -c max_connections=200" \
    start >/dev/null
echo "$URL"
