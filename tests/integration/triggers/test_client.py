"""The async client triggers share: one per connection and event loop, and kept-alive connections that a
server closes do not fail a poll."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from airflow_provider_profiles.triggers.base import first_poll_fraction
from tests.echo_hook import EchoHook, EchoTrigger

SECRET = "trigger-log-secret-9f2c"


class ClosesKeptAliveConnections:
    """A raw HTTP server on 127.0.0.1 whose idle timeout always wins the race: it answers the first
    request of each connection with keep-alive, then closes the connection when the next request on it
    arrives, without answering (what a client sees when a server closes a connection it is about to
    reuse). ``statuses`` are the job statuses answered, in turn."""

    def __init__(self, statuses: list[str], close_after_answer: bool = False):
        self.statuses, self.close_after_answer = list(statuses), close_after_answer
        self.answered, self.dropped, self.connections = 0, 0, 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            for served in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if served == 1:  # the second request on a kept-alive connection: closed unanswered
                    self.dropped += 1
                    return
                status = self.statuses[min(self.answered, len(self.statuses) - 1)]
                self.answered += 1
                body = json.dumps({"id": "1", "status": status}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                if self.close_after_answer:  # its idle timeout ends before the next poll comes
                    return

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def closing_server(airflow_connection):
    server = ClosesKeptAliveConnections(["running", "running", "done"])
    # max_attempts=1: the hook's retry policy does not hide a failed request; the trigger tolerates none
    airflow_connection("echo_default", "echo", password=SECRET, extra={"base_url": server.url, "max_attempts": 1})
    yield server
    server.close()


async def test_a_server_closing_kept_alive_connections_fails_no_poll(closing_server):
    trigger = EchoTrigger(vendor="echo", conn_id="echo_default", job={"job_id": "1"}, deadline=time.time() + 60,
                          poll_interval=0.05, max_transient_errors=0)
    events = [event.payload async for event in trigger.run()]
    assert [e["status"] for e in events] == ["success"], events
    # the second and third polls each met a connection the server closed, and were sent again on a new one
    assert closing_server.answered == 3 and closing_server.dropped == 2 and closing_server.connections == 3


async def test_a_connection_the_server_closed_between_two_polls_fails_no_poll(airflow_connection):
    server = ClosesKeptAliveConnections(["running", "running", "done"], close_after_answer=True)
    # the client would keep the connection a minute: the server's close is what it meets
    airflow_connection("echo_default", "echo", password=SECRET,
                       extra={"base_url": server.url, "max_attempts": 1, "keepalive_expiry": 60})
    try:
        trigger = EchoTrigger(vendor="echo", conn_id="echo_default", job={"job_id": "1"},
                              deadline=time.time() + 60, poll_interval=0.05, max_transient_errors=0)
        events = [event.payload async for event in trigger.run()]
    finally:
        server.close()
    assert [e["status"] for e in events] == ["success"], events
    assert server.answered == 3 and server.dropped == 0 and server.connections == 3


async def test_a_post_on_a_closed_kept_alive_connection_is_not_sent_again(closing_server):
    from airflow_provider_profiles.hooks.base import VendorConnectionError

    hook = EchoHook("echo_default")
    try:
        await hook.arequest("GET", "/jobs/1")
        with pytest.raises(VendorConnectionError):
            await hook.arequest("POST", "/jobs", json={})
    finally:
        await hook.aclose()
    assert closing_server.dropped == 1 and closing_server.connections == 1


@pytest.fixture
def echo_connection(airflow_connection):
    airflow_connection("echo_default", "echo", password="k", extra={"base_url": "http://127.0.0.1:9"})
    airflow_connection("echo_other", "echo", password="k", extra={"base_url": "http://127.0.0.1:9"})


async def test_hooks_of_one_connection_in_one_loop_share_one_client_closed_by_the_last(echo_connection):
    first, second, other = EchoHook("echo_default"), EchoHook("echo_default"), EchoHook("echo_other")
    shared = await first.aclient()
    assert await second.aclient() is shared and await first.aclient() is shared
    assert await other.aclient() is not shared  # another connection: a client of its own
    await first.aclose()
    assert not shared.closed  # the second hook still uses it
    await second.aclose()
    assert shared.closed
    third = EchoHook("echo_default")
    assert await third.aclient() is not shared  # a new user after the last one left gets a new client
    await third.aclose()
    await other.aclose()


def test_two_event_loops_never_share_a_client(echo_connection):
    hook, other_hook = EchoHook("echo_default"), EchoHook("echo_default")
    loop, other_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        in_other = other_loop.run_until_complete(other_hook.aclient())
        here = loop.run_until_complete(hook.aclient())
        assert here is not in_other
        # a hook carried into another loop leaves its client behind and takes that loop's one
        assert other_loop.run_until_complete(hook.aclient()) is in_other
        assert not here.closed  # its loop is not running: it is closed there, by its owner
        loop.run_until_complete(here.close())
        other_loop.run_until_complete(hook.aclose())
        assert not in_other.closed  # the other hook still uses it
        other_loop.run_until_complete(other_hook.aclose())
        assert in_other.closed
    finally:
        loop.close()
        other_loop.close()


def test_first_polls_are_spread_over_the_interval_and_stable():
    fractions = [first_poll_fraction("c", {"execution_id": str(n)}) for n in range(1000)]
    assert fractions == [first_poll_fraction("c", {"execution_id": str(n)}) for n in range(1000)]
    buckets = [0] * 10
    for fraction in fractions:
        assert 0 <= fraction < 1
        buckets[int(fraction * 10)] += 1
    assert min(buckets) > 50  # about 100 each; none empty or crowded


async def test_a_trigger_logs_each_change_and_a_heartbeat_never_the_key(closing_server, monkeypatch, capsys, caplog):
    from airflow_provider_profiles.triggers import base

    monkeypatch.setattr(base, "HEARTBEAT_SECONDS", 0.0)  # every unchanged poll is due a heartbeat
    trigger = EchoTrigger(vendor="echo", conn_id="echo_default", job={"job_id": "1"}, deadline=time.time() + 60,
                          poll_interval=0.05, max_transient_errors=0)
    events = [event.payload async for event in trigger.run()]
    assert [e["status"] for e in events] == ["success"]
    logged = capsys.readouterr().out + caplog.text
    assert "waiting for echo job {'job_id': '1'}" in logged
    assert "echo job {'job_id': '1'} is running" in logged
    assert "still running after 2 status checks" in logged
    assert "ended done: firing success" in logged
    assert SECRET not in logged
