"""The one result every upload, load and erase task returns (its XCom ``return_value``).

    {"read": 120, "rejected": 2, "skipped": 0, "sent": 118, "vendor_succeeded": 117, "vendor_failed": 1,
     "details": {...}}

- ``read``: records the task read (for a file upload: the records the vendor counted in the file);
- ``rejected``: not sent, each with its reason (bad data refused before sending, a request budget
  reached), listed in the rejects file where there is one;
- ``skipped``: nothing to do for it (unchanged since the last sync, a dry run, a record the vendor
  does not have where only existing records are changed, an id to erase it does not know);
- ``sent``: handed to the vendor to apply;
- ``vendor_succeeded`` / ``vendor_failed``: what the vendor reports of the records sent;
- ``details``: vendor facts (job ids, the vendor's raw counters, error file or log links, the
  rejects file), JSON only. An upload that knows which records the vendor failed lists them in
  ``vendor_failures_file`` (CSV: line, identifier, reason; the line is the uploaded file's) with the
  first few in ``first_failures``; ``vendor_failures_note`` says why they are not (all) listed.

``read = rejected + skipped + sent`` and ``sent = vendor_succeeded + vendor_failed``. A count
nobody reported is None, never 0: a task that hands a job over without waiting knows none of the
vendor's counts, and a vendor that reports no per-record outcome leaves both vendor counts None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

COUNTS = ("read", "rejected", "skipped", "sent", "vendor_succeeded", "vendor_failed")


def count_or_none(value: Any) -> int | None:
    """A vendor's counter as an int; None when it is missing or not a number."""
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _sum(*values: int | None) -> int | None:
    return None if any(value is None for value in values) else sum(values)  # type: ignore[arg-type]


def records_result(
    *,
    read: int | None = None,
    rejected: int | None = None,
    skipped: int | None = None,
    sent: int | None = None,
    vendor_succeeded: int | None = None,
    vendor_failed: int | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The result dict. A count left None is derived where the two sums above fix it; counts that
    contradict them raise ``ValueError`` (a bug in the task, not a data problem)."""
    counts: dict[str, int | None] = {
        "read": read, "rejected": rejected, "skipped": skipped, "sent": sent,
        "vendor_succeeded": vendor_succeeded, "vendor_failed": vendor_failed,
    }
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a count (an int >= 0) or None, got {value!r}")
    for _ in range(2):  # each sum can fill in what the other one needs
        _fill(counts, "sent", ("vendor_succeeded", "vendor_failed"))
        _fill(counts, "read", ("rejected", "skipped", "sent"))
    for total, parts in (("read", ("rejected", "skipped", "sent")), ("sent", ("vendor_succeeded", "vendor_failed"))):
        if None not in (counts[total], *(counts[part] for part in parts)) and \
                counts[total] != sum(counts[part] for part in parts):  # type: ignore[misc]
            raise ValueError(f"counts do not reconcile ({total} != {' + '.join(parts)}): {counts}")
    details = dict(details or {})
    json.dumps(details)  # XCom takes JSON: a vendor object here is a bug, found now rather than downstream
    return {**counts, "details": details}


def _fill(counts: dict[str, int | None], total: str, parts: tuple[str, ...]) -> None:
    """``total = sum(parts)``: compute the one unknown among them, if exactly one is unknown."""
    names = (total, *parts)
    unknown = [name for name in names if counts[name] is None]
    if len(unknown) != 1:
        return
    if unknown[0] == total:
        counts[total] = sum(counts[part] for part in parts)  # type: ignore[misc]
    else:
        rest = counts[total] - sum(counts[part] for part in parts if part != unknown[0])  # type: ignore[operator]
        if rest < 0:
            raise ValueError(f"counts do not reconcile ({total} < {' + '.join(parts)}): {counts}")
        counts[unknown[0]] = rest


def vendor_counts(total: int | None, succeeded: int | None, failed: int | None) -> dict[str, int | None]:
    """``sent`` and the vendor counts from a vendor's total, succeeded and failed counters: the two
    outcomes when both are given (its total goes to ``details``, where it may differ), else the total
    fixes the missing one."""
    if succeeded is not None and failed is not None:
        return {"sent": None, "vendor_succeeded": succeeded, "vendor_failed": failed}
    if total is not None and (succeeded or 0) + (failed or 0) > total:
        total = None  # the vendor's counters contradict each other: the total is not used to fill in
    return {"sent": total, "vendor_succeeded": succeeded, "vendor_failed": failed}


def is_result(value: Any) -> bool:
    return isinstance(value, Mapping) and all(name in value for name in COUNTS) and "details" in value


def results_of(results: Any, what: str = "results") -> list[Mapping[str, Any]]:
    """``results`` as a list of result dicts: one result, or those of several (mapped) tasks."""
    if results is None:
        return []
    if isinstance(results, (str, bytes)):
        raise TypeError(f"{what} must be upload, load or erase results (dicts), got {results!r}")
    found = [results] if isinstance(results, Mapping) else list(results)
    for item in found:
        if not is_result(item):
            raise TypeError(f"{what}: not a result of an upload, load or erase task ({', '.join(COUNTS)}, "
                            f"details): {item!r}")
    return found


def total(results: Iterable[Mapping[str, Any]], name: str) -> int | None:
    """The sum of one count over several results; None when any of them does not know it."""
    return _sum(*(result[name] for result in results)) if name in COUNTS else None
