"""The one result every upload, load and erase task returns (operators/result.py)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_profiles.operators.result import records_result, results_of, total, vendor_counts


def test_unknown_counts_stay_none_and_known_ones_fill_in_the_sums():
    handed_over = records_result(rejected=0, skipped=0, details={"job": {"id": "1"}})
    assert [handed_over[k] for k in ("read", "sent", "vendor_succeeded", "vendor_failed")] == [None] * 4
    filled = records_result(rejected=1, skipped=2, vendor_succeeded=3, vendor_failed=1)
    assert (filled["sent"], filled["read"]) == (4, 7)
    assert records_result(read=5, rejected=0, skipped=0, vendor_succeeded=4)["vendor_failed"] == 1
    assert json.loads(json.dumps(filled)) == filled  # XCom-ready as it is


@pytest.mark.parametrize("counts", [
    {"read": 5, "rejected": 1, "skipped": 0, "sent": 3},
    {"sent": 3, "vendor_succeeded": 3, "vendor_failed": 1},
    {"read": 2, "rejected": 1, "skipped": 2},
    {"read": -1},
    {"sent": True},
])
def test_counts_that_contradict_the_sums_raise(counts):
    with pytest.raises(ValueError):
        records_result(**counts)


def test_details_must_be_json():
    with pytest.raises(TypeError):
        records_result(details={"when": object()})


def test_vendor_counters_give_the_outcomes_and_fill_only_consistent_gaps():
    assert vendor_counts(10, 7, 3) == {"sent": None, "vendor_succeeded": 7, "vendor_failed": 3}
    assert records_result(rejected=0, skipped=0, **vendor_counts(10, 7, None))["vendor_failed"] == 3
    assert records_result(rejected=0, skipped=0, **vendor_counts(3, 7, None))["sent"] is None  # contradictory total
    assert records_result(rejected=0, skipped=0, **vendor_counts(None, None, None))["sent"] is None


def test_totals_over_mapped_results_and_results_only():
    mapped = [records_result(rejected=0, skipped=0, vendor_succeeded=2, vendor_failed=0),
              records_result(rejected=0, skipped=0, vendor_succeeded=1, vendor_failed=1)]
    assert (total(mapped, "sent"), total(mapped, "vendor_failed")) == (4, 1)
    assert total(mapped + [records_result(rejected=0, skipped=0)], "sent") is None  # one unknown: unknown
    assert results_of(mapped[0]) == [mapped[0]] and results_of(None) == []
    with pytest.raises(TypeError, match="not a result"):
        results_of([{"total_success": 2}])
