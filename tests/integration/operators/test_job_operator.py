"""The submit-then-wait operator and the job sensor, run in real Airflow (dag.test) against the echo emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from airflow import __version__ as airflow_version
from packaging.version import Version

from airflow_provider_profiles.testing import serve
from tests.conftest import HAS_TASK_STATE_STORE, TASK_STATE_BACKENDS, run_dag_file
from tests.echo_emulator import EchoEmulator

DAG_FILE = Path(__file__).parents[2] / "dags" / "echo_jobs.py"
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


LEDGER_DAG_FILE = Path(__file__).parents[2] / "dags" / "echo_ledger.py"


def ledger_variables(dag_id: str) -> list[str]:
    """Keys of the retry-ledger Variables that tasks of ``dag_id`` left behind."""
    from airflow.models import Variable as VariableModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return sorted(v.key for v in session.query(VariableModel).all()
                      if v.key.startswith("profiles_job_") and f"of {dag_id}." in (v.description or ""))


@pytest.fixture(scope="module", params=TASK_STATE_BACKENDS)
def ledger_outcome(airflow_db, request):
    """Run the echo_ledger DAG once per backend (Airflow's task state store; the Variable fallback, as
    on Airflow before 3.3): (task states, the run, the emulator, ledger entries left)."""
    from airflow_provider_profiles.operators import base

    server = serve(EchoEmulator(api_key=SECRET))
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "variable":
            patch.setattr(base, "airflow_task_state_store", lambda context: None)
        patch.setenv("AIRFLOW_CONN_ECHO_DEFAULT", json.dumps(
            {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url, "max_attempts": 1}}))
        try:
            dag_run, states = run_dag_file(LEDGER_DAG_FILE)
        finally:
            server.stop()
    left = ledger_variables("echo_ledger") + [f"{task_id}:{key}" for task_id, key in task_state_rows("echo_ledger")
                                              if key == base.LEDGER_KEY]
    yield states, dag_run, server.emulator, left


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
    assert left == []  # neither a Variable nor a task state key


def test_a_failed_try_with_retries_left_keeps_the_ledger_for_the_retry(ledger_outcome):
    _, _, emulator, _ = ledger_outcome
    # Each task creates one job, the ones with a retry too: their second try found the first try's job
    # in the ledger (and failed on it) instead of creating another.
    assert emulator.counters["POST /jobs"] == 7


@pytest.mark.parametrize("backend", TASK_STATE_BACKENDS)
def test_a_lost_create_answer_on_the_last_try_keeps_its_intent_and_names_it(backend, airflow_db, capsys, monkeypatch):
    """The job may exist: the entry is what makes a cleared task check before sending again, so it
    stays, and the log says how to remove it."""
    from airflow_provider_profiles.operators import base

    if backend == "variable":
        monkeypatch.setattr(base, "airflow_task_state_store", lambda context: None)
    server = serve(EchoEmulator(api_key=SECRET))
    monkeypatch.setenv("AIRFLOW_CONN_ECHO_DEFAULT", json.dumps(
        {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url, "max_attempts": 1}}))
    server.emulator.inject("drop_after", match="POST /jobs")  # created, then the answer is lost
    try:
        dag_run, states = run_dag_file(Path(__file__).parents[2] / "dags" / "echo_lost_answer.py")
    finally:
        server.stop()
    assert states == {"lost_answer_on_last_try": "failed"}
    logs = capsys.readouterr().out
    from airflow.utils.session import create_session

    if backend == "variable":
        key = ledger_key_of(dag_run, "lost_answer_on_last_try")
        assert ledger_variables("echo_lost_answer") == [key]
        assert f"airflow variables delete {key}" in logs
        from airflow.models import Variable as VariableModel

        VariableModel.delete(key)  # the test leaves no state behind
        return
    assert ledger_variables("echo_lost_answer") == []
    assert task_state_rows("echo_lost_answer") == [("lost_answer_on_last_try", "job")]
    assert (f"DELETE /api/v2/dags/echo_lost_answer/dagRuns/{dag_run.run_id}/taskInstances/lost_answer_on_last_try/"
            "state-store/job") in logs
    from airflow.models.task_state_store import TaskStateStoreModel

    with create_session() as session:
        session.query(TaskStateStoreModel).filter_by(dag_id="echo_lost_answer").delete()


# .partial() takes an operator's own default retries on Airflow 3.3 (seen on 3.3.2), Airflow's on 3.1.8
MAPPED_TASKS_READ_OPERATOR_DEFAULTS = Version(airflow_version) >= Version("3.3")

RETRY_DAG_FILE = Path(__file__).parents[2] / "dags" / "echo_retry.py"


def task_state_rows(dag_id: str) -> list[tuple[str, str]]:
    """(task_id, key) of the task state store rows the DAG's tasks left behind."""
    if not HAS_TASK_STATE_STORE:
        return []
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return sorted((row.task_id, row.key) for row in session.query(TaskStateStoreModel).filter_by(dag_id=dag_id))


