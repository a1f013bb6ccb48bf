"""Deferred waits survive the triggerer being killed and restarted under them."""

from __future__ import annotations

import signal

import pytest

pytestmark = pytest.mark.e2e


def test_triggerer_killed_and_restarted_while_tasks_wait(cluster):
    echo = cluster.emulators["echo"].emulator
    created_before = echo.counters["POST /jobs"]
    run_id = cluster.trigger("echo_long_waits")
    # The echo emulator's clock stands still (conftest), so no job ends before all four waits are in the
    # triggerer, however slow the machine. Kill it without warning, start a new one, then let the jobs end.
    cluster.wait_for(lambda: cluster.deferred_count() >= 4, 120, "four tasks to defer")
    cluster.kill("triggerer", signal.SIGKILL)
    cluster.start("triggerer")
    echo.clock.advance(25)  # the jobs' duration in tests/dags/echo_long_waits.py
    assert cluster.wait_run("echo_long_waits", run_id) == "success"
    states = cluster.task_states("echo_long_waits", run_id)
    assert all(state == "success" and tries == 1 for state, tries in states.values()), states
    assert echo.counters["POST /jobs"] - created_before == 4  # no job created twice
