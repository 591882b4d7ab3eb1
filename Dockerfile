# syntax=docker/dockerfile:1
#
# MNIST digit service. Stages:
#   deps        virtualenv with the locked runtime dependencies (no project code)
#   train-deps  deps + the locked [train] extra
#   train       `python -m training`, writes a new models/mnist/<version>/ (compose profile "train")
#   client-deps virtualenv with the client package (client/) and its locked dependencies alone
#   client      the `digits` command line (bulk reading, the Kubernetes bulk-read Job): no
#               TensorFlow, no service code, non-root
#   runtime     the API: `python -m app.serve` (uvicorn with the connection limits) on :8000,
#               non-root, with the bundled model (default target)
#
#   docker build -t mnist-digits .
#   docker build --target train -t mnist-digits-train .
#   docker build --target client -t mnist-digits-client .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /build
# Only the lock enters this layer: editing app/ or training/ reuses the installed dependencies
# instead of downloading TensorFlow again. requirements/runtime.txt pins every package with its
# hashes (exported from uv.lock by `make lock`), so two builds a month apart install the same
# bits. Its markers pick tensorflow-cpu on x86-64 (no CUDA kernels: about half the size) and
# tensorflow elsewhere (arm64), from the same lock.
COPY requirements/runtime.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r runtime.txt

FROM deps AS train-deps
COPY requirements/train.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r train.txt

FROM ${PYTHON_IMAGE} AS train
# HOME and MPLCONFIGDIR point at /tmp because the container may run with the host user's uid
# (so that new versions on the bind mount belong to that user), which has no home directory.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
# /data/mnist is the download cache when no local MNIST is mounted there; a new named volume
# copies this directory's mode, so whichever uid runs the trainer can fill it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data/mnist && chmod 1777 /data/mnist
WORKDIR /app
COPY --from=train-deps /opt/venv /opt/venv
COPY training/ /app/training/
# Training fits each new version's reader calibration by reading synthetic codes the way the
# service does (training/reader_fit.py reads them with app/'s reader).
COPY app/ /app/app/
USER 10001:10001
# --models-dir sits in the entrypoint so that `docker compose run --rm train --recipe seed`
# only has to name what it changes.
ENTRYPOINT ["python", "-m", "training", "--models-dir", "/app/models/mnist"]
CMD ["--recipe", "default"]

FROM ${PYTHON_IMAGE} AS client-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /build
# requirements/client.txt pins the client's dependencies and its build backend (setuptools) with
# their hashes, at uv.lock's versions (`make lock`): httpx, pydantic, typer, rich; nothing of the
# service's. The package itself is built from client/ against that backend (no build isolation:
# nothing is fetched unpinned), which is then removed.
COPY requirements/client.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r client.txt
COPY client/ /build/client/
RUN pip install --no-deps --no-build-isolation --no-cache-dir /build/client \
    && pip uninstall --yes setuptools

FROM ${PYTHON_IMAGE} AS client
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
COPY --from=client-deps /opt/venv /opt/venv
WORKDIR /work
USER 10001:10001
# `docker run IMAGE read scans/ --out results.csv` runs `digits read ...`.
ENTRYPOINT ["digits"]
CMD ["--help"]

FROM ${PYTHON_IMAGE} AS runtime
# DIGITS_MODELS_DIR is where the bundled model is copied; a read-only volume mounted on the
# same path (docker run -v "$PWD/models/mnist:/app/models/mnist:ro") replaces it.
# MALLOC_ARENA_MAX: glibc otherwise gives each decoding thread its own heap and keeps it.
# DIGITS_DATA_DIR holds the service's own state (the review queue's SQLite file): the one
# directory the service writes, owned by its user, so a volume mounted there (compose's
# api-data) starts out writable too.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    DIGITS_MODELS_DIR=/app/models/mnist \
    DIGITS_DATA_DIR=/app/data
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/data && chown 10001:10001 /app/data && chmod 0700 /app/data
WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
# The service names its own version (the OpenAPI document) from the installed package's
# metadata, which `make install` (pip install -e .) leaves in the venv. The image copies the code
# instead of installing it, so it writes that metadata alone: name and version from pyproject.toml.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c 'import pathlib, sysconfig, tomllib; \
p = tomllib.loads(pathlib.Path("/tmp/pyproject.toml").read_text())["project"]; \
name = "{}-{}.dist-info".format(p["name"].replace("-", "_"), p["version"]); \
d = pathlib.Path(sysconfig.get_path("purelib"), name); \
d.mkdir(); \
(d / "METADATA").write_text("Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(p["name"], p["version"]))' \
    && rm /tmp/pyproject.toml
# The model changes less often than the code, so it sits in the earlier layer. Files stay owned
# by root: the service can read its code and model but not change them.
COPY models/mnist/ /app/models/mnist/
COPY app/ /app/app/
USER 10001:10001
EXPOSE 8000
# On SIGTERM requests in flight may finish for up to DIGITS_GRACEFUL_SHUTDOWN_SECONDS (20 s by
# default, applied by the launcher); the orchestrator's stop timeout (compose
# stop_grace_period) must be longer than that.
STOPSIGNAL SIGTERM
# slim has no curl; Python's urllib is already there. A 503 (model not loaded) raises: unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status != 200)"]
# The launcher (app/serve.py) runs uvicorn with the connection limits and the graceful-shutdown
# timeout from the DIGITS_* settings, the same command as `make serve` and compose. It starts one
# worker process; WEB_CONCURRENCY, uvicorn's variable, sets another number
# (`docker run -e WEB_CONCURRENCY=2`). Each worker holds its own TensorFlow and model (about
# 660 MiB once ready): size the memory limit with it, or scale out with containers.
CMD ["python", "-m", "app.serve", "--host", "0.0.0.0", "--port", "8000"]
