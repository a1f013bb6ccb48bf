"""The Apsis One CSV writer: header from the mapped columns, values as Apsis reads them, rejects."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_provider_profiles.writers.apsis_one import (
    EMAIL_KEYSPACE,
    MOBILE_KEYSPACE,
    ApsisOneCsvWriter,
    format_value,
)
from airflow_provider_profiles.prepare.writer import RowRejected


def test_header_and_line():
    writer = ApsisOneCsvWriter(["email", "city", "vip", "joined"], "email", EMAIL_KEYSPACE)
    assert writer.extension == "csv" and writer.content_type == "text/csv"
    assert writer.header() == "email,city,vip,joined\n"
    line = writer.encode({"email": " a@b.se ", "city": "Malmö, SE", "vip": True, "joined": dt.date(2024, 2, 29)})
    assert line == 'a@b.se,"Malmö, SE",true,2024-02-29\n'
    assert writer.identifier({"email": "a@b.se"}) == "a@b.se"


@pytest.mark.parametrize("value, text", [
    (None, ""), (False, "false"), (3, "3"), (3.0, "3"), (2.5, "2.5"), (float("nan"), ""),
    (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),
    (dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-01-02T03:04:05Z"),
    ('say "hi"', 'say "hi"'),
])
def test_values(value, text):
    assert format_value(value) == text


def test_missing_columns_are_empty_cells():
    writer = ApsisOneCsvWriter(["id", "city"], "id")
    assert writer.encode({"id": 7}) == "7,\n"


@pytest.mark.parametrize("keyspace, row, reason", [
    (EMAIL_KEYSPACE, {"k": None}, "k: missing keyspace value"),
    (EMAIL_KEYSPACE, {"k": "  "}, "k: missing keyspace value"),
    (EMAIL_KEYSPACE, {"k": "no-at-sign"}, "k: not an email address: 'no-at-sign'"),
    (MOBILE_KEYSPACE, {"k": "07-12"}, "k: not a mobile number"),
])
def test_rejects(keyspace, row, reason):
    with pytest.raises(RowRejected) as caught:
        ApsisOneCsvWriter(["k"], "k", keyspace).encode(row)
    assert caught.value.reason.startswith(reason)
    assert caught.value.field == "k"


def test_bad_column_lists():
    with pytest.raises(ValueError, match="duplicate"):
        ApsisOneCsvWriter(["a", "a"], "a")
    with pytest.raises(ValueError, match="keyspace column 'b'"):
        ApsisOneCsvWriter(["a"], "b")
