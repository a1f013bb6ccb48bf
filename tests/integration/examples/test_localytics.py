"""The Localytics example DAGs, run by Airflow (``dag.test``) against the emulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[3] / "example_dags"


@pytest.fixture
def localytics_default(emulator, airflow_connection, airflow_db):
    server = emulator("localytics", time_scale=20)
    airflow_connection("localytics_default", "localytics", login="localytics-key", password="localytics-secret",
                       host=server.url, extra={"org_id": "60"})
    return server


def xcom(dag_run, task_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id,
                                                 key="return_value")).first()
        return XComModel.deserialize_value(row) if row is not None else None


def test_profiles_example(localytics_default, run_dag, tmp_path):
    # imports finish at once here, so the deferrable upload completes on its check-before-defer
    localytics_default.emulator.pending_seconds = localytics_default.emulator.running_seconds = 0
    dag_run, states = run_dag(EXAMPLES / "example_localytics_profiles.py", run_conf={
        "source": str(EXAMPLES / "data" / "localytics_profiles.csv"), "work_dir": str(tmp_path)})
    assert states == {"prepare": "success", "chunks": "success", "upload[0]": "success", "report": "success"}
    summary = xcom(dag_run, "report")
    # 7 rows: one without a customer id and one with a bad date are rejected before upload
    assert (summary["read"], summary["rejected_before_upload"], summary["sent"]) == (7, 2, 5)
    assert (summary["imported"], summary["failed_at_localytics"]) == (5, 0)
    with open(summary["rejects_file"], newline="") as handle:
        rejects = {row["record"]: row["reason"] for row in csv.DictReader(handle)}
    assert "not an ISO date" in rejects["5"] and "customer id is empty" in rejects["6"]
    profiles = localytics_default.emulator.snapshot()["profiles"]["org_id:60"]
    assert profiles["c-1004"] == {"plan": "gold", "signup_date": "2022-07-30",
                                  "interests": ["travel", "food", "news"], "login_count": 12}
    assert "plan" not in profiles["c-1003"]  # blank plan -> delete op
    assert json.dumps(summary).count("localytics-secret") == 0


def test_audiences_example_creates_then_replaces(localytics_default, run_dag, tmp_path):
    conf = {"source": str(EXAMPLES / "data" / "localytics_audience.csv"), "work_dir": str(tmp_path)}
    dag_run, states = run_dag(EXAMPLES / "example_localytics_audiences.py", run_conf=conf)
    assert set(states.values()) == {"success"}, states
    first = xcom(dag_run, "report")
    assert (first["read"], first["rejected_before_upload"], first["sent"], first["in_list"]) == (6, 2, 4, 4)
    assert xcom(dag_run, "choose_action")["action"] == "create"

    dag_run, states = run_dag(EXAMPLES / "example_localytics_audiences.py", run_conf=conf)
    assert set(states.values()) == {"success"}, states
    assert xcom(dag_run, "choose_action") == {"action": "replace", "audience_list_id": first["audience_list_id"]}
    [audience] = localytics_default.emulator.snapshot()["audiences"].values()
    assert (audience["name"], audience["version"], audience["record_count"]) == ("crm-vip", 2, 4)
