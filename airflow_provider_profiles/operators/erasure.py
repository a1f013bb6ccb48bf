"""Erase people (GDPR right to erasure) from a vendor, given their ids.

The shared part reads the ids once (a CSV column or NDJSON key of a local or object-storage file, or
the first column of a SQL query through common-sql), checks them before anything is sent, and
builds the report every erase task returns, the shared result of ``operators.result``::

    {"read": 12, "rejected": 0, "skipped": 1, "sent": 11, "vendor_succeeded": 10, "vendor_failed": 1,
     "details": {"vendor": ..., "failures": [{"id": "u7", "reason": "..."}], "not_found_ids": ["u9"]}}

where erased ids are ``vendor_succeeded``, ids the vendor does not know ``skipped`` (nothing to
erase), ids it failed ``vendor_failed``: ``read == skipped + vendor_succeeded + vendor_failed``
(ids repeated in the input are erased once and counted once). A vendor part only says how to erase one id (``erase_one``: True erased, False not
found, ``VendorAPIError`` failed) or, for a bulk vendor, how to submit the whole list. The task
fails after the report is pushed to XCom (key ``erasure_report``) when an id failed, unless
``fail_on_error=False``, in which case the report is its return value either way.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable
from functools import cached_property
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator

from airflow_provider_profiles.hooks.base import ProfilesHook, VendorAPIError, VendorAuthError
from airflow_provider_profiles.operators.result import records_result
from airflow_provider_profiles.storage import as_storage_path, open_binary

LISTED = 1000  # ids listed per outcome in a report (the counts are always complete)
PROGRESS_EVERY = 30.0  # seconds between progress lines


# --- reading the ids ---------------------------------------------------------------------------------
def ids_from_file(path: Any, column: str) -> list[str]:
    """The ``column`` of a CSV file (header row) or the ``column`` key of an NDJSON file (``.ndjson``,
    ``.jsonl``, ``.json``), in order, repeats dropped. A row without an id is an error naming the file,
    line and column, raised before anything is sent."""
    location = as_storage_path(path)
    ndjson = str(location).lower().endswith((".ndjson", ".jsonl", ".json"))
    with open_binary(location) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
        return _unique(_ndjson_ids(text, column, path) if ndjson else _csv_ids(text, column, path))


def _csv_ids(text: io.TextIOBase, column: str, source: Any) -> Iterable[str]:
    reader = csv.reader(text)
    header = next(reader, None)
    if not header or column not in header:
        raise ValueError(f"{source}: line 1: no column {column!r} in the header {header or '(empty file)'}")
    position = header.index(column)
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        value = row[position].strip() if position < len(row) else ""
        if not value:
            raise ValueError(f"{source}: line {reader.line_num}, column {position + 1} ({column!r}): no id")
        yield value


def _ndjson_ids(text: io.TextIOBase, column: str, source: Any) -> Iterable[str]:
    for number, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{source}: line {number}, column {error.colno if hasattr(error, 'colno') else 1}: "
                             f"not valid JSON: {error}") from None
        value = record.get(column) if isinstance(record, dict) else None
        if value is None or not str(value).strip():
            raise ValueError(f"{source}: line {number}, key {column!r}: no id")
        yield str(value).strip()


def ids_from_sql(conn_id: str, sql: str) -> list[str]:
    """The first column of ``sql`` run through the common-sql hook of connection ``conn_id``, repeats
    and NULLs dropped (a NULL id cannot name anyone)."""
    from airflow.providers.common.compat.sdk import BaseHook

    hook = BaseHook.get_connection(conn_id).get_hook()
    if not hasattr(hook, "get_records"):
        raise ValueError(f"connection {conn_id!r} has no SQL hook (common-sql DbApiHook) to run the query")
    return _unique(str(row[0]).strip() for row in hook.get_records(sql) if row and row[0] is not None
                   and str(row[0]).strip())


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def erasure_report(vendor: str, read: int, erased: int, not_found: list[str], failures: list[dict[str, str]],
                   details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report every erase task returns (the shared result); ``read == erased + not_found + failed``."""
    if erased + len(not_found) + len(failures) != read:
        raise AssertionError(f"erasure counts do not add up: {read} read, {erased} erased, "
                             f"{len(not_found)} not found, {len(failures)} failed")
    return records_result(
        read=read, rejected=0, skipped=len(not_found), vendor_succeeded=erased, vendor_failed=len(failures),
        details={"vendor": vendor, **(details or {}), "failures": failures[:LISTED], "not_found_ids": not_found[:LISTED]},
    )


