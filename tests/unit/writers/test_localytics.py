"""Localytics line writers: each op, value rules, empty handling, rejects, audience de-duplication."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_profiles.prepare.writer import RejectsFile, RowRejected
from airflow_provider_profiles.prepare.values import is_missing
from airflow_provider_profiles.writers.localytics import (
    AttributeChange,
    AudienceLinesWriter,
    ProfileChangesWriter,
)


def changes(writer, row):
    line = writer.encode(row)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    return record["customer_id"], record["changes"]


def test_each_op_encodes_as_documented():
    writer = ProfileChangesWriter({
        "plan": "plan",
        "tags": ("tags", "set-add"),
        "dropped": {"attr": "tags_old", "op": "set-remove"},
        "logins": {"attr": "login_count", "op": "increment"},
        "forget": AttributeChange("legacy", "delete"),
    })
    customer_id, ops = changes(writer, {
        "customer_id": "abc", "plan": "gold", "tags": ["a", "b", "a"], "dropped": ("x",), "logins": 3, "forget": True,
    })
    assert customer_id == "abc"
    assert ops == [
        {"op": "assign", "attr": "plan", "value": "gold"},
        {"op": "set-add", "attr": "tags", "value": ["a", "b"]},
        {"op": "set-remove", "attr": "tags_old", "value": ["x"]},
        {"op": "increment", "attr": "login_count", "value": 3},
        {"op": "delete", "attr": "legacy"},
    ]


def test_dates_are_sent_as_year_month_day():
    writer = ProfileChangesWriter({"d": "d", "t": "t", "ts": "ts", "s": {"attr": "s", "kind": "date"}})
    _, ops = changes(writer, {
        "customer_id": 7,
        "d": dt.date(2024, 2, 29),
        "t": dt.datetime(2024, 3, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2))),  # 01:30 UTC next day
        "ts": pd.Timestamp("2024-01-05 10:00"),
        "s": "2023-12-31T08:00:00Z",
    })
    assert [op["value"] for op in ops] == ["2024-02-29", "2024-03-02", "2024-01-05", "2023-12-31"]


def test_integers_and_integral_floats_pass_other_numbers_are_rejected():
    writer = ProfileChangesWriter({"n": "n"})
    assert changes(writer, {"customer_id": 1.0, "n": 5.0})[1][0]["value"] == 5
    assert changes(writer, {"customer_id": "1", "n": 12})[0] == "1"
    with pytest.raises(RowRejected, match="n: 2.5 is not an integer"):
        writer.encode({"customer_id": "1", "n": 2.5})
    with pytest.raises(RowRejected, match="booleans"):
        writer.encode({"customer_id": "1", "n": True})


def test_increment_accepts_numeric_strings_only():
    writer = ProfileChangesWriter({"c": ("count", "increment")})
    assert changes(writer, {"customer_id": "x", "c": " -4 "})[1] == [{"op": "increment", "attr": "count", "value": -4}]
    with pytest.raises(RowRejected, match="increment needs an integer"):
        writer.encode({"customer_id": "x", "c": "lots"})
    with pytest.raises(RowRejected, match="increment needs an integer"):
        writer.encode({"customer_id": "x", "c": "1.5"})


def test_set_ops_split_strings_with_the_separator():
    writer = ProfileChangesWriter({"t": AttributeChange("tags", "set-add", list_separator="|")})
    assert changes(writer, {"customer_id": "x", "t": "a| b||a"})[1][0]["value"] == ["a", "b"]
    single = ProfileChangesWriter({"t": ("tags", "set-add")})
    assert changes(single, {"customer_id": "x", "t": "a|b"})[1][0]["value"] == ["a|b"]


def test_strings_over_255_characters_are_rejected_naming_the_column():
    writer = ProfileChangesWriter({"bio": "bio", "tags": ("tags", "set-add")})
    assert changes(writer, {"customer_id": "x", "bio": "é" * 255, "tags": None})[1][0]["value"] == "é" * 255
    with pytest.raises(RowRejected) as error:
        writer.encode({"customer_id": "x", "bio": "b" * 256, "tags": None})
    assert error.value.field == "bio" and "256 characters" in error.value.reason
    with pytest.raises(RowRejected, match="tags: string of 300"):
        writer.encode({"customer_id": "x", "bio": "ok", "tags": ["t" * 300]})


@pytest.mark.parametrize("empty_value", [None, "", "  ", float("nan"), pd.NA, pd.NaT, []])
def test_empty_values_are_skipped_or_deleted_by_choice(empty_value):
    assert is_missing(empty_value)
    skip = ProfileChangesWriter({"plan": "plan", "seen": "seen"})
    assert changes(skip, {"customer_id": "x", "plan": empty_value, "seen": 1})[1] == [
        {"op": "assign", "attr": "seen", "value": 1}]
    delete = ProfileChangesWriter({"plan": "plan", "seen": "seen"}, empty="delete")
    assert changes(delete, {"customer_id": "x", "plan": empty_value, "seen": 1})[1][0] == {"op": "delete", "attr": "plan"}
    per_column = ProfileChangesWriter({"plan": {"attr": "plan", "empty": "delete"}, "seen": "seen"})
    assert changes(per_column, {"customer_id": "x", "plan": empty_value, "seen": 1})[1][0]["op"] == "delete"


def test_delete_column_is_a_flag():
    writer = ProfileChangesWriter({"gone": ("old", "delete"), "keep": "keep"})
    assert changes(writer, {"customer_id": "x", "gone": "yes", "keep": "k"})[1][0] == {"op": "delete", "attr": "old"}
    assert changes(writer, {"customer_id": "x", "gone": "0", "keep": "k"})[1] == [
        {"op": "assign", "attr": "keep", "value": "k"}]
    with pytest.raises(RowRejected, match="gone: delete column expects a true/false flag"):
        writer.encode({"customer_id": "x", "gone": "perhaps", "keep": "k"})


def test_rows_without_id_or_changes_are_rejected():
    writer = ProfileChangesWriter({"plan": "plan"}, customer_id="user")
    with pytest.raises(RowRejected, match="user: customer id is empty"):
        writer.encode({"user": " ", "plan": "a"})
    with pytest.raises(RowRejected, match="no attribute to change"):
        writer.encode({"user": "u", "plan": None})
    with pytest.raises(RowRejected, match="plan: column missing"):
        writer.encode({"user": "u"})
    assert writer.identifier({"user": "u1"}) == "u1"


def test_bad_mappings_fail_at_construction_naming_the_column():
    with pytest.raises(ValueError, match="column 'c': attribute 'x': unknown op 'append'"):
        ProfileChangesWriter({"c": ("x", "append")})
    with pytest.raises(ValueError, match="empty must be"):
        ProfileChangesWriter({"c": "c"}, empty="null")
    with pytest.raises(ValueError, match="no column\\(s\\) 'plan'"):
        ProfileChangesWriter({"plan": "plan"}).check_columns(["customer_id", "other"])


def test_audience_lines_remove_duplicates_into_the_rejects_file(tmp_path):
    writer = AudienceLinesWriter(customer_id="id")
    rows = [{"id": "a"}, {"id": 2}, {"id": "a"}, {"id": None}, {"id": 2.0}]
    lines, rejects_path = [], tmp_path / "rejects.csv"
    with RejectsFile(rejects_path) as rejects:
        for number, row in enumerate(rows, start=2):
            try:
                lines.append(writer.encode(row))
            except RowRejected as rejected:
                rejects.add(number, writer.identifier(row), rejected.reason)
    assert lines == ['{"customer_id":"a"}\n', '{"customer_id":"2"}\n']
    assert writer.distinct == 2
    with open(rejects_path, newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert [(r["line"], r["identifier"]) for r in rejected] == [("4", "a"), ("5", ""), ("6", "2")]  # 2.0 is 2
    assert "duplicate" in rejected[0]["reason"] and "empty" in rejected[1]["reason"]
    assert len(lines) + len(rejected) == len(rows)  # counts reconcile


def test_lines_are_compact_utf8_json():
    writer = ProfileChangesWriter({"name": "name"})
    line = writer.encode({"customer_id": "x", "name": "Zoë"})
    assert line == '{"customer_id":"x","changes":[{"op":"assign","attr":"name","value":"Zoë"}]}\n'


@settings(max_examples=200, deadline=None)
@given(customer_id=st.text(min_size=1, max_size=40).filter(str.strip), value=st.text(min_size=1, max_size=300))
def test_any_text_round_trips_or_is_rejected_by_length(customer_id, value):
    writer = ProfileChangesWriter({"v": "v"})
    row = {"customer_id": customer_id, "v": value}
    if not value.strip():
        with pytest.raises(RowRejected, match="no attribute to change"):
            writer.encode(row)
    elif len(value) > 255:
        with pytest.raises(RowRejected, match="at most 255"):
            writer.encode(row)
    else:
        line = writer.encode(row)
        assert line.count("\n") == 1 and line.endswith("\n")  # newlines in values are escaped: one record, one line
        record = json.loads(line)
        assert record == {"customer_id": customer_id.strip(), "changes": [{"op": "assign", "attr": "v", "value": value}]}


def test_delete_flag_reads_the_shared_true_false_words():
    """The delete flag once had its own table ("x" ticked a box, any number was a flag); it now reads
    the one table every writer and the mapping use, so 2 or "x" is a mistake, not a deletion."""
    writer = ProfileChangesWriter({"gone": ("old", "delete"), "keep": "keep"})
    assert changes(writer, {"customer_id": "x", "gone": "T", "keep": "k"})[1][0] == {"op": "delete", "attr": "old"}
    assert changes(writer, {"customer_id": "x", "gone": 1, "keep": "k"})[1][0] == {"op": "delete", "attr": "old"}
    for flag in ("x", 2):
        with pytest.raises(RowRejected, match="gone: delete column expects a true/false flag"):
            writer.encode({"customer_id": "x", "gone": flag, "keep": "k"})
