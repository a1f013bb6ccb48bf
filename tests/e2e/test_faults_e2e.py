"""The example DAGs under a hostile network: 429 storms with Retry-After, 5xx bursts, dropped
connections and slow responses on every vendor, while all five run at once. Every run must still
succeed with each profile imported exactly once and no remote job created twice.

Plus a worker-task retry after the remote job was created: the Localytics upload's first try
creates its import, then every status check of that try gets a 503 until the hook gives up (the
connection's ``max_attempts``); the task fails, Airflow retries it, and the retry must reattach to
the same import instead of uploading the file again.

Faults are served by the emulators (in this process) before the vendor app sees the request, so a
faulted create never creates anything: a second job could only come from the client sending twice.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import EXAMPLE_DAGS, RETRY_EXTRAS, run_phase
from tests.e2e.test_examples_e2e import CHECKS, allowed_tries

pytestmark = pytest.mark.e2e

STATUS_ROUTE = r"^GET /v1/imports/profiles/status/"
RETRIED_TASK = ("example_localytics_profiles", "upload[0]")
# Faults are taken in order, so they chain: one GET can meet 3 + 3 + 2 = 8 failures in a row, one POST
# 1 + 1 + 3 (the targeted 429s below, then the storm's); both under the connection's max_attempts=10.
STORMS = [
    {"kind": "status", "match": ".*", "count": 3, "status": 429, "retry_after": 1},  # any route, creates included
    {"kind": "status", "match": r"^(GET|PUT|DELETE) ", "count": 3, "status": 503},  # safe to resend: idempotent routes
    {"kind": "drop", "match": r"^(GET|PUT|DELETE) ", "count": 2},
    {"kind": "delay", "match": ".*", "count": 3, "delay": 2.0},  # slow, under the read timeout: must not resend
]
# "METHOD path" of the requests that create a remote object, per vendor
CREATING_ROUTES = {
    "gainsight_px": r"^POST /v1/users$",
    "apsis_one": r"^POST /v2/audience/sections/[^/]+/imports$",
    "localytics": r"^POST /v1/imports/(profiles/upload|audiences/list/?)$",
    "mediarithmics": r"^POST /v1/datamarts/[^/]+/document_imports(/[^/]+/executions)?$",
}

# "METHOD path" of the requests that carry a file (a retry must resend the whole body, once)
UPLOAD_ROUTES = {
    "apsis_one": r"^POST /file-import-uploads",
    "localytics": r"^POST /v1/imports/profiles/upload$",
    "mediarithmics": r"^POST /v1/datamarts/[^/]+/document_imports/[^/]+/executions$",
}


def targeted_faults(vendor: str) -> list[dict]:
    """Faults aimed at the requests where a resend would duplicate: creates and uploads."""
    # the upload fault first: a Localytics upload is also a create and would otherwise take the create faults
    faults = [{"kind": "status", "match": UPLOAD_ROUTES[vendor], "count": 1, "status": 429, "retry_after": 1}
              ] if vendor in UPLOAD_ROUTES else []
    return faults + [{"kind": "status", "match": CREATING_ROUTES[vendor], "count": 1, "status": 429, "retry_after": 1},
                     {"kind": "delay", "match": CREATING_ROUTES[vendor], "count": 1, "delay": 3.0}]


# objects one run of every example creates: 4 valid users; 2 imports (import_profiles, start_import);
# a profile import and an audience import; a document import and 3 executions (17 lines by 6)
EXPECTED_CREATES = {"gainsight_px": 4, "apsis_one": 2, "localytics": 2, "mediarithmics": 4}


def created_objects(vendor: str, snapshot: dict) -> int:
    return {
        "gainsight_px": lambda: len(snapshot["users"]),
        "apsis_one": lambda: len(snapshot["imports"]),
        "localytics": lambda: len(snapshot["jobs"]),
        "mediarithmics": lambda: len(snapshot["document_imports"]) + len(snapshot["executions"]),
    }[vendor]()


def served_faults(emulator) -> list[tuple[str, str]]:
    """Record which request got which fault (kind, "METHOD path"), wrapping the emulator's own lookup."""
    served: list[tuple[str, str]] = []
    take = emulator._take_fault

    def take_and_record(method, path):
        fault = take(method, path)
        if fault is not None:
            served.append((fault.kind, f"{method} {path}"))
        return fault

    emulator._take_fault = take_and_record
    return served


