"""A Gainsight PX load stopped part way resumes where it stopped, in real Airflow (dag.test): a retry
after a failed try, and the next DAG run after a run stopped by ``max_requests``. Each record is
written once at the emulator, and the result covers the whole input with counts that reconcile."""

from __future__ import annotations

import csv
import json
import uuid

import pytest

from tests.conftest import HAS_TASK_STATE_STORE, TASK_STATE_BACKENDS

SECRET = "gpx-S3CRET-resume-7f3a"
DAG = '''
import datetime
import pendulum
from airflow.sdk import DAG
from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    GainsightPXLoadOperator(task_id="load", source={source!r}, field_mapping={{"identifyId": "id", "email": "email"}},
                            max_concurrency=4, retries=1, retry_delay=datetime.timedelta(0), {extra})
'''


@pytest.fixture
def gpx(emulator, airflow_connection, airflow_db):
    server = emulator("gainsight_px", api_key=SECRET, rate_limit=None)
    airflow_connection("gainsight_px_default", "gainsight_px", host=server.url, password=SECRET,
                       extra={"product_key": server.emulator.product_key, "max_attempts": 1})
    return server


def users_csv(tmp_path, ids):
    path = tmp_path / "users.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "email"])
        writer.writerows([[user, f"{user}@example.com" if user else "nobody@example.com"] for user in ids])
    return str(path)


def load_dag(tmp_path, source, extra=""):
    dag_id = f"gpx_resume_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{dag_id}.py"
    path.write_text(DAG.format(dag_id=dag_id, source=source, extra=extra))
    return path, dag_id


def run_load(dag_file):
    """One dag.test run: (state, the load's result, its tries)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tests.conftest import run_dag_file

    dag_run, states = run_dag_file(dag_file)
    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids="load",
                                                 map_indexes=-1, key="return_value")).first()
        result = XComModel.deserialize_value(row) if row is not None else None
        tries = dag_run.get_task_instance("load", session=session).try_number
    return states["load"], result, tries


def checkpoints_left(dag_id):
    from airflow.models import Variable as VariableModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = []
        if HAS_TASK_STATE_STORE:
            from airflow.models.task_state_store import TaskStateStoreModel

            rows = [row.key for row in session.query(TaskStateStoreModel).filter_by(dag_id=dag_id)]
        variables = [v.key for v in session.query(VariableModel).all() if v.key.startswith("profiles_load")
                     and f"{dag_id}.load" in (v.description or "")]
    return rows + variables


@pytest.mark.parametrize("backend", TASK_STATE_BACKENDS)
def test_a_retry_resumes_after_the_records_the_failed_try_answered(gpx, tmp_path, monkeypatch, backend):
    from airflow_provider_profiles.operators import base

    if backend == "variable":  # as on Airflow before 3.3
        monkeypatch.setattr(base, "airflow_task_state_store", lambda context: None)
    ids = [f"u{n:03d}" for n in range(40)]
    ids[5] = ids[20] = ids[35] = ""  # no identifier: rejected before sending, 2 by the first try
    dag_file, dag_id = load_dag(tmp_path, users_csv(tmp_path, ids), extra="insert_missing=True")
    # the key is refused once, at u025: the first try stops (the record unanswered), the retry goes on;
    # the fault is keyed on u025's PUT, so the upserts stay PUT first (a POST has no id in its path)
    from airflow_provider_profiles.hooks.gainsight_px import UpsertOrder

    monkeypatch.setattr(UpsertOrder, "create_first", lambda self: False)
    gpx.emulator.inject("status", match="PUT /v1/users/u025$", status=401, count=1)
    state, result, tries = run_load(dag_file)
    assert (state, tries) == ("success", 2)
    writes = gpx.emulator.snapshot()["writes"]
    assert len(writes) == 37 and set(writes.values()) == {1}  # every record written, none twice
    assert {key: result[key] for key in ("read", "rejected", "skipped", "sent", "vendor_succeeded",
                                         "vendor_failed")} == {
        "read": 40, "rejected": 3, "skipped": 0, "sent": 37, "vendor_succeeded": 37, "vendor_failed": 0}
    assert result["details"]["inserted"] == 37
    with open(result["details"]["rejects_path"], newline="") as handle:
        assert sorted(int(row["line"]) for row in csv.DictReader(handle)) == [7, 22, 37]  # the first try's kept
    assert checkpoints_left(dag_id) == []


def test_a_load_stopped_by_max_requests_resumes_in_the_next_run(gpx, tmp_path):
    ids = [f"u{n:03d}" for n in range(10)]
    gpx.emulator.seed(users=[{"identifyId": user} for user in ids])
    # one request reads the attribute model, then one PUT per record: 6 records a run
    dag_file, dag_id = load_dag(tmp_path, users_csv(tmp_path, ids), extra="max_requests=7")
    state, first, _ = run_load(dag_file)
    assert state == "success"
    assert (first["read"], first["vendor_succeeded"], first["rejected"], first["details"]["over_budget"]) == (10, 6, 4, 4)
    assert len(checkpoints_left(dag_id)) == 1  # kept for the next run
    state, second, _ = run_load(dag_file)
    assert state == "success"
    assert {key: second[key] for key in ("read", "rejected", "skipped", "sent", "vendor_succeeded")} == {
        "read": 10, "rejected": 0, "skipped": 0, "sent": 10, "vendor_succeeded": 10}
    assert second["details"]["over_budget"] == 0 and second["details"]["requests"] == 5
    writes = gpx.emulator.snapshot()["writes"]
    assert len(writes) == 10 and set(writes.values()) == {1}
    assert checkpoints_left(dag_id) == []


class MemoryStateStore:
    """Stands for Airflow's task state store: JSON values by key, kept as a list of every write."""

    def __init__(self):
        self.values, self.writes = {}, []

    def get(self, key, default=None):
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key, value, retention=None):
        self.values[key] = json.dumps(value)
        self.writes.append(json.loads(self.values[key]))

    def delete(self, key):
        self.values.pop(key, None)


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number = "dag", "manual__2026-01-01T00:00:00+00:00", "load", -1, 1

    def xcom_push(self, key, value):
        pass


