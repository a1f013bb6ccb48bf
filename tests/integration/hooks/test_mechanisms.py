"""The shared hook mechanisms against the emulators and a misbehaving server, over real HTTP.

- the capacity wait (``CapacityWait``): keeps trying past the retry policy's 429s until a deadline,
  then raises the 429 naming what it waited for. Its waits advance the emulator's clock: no sleeping.
- declared calls (``Call`` and plans of them): one declaration gives the same result through the sync
  client and the async one, and the async run never touches the sync client.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import requests

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook, ImportSpec
from airflow_provider_profiles.hooks.base import (
    Call,
    CapacityWait,
    RetryPolicy,
    SharedPause,
    VendorNotFoundError,
    VendorRateLimitError,
)
from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from tests.echo_hook import EchoHook
from tests.integration.hooks.test_apsis_one_support import FAST, PROFILES, SECTION, connect, write_csv
from tests.misbehaving_server import response

SPEC = ImportSpec(keyspace="email", keyspace_column="email", attributes={"first_name": "First name", "city": "City"})
CHANGES = '{"customer_id":"a","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n'


class EmulatedTime:
    """The retry policy's clock and sleep: a sleep advances the emulator's clock instead of waiting.

    Where a job's end decides the count of tries, its emulator runs with ``time_scale=0``: time
    moves only by these sleeps, so a slow machine cannot end a job early."""

    def __init__(self, server):
        self.server, self.now, self.slept = server, time.time(), []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.server.emulator.clock.advance(seconds)

    def policy(self) -> RetryPolicy:  # one attempt: what follows is the capacity wait alone
        return RetryPolicy(max_attempts=1, sleep=self.sleep, clock=self.clock)


# --- the capacity wait -------------------------------------------------------------------------------
@pytest.fixture
def localytics(emulator, airflow_connection):
    def start(**extra):
        server = emulator("localytics", upload_limit=[1, 3600])  # one upload per emulated hour
        conn_id = f"localytics_{uuid.uuid4().hex[:8]}"
        airflow_connection(conn_id, "localytics", login="localytics-key", password="localytics-secret", host=server.url,
                           extra={"org_id": "60", **extra})
        emulated = EmulatedTime(server)
        return server, emulated, LocalyticsHook(conn_id, retry_policy=emulated.policy())

    return start


def test_capacity_wait_waits_the_vendors_retry_after_then_sends(localytics, tmp_path):
    server, emulated, hook = localytics()  # upload_max_wait: 2 hours by default
    changes = tmp_path / "changes.json"
    changes.write_text(CHANGES)
    hook.upload_profiles(changes)
    hook.upload_profiles(changes)  # refused until the emulated hour is over: one wait, then sent
    [waited] = emulated.slept
    assert 3500 < waited <= 3601
    assert len(server.emulator.jobs) == 2
    assert server.emulator.throttled["upload"] == 1


def test_capacity_wait_gives_up_at_once_when_retry_after_ends_past_the_deadline(localytics, tmp_path):
    server, emulated, hook = localytics(upload_max_wait=1800)
    changes = tmp_path / "changes.json"
    changes.write_text(CHANGES)
    hook.upload_profiles(changes)
    with pytest.raises(VendorRateLimitError, match=r"still no profile upload slot \(Localytics takes 10 per hour\) "
                                                   r"\(waited until .*Retry-After \d+s ends past the deadline\)"):
        hook.upload_profiles(changes)
    assert emulated.slept == []  # no pointless wait
    assert len(server.emulator.jobs) == 1


def test_capacity_wait_tries_at_its_interval_until_the_deadline_then_names_what_it_waited_for(
        emulator, monkeypatch, tmp_path):
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 1000, "slot_retry_after": 1, "time_scale": 0})
    connect(monkeypatch, server, slot_wait_interval=15)
    emulated = EmulatedTime(server)
    hook = ApsisOneHook(retry_policy=emulated.policy())
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    for _ in range(3):  # the account's 3 slots, busy for 1000 emulated seconds
        hook.upload_import_file(hook.create_profile_import(SECTION, SPEC), data)
    with pytest.raises(VendorRateLimitError, match=r"Apsis One API POST .*/imports -> HTTP 429: .*; still no free "
                                                   r"import slot .*\(waited until .*: none came by the deadline\)"):
        hook.create_profile_import(SECTION, SPEC, wait_for_slot_until=emulated.now + 60)
    assert emulated.slept == [15, 15, 15, 15]  # tries at 0, 15, 30, 45 and 60 s
    assert server.emulator.snapshot()["rejected_creates"] == 5


def test_capacity_wait_ends_when_a_slot_frees(emulator, monkeypatch, tmp_path):
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 40, "slot_retry_after": 1, "time_scale": 0})
    connect(monkeypatch, server, slot_wait_interval=15)
    emulated = EmulatedTime(server)
    hook = ApsisOneHook(retry_policy=emulated.policy())
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    for _ in range(3):
        hook.upload_import_file(hook.create_profile_import(SECTION, SPEC), data)
    ticket = hook.create_profile_import(SECTION, SPEC, wait_for_slot_until=emulated.now + 3600)
    assert emulated.slept == [15, 15, 15]  # the imports end after 40 emulated seconds
    assert ticket["import_id"] in server.emulator.snapshot()["imports"]


def test_callers_sharing_a_pause_hold_off_together(servers, airflow_connection):
    refusals = [response(429, '{"message": "slow down"}', {"Retry-After": "5"})]
    server = servers(lambda received: refusals.pop() if refusals else response(200, '{"ok": true}'))
    airflow_connection("echo_pool", "echo", password="key", extra={"base_url": server.url})
    now, slept, pool = [time.time()], [], SharedPause()

    def room() -> CapacityWait:
        return CapacityWait("room under the limit", now[0] + 60, interval=1, pause=pool)

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:  # while the first caller waits, another caller of its pool starts
            assert second.request("GET", "/second", wait_for_capacity=room()).json() == {"ok": True}
        now[0] += seconds

    policy = RetryPolicy(max_attempts=1, sleep=sleep, clock=lambda: now[0])
    first, second = EchoHook("echo_pool", retry_policy=policy), EchoHook("echo_pool", retry_policy=policy)
    assert first.request("GET", "/first", wait_for_capacity=room()).json() == {"ok": True}
    assert slept == [5, 5]  # the second caller waited out the first one's refusal before sending at all
    assert [r.path for r in server.received] == ["/first", "/second", "/first"]


# --- declared calls ----------------------------------------------------------------------------------
def both_ways(hook, declare, monkeypatch):
    """The declaration's result through ``call``, then through ``acall`` with the sync client unusable."""
    synced = hook.call(declare())

    def no_blocking_client(*args, **kwargs):
        raise AssertionError("the async run used the sync client")

    async def run_async():
        async_hook = type(hook)(hook.conn_id)
        try:
            await async_hook.aconnection()
            return await async_hook.acall(declare())
        finally:
            await async_hook.aclose()

    monkeypatch.setattr(requests.Session, "request", no_blocking_client)
    return synced, asyncio.run(run_async())


