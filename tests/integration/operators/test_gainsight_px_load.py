"""GainsightPXLoadOperator against the emulator: modes, mapping, rejects, reconciliation, 429 storms."""

from __future__ import annotations

import csv
import json

import pytest
from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.operators.gainsight_px import (
    GainsightPXLoadOperator,
)

SECRET = "gpx-S3CRET-0b1c2d3e"
MAPPING = {"identifyId": "id", "email": "email", "title": "title"}


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number = "dag", "manual__2026-01-01T00:00:00+00:00", "load", -1, 1

    def __init__(self):
        self.xcoms = {}

    def xcom_push(self, key, value):
        self.xcoms[key] = value


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


def run(ti=None, **kwargs):
    kwargs.setdefault("field_mapping", MAPPING)
    operator = GainsightPXLoadOperator(task_id="load", **kwargs)
    ti = ti or FakeTI()
    summary = operator.execute({"ti": ti})
    assert summary["read"] == summary["rejected"] + summary["skipped"] + summary["sent"]
    assert summary["sent"] == summary["vendor_succeeded"] + summary["vendor_failed"]
    return summary


def rejects_of(summary):
    with open(summary["details"]["rejects_path"], newline="") as handle:
        return list(csv.DictReader(handle))


def writes(gpx):
    return sum(gpx.emulator.writes.values()), sum(n for key, n in gpx.emulator.counters.items() if not key.startswith("GET"))


def test_update_only_skips_missing_records(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": "u1", "title": "old"}, {"identifyId": "u2"}])
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"],
                       [["u1", "a@x.com", "new"], ["u2", "", ""], ["u3", "c@x.com", "x"]])
    summary = run(source=source)
    # u3 is not there to update: skipped (its PUT answered 404, nothing written)
    assert summary == {"read": 3, "rejected": 0, "skipped": 1, "sent": 2, "vendor_succeeded": 2, "vendor_failed": 0,
                       "details": {"entity": "USER", "updated": 2, "inserted": 0, "missing": 1, "over_budget": 0,
                                   "requests": 4}}  # the attribute model, then one PUT per row
    users = gpx.emulator.snapshot()["users"]
    assert users["u1"]["title"] == "new" and users["u1"]["email"] == "a@x.com"
    assert "u3" not in users
    assert not (tmp_path / "users.rejects.csv").exists()


def test_insert_missing_creates_with_product_key(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": "u1"}])
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [["u1", "a@x.com", "t"], ["u2", "b@x.com", "t"]])
    summary = run(source=source, insert_missing=True)
    assert (summary["details"]["updated"], summary["details"]["inserted"]) == (1, 1)
    assert gpx.emulator.snapshot()["users"]["u2"]["propertyKeys"] == [gpx.emulator.product_key]


def test_dry_run_writes_nothing(gpx, tmp_path):
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"],
                       [["u1", "a@x.com", "t"], ["u2", "not-an-email", "t"], ["u3", "", ""]])
    summary = run(source=source, dry_run=True, insert_missing=True, verbose=True)
    assert summary["read"] == 3 and summary["skipped"] == 2 and summary["rejected"] == 1
    assert dict(gpx.emulator.counters) == {"GET /v1/admin/model/user/attributes": 1}  # the model, no writes
    planned = [json.loads(line) for line in open(summary["details"]["dry_run_path"])]
    assert [(p["line"], p["id"], p["action"]) for p in planned] == [(2, "u1", "update_or_insert"), (4, "u3", "update_or_insert")]
    assert planned[0]["body"] == {"identifyId": "u1", "email": "a@x.com", "title": "t"}
    assert summary["details"]["dry_run_path"] == str(tmp_path / "users.dry_run.ndjson")


def test_nested_mapping_and_quoted_commas(gpx, tmp_path):
    source = tmp_path / "users.csv"
    source.write_text(
        "id,title,city,latitude,longitude,plan,acceptDate\n"
        'u1,"CEO, Founder",Cleveland,41.5,-81.7,pro,1546300800000\n'
    )
    run(source=str(source), insert_missing=True, field_mapping={
        "identifyId": "id", "title": "title", "location.city": "city",
        "location.coordinates.latitude": "latitude", "location.coordinates.longitude": "longitude",
        "customAttributes.plan": "plan", "customAttributes.acceptDate": "acceptDate",
    }, field_types={"customAttributes.acceptDate": "date"})
    user = gpx.emulator.snapshot()["users"]["u1"]
    assert user["title"] == "CEO, Founder"
    assert user["location"] == {"city": "Cleveland", "coordinates": {"latitude": 41.5, "longitude": -81.7}}
    assert user["customAttributes"] == {"plan": "pro", "acceptDate": 1546300800000}


