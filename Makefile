# Two commands on a fresh machine: `make demo` and `make test`. Everything installs itself into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# parquet: the results export's Parquet writer is tested too, not skipped; azure: the Entra ID flow, likewise;
# openlineage: the lineage events a DAG run emits, read from the provider's file transport.
EXTRAS ?= test,lint,parquet,azure,openlineage

.PHONY: setup bytecode test lint demo clean airflow e2e cluster-setup cluster soak

# The emulator is a distribution of its own (emulator/); the provider's test extra needs it, installed from here.
$(STAMP): pyproject.toml emulator/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --python $(PY) -e ./emulator -e '.[$(EXTRAS)]'
	$(MAKE) --no-print-directory bytecode
	touch $(STAMP)

# Where PYTHONDONTWRITEBYTECODE is set (containers, CI) nothing else ever writes .pyc, and every Airflow
# process would compile Airflow from source at start-up: `import airflow.sdk` 4-6 s instead of 1.5-2 s.
# compileall skips what is already compiled, so a re-run costs a second or two.
bytecode:
	$(PY) -m compileall -q -j 0 $(VENV)/lib

setup: $(STAMP)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check airflow_provider_openai_batch emulator tests example_dags bench
	$(VENV)/bin/ruff format --check airflow_provider_openai_batch emulator tests example_dags bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

demo: setup
	bash scripts/demo.sh

airflow: setup
	bash scripts/airflow.sh

e2e: setup
	$(UV) pip install --quiet --python $(PY) -e ./emulator -e '.[$(EXTRAS),e2e]'
	$(MAKE) --no-print-directory bytecode
	test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	OPENAI_BATCH_E2E=1 $(PY) -m pytest -m e2e tests/e2e -v

# make cluster / make soak: PostgreSQL + Redis (Debian packages) + Celery executor, two workers, two triggerers.
# The cluster extra adds the Celery provider and the PostgreSQL driver to .venv.
cluster-setup: setup
	$(UV) pip install --quiet --python $(PY) -e ./emulator -e '.[$(EXTRAS),cluster]'
	$(MAKE) --no-print-directory bytecode

cluster: cluster-setup
	bash scripts/cluster.sh

soak: cluster-setup
	$(PY) scripts/soak.py
