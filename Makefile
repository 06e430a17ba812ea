# powgate — developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Built binaries (control plane, etcd, kwok, helm) and cluster state live here.
CACHE ?= $(CURDIR)/.cache
BIN := $(CACHE)/bin
export POWGATE_CACHE := $(CACHE)

include hack/tools.mk
include hack/kind.mk
include hack/chart.mk

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The compiled modules too (setup.py): the sidecar's request path, compiled
# from these sources, is rebuilt when they change (otherwise it serves from
# source with a warning: powgate_sidecar/_compiled.py).
COMPILED_SOURCES := $(wildcard sidecar/powgate_sidecar/*.pxd) \
	$(wildcard $(patsubst %.pxd,%.py,$(wildcard sidecar/powgate_sidecar/*.pxd))) \
	$(wildcard sidecar/powgate_sidecar/*.pyx sidecar/llhttp/src/*.c sidecar/llhttp/include/*.h)

$(VENV)/.installed: pyproject.toml setup.py src/powgate/_native.c $(COMPILED_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	hack/progress.sh "pip install -e .[dev]" $(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with powgate and its dev tools

.PHONY: system-deps
system-deps: ## Install the Debian packages the tests need (prometheus, chromium, docker.io, containerd, …)
	hack/install-system-deps.sh

# npm packages the browser tests serve to Chromium (the ALTCHA widget), pinned by
# tests/js/package-lock.json. npm keeps its downloads under $(CACHE)/npm, so a
# reinstall after `rm -rf tests/js/node_modules` needs no network.
JS_DEPS := tests/js/node_modules/.package-lock.json

$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --cache $(CACHE)/npm --prefer-offline --no-audit --no-fund
	touch $@

.PHONY: js-deps
js-deps: $(JS_DEPS) ## Install the npm packages of the browser tests (needs npm: make system-deps)

# hash-wasm's WebAssembly builds of Argon2id and scrypt ship inside the Python
# package (the sidecar serves them beside solver.js), copied from the version
# tests/js/package-lock.json pins; tests/unit/test_js_vendor.py fails on drift.
VENDORED_JS := argon2 scrypt
.PHONY: vendor-js
vendor-js: $(JS_DEPS) ## Copy the pinned hash-wasm files into src/powgate/static/hash-wasm
	for name in $(VENDORED_JS); do \
	  cp tests/js/node_modules/hash-wasm/dist/$$name.umd.min.js src/powgate/static/hash-wasm/; \
	done
	cp tests/js/node_modules/hash-wasm/LICENSE src/powgate/static/hash-wasm/LICENSE

.PHONY: lint
lint: venv ## ruff, mypy --strict and the import rules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: format
format: venv ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The suite mostly waits (control planes, pods, scrapes, browsers): `make test`
# runs it on 3 workers (tests/conftest.py says how the modules are spread; 3
# take as long as 4, docs/testing.md). `make test TEST_WORKERS=1` runs it serially.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: test
test: system-deps venv tools js-deps images lint ## Everything CI runs: lint, unit, integration (real control plane and node)
	$(VENV)/bin/pytest $(PYTEST_PARALLEL)

.PHONY: unit
unit: venv ## Fast tests only (no control plane, no browser)
	$(VENV)/bin/pytest tests/unit

.PHONY: crds
crds: venv ## Regenerate crds/ and docs/policy-reference.md from the PowPolicy model
	$(PY) -m powgate_operator.crd > crds/powpolicy.yaml
	$(PY) -m powgate_operator.reference > docs/policy-reference.md

.PHONY: bench
bench: system-deps venv tools ## Benchmarks, printed as tables with same-run references
	$(PY) -m bench

.PHONY: fuzz
fuzz: venv ## Hostile input, counted: 1,000,000 solution payloads, config documents, priced payloads, requests, and requests to both parsers (docs/security.md)
	$(PY) -m powgate_testbed.fuzz --payloads 1000000 --configs 1000000 --priced 1000000 --seed 1
	$(PY) -m powgate_testbed.fuzz_http --runs 1000000 --seed 1
	$(PY) -m powgate_testbed.fuzz_parser --runs 1000000 --seed 1

.PHONY: demo
demo: venv system-deps tools images ## The main job: adaptive PoW defending a stand-in AI service (on real pods where possible)
	$(PY) -m powgate_testbed.demo

.PHONY: cluster-up
cluster-up: venv tools ## Start the local control plane; kubeconfig in $(CACHE)/cluster/kubeconfig
	$(PY) -m powgate_testbed.cluster up

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane and remove its state
	$(PY) -m powgate_testbed.cluster down

.PHONY: clean
clean: ## Remove the venv and caches (keeps the Go build cache)
	rm -rf $(VENV) $(CACHE) tests/js/node_modules .mypy_cache .pytest_cache .ruff_cache