def test_rejects_and_failures_reconcile(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": f"u{i}"} for i in range(1, 7)])
    gpx.emulator.inject("status", match=r"^PUT /v1/users/u5$", count=10, status=500)
    gpx.emulator.inject("status", match=r"^PUT /v1/users/u6$", count=1, status=400,
                        body={"externalapierror": {"status": "BAD_REQUEST", "message": "Validation failed",
                                                   "subErrors": [{"field": "title", "message": "too long"}]}})
    source = tmp_path / "users.csv"
    source.write_text(
        "id,email,title\n"
        "u1,a@x.com,ok\n"
        ",b@x.com,no id\n"            # line 3: rejected, empty identifier
        "u3,c@x.com,ragged,extra\n"   # line 4: rejected, ragged row
        "u4,nope,bad email\n"         # line 5: rejected, email
        "u5,e@x.com,server error\n"   # line 6: failed, 500 after retries
        "u6,f@x.com,refused\n"        # line 7: failed, 400
    )
    summary = run(source=str(source))
    assert summary["read"] == 6
    assert (summary["details"]["updated"], summary["rejected"], summary["vendor_failed"]) == (1, 3, 2)
    rows = {int(r["line"]): r for r in rejects_of(summary)}
    assert sorted(rows) == [3, 4, 5, 6, 7]
    assert "identifier is empty" in rows[3]["reason"] and rows[3]["http_status"] == ""
    assert "ragged row" in rows[4]["reason"] and rows[4]["identifier"] == "u3"
    assert "email" in rows[5]["reason"] and rows[5]["identifier"] == "u4"
    assert rows[6]["http_status"] == "500" and rows[6]["identifier"] == "u5" and "attempts" in rows[6]["reason"]
    assert rows[7]["http_status"] == "400" and "title: too long" in rows[7]["reason"]


def test_max_failed_ratio_fails_the_task_after_the_run(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": "u1"}])
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [["u1", "a@x.com", ""], ["u2", "bad", ""]])
    ti = FakeTI()
    with pytest.raises(AirflowException, match="max_failed_ratio"):
        run(ti=ti, source=source, max_failed_ratio=0.25)
    assert ti.xcoms["summary"]["details"]["updated"] == 1 and ti.xcoms["summary"]["rejected"] == 1
    assert run(source=source, max_failed_ratio=0.5)["rejected"] == 1


def test_input_problems_stop_before_any_request(gpx, tmp_path):
    source = write_csv(tmp_path / "users.csv", ["id", "mail", "title"], [["u1", "a@x.com", "t"]])
    with pytest.raises(InputError, match=r"users.csv, line 1, column 'email': field_mapping refers to column\(s\) not in"):
        run(source=source)
    broken = tmp_path / "broken.csv"
    broken.write_text('id,email,title\nu1,a@x.com,ok\nu2,"unterminated,t\n')
    with pytest.raises(InputError, match=r"broken.csv, line \d"):
        run(source=str(broken))
    with pytest.raises(ValueError, match="identifyId"):
        run(source=source, field_mapping={"email": "mail"})
    assert sum(gpx.emulator.counters.values()) == 0


def test_insert_missing_needs_the_product_key(gpx, airflow_connection, tmp_path):
    airflow_connection("gpx_no_product", "gainsight_px", host=gpx.url, password=SECRET)
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [["u1", "a@x.com", "t"]])
    with pytest.raises(AirflowException, match="product_key"):
        run(source=source, conn_id="gpx_no_product", insert_missing=True)
    assert sum(gpx.emulator.counters.values()) == 0


def test_wrong_api_key_stops_the_run_without_leaking_it(gpx, airflow_connection, tmp_path):
    airflow_connection("gpx_wrong", "gainsight_px", host=gpx.url, password="wrong-key-123",
                       extra={"product_key": gpx.emulator.product_key})
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [[f"u{i}", "", ""] for i in range(200)])
    with pytest.raises(AirflowException, match="refused the API key") as caught:
        run(source=source, conn_id="gpx_wrong", max_concurrency=2)
    assert "wrong-key-123" not in str(caught.value)
    assert gpx.emulator.counters["PUT /v1/users/u199"] == 0  # stopped early, not 200 refusals


