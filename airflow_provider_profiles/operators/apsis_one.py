"""Import a CSV of profiles into Apsis One: check, create the import, upload, then wait or defer."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_profiles.hooks.apsis_one import (
    ApsisOneHook,
    ImportSpec,
    check_import_file,
)
from airflow_provider_profiles.hooks.base import (
    JobStatus,
    VendorAPIError,
    VendorConnectionError,
    VendorServerError,
)
from airflow_provider_profiles.lineage import ProfilesOutputMixin
from airflow_provider_profiles.operators.base import RemoteJobOperator
from airflow_provider_profiles.operators.inputs import FileInputMixin
from airflow_provider_profiles.operators.links import StoredLink, console_or_api
from airflow_provider_profiles.operators.sync_adapter import REQUIRED, SyncAdapter, SyncPlan, conn_kwargs
from airflow_provider_profiles.operators.result import count_or_none, records_result, vendor_counts
from airflow_provider_profiles.storage import as_storage_path
from airflow_provider_profiles.operators.erasure import EraseOneByOneOperator

RESULT_KEYS = ("profiles_found", "profiles_processed", "profiles_failed")
# The app's address (help.apsis.one/en/articles/7857752, "First time logging in": app.apsis.one, for every
# region); no public address pattern of an import's page was found, so production links open the app.
# Other hosts (an emulator, a private deployment) link to the import's status resource on that host.
APSIS_ONE_APP = "https://app.apsis.one/"
IMPORT_LINK = StoredLink(name="Apsis One import", key="apsis_one_import")
WAITING_FOR_FILE = ("queued", "waiting_for_file")


def _mask_upload_secrets(ticket: Mapping[str, Any]) -> None:
    """The presigned form grants the upload: keep it out of this try's logs too."""
    fields = ticket.get("file_upload_body") or {}
    for secret in (fields.get("x-amz-signature"), fields.get("policy")):
        if secret:
            mask_secret(secret)


def _expired(ticket: Mapping[str, Any]) -> bool:
    expires = ticket.get("file_upload_url_expires_at")
    if not expires:
        return False
    return datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp() <= time.time()


