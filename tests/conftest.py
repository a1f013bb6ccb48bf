"""Shared test set-up: an isolated AIRFLOW_HOME on SQLite, emulator servers, Airflow connections via env."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports airflow: a private home, embedded SQLite, no example DAGs.
_HOME = Path(os.environ.get("PROFILES_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="profiles-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")


# Airflow's task state store (3.3+) and the Variable fallback that serves before it
HAS_TASK_STATE_STORE = importlib.util.find_spec("airflow.models.task_state_store") is not None
TASK_STATE_BACKENDS = [
    pytest.param("task_state_store", marks=pytest.mark.skipif(
        not HAS_TASK_STATE_STORE, reason="Airflow before 3.3 has no task state store: the Variable fallback serves")),
    "variable",
]


@pytest.fixture
def emulator(profiles_emulator, request):
    """``emulator("apsis_one", **config)`` -> running ``EmulatorServer`` (stopped after the test).

    The package's emulators come from its ``profiles_emulator`` fixture; ``"echo"`` is the tests' own
    (tests/echo_emulator.py).
    """

    def start(vendor: str, **config):
        if vendor != "echo":
            return profiles_emulator(vendor, **config)
        from airflow_provider_profiles.testing import serve
        from tests.echo_emulator import EchoEmulator

        server = serve(EchoEmulator(**config))
        request.addfinalizer(server.stop)
        return server

    return start


@pytest.fixture
def airflow_connection(monkeypatch):
    """``airflow_connection(conn_id, conn_type, password=..., login=..., extra={...})`` via AIRFLOW_CONN_*."""

    def define(conn_id: str, conn_type: str, **fields) -> str:
        fields.setdefault("extra", {})
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, **fields}))
        return conn_id

    return define


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated metadata DB in the test AIRFLOW_HOME (needed to run DAGs with ``dag.test()``).

    Under ``dag.test()`` a retry waits its ``retry_delay`` in wall-clock time (the job operators
    default to one retry after 30 s): here a task up for retry is ready at once, as a test advances
    an emulator's clock instead of sleeping. How many tries ran is unchanged.

    Airflow 3.1 builds its in-process Execution API app (which ``dag.test()`` runs every task
    through) anew for each task, a second or more each; later versions build it once per process
    (``functools.lru_cache`` on ``in_process_api_server``), and so does this fixture there. The
    oldest-Airflow tier took three times the newest's time without it."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.execution_time import supervisor
    from airflow.utils.state import TaskInstanceState

    if not (_HOME / "airflow.db").exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TaskInstance, "ready_for_retry", lambda ti: ti.state == TaskInstanceState.UP_FOR_RETRY)
        if not hasattr(supervisor.in_process_api_server, "cache_info"):
            patch.setattr(supervisor, "in_process_api_server", functools.lru_cache(maxsize=1)(supervisor.in_process_api_server))
        yield _HOME


def run_dag_file(dag_file, dag_id: str | None = None, **test_kwargs):
    """Run a DAG file for real with ``dag.test()``; return (dag_run, {task_id[map_index]: state}).

    The file is copied into the test dags folder first (Airflow 3 only runs DAGs of a bundle).
    Tasks run in real Airflow; deferred tasks go through their trigger inline. Needs ``airflow_db``.
    """
    import importlib.util
    import shutil

    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    dags = _HOME / "dags"
    dags.mkdir(exist_ok=True)
    target = dags / Path(dag_file).name
    shutil.copy(dag_file, target)
    spec = importlib.util.spec_from_file_location(f"test_dag_{target.stem}", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = {d.dag_id: d for d in vars(module).values() if type(d).__name__ == "DAG"}
    dag = found[dag_id] if dag_id else next(iter(found.values()))
    dag_run = dag.test(**test_kwargs)
    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=dag_run.run_id).all()
        states = {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti.state for ti in tis}
    return dag_run, states


@pytest.fixture
def run_dag(airflow_db):
    """``run_dag(dag_file, dag_id=None, **dag_test_kwargs)`` -> (dag_run, {task_id[map_index]: state})."""
    return run_dag_file


@pytest.fixture
def servers():
    """``servers(answer)`` -> a started ``tests.misbehaving_server.MisbehavingServer`` (closed after the test)."""
    from tests.misbehaving_server import MisbehavingServer

    started = []

    def start(answer):
        started.append(MisbehavingServer(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server (``tests.services.PostgresServer``) for the session: tests create
    tables of their own names, so they do not collide. A machine without PostgreSQL fails here with the
    error saying what to install; it is never skipped."""
    from tests.services import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(autouse=True)
def async_clients_closed(monkeypatch):
    """Every shared async client (aiohttp session) a test opens is closed by its end: a trigger closes
    its hook, and a test that opens one closes it too. Left open it leaks, and aiohttp warns only when
    the garbage collector gets to it, in some later test."""
    from airflow_provider_profiles.hooks import base

    made = []
    take = base._ClientLease.take.__func__

    def recording(cls, loop, key, slots, make):
        return take(cls, loop, key, slots, lambda: made.append(make()) or made[-1])

    monkeypatch.setattr(base._ClientLease, "take", classmethod(recording))
    yield
    left = sum(not session.closed for session in made)
    assert not left, f"{left} async client(s) left open: await hook.aclose() for each hook that sent"
