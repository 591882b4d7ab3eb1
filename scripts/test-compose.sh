#!/usr/bin/env bash
# make test-compose: the Compose stack started for real and driven through its load balancer.
#
#   build the image; `docker compose up -d --build --wait`; README's requests through nginx
#   (digit 3, "75011", ready, metrics), its JSON errors and gRPC; Prometheus scraping the
#   replicas; `--scale api=3` and back to 1 under a steady load of uploads, with no failed
#   request; the metrics again; the postgres profile with two api replicas, each reaching the
#   one database (and, where the service has the review queue, counting the same queue);
#   `docker compose down -v`. Prints the times, the image size, the requests and the counts.
#
# Needs a Docker engine with Compose v2 and the images the files name (python:3.11-slim,
# nginx:1.28-alpine and postgres:17-trixie, which scripts/build-postgres-standin.sh builds
# where no registry is reachable; prom/prometheus:v3.5.0 for the Prometheus check, skipped
# without it). The stack runs as its own Compose project on free loopback ports, so a stack
# already running here is left alone. PYTHON is the interpreter with httpx (the dev install's,
# from make).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PROJECT=${TEST_COMPOSE_PROJECT:-mnist-digits-test}
LOAD_RATE=${TEST_COMPOSE_RATE:-40}        # uploads per second during the scale test
STATE=$(mktemp -d)
COMPOSE=(docker compose -p "$PROJECT" -f docker-compose.yml)
# TEST_COMPOSE_OVERRIDE: a Compose file laid over docker-compose.yml, to try a change.
if [ -n "${TEST_COMPOSE_OVERRIDE:-}" ]; then COMPOSE+=(-f "$TEST_COMPOSE_OVERRIDE"); fi
T0=$SECONDS

step() { printf '\n== %s\n' "$*"; }
took() { printf '   %s: %d s\n' "$1" "$(($SECONDS - $2))"; }
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
    local status=$?
    if [ -n "${LOAD_PID:-}" ] && kill -0 "$LOAD_PID" 2>/dev/null; then kill "$LOAD_PID" || true; fi
    if [ "$status" -ne 0 ]; then
        echo "FAILED (exit $status); the stack, nginx's errors and the last lines of api's log:"
        "${COMPOSE[@]}" ps -a || true
        "${COMPOSE[@]}" logs --no-log-prefix lb 2>&1 | grep -E '\[(error|crit|emerg)\]' |
            sed -E 's/, (client|server|host): [^,]*//g' | tail -n 20 || true
        "${COMPOSE[@]}" logs --tail 15 api || true
    fi
    step "docker compose down -v"
    local start=$SECONDS
    "${COMPOSE[@]}" --profile monitoring --profile postgres down -v --remove-orphans >/dev/null 2>&1 || true
    took "down -v" "$start"
    rm -rf "$STATE"
    exit "$status"
}
trap cleanup EXIT

step "the engine and the images"
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
docker compose version
POSTGRES_IMAGE=$("$PYTHON" -c 'import yaml; print(yaml.safe_load(open("docker-compose.yml"))["services"]["postgres"]["image"])')
for image in python:3.11-slim nginx:1.28-alpine "$POSTGRES_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || {
        echo "missing image $image: pull it, or build a local stand-in under that name" \
            "(PostgreSQL: scripts/build-postgres-standin.sh)"
        exit 2
    }
done
docker run --rm --entrypoint postgres "$POSTGRES_IMAGE" --version | sed 's/^/   postgres runs /'
docker run --rm nginx:1.28-alpine nginx -v 2>&1 | sed 's/^/   lb runs /'
if docker image inspect prom/prometheus:v3.5.0 >/dev/null 2>&1; then PROMETHEUS=1; else PROMETHEUS=; fi
# Grafana and TF Serving are not started here (no Debian package stands in for them).
for image in grafana/grafana:12.1.0 tensorflow/serving:2.21.0; do
    if docker image inspect "$image" >/dev/null 2>&1; then
        echo "   $image is here, but not started by this script"
    else
        echo "   $image: not on this engine and not started (no registry to pull it from here?)"
    fi
done
# The Dockerfile's `# syntax=docker/dockerfile:1` line makes BuildKit fetch that frontend image.
# Without it locally (and no registry), build from a copy without the line: BuildKit's built-in
# frontend understands everything the Dockerfile uses, and the layers are the same.
# (Inline, as a file outside the build context needs a BuildKit entitlement.)
if ! docker image inspect docker/dockerfile:1 >/dev/null 2>&1; then
    "$PYTHON" -c 'import json
text = open("Dockerfile").read().split("\n", 1)
body = text[1] if text[0].startswith("# syntax=") else "\n".join(text)
body = body.replace("$", "$$")  # Compose would interpolate $PATH
print(json.dumps({"services": {"api": {"build": {"dockerfile_inline": body}}}}))' \
        >"$STATE/nosyntax.yml"
    COMPOSE+=(-f "$STATE/nosyntax.yml")
    echo "   docker/dockerfile:1 is not here: building without the # syntax= line"
fi

