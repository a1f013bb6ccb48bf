"""The submit-then-wait operator and the job sensor, run in real Airflow (dag.test) against the echo emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airflow_provider_profiles.testing import serve
from tests.conftest import run_dag_file
from tests.echo_emulator import EchoEmulator

DAG_FILE = Path(__file__).parents[1] / "dags" / "echo_jobs.py"
SECRET = "echo-S3CRET-d41d8cd98f"


@pytest.fixture(scope="module")
def outcome(airflow_db):
    """Run the echo_jobs DAG once for the module: (task states, emulator, everything the run printed)."""
    server = serve(EchoEmulator(api_key=SECRET))
    os.environ["AIRFLOW_CONN_ECHO_DEFAULT"] = json.dumps(
        {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url}})
    try:
        _, states = run_dag_file(DAG_FILE)
        yield states, server.emulator
    finally:
        server.stop()
        del os.environ["AIRFLOW_CONN_ECHO_DEFAULT"]


def test_waits_in_worker_and_deferred(outcome):
    states, _ = outcome
    assert states["wait_in_worker"] == "success"
    assert states["deferred"] == "success"
    assert states["sensor_deferred"] == "success"


def test_failed_job_fails_the_task(outcome):
    states, _ = outcome
    assert states["deferred_fails"] == "failed"


def test_timeout_fails_the_task_and_cancels_the_job(outcome):
    states, emulator = outcome
    assert states["worker_timeout"] == "failed"
    assert states["deferred_timeout"] == "failed"
    statuses = [job["status"] for job in emulator.snapshot()["jobs"].values()]
    assert statuses.count("cancelled") == 2


def test_no_wait_returns_once_created(outcome):
    states, emulator = outcome
    assert states["no_wait"] == "success"
    # The endless job of no_wait is the only one left unfinished (the two other endless jobs were cancelled).
    unfinished = [j for j in emulator.snapshot()["jobs"].values() if j["status"] in ("queued", "running")]
    assert len(unfinished) == 1


def test_retry_reattaches_instead_of_creating_a_second_job(outcome):
    states, emulator = outcome
    assert states["crash_then_reattach"] == "success"
    # 8 operators create one job each; the retry reuses the job its crashed first try created.
    assert emulator.counters["POST /jobs"] == 8
