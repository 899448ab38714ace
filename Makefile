# fhir-gateway — every target documents itself: `make help`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NODE_STAMP := tests/node/node_modules/.installed-$(shell cat tests/node/package.json 2>/dev/null | cksum | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install chromium demo test test-fast lint typecheck fmt generate bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install the gateway with test and demo extras

$(NODE_STAMP): tests/node/package.json
	cd tests/node && npm install --omit=optional --no-audit --no-fund --loglevel=error
	@rm -f tests/node/node_modules/.installed-* && touch $@

node: $(NODE_STAMP) ## install the npm packages the tests use (oidc-provider, fhirclient, playwright-core)

chromium: ## Debian's chromium for the browser e2e tests (apt-get as root, only when missing)
	@test -x /usr/bin/chromium || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: $(STAMP) ## start sekmet-fhir with synthetic patients and the gateway in front; Ctrl-C stops
	$(VENV)/bin/fhir-gateway demo

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check gateway tests scripts bench
	$(VENV)/bin/ruff format --check gateway tests scripts bench

typecheck: $(STAMP) ## mypy --strict on the package
	$(VENV)/bin/mypy

test: $(STAMP) $(NODE_STAMP) chromium lint typecheck ## install everything and run the whole suite
	$(PY) scripts/generate_fhir_tables.py --check
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP) ## unit tests only
	$(PY) -m pytest -q tests/unit

fmt: $(STAMP) ## format the code
	$(VENV)/bin/ruff format gateway tests scripts bench
	$(VENV)/bin/ruff check --fix gateway tests scripts bench

generate: $(STAMP) ## regenerate the FHIR tables from ../shared/fhir-r4
	$(PY) scripts/generate_fhir_tables.py

bench: $(STAMP) ## benchmarks: direct vs nginx vs gateway -> docs/performance.md; policy throughput
	@(command -v wrk >/dev/null && (command -v nginx >/dev/null || test -x /usr/sbin/nginx)) || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx)
	BENCH_VIA_MAKE=1 $(PY) bench/run.py --upstream aiohttp $(BENCH_ARGS)
	BENCH_VIA_MAKE=1 $(PY) bench/run.py --upstream asyncio $(BENCH_ARGS)
	$(PY) bench/policy_bench.py

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/node/node_modules
