"""``hold_ended_jobs``: an emulator reports an ended job still running for its first status reads after
the end, so a test that requires a wait to defer does not depend on the machine's speed.

On a loaded machine the e2e suite's Apsis One sensor first looked after the import's duration had run
out, found it completed and rightly did not defer. Here that slow start is made certain by advancing
the emulator's clock past the job's end before the first look.
"""

from __future__ import annotations

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from airflow_provider_profiles.hooks.base import JobState
from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from airflow_provider_profiles.sensors.apsis_one import ApsisOneImportSensor
from tests.integration.hooks.test_apsis_one_support import FAST, SECTION, connect
from tests.integration.triggers.test_apsis_one import events, started_import

HOUR = 3600.0


@pytest.mark.parametrize("hold", [0, 1])
def test_a_sensor_that_first_looks_after_the_import_ended_defers_when_the_end_is_held(emulator, monkeypatch,
                                                                                       tmp_path, hold):
    server = emulator("apsis_one", **FAST, hold_ended_jobs=hold)
    connect(monkeypatch, server)
    import_id = started_import(ApsisOneHook(), tmp_path)
    server.emulator.clock.advance(HOUR)  # the machine was slow: the import ended before the sensor looked
    sensor = ApsisOneImportSensor(task_id="wait", section=SECTION, import_id=import_id, deferrable=True,
                                  poll_interval=0.1)
    if not hold:  # what the e2e test met: the sensor's one check finds the end and does not defer
        assert sensor.execute({})["status"] == "completed"
        return
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    (event,) = events(deferred.value.trigger)  # the trigger's read is the first to see the end
    assert event["status"] == "success" and event["result"]["status"] == "completed"


def test_localytics_status_route_holds_an_ended_import_for_one_read(emulator, airflow_connection, tmp_path):
    server = emulator("localytics", time_scale=0, hold_ended_jobs=1)  # the clock moves only when advanced
    airflow_connection("localytics_held", "localytics", login="localytics-key", password="localytics-secret",
                       host=server.url, extra={"org_id": "60"})
    hook = LocalyticsHook("localytics_held")
    changes = tmp_path / "changes.json"
    changes.write_text('{"customer_id":"a","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n')
    activity_id = hook.upload_profiles(changes)
    server.emulator.clock.advance(HOUR)
    held = hook.job_status(kind="profiles", activity_id=activity_id)
    assert (held.state, held.vendor_status) == (JobState.RUNNING, "Running")
    assert server.emulator.snapshot()["profiles"] == {"org_id:60": {"a": {"plan": "gold"}}}  # state reads hold nothing
    ended = hook.job_status(kind="profiles", activity_id=activity_id)
    assert (ended.state, ended.vendor_status) == (JobState.SUCCESS, "Completed")
    assert hook.job_status(kind="profiles", activity_id=activity_id).vendor_status == "Completed"


def test_mediarithmics_execution_route_holds_an_ended_execution_for_one_read(emulator, airflow_connection, tmp_path):
    server = emulator("mediarithmics", token="mics-token", time_scale=0, hold_ended_jobs=1)
    airflow_connection("mediarithmics_default", "mediarithmics", password="mics-token", host=server.url,
                       extra={"datamart_id": "1000"})
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "held")["id"]
    path = tmp_path / "profiles.ndjson"
    path.write_bytes(b'{"operation":"UPSERT","email_hash":"h1","update_strategy":"PARTIAL_UPDATE",'
                     b'"user_profile":{"plan":"pro"}}\n')
    execution_id = hook.create_execution(import_id, str(path))["id"]
    server.emulator.clock.advance(HOUR)
    job = {"datamart_id": "1000", "document_import_id": import_id, "execution_id": execution_id}
    held = hook.job_status(**job)
    assert (held.state, held.vendor_status) == (JobState.RUNNING, "RUNNING")
    assert [e["status"] for e in server.emulator.snapshot()["executions"].values()] == ["SUCCEEDED"]
    ended = hook.job_status(**job)
    assert (ended.state, ended.vendor_status) == (JobState.SUCCESS, "SUCCEEDED")
