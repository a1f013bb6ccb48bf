"""Erasure (GDPR) against the emulators over real HTTP: ids read once from a file or a query, each
vendor's delete, and a report whose counts add up to the ids read."""

from __future__ import annotations

import json
import sqlite3

import pytest
from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.operators.apsis_one import ApsisOneEraseOperator
from airflow_provider_profiles.operators.erasure import ids_from_file, ids_from_sql
from airflow_provider_profiles.operators.gainsight_px import GainsightPXEraseOperator
from airflow_provider_profiles.operators.localytics import LocalyticsEraseOperator

EMAIL_KEYSPACE = "com.apsis1.keyspaces.email"


class TI:
    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def connect(airflow_connection, conn_id, server):
    fields = server.emulator.connection()
    airflow_connection(conn_id, fields.pop("conn_type"), **fields)


def ids_csv(tmp_path, *ids, column="id"):
    path = tmp_path / "ids.csv"
    path.write_text(f"{column},note\n" + "".join(f"{i},x\n" for i in ids))
    return str(path)


# --- reading ids ---------------------------------------------------------------------------------------
def test_ids_from_csv_and_ndjson_keep_order_and_drop_repeats(tmp_path):
    assert ids_from_file(ids_csv(tmp_path, "a", "b", "a", "c"), "id") == ["a", "b", "c"]
    ndjson = tmp_path / "ids.ndjson"
    ndjson.write_text('{"customer_id": "c1"}\n\n{"customer_id": 7}\n')
    assert ids_from_file(f"file://{ndjson}", "customer_id") == ["c1", "7"]  # an ObjectStoragePath URL


