"""Polls a mediarithmics execution until it ends; shared by the upload operator and the sensor."""

from __future__ import annotations

from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from airflow_provider_profiles.triggers.base import JobTrigger


class MediarithmicsExecutionTrigger(JobTrigger):
    """``job`` = {"datamart_id", "document_import_id", "execution_id"}; see ``JobTrigger`` for the events."""

    hook_class = MediarithmicsHook
