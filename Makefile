# relayproxy developer entry points. `make run` and `make test` are all a newcomer needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.toml

.PHONY: install run test test-unit test-e2e lint fmt typecheck check clean dist test-dist deploy-check

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/relayproxy serve --config $(CONFIG)

test: $(STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e

lint: $(STAMP)
	$(BIN)/ruff format --check relayproxy tests
	$(BIN)/ruff check relayproxy tests
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format relayproxy tests
	$(BIN)/ruff check --fix relayproxy tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Single-file build: relayproxy and its pinned runtime dependencies in one zipapp (deploy/build_pyz.py).
dist: $(STAMP)
	$(BIN)/python deploy/build_pyz.py --out dist/relayproxy.pyz

# The dist tests alone (they also run in `make test`): build, then run on a bare interpreter.
test-dist: $(STAMP)
	$(BIN)/pytest -q -m dist tests/integration/test_dist.py

# The systemd unit's sandbox score (hardening test 40): exposure must stay at most 2.0.
deploy-check:
	systemd-analyze security --offline=yes --threshold=20 deploy/relayproxy.service
	systemd-analyze verify deploy/relayproxy.service
