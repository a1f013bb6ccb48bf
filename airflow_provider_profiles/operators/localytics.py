"""Localytics profile imports and audience imports: upload, push the activity id, then wait or defer.

Localytics allows 10 profile uploads per hour per API key: give the operator one file per run
(split only past what one upload can carry) and run the uploads through an Airflow pool so several
workers stay under the limit together. Without a free slot the upload waits for one rather than
failing on a 429: in the worker, or, when deferrable, in the triggerer (a timer to the slot's time).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_profiles.hooks.base import JobStatus, VendorRateLimitError
from airflow_provider_profiles.hooks.localytics import (
    AUDIENCES,
    PROFILE_FORMATS,
    PROFILES,
    LocalyticsHook,
)
from airflow_provider_profiles.lineage import ProfilesOutputMixin
from airflow_provider_profiles.operators.base import RemoteJobOperator
from airflow_provider_profiles.operators.inputs import FileInputMixin
from airflow_provider_profiles.operators.links import StoredLink, console_or_api
from airflow_provider_profiles.operators.sync_adapter import SyncAdapter, SyncPlan, conn_kwargs
from airflow_provider_profiles.operators.result import count_or_none, records_result, vendor_counts
from airflow_provider_profiles.storage import as_storage_path, open_binary
from airflow_provider_profiles.operators.erasure import EraseOneByOneOperator

AUDIENCE_ACTIONS = ("create", "replace", "rename", "delete")
SLOT_RETRY_SECONDS = 60.0  # a 429 without Retry-After: look again in a minute

# The dashboard's address is not in Localytics' public pages, and neither is a page per import: for the
# production API the link opens the documented guide to the Profiles dashboard (the page closest to an
# import's outcome); other hosts (an emulator) link to the import's status resource on that host.
DASHBOARD_GUIDE = "https://docs.localytics.com/docs/marketing/profiles-usage"
DASHBOARD_LINK = StoredLink(name="Localytics dashboard", key="localytics_dashboard")
ERROR_LOG_LINK = StoredLink(name="Localytics error log", key="localytics_error_log")
STATUS_PATHS = {PROFILES: "imports/profiles/status", AUDIENCES: "imports/audiences/list/status"}
# Change ops whose second application leaves the profile as the first left it: a value assigned or
# deleted, a member added to or removed from a set (a set holds a member once). increment adds again.
REPEATABLE_OPS = frozenset({"assign", "delete", "set-add", "set-remove"})


class UploadSlotBusy(VendorRateLimitError):
    """No profile upload slot now (nothing was created): a deferrable task comes back at ``free_at``."""

    def __init__(self, free_at: float, reason: str, refusal: VendorRateLimitError | None = None):
        super().__init__(f"no profile upload slot until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(free_at))} "
                         f"({reason})", status=429, vendor="Localytics",
                         retry_after=max(0.0, free_at - time.time()))
        self.free_at, self.reason, self.refusal = free_at, reason, refusal or self


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _given(value: Any) -> bool:
    return value not in (None, "")


class _LocalyticsImportOperator(FileInputMixin, ProfilesOutputMixin, RemoteJobOperator):
    """What both import operators share: the activity id in XCom, the statistics as the result."""

    hook_class = LocalyticsHook
    operator_extra_links = (DASHBOARD_LINK, ERROR_LOG_LINK)
    vendor = "localytics"
    kind: str

    def job_for(self, activity_id: str) -> dict[str, Any]:
        return {"kind": self.kind, "activity_id": activity_id}

    def job_links(self, job: dict[str, Any]) -> dict[StoredLink, str | None]:
        status = f"{STATUS_PATHS[job['kind']]}/{job['activity_id']}"
        return {DASHBOARD_LINK: console_or_api(self.hook.base_url, LocalyticsHook, DASHBOARD_GUIDE, status)}

    def result_links(self, result: Any) -> dict[StoredLink, str | None]:
        return {ERROR_LOG_LINK: (result.get("details") or {}).get("error_log")}

    def on_success(self, context: Any, status: JobStatus) -> dict[str, Any]:
        payload = status.payload
        stats = payload.get("statistics") or {}
        total, succeeded, failed = (count_or_none(stats.get(key)) for key in ("total", "succeeded", "failed"))
        details = {"job": self._job, "activity_id": payload.get("activity_id"), "status": status.vendor_status,
                   "upload_statistics": payload.get("upload_statistics")}
        for key in ("audience_list_id", "error_log", "first_errors"):
            if payload.get(key) is not None:
                details[key] = payload[key]
        if payload.get("first_errors"):
            self.log.warning("Localytics reported %s failed record(s); first errors:\n%s", failed,
                             "\n".join(map(str, payload["first_errors"])))
        self.log.info("Localytics %s import %s: %s of %s succeeded, %s failed", self.kind, details["activity_id"],
                      succeeded, total, failed)
        return records_result(rejected=0, skipped=0, **vendor_counts(total, succeeded, failed), details=details)

    def failed_ratio(self, status: JobStatus) -> float | None:
        stats = status.payload.get("statistics") or {}
        total, failed = stats.get("total"), stats.get("failed")
        if not isinstance(total, int) or not isinstance(failed, int) or total <= 0:
            return None
        return failed / total


class LocalyticsProfileImportOperator(_LocalyticsImportOperator):
    """Upload a profile change file (JSON lines from ``ProfileChangesWriter``, or CSV) to Localytics.

    :param file: local path, ``ObjectStoragePath`` or object storage URL (templated), or the upstream
        task's output as is: a prepare task's result (``prepared.output``) or a one-chunk list.
        Nothing to send (no record in it) succeeds with every count 0, without a request.
    :param storage_conn_id: the Airflow connection of the object storage holding ``file``
        (default: the one its URL implies).
    :param org_id: import for the whole organization, or
    :param app_id: for one app; exactly one of the two (default: the connection's extra ``org_id``).
    :param format: ``json`` (JSON lines) or ``csv``.

    Returns the shared result (``operators.result``): Localytics' successful and failed imports as
    ``vendor_succeeded`` / ``vendor_failed``; ``details`` holds ``activity_id``, the vendor's
    ``upload_statistics`` and the error log's address and first lines. An import that ends
    ``Failed``, or whose failed share exceeds ``max_failed_ratio``, fails the task with the first lines
    of the error log. A retry after an upload whose answer was lost sends the file again only when
    its ops apply the same twice (no ``increment``); otherwise it fails saying what to check.
    Without a free upload slot (10 an hour), a deferrable task defers to a timer at the time the
    limiter or the answer's Retry-After gives, then uploads; else it waits in the worker. Either way
    for at most the connection's ``upload_max_wait``.
    Other arguments: see ``RemoteJobOperator`` (``conn_id``, ``wait_for_completion``,
    ``deferrable``, ``poll_interval``, ``job_timeout``, ``max_failed_ratio``).
    """

    template_fields: Sequence[str] = ("file", "org_id", "app_id", "format", "conn_id")
    ui_color = "#ffeedd"
    kind = PROFILES

    def __init__(
        self,
        *,
        file: Any,
        org_id: str | int | None = None,
        app_id: str | None = None,
        format: str = "json",  # noqa: A002  (the vendor's parameter name)
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        if _given(org_id) and _given(app_id):
            raise ValueError(f"{self.task_id}: give org_id or app_id, not both")
        if not _templated(format) and format not in PROFILE_FORMATS:
            raise ValueError(f"{self.task_id}: format must be one of {', '.join(PROFILE_FORMATS)}, got {format!r}")
        self.file = file
        self.org_id = org_id
        self.app_id = app_id
        self.format = format

    @property
    def input_format(self) -> str:  # type: ignore[override]
        return "csv" if self.format == "csv" else "ndjson"

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except UploadSlotBusy as busy:  # deferrable: the triggerer waits for the slot, not a worker
            self._defer_until_slot(context, busy, deadline=time.time() + self.hook.upload_max_wait())

    def resume_after_slot_wait(self, context: Any, event: Any = None, deadline: float | None = None) -> Any:
        try:
            return super().execute(context)
        except UploadSlotBusy as busy:
            self._defer_until_slot(context, busy, deadline=deadline or time.time())

    def _defer_until_slot(self, context: Any, busy: UploadSlotBusy, deadline: float) -> None:
        if busy.free_at > deadline:
            raise busy.refusal from None  # no slot before upload_max_wait runs out: fail as the worker wait would
        moment = datetime.datetime.fromtimestamp(busy.free_at, datetime.timezone.utc)
        self.log.info("no Localytics upload slot free (%s): deferring until %s", busy.reason,
                      moment.isoformat(timespec="seconds"))
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.defer(trigger=DateTimeTrigger(moment=moment), method_name="resume_after_slot_wait",
                   kwargs={"deadline": deadline})
    def lineage_scope(self) -> dict[str, Any]:
        scope = self.hook.profile_scope(org_id=self.org_id, app_id=self.app_id)  # type: ignore[attr-defined]
        return {"app": scope["app_id"]} if "app_id" in scope else {"org": scope["org_id"]}

    def submit(self, context: Any) -> dict[str, Any]:
        """Upload the file. Deferrable, a full hour of uploads (this process's own count, or the
        vendor's 429) raises ``UploadSlotBusy`` before anything is created, for ``execute`` to defer."""
        if self.deferrable and (free_in := self.hook.upload_slot_free_in()) > 0:
            raise UploadSlotBusy(time.time() + free_in, "this process's 10 uploads of the hour are used")
        self.record_intent(context, f"uploaded the profile import {self.file}")
        try:
            activity_id = self.hook.upload_profiles(self.file, org_id=self.org_id, app_id=self.app_id,
                                                    format=self.format, wait_for_slot=not self.deferrable)
        except VendorRateLimitError as refused:
            if not self.deferrable:
                raise
            raise UploadSlotBusy(time.time() + (refused.retry_after or SLOT_RETRY_SECONDS),
                                 "Localytics answered 429", refused) from None
        return self.job_for(activity_id)

    def find_lost_job(self, context: Any, intent: dict[str, Any]) -> dict[str, Any] | None:
        """Localytics lists no profile imports: send again only when applying the file twice is harmless."""
        if self.format == "csv":
            return None  # a CSV column is assigned
        unrepeatable = first_unrepeatable_op(self.file)
        if unrepeatable is None:
            return None
        op, line = unrepeatable
        raise self.unknown_outcome(
            context, intent, f"Localytics lists no profile imports to look it up, and sending {self.file} again "
            f"would apply its {op} (line {line}) a second time; look for an import of that time in the Localytics "
            "dashboard (or the profiles it changed)"
        )


class LocalyticsAudienceImportOperator(_LocalyticsImportOperator):
    """Create, replace, rename or delete a Localytics audience list.

    - ``create``: ``app_id``, ``audience_name``, ``file`` (``{"customer_id": ...}`` lines from
      ``AudienceLinesWriter``) -> an import job, awaited like a profile import;
    - ``replace``: ``app_id``, ``file`` and ``audience_list_id`` (or ``audience_name`` to look it up) -> a job;
    - ``rename``: ``audience_list_id``, ``audience_name`` (the new name) -> done at once;
    - ``delete``: ``audience_list_id`` -> done at once.

    Every action returns the shared result (``operators.result``): for a job, the vendor's counts of
    lines, with ``activity_id`` and ``audience_list_id`` in ``details``; rename and delete send no
    records (every count 0) and keep the vendor's answer in ``details["response"]``. Other arguments:
    see ``RemoteJobOperator``.
    """

    template_fields: Sequence[str] = ("action", "app_id", "audience_name", "audience_list_id", "file", "conn_id")
    ui_color = "#ffeedd"
    kind = AUDIENCES

    def __init__(
        self,
        *,
        action: str = "create",
        app_id: str | None = None,
        audience_name: str | None = None,
        audience_list_id: str | int | None = None,
        file: Any = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        self.action = action
        self.app_id = app_id
        self.audience_name = audience_name
        self.audience_list_id = audience_list_id
        self.file = file
        if not _templated(action):
            self._check_arguments()

    def _check_arguments(self) -> None:
        if self.action not in AUDIENCE_ACTIONS:
            raise ValueError(
                f"{self.task_id}: action must be one of {', '.join(AUDIENCE_ACTIONS)}, got {self.action!r}"
            )
        needs = {
            "create": ("app_id", "audience_name", "file"),
            "replace": ("app_id", "file"),
            "rename": ("audience_list_id", "audience_name"),
            "delete": ("audience_list_id",),
        }[self.action]
        missing = [name for name in needs if not _given(getattr(self, name))]
        if self.action == "replace" and not _given(self.audience_list_id) and not _given(self.audience_name):
            missing.append("audience_list_id (or audience_name to look it up)")
        if missing:
            raise ValueError(f"{self.task_id}: action {self.action!r} needs {', '.join(missing)}")

    def execute(self, context: Any) -> Any:
        self._check_arguments()
        if self.action == "rename":
            result = self.hook.rename_audience(self.audience_list_id, self.audience_name)
            self.log.info("renamed Localytics audience list %s to %r", self.audience_list_id, self.audience_name)
            return self._no_records(result)
        if self.action == "delete":
            result = self.hook.delete_audience(self.audience_list_id)
            self.log.info("deleted Localytics audience list %s", self.audience_list_id)
            return self._no_records(result)
        return super().execute(context)

    def lineage_scope(self) -> dict[str, Any]:
        return {"app": self.app_id, "audience": self.audience_list_id or self.audience_name}

    def _no_records(self, response: Any) -> dict[str, Any]:
        return records_result(read=0, rejected=0, skipped=0, vendor_succeeded=0, vendor_failed=0, details={
            "action": self.action, "audience_list_id": self.audience_list_id, "response": response})

    def submit(self, context: Any) -> dict[str, Any]:
        self.record_intent(context, f"sent the audience {self.action} of {self.audience_name or self.audience_list_id}"
                                    f" from {self.file}")
        if self.action == "create":
            activity_id = self.hook.create_audience(
                app_id=self.app_id, audience_name=self.audience_name, file=self.file
            )
        else:
            activity_id = self.hook.replace_audience(self._list_id(), app_id=self.app_id, file=self.file)
        return self.job_for(activity_id)

    def find_lost_job(self, context: Any, intent: dict[str, Any]) -> dict[str, Any] | None:
        if self.action == "replace":
            return None  # replacing a list's members with the same file again ends the same
        raise self.unknown_outcome(
            context, intent, f"Localytics lists no audience imports to look it up, and creating it again could make "
            f"a second list; look for an audience list named {self.audience_name!r} in app {self.app_id}"
        )

    def _list_id(self) -> str:
        if _given(self.audience_list_id):
            return str(self.audience_list_id)
        found = self.hook.find_audience(self.app_id, self.audience_name)
        if found is None:
            raise AirflowException(f"no audience list named {self.audience_name!r} in Localytics app {self.app_id}")
        self.log.info("audience %r is list %s", self.audience_name, found.get("id"))
        return str(found["id"])


def first_unrepeatable_op(file: Any) -> tuple[str, int] | None:
    """The first change op of a JSON-lines profile file that must not be applied twice, and its line."""
    with open_binary(as_storage_path(file)) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                record = json.loads(raw) if raw.strip() else {}
            except ValueError:
                continue  # the vendor rejects the line: applying it twice changes nothing
            changes = record.get("changes") if isinstance(record, dict) else None
            for change in changes if isinstance(changes, list) else ():
                op = change.get("op") if isinstance(change, dict) else None
                if op not in REPEATABLE_OPS:
                    return str(op), number
    return None


__all__ = ["AUDIENCE_ACTIONS", "LocalyticsAudienceImportOperator", "LocalyticsProfileImportOperator"]


class LocalyticsEraseOperator(EraseOneByOneOperator):
    """Delete Localytics profiles by customer id through the Profile API: org-level profiles, or an
    app's profiles with ``app_id``. See ``EraseOneByOneOperator`` for the id sources and the report."""

    hook_class = LocalyticsHook
    vendor = "localytics"
    template_fields = (*EraseOneByOneOperator.template_fields, "app_id")

    def __init__(self, *, app_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.app_id = app_id

    def erase_one(self, hook: Any, identifier: str) -> bool:
        return hook.delete_profile(identifier, app_id=self.app_id)


# --- a declared sync's upload to this vendor (sync_group.ProfilesSync) ---------------------------------


class LocalyticsSyncAdapter(SyncAdapter):
    options = {"customer_id": "customer_id", "org_id": None, "app_id": None, "format": "json"}
    modes = {"upsert": "",
             "update": "a Localytics profile import creates the profiles it does not find",
             "mirror": "a profile import has no deletion line (erase with LocalyticsEraseOperator)"}

    def plan(self, options, mapping, mode):
        if options["format"] != "json":
            raise ValueError(f"format: the sync writes Localytics change lines (json), not {options['format']!r}")
        if options["org_id"] is not None and options["app_id"] is not None:
            raise ValueError("org_id / app_id: give one scope, not both")
        customer_id = options["customer_id"]
        if customer_id not in mapping:
            raise ValueError(f"customer_id: {customer_id!r} must be one of the mapped fields {sorted(mapping)}")
        attributes = {target: target for target in mapping if target != customer_id}
        return SyncPlan("changes", {"customer_id": customer_id, "attributes": attributes}, dict(mapping))

    def upload(self, group_id, options, conn_id, plan, mode, files, extra):
        extra = {"deferrable": True, **extra}
        return LocalyticsProfileImportOperator.partial(
            task_id="upload", org_id=options["org_id"], app_id=options["app_id"], format=options["format"],
            **conn_kwargs(conn_id), **extra,
        ).expand(file=files)
