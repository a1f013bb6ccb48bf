"""mediarithmics bulk-import emulator: datamarts, document imports and their executions.

Serves the real paths under ``/v1`` with the ``{"status": "ok", "data": ...}`` envelope, the
``Authorization: <token>`` check, ``first_result``/``max_results`` pagination, and executions that
go PENDING -> RUNNING -> SUCCEEDED / FAILED on the emulated clock (CANCELED while PENDING only);
``end_status`` makes executions end in another status the platform reports (SUCCESS, LOST,
EXECUTOR_NOT_RESPONDING, or any other, to test how a client copes with one it does not know).

An uploaded file is streamed and validated line by line as it arrives (never kept whole): each
line counts in ``total_success`` or ``total_failure``, failures are listed in an error file served
at ``GET /v1/data_file/data?uri=<error_file_uri>``. No body size is refused: 100 MB per file is the
documented recommendation for performance, not a limit.
``keep_lines=True`` keeps each execution's lines as received (``received_lines()``), for tests that
check what exactly was sent.
An execution where no line could be imported ends FAILED with an error message.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_provider_profiles.testing.base import Emulator

# developer.mediarithmics.io/data-ingestion/bulk-processing and its per-type pages (imports, deletions,
# user identifiers association); the overview also lists user dissociation.
DOCUMENT_TYPES = (
    "USER_ACTIVITY",
    "USER_SEGMENT",
    "USER_PROFILE",
    "USER_CHOICE",
    "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS",
    "USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS",
    "USER_IDENTIFIERS_DELETION",
    "USER_POINTS_DELETION",
)
CONTENT_TYPES = {"APPLICATION_X_NDJSON": "application/x-ndjson", "TEXT_CSV": "text/csv"}
PRIORITIES = ("LOW", "MEDIUM", "HIGH")
ERRORS_KEPT = 1000  # per execution: enough to act on, bounded so a bad 100 MB file stays cheap


class _Invalid(ValueError):
    """A line the platform would refuse; the message goes to the execution's error file."""