def test_checkpoints_during_a_load_let_a_killed_worker_resume_from_the_last_one(gpx, tmp_path):
    """A worker killed outright saves nothing on its way out: the retry resumes from the last interval
    checkpoint, sends only what came after it, and still returns counts for the whole input."""
    from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator

    ids = [f"u{n:03d}" for n in range(30)]
    ids[3] = ""  # rejected before sending
    source = users_csv(tmp_path, ids)
    store = MemoryStateStore()
    load = GainsightPXLoadOperator(task_id="load", source=source, field_mapping={"identifyId": "id", "email": "email"},
                                   insert_missing=True, max_concurrency=4, checkpoint_interval=0)
    assert load.execute({"ti": FakeTI(), "task_state_store": store})["vendor_succeeded"] == 29
    assert store.values == {}  # the input is complete: no checkpoint left
    positions = [saved["position"] for saved in store.writes]
    assert positions == sorted(positions) and len(positions) > 2
    for saved in store.writes:  # each checkpoint's counts are those of the records it covers
        counts = saved["counts"]
        assert counts["rows_read"] == saved["position"] + len(saved["ahead"])
        assert counts["rows_read"] == sum(counts[key] for key in counts if key != "rows_read")
        assert saved["rejects_rows"] == counts["rejected"]
    # the worker "dies" after a mid-run checkpoint: the retry starts from it
    killed_at = next(saved for saved in store.writes if 5 <= saved["position"] < 25)
    store.values["load"] = json.dumps(killed_at)
    before = dict(gpx.emulator.snapshot()["writes"])
    retry = FakeTI()
    retry.try_number = 2
    result = load.execute({"ti": retry, "task_state_store": store})
    assert (result["read"], result["rejected"], result["vendor_succeeded"]) == (30, 1, 29)
    again = {key for key, n in gpx.emulator.snapshot()["writes"].items() if n > before.get(key, 0)}
    covered = {f"users/{ids[p]}" for p in range(killed_at["position"])} | {
        f"users/{ids[int(p)]}" for p in killed_at["ahead"]}
    assert again == {f"users/{user}" for user in ids if user} - covered  # only what came after it
    with open(result["details"]["rejects_path"], newline="") as handle:
        assert [row["line"] for row in csv.DictReader(handle)] == ["5"]  # carried, not lost
