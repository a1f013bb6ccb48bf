"""MediarithmicsHook pieces that need no server: status mapping, base URL, connection form."""

from __future__ import annotations

import pytest

from airflow_provider_profiles.hooks.base import JobState
from airflow_provider_profiles.hooks.mediarithmics import (
    MediarithmicsHook,
    execution_status,
)


@pytest.mark.parametrize(
    "status, state",
    [("PENDING", JobState.RUNNING), ("RUNNING", JobState.RUNNING), ("SUCCEEDED", JobState.SUCCESS),
     ("FAILED", JobState.FAILED), ("CANCELED", JobState.FAILED), ("SOMETHING_NEW", JobState.RUNNING)],
)
def test_execution_statuses_map_to_job_states(status, state):
    mapped = execution_status({"id": "7", "status": status, "error": {"message": "bad header"}})
    assert (mapped.state, mapped.vendor_status) == (state, status)


def test_failed_and_canceled_messages_name_the_execution_and_error():
    assert execution_status({"id": "7", "status": "FAILED", "error": {"message": "bad header"}}).message == \
        "execution 7 FAILED: bad header"
    assert execution_status({"id": "8", "status": "CANCELED"}).message == "execution 8 was CANCELED"
    assert execution_status({"id": "9", "status": "SUCCEEDED", "result": {}}).message is None


@pytest.mark.parametrize(
    "connection, base_url",
    [
        ({}, "https://api.mediarithmics.com/v1"),
        ({"host": "http://127.0.0.1:8094"}, "http://127.0.0.1:8094/v1"),
        ({"host": "api.example.test"}, "https://api.example.test/v1"),
        ({"extra": {"base_url": "http://127.0.0.1:9/v1/"}}, "http://127.0.0.1:9/v1"),
    ],
)
def test_base_url_keeps_the_v1_prefix(airflow_connection, connection, base_url):
    airflow_connection("mics_url", "mediarithmics", password="secret-token", **connection)
    hook = MediarithmicsHook("mics_url")
    hook.connection  # noqa: B018
    assert hook.base_url == base_url
    assert hook.auth_headers() == {"Authorization": "secret-token"}


def test_connection_form_and_defaults():
    assert (MediarithmicsHook.conn_type, MediarithmicsHook.default_conn_name) == ("mediarithmics", "mediarithmics_default")
    behaviour = MediarithmicsHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["password"] == "API token" and "login" in behaviour["hidden_fields"]
