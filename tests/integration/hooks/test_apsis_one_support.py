"""Helpers of the Apsis One emulator-backed tests: connection, files, and DAG runs under ``dag.test()``."""

from __future__ import annotations

import importlib.util
import json
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

SECTION = "com.apsis1.sections.default"
CLIENT_ID, CLIENT_SECRET = "apsis-client", "apsis-secret-5f1c9e"
FAST = {"queued_seconds": 0.05, "processing_seconds": 0.3, "client_secret": CLIENT_SECRET}


def connect(monkeypatch, server, conn_id: str = "apsis_one_default", **extra: Any) -> str:
    """An Airflow connection (env var) to the emulator; ``extra`` adds or overrides connection extras."""
    extras = {"base_url": server.url, "max_attempts": 3, "backoff_initial": 0.05, "backoff_max": 0.2, **extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "apsis_one", "login": CLIENT_ID, "password": CLIENT_SECRET, "extra": extras,
    }))
    return conn_id


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    path.write_text("".join(",".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


PROFILES = [
    ["email", "first_name", "city", "vip", "news"],
    ["ann@example.com", "Ann", "Malmo", "true", "1"],
    ["bo@example.com", "Bo", "Copenhagen", "false", "0"],
    ["not-an-email", "Cy", "Stockholm", "true", "1"],
]

IMPORT_KWARGS = {
    "section": SECTION,
    "keyspace": "email",
    "keyspace_column": "email",
    "attributes": {"first_name": "First name", "city": "City"},
    "tags": {"vip": "VIP"},
    "consents": [{"column": "news", "topic": "usercreated.topics.news-0k9d"}],
    "poll_interval": 0.1,
}


def run_dag(tmp_dir: Path, tasks: str, **names: Any):
    """Write a DAG file with ``tasks`` (Python, indented under ``with DAG``) into the dags folder, run
    ``dag.test()`` and return ``(dag_run, {task_id: ti})``. ``names`` become module globals."""
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    dag_id = f"apsis_one_it_{uuid.uuid4().hex[:10]}"
    source = textwrap.dedent("""\
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_profiles.operators.apsis_one import ApsisOneProfileImportOperator
        from airflow_provider_profiles.sensors.apsis_one import ApsisOneImportSensor
        {names}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False) as dag:
        {tasks}
        """).format(
        names="\n".join(f"{k} = {v!r}" for k, v in names.items()),
        dag_id=dag_id,
        tasks=textwrap.indent(textwrap.dedent(tasks), "    "),
    )
    path = dags / f"{dag_id}.py"
    path.write_text(source)
    try:
        spec = importlib.util.spec_from_file_location(dag_id, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        run = module.dag.test()
        return run, {ti.task_id: ti for ti in run.get_task_instances()}
    finally:
        path.unlink()


def xcom(run, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key=key).one_or_none()
        return None if row is None else XComModel.deserialize_value(row)
