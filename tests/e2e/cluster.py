"""A real Airflow on 127.0.0.1 for the end-to-end suite: api-server, scheduler (LocalExecutor),
dag-processor and triggerer as separate processes on embedded SQLite, plus every vendor emulator.

Each process runs in its own process group, so it can be killed (e.g. the triggerer, while sensors
wait) and started again, and nothing outlives the suite.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import runpy
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from airflow_provider_profiles.testing import EMULATORS, EmulatorServer, create, serve
from tests.echo_emulator import EchoEmulator

REPO = Path(__file__).parents[2]
# The demo runner (scripts/, outside the package) knows which connections the example DAGs use.
demo_connections = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "run_dag.py"))["demo_connections"]

PROCESSES = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{api_port}"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
}
TERMINAL_RUN_STATES = {"success", "failed"}
# Pools the example DAGs name; a task in a pool that does not exist is never scheduled.
POOLS = {"localytics_uploads": 1}
# Triggers many DAG runs from one interpreter: one Airflow import instead of one CLI process per run.
TRIGGER_SCRIPT = """
import datetime, json, sys
from airflow.api.common.trigger_dag import trigger_dag
from airflow.utils.types import DagRunTriggeredByType
for dag_id, run_id, conf, logical_date in json.loads(sys.argv[1]):
    trigger_dag(dag_id, run_id=run_id, conf=conf, triggered_by=DagRunTriggeredByType.CLI, replace_microseconds=False,
                logical_date=logical_date and datetime.datetime.fromisoformat(logical_date))
