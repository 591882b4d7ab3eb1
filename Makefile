# Few verbs: install, serve, train, test, lint, bench, lock. Each one works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# `make serve HOST=0.0.0.0 PORT=9000` listens elsewhere; loopback by default.
HOST   ?= 127.0.0.1
PORT   ?= 8000
# `make train TRAIN_ARGS='--recipe seed --epochs 1'` passes arguments to `python -m training`.
TRAIN_ARGS ?= --recipe default
# The uv release that writes uv.lock and requirements/*.txt (`make lock`); PyPI has it.
UV_VERSION ?= 0.13.9
SHARED_MNIST := $(abspath ../shared/data/mnist)
# Tests and benchmarks read MNIST through MNIST_DATA_DIR; default to the team's shared copy.
# Without it, the trainer downloads MNIST (digests checked) into ~/.cache/mnist-digits.
export MNIST_DATA_DIR ?= $(if $(wildcard $(SHARED_MNIST)/t10k-labels-idx1-ubyte.gz),$(SHARED_MNIST),)
SHARED_REALDIGITS := $(abspath ../shared/data/realdigits)
# The real-scan sets (measuring only) are found through REALDIGITS_DATA_DIR the same way.
export REALDIGITS_DATA_DIR ?= $(if $(wildcard $(SHARED_REALDIGITS)/README.md),$(SHARED_REALDIGITS),)

.PHONY: install install-train install-dev serve train test test-fast test-compose postgres lint bench browser docs lock clean python-check

# The Python versions the lock covers: pyproject.toml's requires-python (>= 3.11) up to its
# [tool.uv] environments (< 3.14: TensorFlow publishes no wheels for newer ones). Another
# version fails deep inside pip, so it is refused before anything is created; a .venv made by
# another version is refused too, rather than reused.
PYTHON_SUPPORTED := 3.11 3.12 3.13
PYTHON_VERSION := -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'
CLEAN  := make clean$(if $(filter command line,$(origin VENV)), VENV=$(VENV))

python-check:
	@found=$$($(PYTHON) $(PYTHON_VERSION) 2>/dev/null); \
	case " $(PYTHON_SUPPORTED) " in *" $${found%.*} "*) ;; *) \
		echo "PYTHON=$(PYTHON) is $${found:+Python }$${found:-not a Python that runs here}; this project needs Python 3.11, 3.12 or 3.13 (the versions uv.lock covers)." >&2; \
		echo "Choose one: make serve PYTHON=python3.11 (or PYTHON=/path/to/python3.12). Nothing was created." >&2; \
		exit 1;; esac; \
	if [ -e $(BIN)/python ] || [ -d $(VENV) ]; then \
		made=$$($(BIN)/python $(PYTHON_VERSION) 2>/dev/null); \
		case " $(PYTHON_SUPPORTED) " in *" $${made%.*} "*) ;; *) \
			echo "$(VENV) $${made:+was made by Python }$${made:-holds no Python that runs (half-made, or its interpreter is gone)}; this project needs Python 3.11, 3.12 or 3.13." >&2; \
			echo "Run $(CLEAN), then make again (e.g. make serve PYTHON=python3.11)." >&2; \
			exit 1;; esac; \
		if [ "$(origin PYTHON)" = "command line" ] && [ "$${made%.*}" != "$${found%.*}" ]; then \
			echo "$(VENV) was made by Python $$made, not by PYTHON=$(PYTHON) (Python $$found)." >&2; \
			echo "Run $(CLEAN) to rebuild it with $(PYTHON), or leave PYTHON out to keep it." >&2; \
			exit 1; fi; \
	fi

