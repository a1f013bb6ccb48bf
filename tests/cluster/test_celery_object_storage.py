"""profiles_end_to_end on the Celery executor: two workers that share only S3 (moto) and the metadata
database, the source in PostgreSQL. A full run, then an incremental one after 1% of the source rows
changed; every file between tasks (prepared files, chunks, rejects, sync state) lives in S3.

Checks: every task succeeded; both workers ran tasks of each run; each emulator holds exactly the source
rows minus the rows the run reported rejected; the second run sent only the changed rows; and no worker's
own folder (HOME, TMPDIR, working folder) kept a data file.
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath

import pytest

from tests.cluster.conftest import BUCKET, WAREHOUSE
from tests.cluster.harness import WORKERS
from tests.e2e.conftest import Phase, run_phase

pytestmark = pytest.mark.cluster

DAG = "profiles_end_to_end"
USERS = 1000
CONF = {"users": USERS, "chunk_rows": 120}  # 9 chunks for the file-based vendors: work for both workers
CHANGED = [f"u-{i:05d}" for i in range(100, USERS + 1, 100)]  # 1% of the rows, none of them a bad row
VENDORS = ("gainsight_px", "apsis_one", "localytics", "mediarithmics")
APSIS_SECTION, APSIS_KEYSPACE = "com.apsis1.sections.default", "com.apsis1.keyspaces.email"
LOCALYTICS_ORG = "org_id:60"  # the emulator connection's organisation
# what a data file between tasks is named like (prepared files, chunks, rejects, state, their copies)
DATA_SUFFIXES = (".parquet", ".csv", ".ndjson", ".jsonl", ".json", ".gz", ".tmp", ".duckdb", ".wal")


def source_rows(postgres) -> list[dict[str, str | None]]:
    out = postgres.psql("COPY (SELECT user_id, email, first_name, city, plan FROM users ORDER BY 1) "
                        "TO STDOUT WITH (FORMAT csv, HEADER true)", database=WAREHOUSE)
    return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(io.StringIO(out))]


def xcom(cluster, run_id: str, task_id: str):
    (value,) = cluster.query("select value from xcom where dag_id = ? and run_id = ? and task_id = ? "
                             "and key = 'return_value' and map_index = -1", DAG, run_id, task_id)[0]
    return value  # a JSON column: psycopg2 decodes it


def s3_key(url: str) -> str:
    """``s3://conn@bucket/key`` -> ``key``."""
    return url.split("://", 1)[1].split("/", 1)[1]


def not_sent_ids(cluster, moto, run_id: str, vendor: str) -> list[str | None]:
    report = xcom(cluster, run_id, f"{vendor}.report")
    assert report["not_sent_file"].startswith("s3://"), report["not_sent_file"]
    text = moto.read(BUCKET, s3_key(report["not_sent_file"])).decode()
    return [row["id"] or None for row in csv.DictReader(io.StringIO(text))]


@pytest.fixture(scope="module")
def runs(celery_cluster, postgres) -> tuple[Phase, Phase]:
    full = run_phase(celery_cluster, "full", [DAG], conf=CONF)
    assert full.states == {DAG: "success"}, celery_cluster.task_states(DAG, full.runs[DAG])
    listed = ", ".join(f"'{user_id}'" for user_id in CHANGED)
    postgres.psql(f"UPDATE users SET city = city || ' (moved)' WHERE user_id IN ({listed})", database=WAREHOUSE)
    incremental = run_phase(celery_cluster, "incremental", [DAG], reset=False, conf={**CONF, "seed": False})
    return full, incremental


def test_every_task_succeeded(celery_cluster, runs):
    for phase in runs:
        states = celery_cluster.task_states(DAG, phase.runs[DAG])
        assert phase.states == {DAG: "success"}
        assert states and {state for state, _ in states.values()} == {"success"}, (phase.name, states)


def test_tasks_of_each_run_ran_on_both_workers(celery_cluster, runs):
    for phase in runs:
        hosts = celery_cluster.hostnames(DAG, phase.runs[DAG])
        assert set(hosts.values()) == set(WORKERS), (phase.name, hosts)


