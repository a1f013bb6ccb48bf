"""MediarithmicsHook against the emulator over real HTTP: every call, envelope, pagination, auth, limits, cancel."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from airflow_provider_profiles.hooks.base import (
    Call,
    JobNotCancellable,
    JobState,
    VendorAPIError,
    VendorAuthError,
    VendorNotFoundError,
    VendorServerError,
    VendorValidationError,
)
from airflow_provider_profiles.hooks.mediarithmics import (
    FileTooLarge,
    MediarithmicsHook,
)

TOKEN = "tok-3f9a-secret"
PROFILE_LINE = b'{"operation":"UPSERT","email_hash":"h1","update_strategy":"PARTIAL_UPDATE","user_profile":{"plan":"pro"}}\n'


@pytest.fixture
def mics(emulator, airflow_connection):
    """A running emulator (executions pending 0.3 s, running 0.3 s) and a hook whose connection points at it."""

    def start(**config):
        config.setdefault("token", TOKEN)
        config.setdefault("pending_seconds", 0.3)
        config.setdefault("running_seconds", 0.3)
        server = emulator("mediarithmics", **config)
        airflow_connection("mediarithmics_default", "mediarithmics", password=config["token"], host=server.url,
                           extra={"datamart_id": "1000"})
        return server, MediarithmicsHook()

    return start


def wait_for(hook, import_id, execution_id, statuses=("SUCCEEDED", "FAILED", "CANCELED"), timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = hook.get_execution(import_id, execution_id)
        if execution["status"] in statuses:
            return execution
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} never reached {statuses}")


def test_document_import_crud_unwraps_the_envelope(mics):
    server, hook = mics()
    created = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM 2024-05-01", priority="HIGH")
    assert created["document_type"] == "USER_PROFILE" and created["priority"] == "HIGH" and created["id"]
    assert hook.get_document_import(created["id"])["name"] == "CRM 2024-05-01"
    assert hook.update_document_import(created["id"], name="renamed")["name"] == "renamed"
    assert server.emulator.snapshot()["document_imports"][created["id"]]["name"] == "renamed"
    hook.delete_document_import(created["id"])
    with pytest.raises(VendorNotFoundError, match="document import .* not found"):
        hook.get_document_import(created["id"])
    # an explicit datamart wins over the connection's; an unknown one is a 404
    with pytest.raises(VendorNotFoundError, match="datamart 42 not found"):
        hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "x", datamart_id=42)


def test_list_paginates_with_first_result_and_max_results(mics):
    server, hook = mics()
    ids = [hook.create_document_import("USER_SEGMENT", "TEXT_CSV", f"segment {i}")["id"] for i in range(23)]
    listed = list(hook.list_document_imports(page_size=10))
    assert [d["id"] for d in listed] == ids
    assert server.emulator.counters["GET /v1/datamarts/1000/document_imports"] == 3


def test_list_follows_a_page_size_capped_by_the_platform(mics):
    server, hook = mics(max_max_results=5)
    ids = [hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", f"p{i}")["id"] for i in range(12)]
    assert [d["id"] for d in hook.list_document_imports(page_size=10)] == ids
    assert server.emulator.counters["GET /v1/datamarts/1000/document_imports"] == 3


def test_csv_is_refused_for_other_types_by_hook_and_platform(mics):
    server, hook = mics()
    with pytest.raises(ValueError, match="only allowed for USER_SEGMENT"):
        hook.create_document_import("USER_PROFILE", "TEXT_CSV", "x")
    # the emulator refuses it too (a hook bypassing the check gets a clear 400)
    with pytest.raises(VendorValidationError, match="TEXT_CSV is only allowed for USER_SEGMENT"):
        hook.call(Call("POST", "/datamarts/1000/document_imports",
                       json={"document_type": "USER_ACTIVITY", "mime_type": "TEXT_CSV", "encoding": "utf-8", "name": "x"}))


def test_wrong_token_is_an_auth_error_that_never_shows_the_token(emulator, airflow_connection):
    server = emulator("mediarithmics", token="the-right-token")
    airflow_connection("mediarithmics_default", "mediarithmics", password="a-wrong-token-123", host=server.url,
                       extra={"datamart_id": "1000"})
    with pytest.raises(VendorAuthError) as caught:
        MediarithmicsHook().create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "x")
    assert caught.value.status == 401 and "a-wrong-token-123" not in str(caught.value)


def test_execution_lifecycle_counts_lines_and_serves_the_error_file(mics, tmp_path):
    server, hook = mics()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    path = tmp_path / "profiles.ndjson"
    path.write_bytes(PROFILE_LINE * 3 + b'{"operation":"UPSERT","user_profile":{}}\nnot json\n')
    execution = hook.create_execution(import_id, str(path))
    assert execution["status"] == "PENDING" and execution["result"] is None
    assert hook.get_execution(import_id, execution["id"])["parameters"]["number_of_lines"] == 5
    done = wait_for(hook, import_id, execution["id"])
    assert done["status"] == "SUCCEEDED"
    assert (done["result"]["total_success"], done["result"]["total_failure"]) == (3, 2)
    errors = [json.loads(line) for line in hook.error_lines(done["result"]["error_file_uri"])]
    assert [e["line"] for e in errors] == [4, 5]
    assert "exactly one user identifier" in errors[0]["error"] and "not valid JSON" in errors[1]["error"]
    assert [e["id"] for e in hook.list_executions(import_id, page_size=1)] == [execution["id"]]
    status = hook.job_status(datamart_id="1000", document_import_id=import_id, execution_id=execution["id"])
    assert status.state is JobState.SUCCESS and status.vendor_status == "SUCCEEDED"


def test_all_lines_failing_fails_the_execution_with_its_error(mics):
    server, hook = mics(pending_seconds=0, running_seconds=0)
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    execution = hook.create_execution(import_id, b'{"operation":"UPSERT"}\n')
    status = hook.job_status(datamart_id="1000", document_import_id=import_id, execution_id=execution["id"])
    assert status.state is JobState.FAILED and "no line could be imported" in status.message


def test_upload_from_object_storage_uri_and_file_object(mics, tmp_path):
    server, hook = mics()
    import_id = hook.create_document_import("USER_SEGMENT", "TEXT_CSV", "VIP")["id"]
    path = tmp_path / "segment.csv"
    path.write_text("operation,email_hash,segment_id\nUPDATE,h1,5\nUPDATE,h2,5\n")
    by_uri = hook.create_execution(import_id, f"file://{path}")
    with path.open("rb") as handle:
        by_handle = hook.create_execution(import_id, handle)
    by_chunks = hook.create_execution(import_id, iter([b"operation,email_hash,segment_id\n", b"DELETE,h1,5\n"]))
    lines = [wait_for(hook, import_id, e["id"])["parameters"]["number_of_lines"] for e in (by_uri, by_handle, by_chunks)]
    assert lines == [2, 2, 1]
    assert server.emulator.counters[f"GET /v1/datamarts/1000/document_imports/{import_id}"] == 3  # content type lookups


def test_content_type_must_match_the_definition(mics):
    server, hook = mics()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    with pytest.raises(VendorValidationError, match="does not match the document import"):
        hook.create_execution(import_id, PROFILE_LINE, content_type="text/csv")


def test_size_limit_only_when_the_caller_sets_one(mics, tmp_path):
    server, hook = mics()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    big = tmp_path / "big.ndjson"
    big.write_bytes(PROFILE_LINE * 100)
    with pytest.raises(FileTooLarge, match="split it into chunks"):
        hook.create_execution(import_id, big, max_file_bytes=1000)
    assert server.emulator.counters[f"POST /v1/datamarts/1000/document_imports/{import_id}/executions"] == 0
    assert hook.create_execution(import_id, big)["parameters"]["number_of_lines"] == 100


def test_cancel_only_while_pending(mics):
    server, hook = mics(pending_seconds=30, running_seconds=30)
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    execution = hook.create_execution(import_id, PROFILE_LINE)
    canceled = hook.cancel_execution(import_id, execution["id"])
    assert canceled["status"] == "CANCELED"
    status = hook.job_status(datamart_id="1000", document_import_id=import_id, execution_id=execution["id"])
    assert status.state is JobState.FAILED and "CANCELED" in status.message
    with pytest.raises(JobNotCancellable, match="is CANCELED: mediarithmics cancels only PENDING"):
        hook.cancel_execution(import_id, execution["id"])
    server.emulator.clock.advance(90)  # a second execution, then let it start
    running = hook.create_execution(import_id, PROFILE_LINE)
    server.emulator.clock.advance(30.5)
    with pytest.raises(JobNotCancellable, match="is RUNNING"):
        hook.cancel_job(datamart_id="1000", document_import_id=import_id, execution_id=running["id"])


def test_platform_refuses_cancel_after_pending(mics):
    """The race the hook cannot rule out: the platform's own refusal is a clear 400."""
    server, hook = mics(pending_seconds=0)
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    execution = hook.create_execution(import_id, PROFILE_LINE)
    with pytest.raises(VendorValidationError, match="only a PENDING execution can be canceled"):
        hook.call(Call("POST", f"/datamarts/1000/document_imports/{import_id}/executions/{execution['id']}/action",
                       json={"action": "CANCEL"}))


