"""The shared HTTP core against misbehaving servers on 127.0.0.1: redirects, HTML bodies, slow drips,
server-supplied URLs, broken connection settings. Each test states the safe outcome."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from airflow.providers.common.compat.sdk import AirflowNotFoundException

from airflow_provider_profiles.hooks.base import (
    ConnectionConfigError,
    RetryPolicy,
    UntrustedURLError,
    VendorConnectionError,
    VendorRedirectError,
    VendorResponseError,
)
from tests.echo_hook import EchoHook
from tests.misbehaving_server import drip, response

SECRET = "s3cret-KEY-hostile-7d1f0a9e4c"


@pytest.fixture
def waits():
    return []


@pytest.fixture
def echo(airflow_connection, waits):
    """``echo(base_url, **extra)`` -> an EchoHook on a connection to that URL, retry waits recorded."""

    def make(base_url, **extra):
        airflow_connection("echo_default", "echo", password=SECRET, extra={"base_url": base_url, **extra})

        async def record(seconds):
            waits.append(seconds)

        return EchoHook(retry_policy=RetryPolicy(max_attempts=3, sleep=waits.append, asleep=record))

    return make


def run_async(hook, call):
    """Await ``call`` (a coroutine of ``hook``) in a loop of its own, closing the hook's async client after."""

    async def run():
        try:
            return await call
        finally:
            await hook.aclose()

    return asyncio.run(run())


def other_host(server) -> str:
    """The same server under another host name: 127.0.0.1 and localhost are different hosts."""
    return f"http://localhost:{server.port}"


# --- 11: redirects ---------------------------------------------------------------------------------
def test_cross_host_redirect_is_not_followed_and_carries_no_key(servers, echo):
    elsewhere = servers(lambda r: response(200, "{}"))
    api = servers(lambda r: response(302, "", {"Location": f"{other_host(elsewhere)}/steal"}))
    hook = echo(api.url)
    with pytest.raises(VendorRedirectError, match="GET /items/a"):
        hook.request("GET", "/items/a")
    assert elsewhere.received == []
    with pytest.raises(VendorRedirectError):
        run_async(hook, hook.arequest("GET", "/items/a"))
    assert elsewhere.received == []


@pytest.mark.parametrize("status", [302, 303, 307])
def test_redirected_post_is_an_error_not_a_silent_get(servers, echo, status):
    def answer(received):
        if received.method == "POST":
            return response(status, "", {"Location": "/done"})
        return response(200, '{"ok": true}')

    api = servers(answer)
    hook = echo(api.url)
    with pytest.raises(VendorRedirectError, match="POST /items") as raised:
        hook.request("POST", "/items", json={"key": "b"})
    assert raised.value.status == status and not raised.value.retryable
    with pytest.raises(VendorRedirectError, match="POST /items"):
        run_async(hook, hook.arequest("POST", "/items", json={"key": "b"}))
    assert [r.method for r in api.received] == ["POST", "POST"]  # nothing replayed as GET


def test_same_host_get_redirect_is_followed(servers, echo):
    def answer(received):
        if received.path == "/old":
            return response(301, "", {"Location": "/new"})
        return response(200, '{"at": "%s"}' % received.path)

    hook = echo(servers(answer).url)
    assert hook.request("GET", "/old").json() == {"at": "/new"}
    assert run_async(hook, hook.arequest("GET", "/old")).json() == {"at": "/new"}


# --- 15: bodies that are not JSON ------------------------------------------------------------------
@pytest.mark.parametrize("body, content_type", [("<html><body>Maintenance</body></html>", "text/html"),
                                                ('{"items": [1, 2', "application/json")])
def test_200_with_a_body_that_is_not_json_is_a_typed_error(servers, echo, body, content_type):
    hook = echo(servers(lambda r: response(200, body, content_type=content_type)).url)
    with pytest.raises(VendorResponseError, match=r"GET /items/a -> HTTP 200") as raised:
        hook.request("GET", "/items/a").json()
    assert raised.value.status == 200
    with pytest.raises(VendorResponseError):
        run_async(hook, hook.arequest("GET", "/items/a")).json()


# --- 14: an overall deadline per request -------------------------------------------------------------
def test_slow_drip_body_is_bounded_by_the_request_deadline(servers, echo):
    body = b'{"v": "' + b"x" * 200 + b'"}'
    head = response(200, body)[: -len(body)]
    hook = echo(servers(lambda r: drip(head, body, every=0.05)).url, request_deadline=0.5)
    with pytest.raises(VendorConnectionError, match="deadline"):
        hook.request("GET", "/items/a")
    with pytest.raises(VendorConnectionError, match="deadline"):
        run_async(hook, hook.arequest("GET", "/items/a"))


