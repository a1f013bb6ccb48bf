"""The corrected mediarithmics contract against the emulator over real HTTP: every execution status the
platform reports, and the 100 MB recommendation that is not a limit (developer.mediarithmics.io)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from airflow_provider_profiles.hooks.base import JobState
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from airflow_provider_profiles.triggers.base import JobTrigger

TOKEN = "tok-contract-secret"
LINE = b'{"operation":"UPSERT","email_hash":"h1","update_strategy":"PARTIAL_UPDATE","user_profile":{"plan":"pro"}}\n'


@pytest.fixture
def mics(emulator, airflow_connection):
    def start(extra=None, **config):
        server = emulator("mediarithmics", token=TOKEN, pending_seconds=1, running_seconds=1, **config)
        airflow_connection("mediarithmics_default", "mediarithmics", password=TOKEN, host=server.url,
                           extra={"datamart_id": "1000", **(extra or {})})
        return server, MediarithmicsHook()

    return start


def ended_execution(server, hook):
    """An execution uploaded and run to its end on the emulator's clock (no sleeping)."""
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "contract")["id"]
    execution = hook.create_execution(import_id, LINE)
    server.emulator.clock.advance(5)
    return {"datamart_id": "1000", "document_import_id": import_id, "execution_id": execution["id"]}


def test_an_execution_ending_success_is_a_success(mics):
    server, hook = mics(end_status="SUCCESS")
    job = ended_execution(server, hook)
    status = hook.job_status(**job)
    assert (status.vendor_status, status.state) == ("SUCCESS", JobState.SUCCESS)
    assert status.payload["result"]["total_success"] == 1


def test_success_reaches_the_trigger_as_a_success_event(mics):
    server, hook = mics(end_status="SUCCESS")
    job = ended_execution(server, hook)
    trigger = JobTrigger(vendor="mediarithmics", conn_id="mediarithmics_default", job=job, deadline=time.time() + 20, poll_interval=0.05)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "success" and event["vendor_status"] == "SUCCESS"


@pytest.mark.parametrize("vendor_status", ["LOST", "EXECUTOR_NOT_RESPONDING"])
def test_lost_executions_fail_with_a_clear_message(mics, vendor_status):
    server, hook = mics(end_status=vendor_status)
    status = hook.job_status(**ended_execution(server, hook))
    assert status.state is JobState.FAILED and status.vendor_status == vendor_status
    assert vendor_status in status.message and "upload the file again" in status.message


def test_an_unknown_status_fails_once_its_bound_is_over(mics):
    server, hook = mics(end_status="ARCHIVED_SOMEHOW", extra={"unknown_status_timeout": 0})
    status = hook.job_status(**ended_execution(server, hook))
    assert status.state is JobState.FAILED
    assert "ARCHIVED_SOMEHOW" in status.message and "unknown_status_timeout" in status.message


def test_an_unknown_status_is_waited_on_within_its_bound(mics):
    server, hook = mics(end_status="ARCHIVED_SOMEHOW")  # default bound: minutes, not the whole job_timeout
    status = hook.job_status(**ended_execution(server, hook))
    assert status.state is JobState.RUNNING and status.vendor_status == "ARCHIVED_SOMEHOW"


def test_a_file_over_100_mb_is_sent_with_a_warning_not_refused(mics, tmp_path, capfd, caplog):
    server, hook = mics()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "big")["id"]
    big = tmp_path / "big.ndjson"
    big.write_bytes(LINE * 50)
    with caplog.at_level(logging.WARNING):
        execution = hook.create_execution(import_id, big, recommended_max_bytes=1000)
    assert execution["status"] == "PENDING"
    out, err = capfd.readouterr()
    assert "recommends at most" in caplog.text + out + err
    # the emulator refuses no size: the 100 MB figure is a recommendation for performance
    chunked = hook.create_execution(import_id, iter([LINE] * 2000))
    assert chunked["parameters"]["number_of_lines"] == 2000


def run_lines(server, hook, document_type, lines):
    import_id = hook.create_document_import(document_type, "APPLICATION_X_NDJSON", f"lines {document_type}")["id"]
    body = "".join(line + "\n" for line in lines).encode()
    execution = hook.create_execution(import_id, body)
    server.emulator.clock.advance(5)
    return hook.get_execution(import_id, execution["id"])


@pytest.mark.parametrize("document_type, line", [
    ("USER_PROFILE", '{"operation":"UPSERT","user_account_id":"u","update_strategy":"PARTIAL_UPDATE","user_profile":{"a":1}}'),
    ("USER_IDENTIFIERS_DELETION", '{"type":"USER_ACCOUNT","user_account_id":"u"}'),
    ("USER_POINTS_DELETION", '{"type":"USER_POINT","user_point_id":"95772db3-e762"}'),
    ("USER_POINTS_DELETION", '{"type":"USER_ACCOUNT","user_account_id":"u"}'),
    ("USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS",
     '{"identifiers":[{"type":"USER_EMAIL","hash":"h"},{"type":"USER_ACCOUNT","user_account_id":"u"}]}'),
    ("USER_CHOICE", '{"operation":"UPSERT","email_hash":"h","force_replace":true,'
                    '"user_choice":{"$processing_id":"3","$choice_ts":1700000000000}}'),
])
def test_the_platform_accepts_what_the_reference_allows(mics, document_type, line):
    server, hook = mics()
    execution = run_lines(server, hook, document_type, [line])
    assert execution["status"] == "SUCCEEDED" and execution["result"]["total_success"] == 1


@pytest.mark.parametrize("document_type, line, error", [
    ("USER_SEGMENT", '{"operation":"UPDATE","email_hash":"h","segment_id":"1"}', "expiration_duration is mandatory"),
    ("USER_CHOICE", '{"operation":"UPSERT","email_hash":"h","user_choice":{"$processing_id":"3","$choice_ts":1}}',
     "force_replace is mandatory"),
    ("USER_CHOICE", '{"operation":"UPSERT","email_hash":"h","force_replace":true,"user_choice":{"$processing_id":"3"}}',
     "$choice_ts is mandatory"),
    ("USER_CHOICE", '{"operation":"DELETE","email_hash":"h","user_choice":{"$processing_token":"t"}}',
     "$processing_id is mandatory"),
])
def test_the_platform_refuses_what_the_reference_requires(mics, document_type, line, error):
    server, hook = mics()
    execution = run_lines(server, hook, document_type, [line])
    assert execution["status"] == "FAILED"
    assert error in hook.error_lines(execution["result"]["error_file_uri"])[0]
