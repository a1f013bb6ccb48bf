"""A declared sync in four partitions (tests/dags/partitioned_sync.py) on the Celery tier: PostgreSQL
hashes each user id to its partition, each partition's tasks run on whichever worker takes them, and
the files between them live in S3.

First run: one partition's first upload is refused, Airflow retries that upload alone, and every user
reaches mediarithmics exactly once. Second run, after 1% of the rows changed: only those rows are sent.
"""

from __future__ import annotations

import collections
import json

import pytest

from tests.cluster.conftest import WAREHOUSE
from tests.cluster.harness import WORKERS
from tests.e2e.conftest import run_phase

pytestmark = pytest.mark.cluster

DAG = "partitioned_sync"
PARTITIONS = 4
USERS = 2000
CHANGED = [f"p-{i:05d}" for i in range(50, USERS + 1, 100)]  # 20 rows: 1%


def received(phase_cluster) -> collections.Counter:
    """How many times mediarithmics received each user, over every execution so far."""
    lines = phase_cluster.emulators["mediarithmics"].emulator.received_lines()
    return collections.Counter(json.loads(line)["user_account_id"] for execution in lines.values()
                               for line in execution if line.strip())


def tries(cluster, run_id: str) -> dict[str, int]:
    rows = cluster.query("select task_id, map_index, try_number from task_instance where dag_id = ? and run_id = ?",
                         DAG, run_id)
    return {(t if m < 0 else f"{t}[{m}]"): n for t, m, n in rows}


@pytest.fixture(scope="module")
def partitioned(celery_cluster, postgres):
    postgres.psql("DROP TABLE IF EXISTS partitioned_users; CREATE TABLE partitioned_users AS "
                  f"SELECT 'p-' || lpad(n::text, 5, '0') AS user_id, (ARRAY['free', 'pro'])[n % 2 + 1] AS plan, "
                  f"(ARRAY['Paris', 'Lyon', 'Malmö'])[n % 3 + 1] AS city FROM generate_series(1, {USERS}) AS n",
                  database=WAREHOUSE)

    def refuse_first_upload(cluster):  # a 400 before the vendor acts: the task fails, and is retried alone
        cluster.emulators["mediarithmics"].emulator.inject("status", match=r"POST .*/executions$", status=400,
                                                           body={"status": "error", "error": "refused once"})

    full = run_phase(celery_cluster, "partitioned-full", [DAG], before_trigger=refuse_first_upload)
    first = received(celery_cluster)
    listed = ", ".join(f"'{user_id}'" for user_id in CHANGED)
    postgres.psql(f"UPDATE partitioned_users SET plan = 'team' WHERE user_id IN ({listed})", database=WAREHOUSE)
    incremental = run_phase(celery_cluster, "partitioned-incremental", [DAG])
    return full, first, incremental, received(celery_cluster)


def test_four_partitions_send_every_user_once_a_refused_upload_retried_alone(celery_cluster, partitioned):
    full, first, _, _ = partitioned
    assert full.states == {DAG: "success"}, celery_cluster.task_states(DAG, full.runs[DAG])
    assert first == {f"p-{n:05d}": 1 for n in range(1, USERS + 1)}
    run_tries = tries(celery_cluster, full.runs[DAG])
    retried = {task for task, n in run_tries.items() if n > 1}
    assert len(retried) == 1 and ".upload[" in next(iter(retried)), run_tries
    assert {task.split(".")[1] for task in run_tries if task.startswith("users.part_")} == {
        f"part_{i}" for i in range(PARTITIONS)}
    assert set(celery_cluster.hostnames(DAG, full.runs[DAG]).values()) == set(WORKERS)


def test_the_report_adds_up_the_partitions(celery_cluster, partitioned):
    full, _, incremental, _ = partitioned
    (report,) = celery_cluster.query("select value from xcom where dag_id = ? and run_id = ? and "
                                     "task_id = 'users.report' and key = 'return_value'", DAG, full.runs[DAG])[0]
    assert (report["read"], report["sent"], report["invalid"]) == (USERS, USERS, 0), report
    assert len(report["partitions"]) == PARTITIONS


def test_the_second_run_sends_only_the_changed_rows(celery_cluster, partitioned):
    _, first, incremental, after = partitioned
    assert incremental.states == {DAG: "success"}, celery_cluster.task_states(DAG, incremental.runs[DAG])
    # run_phase resets the emulator between runs: ``after`` is what the second run sent
    assert after == {user_id: 1 for user_id in CHANGED}
    (report,) = celery_cluster.query("select value from xcom where dag_id = ? and run_id = ? and "
                                     "task_id = 'users.report' and key = 'return_value'", DAG, incremental.runs[DAG])[0]
    assert (report["read"], report["unchanged"], report["sent"]) == (USERS, USERS - len(CHANGED), len(CHANGED)), report
