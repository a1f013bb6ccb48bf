"""LocalyticsHook's pure parts: status mapping, statistics, error-log parsing, scope checks."""

from __future__ import annotations

import pytest

from airflow_provider_profiles.hooks.base import JobState
from airflow_provider_profiles.hooks.localytics import (
    LocalyticsHook,
    _absolute,
    _error_entries,
    _job_status,
    _normalized,
    statistics,
)


@pytest.mark.parametrize(("vendor", "state"), [
    ("Pending", JobState.RUNNING), ("Running", JobState.RUNNING), ("Completed", JobState.SUCCESS),
    ("Failed", JobState.FAILED), ("completed", JobState.SUCCESS), ("Queued-ish", JobState.RUNNING), (None, JobState.RUNNING),
])
def test_status_mapping(vendor, state):
    assert _job_status("profiles", "a1", {"status": vendor}, []).state is state


def test_audience_statistics_arrive_as_strings_and_leave_as_integers():
    body = _normalized({"status": "Completed", "upload_statistics": {
        "total_lines": "3", "audience_id": "999", "audience_list_id": "31245", "failed_lines": "1", "successful_lines": "2"}})
    assert statistics("audiences", body) == {"total": 3, "succeeded": 2, "failed": 1}
    status = _job_status("audiences", "a2", body, [])
    assert status.payload["audience_list_id"] == 31245 and status.message is None


def test_failed_status_message_and_error_log_without_query():
    body = {"status": "Failed", "error_log": "bucket.s3.aws.com/errors/x/errors.json?X-Amz-Signature=abc",
            "upload_statistics": {"total_number_of_imports": 1, "failed_imports": 1, "successful_imports": 0}}
    status = _job_status("profiles", "x", body, [{"line": 1, "error": "unknown op 'boom'"}])
    assert status.state is JobState.FAILED
    assert "x Failed" in status.message and "unknown op 'boom'" in status.message
    assert status.payload["error_log"] == "https://bucket.s3.aws.com/errors/x/errors.json"  # no signature


def test_error_log_formats():
    # only structured fields: a line that is not a JSON object is replaced by a note of its size
    assert _error_entries('{"line": 1}\n\n{"line": 2}\nplain text\n', None) == [
        {"line": 1}, {"line": 2}, "(an error-log line that is not a JSON object, 10 characters)"]
    assert _error_entries('[{"line": 1}, {"line": 2}, {"line": 3}]', 2) == [{"line": 1}, {"line": 2}]
    assert len(_error_entries("a\nb\nc\n", 2)) == 2
    assert _error_entries('{"line": 3, "error": "%s", "raw": {"a": 1}}' % ("e" * 1000), None) == [
        {"line": 3, "error": "e" * 300}]
    assert _absolute("bucket.s3.aws.com/e.json") == "https://bucket.s3.aws.com/e.json"
    assert _absolute("http://127.0.0.1:1/e.json") == "http://127.0.0.1:1/e.json"


def test_scope_is_exactly_one_and_falls_back_to_the_connection(airflow_connection):
    airflow_connection("localytics_scope", "localytics", login="k", password="s", extra={"org_id": 42})
    hook = LocalyticsHook("localytics_scope")
    assert hook.profile_scope() == {"org_id": "42"}
    assert hook.profile_scope(app_id="app") == {"app_id": "app"}
    assert hook.profile_scope(org_id=7) == {"org_id": "7"}
    with pytest.raises(ValueError, match="not both"):
        hook.profile_scope(org_id=7, app_id="app")
    airflow_connection("localytics_noorg", "localytics", login="k", password="s")
    with pytest.raises(ValueError, match="no scope"):
        LocalyticsHook("localytics_noorg").profile_scope()


def test_missing_credentials_are_named_without_values(airflow_connection):
    airflow_connection("localytics_nokey", "localytics", password="a-secret-value")
    with pytest.raises(ValueError, match="API key as login") as error:
        LocalyticsHook("localytics_nokey").auth()
    assert "a-secret-value" not in str(error.value)


def test_default_base_url_and_declared_limits(airflow_connection):
    airflow_connection("localytics_prod", "localytics", login="k", password="s")
    hook = LocalyticsHook("localytics_prod")
    hook.connection  # noqa: B018
    assert hook.base_url == "https://api.localytics.com/v1"
    assert LocalyticsHook.rate_limits == {"upload": (10, 3600), "status": (60, 60), "audiences": (60, 60)}
    limiter = hook.limiter("upload")
    assert (limiter.requests, limiter.per_seconds) == (10, 3600)
