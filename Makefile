# Few verbs: install, serve, train, test, lint, bench. Each one works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
SHARED_MNIST := $(abspath ../shared/data/mnist)
# Tests and benchmarks read MNIST through MNIST_DATA_DIR; default to the team's shared copy.
export MNIST_DATA_DIR ?= $(if $(wildcard $(SHARED_MNIST)/t10k-labels-idx1-ubyte.gz),$(SHARED_MNIST),)
SHARED_REALDIGITS := $(abspath ../shared/data/realdigits)
# The real-scan sets (measuring only) are found through REALDIGITS_DATA_DIR the same way.
export REALDIGITS_DATA_DIR ?= $(if $(wildcard $(SHARED_REALDIGITS)/README.md),$(SHARED_REALDIGITS),)

.PHONY: install install-dev serve train test lint bench browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -e '.[dev]'

serve: install
	$(BIN)/uvicorn app.main:create_app --factory --host 127.0.0.1 --port $(PORT)

train: install-dev
	$(BIN)/python -m training --recipe default

browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ]; then bash .ci/install-browser.sh; \
	else echo "chromium is missing: run 'sudo bash .ci/install-browser.sh' for the browser tests"; fi

test: install-dev browser
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_postal.py
	$(BIN)/python -m benchmarks.bench_realworld --limit 500 --postal 500

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache artifacts
