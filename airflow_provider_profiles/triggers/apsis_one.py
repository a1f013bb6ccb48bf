"""Polls an Apsis One profile import until it is ``completed`` or ``error`` (shared by operator and sensor)."""

from __future__ import annotations

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from airflow_provider_profiles.triggers.base import JobTrigger


class ApsisOneImportTrigger(JobTrigger):
    """``job`` is ``{"section": ..., "import_id": ...}``; see ``JobTrigger`` for the events."""

    hook_class = ApsisOneHook