# --- 13 and 16: connection settings that cannot be used ----------------------------------------------
# Airflow >= 3.2 hands the hook an environment connection's unreadable extras and the hook refuses
# them; older Airflow refuses such a connection itself ("isn't defined"). Either way the call fails
# naming the connection, before anything is sent.
REFUSED = (ConnectionConfigError, AirflowNotFoundException)


def test_unreadable_extras_refuse_to_run(servers, airflow_connection):
    api = servers(lambda r: response(200, "{}"))
    airflow_connection("echo_default", "echo", password=SECRET,
                       extra='{"base_url": "%s", "signing_secret": "xtra-%s", oops' % (api.url, SECRET))
    with pytest.raises(REFUSED, match="echo_default") as raised:
        EchoHook().request("GET", "/items/a")
    if isinstance(raised.value, ConnectionConfigError):
        assert re.search(r"echo_default.*extra.*line 1 column", str(raised.value))
    assert SECRET not in str(raised.value)
    assert api.received == []


def test_extras_that_are_not_an_object_refuse_to_run(airflow_connection):
    airflow_connection("echo_default", "echo", password=SECRET, extra='["base_url"]')
    with pytest.raises(REFUSED, match="echo_default") as raised:
        EchoHook().request("GET", "/items/a")
    if isinstance(raised.value, ConnectionConfigError):
        assert "JSON object" in str(raised.value)


@pytest.mark.parametrize("base_url", ["htp:/x", "http://", "https:///v1", "file:///etc/passwd"])
def test_malformed_base_url_is_a_configuration_error_said_once(echo, waits, base_url):
    hook = echo(base_url)
    with pytest.raises(ConnectionConfigError, match="base URL"):
        hook.request("GET", "/items/a")
    assert waits == []


# --- 12: URLs a response supplies ---------------------------------------------------------------------
def test_supplied_url_on_another_private_host_is_refused(servers, echo):
    internal = servers(lambda r: response(200, "internal secrets"))
    api = servers(lambda r: response(200, "{}"))
    hook = echo(api.url)
    for url in (f"{other_host(internal)}/latest/meta-data", "http://169.254.169.254/latest/meta-data",
                "file:///etc/passwd", f"https://localhost:{internal.port}/x"):
        with pytest.raises(UntrustedURLError):
            hook.fetch_supplied_url("GET", url)
        with pytest.raises(UntrustedURLError):
            run_async(hook, hook.afetch_supplied_url("GET", url))
    assert internal.received == []


def test_supplied_url_on_the_connections_own_host_or_a_trusted_host_is_used(servers, echo):
    files = servers(lambda r: response(200, "log line", content_type="text/plain"))
    hook = echo(files.url)
    assert hook.fetch_supplied_url("GET", f"{files.url}/errors.json").text == "log line"
    assert "x-api-key" not in files.received[-1].headers  # never credentials, even to its own host
    assert run_async(hook, hook.afetch_supplied_url("GET", f"{files.url}/errors.json")).text == "log line"
    assert "x-api-key" not in files.received[-1].headers
    trusting = echo("http://127.0.0.1:9", trusted_hosts=["localhost"])
    assert trusting.fetch_supplied_url("GET", f"{other_host(files)}/errors.json").text == "log line"
    assert run_async(trusting, trusting.afetch_supplied_url("GET", f"{other_host(files)}/errors.json")).text == "log line"


def test_a_checked_supplied_host_is_connected_to_at_the_checked_addresses_only(servers):
    """The async fetch of a public supplied URL connects where the check looked, with no second DNS
    lookup: here a name nothing resolves, checked as 127.0.0.1, reaches the server on 127.0.0.1."""
    import socket

    import aiohttp

    from airflow_provider_profiles.hooks.base import _CheckedAddresses, _new_session

    files = servers(lambda r: response(200, "log line", content_type="text/plain"))
    checked = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

    async def fetch(url):
        connector = aiohttp.TCPConnector(use_dns_cache=False, resolver=_CheckedAddresses("files.invalid", checked))
        async with _new_session(connector, (5.0, 5.0)) as session, session.get(url) as answer:
            return await answer.text()

    assert asyncio.run(fetch(f"http://files.invalid:{files.port}/errors.json")) == "log line"
    with pytest.raises(aiohttp.ClientConnectorError):  # any other name: nothing to connect to
        asyncio.run(fetch(f"http://other.invalid:{files.port}/errors.json"))
    assert len(files.received) == 1 and files.received[0].headers["host"] == f"files.invalid:{files.port}"


