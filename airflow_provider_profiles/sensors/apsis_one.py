"""Wait for an Apsis One profile import created elsewhere (poke, reschedule or deferrable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from airflow_provider_profiles.sensors.base import JobSensor


class ApsisOneImportSensor(JobSensor):
    """Succeeds when import ``import_id`` of ``section`` is ``completed`` (its result is the XCom value);
    fails when it ends in ``error``."""

    hook_class = ApsisOneHook
    vendor = "apsis_one"
    template_fields: Sequence[str] = ("section", "import_id", "conn_id")

    def __init__(self, *, section: str, import_id: str, poll_interval: float | None = None, **kwargs: Any):
        if poll_interval is not None:  # the trigger polls as often as the sensor pokes
            kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.section = section
        self.import_id = import_id

    def job(self) -> dict[str, Any]:
        return {"section": self.section, "import_id": str(self.import_id)}
