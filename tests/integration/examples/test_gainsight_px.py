"""The Gainsight PX example DAG run in real Airflow (dag.test) against the emulator."""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path

from airflow_provider_profiles.testing import create, serve
from tests.conftest import run_dag_file

EXAMPLE = Path(__file__).parents[3] / "example_dags" / "example_gainsight_px.py"
SAMPLE = EXAMPLE.parent / "data" / "gainsight_px_users.csv"


def test_example_dag_loads_with_insert_missing(airflow_db, tmp_path, monkeypatch):
    server = serve(create("gainsight_px", rate_limit=None))
    try:
        server.emulator.seed(users=[{"identifyId": "u-1001", "title": "old"}])
        monkeypatch.setenv("AIRFLOW_CONN_GAINSIGHT_PX_DEFAULT", json.dumps({
            "conn_type": "gainsight_px", "host": server.url, "password": server.emulator.api_key,
            "extra": {"product_key": server.emulator.product_key}}))
        _, states = run_dag_file(EXAMPLE, run_conf={"source": str(SAMPLE), "output_dir": str(tmp_path)})
        users = server.emulator.snapshot()["users"]
    finally:
        server.stop()
    assert states == {"load_users": "success", "export_users": "success"}
    assert sorted(users) == ["u-1001", "u-1002", "u-1003", "u-1004"]  # u-1005 has an invalid email
    assert users["u-1001"]["title"] == "CTO, Analytical Engines"
    assert users["u-1002"]["customAttributes"] == {"plan": "enterprise", "acceptDate": 1577836800000}
    [rejects] = glob.glob(os.path.join(tmp_path, "*", "users.rejects.csv"))
    assert [row["identifier"] for row in csv.DictReader(open(rejects))] == ["u-1005"]
    [export] = glob.glob(os.path.join(tmp_path, "*", "paying_users.csv"))
    assert sorted(row["identifyId"] for row in csv.DictReader(open(export))) == ["u-1001", "u-1002", "u-1004"]
