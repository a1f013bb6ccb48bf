"""Wait for a mediarithmics execution created elsewhere (poke, reschedule or deferrable)."""

from __future__ import annotations

from typing import Any

from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from airflow_provider_profiles.sensors.base import JobSensor


class MediarithmicsExecutionSensor(JobSensor):
    """Succeeds when the execution is SUCCEEDED (its payload as XCom); fails when FAILED or CANCELED.

    :param document_import_id: the document import the execution belongs to.
    :param execution_id: the execution to watch.
    :param datamart_id: defaults to the connection's ``datamart_id`` extra.
    ``poke_interval`` is also the trigger's polling interval when deferrable.
    """

    template_fields = ("datamart_id", "document_import_id", "execution_id", "conn_id")
    hook_class = MediarithmicsHook
    vendor = "mediarithmics"

    def __init__(
        self,
        *,
        document_import_id: str | int,
        execution_id: str | int,
        datamart_id: str | int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.datamart_id = datamart_id
        self.document_import_id = document_import_id
        self.execution_id = execution_id

    def job(self) -> dict[str, Any]:
        return {
            "datamart_id": self.hook.datamart(self.datamart_id),
            "document_import_id": str(self.document_import_id),
            "execution_id": str(self.execution_id),
        }