@pytest.mark.parametrize("backend", TASK_STATE_BACKENDS)
def test_a_retry_reattaches_through_the_task_state(backend, airflow_db, monkeypatch, capsys):
    """A try dies after its job was created: the next try finds the job through Airflow's task state
    store (the Variable fallback made unusable), or through the Variable when the context has no store
    (Airflow before 3.3); it reattaches to a running or succeeded job (one job at the emulator), creates
    a new one after a failed job, and leaves nothing behind."""
    from airflow_provider_profiles.operators import base

    if backend == "variable":
        monkeypatch.setattr(base, "airflow_task_state_store", lambda context: None)
    else:
        def no_variables(*args, **kwargs):
            raise AssertionError("the Variable fallback was used although the task state store is there")

        for name in ("get", "set", "clear"):
            monkeypatch.setattr(base.VariableTaskState, name, no_variables)
    server = serve(EchoEmulator(api_key=SECRET))
    monkeypatch.setenv("AIRFLOW_CONN_ECHO_DEFAULT", json.dumps(
        {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url}}))
    try:
        _, states = run_dag_file(RETRY_DAG_FILE)
    finally:
        server.stop()
    assert states == {"crash_while_waiting": "success", "crash_before_defer": "success",
                      "failed_job_then_crash": "success"}
    jobs = sorted((job["duration"], job["outcome"]) for job in server.emulator.jobs.values())
    assert jobs == [(0.0, "done"), (0.0, "failed"), (0.3, "done"), (2.0, "done")]
    logs = capsys.readouterr().out
    assert logs.count("reattaching to job") == 2 and "ended failed; creating a new one" in logs
    assert ledger_variables("echo_retry") == [] and task_state_rows("echo_retry") == []


def test_job_operators_and_sensors_retry_once_unless_told_otherwise():
    import datetime as dt

    import pendulum
    from airflow.sdk import DAG

    from tests.echo_hook import EchoJobOperator, EchoJobSensor

    for task in (EchoJobOperator(task_id="operator"), EchoJobSensor(task_id="sensor", job_id="1")):
        assert (task.retries, task.retry_delay) == (1, dt.timedelta(seconds=30))
    assert EchoJobOperator(task_id="mine", retries=3, retry_delay=5).retries == 3
    assert EchoJobSensor(task_id="mine_too", job_id="1", retries=0).retries == 0
    with DAG("defaults", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
             default_args={"retries": 4, "retry_delay": dt.timedelta(minutes=2)}):
        operator = EchoJobOperator(task_id="from_default_args")
        sensor = EchoJobSensor(task_id="sensor_from_default_args", job_id="1")
    assert (operator.retries, operator.retry_delay) == (4, dt.timedelta(minutes=2))
    assert (sensor.retries, sensor.retry_delay) == (4, dt.timedelta(minutes=2))


def test_a_job_task_dying_after_its_job_was_created_retries_by_default(airflow_db, monkeypatch):
    """No retries set: the task retries and reattaches (one job each); retries=0 on the task or in
    default_args wins: it fails."""
    server = serve(EchoEmulator(api_key=SECRET))
    monkeypatch.setenv("AIRFLOW_CONN_ECHO_DEFAULT", json.dumps(
        {"conn_type": "echo", "password": SECRET, "extra": {"base_url": server.url}}))
    dag_file = Path(__file__).parents[2] / "dags" / "echo_default_retry.py"
    try:
        _, states = run_dag_file(dag_file, dag_id="echo_default_retry")
        _, no_retry_states = run_dag_file(dag_file, dag_id="echo_no_retry_by_default_args")
    finally:
        server.stop()
    assert no_retry_states == {"no_retry_from_default_args": "failed"}
    if MAPPED_TASKS_READ_OPERATOR_DEFAULTS:
        assert states == {"default_retry": "success", "no_retry": "failed", "mapped_default_retry[0]": "success"}
    else:  # Airflow before 3.3: .partial() takes Airflow's default retries, not the operator's
        assert states == {"default_retry": "success", "no_retry": "failed", "mapped_default_retry[0]": "failed"}
    assert server.emulator.counters["POST /jobs"] == 4  # one job per task: the retries reattached
