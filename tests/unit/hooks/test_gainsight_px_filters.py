"""The Gainsight PX filter builder: operators, AND/OR, escaping order, and the emulator's parser agreeing."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_provider_profiles.testing.gainsight_px import parse_filters
from airflow_provider_profiles.hooks.gainsight_px import (
    FILTER_OPERATORS,
    build_filters,
    escape_filter_value,
    filter_condition,
)


@pytest.mark.parametrize("operator", FILTER_OPERATORS)
def test_each_operator(operator):
    assert filter_condition("score", operator, 10) == f"score{operator}10"


def test_escape_backslash_before_comma():
    # escaping commas first would turn "\," into "\\\," and double-escape the backslash it added
    assert escape_filter_value("a\\,b") == "a\\\\\\,b"
    assert escape_filter_value("Smith, John") == "Smith\\, John"
    assert escape_filter_value("C:\\dir") == "C:\\\\dir"


def test_semicolon_cannot_be_escaped_so_it_is_refused():
    with pytest.raises(ValueError, match="cannot escape"):
        escape_filter_value("a;b")


def test_values_rendered_as_the_api_compares_them():
    assert filter_condition("active", "==", True) == "active==true"
    assert filter_condition("signUpDate", ">=", dt.datetime(2019, 1, 1)) == "signUpDate>=1546300800000"


def test_and_or_shapes():
    assert build_filters(None) == [] and build_filters([]) == []
    assert build_filters({"countryCode": "US", "city": "Cleveland"}) == ["countryCode==US;city==Cleveland"]
    assert build_filters(("score", ">", 5)) == ["score>5"]
    assert build_filters([("score", ">", 5), ("email", "~", "*@acme.com")]) == ["score>5;email~*@acme.com"]
    assert build_filters([{"countryCode": "US", "city": "Cleveland"}, {"countryCode": "UK", "city": "Cleveland"}]) == [
        "countryCode==US;city==Cleveland",
        "countryCode==UK;city==Cleveland",
    ]
    assert build_filters([[("score", ">", 5)], [["score", "<", 1]]]) == ["score>5", "score<1"]  # lists from JSON


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="operator"):
        filter_condition("score", "=", 1)
    with pytest.raises(ValueError, match="field name"):
        filter_condition("a;b", "==", 1)
    with pytest.raises(ValueError, match="structure"):
        build_filters("countryCode==US")
    with pytest.raises(ValueError, match="cannot read filter group"):
        build_filters([{"a": 1}, "b==2"])


def test_emulator_parser_reads_what_the_builder_writes():
    [group] = parse_filters(build_filters({"name": "Smith, John \\ Jr", "score": 3}))
    record = {"name": "smith, john \\ jr", "score": 3}  # filters are case-insensitive
    assert [c.expression for c in group] == ["Smith, John \\ Jr", "3"]
    assert all(c.matches(record) for c in group)


def test_dates_compare_as_the_loader_sends_them():
    """A filter's date is the loader's epoch milliseconds (floored), not a float's rounding toward zero."""
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 999500)
    assert filter_condition("signUpDate", "<", before_epoch) == "signUpDate<-1"
    assert filter_condition("signUpDate", ">=", dt.datetime(2019, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))) \
        == "signUpDate>=1546300800000"
