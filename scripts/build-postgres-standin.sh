#!/usr/bin/env bash
# Builds a local stand-in for the PostgreSQL image that docker-compose.yml's postgres profile
# names (postgres:17-trixie), for machines where no image registry can be reached: Debian
# trixie's own PostgreSQL 17 in a minimal root filesystem made with mmdebstrap, loaded with
# `docker import` and tagged with that name, so Compose never needs to pull it.
#
#   scripts/build-postgres-standin.sh            # skipped when the image exists
#   FORCE=1 scripts/build-postgres-standin.sh    # rebuilt
#
# It behaves like the official image where this project relies on it (docker-entrypoint.sh
# beside this script): POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB on the first start,
# PGDATA=/var/lib/postgresql/data (a volume), password authentication (scram-sha-256) from
# every address, the server run as the postgres user (uid 999, as in the official image),
# pg_isready and psql on PATH, SIGINT as its stop signal. It is not the official image: no
# other locales, no extensions beyond Debian's postgresql-17 package.
#
# Needs root, mmdebstrap and a Docker engine; Debian's packages are read from DEBIAN_MIRROR, by
# default the archive of the host's own apt sources. POSTGRES_STANDIN_IMAGE changes the tag.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${POSTGRES_STANDIN_IMAGE:-postgres:17-trixie}
SUITE=trixie
MAJOR=17

if [ -z "${FORCE:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE: present (FORCE=1 rebuilds it)"
    exit 0
fi
command -v mmdebstrap >/dev/null || {
    echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2
    exit 1
}

# The archive the host already uses for its own release, with the suite name replaced.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(
        { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed 's/\[[^]]*\]//' | awk '$1 == "deb" { print $2 }'
          sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
            tr ' ' '\n'
        } | grep -v -- '-security' | grep -E '^https?://' | head -n 1
    )
fi
[ -n "$mirror" ] || {
    echo "no Debian archive found in the apt sources: set DEBIAN_MIRROR" >&2
    exit 1
}

start=$SECONDS
# Before the packages: the postgres user with the official image's uid and gid (999), and no
# cluster made by the package's postinst (the entrypoint makes one in PGDATA on first start).
# After: the data and socket directories, the entrypoint, no apt lists or caches.
mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
    --include="postgresql-$MAJOR,postgresql-client-$MAJOR,ca-certificates,tzdata" \
    --essential-hook='echo "postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" >>"$1/etc/passwd"' \
    --essential-hook='echo "postgres:x:999:" >>"$1/etc/group"' \
    --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/stand-in.conf"' \
    --customize-hook='mkdir -p "$1/var/lib/postgresql/data" "$1/docker-entrypoint-initdb.d" "$1/run/postgresql" && chroot "$1" chown -R postgres:postgres /var/lib/postgresql /run/postgresql && chmod 0700 "$1/var/lib/postgresql/data"' \
    --customize-hook="upload scripts/postgres-standin/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
    --customize-hook='chmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$SUITE" - "$mirror" |
    docker import \
        --change "ENV PATH=/usr/lib/postgresql/$MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'VOLUME ["/var/lib/postgresql/data"]' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]' \
        --change 'STOPSIGNAL SIGINT' \
        --change 'EXPOSE 5432' \
        - "$IMAGE" >/dev/null
size=$(docker image inspect "$IMAGE" --format '{{.Size}}')
echo "$IMAGE: built in $((SECONDS - start)) s, $((size / 1000000)) MB" \
    "($(docker run --rm --entrypoint postgres "$IMAGE" --version))"
