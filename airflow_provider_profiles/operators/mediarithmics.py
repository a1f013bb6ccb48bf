"""mediarithmics operators: create a document import for the run, upload each file as an execution.

    create = MediarithmicsCreateDocumentImportOperator(
        task_id="new_import", document_type="USER_PROFILE", name="CRM profiles {{ run_id }}",
        files=chunks.output)
    MediarithmicsUploadOperator.partial(task_id="upload", document_import_id=create.output,
                                        deferrable=True).expand(file=chunks.output)
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from airflow_provider_profiles.hooks.base import JobState, JobStatus, VendorAPIError
from airflow_provider_profiles.hooks.mediarithmics import (
    FileTooLarge,
    MediarithmicsHook,
    execution_status,
)
from airflow_provider_profiles.lineage import ProfilesOutputMixin
from airflow_provider_profiles.operators.base import RemoteJobOperator
from airflow_provider_profiles.operators.inputs import FileInputMixin, input_file, input_path
from airflow_provider_profiles.operators.links import StoredLink, console_or_api, store_links
from airflow_provider_profiles.writers import writer_class
from airflow_provider_profiles.operators.sync_adapter import SyncAdapter, SyncPlan, conn_kwargs
from airflow_provider_profiles.operators.result import count_or_none, records_result, vendor_counts
from airflow_provider_profiles.storage import as_storage_path, open_binary, path_text
from airflow_provider_profiles.operators.erasure import EraseIdsMixin, erasure_report


# No public address pattern of the navigator's pages for a document import or an execution was found, so
# the links open the resources of the documented API (developer.mediarithmics.io/data-ingestion/
# bulk-processing: GET .../document_imports/{id}, .../executions/{id}, GET /data_file/data?uri= for the
# error file) on the connection's own host; they answer with the token in the Authorization header.
EXECUTION_LINK = StoredLink(name="mediarithmics execution", key="mediarithmics_execution")
DOCUMENT_IMPORT_LINK = StoredLink(name="mediarithmics document import", key="mediarithmics_document_import")
ERROR_FILE_LINK = StoredLink(name="mediarithmics error file", key="mediarithmics_error_file")


def _api_link(hook: MediarithmicsHook, path: str) -> str | None:
    return console_or_api(hook.base_url, MediarithmicsHook, None, path)


# What an upload with failed lines keeps of the execution's error file (``vendor_failures``)
VENDOR_FAILURES_SUFFIX = ".vendor_failures.csv"
VENDOR_FAILURES_HEADER = ("line", "identifier", "reason")
FIRST_FAILURES = 5
IDENTIFIER_MAX_CHARS = 200

# The platform stamps creation_date with its own clock: an execution created a little "before" the
# upload began (as our clock reads) is still a candidate for the lost one.
CLOCK_SKEW_SECONDS = 300


def _size_of(file: Any) -> int | None:
    try:
        return as_storage_path(file).stat().st_size
    except (OSError, TypeError, ValueError):
        return None  # the hook reports a missing file with its own message


def _same_size(execution: dict[str, Any], size: int | None) -> bool:
    """The execution's file size where the listing gives it (it is not part of the documented
    resource, so its absence matches anything)."""
    listed = (execution.get("parameters") or {}).get("input_file_size")
    return size is None or listed is None or int(listed) == size


class MediarithmicsCreateDocumentImportOperator(BaseOperator):
    """Create a document import definition and return its id.

    The mediarithmics guide recommends a new document import per batch of files (e.g. one per nightly
    run), so template ``name`` with the run, e.g. ``"CRM profiles {{ run_id }}"``. A retry of this task
    reuses the definition an earlier try created under the same name instead of adding a second one.
    Given ``files`` (the chunks or prepare result the uploads will send, e.g. ``chunks.output``), it
    creates nothing and returns None when they hold no record: a run with nothing to send leaves no
    empty document import behind, and the uploads return every count 0.

    :param document_type: USER_PROFILE, USER_SEGMENT, USER_ACTIVITY, USER_CHOICE,
        USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS or USER_IDENTIFIERS_DELETION.
    :param mime_type: APPLICATION_X_NDJSON, or TEXT_CSV (USER_SEGMENT only).
    :param name: the definition's name (templated).
    :param datamart_id: defaults to the connection's ``datamart_id`` extra.
    :param encoding: of the files to upload.
    :param priority: LOW, MEDIUM or HIGH (the platform's default when not given).
    :param files: what the uploads will send (a path, a list of chunk paths or a prepare result).
    :param storage_conn_id: the object storage connection holding ``files``.
    """

    template_fields = ("datamart_id", "document_type", "mime_type", "name", "conn_id", "files")
    operator_extra_links = (DOCUMENT_IMPORT_LINK,)

    def __init__(
        self,
        *,
        document_type: str,
        name: str,
        mime_type: str = "APPLICATION_X_NDJSON",
        datamart_id: str | int | None = None,
        encoding: str = "utf-8",
        priority: str | None = None,
        conn_id: str = MediarithmicsHook.default_conn_name,
        files: Any = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.files, self.storage_conn_id = files, storage_conn_id
        self.document_type = document_type
        self.name = name
        self.mime_type = mime_type
        self.datamart_id = datamart_id
        self.encoding = encoding
        self.priority = priority
        self.conn_id = conn_id

    def execute(self, context: Any) -> str | None:
        if self.files is not None and not self._anything_to_send():
            self.log.info("nothing to send in %s: no document import created", self.files)
            return None
        hook = MediarithmicsHook(self.conn_id)
        if context["ti"].try_number > 1:
            for existing in hook.list_document_imports(self.datamart_id):
                if (existing.get("name"), existing.get("document_type"), existing.get("mime_type")) == (
                    self.name, self.document_type, self.mime_type
                ):
                    self.log.info("reusing document import %s %r created by an earlier try", existing["id"], self.name)
                    return self._linked(context, hook, str(existing["id"]))
        created = hook.create_document_import(
            self.document_type, self.mime_type, self.name,
            encoding=self.encoding, priority=self.priority, datamart_id=self.datamart_id,
        )
        self.log.info("created %s document import %s %r", self.document_type, created["id"], self.name)
        return self._linked(context, hook, str(created["id"]))

    def _linked(self, context: Any, hook: MediarithmicsHook, document_import_id: str) -> str:
        path = f"datamarts/{hook.datamart(self.datamart_id)}/document_imports/{document_import_id}"
        store_links(context, {DOCUMENT_IMPORT_LINK: _api_link(hook, path)}, self.log)
        return document_import_id

    def _anything_to_send(self) -> bool:
        csv = "csv" if self.mime_type == "TEXT_CSV" else None
        chunks = self.files if isinstance(self.files, (list, tuple)) else [self.files]
        return any(input_file(chunk, self.storage_conn_id, what="files", file_format=csv) is not None
                   for chunk in chunks)


class MediarithmicsUploadOperator(FileInputMixin, ProfilesOutputMixin, RemoteJobOperator):
    """Upload one file to a document import (one execution), then wait for it unless told not to.

    The file streams from a local path or an object-storage URI (``s3://``, ``gs://``...), never read
    whole. Files over 100 MB are refused before anything is sent: split them first. The job ids
    (``datamart_id``, ``document_import_id``, ``execution_id``) go to XCom (key ``job``, and the id
    alone under ``execution_id``) before waiting. SUCCEEDED returns the shared result
    (``operators.result``: ``total_success`` / ``total_failure`` as ``vendor_succeeded`` /
    ``vendor_failed``, the error file's URI in ``details``); FAILED or CANCELED
    fails the task with the platform's error; a timeout or a killed task cancels the execution while
    it is still PENDING. Map it over the chunk list: ``.partial(...).expand(file=chunks)``. A retry
    after an upload whose answer was lost reattaches to the execution it created (found in the
    document import's executions) rather than importing the file twice.

    :param document_import_id: the definition to upload to (templated; e.g. the create task's output).
    :param file: path or URI of the file (templated), or the upstream task's output as is (a prepare
        task's result, ``prepared.output``, or a one-chunk list). A file without a record sends
        nothing and returns every count 0 (``document_import_id`` may then be None: see
        ``MediarithmicsCreateDocumentImportOperator``'s ``files``).
    :param storage_conn_id: the object storage connection holding ``file`` (default: its URL's).
    :param datamart_id: defaults to the connection's ``datamart_id`` extra.
    :param content_type: ``application/x-ndjson`` or ``text/csv``; defaults to the definition's.
    :param asset: emit the Asset ``profiles_asset("mediarithmics", datamart=...)`` on success (see
        ``lineage.ProfilesOutputMixin``); lineage: the file in, ``mediarithmics://<host>/datamart/<id>`` out.
    See ``RemoteJobOperator`` for ``wait_for_completion``, ``deferrable``, ``poll_interval``,
    ``job_timeout`` and ``max_failed_ratio`` (failed lines / all lines).
    """

    template_fields = ("datamart_id", "document_import_id", "file", "conn_id")
    hook_class = MediarithmicsHook
    operator_extra_links = (EXECUTION_LINK, DOCUMENT_IMPORT_LINK, ERROR_FILE_LINK)
    vendor = "mediarithmics"

    def __init__(
        self,
        *,
        document_import_id: str | int | None,
        file: Any,
        datamart_id: str | int | None = None,
        content_type: str | None = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        self.document_import_id = document_import_id
        self.file = file
        self.datamart_id = datamart_id
        self.content_type = content_type

    @property
    def input_format(self) -> str | None:  # type: ignore[override]
        return "csv" if self.content_type == "text/csv" else None

    def submit(self, context: Any) -> dict[str, Any]:
        hook: MediarithmicsHook = self.hook  # type: ignore[assignment]
        size = _size_of(self.file)
        self.record_intent(context, f"uploaded {self.file} ({size} bytes) to document import {self.document_import_id}",
                           size=size)
        try:
            execution = hook.create_execution(
                self.document_import_id, self.file, datamart_id=self.datamart_id, content_type=self.content_type
            )
        except FileTooLarge as too_large:
            raise AirflowFailException(str(too_large)) from None  # a retry would be refused the same way
        return {
            "datamart_id": hook.datamart(self.datamart_id),
            "document_import_id": str(self.document_import_id),
            "execution_id": str(execution["id"]),
        }

    def lineage_scope(self) -> dict[str, Any]:
        return {"datamart": self.hook.datamart(self.datamart_id)}  # type: ignore[attr-defined]

    def job_links(self, job: dict[str, Any]) -> dict[StoredLink, str | None]:
        imports = f"datamarts/{job['datamart_id']}/document_imports/{job['document_import_id']}"
        return {DOCUMENT_IMPORT_LINK: _api_link(self.hook, imports),
                EXECUTION_LINK: _api_link(self.hook, f"{imports}/executions/{job['execution_id']}")}

    def result_links(self, result: Any) -> dict[StoredLink, str | None]:
        uri = (result.get("details") or {}).get("error_file_uri")
        return {ERROR_FILE_LINK: _api_link(self.hook, f"data_file/data?uri={quote(str(uri), safe='')}")} if uri else {}

    def find_lost_job(self, context: Any, intent: dict[str, Any]) -> dict[str, Any] | None:
        """The execution the lost upload created: listed under the document import since the upload began."""
        hook: MediarithmicsHook = self.hook  # type: ignore[assignment]
        since_ms = (intent["at"] - CLOCK_SKEW_SECONDS) * 1000
        found = [
            execution for execution in hook.list_executions(self.document_import_id, self.datamart_id)
            if int(execution.get("creation_date") or 0) >= since_ms and _same_size(execution, intent.get("size"))
        ]
        if len(found) > 1:  # e.g. mapped uploads of equal size to the same import: keep the ones still alive
            found = [e for e in found if execution_status(e).state is not JobState.FAILED]
        if not found:
            return None  # nothing was created: uploading again imports the file once
        if len(found) > 1:
            ids = ", ".join(str(e.get("id")) for e in found)
            raise self.unknown_outcome(context, intent, f"executions {ids} of document import "
                                       f"{self.document_import_id} could each be it")
        return {
            "datamart_id": hook.datamart(self.datamart_id),
            "document_import_id": str(self.document_import_id),
            "execution_id": str(found[0]["id"]),
        }

    def on_success(self, context: Any, status: JobStatus) -> dict[str, Any]:
        result = status.payload.get("result") or {}
        success, failure = count_or_none(result.get("total_success")), count_or_none(result.get("total_failure"))
        details = {"job": self._job, "execution_id": str(status.payload.get("id")), "status": status.vendor_status,
                   "total_success": result.get("total_success"), "total_failure": result.get("total_failure"),
                   "error_file_uri": result.get("error_file_uri")}
        if failure:
            details.update(self.vendor_failures(result, failure))
        return records_result(rejected=0, skipped=0, **vendor_counts(None, success, failure), details=details)

    def raise_if_failed(self, job: dict[str, Any], status: JobStatus) -> None:
        if status.vendor_status == "FAILED":
            self._log_first_errors(status)
        super().raise_if_failed(job, status)

    def vendor_failures(self, result: dict[str, Any], failed: int) -> dict[str, Any]:
        """The failed lines with the platform's reasons, from the execution's error file: every one in a
        CSV beside the uploaded file (``vendor_failures_file``: line, identifier, reason; the line is the
        uploaded file's), the first ``FIRST_FAILURES`` in ``first_failures``; ``vendor_failures_note``
        says why they are not (all) listed. Only filtered entries are kept (``error_file_entries``)."""
        uri = result.get("error_file_uri")
        if not uri:
            return {"vendor_failures_note": "the platform gave no error file for the failed lines"}
        uploaded = as_storage_path(input_path(self.file), self.storage_conn_id)
        target = as_storage_path(f"{path_text(uploaded)}{VENDOR_FAILURES_SUFFIX}", self.storage_conn_id)
        first: list[dict[str, Any]] = []
        listed = 0
        try:
            entries = self.hook.error_file_entries(uri, limit=failed)  # type: ignore[attr-defined]
            if not uploaded.exists():  # nothing to name the users by, nowhere expected to write
                first = [{"line": entry["line"], "identifier": None, "reason": entry["reason"]}
                         for entry, _ in zip(entries, range(FIRST_FAILURES))]
                return {"first_failures": first, "vendor_failures_note": f"{path_text(uploaded)} is gone: the "
                        "failed lines are not listed by identifier"}
            with open_binary(target, "wb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                writer = csv.DictWriter(text, fieldnames=VENDOR_FAILURES_HEADER, lineterminator="\n")
                writer.writeheader()
                csv_mode = self.content_type == "text/csv" or uploaded.name.endswith(".csv")
                for row in _identified(entries, uploaded, csv_mode=csv_mode):
                    writer.writerow(row)
                    listed += 1
                    if len(first) < FIRST_FAILURES:
                        first.append(row)
        except VendorAPIError as error:  # the counts still stand; the reasons could not be had
            self.log.warning("the error file of %s was not read: %s", self.file, error)
            return {"vendor_failures_note": f"error file not read: {error}"}
        except OSError as error:
            self.log.warning("the failed lines of %s could not be listed in %s: %s", self.file, target, error)
            return {"vendor_failures_note": f"failed lines not listed: {type(error).__name__}: {error}"}
        self.log.warning("%s line(s) of %s failed at the platform; first ones: %s; all in %s", failed, self.file,
                         first, path_text(target))
        found = {"vendor_failures_file": path_text(target), "first_failures": first}
        if listed < failed:
            found["vendor_failures_note"] = f"the error file listed {listed} of the {failed} failed line(s)"
        return found

    def _log_first_errors(self, status: JobStatus) -> None:
        result = status.payload.get("result") or {}
        if not result.get("error_file_uri"):
            return
        try:
            sample = list(self.hook.error_file_entries(result["error_file_uri"], limit=FIRST_FAILURES))  # type: ignore[attr-defined]
        except Exception as error:  # the outcome matters more than the sample
            self.log.warning("error file of execution %s not readable: %s", status.payload.get("id"), error)
            return
        self.log.warning("%s line(s) failed in %s; first errors: %s", result.get("total_failure"), self.file, sample)

    def failed_ratio(self, status: JobStatus) -> float | None:
        result = status.payload.get("result") or {}
        success, failure = int(result.get("total_success") or 0), int(result.get("total_failure") or 0)
        return failure / (success + failure) if success + failure else None


def _identified(entries: Iterator[dict[str, Any]], uploaded: Any, *, csv_mode: bool,
                batch: int = 50_000) -> Iterator[dict[str, Any]]:
    """Error-file entries as (line, identifier, reason) rows: the identifier read from the uploaded file's
    line the entry names, the file scanned once per ``batch`` entries (an error file need not be in order)."""
    group: list[dict[str, Any]] = []
    for entry in entries:
        group.append(entry)
        if len(group) >= batch:
            yield from _with_identifiers(group, uploaded, csv_mode)
            group = []
    if group:
        yield from _with_identifiers(group, uploaded, csv_mode)


def _with_identifiers(group: list[dict[str, Any]], uploaded: Any, csv_mode: bool) -> Iterator[dict[str, Any]]:
    wanted = {entry["line"] for entry in group if entry["line"] is not None}
    found: dict[int, str | None] = {}
    if wanted:
        with open_binary(uploaded) as handle:
            header = None
            for number, raw in enumerate(handle, start=1):
                if csv_mode and header is None:
                    header = next(csv.reader([raw.decode("utf-8", errors="replace")]), [])
                if number in wanted:
                    found[number] = _identifier_of(raw.decode("utf-8", errors="replace"), header if csv_mode else None)
                    if len(found) == len(wanted):
                        break
    for entry in group:
        line = entry["line"]
        yield {"line": line, "identifier": found.get(line) if line is not None else None, "reason": entry["reason"]}


def _identifier_of(text: str, header: list[str] | None) -> str | None:
    """The user a line of the uploaded file is about, named as the prepare step names it."""
    from airflow_provider_profiles.prepare.writer import RowRejected
    from airflow_provider_profiles.writers.mediarithmics import user_identifier, user_key

    try:
        command = dict(zip(header, next(csv.reader([text])))) if header is not None else json.loads(text)
    except (ValueError, StopIteration, csv.Error):
        return None
    if not isinstance(command, dict):
        return None
    plain = {str(key).lstrip("$"): value for key, value in command.items()}  # activities prefix their fields
    try:
        return user_key(user_identifier(plain))[:IDENTIFIER_MAX_CHARS]
    except RowRejected:
        typed = [f"{key}={plain[key]}" for key in ("user_point_id", "user_account_id", "hash", "email_hash", "user_agent_id")
                 if plain.get(key) not in (None, "")]
        return ", ".join(typed)[:IDENTIFIER_MAX_CHARS] or None


class MediarithmicsEraseOperator(EraseIdsMixin, RemoteJobOperator):
    """Erase users from mediarithmics: one document import of ``USER_POINTS_DELETION`` (the user point
    with all its identifiers, segments and profile) or ``USER_IDENTIFIERS_DELETION`` (the identifiers
    only), one execution with one line per id, then wait (or defer) as for any upload.

    :param id_type: what the ids are: ``user_account_id`` (in ``compartment_id``, else the default
        compartment), ``email_hash``, ``user_agent_id`` or (points deletion only) ``user_point_id``.
    See ``EraseIdsMixin`` for the id sources and ``RemoteJobOperator`` for waiting. The platform
    does not say which ids it did not know: those count as erased; failed lines come from the
    execution's error file.
    """

    hook_class = MediarithmicsHook
    vendor = "mediarithmics"
    template_fields = (*EraseIdsMixin.erase_template_fields, "datamart_id", "compartment_id", "name")

    def __init__(
        self,
        *,
        ids_file: Any = None,
        id_column: str = "id",
        sql: str | None = None,
        sql_conn_id: str | None = None,
        fail_on_error: bool = True,
        document_type: str = "USER_POINTS_DELETION",
        id_type: str = "user_account_id",
        compartment_id: str | int | None = None,
        datamart_id: str | int | None = None,
        name: str = "erasure {{ run_id }}",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.init_ids(ids_file, id_column, sql, sql_conn_id, fail_on_error)
        if document_type not in ("USER_POINTS_DELETION", "USER_IDENTIFIERS_DELETION"):
            raise ValueError("document_type must be USER_POINTS_DELETION or USER_IDENTIFIERS_DELETION")
        allowed = ("user_account_id", "email_hash", "user_agent_id") + (
            ("user_point_id",) if document_type == "USER_POINTS_DELETION" else ())
        if id_type not in allowed:
            raise ValueError(f"id_type must be one of {', '.join(allowed)} for {document_type}")
        self.document_type, self.id_type = document_type, id_type
        self.compartment_id, self.datamart_id, self.name = compartment_id, datamart_id, name

    def _lines(self, ids: list[str]) -> tuple[bytes, list[dict[str, str]]]:
        """The NDJSON body (one line per id, in order) and the ids refused before sending."""
        from airflow_provider_profiles.prepare.writer import RowRejected
        from airflow_provider_profiles.writers.mediarithmics import writer_for

        writer = writer_for(self.document_type)
        lines, refused = [], []
        for identifier in ids:
            row = {self.id_type: identifier}
            if self.id_type == "user_account_id" and self.compartment_id not in (None, ""):
                row["compartment_id"] = self.compartment_id
            try:
                lines.append(writer.encode(row))
            except RowRejected as error:
                refused.append({"id": identifier, "reason": error.reason})
        return "".join(lines).encode("utf-8"), refused

    def submit(self, context: Any) -> dict[str, Any]:
        hook: MediarithmicsHook = self.hook  # type: ignore[assignment]
        ids = self.read_ids()
        body, refused = self._lines(ids)
        if refused:  # nothing is sent for a list with ids the platform would refuse
            raise AirflowFailException(f"{len(refused)} ids cannot be written as {self.document_type} lines: "
                                       + "; ".join(f"{r['id']}: {r['reason']}" for r in refused[:5]))
        definition = hook.create_document_import(self.document_type, "APPLICATION_X_NDJSON", self.name,
                                                 datamart_id=self.datamart_id)
        execution = hook.create_execution(definition["id"], body, datamart_id=self.datamart_id,
                                          content_type="application/x-ndjson")
        self.log.info("sent %d ids for %s in execution %s", len(ids), self.document_type, execution["id"])
        return {
            "datamart_id": hook.datamart(self.datamart_id),
            "document_import_id": str(definition["id"]),
            "execution_id": str(execution["id"]),
        }

    def on_success(self, context: Any, status: JobStatus) -> dict[str, Any]:
        ids = self.read_ids()  # read again: the wait may have run in the triggerer
        result = status.payload.get("result") or {}
        failures = []
        if int(result.get("total_failure") or 0) and result.get("error_file_uri"):
            for entry in self.hook.error_file_entries(result["error_file_uri"], limit=len(ids)):  # type: ignore[attr-defined]
                failures.append(_failed_id(entry, ids))
        failed = int(result.get("total_failure") or 0)  # no failure reported: every line was taken
        failures += [{"id": "(not listed in the error file)", "reason": "failed"}] * (failed - len(failures))
        report = erasure_report(self.vendor, len(ids), len(ids) - failed, [], failures, details={
            "job": self._job, "execution_id": str(status.payload.get("id")), "status": status.vendor_status,
            "total_success": result.get("total_success"), "total_failure": result.get("total_failure"),
            "error_file_uri": result.get("error_file_uri")})
        return self.finish(context, report)


def _failed_id(entry: dict[str, Any], ids: list[str]) -> dict[str, str]:
    """One error-file entry as a report failure, naming the id when the line number is given."""
    line = entry["line"]
    identifier = ids[line - 1] if line is not None and line <= len(ids) else "(unknown line)"
    return {"id": identifier, "reason": entry["reason"]}


# --- a declared sync's upload to this vendor (sync_group.ProfilesSync) ---------------------------------


class MediarithmicsSyncAdapter(SyncAdapter):
    format_option = "destination.document_type"
    options = {"document_type": "USER_PROFILE", "datamart_id": None, "writer_options": None,
               "document_import_name": "{{ dag.dag_id }} {{ run_id }}"}
    modes = {"upsert": "", "update": "mediarithmics imports create the users they do not find", "mirror": ""}

    def plan(self, options, mapping, mode):
        return SyncPlan(options["document_type"], dict(options["writer_options"] or {}), dict(mapping),
                        deletions=mode == "mirror")

    def upload(self, group_id, options, conn_id, plan, mode, files, extra):
        writer = writer_class("mediarithmics", plan.writer_format)
        created = MediarithmicsCreateDocumentImportOperator(
            task_id="create_import", document_type=plan.writer_format, mime_type=writer.mime_type,
            datamart_id=options["datamart_id"], name=options["document_import_name"], files=files,
            storage_conn_id=extra.get("storage_conn_id"), **conn_kwargs(conn_id),
        )  # ``files``: a run with nothing to send creates no (empty) document import
        extra = {"deferrable": True, **extra}
        return MediarithmicsUploadOperator.partial(
            task_id="upload", document_import_id=created.output, datamart_id=options["datamart_id"],
            **conn_kwargs(conn_id), **extra,
        ).expand(file=files)
