"""FieldMapping: renames, dotted paths, constants, per-vendor coercion, validation."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_provider_profiles.prepare.writer import Representation, RowRejected
from airflow_provider_profiles.prepare.mapping import FieldMapping
from tests.unit.prepare.prepared import representation_of


def test_rename_nested_target_nested_source_and_constant():
    mapping = FieldMapping({"id": "uid", "profile.city": "address.city", "source": {"const": "crm"}})
    row = {"uid": "7", "address": {"city": "Oslo"}}
    assert mapping.apply(row) == {"id": "7", "profile": {"city": "Oslo"}, "source": "crm"}
    assert mapping.sources == ["uid", "address.city"]
    assert mapping.missing_columns(["uid"]) == ["address.city"]


@pytest.mark.parametrize(
    ("vendor", "kind", "value", "expected"),
    [
        ("gainsight_px", "date", "2024-01-02", 1704153600000),
        ("gainsight_px", "datetime", "2024-01-02T00:00:01Z", 1704153601000),
        ("localytics", "datetime", "2024-01-02T23:30:00-02:00", "2024-01-03"),
        ("apsis_one", "datetime", dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),
        ("apsis_one", "date", "1704153600000", "2024-01-02"),
        ("mediarithmics", "iso_date", "2024-01-02T10:00:00", "2024-01-02"),
        (None, "epoch_ms", dt.date(1970, 1, 2), 86_400_000),
    ],
)
def test_dates_take_the_vendor_form(vendor, kind, value, expected):
    mapping = FieldMapping({"d": {"source": "d", "type": kind}}, representation=representation_of(vendor))
    assert mapping.apply({"d": value}) == {"d": expected}


def test_booleans_lists_numbers_and_json():
    mapping = FieldMapping(
        {
            "vip": {"source": "vip", "type": "bool"},
            "tags": {"source": "tags", "type": "list", "separator": "|"},
            "n": {"source": "n", "type": "int"},
            "x": {"source": "x", "type": "number"},
            "meta": {"source": "meta", "type": "json"},
            "big": {"source": "big", "type": "int"},
        },
        representation=representation_of("localytics"),
    )
    row = {"vip": "Yes", "tags": "a| b||c", "n": "42", "x": "1.5", "meta": '{"k": 1}', "big": "12345678901234567890"}
    assert mapping.apply(row) == {
        "vip": "true", "tags": ["a", "b", "c"], "n": 42, "x": 1.5, "meta": {"k": 1}, "big": 12345678901234567890,
    }
    assert FieldMapping({"vip": {"source": "vip", "type": "bool"}}, representation=representation_of("gainsight_px")).apply({"vip": "0"}) == {"vip": False}


def test_empty_cells_become_none_or_the_default():
    mapping = FieldMapping({"a": "a", "b": {"source": "b", "default": "unknown"}})
    assert mapping.apply({"a": "  ", "b": ""}) == {"a": None, "b": "unknown"}


@pytest.mark.parametrize(
    ("spec", "value", "reason"),
    [
        ({"source": "v", "type": "int"}, "4.5", "v: expected an integer, got '4.5' (column 'v')"),
        ({"source": "v", "type": "date"}, "31/12/2024", "v: '31/12/2024' is not an ISO 8601 date"),
        ({"source": "v", "type": "bool"}, "maybe", "v: expected true/false"),
        ({"source": "v", "max_length": 3}, "abcd", "v: 4 characters; at most 3 allowed"),
        ({"source": "v", "pattern": r"[a-z]+"}, "ab1", "v: 'ab1' does not match"),
        ({"source": "v", "choices": ["free", "pro"]}, "gold", "v: 'gold' is not one of ['free', 'pro']"),
        ({"source": "v", "required": True}, "", "v: required value is empty (column 'v')"),
    ],
)
def test_invalid_values_are_rejected_with_a_reason(spec, value, reason):
    with pytest.raises(RowRejected) as caught:
        FieldMapping({"v": spec}).apply({"v": value})
    assert caught.value.reason.startswith(reason)
    assert caught.value.field == "v"


def test_date_format_option():
    mapping = FieldMapping({"d": {"source": "d", "type": "iso_date", "format": "%d/%m/%Y"}})
    assert mapping.apply({"d": "31/12/2024"}) == {"d": "2024-12-31"}


def test_identifier_is_required():
    mapping = FieldMapping({"id": "id", "x": "x"}, identifier="id")
    with pytest.raises(RowRejected, match="id: required value is empty"):
        mapping.apply({"id": "", "x": "1"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "the mapping is empty"),
        ({"a": {"source": "a", "const": 1}}, "exactly one of 'source' or 'const'"),
        ({"a": {"source": "a", "type": "money"}}, "unknown type 'money'"),
        ({"a": {"source": "a", "colour": "red"}}, "unknown key"),
        ({"a": "x", "a.b": "y"}, "both 'a' and its child 'a.b'"),
        ({"a..b": "x"}, "not a valid"),
    ],
)
def test_bad_mappings_fail_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        FieldMapping(fields)


def test_fingerprint_follows_the_mapping():
    one = FieldMapping({"a": "x"}).fingerprint()
    assert one == FieldMapping({"a": "x"}).fingerprint()
    assert one != FieldMapping({"a": "y"}).fingerprint()
    assert one != FieldMapping({"a": "x"}, representation=representation_of("localytics")).fingerprint()


def test_representation_is_checked_and_changes_the_fingerprint():
    with pytest.raises(ValueError, match="Representation.date must be one of iso_date, iso_datetime, epoch_ms"):
        Representation(date="unix")
    plain = FieldMapping({"a": "x"}).fingerprint()
    assert plain == FieldMapping({"a": "x"}, representation=Representation()).fingerprint()
    assert plain != FieldMapping({"a": "x"}, representation=Representation(boolean="string")).fingerprint()
