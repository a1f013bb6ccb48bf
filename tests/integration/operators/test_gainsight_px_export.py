"""GainsightPXExportOperator against the emulator: filtered NDJSON/CSV exports that round-trip into the loader."""

from __future__ import annotations

import csv
import json

import pytest

from airflow_provider_profiles.operators.gainsight_px import (
    GainsightPXExportOperator,
    GainsightPXLoadOperator,
)
from tests.integration.operators.test_gainsight_px_load import FakeTI


@pytest.fixture
def gpx(emulator, airflow_connection):
    server = emulator("gainsight_px", rate_limit=None)
    airflow_connection("gainsight_px_default", "gainsight_px", host=server.url, password=server.emulator.api_key,
                       extra={"product_key": server.emulator.product_key})
    server.emulator.seed(users=[
        {"identifyId": f"u{i:02d}", "email": f"u{i}@x.com", "score": i, "signUpDate": 1546300800000 + i,
         "location": {"countryCode": "US" if i % 2 else "UK", "city": "Leeds, West"},
         "customAttributes": {"plan": "pro" if i < 3 else "free"}, "propertyKeys": ["AP-1"]}
        for i in range(7)
    ])
    return server


def test_ndjson_export_with_filters(gpx, tmp_path):
    result = GainsightPXExportOperator(
        task_id="export", output_path=str(tmp_path / "out" / "users.ndjson"),
        filters=[{"location.countryCode": "US"}, {"customAttributes.plan": "pro"}], page_size=2,
    ).execute({"ti": FakeTI()})
    records = [json.loads(line) for line in open(result["path"])]
    assert result["count"] == len(records) == 5  # u1 u3 u5 (US) OR u0 u2 (pro)
    assert sorted(r["identifyId"] for r in records) == ["u00", "u01", "u02", "u03", "u05"]
    assert len(gpx.emulator.list_queries) == 3  # pages of 2, 2, 1


def test_csv_export_round_trips_into_the_loader(gpx, tmp_path):
    result = GainsightPXExportOperator(
        task_id="export", output_path=str(tmp_path / "users.csv"), filters=("score", ">=", 4),
    ).execute({"ti": FakeTI()})
    assert result["count"] == 3
    with open(result["path"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["location.city"] == "Leeds, West" and rows[0]["propertyKeys"] == '["AP-1"]'
    assert [r["identifyId"] for r in rows] == ["u04", "u05", "u06"]
    # the export's dotted columns are the loader's mapping: change a value and load it back
    gpx.emulator.reset()
    gpx.emulator.seed(users=[{"identifyId": r["identifyId"]} for r in rows])
    summary = GainsightPXLoadOperator(
        task_id="reload", source=result["path"],
        field_mapping={"identifyId": "identifyId", "signUpDate": "signUpDate", "location.city": "location.city",
                       "customAttributes.plan": "customAttributes.plan"},
        rejects_path=str(tmp_path / "rejects.csv"),
    ).execute({"ti": FakeTI()})
    assert summary["details"]["updated"] == 3
    user = gpx.emulator.snapshot()["users"]["u05"]
    assert user["signUpDate"] == 1546300800005 and user["location"]["city"] == "Leeds, West"


def test_csv_export_with_chosen_fields_and_limit(gpx, tmp_path):
    result = GainsightPXExportOperator(
        task_id="export", output_path=str(tmp_path / "few.csv"), fields=["identifyId", "location.countryCode"],
        sort="-score", limit=2,
    ).execute({"ti": FakeTI()})
    assert open(result["path"]).read() == "identifyId,location.countryCode\nu06,UK\nu05,US\n"
    assert result["count"] == 2


def test_accounts_export(gpx, tmp_path):
    gpx.emulator.seed(accounts=[{"id": "a1", "name": "Acme"}, {"id": "a2", "name": "Beta"}])
    result = GainsightPXExportOperator(task_id="export", entity="ACCOUNT", output_path=str(tmp_path / "a.ndjson"),
                                       filters={"name": "acme"}).execute({"ti": FakeTI()})
    assert result["count"] == 1 and json.loads(open(result["path"]).read())["id"] == "a1"
