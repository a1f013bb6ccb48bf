# Everything runs from a local virtualenv that these targets create: a fresh machine needs only python3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test e2e bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@

# The main job: every emulator on 127.0.0.1, the end-to-end example DAG under `airflow dags test`
# on embedded SQLite, then the per-vendor summary.
demo: install
	$(BIN)/python scripts/run_dag.py profiles_end_to_end

# Unit and emulator-backed integration tests: every test but the e2e tier. No test run is a failure too
# (pytest's exit 5), so a collection that finds nothing cannot pass.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not e2e"

# The e2e tier (tests marked e2e): the example DAGs under a real api-server, scheduler, dag-processor and
# triggerer on SQLite, against the emulators. Slow.
e2e: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m e2e

# Benchmarks print figures and ratios against a baseline measured in the same run (benchmarks/README.md).
bench: install
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test,bench]"
	$(BIN)/python benchmarks/gainsight_px_load.py
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/deferred_waits.py

clean:
	rm -rf $(VENV) .demo build *.egg-info
