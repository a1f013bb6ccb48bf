"""Run a DAG end to end against the emulators: ``python scripts/run_dag.py DAG_ID`` (``make demo``).

Starts every vendor emulator on 127.0.0.1, points the default connection of each vendor at it
(``AIRFLOW_CONN_*``), prepares an Airflow home on embedded SQLite, runs ``airflow dags test`` (real
task execution; deferred tasks go through their trigger after real serialization), then prints the
DAG's ``report`` task result (or every task's state) and what each emulator received.
Needs no account and no network beyond loopback. It lives beside example_dags/, outside the package:
it runs this repository's example DAGs, which the wheel does not ship.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from airflow_provider_profiles.testing import EMULATORS, create, serve

EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "example_dags"


def demo_connections(servers: dict, data_dir: Path) -> dict[str, dict]:
    """Each vendor's default connection pointed at its emulator, and ``profiles_source`` (SQLite)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    connections = {f"{vendor}_default": server.emulator.connection() for vendor, server in servers.items()}
    connections["profiles_source"] = {"conn_type": "sqlite", "host": str(data_dir / "source.db")}
    return connections


def airflow_env(home: Path, dags_folder: Path, connections: dict[str, dict]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PROFILES_DATA_DIR": str(home / "data"),
    })
    for conn_id, conn in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env


def task_results(home: Path, dag_id: str) -> tuple[str, dict[str, str], dict[str, object]]:
    """State of the latest run, its task states and return values, read from the SQLite metadata DB.

    Plain SQL, not Airflow's models: the caller may have imported Airflow for another home (tests).
    """
    with sqlite3.connect(home / "airflow.db") as db:
        run_id, run_state = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                                       (dag_id,)).fetchone()
        states = {_label(task, index): state for task, index, state in db.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))}
        values = {_label(task, index): json.loads(value) if isinstance(value, str) else value
                  for task, index, value in db.execute(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
            (dag_id, run_id))}
    return run_state, states, values


def _label(task_id: str, map_index: int) -> str:
    return f"{task_id}[{map_index}]" if map_index >= 0 else task_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("--dags-folder", default=EXAMPLE_DAGS, type=Path)
    parser.add_argument("--home", default=".demo", type=Path, help="Airflow home to (re)create")
    parser.add_argument("--emulator-config", default="{}", help='JSON {vendor: {setting: value}}')
    args = parser.parse_args(argv)
    home, dags_folder = args.home.resolve(), args.dags_folder.resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "airflow.db").unlink(missing_ok=True)
    config = json.loads(args.emulator_config)

    servers = {vendor: serve(create(vendor, **config.get(vendor, {}))) for vendor in EMULATORS}
    try:
        connections = demo_connections(servers, home / "data")
        env = airflow_env(home, dags_folder, connections)
        log = home / "dags_test.log"
        print(f"emulators: {', '.join(f'{v} {s.url}' for v, s in servers.items())}")
        print(f"airflow home {home}; full log in {log}")
        airflow = [sys.executable, "-m", "airflow"]
        with log.open("w") as out:
            subprocess.run([*airflow, "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
            returncode = subprocess.run([*airflow, "dags", "test", args.dag_id], env=env, stdout=out,
                                        stderr=subprocess.STDOUT).returncode
        run_state, states, values = task_results(home, args.dag_id)
        print(f"\n{args.dag_id}: {run_state}")
        for task, state in sorted(states.items()):
            print(f"  {state:<10} {task}")
        if "report" in values:
            print("\nreport:")
            print(json.dumps(values["report"], indent=2, default=str))
        print("\nwhat the emulators hold:")
        for vendor, server in servers.items():
            print(f"  {vendor}: {json.dumps(server.emulator.summary(), default=str)}")
        if returncode or run_state != "success":
            print(f"\nthe DAG run did not succeed; see {log}", file=sys.stderr)
            return 1
        return 0
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
