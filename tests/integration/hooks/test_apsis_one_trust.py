"""Apsis One against a hostile or strict server: 403 explicit deny, one shared token, redirected token
requests, HTML answers, internal upload URLs, nested retries, the v2 topics route."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from airflow_provider_profiles.hooks.base import (
    RetryPolicy,
    UntrustedURLError,
    VendorAuthError,
    VendorRedirectError,
    VendorServerError,
)
from airflow_provider_profiles.triggers.base import JobTrigger
from tests.integration.hooks.test_apsis_one_support import CLIENT_SECRET, FAST, SECTION, connect, write_csv
from tests.misbehaving_server import response


@pytest.fixture
def apsis(emulator, monkeypatch):
    def start(**config):
        server = emulator("apsis_one", **{**FAST, **config})
        connect(monkeypatch, server)
        return server

    return start


def token_requests(server) -> int:
    return server.emulator.counters["POST /oauth/token"]


# --- a: 403 explicit deny ---------------------------------------------------------------------------
def test_emulator_answers_an_expired_token_with_403_explicit_deny(apsis):
    import requests

    server = apsis(token_ttl=60)
    token = requests.post(f"{server.url}/oauth/token", json={
        "grant_type": "client_credentials", "client_id": "apsis-client", "client_secret": CLIENT_SECRET}).json()
    server.emulator.clock.advance(61)
    answer = requests.get(f"{server.url}/audience/sections", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert answer.status_code == 403
    assert answer.json() == {"message": "User is not authorized to access this resource with an explicit deny"}


def test_403_explicit_deny_reauthenticates_once(apsis):
    server = apsis(token_ttl=3600)
    hook = ApsisOneHook()
    hook.list_keyspaces()
    server.emulator.clock.advance(3601)  # expired for the server, not yet for the hook
    assert hook.list_keyspaces()
    assert token_requests(server) == 2


def test_a_403_that_persists_fails_typed_after_one_reauthentication(apsis):
    server = apsis()
    server.emulator.inject("status", match="GET /audience/sections$", count=10, status=403,
                           body={"message": "User is not authorized to access this resource with an explicit deny"})
    with pytest.raises(VendorAuthError, match="explicit deny"):
        ApsisOneHook().list_sections()
    assert server.emulator.counters["GET /audience/sections"] == 2 and token_requests(server) == 2


# --- b: one token per connection per process ---------------------------------------------------------
def test_hooks_and_triggers_of_one_connection_share_one_token(apsis, tmp_path):
    server = apsis()
    for _ in range(3):  # each operator/sensor poke makes its own hook
        ApsisOneHook().list_sections()

    async def many_triggers():
        hooks = [ApsisOneHook() for _ in range(5)]
        try:
            await asyncio.gather(*(hook.acall(hook.import_status_call(SECTION, "nope")) for hook in hooks), return_exceptions=True)
        finally:
            for hook in hooks:
                await hook.aclose()

    asyncio.run(many_triggers())
    assert token_requests(server) == 1


def test_the_shared_token_is_replaced_once_when_refused(apsis):
    server = apsis()
    first, second = ApsisOneHook(), ApsisOneHook()
    first.list_sections()
    server.emulator.revoke_tokens()
    first.list_sections()
    second.list_sections()  # uses the token the first hook fetched again
    assert token_requests(server) == 2


# --- c: topics ---------------------------------------------------------------------------------------
def test_topics_come_from_the_v2_section_route(apsis):
    server = apsis()
    topics = ApsisOneHook().list_topics(SECTION)
    assert {t["discriminator"] for t in topics} == {"usercreated.topics.shoes-bcjvwfknxd", "usercreated.topics.news-0k9d"}
    assert server.emulator.counters[f"GET /v2/audience/sections/{SECTION}/topics"] == 1
    one_list = ApsisOneHook().list_topics(SECTION, "usercreated.consentlists.newsletters-q1w2")
    assert len(one_list) == 2


# --- 14: one budget per call, token fetches included ----------------------------------------------------
def test_token_failures_do_not_multiply_the_retries(apsis, monkeypatch):
    server = apsis()
    server.emulator.inject("status", match="POST /oauth/token", count=100, status=503)
    waits = []
    hook = ApsisOneHook(retry_policy=RetryPolicy(max_attempts=5, sleep=waits.append))
    with pytest.raises(VendorServerError):
        hook.list_sections()
    assert token_requests(server) == 5 and len(waits) == 4  # not 5 x 5 token requests and 24 waits


def test_the_call_deadline_bounds_the_planned_waits(apsis, monkeypatch):
    server = apsis()
    connect(monkeypatch, server, call_deadline=100, max_attempts=10)
    server.emulator.inject("status", match="GET /audience/sections", count=100, status=429, retry_after=60)
    waits = []
    hook = ApsisOneHook(retry_policy=RetryPolicy(max_attempts=10, sleep=waits.append))
    with pytest.raises(Exception):
        hook.list_sections()
    assert sum(waits) < 100


# --- 11: the token request is never re-posted to another host ------------------------------------------
def test_redirected_token_request_never_reaches_the_other_host(servers, monkeypatch):
    elsewhere = servers(lambda r: response(200, '{"access_token": "x", "expires_in": 60}'))
    api = servers(lambda r: response(307, "", {"Location": f"http://localhost:{elsewhere.port}/oauth/token"}))
    connect(monkeypatch, api)
    with pytest.raises(VendorRedirectError, match="POST /oauth/token"):
        ApsisOneHook().list_sections()
    assert elsewhere.received == []


# --- 12: the upload URL a response supplies -------------------------------------------------------------
def test_upload_url_on_an_internal_host_is_refused(apsis, servers, tmp_path):
    apsis()
    internal = servers(lambda r: response(204))
    ticket = {"import_id": "i-1", "file_upload_url": f"http://localhost:{internal.port}/upload",
              "file_upload_body": {"key": "k", "content-type": "text/csv"}}
    with pytest.raises(UntrustedURLError):
        ApsisOneHook().upload_import_file(ticket, write_csv(tmp_path / "p.csv", [["email"], ["a@example.com"]]))
    assert internal.received == []


# --- 15: HTML on a 200 ---------------------------------------------------------------------------------
def test_html_status_answers_end_the_trigger_with_one_error_event(servers, monkeypatch):
    def answer(received):
        if received.path == "/oauth/token":
            return response(200, json.dumps({"access_token": "t-1", "expires_in": 3600}))
        return response(200, "<html>Bad gateway page</html>", content_type="text/html")

    connect(monkeypatch, servers(answer))
    trigger = JobTrigger(vendor="apsis_one", conn_id="apsis_one_default", job={"section": SECTION, "import_id": "i-1"},
                                    deadline=time.time() + 600, poll_interval=0, max_transient_errors=2)

    async def collect():
        return [event.payload async for event in trigger.run()]

    (event,) = asyncio.run(collect())
    assert event["status"] == "error" and "not valid JSON" in event["message"] and "HTTP 200" in event["message"]