export DIGITS_HTTP_PORT=${DIGITS_HTTP_PORT:-$(free_port)}
export DIGITS_GRPC_HOST_PORT=${DIGITS_GRPC_HOST_PORT:-$(free_port)}
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-$(free_port)}
HTTP=127.0.0.1:$DIGITS_HTTP_PORT
GRPC=127.0.0.1:$DIGITS_GRPC_HOST_PORT

step "build"
start=$SECONDS
"${COMPOSE[@]}" build --quiet api
took "docker compose build api" "$start"
size=$(docker image inspect mnist-digits:latest --format '{{.Size}}')
echo "   image mnist-digits:latest: $((size / 1000000)) MB"

step "docker compose up -d --build --wait"
start=$SECONDS
"${COMPOSE[@]}" up -d --build --wait --quiet-pull 2>&1 | tail -n 3
took "up --wait (healthy)" "$start"
"${COMPOSE[@]}" ps --format '   {{.Service}} {{.Status}} {{.Ports}}'
# The service's state (the review queue's SQLite file) on the read-only root filesystem: the
# data directory must be the writable named volume.
"${COMPOSE[@]}" exec -T api python -c 'import os, pathlib, tempfile
data = pathlib.Path(os.environ["DIGITS_DATA_DIR"])
with tempfile.NamedTemporaryFile(dir=data): pass
print(f"   {data} is writable by uid {os.getuid()}:", ", ".join(sorted(p.name for p in data.iterdir())) or "empty")'
docker volume inspect "${PROJECT}_api-data" --format '   volume {{.Name}} ({{.Driver}})'
published=$("${COMPOSE[@]}" port lb 8080)
echo "   lb published on $published (loopback unless DIGITS_BIND says otherwise)"
case $published in 127.0.0.1:*) ;; *) echo "   not on loopback"; exit 1 ;; esac

step "README's requests through the balancer ($HTTP), its own errors, gRPC ($GRPC)"
"$PYTHON" scripts/compose_probe.py requests --http "$HTTP" --grpc "$GRPC"

if [ -n "$PROMETHEUS" ]; then
    step "Prometheus (profile monitoring, prometheus only)"
    start=$SECONDS
    "${COMPOSE[@]}" --profile monitoring up -d --wait prometheus 2>&1 | tail -n 1
    took "prometheus up" "$start"
fi

step "scale to 3 replicas and back to 1 under load ($LOAD_RATE uploads/s, every 5th a postal code)"
"$PYTHON" scripts/compose_probe.py load --http "$HTTP" --rate "$LOAD_RATE" \
    --stop-file "$STATE/stop" --report "$STATE/load.json" &
LOAD_PID=$!
sleep 5
start=$SECONDS
"${COMPOSE[@]}" up -d --wait --scale api=3 2>&1 | tail -n 1
took "--scale api=3 (all healthy)" "$start"
if [ -n "$PROMETHEUS" ]; then
    "$PYTHON" scripts/compose_probe.py metrics --http "$HTTP" \
        --prometheus "127.0.0.1:$PROMETHEUS_PORT" --replicas 3
fi
sleep 10
start=$SECONDS
"${COMPOSE[@]}" up -d --wait --scale api=1 2>&1 | tail -n 1
took "--scale api=1" "$start"
sleep 10  # requests keep coming while nginx's view of the replicas settles
touch "$STATE/stop"
load_status=0
wait "$LOAD_PID" || load_status=$?
LOAD_PID=
"$PYTHON" - "$STATE/load.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   {r['requests']} requests in {r['seconds']} s: statuses {r['statuses']}, "
      f"failed {r['failed']}")
print(f"   latency median {r['latency_ms']['median']} ms, p99 {r['latency_ms']['p99']} ms, "
      f"max {r['latency_ms']['max']} ms")
for failure in r["failures"]:
    print(f"   failure at {failure['at_s']} s: {failure['what']}")
EOF
"${COMPOSE[@]}" ps --format '   {{.Service}} {{.Status}}'

step "metrics after the scale test"
"$PYTHON" scripts/compose_probe.py metrics --http "$HTTP"

step "the postgres profile: two api replicas sharing one PostgreSQL"
DIGITS_POSTGRES_PASSWORD=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
DIGITS_REVIEW_DATABASE_URL="postgresql+psycopg://digits:${DIGITS_POSTGRES_PASSWORD}@postgres:5432/digits"
export DIGITS_POSTGRES_PASSWORD DIGITS_REVIEW_DATABASE_URL
start=$SECONDS
"${COMPOSE[@]}" --profile postgres up -d --wait --scale api=2 2>&1 | tail -n 1
took "--profile postgres up --scale api=2 (all healthy)" "$start"
"${COMPOSE[@]}" --profile postgres ps --format '   {{.Service}} {{.Status}}'
"$PYTHON" scripts/compose_probe.py shared-queue --http "$HTTP" --replicas 2 -- "${COMPOSE[@]}"

if [ "$load_status" -ne 0 ]; then
    printf '\nFAILED: the scale test had failed requests (above); every other check passed\n'
    exit 1
fi
printf '\nall checks passed in %d s (before down)\n' "$(($SECONDS - T0))"
