"""One real Airflow (api-server, scheduler with LocalExecutor, dag-processor, triggerer) for the e2e suite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.cluster import AirflowCluster

REPO = Path(__file__).parents[2]

# Distinctive secrets: the emulators require them, and the audit looks for them everywhere afterwards.
SECRETS = {
    "gainsight_px": {"api_key": "gpx-E2E-SECRET-7f3a9c"},
    "apsis_one": {"client_secret": "apsis-E2E-SECRET-1b8d4e"},
    "localytics": {"api_secret": "loc-E2E-SECRET-9e2f6a"},
    "mediarithmics": {"token": "mics-E2E-SECRET-4c7b1d"},
    "echo": {"api_key": "echo-E2E-SECRET-3a5f0c"},
}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    # PROFILES_E2E_HOME keeps the Airflow home (logs, DB) where a person can look after a failure.
    if os.environ.get("PROFILES_E2E_HOME"):
        home = Path(os.environ["PROFILES_E2E_HOME"])
        shutil.rmtree(home, ignore_errors=True)
    else:
        home = tmp_path_factory.mktemp("e2e-airflow")
    dags = home / "dags"
    shutil.copytree(REPO / "example_dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    for dag_file in ("echo_jobs.py", "echo_long_waits.py"):
        shutil.copy(REPO / "tests" / "dags" / dag_file, dags / dag_file)
    cluster = AirflowCluster(home, dags, emulator_config=SECRETS)
    try:
        yield cluster.up()
    finally:
        cluster.down()
