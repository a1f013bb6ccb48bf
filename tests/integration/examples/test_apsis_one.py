"""The Apsis One example DAG runs for real (dag.test, triggers inline) against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

DAG_FILE = Path(__file__).parents[3] / "example_dags" / "example_apsis_one.py"


def test_example_dag(emulator, run_dag, monkeypatch, tmp_path):
    server = emulator("apsis_one", queued_seconds=0.05, processing_seconds=0.3)
    monkeypatch.setenv("AIRFLOW_CONN_APSIS_ONE_DEFAULT", json.dumps(server.emulator.connection()))
    # the example's data sits next to it; copy it where the copied DAG file will look
    data = Path(__import__("os").environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "apsis_one_profiles.csv").write_bytes((DAG_FILE.parent / "data" / "apsis_one_profiles.csv").read_bytes())
    dag_run, states = run_dag(DAG_FILE)
    assert states == {"import_profiles": "success", "start_import": "success", "wait_for_import": "success",
                      "report": "success"}
    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id="report",
                                                 key="return_value").one()
        report = XComModel.deserialize_value(row)
    counts = {"profiles_found": 10, "profiles_processed": 9, "profiles_failed": 1}
    imported = report["import_profiles"]
    assert (imported["read"], imported["sent"], imported["vendor_succeeded"], imported["vendor_failed"]) == (10, 10, 9, 1)
    assert {k: imported["details"][k] for k in counts} == counts
    assert {k: report["wait_for_import"][k] for k in counts} == counts
    summary = server.emulator.summary()
    assert summary["imports"] == {"completed": 2} and summary["profiles_stored"] == 9
