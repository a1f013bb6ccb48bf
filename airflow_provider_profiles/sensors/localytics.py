"""Wait for a Localytics profile or audience import created elsewhere (poke, reschedule or deferrable)."""

from __future__ import annotations

from typing import Any

from airflow_provider_profiles.hooks.localytics import KINDS, PROFILES, LocalyticsHook
from airflow_provider_profiles.sensors.base import JobSensor


class LocalyticsImportSensor(JobSensor):
    """Succeeds when the import is ``Completed`` (XCom: its statistics), fails when it is ``Failed``.

    :param activity_id: the import's activity id (templated, e.g. from the importing task's XCom).
    :param kind: ``"profiles"`` or ``"audiences"``.
    :param conn_id: the Localytics connection (default ``localytics_default``).
    :param deferrable: wait in the triggerer; ``poke_interval`` is then the trigger's polling interval.
    """

    hook_class = LocalyticsHook
    vendor = "localytics"
    template_fields = ("activity_id", "kind", "conn_id")

    def __init__(self, *, activity_id: str, kind: str = PROFILES, **kwargs: Any):
        super().__init__(**kwargs)
        self.activity_id = activity_id
        self.kind = kind
        if "{{" not in str(kind) and kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def job(self) -> dict[str, Any]:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.activity_id:
            raise ValueError("activity_id is empty")
        return {"kind": self.kind, "activity_id": str(self.activity_id)}


__all__ = ["LocalyticsImportSensor"]
