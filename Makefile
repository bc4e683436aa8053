# Set-up is automatic: every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Packages (docs/install.md). PACKAGE_RELEASE numbers the builds of one version: the .deb is
# VERSION-PACKAGE_RELEASE, the bundle provisioning-agent-VERSION-PACKAGE_RELEASE-ARCH.tar.gz.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
PACKAGE_RELEASE ?= 1
BUNDLE_ARCHES ?= x86_64 aarch64
export VERSION PACKAGE_RELEASE

# make lock: the pinned, hashed requirements, resolved for Python 3.11 on every platform.
# UPGRADE=1 moves every pin to the newest release; otherwise the current pins are kept
# where pyproject.toml still allows them.
UV_COMPILE = $(PY) -m uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

.PHONY: demo test lint typecheck unit bench bench-growth soak clean broker-check lock deb bundle package-test docs

# The venv installs exactly what the lock says (hash-checked), then the project itself
# without resolving anything: a fresh clone gets the same versions as CI.
$(STAMP): pyproject.toml lab/pyproject.toml requirements/test.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "provisioning-agent needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/test.lock
# (PYTHONWARNINGS: setuptools' note about editable installs is not for us)
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps --no-build-isolation -e . -e ./lab
	@touch $(STAMP)

## demo: the main job on an embedded default (emulated cloud, simulated devices, no account)
demo: $(STAMP)
	$(PY) -m provisioning_lab demo

## test: lint, type-check and the whole test suite (tests start their own Mosquitto brokers)
test: lint typecheck broker-check
	$(PY) -m pytest

broker-check:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "make test needs the mosquitto binary (the tests start their own brokers on free ports):"; \
	  echo "  Debian/Ubuntu: sudo apt-get install mosquitto    macOS: brew install mosquitto"; exit 2; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit

## lock: regenerate requirements/*.lock from pyproject.toml (UPGRADE=1 to take newer releases)
# The runtime lock is constrained by the test lock: the gateway runs exactly the versions
# the tests ran (a test tool that caps a runtime library caps it for the gateway too).
lock: $(STAMP)
	$(UV_COMPILE) requirements/test.in --group pyproject.toml:package \
		--no-emit-package provisioning-agent --no-emit-package provisioning-agent-lab -o requirements/test.lock
	$(UV_COMPILE) pyproject.toml --constraint requirements/test.lock -o requirements/runtime.lock

## deb: build/deb/provisioning-agent_VERSION-PACKAGE_RELEASE_ARCH.deb (Debian 12; installs build deps as root)
deb: $(STAMP)
	packaging/build-deb.sh

## bundle: build/bundle/provisioning-agent-VERSION-PACKAGE_RELEASE-ARCH.tar.gz for each of BUNDLE_ARCHES
bundle: $(STAMP)
	packaging/build-bundle.sh $(BUNDLE_ARCHES)

## package-test: the .deb and the bundle installed, run, upgraded and removed in a Debian 12 root (root; minutes)
package-test: $(STAMP) broker-check
	tests/packaging/run.sh

## docs: regenerate the key reference tables of docs/configuration.md from the declared schemas
docs: $(STAMP)
	$(PY) -m tests.config_reference

## bench: the benchmarks of bench/ (results go to docs/performance.md by hand; about 10 minutes)
bench: $(STAMP) broker-check
	$(PY) bench/cloudauth_client.py
	$(PY) bench/daemon.py
	$(PY) bench/serial_station.py

## bench-growth: costs as the work grows: the journal (0 to 1M devices, retention), a report backlog (1k-10k),
##               devices waiting on a 2 QPS cloud (1k-10k); the growth table of docs/performance.md (tens of minutes)
bench-growth: $(STAMP) broker-check
	$(PY) bench/growth.py
	$(PY) bench/backlog.py
	$(PY) bench/waiting.py

## soak: 1,000 devices through a line under chaos, then the invariants (docs/reliability.md; several minutes)
##       SOAK_ARGS=--ledger: two agents on one PostgreSQL ledger (needs the PostgreSQL binaries and psycopg)
soak: $(STAMP) broker-check
	nice -n 10 $(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build
