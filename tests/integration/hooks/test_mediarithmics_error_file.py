"""An execution's error file read by ``MediarithmicsHook.error_file_entries`` over real HTTP: what a hostile
answer can put in it is filtered and bounded, and an address the answer supplies goes through the shared
supplied-URL policy (``ProfilesHook.fetch_supplied_url``): never fetched when refused, never with the token."""

from __future__ import annotations

import json

import pytest

from airflow_provider_profiles.hooks.base import UntrustedURLError
from airflow_provider_profiles.hooks.mediarithmics import ERROR_REASON_MAX_CHARS, MediarithmicsHook
from tests.misbehaving_server import response

TOKEN = "tok-error-file-secret"


@pytest.fixture
def hook_at(airflow_connection):
    def connect(server) -> MediarithmicsHook:
        airflow_connection("mics_error_file", "mediarithmics", password=TOKEN, host=server.url,
                           extra={"datamart_id": "1000"})
        return MediarithmicsHook("mics_error_file")

    return connect


def test_entries_keep_the_line_and_a_cut_one_line_reason_only(servers, hook_at):
    body = "\n".join([
        json.dumps({"line": 2, "error": "unknown compartment", "echo": {"password": "x"}}),
        json.dumps({"line": 5, "message": "bad\r\nvalue\x1b[31m " + "z" * 5000}),
        "<html><body>a proxy page</body></html>",
        json.dumps({"line": "7", "error": ["not", "text"]}),
        "",
    ])
    api = servers(lambda received: response(200, body, content_type="application/x-ndjson"))
    hook = hook_at(api)
    entries = list(hook.error_file_entries("mics://data_file/errors.ndjson"))
    assert api.received[0].path.startswith("/v1/data_file/data?uri=mics")
    assert api.received[0].headers.get("authorization") == TOKEN  # the connection's own host: the token goes
    assert entries[0] == {"line": 2, "reason": "unknown compartment"}
    assert entries[1]["line"] == 5 and len(entries[1]["reason"]) == ERROR_REASON_MAX_CHARS
    assert "\n" not in entries[1]["reason"] and "\r" not in entries[1]["reason"]
    assert entries[2] == {"line": None, "reason": "(an error-file entry that is not a JSON object, 38 characters)"}
    assert entries[3] == {"line": None, "reason": "(no reason given)"}
    assert len(entries) == 4


def test_an_endless_line_is_counted_not_held_and_the_limit_stops_reading(servers, hook_at):
    body = "x" * (200 << 10) + "\n" + "\n".join(json.dumps({"line": i, "error": "e"}) for i in range(1, 1001))
    hook = hook_at(servers(lambda received: response(200, body, content_type="application/x-ndjson")))
    entries = list(hook.error_file_entries("mics://data_file/errors.ndjson", limit=3))
    assert entries[0] == {"line": None, "reason": f"(an error-file entry of {200 << 10} bytes, too long to read)"}
    assert entries[1:] == [{"line": 1, "reason": "e"}, {"line": 2, "reason": "e"}]


@pytest.mark.parametrize("read", ["error_file_entries", "error_lines"])
@pytest.mark.parametrize("address", [
    "http://localhost:{port}/errors.ndjson",   # plain http to another host
    "https://127.0.0.2:{port}/errors.ndjson",  # https, but not a public address
    "file:///etc/passwd",
    "ftp://localhost:{port}/errors",
])
def test_a_supplied_error_file_url_is_refused_before_any_request(servers, hook_at, address, read):
    bait = servers(lambda received: response(200, "{}"))
    api = servers(lambda received: response(200, "{}"))
    hook = hook_at(api)
    with pytest.raises(UntrustedURLError) as refused:
        list(getattr(hook, read)(address.format(port=bait.port)))
    assert bait.received == [] and api.received == []
    assert TOKEN not in str(refused.value)


def test_a_supplied_url_on_the_connections_own_host_is_fetched_without_the_token(servers, hook_at):
    api = servers(lambda received: response(200, json.dumps({"line": 1, "error": "e"}) + "\n"))
    hook = hook_at(api)
    assert list(hook.error_file_entries(f"{api.url}/files/errors.ndjson")) == [{"line": 1, "reason": "e"}]
    assert api.received[0].path == "/files/errors.ndjson" and "authorization" not in api.received[0].headers
