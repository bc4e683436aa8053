# Set-up is automatic: every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench soak clean broker-check docs

$(STAMP): pyproject.toml lab/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "provisioning-agent needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' -e ./lab
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

## docs: regenerate the key reference tables of docs/configuration.md from the declared schemas
docs: $(STAMP)
	$(PY) -m tests.config_reference

## bench: the benchmarks of bench/ (results go to docs/performance.md by hand; about 10 minutes)
bench: $(STAMP) broker-check
	$(PY) bench/cloudauth_client.py
	$(PY) bench/daemon.py
	$(PY) bench/serial_station.py

## soak: 1,000 devices through a line under chaos, then the invariants (docs/reliability.md; several minutes)
soak: $(STAMP) broker-check
	nice -n 10 $(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
