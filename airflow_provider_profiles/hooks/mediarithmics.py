"""mediarithmics hook: document imports and their executions (file uploads) under a datamart.

Connection: password = API token (sent as ``Authorization: <token>``), extra ``datamart_id`` = the
default datamart; host only to point elsewhere (an emulator). Every response's ``{"status": "ok",
"data": ...}`` envelope is unwrapped by ``parse_response``; list calls are iterators over ``first_result`` /
``max_results`` pages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_profiles.hooks.base import (
    Call,
    ConnectionConfigError,
    JobNotCancellable,
    JobState,
    JobStatus,
    ProfilesHook,
    VendorAPIError,
    VendorNotFoundError,
    VendorValidationError,
)
from airflow_provider_profiles.storage import open_upload
from airflow_provider_profiles.vendors import VENDORS

# The documented 100 MB per file (vendors.py cites it) is a recommendation for performance: the split
# step aims at it and a larger file is sent with a warning.
MAX_FILE_BYTES: int = VENDORS["mediarithmics"].upload_limit  # type: ignore[assignment]
CONTENT_TYPES = {"APPLICATION_X_NDJSON": "application/x-ndjson", "TEXT_CSV": "text/csv"}
RUNNING_STATUSES = frozenset({"PENDING", "RUNNING"})
# SUCCESS is shown like SUCCEEDED; LOST and EXECUTOR_NOT_RESPONDING end an execution without a result.
STATES = {
    "SUCCEEDED": JobState.SUCCESS,
    "SUCCESS": JobState.SUCCESS,
    "FAILED": JobState.FAILED,
    "CANCELED": JobState.FAILED,
    "LOST": JobState.FAILED,
    "EXECUTOR_NOT_RESPONDING": JobState.FAILED,
}
# An execution's error file (``result.error_file_uri``): a platform data-file URI, read through
# ``GET /data_file/data?uri=`` (developer.mediarithmics.io/data-ingestion/bulk-processing). What is kept of
# it is bounded: it may list every line of a 100 MB file.
DATA_FILE_SCHEME = "mics"
ERROR_FILE_MAX_BYTES = 256 << 20
ERROR_LINE_MAX_BYTES = 64 << 10
ERROR_REASON_MAX_CHARS = 300
UNKNOWN_STATUS_TIMEOUT = 900.0  # seconds a status we do not know may last before the execution counts as failed


class FileTooLarge(ValueError):
    """An upload over a per-file limit the caller set (``max_file_bytes``): split it first."""


class MediarithmicsHook(ProfilesHook):
    """Talks to the mediarithmics API v1 (``https://api.mediarithmics.com/v1``)."""

    conn_name_attr = "conn_id"
    default_conn_name = "mediarithmics_default"
    conn_type = "mediarithmics"
    hook_name = "mediarithmics"
    default_base_urls = {"default": "https://api.mediarithmics.com/v1"}
    default_region = "default"

    # --- auth and envelope --------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        token = self.connection.password
        if not token:
            raise ValueError(f"connection {self.conn_id!r} has no API token: put it in the password field")
        return {"Authorization": token}

    def error_message(self, payload: Any, text: str) -> str:
        if isinstance(payload, dict) and payload.get("error"):
            error = payload["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            return f"{message} (error_id {payload['error_id']})" if payload.get("error_id") else str(message)
        return super().error_message(payload, text)

    def _body(self, response: Any, method: str, path: str) -> dict[str, Any]:
        """The ``{"status": "ok", ...}`` envelope; anything else is an error naming what came."""
        try:
            body = response.json()
        except ValueError:
            body = f"a non-JSON body: {response.text[:200]!r}"
        if not isinstance(body, dict) or body.get("status") != "ok":
            message = self.error_message(body, "") if isinstance(body, dict) else f"unexpected response: {str(body)[:300]}"
            raise VendorAPIError(message, method=method, path=path, payload=body, vendor=self.hook_name)
        return body

    def parse_response(self, response: Any, call: Call) -> Any:
        """A declared call's result: the envelope's ``data``."""
        return self._body(response, call.method, call.path)["data"]

    def paginate(self, path: str, page_size: int = 100, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a list call, fetching ``page_size`` at a time."""
        first = 0
        while True:
            page_params = {**(params or {}), "first_result": first, "max_results": page_size}
            body = self._body(self.request("GET", path, params=page_params), "GET", path)
            items = body.get("data") or []
            yield from items
            first += len(items)
            total = body.get("total")
            served = int(body.get("max_results") or page_size)  # the platform may cap the page size
            # stop on an empty or short page, or when the reported total is reached
            if not items or len(items) < min(page_size, served) or (total is not None and first >= int(total)):
                return

    def probe(self) -> str:
        # GET /v1/datamarts/{id}/document_imports, "List document imports", one item
        # (developer.mediarithmics.io/data-ingestion/bulk-processing): the token and the datamart_id extra
        path = self._imports_path(None)
        try:
            body = self.probe_json("GET", path, params={"first_result": 0, "max_results": 1})
        except VendorNotFoundError as error:
            if not (isinstance(error.payload, dict) and error.payload.get("status") == "error"):
                raise  # not mediarithmics' error envelope: another server
            raise ConnectionConfigError(f"connection {self.conn_id!r}: datamart_id {self.datamart(None)} is not "
                                        f"found or not visible to this token ({error.vendor_message})") from None
        if not isinstance(body, dict) or body.get("status") != "ok" or not isinstance(body.get("data"), list):
            raise self.unexpected_answer("GET", path, "not a mediarithmics list envelope")
        total = body.get("total")
        return f"datamart {self.datamart(None)}: {total if isinstance(total, int) else len(body['data'])} document import(s)"

    # --- paths --------------------------------------------------------------------------------
    def datamart(self, datamart_id: str | int | None) -> str:
        """The given datamart, else the connection's ``datamart_id`` extra."""
        chosen = datamart_id if datamart_id not in (None, "") else self.connection.extra_dejson.get("datamart_id")
        if chosen in (None, ""):
            raise ValueError(f"no datamart_id given and connection {self.conn_id!r} has no datamart_id extra")
        return str(chosen)

    def _imports_path(self, datamart_id: str | int | None, document_import_id: str | int | None = None) -> str:
        path = f"/datamarts/{self.datamart(datamart_id)}/document_imports"
        return path if document_import_id is None else f"{path}/{document_import_id}"

    def _executions_path(self, datamart_id: Any, document_import_id: Any, execution_id: Any = None) -> str:
        path = f"{self._imports_path(datamart_id, document_import_id)}/executions"
        return path if execution_id is None else f"{path}/{execution_id}"

    # --- document imports ---------------------------------------------------------------------
    def create_document_import(
        self,
        document_type: str,
        mime_type: str,
        name: str,
        *,
        encoding: str = "utf-8",
        priority: str | None = None,
        datamart_id: str | int | None = None,
    ) -> dict[str, Any]:
        if mime_type == "TEXT_CSV" and document_type != "USER_SEGMENT":
            raise ValueError(f"TEXT_CSV is only allowed for USER_SEGMENT document imports, not {document_type}")
        body = {"document_type": document_type, "mime_type": mime_type, "encoding": encoding, "name": name}
        if priority:
            body["priority"] = priority
        return self.call(Call("POST", self._imports_path(datamart_id), json=body))

    def list_document_imports(self, datamart_id: str | int | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        return self.paginate(self._imports_path(datamart_id), page_size)

    def get_document_import(self, document_import_id: str | int, datamart_id: str | int | None = None) -> dict[str, Any]:
        return self.call(Call("GET", self._imports_path(datamart_id, document_import_id)))

    def update_document_import(self, document_import_id: str | int, datamart_id: str | int | None = None, **fields: Any) -> dict[str, Any]:
        return self.call(Call("PUT", self._imports_path(datamart_id, document_import_id), json=fields))

    def delete_document_import(self, document_import_id: str | int, datamart_id: str | int | None = None) -> Any:
        return self.call(Call("DELETE", self._imports_path(datamart_id, document_import_id)))

    # --- executions ---------------------------------------------------------------------------
    def create_execution(
        self,
        document_import_id: str | int,
        file: Any,
        *,
        datamart_id: str | int | None = None,
        content_type: str | None = None,
        max_file_bytes: int | None = None,
        recommended_max_bytes: int = MAX_FILE_BYTES,
    ) -> dict[str, Any]:
        """Upload one file as a new execution, streamed from ``file``: a local path or object-storage
        URI (str / ObjectStoragePath), an open binary file, bytes, or an iterable of bytes chunks.
        ``content_type`` defaults to the document import's mime type. A file over the documented
        recommendation (100 MB) is sent with a warning; ``max_file_bytes`` sets a hard limit of your own."""
        path = self._executions_path(datamart_id, document_import_id)
        with open_upload(file) as upload:
            body, size, label = upload.body, upload.size, upload.label
            if max_file_bytes is not None and size is not None and size > max_file_bytes:
                raise FileTooLarge(
                    f"{label} is {size / 1e6:.1f} MB, over max_file_bytes={max_file_bytes}: split it into "
                    "chunks first (the split step of the data preparation) and upload each"
                )
            if size is not None and size > recommended_max_bytes:
                self.log.warning(
                    "%s is %.1f MB; mediarithmics recommends at most %g MB per file for performance: "
                    "sending it anyway (split it to import faster)", label, size / 1e6, recommended_max_bytes / 1e6,
                )
            if content_type is None:
                mime_type = self.get_document_import(document_import_id, datamart_id)["mime_type"]
                content_type = CONTENT_TYPES[mime_type]
            # a generator cannot be rewound, so the base never retries it; a POST is not retried on 5xx either
            return self.call(Call("POST", path, data=body, headers={"Content-Type": content_type}, idempotent=False))

    def list_executions(self, document_import_id: str | int, datamart_id: str | int | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        return self.paginate(self._executions_path(datamart_id, document_import_id), page_size)

    def execution_call(self, document_import_id: Any, execution_id: Any, datamart_id: Any = None) -> Call:
        return Call("GET", self._executions_path(datamart_id, document_import_id, execution_id))

    def get_execution(self, document_import_id: str | int, execution_id: str | int, datamart_id: str | int | None = None) -> dict[str, Any]:
        return self.call(self.execution_call(document_import_id, execution_id, datamart_id))

    def cancel_execution(self, document_import_id: Any, execution_id: Any, datamart_id: Any = None) -> dict[str, Any]:
        """Cancel a PENDING execution; ``JobNotCancellable`` naming its status otherwise."""
        return self.call(self.cancel_job_call(datamart_id=datamart_id, document_import_id=document_import_id,
                                              execution_id=execution_id))

    def error_lines(self, error_file_uri: str, limit: int = 20) -> list[str]:
        """The first ``limit`` lines of an execution's error file (``result.error_file_uri``), as served:
        for a person to read; ``error_file_entries`` gives them filtered, for results and logs."""
        response = self._error_file(error_file_uri)
        response.encoding = response.encoding or "utf-8"  # NDJSON carries no charset: decode as the import's utf-8
        lines: list[str] = []
        try:
            for line in response.iter_lines(decode_unicode=True):
                if len(lines) >= limit:
                    break
                if line:
                    lines.append(line)
        finally:
            response.close()
        return lines

    def error_file_entries(self, error_file_uri: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """An execution's error file, one ``{"line": int | None, "reason": str}`` per entry (at most
        ``limit``), streamed: ``line`` is the failed line's number in the uploaded file where the entry
        gives one. Only the entry's line number and its ``error`` / ``message`` text (cut to
        ``ERROR_REASON_MAX_CHARS``) are kept; an entry that is not a JSON object, or is longer than
        ``ERROR_LINE_MAX_BYTES``, stands as a note of its size. At most ``ERROR_FILE_MAX_BYTES`` are read.
        ``UntrustedURLError`` (a ``VendorAPIError``) when the file's address is refused."""
        response = self._error_file(error_file_uri)
        count = 0
        try:
            for raw in _bounded_lines(response.iter_content(64 << 10), ERROR_LINE_MAX_BYTES, ERROR_FILE_MAX_BYTES):
                if limit is not None and count >= limit:
                    return
                entry = _error_entry(raw)
                if entry is not None:
                    count += 1
                    yield entry
        finally:
            response.close()

    def _error_file(self, error_file_uri: str) -> Any:
        """The error file's streamed response. A platform data-file URI (``mics://...``) is read through the
        documented ``GET /data_file/data?uri=`` on the connection's own host, with the token. Any other
        address is a URL the answer supplied: fetched without credentials and only where the shared
        supplied-URL policy allows (https to a public host, or the connection's own or a trusted host)."""
        scheme = urlsplit(str(error_file_uri)).scheme.lower()
        if scheme in ("", DATA_FILE_SCHEME):
            return self.request("GET", "/data_file/data", params={"uri": error_file_uri}, stream=True)
        return self.fetch_supplied_url("GET", str(error_file_uri), stream=True)

    # --- job protocol (operator, sensor, trigger) ---------------------------------------------
    def job_status_call(self, *, datamart_id: Any, document_import_id: Any,
                        execution_id: Any) -> Generator[Call, Any, JobStatus]:
        execution = yield self.execution_call(document_import_id, execution_id, datamart_id)
        return self._bounded(execution_status(execution))

    def cancel_job_call(self, *, datamart_id: Any, document_import_id: Any,
                        execution_id: Any) -> Generator[Call, Any, Any]:
        execution = yield self.execution_call(document_import_id, execution_id, datamart_id)
        _check_cancellable(execution)
        path = self._executions_path(datamart_id, document_import_id, execution_id) + "/action"
        try:
            return (yield Call("POST", path, json={"action": "CANCEL"}, idempotent=False))
        except VendorValidationError as error:  # it left PENDING between our two calls
            raise JobNotCancellable(f"execution {execution_id} could not be canceled: {error.vendor_message}") from None

    def _bounded(self, status: JobStatus) -> JobStatus:
        """A status we do not know is waited on for ``unknown_status_timeout`` seconds (connection extra,
        default 15 min) from when this hook first saw it, then counts as a failure: never an endless wait."""
        key = status.payload.get("id")
        seen: dict[Any, float] = self.__dict__.setdefault("_unknown_since", {})
        if status.vendor_status in STATES or status.vendor_status in RUNNING_STATUSES:
            seen.pop(key, None)
            return status
        first = seen.setdefault(key, time.monotonic())
        limit = float(self.extras.get("unknown_status_timeout", UNKNOWN_STATUS_TIMEOUT))
        if time.monotonic() - first < limit:
            return status
        return JobStatus(
            JobState.FAILED, status.vendor_status, status.payload,
            f"execution {key} has the status {status.vendor_status!r}, unknown to this provider, for over "
            f"unknown_status_timeout={limit:g}s: check it in the navigator",
        )

def execution_status(execution: dict[str, Any]) -> JobStatus:
    """An execution mapped to the job protocol: PENDING/RUNNING run, SUCCEEDED/SUCCESS succeed,
    FAILED/CANCELED/LOST/EXECUTOR_NOT_RESPONDING fail; any other status runs (the hook bounds how long)."""
    vendor_status = str(execution.get("status", "")).upper()
    state = STATES.get(vendor_status, JobState.RUNNING)
    message = None
    if vendor_status in ("LOST", "EXECUTOR_NOT_RESPONDING"):
        message = (f"execution {execution.get('id')} ended {vendor_status}: the platform lost track of it, so "
                   "its lines may not be imported; upload the file again")
    elif vendor_status == "FAILED":
        error = execution.get("error") or {}
        message = f"execution {execution.get('id')} FAILED: {error.get('message') if isinstance(error, dict) else error or 'no error message'}"
    elif vendor_status == "CANCELED":
        message = f"execution {execution.get('id')} was CANCELED"
    return JobStatus(state, vendor_status, execution, message)


def _bounded_lines(chunks: Iterator[bytes], max_line: int, max_total: int) -> Iterator[bytes | int]:
    """The lines of a byte stream; a line longer than ``max_line`` comes as its length (an int),
    never held whole. Reading stops after ``max_total`` bytes (the rest is not listed)."""
    pending, too_long, total = bytearray(), None, 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_total:
            return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if too_long is not None:
                too_long += len(piece)
            else:
                pending += piece
                if len(pending) > max_line:
                    too_long = len(pending)
                    pending.clear()
            if end < 0:
                break
            yield bytes(pending) if too_long is None else too_long
            pending.clear()
            too_long, start = None, end + 1
    if too_long is not None:
        yield too_long
    elif pending:
        yield bytes(pending)


def _error_entry(raw: bytes | int) -> dict[str, Any] | None:
    """One error-file line as ``{"line", "reason"}`` (see ``error_file_entries``); None for a blank line."""
    if isinstance(raw, int):
        return {"line": None, "reason": f"(an error-file entry of {raw} bytes, too long to read)"}
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return {"line": None, "reason": f"(an error-file entry that is not a JSON object, {len(text)} characters)"}
    line = parsed.get("line")
    reason = parsed.get("error") if parsed.get("error") is not None else parsed.get("message")
    if isinstance(reason, dict):
        reason = reason.get("message")
    reason = reason if isinstance(reason, str) and reason.strip() else "(no reason given)"
    reason = " ".join(reason.split())  # one line: no control characters into logs or CSV rows
    return {"line": line if isinstance(line, int) and not isinstance(line, bool) and line > 0 else None,
            "reason": reason[:ERROR_REASON_MAX_CHARS]}


def _check_cancellable(execution: dict[str, Any]) -> None:
    if execution.get("status") != "PENDING":
        raise JobNotCancellable(
            f"execution {execution.get('id')} is {execution.get('status')}: mediarithmics cancels only PENDING executions"
        )

