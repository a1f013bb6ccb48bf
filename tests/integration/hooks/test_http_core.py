"""The shared HTTP core (hooks/base.py) against a real local server: retries, Retry-After, limits, errors, secrets."""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import pytest

from airflow_provider_profiles.hooks.base import (
    RateLimiter,
    RetryPolicy,
    VendorAuthError,
    VendorConnectionError,
    VendorNotFoundError,
    VendorRateLimitError,
    VendorServerError,
    parse_retry_after,
)
from tests.echo_hook import EchoHook

SECRET = "s3cret-KEY-5f4dcc3b5aa765d61d8327deb882cf99"


@pytest.fixture
def server(emulator):
    return emulator("echo", api_key=SECRET)


@pytest.fixture
def waits():
    return []


@pytest.fixture
def hook(server, airflow_connection, waits):
    """An echo hook whose retry waits are recorded instead of slept."""
    airflow_connection("echo_default", "echo", password=SECRET, extra={"base_url": server.url, "signing_secret": "xtra-SECRET-42"})

    async def record_async(seconds):
        waits.append(seconds)

    policy = RetryPolicy(max_attempts=4, backoff_initial=0.5, jitter=0.1, sleep=waits.append, asleep=record_async)
    return EchoHook(retry_policy=policy)


def requests_to(server, route: str) -> int:
    return server.emulator.counters[route]


# --- retry classification -------------------------------------------------------------------------
def test_idempotent_request_retried_with_exponential_backoff(hook, server, waits):
    hook.request("PUT", "/items/a", json={"v": 1})
    server.emulator.inject("status", match="GET /items/a", count=3, status=503)
    assert hook.request("GET", "/items/a").json() == {"v": 1}
    assert requests_to(server, "GET /items/a") == 4
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0.5 * 2**attempt <= wait <= 0.5 * 2**attempt + 0.1


def test_gives_up_after_max_attempts(hook, server, waits):
    server.emulator.inject("status", match="GET /items/a", count=10, status=502)
    with pytest.raises(VendorServerError) as raised:
        hook.request("GET", "/items/a")
    assert raised.value.attempts == 4 and raised.value.status == 502
    assert requests_to(server, "GET /items/a") == 4


def test_retry_after_seconds_honoured(hook, server, waits):
    hook.request("PUT", "/items/a", json={})
    server.emulator.inject("status", match="GET /items/a", count=2, status=429, retry_after=7)
    hook.request("GET", "/items/a")
    assert waits == [7.0, 7.0]


def test_retry_after_is_capped(server, airflow_connection, waits):
    airflow_connection("echo_default", "echo", password=SECRET, extra={"base_url": server.url})
    hook = EchoHook(retry_policy=RetryPolicy(retry_after_cap=30, sleep=waits.append))
    hook.request("PUT", "/items/a", json={})
    server.emulator.inject("status", match="GET /items/a", count=1, status=429, retry_after=3600)
    hook.request("GET", "/items/a")
    assert waits == [30]


def test_retry_after_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)
    assert parse_retry_after("12", now=now) == 12.0
    assert parse_retry_after("soon", now=now) is None


def test_rate_limit_exhausted_is_typed(hook, server):
    server.emulator.inject("status", match="GET /items/a", count=10, status=429, retry_after=1)
    with pytest.raises(VendorRateLimitError):
        hook.request("GET", "/items/a")


def test_post_not_retried_on_500(hook, server, waits):
    server.emulator.inject("status", match="POST /items", count=1, status=500)
    with pytest.raises(VendorServerError):
        hook.request("POST", "/items", json={"key": "b"})
    assert requests_to(server, "POST /items") == 1 and waits == []


def test_post_retried_on_429(hook, server):
    server.emulator.inject("status", match="POST /items", count=2, status=429, retry_after=1)
    assert hook.request("POST", "/items", json={"key": "b"}).status_code == 201
    assert requests_to(server, "POST /items") == 3
    assert list(server.emulator.snapshot()["items"]) == ["b"]


def test_post_not_retried_when_connection_dropped(hook, server):
    server.emulator.inject("drop", match="POST /items", count=1)
    with pytest.raises(VendorConnectionError):
        hook.request("POST", "/items", json={"key": "b"})
    assert requests_to(server, "POST /items") == 1


def test_get_retried_when_connection_dropped(hook, server):
    hook.request("PUT", "/items/a", json={"v": 2})
    server.emulator.inject("drop", match="GET /items/a", count=2)
    assert hook.request("GET", "/items/a").json() == {"v": 2}