$(BIN)/python: | python-check
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Dependencies come from the hash-locked requirements/*.txt (exported from uv.lock by
# `make lock`), so two installs a month apart get the same bits. Each install leaves a stamp in
# the venv and runs again only when the venv is new or the lock or pyproject.toml changed:
# `make serve` neither downloads nor needs the network once installed.
# On Linux x86-64 the lock picks tensorflow-cpu; a venv made before it may still hold
# tensorflow (the same files), which is removed first so the two never mix.
define install_locked
	@if [ "$$(uname -sm)" = "Linux x86_64" ] && $(BIN)/pip show tensorflow >/dev/null 2>&1; then \
		$(BIN)/pip uninstall -y tensorflow tensorflow-cpu; fi
	$(BIN)/pip install --require-hashes --no-deps -r $(1)
	$(BIN)/pip install --no-deps -e .
endef

$(VENV)/.installed-runtime: requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(call install_locked,requirements/runtime.txt)
	touch $@

$(VENV)/.installed-train: requirements/train.txt pyproject.toml | $(BIN)/python
	$(call install_locked,requirements/train.txt)
	touch $(VENV)/.installed-runtime $@

# The dev install adds the client package (client/: `digits_client`, the `digits` command) in
# editable mode; its dependencies are in the dev lock.
$(VENV)/.installed-dev: requirements/dev.txt pyproject.toml client/pyproject.toml | $(BIN)/python
	$(call install_locked,requirements/dev.txt)
	$(BIN)/pip install --no-deps -e client
	touch $(VENV)/.installed-runtime $(VENV)/.installed-train $@

install: $(VENV)/.installed-runtime

install-train: $(VENV)/.installed-train

install-dev: $(VENV)/.installed-dev

# The launcher applies the connection limits and graceful-shutdown timeout (DIGITS_* settings,
# docs/limits.md); MALLOC_ARENA_MAX keeps glibc from growing one heap per decoding thread.
serve: install
	MALLOC_ARENA_MAX=2 $(BIN)/python -m app.serve --host $(HOST) --port $(PORT)

train: install-train
	$(BIN)/python -m training $(TRAIN_ARGS)

browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ]; then bash .ci/install-browser.sh; \
	else echo "chromium is missing: run 'sudo bash .ci/install-browser.sh' for the browser tests"; fi

test: install-dev browser
	$(BIN)/python -m pytest

# A throw-away PostgreSQL on 127.0.0.1:55432 (scripts/start-postgres.sh: Debian's server binaries,
# run as the postgres user, data in /tmp; a server already up there is reused), for the review
# queue's PostgreSQL tests, which run when DIGITS_TEST_POSTGRES_URL is set and skip otherwise:
#   eval "$$(make -s postgres)" && make test
postgres:
	@url=$$(bash scripts/start-postgres.sh) && echo "export DIGITS_TEST_POSTGRES_URL=$$url"

# The inner loop: no browser, no real uvicorn server, no long checks (markers in pyproject.toml).
test-fast: install-dev
	$(BIN)/python -m pytest -m "not browser and not slow"

# The Compose stack started for real (a Docker engine with Compose v2 and the base images
# needed): build, `up --wait`, README's requests through nginx, scale to 3 and back under load
# with no failed request, metrics, `down -v` (scripts/test-compose.sh; docs/deployment.md).
test-compose: install-dev
	PYTHON=$(BIN)/python bash scripts/test-compose.sh

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (docs/, mkdocs.yml) with live reload on http://127.0.0.1:8001.
docs: install-dev
	$(BIN)/mkdocs serve -a 127.0.0.1:8001

bench: install-dev
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python -m benchmarks.bench_postal
	$(BIN)/python -m benchmarks.bench_realworld --limit 500 --postal 500

# Re-resolve after editing dependencies in pyproject.toml: uv.lock keeps every pin it can and
# the three requirement files are exported from it with hashes. Commit all four.
# requirements/client.txt is the client image's (client/pyproject.toml, Dockerfile stage
# client): its dependencies and build backend at uv.lock's versions and hashes
# (scripts/lock_client.py), so the client image runs on the bits the tests ran on.
lock: $(BIN)/python
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv lock
	$(BIN)/uv export --frozen --quiet --format requirements-txt --no-emit-project --hashes \
		-o requirements/runtime.txt
	$(BIN)/uv export --frozen --quiet --format requirements-txt --no-emit-project --hashes \
		--extra train -o requirements/train.txt
	$(BIN)/uv export --frozen --quiet --format requirements-txt --no-emit-project --hashes \
		--extra dev -o requirements/dev.txt
	$(BIN)/python scripts/lock_client.py --uv $(BIN)/uv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache artifacts