@pytest.fixture(scope="module")
def faulted(cluster, example_runs):
    served: dict[str, list] = {}
    injected: dict[str, list] = {}

    def inject(cluster):
        for vendor in CREATING_ROUTES:
            emulator = cluster.emulators[vendor].emulator
            served[vendor] = served_faults(emulator)
            injected[vendor] = []
            if vendor == "localytics":
                # first in the list, so it takes every status check of the upload's first try
                injected[vendor].append(emulator.inject("status", STATUS_ROUTE, RETRY_EXTRAS["max_attempts"], status=503))
            injected[vendor] += [emulator.inject(**fault) for fault in targeted_faults(vendor) + STORMS]

    try:
        phase = run_phase(cluster, "faults", EXAMPLE_DAGS, before_trigger=inject)
    finally:
        for vendor in served:  # back to the emulator's own method
            vars(cluster.emulators[vendor].emulator).pop("_take_fault", None)
    yield phase, served, injected


def test_every_run_succeeds_under_faults(cluster, faulted):
    phase, _, _ = faulted
    assert phase.states == {dag_id: "success" for dag_id in EXAMPLE_DAGS}
    for dag_id in EXAMPLE_DAGS:
        states = cluster.task_states(dag_id, phase.runs[dag_id])
        retried = {RETRIED_TASK[1]: 2} if dag_id == RETRIED_TASK[0] else {}
        allowed = allowed_tries(cluster, phase, dag_id, retried)
        assert all(state == "success" for state, _ in states.values()), (dag_id, states)
        assert all(tries <= allowed[task] for task, (_, tries) in states.items()), (dag_id, states, allowed)


def test_every_fault_was_served(faulted):
    _, served, injected = faulted
    for vendor, faults in injected.items():
        assert [f.count for f in faults] == [0] * len(faults), (vendor, "fault left unserved")
        kinds = {kind for kind, _ in served[vendor]}
        assert kinds == {"status", "drop", "delay"}, (vendor, served[vendor])


@pytest.mark.parametrize("dag_id", EXAMPLE_DAGS)
def test_nothing_lost_nothing_imported_twice(cluster, faulted, dag_id):
    phase, _, _ = faulted
    CHECKS[dag_id](cluster, phase)


@pytest.mark.parametrize("vendor", sorted(CREATING_ROUTES))
def test_no_remote_object_created_twice(faulted, vendor):
    phase, served, _ = faulted
    route = re.compile(CREATING_ROUTES[vendor])
    sent = sum(n for request, n in phase.counters[vendor].items() if route.search(request))
    refused = sum(1 for kind, request in served[vendor] if kind != "delay" and route.search(request))
    # as many creating requests reached the vendor as there are objects to create: none was resent after
    # a slow or refused answer, and the vendor holds exactly those objects
    assert sent - refused == EXPECTED_CREATES[vendor] == created_objects(vendor, phase.snapshots[vendor]), \
        (sent, refused, served[vendor])
    assert refused >= 1 and any(kind == "delay" and route.search(r) for kind, r in served[vendor])


def test_worker_retry_reattaches_to_the_import_its_first_try_created(cluster, faulted):
    phase, served, _ = faulted
    dag_id, task = RETRIED_TASK
    run_id = phase.runs[dag_id]
    state, tries = cluster.task_states(dag_id, run_id)[task]
    assert state == "success" and 2 <= tries <= allowed_tries(cluster, phase, dag_id, {task: 2})[task]
    failed_checks = [r for kind, r in served["localytics"] if kind == "status" and re.search(STATUS_ROUTE, r)]
    assert len(failed_checks) >= RETRY_EXTRAS["max_attempts"]
    jobs = [a for a, j in phase.snapshots["localytics"]["jobs"].items() if "target" in j]
    assert len(jobs) == 1  # the retry did not upload the file again
    folder = cluster.task_log_dir(dag_id, run_id, "upload", 0)
    first, second = (folder / "attempt=1.log").read_text(), (folder / "attempt=2.log").read_text()
    assert f"created Localytics job {{'kind': 'profiles', 'activity_id': '{jobs[0]}'}}" in first
    assert "503" in first and "Task failed" in first
    assert "reattaching to job" in second and jobs[0] in second and "created Localytics job" not in second
    # The first try failed before deferring. The retry defers only if the import is still running when it
    # checks before deferring: the 10 failed checks (~10 s) race the emulated 10 s import, so both
    # outcomes are valid, and the database agrees with what the try logged.
    deferred = "deferring to the triggerer" in second
    assert cluster.deferred_tries(dag_id, run_id).get(task, []) == ([2] if deferred else [])