def test_post_retried_when_connection_refused(airflow_connection, waits):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    airflow_connection("echo_default", "echo", password=SECRET, extra={"base_url": f"http://127.0.0.1:{port}"})
    hook = EchoHook(retry_policy=RetryPolicy(max_attempts=3, sleep=waits.append))
    with pytest.raises(VendorConnectionError) as raised:
        hook.request("POST", "/items", json={"key": "b"})
    assert raised.value.attempts == 3 and len(waits) == 2


@pytest.mark.parametrize("status, error", [(401, VendorAuthError), (403, VendorAuthError), (404, VendorNotFoundError)])
def test_client_errors_never_retried(hook, server, waits, status, error):
    server.emulator.inject("status", match="GET /items/a", count=5, status=status)
    with pytest.raises(error) as raised:
        hook.request("GET", "/items/a")
    assert raised.value.status == status
    assert requests_to(server, "GET /items/a") == 1 and waits == []


def test_wrong_key_is_an_auth_error_with_the_vendor_message(server, airflow_connection):
    airflow_connection("echo_default", "echo", password="wrong", extra={"base_url": server.url})
    with pytest.raises(VendorAuthError, match="invalid api key"):
        EchoHook().request("GET", "/items/a")


def test_stream_body_is_resent_whole_after_a_retry(hook, server):
    server.emulator.inject("status", match="PUT /items/s", count=1, status=503)
    hook.request("PUT", "/items/s", data=io.BytesIO(json.dumps({"payload": "x" * 1000}).encode()),
                 headers={"Content-Type": "application/json"})
    assert server.emulator.snapshot()["items"]["s"] == {"payload": "x" * 1000}


# --- async twin --------------------------------------------------------------------------------------
async def test_async_retries_like_sync(hook, server, waits):
    hook.request("PUT", "/items/a", json={"v": 3})
    server.emulator.inject("status", match="GET /items/a", count=2, status=503)
    server.emulator.inject("status", match="POST /items", count=1, status=500)
    response = await hook.arequest("GET", "/items/a")
    assert response.json() == {"v": 3} and len(waits) == 2
    with pytest.raises(VendorServerError):
        await hook.arequest("POST", "/items", json={"key": "c"})
    assert requests_to(server, "POST /items") == 1
    await hook.aclose()


async def test_async_honours_retry_after(hook, server, waits):
    hook.request("PUT", "/items/a", json={})
    server.emulator.inject("status", match="GET /items/a", count=1, status=429, retry_after=5)
    await hook.arequest("GET", "/items/a")
    assert waits == [5.0]
    await hook.aclose()


# --- rate limit --------------------------------------------------------------------------------------
def test_limiter_never_exceeds_its_rate_in_any_window():
    now = [0.0]
    limiter = RateLimiter(10, 1.0, clock=lambda: now[0])
    sends = []
    for _ in range(50):  # a burst of 50 arriving at once; each waits its reservation
        sends.append(now[0] + limiter.reserve())
    for start in sends:
        in_window = [t for t in sends if start <= t < start + 1.0]
        assert len(in_window) <= 10
    assert sends[-1] == pytest.approx(4.0)  # 10 at once, then 40 more at 10/s


def test_hook_requests_respect_the_connection_rate_limit(server, airflow_connection):
    airflow_connection("echo_default", "echo", password=SECRET,
                       extra={"base_url": server.url, "rate_limits": {"default": [10, 1]}})
    hook = EchoHook()
    hook.request("PUT", "/items/a", json={})
    started = time.monotonic()
    for _ in range(20):
        hook.request("GET", "/items/a")
    # 21 requests, at most 10 in any second: the 21st cannot go before 2 s after the first
    assert time.monotonic() - started >= 1.9


# --- secrets -----------------------------------------------------------------------------------------
def test_secrets_masked_and_absent_from_errors_and_logs(hook, server, capfd, caplog):
    from airflow.providers.common.compat.sdk import redact

    caplog.set_level(logging.DEBUG)
    server.emulator.inject("status", match="GET /items/a", count=1, status=400,
                           body={"message": f"key {SECRET} is not valid for xtra-SECRET-42"})
    with pytest.raises(Exception) as raised:
        hook.request("GET", "/items/a")
    assert SECRET not in str(raised.value) and "xtra-SECRET-42" not in str(raised.value)
    assert "***" in str(raised.value)
    assert redact(f"token={SECRET}") == "token=***"
    server.emulator.inject("status", match="GET /items/a", count=1, status=503,
                           body={"message": f"upstream rejected {SECRET}"})
    hook.request("PUT", "/items/a", json={})
    hook.request("GET", "/items/a")  # logs a retry warning quoting the vendor's message
    logged = capfd.readouterr().out + caplog.text
    assert "retrying" in logged and "upstream rejected ***" in logged
    assert SECRET not in logged
