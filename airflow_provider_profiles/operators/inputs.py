"""The file an operator is given, as an upstream task hands it over, resolved once for every operator.

An operator that takes a file accepts the upstream task's output directly (an ``XComArg``, so the
dependency is kept): a path or URL, a list of chunk paths (``SplitFileOperator``), or the dict a
prepare operator returns (``prepared.output``; its ``output`` is the file). Nothing to send (an empty
chunk list, a prepare result that wrote no row nor deletion, a file without a record) is not an error: it resolves
to None and the operator succeeds without a request to the vendor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow_provider_profiles.operators.result import records_result
from airflow_provider_profiles.prepare.errors import guess_format
from airflow_provider_profiles.storage import as_storage_path, open_binary

NOTHING_SENT = "nothing to send: the input holds no record"


def input_file(value: Any, storage_conn_id: str | None = None, *, what: str = "file",
               file_format: str | None = None) -> Any | None:
    """The file ``value`` names (a storage path, opened with ``storage_conn_id`` when given), or None
    when there is nothing to send. Several chunks for one task is an error: map the task over them."""
    if isinstance(value, Mapping) and value.get("written") == 0 and not value.get("deleted"):
        return None  # a prepare result that wrote nothing (deletions are lines to send too)
    if isinstance(value, (list, tuple)) and not value:
        return None
    path = as_storage_path(input_path(value, what), storage_conn_id)
    return path if has_records(path, file_format) else None


def input_path(value: Any, what: str = "file") -> Any:
    """The one path ``value`` names: itself, a prepare result's ``output``, a one-chunk list's chunk."""
    if isinstance(value, Mapping):
        if "output" not in value:
            raise TypeError(f"{what}: a dict is taken as a prepare task's result and needs its 'output', "
                            f"got keys {sorted(value)}")
        value = value["output"]
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{what}: {len(value)} chunks given to one task; map the task over them "
                             f"(.partial(...).expand({what}=chunks.output)): {list(value)[:3]}")
        value = value[0]
    if value is None or value == "":
        raise ValueError(f"{what}: no file given")
    if not isinstance(value, (str, os.PathLike)) and not hasattr(value, "protocol"):
        raise TypeError(f"{what}: expected a path, a list of chunk paths or a prepare result, got {value!r}")
    return value


def has_records(path: Any, file_format: str | None = None) -> bool:
    """True when the file holds a record: a non-blank line (for CSV, one after the header). A missing
    file, and a CSV without even a header, are left to the reader, which reports them as errors."""
    csv = (file_format or guess_format(path)) == "csv"
    lines = 0
    try:
        with open_binary(path) as handle:
            for line in handle:
                if line.strip():
                    lines += 1
                    if lines == (2 if csv else 1):
                        return True
    except FileNotFoundError:
        return True
    return csv and lines == 0


def nothing_sent(what: Any) -> dict[str, Any]:
    """The shared result of a task that had nothing to send: every count 0, no request made."""
    return records_result(read=0, rejected=0, skipped=0, sent=0, vendor_succeeded=0, vendor_failed=0,
                          details={"nothing_sent": True, "reason": NOTHING_SENT, "input": str(what)})


class FileInputMixin:
    """For a ``RemoteJobOperator`` whose ``file`` comes from upstream: resolves it once (``input_file``)
    when the task runs; nothing to send returns ``nothing_sent`` before any request."""

    file: Any
    storage_conn_id: str | None = None
    input_format: str | None = None  # the file's format where its name may not tell (e.g. a CSV upload)

    def nothing_to_send(self, context: Any) -> Any | None:
        given = self.file
        self.file = input_file(given, self.storage_conn_id, file_format=self.input_format)
        if self.file is not None:
            return None
        self.log.info("%s (%s): no request sent, nothing created at the vendor", NOTHING_SENT, given)  # type: ignore[attr-defined]
        return nothing_sent(given)
