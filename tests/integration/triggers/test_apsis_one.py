"""The job trigger on Apsis One imports: serializes to its class path with the vendor key and polls the emulator without blocking."""

from __future__ import annotations

import asyncio
import time

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook, ImportSpec
from airflow_provider_profiles.triggers.base import JobTrigger
from tests.integration.hooks.test_apsis_one_support import (
    FAST,
    PROFILES,
    SECTION,
    connect,
    write_csv,
)


def started_import(hook: ApsisOneHook, tmp_path) -> str:
    ticket = hook.create_profile_import(SECTION, ImportSpec(keyspace="email", keyspace_column="email"))
    hook.upload_import_file(ticket, write_csv(tmp_path / "p.csv", PROFILES))
    return ticket["import_id"]


def events(trigger: JobTrigger) -> list[dict]:
    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_serialize_round_trip():
    trigger = JobTrigger(vendor="apsis_one", conn_id="apsis_one_default", job={"section": SECTION, "import_id": "i-1"},
                                    deadline=123.0, poll_interval=5)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_profiles.triggers.base.JobTrigger"
    assert JobTrigger(**kwargs).serialize() == (path, kwargs)


def test_one_success_event_with_the_counts(emulator, monkeypatch, tmp_path):
    server = emulator("apsis_one", **FAST)
    connect(monkeypatch, server)
    import_id = started_import(ApsisOneHook(), tmp_path)
    job = {"section": SECTION, "import_id": import_id}
    (event,) = events(JobTrigger(vendor="apsis_one", conn_id="apsis_one_default", job=job, deadline=time.time() + 10,
                                            poll_interval=0.1))
    assert event["status"] == "success" and event["job"] == job
    assert event["result"] == {"status": "completed", "profiles_found": 3, "profiles_processed": 2, "profiles_failed": 1}


def test_timeout_event_at_the_deadline(emulator, monkeypatch, tmp_path):
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 60})
    connect(monkeypatch, server)
    import_id = started_import(ApsisOneHook(), tmp_path)
    (event,) = events(JobTrigger(vendor="apsis_one", conn_id="apsis_one_default", job={"section": SECTION, "import_id": import_id},
                                            deadline=time.time() + 0.3, poll_interval=0.1))
    assert event["status"] == "timeout" and event["vendor_status"] == "in_progress"


def test_unknown_import_is_an_error_event(emulator, monkeypatch):
    server = emulator("apsis_one", **FAST)
    connect(monkeypatch, server)
    (event,) = events(JobTrigger(vendor="apsis_one", conn_id="apsis_one_default", job={"section": SECTION, "import_id": "nope"},
                                            deadline=time.time() + 5, poll_interval=0.1))
    assert event["status"] == "error" and "does not exist" in event["message"]