def test_async_status_and_cancel(mics):
    server, hook = mics(pending_seconds=30)
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    execution_id = hook.create_execution(import_id, io.BytesIO(PROFILE_LINE))["id"]
    job = {"datamart_id": "1000", "document_import_id": import_id, "execution_id": execution_id}

    async def scenario():
        async_hook = MediarithmicsHook()
        try:
            before = await async_hook.ajob_status(**job)
            await async_hook.acancel_job(**job)
            after = await async_hook.ajob_status(**job)
            with pytest.raises(JobNotCancellable):
                await async_hook.acancel_job(**job)
            return before, after
        finally:
            await async_hook.aclose()

    before, after = asyncio.run(scenario())
    assert (before.state, before.vendor_status) == (JobState.RUNNING, "PENDING")
    assert (after.state, after.vendor_status) == (JobState.FAILED, "CANCELED")


def test_missing_datamart_and_token_are_clear(emulator, airflow_connection):
    server = emulator("mediarithmics")
    airflow_connection("mics_no_dm", "mediarithmics", host=server.url)
    hook = MediarithmicsHook("mics_no_dm")
    with pytest.raises(ValueError, match="no datamart_id given and connection 'mics_no_dm' has no datamart_id extra"):
        hook.list_document_imports()
    with pytest.raises(ValueError, match="has no API token"):
        hook.get_document_import(1, datamart_id="1000")