@pytest.fixture
def api(servers, airflow_connection):
    answers = {"/jobs/7": (200, '{"status": "done", "lines": ["a", "b"]}'), "/jobs/7/log": (200, "line 1\nline 2\n")}
    server = servers(lambda received: response(*answers.get(received.path, (404, '{"message": "no such job"}'))))
    airflow_connection("echo_declared", "echo", password="key", extra={"base_url": server.url, "max_attempts": 1})
    return server, EchoHook("echo_declared")


def test_one_declared_call_gives_the_same_result_sync_and_async(api, monkeypatch):
    server, hook = api
    synced, awaited = both_ways(hook, lambda: Call("GET", "/jobs/7", lambda answer: len(answer.json()["lines"])),
                                monkeypatch)
    assert synced == awaited == 2
    assert [r.path for r in server.received] == ["/jobs/7", "/jobs/7"]


def test_a_plan_gets_each_result_or_error_at_its_yield_sync_and_async(api, monkeypatch):
    server, hook = api

    def plan():
        try:
            yield Call("GET", "/jobs/8")
        except VendorNotFoundError as missing:  # raised where it was asked for: the plan decides
            first = f"missing ({missing.status})"
        job = yield Call("GET", "/jobs/7")  # the hook's default parse: the JSON body
        log = yield Call("GET", "/jobs/7/log", lambda answer: answer.text.splitlines())
        return first, job["status"], log

    synced, awaited = both_ways(hook, plan, monkeypatch)
    assert synced == awaited == ("missing (404)", "done", ["line 1", "line 2"])
    assert [r.path for r in server.received] == ["/jobs/8", "/jobs/7", "/jobs/7/log"] * 2


def test_an_error_the_plan_does_not_catch_reaches_the_caller_both_ways(api):
    _, hook = api

    def plan():
        yield Call("GET", "/jobs/7")
        yield Call("GET", "/jobs/9")
        return "not reached"

    with pytest.raises(VendorNotFoundError, match="no such job"):
        hook.call(plan())

    async def run_async():
        try:
            return await hook.acall(plan())
        finally:
            await hook.aclose()

    with pytest.raises(VendorNotFoundError, match="no such job"):
        asyncio.run(run_async())
