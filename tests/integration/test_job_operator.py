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


LEDGER_DAG_FILE = Path(__file__).parents[1] / "dags" / "echo_ledger.py"


def ledger_variables(dag_id: str) -> list[str]:
    """Keys of the retry-ledger Variables that tasks of ``dag_id`` left behind."""
    from airflow.models import Variable as VariableModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return sorted(v.key for v in session.query(VariableModel).all()
                      if v.key.startswith("profiles_job_") and f"of {dag_id}." in (v.description or ""))


@pytest.fixture(scope="module")
def ledger_outcome(airflow_db):
    """Run the echo_ledger DAG once: (task states, the run, the emulator, ledger Variables left)."""
    server = serve(EchoEmulator(api_key=SECRET))
    earlier = os.environ.get("AIRFLOW_CONN_ECHO_DEFAULT")  # the other module fixture's, if it ran first
    os.environ["AIRFLOW_CONN_ECHO_DEFAULT"] = json.dumps(
        {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url, "max_attempts": 1}})
    try:
        dag_run, states = run_dag_file(LEDGER_DAG_FILE)
        yield states, dag_run, server.emulator, ledger_variables("echo_ledger")
    finally:
        server.stop()
        if earlier is None:
            del os.environ["AIRFLOW_CONN_ECHO_DEFAULT"]
        else:
            os.environ["AIRFLOW_CONN_ECHO_DEFAULT"] = earlier


def ledger_key_of(dag_run, task_id: str) -> str:
    from types import SimpleNamespace

    from airflow_provider_profiles.operators.base import _ledger_key

    ti = SimpleNamespace(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, map_index=-1)
    return _ledger_key({"ti": ti})


def test_every_terminal_path_removes_the_retry_ledger(ledger_outcome):
    states, dag_run, _, left = ledger_outcome
    assert states == {
        "succeeds": "success", "handed_over": "success", "job_fails": "failed",
        "gone_on_last_try": "failed", "gone_on_both_tries": "failed",
        "deferred_error_on_last_try": "failed", "deferred_error_on_both_tries": "failed",
    }
    leaks = {task_id for task_id in states if ledger_key_of(dag_run, task_id) in left}
    assert leaks == set()
    assert left == []


def test_a_failed_try_with_retries_left_keeps_the_ledger_for_the_retry(ledger_outcome):
    _, _, emulator, _ = ledger_outcome
    # Each task creates one job, the ones with a retry too: their second try found the first try's job
    # in the ledger (and failed on it) instead of creating another.
    assert emulator.counters["POST /jobs"] == 7


def test_a_lost_create_answer_on_the_last_try_keeps_its_intent_and_names_it(airflow_db, capsys, monkeypatch):
    """The job may exist: the entry is what makes a cleared task check before sending again, so it
    stays, and the log says how to remove it."""
    server = serve(EchoEmulator(api_key=SECRET))
    monkeypatch.setenv("AIRFLOW_CONN_ECHO_DEFAULT", json.dumps(
        {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url, "max_attempts": 1}}))
    server.emulator.inject("drop_after", match="POST /jobs")  # created, then the answer is lost
    try:
        dag_run, states = run_dag_file(Path(__file__).parents[1] / "dags" / "echo_lost_answer.py")
    finally:
        server.stop()
    assert states == {"lost_answer_on_last_try": "failed"}
    assert ledger_variables("echo_lost_answer") == [ledger_key_of(dag_run, "lost_answer_on_last_try")]
    assert f"airflow variables delete {ledger_key_of(dag_run, 'lost_answer_on_last_try')}" in capsys.readouterr().out
    from airflow.models import Variable as VariableModel

    VariableModel.delete(ledger_key_of(dag_run, "lost_answer_on_last_try"))  # the test leaves no state behind