class ApsisOneProfileImportOperator(FileInputMixin, ProfilesOutputMixin, RemoteJobOperator):
    """Import ``file`` (local path or object storage URL, CSV of at most 50 MB) into ``section``.

    ``file`` may also be the upstream task's output as is (a prepare task's result, ``prepared.output``,
    or a one-chunk list); ``storage_conn_id`` names the object storage connection holding it. A file
    without a record sends nothing, creates no import and returns every count 0.

    The spec is built from plain arguments (see ``ImportSpec``): ``keyspace`` and ``keyspace_column``,
    ``attributes`` (column -> attribute name/discriminator), ``tags`` (column -> tag), ``static_tags``,
    ``consents`` (dicts of ``ConsentMapping`` fields), ``merge_profiles``, ``update_existing_profiles``,
    ``clear_existing_attributes`` and ``extra_spec``. The file's header is checked against it before
    any request. Creating the import waits for one of the account's 3 import slots, at most until
    ``execution_timeout`` (else ``job_timeout``). Returns the shared result (``operators.result``):
    Apsis One's ``profiles_processed`` / ``profiles_failed`` as ``vendor_succeeded`` /
    ``vendor_failed``, its raw counters and the import's ids in ``details``; an import that ends in
    ``error`` fails the task. Other arguments: see
    ``RemoteJobOperator`` (``conn_id``, ``wait_for_completion``, ``deferrable``, ``poll_interval``,
    ``job_timeout``, ``max_failed_ratio``).
    """

    hook_class = ApsisOneHook
    vendor = "apsis_one"
    template_fields: Sequence[str] = (
        "section", "file", "keyspace", "keyspace_column", "attributes", "tags", "static_tags", "consents",
        "extra_spec", "conn_id",
    )
    ui_color = "#e8f4ff"
    input_format = "csv"
    operator_extra_links = (IMPORT_LINK,)
    vendor = "apsis_one"

    def __init__(
        self,
        *,
        section: str,
        file: Any,
        keyspace: str,
        keyspace_column: str,
        attributes: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        static_tags: Sequence[str] | None = None,
        consents: Sequence[Mapping[str, Any]] | None = None,
        merge_profiles: bool | None = None,
        update_existing_profiles: bool = True,
        clear_existing_attributes: bool = False,
        extra_spec: Mapping[str, Any] | None = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        self.section = section
        self.file = file
        self.keyspace = keyspace
        self.keyspace_column = keyspace_column
        self.attributes = dict(attributes or {})
        self.tags = dict(tags or {})
        self.static_tags = list(static_tags or [])
        self.consents = list(consents or [])
        self.merge_profiles = merge_profiles
        self.update_existing_profiles = update_existing_profiles
        self.clear_existing_attributes = clear_existing_attributes
        self.extra_spec = dict(extra_spec or {})

    def import_spec(self) -> ImportSpec:
        return ImportSpec(
            keyspace=self.keyspace,
            keyspace_column=self.keyspace_column,
            attributes=self.attributes,
            tags=self.tags,
            static_tags=self.static_tags,
            consents=self.consents,
            merge_profiles=self.merge_profiles,
            update_existing_profiles=self.update_existing_profiles,
            clear_existing_attributes=self.clear_existing_attributes,
            extra=self.extra_spec,
        )

    def slot_deadline(self) -> float:
        """How long creating the import may wait for a free slot: the task's own time budget."""
        budget = self.execution_timeout.total_seconds() if self.execution_timeout else self.job_timeout
        return time.time() + budget

    def submit(self, context: Any) -> dict[str, Any]:
        path = as_storage_path(self.file)
        spec = self.import_spec()
        size = check_import_file(path, spec)  # too big, empty, or a mapped column missing: before any request
        body = self.hook.build_import_body(self.section, spec)
        self.record_intent(context, f"created an Apsis One import in section {self.section}")
        ticket = self.hook.create_profile_import(self.section, body, wait_for_slot_until=self.slot_deadline())
        # the import now waits for its file in one of the 3 slots: a retry after a failed upload reuses it
        self.record_intent(context, f"created Apsis One import {ticket['import_id']} and uploaded {path}",
                           ticket=ticket)
        return self._upload(ticket, path, size)

    def lineage_scope(self) -> dict[str, Any]:
        return {"section": self.section}

    def job_links(self, job: dict[str, Any]) -> dict[StoredLink, str | None]:
        status = f"audience/sections/{job['section']}/imports/{job['import_id']}"
        return {IMPORT_LINK: console_or_api(self.hook.base_url, ApsisOneHook, APSIS_ONE_APP, status)}

    def find_lost_job(self, context: Any, intent: dict[str, Any]) -> dict[str, Any] | None:
        """Upload to the import an earlier try created while it still waits for its file; else create anew."""
        ticket = intent.get("ticket")
        if ticket is None:  # the create's answer was lost: Apsis One lists no imports to find it by
            self.log.warning(
                "the import an earlier try created (if any) may hold one of the account's 3 import slots until its "
                "upload URL expires; Apsis One lists no imports to find it by, and importing the same rows again "
                "sets the same values: creating a new import")
            return None
        _mask_upload_secrets(ticket)
        job = {"section": self.section, "import_id": ticket["import_id"]}
        status = self.hook.job_status(**job)
        if status.vendor_status not in WAITING_FOR_FILE:
            return job  # the file arrived (it runs or ended) or the import expired: the status decides
        if _expired(ticket):
            self.log.warning("import %s waits for a file but its upload URL expired at %s; it keeps one of the 3 "
                             "slots until Apsis One ends it: creating a new import", ticket["import_id"],
                             ticket.get("file_upload_url_expires_at"))
            return None
        path = as_storage_path(self.file)
        self.log.info("import %s of an earlier try is %s: uploading to import %s", ticket["import_id"],
                      status.vendor_status, ticket["import_id"])
        return self._upload(ticket, path, check_import_file(path, self.import_spec()))

    def _upload(self, ticket: dict[str, Any], path: Any, size: int) -> dict[str, Any]:
        try:
            self.hook.upload_import_file(ticket, path)
        except Exception as error:
            refused = isinstance(error, VendorAPIError) and not isinstance(error, (VendorConnectionError,
                                                                                    VendorServerError))
            self.log.warning("the upload to Apsis One import %s failed: the import keeps one of the account's 3 "
                             "slots until its upload URL expires at %s%s", ticket["import_id"],
                             ticket.get("file_upload_url_expires_at"),
                             "" if refused else "; a retry of this task uploads to it while the URL is valid")
            raise
        self.log.info("Apsis One import %s: uploaded %d bytes from %s", ticket["import_id"], size, path)
        return {"section": self.section, "import_id": ticket["import_id"]}

    def on_success(self, context: Any, status: JobStatus) -> dict[str, Any]:
        found, processed, failed = (count_or_none(status.payload.get(key)) for key in RESULT_KEYS)
        if None not in (found, processed, failed) and found != processed + failed:
            self.log.warning("Apsis One found %s profiles in the file but reports %s processed and %s failed",
                             found, processed, failed)
        return records_result(
            rejected=0, skipped=0, **vendor_counts(found, processed, failed),
            details={"job": self._job, "status": status.vendor_status,
                     **{key: status.payload.get(key) for key in RESULT_KEYS}},
        )

    def failed_ratio(self, status: JobStatus) -> float | None:
        found = int(status.payload.get("profiles_found") or 0)
        return int(status.payload.get("profiles_failed") or 0) / found if found else None


class ApsisOneEraseOperator(EraseOneByOneOperator):
    """Delete Apsis One profiles by their key in one keyspace (``email``, ``mobile`` or a
    discriminator). See ``EraseOneByOneOperator`` for the id sources and the report."""

    hook_class = ApsisOneHook
    vendor = "apsis_one"
    template_fields = (*EraseOneByOneOperator.template_fields, "keyspace")

    def __init__(self, *, keyspace: str = "email", **kwargs: Any):
        super().__init__(**kwargs)
        self.keyspace = keyspace

    def erase_one(self, hook: Any, identifier: str) -> bool:
        return hook.delete_profile(self.keyspace, identifier)


# --- a declared sync's upload to this vendor (sync_group.ProfilesSync) ---------------------------------


class ApsisOneSyncAdapter(SyncAdapter):
    options = {"section": REQUIRED, "keyspace": REQUIRED, "key": None, "attributes": None}
    modes = {"upsert": "",
             "update": "an Apsis One import creates the profiles it does not find; it cannot update existing ones only",
             "mirror": "the CSV import has no deletion line (erase with ApsisOneEraseOperator)"}

    def plan(self, options, mapping, mode):
        key = options["key"] or options["keyspace"]
        if key not in mapping:
            raise ValueError(f"key: the keyspace column {key!r} must be one of the mapped fields {sorted(mapping)}")
        return SyncPlan("csv", {"columns": list(mapping), "keyspace_field": key, "keyspace": options["keyspace"]},
                     dict(mapping))

    def upload(self, group_id, options, conn_id, plan, mode, files, extra):
        key = plan.writer_options["keyspace_field"]
        attributes = options["attributes"] or {column: column for column in plan.writer_options["columns"] if column != key}
        extra = {"deferrable": True, **extra}
        return ApsisOneProfileImportOperator.partial(
            task_id="upload", section=options["section"], keyspace=options["keyspace"], keyspace_column=key,
            attributes=attributes, **conn_kwargs(conn_id), **extra,
        ).expand(file=files)
