"""Gainsight PX record mapping: dotted paths, types, empty values, validation with readable reasons."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from airflow_provider_profiles.prepare.writer import RowRejected
from airflow_provider_profiles.prepare.values import is_missing
from airflow_provider_profiles.writers.gainsight_px import (
    GainsightPXRecordFormat,
    flatten,
)
from airflow_provider_profiles.prepare.values import epoch_millis

DOC_MAPPING = {
    "identifyId": "id",
    "title": "title",
    "phone": "telephone",
    "location.city": "city",
    "location.stateCode": "state",
    "location.coordinates.latitude": "latitude",
    "location.coordinates.longitude": "longitude",
    "customAttributes.strtmp1": "strtmp1",
    "customAttributes.acceptDate": "acceptDate",
}


def test_doc_mapping_builds_nested_record():
    record_format = GainsightPXRecordFormat("user", DOC_MAPPING, {"customAttributes.acceptDate": "date"})
    row = {"id": "u-1", "title": "CTO", "telephone": "555", "city": "Cleveland", "state": "OH",
           "latitude": "41.49", "longitude": "-81.69", "strtmp1": "x, y", "acceptDate": "1546300800000"}
    assert record_format.build(row) == {
        "identifyId": "u-1",
        "title": "CTO",
        "phone": "555",
        "location": {"city": "Cleveland", "stateCode": "OH", "coordinates": {"latitude": 41.49, "longitude": -81.69}},
        "customAttributes": {"strtmp1": "x, y", "acceptDate": 1546300800000},
    }
    assert json.loads(record_format.encode(row))["location"]["coordinates"]["latitude"] == 41.49


def test_empty_values_are_not_sent():
    record_format = GainsightPXRecordFormat("USER", {"identifyId": "id", "signUpDate": "signup", "location.city": "city"})
    assert record_format.build({"id": "u", "signup": "", "city": "  "}) == {"identifyId": "u"}


def test_identifier_is_required_in_the_mapping_and_in_each_row():
    with pytest.raises(ValueError, match="identifyId"):
        GainsightPXRecordFormat("USER", {"email": "email"})
    with pytest.raises(ValueError, match="'id'"):
        GainsightPXRecordFormat("ACCOUNT", {"name": "name"})
    record_format = GainsightPXRecordFormat("ACCOUNT", {"id": "account_id", "name": "name"})
    with pytest.raises(RowRejected, match="identifier is empty"):
        record_format.build({"account_id": "", "name": "Acme"})


def test_bad_mapping_is_refused_up_front():
    with pytest.raises(ValueError, match="USER, ACCOUNT, CUSTOM_EVENT"):
        GainsightPXRecordFormat("COMPANY", {"id": "id"})
    with pytest.raises(ValueError, match="both 'location' and its child"):
        GainsightPXRecordFormat("USER", {"identifyId": "id", "location": "loc", "location.city": "city"})
    with pytest.raises(ValueError, match=r"not a valid \(dotted\) field name"):
        GainsightPXRecordFormat("USER", {"identifyId": "id", "location..city": "city"})
    with pytest.raises(ValueError, match="unknown field types"):
        GainsightPXRecordFormat("USER", {"identifyId": "id"}, {"score": "float"})


def test_missing_columns_are_listed():
    record_format = GainsightPXRecordFormat("USER", {"identifyId": "id", "email": "mail", "title": "title"})
    assert record_format.missing_columns(["id", "title"]) == ["mail"]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"id": "u", "signup": "yesterday"}, "signUpDate: 'yesterday' is not an ISO 8601 date"),
        ({"id": "u", "signup": "1546300800"}, "looks like seconds"),
        ({"id": "u", "score": "high"}, "score: could not convert string to float: 'high'"),
        ({"id": "u", "lat": "123"}, "outside -90.0..90.0"),
        ({"id": "u", "mail": "nobody"}, "not an email address"),
        ({"id": "u", "visits": "2.5"}, "expected an integer"),
        ({"id": "u", "unsub": "maybe"}, "globalUnsubscribe: expected true/false, yes/no or 1/0, got 'maybe'"),
    ],
)
def test_invalid_values_are_rejected_with_field_and_column(row, reason):
    record_format = GainsightPXRecordFormat("USER", {
        "identifyId": "id", "signUpDate": "signup", "score": "score", "location.coordinates.latitude": "lat",
        "email": "mail", "numberOfVisits": "visits", "globalUnsubscribe": "unsub",
    })
    with pytest.raises(RowRejected) as caught:
        record_format.build(row)
    assert reason in caught.value.reason
    assert record_format.record_id(row) == "u"


def test_dates_from_many_shapes():
    assert epoch_millis(1546300800000) == 1546300800000
    assert epoch_millis("1546300800000") == 1546300800000
    assert epoch_millis(1546300800000.0) == 1546300800000
    assert epoch_millis(dt.datetime(2019, 1, 1)) == 1546300800000  # naive is UTC
    assert epoch_millis(dt.date(2019, 1, 1)) == 1546300800000
    assert epoch_millis("2019-01-01T01:00:00+01:00") == 1546300800000
    with pytest.raises(ValueError):
        epoch_millis(True)


def typed(type_name, value):
    """The value one field of that type gets (None: not sent), typed by the writer's FieldMapping."""
    record_format = GainsightPXRecordFormat("USER", {"identifyId": "id", "customAttributes.v": "v"},
                                            {"customAttributes.v": type_name})
    return record_format.build({"id": "u", "v": value}).get("customAttributes", {}).get("v")