def test_the_sync_fetch_reaches_a_checked_host_at_its_checked_addresses_only(servers, echo):
    """The sync half's connections to a checked host go where the check looked: a name nothing
    resolves, checked as 127.0.0.1, reaches the server there; another name is looked up as usual."""
    import socket

    from airflow_provider_profiles.hooks import base

    files = servers(lambda r: response(200, "log line", content_type="text/plain"))
    hook = echo("http://127.0.0.1:9")
    token = base._checked_host.set(("files.invalid", [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]))
    try:
        answer = hook.request("GET", f"http://files.invalid:{files.port}/errors.json", authenticate=False)
        with pytest.raises(VendorConnectionError):  # no checked address: its own lookup fails
            hook.request("GET", f"http://other.invalid:{files.port}/errors.json", authenticate=False)
    finally:
        base._checked_host.reset(token)
    assert answer.text == "log line"
    assert len(files.received) == 1 and files.received[0].headers["host"] == f"files.invalid:{files.port}"


@pytest.mark.parametrize("fetch", ["sync", "async"])
def test_a_supplied_host_is_looked_up_once_so_a_second_answer_cannot_redirect_it(echo, monkeypatch, fetch):
    """DNS rebinding: the name answers a public address to the check, then a loopback one. The
    fetch connects to the checked public address (unreachable here: no route out) and never
    looks the name up again."""
    import socket

    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, *args, **kwargs):
        if host != "files.example.com":
            return real(host, *args, **kwargs)
        lookups.append(host)
        address = "198.51.100.7" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, args[0] if args else 443))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    hook = echo("http://127.0.0.1:9", connect_timeout=1)
    # 198.51.100.7 (a documentation range, unreachable here) stands for a public address: the
    # check is told to pass it, as it would a global one
    monkeypatch.setattr(type(hook), "_check_public", lambda self, url, resolved: None)
    url = "https://files.example.com/errors.json"
    with pytest.raises(VendorConnectionError):
        if fetch == "sync":
            hook.fetch_supplied_url("GET", url)
        else:
            run_async(hook, hook.afetch_supplied_url("GET", url))
    assert lookups == ["files.example.com"]  # the check's lookup only, over every try


def test_both_halves_send_a_url_as_the_sync_half_does(servers, echo):
    """A supplied URL (a presigned link: its signature covers the query as written) reaches the
    server as requests sends it, from the async half too: ``%2F`` stays encoded, nothing illegal
    goes out raw."""
    files = servers(lambda r: response(200, "log line", content_type="text/plain"))
    hook = echo(files.url)
    target = f"{files.url}/errors/log%20file.ndjson?X-Amz-Credential=AKIA%2F20240101%2Fus-east-1&sig=a%3D&t=~"
    hook.fetch_supplied_url("GET", target)
    run_async(hook, hook.afetch_supplied_url("GET", target))
    hook.request("GET", "/items/a b")
    run_async(hook, hook.arequest("GET", "/items/a b"))
    paths = [received.path for received in files.received]
    assert paths[0] == "/errors/log%20file.ndjson?X-Amz-Credential=AKIA%2F20240101%2Fus-east-1&sig=a%3D&t=~"
    assert paths[1] == paths[0] and paths[3] == paths[2] == "/items/a%20b"


def test_both_halves_send_the_same_query_parameters(servers, echo):
    """A bool goes out as ``true``/``false`` and a None is left out, from either half."""
    api = servers(lambda r: response(200, "{}"))
    hook = echo(api.url)
    params = {"hardDelete": True, "dryRun": False, "cursor": None, "pageSize": 1}
    hook.request("GET", "/items", params=params)
    run_async(hook, hook.arequest("GET", "/items", params=params))
    assert [received.path for received in api.received] == ["/items?hardDelete=true&dryRun=false&pageSize=1"] * 2


def test_slow_drip_headers_are_cut_at_the_request_deadline(servers, echo):
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400 + b"\r\nContent-Length: 2\r\n\r\n{}"
    sent: list[int] = []
    api = servers(lambda r: drip(b"", head, every=0.05, sent=sent))
    hook = echo(api.url, request_deadline=0.5)
    with pytest.raises(VendorConnectionError, match="deadline"):
        hook.request("GET", "/items/a")
    with pytest.raises(VendorConnectionError, match="deadline"):
        run_async(hook, hook.arequest("GET", "/items/a"))
    give_up = time.monotonic() + 60
    while len(sent) < len(api.received) and time.monotonic() < give_up:  # each drip ends at the hang-up
        time.sleep(0.05)
    # every attempt was cut near its deadline, long before the headers end (0.5 s is ~10 of 450 bytes)
    assert len(sent) == len(api.received) and max(sent) < len(head) // 2


def test_waiting_for_the_client_side_limiter_does_not_use_up_the_call_budget(servers, echo):
    api = servers(lambda r: response(200, "{}"))
    hook = echo(api.url, call_deadline=0.5, rate_limits={"default": [1, 1.0]})
    hook.request("GET", "/items/a")
    assert hook.request("GET", "/items/a").json() == {}  # waited ~1 s for its slot, past the 0.5 s budget
