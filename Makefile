# relayproxy developer entry points. `make run` and `make test` are all a newcomer needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.toml

.PHONY: install clients-install clients-table run test test-slow test-e2e-previous-sdks test-unit test-e2e lint fmt typecheck check clean dist test-dist deploy-check bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev,litellm]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/relayproxy serve --config $(CONFIG)

# The previous SDK generation (openai 1.x, anthropic 0.x with x-api-key, google-genai 1.x on /v1beta):
# clients in the wild run both, so the end-to-end suite runs against each. That second run serves
# on asyncio's own event loop, the first on the default (uvloop): both loops are tested end to end.
PREV_VENV ?= .venv-sdk-previous
PREV_STAMP := $(PREV_VENV)/.installed
PREV_SDKS := openai==1.109.1 anthropic==0.125.0 google-genai==1.75.0

$(PREV_STAMP): pyproject.toml
	$(PY) -m venv $(PREV_VENV)
	$(PREV_VENV)/bin/pip install -q -U pip
	$(PREV_VENV)/bin/pip install -q -e '.[dev]' $(PREV_SDKS)
	touch $(PREV_STAMP)

# The client x upstream matrix (tests/clients): the Node SDKs and coding agents from
# tests/clients/js/package-lock.json (npm ci), the Python clients in their own venv.
CLIENTS_VENV ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
JS_DIR := tests/clients/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
JUNIT := build/clients

$(CLIENTS_STAMP): tests/clients/requirements.txt
	$(PY) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install -q -U pip
	$(CLIENTS_VENV)/bin/pip install -q -r tests/clients/requirements.txt
	touch $(CLIENTS_STAMP)

$(JS_STAMP): $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

clients-install: $(CLIENTS_STAMP) $(JS_STAMP)

# Runs the matrix (and the Python openai Responses e2e tests on both SDK generations), then
# rewrites README.md's client x upstream table from the junit results; fails if a cell failed.
clients-table: $(STAMP) $(PREV_STAMP) clients-install
	mkdir -p $(JUNIT)
	$(BIN)/pytest -q -p no:cacheprovider tests/clients tests/e2e/test_sdk_openai_responses.py \
		--junitxml=$(JUNIT)/main.xml; s1=$$?; \
	RELAYPROXY_TEST_EVENT_LOOP=asyncio $(PREV_VENV)/bin/pytest -q -p no:cacheprovider \
		tests/e2e/test_sdk_openai_responses.py --junitxml=$(JUNIT)/previous.xml; s2=$$?; \
	$(BIN)/python -m tests.clients.table README.md py-openai=$(JUNIT)/main.xml \
		py-openai-previous=$(JUNIT)/previous.xml && [ $$s1 -eq 0 ] && [ $$s2 -eq 0 ]

test: $(STAMP) $(PREV_STAMP) clients-install
	$(BIN)/pytest -q
	RELAYPROXY_TEST_EVENT_LOOP=asyncio $(PREV_VENV)/bin/pytest -q -p no:cacheprovider tests/e2e

# The long randomized runs (hardening.md budgets: the 200 x 50 ledger state machine and the like),
# kept out of `make test` so CI stays fast.
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

test-e2e-previous-sdks: $(PREV_STAMP)
	RELAYPROXY_TEST_EVENT_LOOP=asyncio $(PREV_VENV)/bin/pytest -q -p no:cacheprovider tests/e2e

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
	rm -rf $(VENV) $(PREV_VENV) $(CLIENTS_VENV) $(JS_DIR)/node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache

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

# The benchmark suite and the issue-6 budget (bench/README.md): a fast fake upstream, a real gateway,
# wrk (installed from Debian's packages when missing and root; else a Python load generator). Prints
# the table and writes bench/results/latest.json; PROFILE=1 adds a py-spy profile of unary c=32
# (bench/results/profile.txt). BENCH_ARGS passes options through, e.g. BENCH_ARGS="--duration 10".
# bench/pg.py then prints the store rows: unary c=32 on SQLite, on PostgreSQL, two gateways on one.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(filter 1 yes true,$(PROFILE)),--profile) $(BENCH_ARGS)
	$(BIN)/python bench/pg.py $(BENCH_ARGS)
