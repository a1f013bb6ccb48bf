"""One real Airflow (api-server, scheduler with LocalExecutor, dag-processor, triggerer) for the e2e suite."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import pytest

from tests.e2e.cluster import AirflowCluster, airflow_home


# The per-vendor example DAGs; they touch disjoint data, so they run at the same time.
EXAMPLE_DAGS = [
    "example_gainsight_px",
    "example_apsis_one",
    "example_localytics_profiles",
    "example_localytics_audiences",
    "example_mediarithmics",
]
END_TO_END_DAG = "profiles_end_to_end"

# Distinctive secrets: the emulators require them, and the audit looks for them everywhere afterwards.
SECRETS = {
    "gainsight_px": {"api_key": "gpx-E2E-SECRET-7f3a9c"},
    "apsis_one": {"client_secret": "apsis-E2E-SECRET-1b8d4e"},
    "localytics": {"api_secret": "loc-E2E-SECRET-9e2f6a"},
    "mediarithmics": {"token": "mics-E2E-SECRET-4c7b1d"},
    "echo": {"api_key": "echo-E2E-SECRET-3a5f0c"},
}
ISSUED_TOKENS: set[str] = set()  # bearer tokens the Apsis emulator handed out during the session

# Remote jobs that take a few seconds, and whose end the emulator reports only from the second status
# read after it (hold_ended_jobs): an operator or sensor checks once before it defers, so however late it
# starts on a loaded machine, that check finds the job running and every deferrable task really goes to
# the triggerer, whose read is the first to see the end. (The fault test's dropped and failed reads may
# still let a task see the end before deferring; that test does not require deferral.)
HOLD_THE_END = {"hold_ended_jobs": 1}
JOB_TIMINGS = {
    "apsis_one": {"queued_seconds": 2.0, "processing_seconds": 10.0, **HOLD_THE_END},
    "localytics": {"pending_seconds": 2.0, "running_seconds": 8.0, **HOLD_THE_END},
    "mediarithmics": {"pending_seconds": 2.0, "running_seconds": 4.0, **HOLD_THE_END},
    # echo_long_waits' jobs move only when test_mechanics_e2e advances the clock, after its triggerer restart
    "echo": {"time_scale": 0},
}

# A longer, faster retry policy through the connections (extras the hooks read): the fault test chains
# up to 9 failures on one request, and its worker-retry case exhausts every attempt on purpose.
RETRY_EXTRAS = {"max_attempts": 10, "backoff_max": 1.0}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    home, dags = airflow_home(tmp_path_factory, "PROFILES_E2E_HOME", "e2e-airflow", ("echo_jobs.py", "echo_long_waits.py"))
    config = {vendor: {**SECRETS.get(vendor, {}), **JOB_TIMINGS.get(vendor, {})} for vendor in {*SECRETS, *JOB_TIMINGS}}
    extras = {vendor: RETRY_EXTRAS for vendor in SECRETS}
    cluster = AirflowCluster(home, dags, emulator_config=config, connection_extras=extras)
    try:
        yield cluster.up()
    finally:
        cluster.down()


@dataclass
class Phase:
    """Runs started together on freshly reset emulators, and what the emulators held once all had ended."""

    name: str
    runs: dict[str, str]  # dag_id -> run_id
    states: dict[str, str]  # dag_id -> final run state
    snapshots: dict[str, dict]  # vendor -> emulator snapshot
    counters: dict[str, dict]  # vendor -> requests per "METHOD path" (faulted ones included)
    seconds: float


def run_phase(cluster: AirflowCluster, name: str, dag_ids: list[str], *, reset: bool = True,
              before_trigger=None, **trigger_kwargs) -> Phase:
    """Reset the emulators, optionally prepare them (faults), run ``dag_ids`` at once and record the outcome."""
    if reset:
        for server in cluster.emulators.values():
            server.emulator.reset()
    if before_trigger:
        before_trigger(cluster)
    started = time.monotonic()
    runs = cluster.trigger_many(dag_ids, **trigger_kwargs)
    states = cluster.wait_runs(runs, timeout=420)
    emulators = {vendor: server.emulator for vendor, server in cluster.emulators.items()}
    # Apsis access tokens are secrets too; keep every one the phase issued for the audit.
    with emulators["apsis_one"].lock:
        ISSUED_TOKENS.update(emulators["apsis_one"].tokens)
    phase = Phase(name, runs, states, {v: e.snapshot() for v, e in emulators.items()},
                  {v: dict(e.counters) for v, e in emulators.items()}, time.monotonic() - started)
    # Kept next to the logs for a person looking at a failure.
    (cluster.home / f"phase-{name}.json").write_text(json.dumps(dataclasses.asdict(phase), indent=1, default=str))
    return phase


@pytest.fixture(scope="session")
def example_runs(cluster) -> Phase:
    """Shared by the examples and the secrets audit, so the example DAGs run once per session."""
    return run_phase(cluster, "examples", EXAMPLE_DAGS)