def test_conversions():
    # number text is read as FieldMapping reads it: a float, whole or not (the writer's own
    # converter kept "42" an integer; JSON 42.0 is the same number to the API)
    assert typed("number", "42") == 42.0 and isinstance(typed("number", "42"), float)
    assert typed("number", 42) == 42 and isinstance(typed("number", 42), int)
    assert typed("number", "4.5") == 4.5
    assert typed("integer", "12345678901234567890") == 12345678901234567890  # exact, not through a float
    assert typed("boolean", "YES") is True and typed("boolean", "0") is False
    assert typed("string", 7) == "7"
    assert typed("date", "2019-01-01T00:00:00.250Z") == 1546300800250  # a DATE_TIME keeps its time
    with pytest.raises(RowRejected, match="finite"):
        typed("number", "nan")
    # a nested value in a string field is sent as JSON text (the writer's own converter refused it)
    assert typed("string", {"a": 1}) == '{"a":1}'


def test_pandas_values():
    pd = pytest.importorskip("pandas")
    import numpy as np

    assert is_missing(float("nan")) and is_missing(pd.NA) and is_missing(pd.NaT) and is_missing(None)
    assert not is_missing(0)
    assert typed("integer", np.int64(3)) == 3
    assert typed("number", np.float64(2.5)) == 2.5
    assert epoch_millis(pd.Timestamp("2019-01-01")) == 1546300800000
    assert typed("date", pd.Timestamp("2019-01-01")) == 1546300800000
    assert typed("boolean", np.bool_(True)) is True
    assert not math.isnan(typed("number", np.float64(1.0)))
    assert typed("number", np.float64("nan")) is None  # missing: not sent


def test_flatten_is_the_inverse_of_the_mapping():
    record = {"identifyId": "u", "location": {"city": "X", "coordinates": {"latitude": 1.5}}, "propertyKeys": ["AP-1"],
              "customAttributes": {}}
    assert flatten(record) == {"identifyId": "u", "location.city": "X", "location.coordinates.latitude": 1.5,
                               "propertyKeys": ["AP-1"], "customAttributes": {}}


def test_a_coordinate_that_is_not_a_number_is_rejected_not_a_crash(tmp_path):
    """The SQL's range check cast the text before knowing it is a number: the whole prepare failed."""
    import csv

    from airflow_provider_profiles.prepare.engine import prepare
    from airflow_provider_profiles.writers import get_writer

    source = tmp_path / "users.csv"
    source.write_text("id,lat\nu1,12.5\nu2,north\nu3,\nu4,91\n")
    writer = get_writer("gainsight_px", "records", entity="USER",
                        field_mapping={"identifyId": "id", "location.coordinates.latitude": "lat"})
    result = prepare(source, writer, tmp_path / "out.ndjson", rejects=tmp_path / "rejects.csv")
    assert (result.written, result.rejected) == (2, 2)
    lines = [json.loads(line) for line in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert lines == [{"identifyId": "u1", "location": {"coordinates": {"latitude": 12.5}}}, {"identifyId": "u3"}]
    with open(tmp_path / "rejects.csv", newline="") as handle:
        rejected = {row["identifier"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(rejected) == {"u2", "u4"}