def test_429_storm_nothing_lost_or_duplicated(gpx, tmp_path, monkeypatch):
    from airflow_provider_profiles.operators import gainsight_px

    monkeypatch.setattr(gainsight_px, "RATE_LIMITED_PAUSE", 0.05)  # the pool-wide pauses, shortened for the test
    gpx.emulator.seed(users=[{"identifyId": f"u{i:03d}"} for i in range(0, 300, 2)])  # half exist
    gpx.emulator.inject("status", match=r"^(PUT|POST) /v1/users", count=120, status=429, retry_after=0.01)
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [[f"u{i:03d}", "", f"t{i}"] for i in range(300)])
    summary = run(source=source, insert_missing=True, max_concurrency=8)
    assert (summary["details"]["updated"], summary["details"]["inserted"], summary["vendor_failed"]) == (150, 150, 0)
    assert gpx.emulator.faults_served["status"] == 120
    assert set(gpx.emulator.writes.values()) == {1} and len(gpx.emulator.writes) == 300
    users = gpx.emulator.snapshot()["users"]
    assert all(users[f"u{i:03d}"]["title"] == f"t{i}" for i in range(300))


def test_repeated_ids_are_applied_in_input_order(gpx, tmp_path):
    rows = [["dup", "", f"v{i}"] for i in range(10)] + [[f"o{i}", "", "x"] for i in range(20)]
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], rows)
    summary = run(source=source, insert_missing=True, max_concurrency=8)
    assert (summary["details"]["inserted"], summary["details"]["updated"]) == (21, 9)
    assert gpx.emulator.snapshot()["users"]["dup"]["title"] == "v9"
    assert gpx.emulator.counters["POST /v1/users"] == 21  # one create for "dup", never a duplicate


def test_ndjson_source(gpx, tmp_path):
    source = tmp_path / "accounts.ndjson"
    source.write_text(
        json.dumps({"account_id": "a1", "name": "Acme", "employees": 12}) + "\n"
        + "{not json\n"
        + json.dumps({"account_id": "a2", "name": "Beta"}) + "\n"
    )
    summary = run(source=str(source), entity="ACCOUNT", insert_missing=True,
                  field_mapping={"id": "account_id", "name": "name", "numberOfEmployees": "employees"})
    assert (summary["details"]["inserted"], summary["rejected"]) == (2, 1)
    assert rejects_of(summary)[0]["line"] == "2"
    assert gpx.emulator.snapshot()["accounts"]["a1"]["numberOfEmployees"] == 12


