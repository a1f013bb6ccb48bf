"""The emulator harness: control API (faults, counters, state, clock, reset) over HTTP, and the command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from airflow_provider_profiles.testing import serve
from airflow_provider_profiles.testing.base import Clock, SlidingWindowLimit
from tests.echo_emulator import EchoEmulator

HEADERS = {"X-Api-Key": "echo-key"}


@pytest.fixture
def server():
    with serve(EchoEmulator()) as server:
        yield server


def test_fault_api_serves_the_next_n_matching_requests(server):
    response = requests.post(f"{server.url}/_emulator/faults",
                             json={"kind": "status", "status": 429, "retry_after": 3, "count": 2, "match": "^GET /jobs/"})
    assert response.status_code == 201
    first = requests.get(f"{server.url}/jobs/1", headers=HEADERS)
    assert first.status_code == 429 and first.headers["Retry-After"] == "3"
    assert requests.get(f"{server.url}/jobs/1", headers=HEADERS).status_code == 429
    assert requests.get(f"{server.url}/jobs/1", headers=HEADERS).status_code == 404  # fault used up
    assert requests.post(f"{server.url}/jobs", headers=HEADERS, json={}).status_code == 201  # did not match
    counters = requests.get(f"{server.url}/_emulator/counters").json()
    assert counters == {"requests": {"GET /jobs/1": 3, "POST /jobs": 1}, "faults": {"status": 2}}


def test_drop_closes_the_connection_without_a_response(server):
    server.emulator.inject("drop", match="GET")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/jobs/1", headers=HEADERS)


def test_after_faults_let_the_vendor_act_then_lose_the_answer(server):
    server.emulator.inject("drop_after", match="POST /jobs")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{server.url}/jobs", headers=HEADERS, json={"duration": 1})
    server.emulator.inject("status_after", match="POST /jobs", status=502)
    assert requests.post(f"{server.url}/jobs", headers=HEADERS, json={"duration": 1}).status_code == 502
    assert sorted(requests.get(f"{server.url}/_emulator/state").json()["jobs"]) == ["1", "2"]  # both acted


def test_delay_fault_and_bad_fault_rejected(server):
    server.emulator.inject("delay", delay=0.3)
    response = requests.get(f"{server.url}/jobs/1", headers=HEADERS)
    assert response.status_code == 404 and response.elapsed.total_seconds() >= 0.3
    assert requests.post(f"{server.url}/_emulator/faults", json={"kind": "explode"}).status_code == 400


def test_state_clock_and_reset(server):
    requests.post(f"{server.url}/jobs", headers=HEADERS, json={"duration": 3600})
    assert requests.get(f"{server.url}/_emulator/state").json()["jobs"]["1"]["status"] == "queued"
    requests.post(f"{server.url}/_emulator/clock", json={"advance": 3600})
    assert requests.get(f"{server.url}/_emulator/state").json()["jobs"]["1"]["status"] == "done"
    requests.post(f"{server.url}/_emulator/reset")
    assert requests.get(f"{server.url}/_emulator/state").json() == {"items": {}, "jobs": {}}


def test_sliding_window_limit_on_emulated_time():
    clock = Clock(scale=1.0)
    limit = SlidingWindowLimit(2, 60, clock)
    assert limit.hit() == 0 and limit.hit() == 0
    assert 59 < limit.hit() <= 60
    clock.advance(61)
    assert limit.hit() == 0


def test_command_serves_an_emulator_until_terminated():
    process = subprocess.Popen([sys.executable, "-m", "airflow_provider_profiles.testing", "mediarithmics"],
                               stdout=subprocess.PIPE, text=True)
    try:
        vendor, url = process.stdout.readline().split()
        assert vendor == "mediarithmics"
        assert requests.get(f"{url}/_emulator/counters").json() == {"requests": {}, "faults": {}}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_loading_the_pytest_plugin_imports_no_server_and_no_emulator():
    """The plugin loads in every pytest session wherever the provider is installed: it must cost nothing
    until its fixture is used (uvicorn, starlette and the emulators are imported by the fixture)."""
    probe = ("import sys, airflow_provider_profiles.testing.pytest_plugin; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('uvicorn', 'starlette') "
             "or m.startswith('airflow_provider_profiles.testing.') and not m.endswith('pytest_plugin'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