# --- the operators -------------------------------------------------------------------------------------
class EraseIdsMixin:
    """Where the ids come from and what happens with the report; shared by every erase operator.

    :param ids_file: a CSV or NDJSON file (local path or object-storage URL) holding the ids.
    :param id_column: the CSV column or NDJSON key of the ids (default ``id``).
    :param sql: instead of a file, a query whose first column gives the ids...
    :param sql_conn_id: ...run on this connection through common-sql.
    :param fail_on_error: fail the task (after pushing the report) when an id could not be erased.
    """

    erase_template_fields: ClassVar[tuple[str, ...]] = ("ids_file", "id_column", "sql", "sql_conn_id", "conn_id")
    vendor: ClassVar[str]

    def init_ids(self, ids_file: Any, id_column: str, sql: str | None, sql_conn_id: str | None, fail_on_error: bool) -> None:
        if ids_file is None and sql is None:
            raise ValueError("give either ids_file or sql (with sql_conn_id)")
        self.ids_file, self.id_column, self.sql, self.sql_conn_id = ids_file, id_column, sql, sql_conn_id
        self.fail_on_error = fail_on_error

    def read_ids(self) -> list[str]:
        """The ids, from the query when ``sql`` is set (after templating: an empty string counts as
        unset, so a DAG can template both and choose per run), else from ``ids_file``."""
        if self.sql:
            if self.ids_file:
                raise ValueError("give either ids_file or sql, not both")
            if not self.sql_conn_id:
                raise ValueError("sql needs sql_conn_id, the connection to run it on")
            return ids_from_sql(self.sql_conn_id, self.sql)
        if not self.ids_file:
            raise ValueError("no ids: ids_file and sql are both empty")
        return ids_from_file(self.ids_file, self.id_column)

    def finish(self, context: Any, report: dict[str, Any]) -> dict[str, Any]:
        self.log.info("%s erasure: %s", self.vendor, {k: v for k, v in report.items() if k != "details"})  # type: ignore[attr-defined]
        if report["vendor_failed"] and self.fail_on_error:
            context["ti"].xcom_push(key="erasure_report", value=report)
            first = "; ".join(f"{f['id']}: {f['reason']}" for f in report["details"]["failures"][:5])
            raise AirflowException(f"{report['vendor_failed']} of {report['read']} ids could not be erased from "
                                   f"{self.vendor} (report in XCom 'erasure_report'): {first}")
        return report


class EraseOneByOneOperator(EraseIdsMixin, BaseOperator):
    """Erase ids one request at a time (vendors with a per-profile delete); a vendor sets
    ``hook_class`` and ``vendor`` and implements ``erase_one``. The hook's retry policy and the
    route's rate limiter apply to every request."""

    template_fields = EraseIdsMixin.erase_template_fields
    hook_class: ClassVar[type[ProfilesHook]]

    def __init__(
        self,
        *,
        ids_file: Any = None,
        id_column: str = "id",
        sql: str | None = None,
        sql_conn_id: str | None = None,
        conn_id: str | None = None,
        fail_on_error: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.init_ids(ids_file, id_column, sql, sql_conn_id, fail_on_error)
        self.conn_id = conn_id or self.hook_class.default_conn_name

    @cached_property
    def hook(self) -> ProfilesHook:
        return self.hook_class(self.conn_id)

    def erase_one(self, hook: Any, identifier: str) -> bool:
        """Erase one id: True erased, False not found; raise ``VendorAPIError`` when it failed."""
        raise NotImplementedError

    def execute(self, context: Any) -> dict[str, Any]:
        ids = self.read_ids()
        self.log.info("erasing %d ids from %s", len(ids), self.vendor)
        erased, not_found, failures = 0, [], []
        last_log = time.monotonic()
        for done, identifier in enumerate(ids, 1):
            try:
                if self.erase_one(self.hook, identifier):
                    erased += 1
                else:
                    not_found.append(identifier)
            except VendorAuthError:
                raise  # every other id would fail the same way
            except VendorAPIError as error:
                failures.append({"id": identifier, "reason": str(error)})
            if time.monotonic() - last_log >= PROGRESS_EVERY:
                last_log = time.monotonic()
                self.log.info("%d/%d ids done: %d erased, %d not found, %d failed", done, len(ids), erased,
                              len(not_found), len(failures))
        return self.finish(context, erasure_report(self.vendor, len(ids), erased, not_found, failures))
