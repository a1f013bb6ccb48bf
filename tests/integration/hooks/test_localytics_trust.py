"""Localytics against hostile servers: error-log URLs pointing inside the network, oversized or
unstructured error logs, redirected uploads, HTML answers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from airflow_provider_profiles.hooks.base import VendorRedirectError, VendorResponseError
from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.triggers.base import JobTrigger
from tests.misbehaving_server import response

KEY, SECRET = "localytics-key-trust", "localytics-secret-trust-8c1e"
INTERNAL = "INTERNAL-METADATA-do-not-leak"


@pytest.fixture
def connect(airflow_connection):
    def make(server, **extra) -> LocalyticsHook:
        conn_id = f"localytics_{uuid.uuid4().hex[:8]}"
        airflow_connection(conn_id, "localytics", login=KEY, password=SECRET, host=server.url,
                           extra={"org_id": "60", **extra})
        return LocalyticsHook(conn_id)

    return make


def failed_status(error_log: str) -> bytes:
    return response(200, json.dumps({"status": "Failed", "error_log": error_log, "error_reason": "bad rows",
                                     "upload_statistics": {"failed_imports": 2, "total_number_of_imports": 2}}))


@pytest.mark.parametrize("where", ["other-host", "link-local", "file"])
def test_error_log_inside_the_network_is_never_fetched(servers, connect, where):
    internal = servers(lambda r: response(200, INTERNAL, content_type="text/plain"))
    error_log = {"other-host": f"http://localhost:{internal.port}/latest/meta-data",
                 "link-local": "http://169.254.169.254/latest/meta-data/iam",
                 "file": "file:///etc/passwd"}[where]
    hook = connect(servers(lambda r: failed_status(error_log)))
    status = hook.job_status(kind="profiles", activity_id="a-1")

    async def astatus_of():
        try:
            return await hook.ajob_status(kind="profiles", activity_id="a-1")
        finally:
            await hook.aclose()

    astatus = asyncio.run(astatus_of())
    for result in (status, astatus):
        assert result.state.value == "failed"
        assert INTERNAL not in json.dumps(result.payload) + (result.message or "")
        assert "refused" in result.payload["first_errors"][0]
    assert internal.received == []


def test_error_log_is_bounded_and_keeps_only_structured_fields(servers, connect):
    def answer(received):
        if received.path.startswith("/v1/imports"):
            return failed_status(f"http://127.0.0.1:{api.port}/errors.json")
        lines = [json.dumps({"line": 1, "error": "x" * 5000, "raw": {"nested": INTERNAL}}), INTERNAL * 10]
        return response(200, "\n".join(lines) + "\n" + "y" * 5_000_000, content_type="text/plain")

    api = servers(answer)
    hook = connect(api)
    status = hook.job_status(kind="profiles", activity_id="a-1")
    first = status.payload["first_errors"]
    assert first[0]["line"] == 1 and len(first[0]["error"]) <= 300 and "raw" not in first[0]
    assert INTERNAL not in json.dumps(first)
    assert len(json.dumps(status.payload)) < 5_000


def test_redirected_upload_is_an_error_not_a_success(servers, connect, tmp_path):
    def answer(received):
        if received.method == "POST":
            return response(302, "", {"Location": "/v1/imports/profiles/status/a-1"})
        return response(200, '{"activity_id": "a-1"}')

    api = servers(answer)
    path = tmp_path / "changes.json"
    path.write_text('{"customer_id": "c1", "changes": []}\n')
    with pytest.raises(VendorRedirectError, match="POST imports/profiles/upload"):
        connect(api).upload_profiles(path)
    assert [r.method for r in api.received] == ["POST"]


def test_html_on_an_upload_is_a_typed_error(servers, connect, tmp_path):
    api = servers(lambda r: response(200, "<html>proxy</html>", content_type="text/html"))
    path = tmp_path / "changes.json"
    path.write_text('{"customer_id": "c1", "changes": []}\n')
    with pytest.raises(VendorResponseError, match="HTTP 200"):
        connect(api).upload_profiles(path)


def test_html_status_answers_end_the_trigger_with_one_error_event(servers, connect):
    hook = connect(servers(lambda r: response(200, "<html>maintenance</html>", content_type="text/html")))
    trigger = JobTrigger(vendor="localytics", conn_id=hook.conn_id, job={"kind": "profiles", "activity_id": "a-1"},
                                      deadline=time.time() + 600, poll_interval=0, max_transient_errors=2)

    async def collect():
        return [event.payload async for event in trigger.run()]

    (event,) = asyncio.run(collect())
    assert event["status"] == "error" and "not valid JSON" in event["message"]
