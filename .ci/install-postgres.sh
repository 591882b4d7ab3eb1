#!/usr/bin/env bash
# Installs what the PostgreSQL tests need on a fresh Debian machine: the distribution's
# PostgreSQL server binaries, which scripts/start-postgres.sh runs as a throw-away instance on
# loopback (the review queue is tested on a real PostgreSQL, not a mock). Only apt is used.
# The package's own cluster is not used (nor started: there is no init system here).
# Idempotent: does nothing when a server is already installed.
set -euo pipefail

if ls -d /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "install-postgres: already installed: $(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)"
    exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

echo "install-postgres: installing postgresql"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    postgresql
