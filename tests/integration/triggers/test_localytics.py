"""The job trigger on Localytics imports, run for real (asyncio, aiohttp) against the emulator: one event per outcome."""

from __future__ import annotations

import time
import uuid

import pytest

from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.triggers.base import JobTrigger

GOOD = '{"customer_id":"%s","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n'
BAD = '{"customer_id":"%s","changes":[{"op":"set-add","attr":"tags","value":"not-a-list"}]}\n'


@pytest.fixture
def setup(emulator, airflow_connection, tmp_path):
    def start(text, kind="profiles", **config):
        config.setdefault("time_scale", 10)
        server = emulator("localytics", **config)
        conn_id = f"localytics_{uuid.uuid4().hex[:8]}"
        airflow_connection(conn_id, "localytics", login="localytics-key", password="localytics-secret",
                           host=server.url, extra={"org_id": "60"})
        path = tmp_path / "file.json"
        path.write_text(text)
        hook = LocalyticsHook(conn_id)
        if kind == "profiles":
            activity_id = hook.upload_profiles(path)
        else:
            activity_id = hook.create_audience(app_id="app-1", audience_name="a", file=path)
        return server, conn_id, {"kind": kind, "activity_id": activity_id}

    return start


async def events(trigger):
    return [event.payload async for event in trigger.run()]


async def test_success_event_carries_the_statistics(setup):
    _, conn_id, job = setup(GOOD % "a" + BAD % "b")
    [event] = await events(JobTrigger(vendor="localytics", conn_id=conn_id, job=job, deadline=time.time() + 30,
                                                   poll_interval=0.05))
    assert event["status"] == "success" and event["vendor_status"] == "Completed"
    assert event["result"]["statistics"] == {"total": 2, "succeeded": 1, "failed": 1}
    assert "must be a list" in event["result"]["first_errors"][0]["error"]


async def test_audience_import_event(setup):
    _, conn_id, job = setup('{"customer_id":"a"}\n{"customer_id":"b"}\n', kind="audiences")
    [event] = await events(JobTrigger(vendor="localytics", conn_id=conn_id, job=job, deadline=time.time() + 30,
                                                   poll_interval=0.05))
    assert event["status"] == "success" and event["result"]["statistics"]["succeeded"] == 2
    assert event["result"]["audience_list_id"]


async def test_failed_event_names_the_first_errors(setup):
    _, conn_id, job = setup(BAD % "a")
    [event] = await events(JobTrigger(vendor="localytics", conn_id=conn_id, job=job, deadline=time.time() + 30,
                                                   poll_interval=0.05))
    assert event["status"] == "failed" and "first errors" in event["message"]


async def test_timeout_and_error_events(setup):
    _, conn_id, job = setup(GOOD % "a", pending_seconds=3600, time_scale=1)
    [event] = await events(JobTrigger(vendor="localytics", conn_id=conn_id, job=job, deadline=time.time() + 0.3,
                                                   poll_interval=0.05))
    assert event["status"] == "timeout" and event["vendor_status"] == "Pending"
    [event] = await events(JobTrigger(vendor="localytics", conn_id=conn_id, job={**job, "activity_id": "missing"},
                                                   deadline=time.time() + 30, poll_interval=0.05))
    assert event["status"] == "error" and "404" in event["message"]


async def test_status_429_does_not_end_the_wait(setup):
    server, conn_id, job = setup(GOOD % "a")
    server.emulator.inject("status", match="GET /v1/imports/profiles/status", count=2, status=429, retry_after=0.1)
    [event] = await events(JobTrigger(vendor="localytics", conn_id=conn_id, job=job, deadline=time.time() + 30,
                                                   poll_interval=0.05))
    assert event["status"] == "success"
    assert server.emulator.faults_served["status"] == 2


def test_serializes_to_its_own_class_path():
    trigger = JobTrigger(vendor="localytics", conn_id="c", job={"kind": "audiences", "activity_id": "x"}, deadline=1.0)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_profiles.triggers.base.JobTrigger"
    assert JobTrigger(**kwargs).serialize() == (path, kwargs)