class MediarithmicsEmulator(Emulator):
    name = "mediarithmics"

    def __init__(
        self,
        *,
        token: str = "mics-api-token",
        datamarts: tuple[str, ...] | list[str] = ("1000",),
        pending_seconds: float = 0.5,
        running_seconds: float = 0.5,
        end_status: str | None = None,
        default_max_results: int = 10,
        max_max_results: int = 1000,
        refuse_lines: Mapping[str, str] | None = None,
        error_file_uri: str | None = None,
        keep_lines: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # Test controls, no vendor rule: ``refuse_lines`` {text: reason} fails every line containing the
        # text with that reason (a refusal the platform makes that the provider cannot foresee, e.g. an
        # unknown compartment); ``error_file_uri`` is the address handed out for every error file instead
        # of the platform's data-file URI (a hostile address, for the client's URL policy).
        self.refuse_lines = dict(refuse_lines or {})
        self.error_file_uri = error_file_uri
        self.token = token
        self.datamart_ids = [str(d) for d in datamarts]
        self.pending_seconds = pending_seconds
        self.running_seconds = running_seconds
        self.end_status = end_status
        self.default_max_results = default_max_results
        self.max_max_results = max_max_results
        self.keep_lines = keep_lines
        self._init_state()

    def _init_state(self) -> None:
        self.document_imports: dict[str, dict[str, Any]] = {}  # id -> definition
        self.executions: dict[str, dict[str, Any]] = {}  # id -> internal record
        self.error_files: dict[str, list[dict[str, Any]]] = {}  # uri -> error lines
        self.lines_received: dict[str, list[str]] = {}  # execution id -> its lines (keep_lines only)
        self._ids = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self._init_state()

    # --- routes -------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        imports = "/v1/datamarts/{datamart_id}/document_imports"
        executions = imports + "/{import_id}/executions"
        return [
            Route(imports, self._document_imports, methods=["GET", "POST"]),
            Route(imports + "/{import_id}", self._document_import, methods=["GET", "PUT", "DELETE"]),
            Route(executions, self._executions, methods=["GET", "POST"]),
            Route(executions + "/{execution_id}", self._get_execution, methods=["GET"]),
            Route(executions + "/{execution_id}/action", self._execution_action, methods=["POST"]),
            Route("/v1/data_file/data", self._data_file, methods=["GET"]),
        ]

    def connection(self) -> dict[str, Any]:
        return {
            "conn_type": self.name,
            "password": self.token,
            "extra": {"base_url": f"{self.url}/v1", "datamart_id": self.datamart_ids[0]},
        }

    def summary(self) -> dict[str, Any]:
        with self.lock:
            views = [self._execution_view(e) for e in self.executions]
            statuses: dict[str, int] = {}
            for view in views:
                statuses[view["status"]] = statuses.get(view["status"], 0) + 1
            results = [v["result"] for v in views if v["result"]]
            return {
                **super().summary(),
                "document_imports": len(self.document_imports),
                "executions": statuses,
                "total_success": sum(r["total_success"] for r in results),
                "total_failure": sum(r["total_failure"] for r in results),
            }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "document_imports": {k: dict(v) for k, v in self.document_imports.items()},
                "executions": {k: self._execution_view(k) for k in self.executions},
            }

    def received_lines(self) -> dict[str, list[str]]:
        """{execution id: its lines as received} (``keep_lines=True``; else empty)."""
        with self.lock:
            return {execution_id: list(lines) for execution_id, lines in self.lines_received.items()}

    # --- envelope -----------------------------------------------------------------------------
    @staticmethod
    def _ok(data: Any, status_code: int = 200, **extra: Any) -> JSONResponse:
        return JSONResponse({"status": "ok", "data": data, **extra}, status_code=status_code)

    @staticmethod
    def _error(status_code: int, message: str) -> JSONResponse:
        # the error body's shape has no public reference (DESIGN.md marks it inferred): clients read it leniently
        body = {"status": "error", "error": message, "error_id": str(uuid.uuid4())}
        return JSONResponse(body, status_code=status_code)

    def _check(self, request: Request) -> JSONResponse | None:
        """Token, then datamart: the error response, or None when the request may proceed."""
        # "Authorization: <YOUR_API_TOKEN>", no scheme (developer.mediarithmics.io/data-ingestion/bulk-processing)
        if request.headers.get("authorization") != self.token:
            return self._error(401, "Authentication error: missing or invalid API token")
        datamart_id = request.path_params.get("datamart_id")
        if datamart_id is not None and datamart_id not in self.datamart_ids:
            return self._error(404, f"datamart {datamart_id} not found")
        return None

    def _page(self, request: Request, items: list[dict[str, Any]]) -> JSONResponse:
        # first_result / max_results paging and the count/total fields: developer.mediarithmics.io
        # "using our API" guide (linked from the bulk-processing page); the page-size cap is ours (lenient)
        try:
            first = int(request.query_params.get("first_result", 0))
            size = int(request.query_params.get("max_results", self.default_max_results))
        except ValueError:
            return self._error(400, "first_result and max_results must be integers")
        if first < 0 or size < 1:
            return self._error(400, "first_result must be >= 0 and max_results >= 1")
        size = min(size, self.max_max_results)
        page = items[first : first + size]
        return self._ok(page, count=len(page), total=len(items), first_result=first, max_results=size)

    # --- document imports ---------------------------------------------------------------------
    def _validate_definition(self, body: Any, partial: bool = False) -> str | None:
        # the document import's properties, document types and mime types:
        # developer.mediarithmics.io/data-ingestion/bulk-processing ("Document import"); priority values inferred
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        required = () if partial else ("document_type", "mime_type", "encoding", "name")
        missing = [f for f in required if not body.get(f)]
        if missing:
            return f"missing field(s): {', '.join(missing)}"
        if "document_type" in body and body["document_type"] not in DOCUMENT_TYPES:
            return f"document_type must be one of {', '.join(DOCUMENT_TYPES)}"
        if "mime_type" in body and body["mime_type"] not in CONTENT_TYPES:
            return f"mime_type must be one of {', '.join(CONTENT_TYPES)}"
        if "priority" in body and body["priority"] is not None and body["priority"] not in PRIORITIES:
            return f"priority must be one of {', '.join(PRIORITIES)}"
        return None

    @staticmethod
    def _csv_allowed(definition: Mapping[str, Any]) -> bool:
        # "The csv format can be chosen only for USER_SEGMENT imports" (developer.mediarithmics.io/data-ingestion/bulk-processing)
        return definition["mime_type"] != "TEXT_CSV" or definition["document_type"] == "USER_SEGMENT"

    async def _document_imports(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        datamart_id = request.path_params["datamart_id"]
        if request.method == "GET":
            with self.lock:
                items = [d for d in self.document_imports.values() if d["datamart_id"] == datamart_id]
            return self._page(request, items)
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "the body is not valid JSON")
        if (problem := self._validate_definition(body)) is not None:
            return self._error(400, problem)
        if not self._csv_allowed(body):
            return self._error(400, "TEXT_CSV is only allowed for USER_SEGMENT document imports")
        with self.lock:
            import_id = str(next(self._ids))
            definition = {
                "id": import_id,
                "datamart_id": datamart_id,
                "document_type": body["document_type"],
                "mime_type": body["mime_type"],
                "encoding": body["encoding"],
                "name": body["name"],
                "priority": body.get("priority") or "MEDIUM",
            }
            self.document_imports[import_id] = definition
        return self._ok(definition)

    def _find_import(self, request: Request) -> dict[str, Any] | None:
        definition = self.document_imports.get(request.path_params["import_id"])
        if definition is None or definition["datamart_id"] != request.path_params["datamart_id"]:
            return None
        return definition

    async def _document_import(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        body = None
        if request.method == "PUT":
            try:
                body = await request.json()
            except ValueError:
                return self._error(400, "the body is not valid JSON")
            if (problem := self._validate_definition(body, partial=True)) is not None:
                return self._error(400, problem)
        with self.lock:
            definition = self._find_import(request)
            if definition is None:
                return self._error(404, f"document import {request.path_params['import_id']} not found")
            if request.method == "GET":
                return self._ok(dict(definition))
            if request.method == "DELETE":
                del self.document_imports[definition["id"]]
                return self._ok(dict(definition))
            updated = {**definition, **{k: v for k, v in body.items() if k not in ("id", "datamart_id")}}
            if not self._csv_allowed(updated):
                return self._error(400, "TEXT_CSV is only allowed for USER_SEGMENT document imports")
            definition.update(updated)
            return self._ok(dict(definition))

    # --- executions ---------------------------------------------------------------------------
    async def _executions(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        with self.lock:
            definition = self._find_import(request)
            definition = dict(definition) if definition else None
        if definition is None:
            return self._error(404, f"document import {request.path_params['import_id']} not found")
        if request.method == "GET":
            with self.lock:
                items = [
                    self._execution_view(e)
                    for e, record in self.executions.items()
                    if record["document_import_id"] == definition["id"]
                ]
            return self._page(request, items)
        return await self._create_execution(request, definition)

    async def _create_execution(self, request: Request, definition: dict[str, Any]) -> Response:
        # the upload's Content-Type matches the import's mime type (the bulk-processing page's curl examples)
        expected = CONTENT_TYPES[definition["mime_type"]]
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != expected:
            return self._error(
                400, f"Content-Type {content_type or '(none)'} does not match the document import: send {expected}"
            )
        # No size limit: "ensure a maximum size for each file of 100M" is given "for maximum performance"
        # (developer.mediarithmics.io/data-ingestion/bulk-processing); no 413 is documented.
        validator = _LineValidator(definition["document_type"], csv_mode=definition["mime_type"] == "TEXT_CSV",
                                   refuse=self.refuse_lines, keep=self.keep_lines)
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            validator.feed(chunk)
        validator.close()
        with self.lock:
            execution_id = str(next(self._ids))
            error_uri = None
            if validator.errors:
                error_uri = f"mics://data_file/tenants/1/datamarts/{definition['datamart_id']}/executions/{execution_id}/errors.ndjson"
                self.error_files[error_uri] = validator.errors
                error_uri = self.error_file_uri or error_uri
            self.executions[execution_id] = {
                "id": execution_id,
                "datamart_id": definition["datamart_id"],
                "document_import_id": definition["id"],
                "document_type": definition["document_type"],
                "mime_type": definition["mime_type"],
                "created": self.clock.now(),
                "bytes": received,
                "lines": validator.lines,
                "total_success": validator.success,
                "total_failure": validator.failure,
                "error_file_uri": error_uri,
                "canceled_at": None,
            }
            if validator.kept is not None:
                self.lines_received[execution_id] = validator.kept
            return self._ok(self._execution_view(execution_id))

    def _status(self, record: dict[str, Any]) -> str:
        if record["canceled_at"] is not None:
            return "CANCELED"
        elapsed = self.clock.now() - record["created"]
        if elapsed < self.pending_seconds:
            return "PENDING"
        if elapsed < self.pending_seconds + self.running_seconds:
            return "RUNNING"
        # PENDING -> RUNNING -> SUCCEEDED (developer.mediarithmics.io/data-ingestion/bulk-processing, "File
        # upload"); when an execution FAILs is not documented: here, when no line could be imported
        if record["total_success"] == 0 and record["total_failure"] > 0:
            return "FAILED"
        # SUCCESS (shown like SUCCEEDED), LOST and EXECUTOR_NOT_RESPONDING are statuses the platform reports
        # for executions (developer.mediarithmics.io API reference, execution resource; DESIGN.md "corrected")
        return self.end_status or "SUCCEEDED"

    def _execution_view(self, execution_id: str, status: str | None = None) -> dict[str, Any]:
        record = self.executions[execution_id]
        status = status or self._status(record)
        created_ms = int(record["created"] * 1000)
        view: dict[str, Any] = {
            "id": execution_id,
            "status": status,
            "job_type": "DOCUMENT_IMPORT",
            "creation_date": created_ms,
            "start_date": created_ms + int(self.pending_seconds * 1000) if status not in ("PENDING", "CANCELED") else None,
            "parameters": {
                "datamart_id": record["datamart_id"],
                "document_import_id": record["document_import_id"],
                "document_type": record["document_type"],
                "mime_type": record["mime_type"],
                "input_file_size": record["bytes"],
                "number_of_lines": record["lines"],
            },
            "result": None,
            "error": None,
        }
        if status in ("SUCCEEDED", "SUCCESS", "FAILED"):
            view["result"] = {
                "total_success": record["total_success"],
                "total_failure": record["total_failure"],
                "error_file_uri": record["error_file_uri"],
            }
        if status == "FAILED":
            view["error"] = {"message": f"no line could be imported: {record['total_failure']} line(s) failed"}
        return view

    async def _get_execution(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        with self.lock:
            record = self._find_execution(request)
            if record is None:
                return self._error(404, f"execution {request.path_params['execution_id']} not found")
            if self._status(record) not in ("PENDING", "RUNNING", "CANCELED") and self.hold_end(record["id"]):
                return self._ok(self._execution_view(record["id"], status="RUNNING"))
            return self._ok(self._execution_view(record["id"]))

    def _find_execution(self, request: Request) -> dict[str, Any] | None:
        record = self.executions.get(request.path_params["execution_id"])
        if (
            record is None
            or record["datamart_id"] != request.path_params["datamart_id"]
            or record["document_import_id"] != request.path_params["import_id"]
        ):
            return None
        return record

    async def _execution_action(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "the body is not valid JSON")
        if not isinstance(body, dict) or body.get("action") != "CANCEL":
            return self._error(400, 'the only action is {"action": "CANCEL"}')
        with self.lock:
            record = self._find_execution(request)
            if record is None:
                return self._error(404, f"execution {request.path_params['execution_id']} not found")
            status = self._status(record)
            # "The cancellation of an execution will only work if the status of this executions is PENDING"
            # (developer.mediarithmics.io/data-ingestion/bulk-processing)
            if status != "PENDING":
                return self._error(400, f"execution {record['id']} is {status}: only a PENDING execution can be canceled")
            record["canceled_at"] = self.clock.now()
            return self._ok(self._execution_view(record["id"]))

    async def _data_file(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        uri = request.query_params.get("uri", "")
        with self.lock:
            errors = self.error_files.get(uri)
        if errors is None:
            return self._error(404, f"data file {uri or '(no uri)'} not found")
        body = "".join(json.dumps(e) + "\n" for e in errors)
        return Response(body, media_type="application/x-ndjson")


# --- line validation (what the platform checks before importing a command) ----------------------

# Sources of the line rules below (all on developer.mediarithmics.io):
#   IDS      /user-points/user-identifiers: one identifier per line; user_account_id with an optional
#            compartment_id ("if you don't specify a compartment_id, then the default compartment will be used")
#   BULK     /data-ingestion/bulk-processing: "only one identifier is allowed per line"
#   SEGMENTS /data-ingestion/bulk-processing/imports/segments-import: operation, segment, expiration_duration
#   PROFILES /data-ingestion/bulk-processing/imports/user-profiles-import
#   ACTIVITY /data-ingestion/bulk-processing/imports/user-activities-import
#   CHOICES  /data-ingestion/bulk-processing/imports/user_choices
#   ASSOC    /data-ingestion/bulk-processing/user-identifiers-association (typed identifiers)
#   POINTS   /data-ingestion/bulk-processing/deletions/user-points-deletion (typed identifiers or USER_POINT)
_IDENTIFIER_FIELDS = ("user_account_id", "email_hash", "user_agent_id")
_TYPED_IDENTIFIERS = {"USER_ACCOUNT": ("user_account_id",), "USER_EMAIL": ("hash",), "USER_AGENT": ("user_agent_id",)}
_USER_POINT = {"USER_POINT": ("user_point_id",)}


def _present(value: Any) -> bool:
    return value not in (None, "")


def _one_identifier(line: Mapping[str, Any], prefix: str = "") -> None:
    # BULK, IDS: exactly one identifier; a compartment_id is optional (the default compartment)
    found = [f for f in _IDENTIFIER_FIELDS if _present(line.get(prefix + f))]
    if len(found) != 1:
        raise _Invalid(f"exactly one user identifier per line is allowed, found {len(found)}: {found or 'none'}")


def _typed_identifier(identifier: Any, types: Mapping[str, tuple[str, ...]] = _TYPED_IDENTIFIERS) -> None:
    # ASSOC, POINTS: the type and its value field; compartment_id optional for USER_ACCOUNT
    if not isinstance(identifier, dict) or identifier.get("type") not in types:
        raise _Invalid(f"identifier type must be one of {', '.join(types)}")
    missing = [f for f in types[identifier["type"]] if not _present(identifier.get(f))]
    if missing:
        raise _Invalid(f"{identifier['type']} identifier misses {', '.join(missing)}")


def _check_points_deletion(line: Mapping[str, Any]) -> None:
    _typed_identifier(line, {**_TYPED_IDENTIFIERS, **_USER_POINT})  # POINTS


def _check_segment(line: Mapping[str, Any]) -> None:
    # SEGMENTS: operation UPDATE|DELETE, a segment by id or technical name, expiration_duration mandatory
    # (Integer, minutes, 0 = never); expiration_ts and data_bag optional, not checked (lenient)
    _one_identifier(line)
    if line.get("operation") not in ("UPDATE", "DELETE"):
        raise _Invalid("operation must be UPDATE or DELETE")
    segment = _present(line.get("segment_id")) or _present(line.get("user_segment_id"))
    if segment == _present(line.get("segment_technical_name")):
        raise _Invalid("give either segment_id or segment_technical_name")
    expiration = line.get("expiration_duration")
    if not _present(expiration):
        raise _Invalid("expiration_duration is mandatory (minutes, 0 = never expires)")
    try:
        if int(expiration) < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise _Invalid("expiration_duration must be a whole number of minutes >= 0") from None


def _check_profile(line: Mapping[str, Any]) -> None:
    # PROFILES: operation UPSERT|DELETE, user_profile on UPSERT, the three update strategies
    _one_identifier(line)
    if line.get("operation") not in ("UPSERT", "DELETE"):
        raise _Invalid("operation must be UPSERT or DELETE")
    if line["operation"] == "UPSERT" and not isinstance(line.get("user_profile"), dict):
        raise _Invalid("UPSERT needs a user_profile object")
    strategy = line.get("update_strategy")
    if strategy is not None and strategy not in ("PARTIAL_UPDATE", "PARTIAL_DELETE", "FORCE_REPLACE"):
        raise _Invalid("update_strategy must be PARTIAL_UPDATE, PARTIAL_DELETE or FORCE_REPLACE")


def _check_activity(line: Mapping[str, Any]) -> None:
    # ACTIVITY: $-prefixed identifiers (one; $compartment_id optional, IDS), $type, $ts in epoch ms
    found = [f for f in _IDENTIFIER_FIELDS if _present(line.get("$" + f))]
    if len(found) != 1:
        raise _Invalid(f"exactly one user identifier per line is allowed, found {len(found)}")
    if not _present(line.get("$type")):
        raise _Invalid("$type is required")
    if not isinstance(line.get("$ts"), int):
        raise _Invalid("$ts must be epoch milliseconds")
    if not isinstance(line.get("$events", []), list):
        raise _Invalid("$events must be a list")


def _check_choice(line: Mapping[str, Any]) -> None:
    # CHOICES: "the $processing_id field is always mandatory, and $choice_ts is mandatory when operation
    # is UPSERT"; force_replace "mandatory when the operation is UPSERT"
    _one_identifier(line)
    if line.get("operation") not in ("UPSERT", "DELETE"):
        raise _Invalid("operation must be UPSERT or DELETE")
    choice = line.get("user_choice")
    if not isinstance(choice, dict) or not _present(choice.get("$processing_id")):
        raise _Invalid("user_choice.$processing_id is mandatory")
    if line["operation"] == "UPSERT":
        if not isinstance(line.get("force_replace"), bool):
            raise _Invalid("force_replace is mandatory on UPSERT (true or false)")
        if not _present(choice.get("$choice_ts")):
            raise _Invalid("user_choice.$choice_ts is mandatory on UPSERT")


def _check_association(line: Mapping[str, Any]) -> None:
    # ASSOC: an identifiers array of typed identifiers
    identifiers = line.get("identifiers")
    if not isinstance(identifiers, list) or len(identifiers) < 2:
        raise _Invalid("identifiers must list at least two identifiers to associate")
    for identifier in identifiers:
        _typed_identifier(identifier)


def _check_dissociation(line: Mapping[str, Any]) -> None:
    # No public page gives the dissociation line's shape: lenient, any JSON object passes.
    del line


_CHECKS = {
    "USER_SEGMENT": _check_segment,
    "USER_PROFILE": _check_profile,
    "USER_ACTIVITY": _check_activity,
    "USER_CHOICE": _check_choice,
    "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS": _check_association,
    "USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS": _check_dissociation,
    "USER_IDENTIFIERS_DELETION": _typed_identifier,
    "USER_POINTS_DELETION": _check_points_deletion,
}


class _LineValidator:
    """Validates a body fed in arbitrary chunks, one complete line at a time, keeping only counts."""

    def __init__(self, document_type: str, csv_mode: bool, refuse: Mapping[str, str] | None = None,
                 keep: bool = False):
        self.check = _CHECKS[document_type]
        self.refuse = dict(refuse or {})
        self.kept: list[str] | None = [] if keep else None  # every line as received, CSV header included
        self.csv_mode = csv_mode
        self.header: list[str] | None = None
        self.lines = self.success = self.failure = 0
        self.errors: list[dict[str, Any]] = []
        self._rest = b""
        self._line_number = 0

    def feed(self, chunk: bytes) -> None:
        data = self._rest + chunk
        *complete, self._rest = data.split(b"\n")
        for raw in complete:
            self._line(raw)

    def close(self) -> None:
        if self._rest.strip():
            self._line(self._rest)
        self._rest = b""

    def _line(self, raw: bytes) -> None:
        self._line_number += 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        if self.kept is not None:
            self.kept.append(text)
        if self.csv_mode and self.header is None:
            self.header = next(csv.reader([text]))
            return
        self.lines += 1
        try:
            self.check(self._parse(text))
            for found, reason in self.refuse.items():
                if found in text:
                    raise _Invalid(reason)
        except _Invalid as exc:
            self.failure += 1
            if len(self.errors) < ERRORS_KEPT:
                self.errors.append({"line": self._line_number, "error": str(exc)})
        else:
            self.success += 1

    def _parse(self, text: str) -> Mapping[str, Any]:
        if self.csv_mode:
            values = next(csv.reader(io.StringIO(text)))
            if len(values) != len(self.header or []):
                raise _Invalid(f"{len(values)} values for {len(self.header or [])} columns")
            return dict(zip(self.header or [], values))
        try:
            line = json.loads(text)
        except ValueError as exc:
            raise _Invalid(f"not valid JSON: {exc}") from None
        if not isinstance(line, dict):
            raise _Invalid("each line must be a JSON object")
        return line
