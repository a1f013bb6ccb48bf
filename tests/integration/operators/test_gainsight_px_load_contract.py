"""GainsightPXLoadOperator against the corrected contract: product key, typed attributes, budget, events."""

from __future__ import annotations

import csv

import pytest
from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator

SECRET = "gpx-S3CRET-0b1c2d3e"


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number = "dag", "manual__2026-01-01T00:00:00+00:00", "load", -1, 1

    def xcom_push(self, key, value):
        pass


@pytest.fixture
def gpx(emulator, airflow_connection):
    server = emulator("gainsight_px", api_key=SECRET, rate_limit=None)
    airflow_connection("gainsight_px_default", "gainsight_px", host=server.url, password=SECRET,
                       extra={"product_key": server.emulator.product_key, "backoff_initial": 0.01, "backoff_max": 0.05})
    return server


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def run(**kwargs):
    summary = GainsightPXLoadOperator(task_id="load", **kwargs).execute({"ti": FakeTI()})
    assert summary["read"] == summary["rejected"] + summary["skipped"] + summary["sent"]
    assert summary["sent"] == summary["vendor_succeeded"] + summary["vendor_failed"]
    return summary


def rejects_of(summary):
    with open(summary["details"]["rejects_path"], newline="") as handle:
        return {int(row["line"]): row for row in csv.DictReader(handle)}


def test_account_load_without_product_key_is_a_configuration_error(gpx, airflow_connection, tmp_path):
    airflow_connection("gpx_no_product", "gainsight_px", host=gpx.url, password=SECRET)
    source = write_csv(tmp_path / "accounts.csv", ["id", "name"], [["a1", "Acme"]])
    for insert_missing in (True, False):
        with pytest.raises(AirflowException, match="product_key"):
            run(source=source, entity="ACCOUNT", conn_id="gpx_no_product", insert_missing=insert_missing,
                field_mapping={"id": "id", "name": "name"})
    assert sum(gpx.emulator.counters.values()) == 0


