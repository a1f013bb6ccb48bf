# Everything runs from a local virtualenv that these targets create: a fresh machine needs only python3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install servers demo test test-oldest e2e cluster bench bench-throughput clean

install: $(VENV)/.installed

# Debian's PostgreSQL and Redis: the tests start their own throwaway servers on 127.0.0.1 (tests/services.py).
SERVER_PACKAGES := postgresql redis-server
servers:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SERVER_PACKAGES) >/dev/null; fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@

# The main job: every emulator on 127.0.0.1, the end-to-end example DAG under `airflow dags test`
# on embedded SQLite, then the per-vendor summary.
demo: install
	$(BIN)/python scripts/run_dag.py profiles_end_to_end

# Unit and emulator-backed integration tests: every test but the e2e and cluster tiers. No test run is a failure too
# (pytest's exit 5), so a collection that finds nothing cannot pass.
test: install servers
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not e2e and not cluster"

# The e2e tier (tests marked e2e): the example DAGs under a real api-server, scheduler, dag-processor and
# triggerer on SQLite, against the emulators. Slow.
e2e: install servers
	$(BIN)/python -m pytest -q -p no:cacheprovider -m e2e

# The Celery tier (tests marked cluster): profiles_end_to_end on the Celery executor, two workers sharing
# only S3 (moto's server) and PostgreSQL (metadata database and source), Redis as the broker. Slow.
cluster: install servers
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test,cluster]"
	$(BIN)/python -m pytest -q -p no:cacheprovider -m cluster

# The oldest Airflow setup.cfg allows (its floor is the only place the version is written), in a
# second virtualenv made from scratch: the unit and integration suites must pass there too, less the
# tests marked heavy (a million rows; partitioned DAGs run many times), which keep CI within its time:
# one partitioned DAG test and the partitions' parse-time tests still run there.
OLDEST_AIRFLOW := $(shell sed -n 's/^ *apache-airflow>=\([0-9.]*\).*/\1/p' setup.cfg)
OLDEST_VENV ?= .venv-oldest

test-oldest: install servers
	rm -rf $(OLDEST_VENV)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(OLDEST_VENV)
	$(BIN)/uv pip install --quiet --python $(OLDEST_VENV)/bin/python -e ".[test]" "apache-airflow==$(OLDEST_AIRFLOW)"
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not heavy" tests/unit tests/integration

# Benchmarks print figures and ratios against a baseline measured in the same run (benchmarks/README.md).
bench: install
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test,bench]"
	$(BIN)/python benchmarks/gainsight_px_load.py
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/deferred_waits.py

# A declared sync per vendor from a 1,000,000-row PostgreSQL table to its emulator, against the floor the
# vendor's limits allow (benchmarks/README.md); BENCH_ARGS="--rows 100000" for a quick run.
bench-throughput: install servers
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test,bench]"
	$(BIN)/python benchmarks/throughput.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .demo build *.egg-info