"""


def airflow_home(tmp_path_factory, keep_env: str, prefix: str, test_dag_files: tuple[str, ...]) -> tuple[Path, Path]:
    """A cluster's Airflow home and its dags folder: the example DAGs and ``test_dag_files`` from tests/dags.
    ``keep_env`` names a folder that keeps the home (logs, DB) where a person can look after a failure."""
    if os.environ.get(keep_env):
        home = Path(os.environ[keep_env])
        shutil.rmtree(home, ignore_errors=True)
    else:
        home = tmp_path_factory.mktemp(prefix)
    dags = home / "dags"
    shutil.copytree(REPO / "example_dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    for dag_file in test_dag_files:
        shutil.copy(REPO / "tests" / "dags" / dag_file, dags / dag_file)
    return home, dags


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowCluster:
    # {name: airflow CLI arguments}: the processes ``start()`` runs; a subclass adds its own (Celery workers)
    process_args: dict[str, list[str]] = PROCESSES

    def __init__(self, home: Path, dags_folder: Path, emulator_config: dict[str, dict] | None = None,
                 secrets: dict[str, dict] | None = None, connection_extras: dict[str, dict] | None = None):
        self.home, self.dags_folder = home, dags_folder
        self.api_port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        config = emulator_config or {}
        self.connection_extras = connection_extras or {}  # per vendor, e.g. a shorter retry policy
        self.emulators: dict[str, EmulatorServer] = {
            vendor: serve(create(vendor, **config.get(vendor, {}))) for vendor in EMULATORS
        }
        self.emulators["echo"] = serve(EchoEmulator(**config.get("echo", {})))  # for the DAGs in tests/dags
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # tests read the public REST API (extra links) as the UI does, without a login
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # The example DAGs retry; the default 300 s between tries would dominate the suite.
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
            # Airflow 3.3 can fail a resumed deferred task on the stale "success" of its deferring process
            # (apache/airflow#72716, #71580; fix proposed in #71579). One retry for tasks that set none
            # (the example sensors) absorbs it; tests accept that second try only where the scheduler
            # logged this race (stale_success_races).
            "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
            # Only the runs a test triggers: a scheduled DAG (profiles_end_to_end) must not start by itself
            # and write into the emulators while another test counts what they hold.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "PROFILES_DATA_DIR": str(self.home / "data"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])),
        })
        for conn_id, conn in demo_connections(self.emulators, self.home / "data").items():
            extras = self.connection_extras.get(conn_id.removesuffix("_default"))
            if extras:
                conn = {**conn, "extra": {**conn.get("extra", {}), **extras}}
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        return env

    # processes ------------------------------------------------------------------------------------
    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True,
                              text=True, check=check)

    def process_env(self, name: str) -> dict[str, str]:
        """The environment of process ``name``: the shared one, unless a subclass sets one per process."""
        return self.env

    def process_cwd(self, name: str) -> Path | None:
        """The working folder of process ``name``: this one's, unless a subclass sets one per process."""
        return None

    def start(self, *names: str) -> None:
        for name in names or self.process_args:
            args = [a.format(api_port=self.api_port) for a in self.process_args[name]]
            log = (self.home / f"{name}.log").open("a")
            self.processes[name] = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=self.process_env(name),
                                                    cwd=self.process_cwd(name), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        for signal_number in (sig, signal.SIGKILL):  # SIGKILL: a graceful stop a loaded machine made too slow
            try:
                os.killpg(process.pid, signal_number)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                if signal_number == signal.SIGKILL:
                    raise

    def up(self) -> AirflowCluster:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        for pool, slots in POOLS.items():
            self.airflow("pools", "set", pool, str(slots), "e2e")
        self.start()
        self.wait_for(lambda: self._api_ready(), 120, "the api-server to listen")
        return self

    def down(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM if name != "scheduler" else signal.SIGKILL)
        for server in self.emulators.values():
            server.stop()

    def _api_ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.api_port), timeout=1).close()
            return True
        except OSError:
            return False

    @staticmethod
    def wait_for(condition, timeout: float, what: str, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    # DAG runs ---------------------------------------------------------------------------------------
    def api_get(self, path: str, **params: Any) -> Any:
        """GET on the api-server's public REST API (``/api/v2`` + ``path``), as JSON."""
        import requests

        response = requests.get(f"http://127.0.0.1:{self.api_port}/api/v2{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def query(self, sql: str, *params: Any) -> list[tuple]:
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def wait_parsed(self, dag_id: str, timeout: float = 180) -> None:
        self.wait_for(lambda: self.query("select 1 from serialized_dag where dag_id = ?", dag_id), timeout,
                      f"{dag_id} to be parsed")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.wait_parsed(dag_id)
        run_id = f"e2e__{dag_id}__{time.time_ns()}"
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf:
            args += ["--conf", json.dumps(conf)]
        self.airflow(*args)
        return run_id

    def trigger_many(self, dag_ids: list[str], conf: dict | None = None, logical_date: bool = True) -> dict[str, str]:
        """One run of each DAG, all started at once; returns {dag_id: run_id}.

        With ``logical_date`` each run gets its own (now, to the microsecond), as a scheduled run has;
        without, the run has none, as a manual trigger from the CLI or REST API without a date.
        """
        for dag_id in dag_ids:
            self.wait_parsed(dag_id)
        runs = {dag_id: f"e2e__{dag_id}__{time.time_ns()}" for dag_id in dag_ids}
        now = datetime.datetime.now(datetime.UTC)
        requests = [[dag_id, run_id, conf, (now + datetime.timedelta(microseconds=i)).isoformat() if logical_date else None]
                    for i, (dag_id, run_id) in enumerate(runs.items())]
        completed = subprocess.run([sys.executable, "-c", TRIGGER_SCRIPT, json.dumps(requests)], env=self.env,
                                   capture_output=True, text=True, check=False)
        if completed.returncode:
            raise RuntimeError(f"triggering {dag_ids} failed:\n{completed.stderr[-3000:]}")
        return runs

    def wait_runs(self, runs: dict[str, str], timeout: float = 600) -> dict[str, str]:
        """Wait until every run of ``runs`` ({dag_id: run_id}) has ended; returns {dag_id: state}."""
        deadline = time.monotonic() + timeout
        return {dag_id: self.wait_run(dag_id, run_id, max(1.0, deadline - time.monotonic()))
                for dag_id, run_id in runs.items()}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("select state from dag_run where dag_id = ? and run_id = ?", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        return self.wait_for(lambda: (s := self.run_state(dag_id, run_id)) in TERMINAL_RUN_STATES and s, timeout,
                             f"{dag_id} {run_id} to finish", interval=2)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
        rows = self.query("select task_id, map_index, state, try_number from task_instance "
                          "where dag_id = ? and run_id = ?", dag_id, run_id)
        return {(t if m < 0 else f"{t}[{m}]"): (s, n) for t, m, s, n in rows}

    def task_log_dir(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Path:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return folder if map_index < 0 else folder / f"map_index={map_index}"

    def deferred_tries(self, dag_id: str, run_id: str) -> dict[str, list[int]]:
        """{task: [try numbers that deferred]}: a try deferred if its log says so and the triggerer logged
        the trigger it ran for that try (``attempt=N.log.trigger.<id>.log``)."""
        deferred: dict[str, list[int]] = {}
        for task in self.task_states(dag_id, run_id):
            task_id, _, index = task.partition("[")
            folder = self.task_log_dir(dag_id, run_id, task_id, int(index.rstrip("]")) if index else -1)
            for log in sorted(folder.glob("attempt=*.log")):
                attempt = int(log.name.split("=")[1].split(".")[0])
                if "Pausing task as DEFERRED" in log.read_text(errors="replace") and list(
                        folder.glob(f"attempt={attempt}.log.trigger.*.log")):
                    deferred.setdefault(task, []).append(attempt)
        return deferred

    def stale_success_races(self, dag_id: str, run_id: str) -> set[str]:
        """Task ids the scheduler failed because a deferring process's late "success" met the resumed
        try, whether that try was already running or still queued when the late report came."""
        marker = re.compile(r"finished with state success, but the task instance's state attribute is (running|queued)")
        pattern = re.compile(rf"<TaskInstance: {re.escape(dag_id)}\.(\S+) {re.escape(run_id)} ")
        log = (self.home / "scheduler.log").read_text(errors="replace")
        return {m.group(1) for line in log.splitlines() if marker.search(line) for m in [pattern.search(line)] if m}

    def deferred_count(self) -> int:
        return self.query("select count(*) from task_instance where state = 'deferred'")[0][0]

    def log_text(self) -> str:
        """Every task log and process log written so far."""
        files = [*self.home.glob("*.log"), *(self.home / "logs").rglob("*")]
        return "".join(p.read_text(errors="replace") for p in files if p.is_file())