@pytest.mark.parametrize("text, message", [
    ("id,note\na,x\n,y\n", "line 3, column 1 ('id'): no id"),
    ("email,note\na,x\n", "line 1: no column 'id'"),
])
def test_a_bad_ids_file_names_file_line_and_column(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad\.csv: {message}".replace("(", r"\(").replace(")", r"\)")):
        ids_from_file(str(path), "id")


def test_ids_from_a_sql_query(tmp_path, airflow_connection):
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as db:
        db.execute("create table erasure_requests (user_id text)")
        db.executemany("insert into erasure_requests values (?)", [("u1",), ("u2",), (None,), ("u1",)])
    airflow_connection("crm_db", "sqlite", host=str(database))
    assert ids_from_sql("crm_db", "select user_id from erasure_requests order by rowid") == ["u1", "u2"]


# --- Apsis One -----------------------------------------------------------------------------------------
def test_apsis_delete_profile_and_erase_operator(emulator, airflow_connection, tmp_path):
    server = emulator("apsis_one")
    connect(airflow_connection, "apsis_one_default", server)
    for key in ("a@example.com", "b@example.com"):
        server.emulator.profiles.setdefault("com.apsis1.sections.default", {})[f"{EMAIL_KEYSPACE}:{key}"] = {}
        server.emulator.stored_profiles += 1
    assert ApsisOneHook().delete_profile("email", "a@example.com") is True
    assert ApsisOneHook().delete_profile("email", "a@example.com") is False  # already gone
    operator = ApsisOneEraseOperator(task_id="erase", ids_file=ids_csv(tmp_path, "b@example.com", "c@example.com"))
    report = operator.execute({"ti": TI()})
    assert (report["read"], report["vendor_succeeded"], report["skipped"], report["vendor_failed"]) == (2, 1, 1, 0)
    assert report["details"]["not_found_ids"] == ["c@example.com"] and report["sent"] == 1
    assert all(not store for store in server.emulator.snapshot()["profiles"].values())


# --- Localytics ----------------------------------------------------------------------------------------
def test_localytics_profile_api_host_is_derived_from_the_connection(airflow_connection):
    airflow_connection("loc_prod", "localytics", login="k", password="s")
    assert LocalyticsHook("loc_prod").profile_api_base_url() == "https://profile.localytics.com/v1"
    airflow_connection("loc_proxy", "localytics", login="k", password="s",
                       extra={"profile_base_url": "https://proxy.example/profiles/v1/"})
    assert LocalyticsHook("loc_proxy").profile_api_base_url() == "https://proxy.example/profiles/v1"


def test_localytics_delete_profile_org_and_app_level(emulator, airflow_connection, tmp_path):
    server = emulator("localytics")
    connect(airflow_connection, "localytics_default", server)
    server.emulator.profiles["org_id:60"] = {"c1": {"plan": "pro"}, "c2": {"plan": "free"}}
    server.emulator.profiles["app_id:app-1"] = {"c1": {"level": 3}}
    hook = LocalyticsHook()
    assert hook.profile_api_base_url() == f"{server.url}/v1"  # the emulator serves both APIs
    assert hook.delete_profile("c1", app_id="app-1") is True
    assert hook.delete_profile("c1", app_id="app-1") is False
    report = LocalyticsEraseOperator(task_id="erase", ids_file=ids_csv(tmp_path, "c1", "c2", "c3")).execute({"ti": TI()})
    assert (report["read"], report["vendor_succeeded"], report["skipped"], report["vendor_failed"]) == (3, 2, 1, 0)
    assert server.emulator.snapshot()["profiles"] == {"org_id:60": {}, "app_id:app-1": {}}


def test_localytics_profile_api_on_its_own_host_gets_the_credentials(emulator, airflow_connection):
    """The Profile API is another host than the import API (profile. vs api.): it is the vendor's own
    API, so the Basic auth goes there too (127.0.0.1 and localhost are two hosts to the hook)."""
    server = emulator("localytics")
    fields = server.emulator.connection()
    profile_base = server.url.replace("127.0.0.1", "localhost") + "/v1"
    airflow_connection("localytics_two_hosts", fields.pop("conn_type"),
                       **{**fields, "extra": {**fields.get("extra", {}), "profile_base_url": profile_base}})
    server.emulator.profiles["org_id:60"] = {"c1": {}}
    assert LocalyticsHook("localytics_two_hosts").delete_profile("c1") is True
    assert server.emulator.snapshot()["profiles"] == {"org_id:60": {}}


def test_a_failing_id_is_reported_with_its_reason_and_fails_the_task(emulator, airflow_connection, tmp_path):
    server = emulator("localytics")
    connect(airflow_connection, "localytics_default", server)
    server.emulator.profiles["org_id:60"] = {"c1": {}, "c2": {}}
    server.emulator.inject("status", match=r"DELETE /v1/profiles/c1$", count=1, status=400,
                           body={"error": "customer id refused"})
    ti = TI()
    operator = LocalyticsEraseOperator(task_id="erase", ids_file=ids_csv(tmp_path, "c1", "c2"))
    with pytest.raises(AirflowException, match="1 of 2 ids could not be erased from localytics"):
        operator.execute({"ti": ti})
    report = ti.pushed["erasure_report"]
    assert (report["vendor_succeeded"], report["vendor_failed"]) == (1, 1) and report["details"]["failures"][0]["id"] == "c1"
    assert "customer id refused" in report["details"]["failures"][0]["reason"] and server.emulator.api_secret not in json.dumps(report)


# --- Gainsight PX --------------------------------------------------------------------------------------
def test_gainsight_erase_calls_delete_user_with_hard_delete(emulator, airflow_connection, tmp_path):
    server = emulator("gainsight_px")
    connect(airflow_connection, "gainsight_px_default", server)
    server.emulator.store["users"]["u1"] = {"identifyId": "u1"}
    server.emulator.store["accounts"]["a1"] = {"id": "a1"}
    report = GainsightPXEraseOperator(task_id="erase", ids_file=ids_csv(tmp_path, "u1", "u2")).execute({"ti": TI()})
    assert (report["read"], report["vendor_succeeded"], report["skipped"], report["vendor_failed"]) == (2, 1, 1, 0)
    accounts = GainsightPXEraseOperator(task_id="erase_accounts", entity="account", hard_delete=False,
                                        ids_file=ids_csv(tmp_path, "a1")).execute({"ti": TI()})
    assert accounts["vendor_succeeded"] == 1
    assert server.emulator.snapshot()["users"] == {} and server.emulator.snapshot()["accounts"] == {}
    assert server.emulator.deletions == [("users", "u1", True), ("accounts", "a1", False)]


def test_erase_operator_needs_exactly_one_source():
    with pytest.raises(ValueError, match="either ids_file or sql"):
        LocalyticsEraseOperator(task_id="x")
    with pytest.raises(ValueError, match="needs sql_conn_id"):
        LocalyticsEraseOperator(task_id="x", sql="select 1").read_ids()
    with pytest.raises(ValueError, match="not both"):
        LocalyticsEraseOperator(task_id="x", sql="select 1", ids_file="ids.csv", sql_conn_id="db").read_ids()


def test_mediarithmics_erasure_names_the_ids_of_failed_lines(emulator, airflow_connection, tmp_path):
    from airflow_provider_profiles.hooks.base import JobState, JobStatus
    from airflow_provider_profiles.operators.mediarithmics import MediarithmicsEraseOperator

    server = emulator("mediarithmics")
    connect(airflow_connection, "mediarithmics_default", server)
    server.emulator.error_files["mics://errors/1"] = [{"line": 2, "error": "unknown compartment"}]
    operator = MediarithmicsEraseOperator(task_id="erase", ids_file=ids_csv(tmp_path, "u1", "u2", "u3"),
                                          compartment_id="7", fail_on_error=False)
    assert operator._lines(["u1"])[0] == b'{"type":"USER_ACCOUNT","compartment_id":"7","user_account_id":"u1"}\n'
    status = JobStatus(JobState.SUCCESS, "SUCCEEDED", {"id": "9", "result": {
        "total_success": 2, "total_failure": 1, "error_file_uri": "mics://errors/1"}})
    report = operator.on_success({"ti": TI()}, status)
    assert (report["read"], report["sent"], report["vendor_succeeded"], report["vendor_failed"]) == (3, 3, 2, 1)
    assert report["details"]["failures"] == [{"id": "u2", "reason": "unknown compartment"}]
    assert report["details"]["total_failure"] == 1  # the platform's own counter
