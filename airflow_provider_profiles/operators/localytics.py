"""Localytics profile imports and audience imports: upload, push the activity id, then wait or defer.

Localytics allows 10 profile uploads per hour per API key: give the operator one file per run
(split only past what one upload can carry) and run the uploads through an Airflow pool so several
workers stay under the limit together; the hook waits for a slot rather than failing on a 429.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_profiles.hooks.base import JobStatus
from airflow_provider_profiles.hooks.localytics import (
    AUDIENCES,
    PROFILE_FORMATS,
    PROFILES,
    LocalyticsHook,
)
from airflow_provider_profiles.operators.base import RemoteJobOperator
from airflow_provider_profiles.operators.result import count_or_none, records_result, vendor_counts
from airflow_provider_profiles.storage import as_storage_path, open_binary
from airflow_provider_profiles.operators.erasure import EraseOneByOneOperator

AUDIENCE_ACTIONS = ("create", "replace", "rename", "delete")
# Change ops whose second application leaves the profile as the first left it: a value assigned or
# deleted, a member added to or removed from a set (a set holds a member once). increment adds again.
REPEATABLE_OPS = frozenset({"assign", "delete", "set-add", "set-remove"})


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _given(value: Any) -> bool:
    return value not in (None, "")


class _LocalyticsImportOperator(RemoteJobOperator):
    """What both import operators share: the activity id in XCom, the statistics as the result."""

    hook_class = LocalyticsHook
    vendor = "localytics"
    kind: str

    def job_for(self, activity_id: str) -> dict[str, Any]:
        return {"kind": self.kind, "activity_id": activity_id}

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

    :param file: local path, ``ObjectStoragePath`` or object storage URL (templated).
    :param org_id: import for the whole organization, or
    :param app_id: for one app; exactly one of the two (default: the connection's extra ``org_id``).
    :param format: ``json`` (JSON lines) or ``csv``.

    Returns the shared result (``operators.result``): Localytics' successful and failed imports as
    ``vendor_succeeded`` / ``vendor_failed``; ``details`` holds ``activity_id``, the vendor's
    ``upload_statistics`` and the error log's address and first lines. An import that ends
    ``Failed``, or whose failed share exceeds ``max_failed_ratio``, fails the task with the first lines
    of the error log. A retry after an upload whose answer was lost sends the file again only when
    its ops apply the same twice (no ``increment``); otherwise it fails saying what to check.
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
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if _given(org_id) and _given(app_id):
            raise ValueError(f"{self.task_id}: give org_id or app_id, not both")
        if not _templated(format) and format not in PROFILE_FORMATS:
            raise ValueError(f"{self.task_id}: format must be one of {', '.join(PROFILE_FORMATS)}, got {format!r}")
        self.file = file
        self.org_id = org_id
        self.app_id = app_id
        self.format = format

    def submit(self, context: Any) -> dict[str, Any]:
        self.record_intent(context, f"uploaded the profile import {self.file}")
        activity_id = self.hook.upload_profiles(self.file, org_id=self.org_id, app_id=self.app_id, format=self.format)
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
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
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