def test_each_emulator_holds_the_source_rows_minus_the_rejected(celery_cluster, moto, postgres, runs):
    full, incremental = runs
    source = source_rows(postgres)
    assert len(source) == USERS and sum(row["city"].endswith(" (moved)") for row in source) == len(CHANGED)
    snapshots = incremental.snapshots  # after both runs: the second run's values for the changed rows
    rejected = {vendor: not_sent_ids(celery_cluster, moto, full.runs[DAG], vendor) for vendor in VENDORS}
    reports = xcom(celery_cluster, full.runs[DAG], "report")
    for vendor in VENDORS:
        assert len(rejected[vendor]) == reports[vendor]["rejected"] > 0, vendor
        assert reports[vendor]["read"] == USERS, vendor

    by_id = [row for row in source if row["user_id"] and row["user_id"] not in rejected["gainsight_px"]]
    users = snapshots["gainsight_px"]["users"]
    assert sorted(users) == sorted(row["user_id"] for row in by_id)
    assert all((users[r["user_id"]]["email"], users[r["user_id"]]["location"]["city"]) == (r["email"], r["city"])
               for r in by_id)

    by_email = [row for row in source if row["email"] not in rejected["apsis_one"]]
    profiles = snapshots["apsis_one"]["profiles"][APSIS_SECTION]
    assert sorted(profiles) == sorted(f"{APSIS_KEYSPACE}:{row['email']}" for row in by_email)
    assert all(row["city"] in profiles[f"{APSIS_KEYSPACE}:{row['email']}"]["attributes"].values() for row in by_email)

    by_id = [row for row in source if row["user_id"] and row["user_id"] not in rejected["localytics"]]
    profiles = snapshots["localytics"]["profiles"][LOCALYTICS_ORG]
    assert sorted(profiles) == sorted(row["user_id"] for row in by_id)
    assert all(profiles[row["user_id"]]["city"] == row["city"] for row in by_id)

    # the mediarithmics emulator counts the documents it imported, it does not keep them
    by_id = [row for row in source if row["user_id"] and row["user_id"] not in rejected["mediarithmics"]]
    first = full.snapshots["mediarithmics"]["executions"].values()
    assert sum(e["result"]["total_success"] for e in first) == len(by_id)
    assert sum(e["result"]["total_failure"] for e in first) == 0


def test_the_incremental_run_sent_only_the_changed_rows(celery_cluster, runs):
    full, incremental = runs
    report = xcom(celery_cluster, incremental.runs[DAG], "report")
    for vendor in VENDORS:
        assert (report[vendor]["sent"], report[vendor]["vendor_succeeded"]) == (len(CHANGED), len(CHANGED)), vendor
    writes = incremental.snapshots["gainsight_px"]["writes"]
    assert {key for key, count in writes.items() if count != 1} == {f"users/{user_id}" for user_id in CHANGED}
    assert {writes[f"users/{user_id}"] for user_id in CHANGED} == {2}

    def new(vendor: str, kind: str) -> list[dict]:
        return [item for key, item in incremental.snapshots[vendor][kind].items()
                if key not in full.snapshots[vendor][kind]]

    assert sum(i["result"]["profiles_found"] for i in new("apsis_one", "imports")) == len(CHANGED)
    assert [j["upload_statistics"]["successful_imports"] for j in new("localytics", "jobs")] == [len(CHANGED)]
    assert sum(e["parameters"]["number_of_lines"] for e in new("mediarithmics", "executions")) == len(CHANGED)


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


def test_every_file_handed_between_tasks_is_in_s3(celery_cluster, runs):
    """The paths the tasks hand on (XCom) name S3 objects, never a worker's local file."""
    for phase in runs:
        values = [value for (value,) in celery_cluster.query(  # a JSON column: psycopg2 decodes it
            "select value from xcom where dag_id = ? and run_id = ?", DAG, phase.runs[DAG])]
        texts = [text for value in values for text in strings(value)]
        assert any(text.startswith("s3://") for text in texts), phase.name
        local = [text for text in texts if text.startswith(("/", "file:")) and text.endswith(DATA_SUFFIXES)]
        assert local == [], (phase.name, local)


def test_no_worker_folder_kept_a_data_file(celery_cluster, moto, runs):
    """Everything a task hands on lives in S3: a worker's own folders hold none of it afterwards."""
    stored = {PurePosixPath(key).name for key in moto.keys(BUCKET)}
    assert stored, "nothing was written to S3"
    left = celery_cluster.worker_files()
    data = {worker: [name for name in files if PurePosixPath(name).name in stored or name.endswith(DATA_SUFFIXES)]
            for worker, files in left.items()}
    assert data == {worker: [] for worker in WORKERS}, left