def test_custom_attributes_typed_by_the_model(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": "u1"}])
    source = write_csv(tmp_path / "users.csv", ["id", "accept", "seats", "beta", "plan"], [
        ["u1", "1548700000000", "12", "yes", "pro"],
        ["u2", "2019-01-28T18:26:40", "3.5", "false", "7"],
        ["u3", "not a date", "1", "true", "x"],
        ["u4", "1548700000000", "many", "true", "x"],
        ["u5", "1548700000000", "1", "perhaps", "x"],
    ])
    summary = run(source=source, insert_missing=True, field_mapping={
        "identifyId": "id", "customAttributes.acceptDate": "accept", "customAttributes.seats": "seats",
        "customAttributes.beta": "beta", "customAttributes.plan": "plan"})
    assert (summary["details"]["updated"], summary["details"]["inserted"], summary["rejected"], summary["vendor_failed"]) == (1, 1, 3, 0)
    users = gpx.emulator.snapshot()["users"]
    assert users["u1"]["customAttributes"] == {"acceptDate": 1548700000000, "seats": 12, "beta": True, "plan": "pro"}
    assert users["u2"]["customAttributes"] == {"acceptDate": 1548700000000, "seats": 3.5, "beta": False, "plan": "7"}
    rejects = rejects_of(summary)
    assert sorted(rejects) == [4, 5, 6] and all(r["http_status"] == "" for r in rejects.values())
    assert "customAttributes.acceptDate" in rejects[4]["reason"] and "'accept'" in rejects[4]["reason"]
    assert "customAttributes.seats" in rejects[5]["reason"] and "customAttributes.beta" in rejects[6]["reason"]
    assert not any(key.endswith(("u3", "u4", "u5")) for key in gpx.emulator.counters)  # refused before sending
    assert gpx.emulator.counters["GET /v1/admin/model/user/attributes"] == 1  # once per run


def test_attribute_not_in_the_model_is_a_configuration_error(gpx, tmp_path):
    source = write_csv(tmp_path / "users.csv", ["id", "x"], [["u1", "1"]])
    with pytest.raises(ValueError, match=r"customAttributes.nope.*not.*attributes"):
        run(source=source, field_mapping={"identifyId": "id", "customAttributes.nope": "x"})
    assert sum(n for key, n in gpx.emulator.counters.items() if not key.startswith("GET")) == 0


def test_max_requests_stops_cleanly_and_reports_the_rows_not_sent(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": f"u{i}"} for i in range(10)])
    source = write_csv(tmp_path / "users.csv", ["id", "title"], [[f"u{i}", f"t{i}"] for i in range(10)])
    summary = run(source=source, field_mapping={"identifyId": "id", "title": "title"}, max_requests=5,
                  max_concurrency=1)
    # one request reads the model, four update rows; the other six rows are not attempted
    assert summary["details"]["requests"] == 5 and sum(gpx.emulator.counters.values()) == 5
    # the six are not sent: rejected (listed with the reason), so a sync commit after it is refused
    assert (summary["details"]["updated"], summary["rejected"], summary["skipped"], summary["vendor_failed"]) == \
        (4, 6, 0, 0)
    assert summary["details"]["over_budget"] == 6 and summary["sent"] == 4
    from airflow_provider_profiles.operators.prepare import vendor_failures

    assert vendor_failures(summary) == (6, 0)  # what CommitSyncStateOperator reads: it refuses the commit
    rejects = rejects_of(summary)
    assert sorted(rejects) == list(range(6, 12))
    assert all("max_requests" in row["reason"] for row in rejects.values())
    assert run(source=source, field_mapping={"identifyId": "id", "title": "title"})["details"]["requests"] == 11


def test_ids_that_cannot_go_in_a_path(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": "team/alice"}])
    source = write_csv(tmp_path / "users.csv", ["id", "title"], [["team/alice", "a"], ["50%", "b"], ["..", "c"]])
    summary = run(source=source, insert_missing=True, field_mapping={"identifyId": "id", "title": "title"})
    assert (summary["details"]["updated"], summary["details"]["inserted"], summary["vendor_failed"]) == (1, 2, 0)
    assert {k: v["title"] for k, v in gpx.emulator.snapshot()["users"].items()} == {"team/alice": "a", "50%": "b", "..": "c"}


def test_custom_events_from_a_file(gpx, tmp_path):
    source = write_csv(tmp_path / "events.csv", ["Account ID", "User ID", "Event Name", "Event Date UTC-MS", "Source"], [
        ["3", "tinylion155", "Search", "1560499354771", "CSV"],
        ["3", "tinylion155", "Search", "2019-06-14T08:02:34", "CSV"],
        ["3", "", "Search", "1560499354771", "CSV"],
        ["3", "tinyfrog185", "Export", "yesterday", "CSV"],
        ["3", "tinyfrog185", "", "1560499354771", "CSV"],
    ])
    summary = run(source=source, entity="CUSTOM_EVENT", field_mapping={
        "identifyId": "User ID", "accountId": "Account ID", "eventName": "Event Name",
        "date": "Event Date UTC-MS", "attributes.Source": "Source"})
    assert (summary["details"]["inserted"], summary["rejected"], summary["vendor_failed"]) == (2, 3, 0)
    assert "eventName" in rejects_of(summary)[6]["reason"]
    events = gpx.emulator.snapshot()["events"]
    assert [e["date"] for e in events] == [1560499354771, 1560499354000]
    assert events[0]["attributes"] == {"Source": "CSV"} and events[0]["propertyKey"] == gpx.emulator.product_key
    with pytest.raises(ValueError, match="insert_missing"):
        GainsightPXLoadOperator(task_id="x", source=source, entity="CUSTOM_EVENT", insert_missing=True,
                                field_mapping={"identifyId": "User ID", "eventName": "Event Name"})
