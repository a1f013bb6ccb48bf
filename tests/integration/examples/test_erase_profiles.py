"""The erase_profiles example DAG, run by Airflow (``dag.test``) against the four emulators: the ids from
a file or from SQL queries, erased everywhere, and checked in what the emulators hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).parents[3] / "example_dags"
EMAIL_KEYSPACE = "com.apsis1.keyspaces.email"


@pytest.fixture
def platforms(emulator, airflow_connection, airflow_db):
    servers = {
        "gainsight_px": emulator("gainsight_px"),
        "apsis_one": emulator("apsis_one"),
        "localytics": emulator("localytics"),
        "mediarithmics": emulator("mediarithmics", pending_seconds=0, running_seconds=0),
    }
    for vendor, server in servers.items():
        fields = server.emulator.connection()
        airflow_connection(f"{vendor}_default", fields.pop("conn_type"), **fields)
    # crm-0001 and crm-0002 (ada@, grace@) exist everywhere, crm-0077 (linus@) nowhere; one bystander each
    gainsight, apsis, localytics = (servers[v].emulator for v in ("gainsight_px", "apsis_one", "localytics"))
    for user_id in ("crm-0001", "crm-0002", "crm-0500"):
        gainsight.store["users"][user_id] = {"identifyId": user_id}
    section = apsis.profiles.setdefault("com.apsis1.sections.default", {})
    for email in ("ada@example.com", "grace@example.com", "keep@example.com"):
        section[f"{EMAIL_KEYSPACE}:{email}"] = {"attributes": {}, "tags": [], "consents": {}}
        apsis.stored_profiles += 1
    localytics.profiles["org_id:60"] = {"crm-0001": {}, "crm-0002": {}, "crm-0500": {}}
    return servers


def xcom(dag_run, task_id, key="return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id,
                                                 key=key)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def check_erased_everywhere(platforms, dag_run, states):
    expected = {"apsis_one": "success", "localytics": "success", "mediarithmics": "success", "summary": "success",
                "gainsight_px": "success"}
    assert states == expected
    reports = xcom(dag_run, "summary")
    for vendor in ("apsis_one", "localytics"):
        report = reports[vendor]
        assert (report["read"], report["vendor_succeeded"], report["skipped"], report["vendor_failed"]) == (3, 2, 1, 0), vendor
    assert (reports["mediarithmics"]["read"], reports["mediarithmics"]["vendor_succeeded"]) == (3, 3)
    assert reports["apsis_one"]["details"]["not_found_ids"] == ["linus@example.com"]
    assert reports["localytics"]["details"]["not_found_ids"] == ["crm-0077"]
    # what the platforms hold now
    assert list(platforms["apsis_one"].emulator.snapshot()["profiles"]["com.apsis1.sections.default"]) == [
        f"{EMAIL_KEYSPACE}:keep@example.com"]
    assert platforms["localytics"].emulator.snapshot()["profiles"]["org_id:60"] == {"crm-0500": {}}
    [execution] = platforms["mediarithmics"].emulator.snapshot()["executions"].values()
    assert execution["parameters"]["document_type"] == "USER_POINTS_DELETION"
    assert (execution["status"], execution["result"]["total_success"]) == ("SUCCEEDED", 3)
    assert list(platforms["gainsight_px"].emulator.snapshot()["users"]) == ["crm-0500"]
    assert reports["gainsight_px"]["vendor_succeeded"] == 2


def test_erase_profiles_from_a_file(platforms, run_dag):
    dag_run, states = run_dag(EXAMPLES / "erase_profiles.py",
                              run_conf={"ids_file": str(EXAMPLES / "data" / "erasure_requests.csv")})
    check_erased_everywhere(platforms, dag_run, states)


def test_erase_profiles_from_sql_queries(platforms, run_dag, airflow_connection, tmp_path):
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as db:
        db.execute("create table erasure_requests (user_id text, email text)")
        db.executemany("insert into erasure_requests values (?, ?)", [
            ("crm-0001", "ada@example.com"), ("crm-0002", "grace@example.com"), ("crm-0077", "linus@example.com")])
    airflow_connection("crm_db", "sqlite", host=str(database))
    dag_run, states = run_dag(EXAMPLES / "erase_profiles.py", run_conf={"sql_conn_id": "crm_db",
                                                                         "ids_file": "/nonexistent.csv"})
    check_erased_everywhere(platforms, dag_run, states)
