"""The mediarithmics example DAG, run by Airflow (``dag.test``) against the emulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

EXAMPLES = Path(__file__).parents[3] / "example_dags"


def test_example_new_import_per_run_uploads_each_chunk_and_reconciles(emulator, airflow_connection, run_dag, tmp_path):
    # executions end at once, so each deferrable upload completes on its check-before-defer (the deferred
    # path itself is covered in test_mediarithmics_operators); the example polls every 5 s otherwise
    server = emulator("mediarithmics", pending_seconds=0, running_seconds=0)
    airflow_connection("mediarithmics_default", **server.emulator.connection())
    dag_run, states = run_dag(EXAMPLES / "example_mediarithmics.py", run_conf={
        "source": str(EXAMPLES / "data" / "mediarithmics_profiles.csv"), "work_dir": str(tmp_path)})
    assert states == {"prepare": "success", "chunks": "success", "create_document_import": "success",
                      "upload[0]": "success", "upload[1]": "success", "upload[2]": "success", "report": "success"}

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids="report",
                                                 key="return_value")).first()
        summary = XComModel.deserialize_value(row)
    # 20 rows: no identifier and two identifiers are rejected before upload; an account id without
    # compartment is sent (the default compartment is used)
    assert (summary["read"], summary["rejected_before_upload"], summary["sent"]) == (20, 2, 18)
    assert (summary["imported"], summary["failed_at_mediarithmics"]) == (18, 0)
    with open(summary["rejects_file"], newline="") as handle:
        assert [row["record"] for row in csv.DictReader(handle)] == ["7", "13"]
    [definition] = server.emulator.snapshot()["document_imports"].values()
    assert definition["name"] == f"User profiles from CRM - {dag_run.logical_date:%Y-%m-%d}"
    assert server.emulator.summary()["executions"] == {"SUCCEEDED": 3}
    assert server.emulator.token not in json.dumps(summary)
