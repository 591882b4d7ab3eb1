#!/usr/bin/env bash
# The entrypoint of the PostgreSQL stand-in image (scripts/build-postgres-standin.sh), doing
# what the official postgres image's entrypoint does for the settings this project uses:
#
#   - started as root, it makes PGDATA and the socket directory the postgres user's, then runs
#     itself again as that user;
#   - on the first start (no PGDATA/PG_VERSION) it runs initdb with POSTGRES_USER (default
#     postgres) as superuser and POSTGRES_PASSWORD as its password (required unless
#     POSTGRES_HOST_AUTH_METHOD=trust), lets every address connect with a password
#     (scram-sha-256, or POSTGRES_HOST_AUTH_METHOD), listens on all addresses, creates
#     POSTGRES_DB (default: the user's name) and runs /docker-entrypoint-initdb.d/*.sql and *.sh,
#     all on a server reachable through its Unix socket only, so nothing connects over TCP
#     (the compose healthcheck) before the database is ready;
#   - then replaces itself with `postgres` (PID 1, so SIGINT from `docker stop` reaches it).
#
# A volume that holds a database is used as it is: the variables matter only the first time.
set -Eeuo pipefail

if [ "${1:0:1}" = "-" ]; then
    set -- postgres "$@"
fi

if [ "$1" = "postgres" ] && [ "$(id -u)" = "0" ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

sql() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"
}

if [ "$1" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != "trust" ]; then
        echo "error: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
        echo "       (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection)" >&2
        exit 1
    fi
    arguments=(--username="$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA")
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        password_file=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
        arguments+=(--pwfile="$password_file")
    fi
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words, as in the official image
    initdb "${arguments[@]}" ${POSTGRES_INITDB_ARGS:-}
    rm -f "${password_file:-}"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    export PGPASSWORD=${POSTGRES_PASSWORD:-}
    if [ "$POSTGRES_DB" != "postgres" ]; then
        sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
        *.sh) echo "running $file" && . "$file" ;;
        *.sql) echo "running $file" && sql --dbname "$POSTGRES_DB" -f "$file" ;;
        *) [ -e "$file" ] && echo "ignoring $file" ;;
        esac
    done
    unset PGPASSWORD
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL initialised: database $POSTGRES_DB, owner $POSTGRES_USER"
fi

exec "$@"
