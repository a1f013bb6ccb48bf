"""The shared polling trigger (triggers/base.py), run for real against the echo emulator."""

from __future__ import annotations

import importlib
import time

import pytest

from airflow_provider_profiles.triggers.base import JobTrigger
from airflow_provider_profiles.vendors import VENDORS, load
from tests.echo_hook import EchoHook, EchoTrigger

KEY = "trigger-key"


@pytest.fixture
def server(emulator, airflow_connection):
    server = emulator("echo", api_key=KEY)
    # max_attempts=1: the hook does not retry, so the trigger's own tolerance is what is tested
    airflow_connection("echo_default", "echo", password=KEY, extra={"base_url": server.url, "max_attempts": 1})
    return server


def new_job(duration: float | None, outcome: str = "done") -> dict:
    """A job on the echo emulator; ``duration=None``: it runs until cancelled."""
    return {"job_id": EchoHook().request("POST", "/jobs", json={"duration": duration, "outcome": outcome}).json()["id"]}


async def events_of(trigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def test_serialize_round_trip():
    trigger = EchoTrigger(vendor="echo", conn_id="echo_default", job={"job_id": "7"}, deadline=1234.5, poll_interval=3)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs == {"vendor": "echo", "conn_id": "echo_default", "job": {"job_id": "7"}, "deadline": 1234.5,
                      "poll_interval": 3.0, "max_transient_errors": 5}


async def test_success_yields_one_event_with_the_vendor_payload(server):
    job = new_job(0.3)
    events = await events_of(EchoTrigger(vendor="echo", conn_id="echo_default", job=job, deadline=time.time() + 30, poll_interval=0.1))
    assert len(events) == 1
    assert events[0]["status"] == "success" and events[0]["vendor_status"] == "done"
    assert events[0]["result"] == {"id": job["job_id"], "status": "done"} and events[0]["job"] == job


async def test_failure_carries_the_vendor_message(server):
    job = new_job(0.2, outcome="failed")
    events = await events_of(EchoTrigger(vendor="echo", conn_id="echo_default", job=job, deadline=time.time() + 30, poll_interval=0.1))
    assert [e["status"] for e in events] == ["failed"]
    assert events[0]["message"] == "the job failed on the vendor side"


async def test_deadline_gives_timeout(server):
    job = new_job(None)  # never ends: only the deadline can end the wait
    events = await events_of(EchoTrigger(vendor="echo", conn_id="echo_default", job=job, deadline=time.time() + 0.5, poll_interval=0.1))
    assert [e["status"] for e in events] == ["timeout"]
    assert events[0]["vendor_status"] in ("queued", "running")


async def test_transient_errors_tolerated_then_success(server):
    job = new_job(0.3)
    server.emulator.inject("status", match="GET /jobs/", count=3, status=503)
    server.emulator.inject("drop", match="GET /jobs/", count=1)
    events = await events_of(EchoTrigger(vendor="echo", conn_id="echo_default", job=job, deadline=time.time() + 30,
                                         poll_interval=0.05, max_transient_errors=4))
    assert [e["status"] for e in events] == ["success"]
    assert server.emulator.faults_served["status"] == 3 and server.emulator.faults_served["drop"] == 1


async def test_too_many_transient_errors_give_error(server):
    job = new_job(0.3)
    server.emulator.inject("status", match="GET /jobs/", count=10, status=502)
    events = await events_of(EchoTrigger(vendor="echo", conn_id="echo_default", job=job, deadline=time.time() + 30,
                                         poll_interval=0.05, max_transient_errors=2))
    assert [e["status"] for e in events] == ["error"]
    assert "3 failed status checks" in events[0]["message"]


async def test_unknown_job_gives_error_at_once(server):
    events = await events_of(EchoTrigger(vendor="echo", conn_id="echo_default", job={"job_id": "404"}, deadline=time.time() + 30,
                                         poll_interval=0.05))
    assert [e["status"] for e in events] == ["error"]
    assert "HTTP 404" in events[0]["message"]
    assert server.emulator.counters["GET /jobs/404"] == 1


async def test_on_kill_cancels_the_vendor_job(server):
    job = new_job(None)
    await EchoTrigger(vendor="echo", conn_id="echo_default", job=job, deadline=time.time() + 30).on_kill()
    assert server.emulator.snapshot()["jobs"][job["job_id"]]["status"] == "cancelled"


@pytest.mark.parametrize("vendor", ["nowhere", "gainsight_px", "os:system", ["mediarithmics"]])
async def test_a_vendor_key_without_jobs_yields_one_error_event(vendor):
    """The vendor key comes from serialized data: only a VENDORS entry with jobs is used, nothing is imported."""
    trigger = JobTrigger(vendor=vendor, conn_id="x", job={"job_id": "1"}, deadline=time.time() + 30, poll_interval=0.05)
    events = await events_of(trigger)
    assert [e["status"] for e in events] == ["error"]
    assert "no vendor with remote jobs" in events[0]["message"] and "mediarithmics" in events[0]["message"]


@pytest.mark.parametrize("vendor", sorted(key for key, spec in VENDORS.items() if spec.has_jobs))
def test_the_vendor_trigger_round_trips_through_its_serialized_form(vendor):
    trigger = JobTrigger(vendor=vendor, conn_id="c", job={"id": "7"}, deadline=1234.5, poll_interval=3)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_profiles.triggers.base.JobTrigger"
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs) and kwargs["vendor"] == vendor
    assert rebuilt.hook_class() is load(VENDORS[vendor].hook)
