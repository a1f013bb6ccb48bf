"""The shared hook mechanisms against the emulators and a misbehaving server, over real HTTP.

- the capacity wait (``CapacityWait``): keeps trying past the retry policy's 429s until a deadline,
  then raises the 429 naming what it waited for. Its waits advance the emulator's clock: no sleeping.
"""

from __future__ import annotations

import time
import uuid

import pytest

from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook, ImportSpec
from airflow_provider_profiles.hooks.base import RetryPolicy, VendorRateLimitError
from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from tests.integration.test_apsis_one_support import FAST, PROFILES, SECTION, connect, write_csv

SPEC = ImportSpec(keyspace="email", keyspace_column="email", attributes={"first_name": "First name", "city": "City"})
CHANGES = '{"customer_id":"a","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n'


class EmulatedTime:
    """The retry policy's clock and sleep: a sleep advances the emulator's clock instead of waiting."""

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
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 1000, "slot_retry_after": 1})
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
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 40, "slot_retry_after": 1})
    connect(monkeypatch, server, slot_wait_interval=15)
    emulated = EmulatedTime(server)
    hook = ApsisOneHook(retry_policy=emulated.policy())
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    for _ in range(3):
        hook.upload_import_file(hook.create_profile_import(SECTION, SPEC), data)
    ticket = hook.create_profile_import(SECTION, SPEC, wait_for_slot_until=emulated.now + 3600)
    assert emulated.slept == [15, 15, 15]  # the imports end after 40 emulated seconds
    assert ticket["import_id"] in server.emulator.snapshot()["imports"]