def test_error_envelope_in_a_200_and_retries_that_never_duplicate_an_execution(emulator, airflow_connection):
    server = emulator("mediarithmics", token=TOKEN)
    airflow_connection("mediarithmics_default", "mediarithmics", password=TOKEN, host=server.url,
                       extra={"datamart_id": "1000", "backoff_initial": 0.01, "backoff_max": 0.05})
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "CRM")["id"]
    server.emulator.inject("status", match="GET .*/document_imports/", status=200,
                           body={"status": "error", "error": "datamart is being migrated", "error_id": "e-42"})
    with pytest.raises(VendorAPIError, match=r"datamart is being migrated \(error_id e-42\)"):
        hook.get_document_import(import_id)
    # a 503 on a GET is retried; on the upload (a POST) it is not, so a file is never imported twice
    server.emulator.inject("status", match="GET .*/document_imports/", status=503)
    assert hook.get_document_import(import_id)["id"] == import_id
    server.emulator.inject("status", match="POST .*/executions$", status=503)
    with pytest.raises(VendorServerError):
        hook.create_execution(import_id, PROFILE_LINE)
    assert server.emulator.counters[f"POST /v1/datamarts/1000/document_imports/{import_id}/executions"] == 1


def test_upload_streams_from_an_object_storage_path(mics):
    """Any fsspec store behind ObjectStoragePath (memory:// here; s3://, gs://... alike)."""
    import fsspec
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach

    attach("memory", fs=fsspec.filesystem("memory"))  # no provider brings memory://; register it for the test

    server, hook = mics(pending_seconds=0, running_seconds=0)
    chunk = ObjectStoragePath("memory://mics-test-bucket/run-1/chunk-0.ndjson")
    chunk.parent.mkdir(parents=True, exist_ok=True)
    with chunk.open("wb") as out:
        out.write(PROFILE_LINE * 4)
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "from storage")["id"]
    for target in (chunk, "memory://mics-test-bucket/run-1/chunk-0.ndjson"):
        execution = hook.create_execution(import_id, target)
        done = hook.get_execution(import_id, execution["id"])
        assert (done["status"], done["result"]["total_success"]) == ("SUCCEEDED", 4)
        assert done["parameters"]["input_file_size"] == len(PROFILE_LINE) * 4