def test_dataframe_source(gpx, tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    frame = pd.DataFrame({
        "id": ["u1", "u2", None],
        "signup": [pd.Timestamp("2019-01-01"), pd.NaT, pd.Timestamp("2019-01-02")],
        "score": [1.5, float("nan"), 3.0],
    })
    summary = run(source=frame, insert_missing=True,
                  field_mapping={"identifyId": "id", "signUpDate": "signup", "score": "score"})
    assert (summary["details"]["inserted"], summary["rejected"]) == (2, 1)
    users = gpx.emulator.snapshot()["users"]
    assert users["u1"]["signUpDate"] == 1546300800000 and users["u1"]["score"] == 1.5
    assert "signUpDate" not in users["u2"] and "score" not in users["u2"]
    assert summary["details"]["rejects_path"].startswith(str(tmp_path)) and rejects_of(summary)[0]["line"] == "3"


def test_template_fields_cover_run_dependent_values():
    assert {"source", "entity", "field_mapping", "rejects_path", "dry_run_path"} <= set(GainsightPXLoadOperator.template_fields)


def test_lines_follow_the_file_past_quoted_line_ends_and_blank_lines(gpx, tmp_path):
    """Rows and rejects carry the line each record starts on, as csv counts them: a quoted value
    with line ends, blank lines and an unreadable record do not shift the lines after them."""
    source = tmp_path / "users.csv"
    source.write_bytes(
        b"id,email,title\r\n"
        b'u1,a@x.com,"two\r\nlines"\r\n'   # lines 2-3
        b"\r\n"                            # line 4: blank
        b"u2,b@x.com,t,extra\r\n"          # line 5: ragged
        b"u3,nope,t\r\n"                   # line 6: bad email
        b"u4,d@x.com,t"                    # line 7, no line end
    )
    summary = run(source=str(source), dry_run=True, insert_missing=True)
    assert (summary["read"], summary["rejected"], summary["skipped"]) == (4, 2, 2)
    planned = [json.loads(line) for line in open(summary["details"]["dry_run_path"])]
    assert [(p["line"], p["id"]) for p in planned] == [(2, "u1"), (7, "u4")]
    assert planned[0]["body"]["title"] == "two\r\nlines"
    rejects = {int(r["line"]): r for r in rejects_of(summary)}
    assert sorted(rejects) == [5, 6]
    assert rejects[5]["identifier"] == "u2" and "ragged row" in rejects[5]["reason"]
    assert rejects[6]["identifier"] == "u3" and "email" in rejects[6]["reason"]


def test_latin1_csv(gpx, tmp_path):
    source = tmp_path / "users.csv"
    source.write_bytes("id,email,title\nu1,a@x.com,\"Gérant\nde café\"\nu2,b@x.com,Ça va,x\nu3,c@x.com,é\n".encode("latin-1"))
    summary = run(source=str(source), dry_run=True, encoding="latin-1")
    planned = [json.loads(line) for line in open(summary["details"]["dry_run_path"])]
    assert [(p["line"], p["body"]["title"]) for p in planned] == [(2, "Gérant\nde café"), (5, "é")]
    assert [(r["line"], r["identifier"]) for r in rejects_of(summary)] == [("4", "u2")]


def test_nested_ndjson_maps_by_dotted_paths(gpx, tmp_path):
    source = tmp_path / "users.ndjson"
    source.write_text(
        json.dumps({"id": "u1", "location": {"city": "Oslo", "coordinates": {"latitude": 59.9}}, "plan": "pro"}) + "\n"
        + "\n"                                       # line 2: blank
        + "[1, 2]\n"                                 # line 3: not an object
        + json.dumps({"id": "u2", "plan": 3}) + "\n"  # line 4: no location; plan of another type
        + json.dumps({"id": "u3", "location": {"city": "Rome"}}) + "\n"
    )
    mapping = {"identifyId": "id", "location.city": "location.city",
               "location.coordinates.latitude": "location.coordinates.latitude", "customAttributes.plan": "plan"}
    summary = run(source=str(source), dry_run=True, field_mapping=mapping)
    planned = {p["line"]: p["body"] for p in map(json.loads, open(summary["details"]["dry_run_path"]))}
    assert planned == {
        1: {"identifyId": "u1", "location": {"city": "Oslo", "coordinates": {"latitude": 59.9}}, "customAttributes": {"plan": "pro"}},
        4: {"identifyId": "u2", "customAttributes": {"plan": "3"}},
        5: {"identifyId": "u3", "location": {"city": "Rome"}},
    }
    assert [(r["line"], r["identifier"]) for r in rejects_of(summary)] == [("3", "")]
    with pytest.raises(InputError, match=r"users.ndjson, line 1, column 'location.zip'"):
        run(source=str(source), dry_run=True, field_mapping={**mapping, "location.zip": "location.zip"})


def test_parquet_rows_are_numbered(gpx, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "users.parquet"
    pq.write_table(pa.table({"id": ["u1", "u2", "u3"], "email": ["a@x.com", "bad", None], "title": ["t", "t", "t"]}), source)
    summary = run(source=str(source), dry_run=True)
    assert [json.loads(line)["line"] for line in open(summary["details"]["dry_run_path"])] == [1, 3]
    assert [(r["line"], r["identifier"]) for r in rejects_of(summary)] == [("2", "u2")]


def test_an_empty_csv_is_an_input_error(gpx, tmp_path):
    source = tmp_path / "users.csv"
    source.write_bytes(b"")
    with pytest.raises(InputError, match=r"users.csv, line 1: the file is empty"):
        run(source=str(source))
    assert sum(gpx.emulator.counters.values()) == 0


def test_rows_are_numbered_by_record_if_lines_cannot_be_found(gpx, tmp_path, monkeypatch):
    """Never expected: the walk of the file disagrees with DuckDB's records. The load still runs,
    numbering rows by record; the unreadable ones keep their line."""
    from airflow_provider_profiles.operators import gainsight_px
    from airflow_provider_profiles.prepare.lines import LinesOutOfStep

    class OutOfStep:
        def __init__(self, *args, **kwargs):
            pass

        def take(self, count):
            raise LinesOutOfStep("test")

    monkeypatch.setattr(gainsight_px, "RecordLines", OutOfStep)
    source = tmp_path / "users.csv"
    source.write_text('id,email,title\nu1,a@x.com,"a\nb"\nu2,b@x.com,t,x\nu3,c@x.com,t\n')
    summary = run(source=str(source), dry_run=True)
    assert [json.loads(line)["line"] for line in open(summary["details"]["dry_run_path"])] == [1, 2]
    assert [(r["line"], r["reason"][:10]) for r in rejects_of(summary)] == [("4", "ragged row")]


def test_ndjson_object_of_varying_shape_maps_by_dotted_paths(gpx, tmp_path):
    """An object whose shape varies by line (one JSON column to DuckDB) is read by the mapping's dotted
    paths like any nested object, the identifier included; a line without the path sends nothing there."""
    source = tmp_path / "users.ndjson"
    source.write_text(
        json.dumps({"user": {"id": "u1"}, "profile": {"plan": "pro", "seats": 3}}) + "\n"
        + json.dumps({"user": {"id": "u2"}, "profile": "unknown"}) + "\n"
        + json.dumps({"user": {"id": "u3"}, "profile": {"plan": ["a"]}}) + "\n"
    )
    summary = run(source=str(source), dry_run=True,
                  field_mapping={"identifyId": "user.id", "title": "profile.plan"})
    planned = {p["line"]: p["body"] for p in map(json.loads, open(summary["details"]["dry_run_path"]))}
    assert planned == {1: {"identifyId": "u1", "title": "pro"}, 2: {"identifyId": "u2"},
                       3: {"identifyId": "u3", "title": '["a"]'}}
    assert summary["rejected"] == 0


def test_first_load_of_new_users_costs_about_one_request_each(gpx, tmp_path):
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [[f"n{i}", "", "t"] for i in range(200)])
    summary = run(source=source, insert_missing=True, max_concurrency=8)
    assert (summary["details"]["inserted"], summary["details"]["updated"], summary["vendor_failed"]) == (200, 0, 0)
    counted = sum(n for key, n in gpx.emulator.counters.items() if key.startswith(("PUT", "POST")))
    assert gpx.emulator.counters["POST /v1/users"] == 200  # no create refused as a duplicate
    assert counted <= 200 + 20  # ~N, not 2N: PUTs only until the order turns (and those in flight)
    assert summary["details"]["requests"] == counted + 1  # + the attribute model
    assert set(gpx.emulator.writes.values()) == {1} and len(gpx.emulator.writes) == 200


def test_load_of_existing_users_stays_one_put_each(gpx, tmp_path):
    gpx.emulator.seed(users=[{"identifyId": f"e{i}", "title": "old"} for i in range(200)])
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [[f"e{i}", "", "new"] for i in range(200)])
    summary = run(source=source, insert_missing=True, max_concurrency=8)
    assert (summary["details"]["inserted"], summary["details"]["updated"]) == (0, 200)
    assert gpx.emulator.counters["POST /v1/users"] == 0 and summary["details"]["requests"] == 201


def test_mixed_load_ends_with_every_record_right(gpx, tmp_path):
    existing = {f"u{i}" for i in range(400) if (i // 40) % 2 == 0}  # runs of 40 existing, then 40 new
    gpx.emulator.seed(users=[{"identifyId": key, "title": "old", "email": "keep@x.com"} for key in existing])
    source = write_csv(tmp_path / "users.csv", ["id", "email", "title"], [[f"u{i}", "", f"t{i}"] for i in range(400)])
    summary = run(source=source, insert_missing=True, max_concurrency=8)
    assert (summary["details"]["updated"], summary["details"]["inserted"], summary["vendor_failed"]) == (200, 200, 0)
    users = gpx.emulator.snapshot()["users"]
    assert len(users) == 400 and set(gpx.emulator.writes.values()) == {1}
    assert all(users[f"u{i}"]["title"] == f"t{i}" for i in range(400))
    assert all(users[key]["email"] == "keep@x.com" for key in existing)
    assert summary["details"]["requests"] < 1 + 400 + 200  # PUT first would cost 601
