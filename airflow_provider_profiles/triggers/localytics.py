"""Poll a Localytics profile or audience import until it ends (async; one event)."""

from __future__ import annotations

from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.triggers.base import JobTrigger


class LocalyticsImportTrigger(JobTrigger):
    """Job ``{"kind": "profiles" | "audiences", "activity_id": ...}``; see ``JobTrigger`` for the events."""

    hook_class = LocalyticsHook


__all__ = ["LocalyticsImportTrigger"]
