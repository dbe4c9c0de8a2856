# moonbus: `make run` starts the whole system on this machine, `make test` runs every test.
# Needs only python3 (3.11+), cargo, gcc and make: each target sets up what it needs,
# and does nothing again when it is already done.

PYTHON ?= python3
CARGO  ?= cargo
VENV   := .venv
PY     := $(VENV)/bin/python
# Touched after `pip install`; redone when pyproject.toml changes.
PY_STAMP := $(VENV)/.moonbus-installed

.DEFAULT_GOAL := help
.PHONY: help setup python rust sim run test test-rust test-python bench chaos soak fmt lint clean distclean

help:
	@echo "make run     start nats-server and every service (Ctrl+C stops them all)"
	@echo "make test    run all tests (cargo test, pytest)"
	@echo "make bench   run the benchmark harness; results in bench/results/*.json"
	@echo "make chaos   the fault suite: every fault in turn under load; bench/results/chaos.json"
	@echo "make soak    10 minutes at 10,000 ticks/s, RSS slope per service; bench/results/soak.json"
	@echo "make backtest  the example backtest (data/backtest/BTC-USD.csv); BACKTEST_ARGS=\"--sweep fast=5:30:5 slow=20:100:20\" for a sweep"
	@echo "make setup   create .venv, install the Python package, build the Rust binaries"
	@echo "make fmt     format code (cargo fmt; ruff format if installed)"
	@echo "make lint    cargo clippy -D warnings (and ruff check if installed)"
	@echo "make clean   remove build outputs and caches; distclean also .venv and .moon"

# ---- set-up ------------------------------------------------------------------------

$(PY):
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

python: $(PY_STAMP)

# cargo decides itself what is out of date (a no-op build takes a second).
rust:
	$(CARGO) build --release --workspace

# The live rules as a Python module for the backtester (crate rust-backtest), put where
# the venv's Python finds it: `import moonbus_sim` (services/backtest/engine.py).
SIM_LIB := target/release/libmoonbus_sim.so
sim: python rust
	$(PY) -c 'import shutil, sysconfig; shutil.copyfile("$(SIM_LIB)", sysconfig.get_paths()["platlib"] + "/moonbus_sim.abi3.so")'

setup: python rust sim

# ---- run and test -------------------------------------------------------------------

run: setup
	$(PY) -m services.devstack.run

# THE test command. The Python suite includes end-to-end tests that run the release
# binaries, hence `setup` first.
test: setup
	$(CARGO) test --workspace
	$(PY) -m pytest -q

test-rust:
	$(CARGO) test --workspace

test-python: setup
	$(PY) -m pytest -q

# Writes bench/results/<name>.json; BENCH="name ..." runs a subset.
bench: setup
	$(PY) -m bench $(BENCH)

# The fault suite (bench/chaos.py; short version tests/test_faults.py), ~6 minutes.
chaos: setup
	$(PY) -m bench chaos

# The soak (bench/soak.py; short version tests/test_soak.py), ~11 minutes.
soak: setup
	$(PY) -m bench soak

# The example backtest: the moving-average crossover over data/backtest/BTC-USD.csv (1500
# synthetic 1 h bars), in this process; report in .moon/backtests/<run-id>/. BACKTEST_ARGS adds
# options, e.g. BACKTEST_ARGS="--sweep fast=5:30:5 slow=20:100:20 --train 0.7": a sweep over
# the backtest workers of a running `make run` (one per core).
BACKTEST_DATA ?= data/backtest/BTC-USD.csv
backtest: setup
	$(PY) -m services.cli backtest $(BACKTEST_DATA) --strategy ma_crossover $(BACKTEST_ARGS)

# ---- code hygiene ---------------------------------------------------------------------

fmt: python
	$(CARGO) fmt --all
	@if [ -x $(VENV)/bin/ruff ]; then $(VENV)/bin/ruff format services tests; fi

lint: python
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if [ -x $(VENV)/bin/ruff ]; then $(VENV)/bin/ruff check services tests; fi

clean:
	$(CARGO) clean
	rm -rf .pytest_cache
	find services tests -name __pycache__ -type d -prune -exec rm -rf {} +

# Also removes the virtualenv and .moon (credentials and the local JetStream data).
distclean: clean
	rm -rf $(VENV) .moon

# ---- docker compose -------------------------------------------------------------------
# `make images` builds everything `docker compose up` needs, offline: the base images
# (debootstrap, under the official names; kept once built) and the moonbus images. The
# credentials are made by compose itself on first start (docker/credentials.py);
# `make compose-env` writes an optional `.env` giving compose make run's NATS passwords.
# The host's CA bundle is given to the builds as a BuildKit secret (never stored in an
# image); a pip index set on the host is passed on.
.PHONY: base-images compose-env images
DOCKER_CA ?= /etc/ssl/certs/ca-certificates.crt
MOONBUS_TAG ?= latest
# The builder image is tagged with the host's Rust version (base-images.sh copies it).
RUST_MINOR = $(shell rustc --version | awk '{print $$2}' | cut -d. -f1,2)

base-images:
	docker/base-images.sh

# Optional: compose then uses make run's passwords (.moon/credentials.json).
compose-env: python
	$(PY) docker/compose_env.py

images: base-images
	@cli=$$(docker/buildkit-cli.sh) && \
	secret=$$([ -r $(DOCKER_CA) ] && echo "--secret id=ca,src=$(DOCKER_CA)") && \
	index=$$($(PYTHON) -m pip config get global.index-url 2>/dev/null || echo "$${PIP_INDEX_URL:-}") && \
	set -x && \
	DOCKER_BUILDKIT=1 $$cli build $$secret --build-arg MOONBUS_PIP_INDEX_URL="$$index" \
		--build-arg RUST_IMAGE=rust:$(RUST_MINOR)-slim-bookworm \
		-t moonbus/python:$(MOONBUS_TAG) -f docker/python.Dockerfile . && \
	DOCKER_BUILDKIT=1 $$cli build $$secret --build-arg RUST_IMAGE=rust:$(RUST_MINOR)-slim-bookworm \
		-t moonbus/rust:$(MOONBUS_TAG) -f docker/rust.Dockerfile .
